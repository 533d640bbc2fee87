#!/usr/bin/env bash
# The main job on the bundled demo corpus: set up (once), ingest fixtures/demo with the
# default multilingual model into ./data, search it in French, and answer a question
# with the local language model and its sources.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
cargo build --quiet --bin moulin
moulin=$CARGO_TARGET_DIR/debug/moulin
mkdir -p data
"$moulin" run pipelines/demo.toml --report data/demo-report.json
echo
echo "Search: « Quelle est la durée maximale de la période d'essai ? »"
echo
"$moulin" search "Quelle est la durée maximale de la période d'essai ?" -c demo --limit 3
echo
echo "Answer from the local language model, with its sources:"
echo
"$moulin" ask "Quelle est la durée maximale de la période d'essai d'un cadre ?" -c demo -k 3 --max-new-tokens 96
