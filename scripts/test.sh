#!/usr/bin/env bash
# The test suite: set up (once), then every test, on the real model and real files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
cargo test "$@"
