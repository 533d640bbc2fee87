#!/usr/bin/env bash
# The test suite: set up (once), then every test, on the real model and real files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
# The evaluation report's test opens the HTML page in a real headless browser.
if ! command -v chromium >/dev/null; then
  echo "test: installing chromium (Debian package), to render the HTML report" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi
cargo test --workspace "$@"
