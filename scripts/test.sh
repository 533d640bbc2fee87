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
# The servers tests start on 127.0.0.1 (moto's S3 server, Azurite), in their own environment.
tools=$MOULIN_HOME/test-tools
marker="$tools/.complete-$(cat scripts/test-requirements.txt scripts/test-package.json | sha256sum | cut -c1-16)"
if [ ! -f "$marker" ]; then
  echo "test: installing the test servers (scripts/test-requirements.txt, scripts/test-package.json)" >&2
  if ! command -v npm >/dev/null; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq nodejs npm >/dev/null
  fi
  rm -rf "$tools"
  "${PYTHON:-python3.11}" -m venv "$tools"
  "$tools/bin/pip" install --quiet -r scripts/test-requirements.txt
  mkdir -p "$tools/node"
  cp scripts/test-package.json "$tools/node/package.json"
  npm install --prefix "$tools/node" --no-audit --no-fund --silent
  touch "$marker"
fi
export MOULIN_TEST_TOOLS=$tools
cargo test --workspace "$@"
