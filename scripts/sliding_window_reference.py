#!/usr/bin/env python3
"""A sliding-window (Mistral-style) model and its expected outputs, for tests/quantized.rs:

    python scripts/sliding_window_reference.py fixtures/llm

1. `tiny/tiny-llama-swa.Q8_0.gguf`: the tiny random Llama of
   scripts/llama_cpp_reference.py (Q8_0), its header given
   `llama.attention.sliding_window = 8` and nothing else changed.
2. `sliding_window_reference.json`: scripts/llm_reference.py's float64 NumPy
   forward pass (not moulin code) on a 24-token prompt, its last logits, and a
   greedy continuation of 24 tokens (every step a whole forward pass, so the
   window slides over the generated tokens too); the same without the window,
   to show that it changes the result.

Needs only NumPy.
"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llm_reference as ref  # noqa: E402

WINDOW = 8
PROMPT = [(7 * i + 3) % 288 for i in range(24)]
GREEDY = 24


def with_window(src, dst, window):
    """The GGUF file `src` with one more key: `llama.attention.sliding_window`."""
    data = open(src, "rb").read()
    h = ref.header(data)
    meta, version, n_tensors = h["meta"], h["version"], len(h["infos"])
    kv_end, infos_end, base = h["kv_end"], h["infos_end"], h["base"]
    align = meta.get("general.alignment", 32)
    n_kv = len(meta)
    key = f"{meta['general.architecture']}.attention.sliding_window".encode()
    extra = struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, window)  # 4: uint32
    header = struct.pack("<IIQQ", 0x46554747, version, n_tensors, n_kv + 1)
    out = header + data[24:kv_end] + extra + data[kv_end:infos_end]
    out += b"\0" * ((align - len(out) % align) % align)
    out += data[base:]
    with open(dst, "wb") as f:
        f.write(out)


def greedy(meta, tensors, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(ref.forward(meta, tensors, np.array(ids))[-1])))
    return ids[len(prompt):]


def main():
    out_dir = sys.argv[1]
    src = os.path.join(out_dir, "tiny", "tiny-llama.Q8_0.gguf")
    dst = os.path.join(out_dir, "tiny", "tiny-llama-swa.Q8_0.gguf")
    with_window(src, dst, WINDOW)
    meta, tensors = ref.load(dst)
    assert meta["llama.attention.sliding_window"] == WINDOW
    logits = ref.forward(meta, tensors, np.array(PROMPT))
    plain_meta = {k: v for k, v in meta.items() if not k.endswith("sliding_window")}
    result = {
        "note": "float64 NumPy forward passes of scripts/llm_reference.py; not moulin code",
        "model": "tiny/tiny-llama-swa.Q8_0.gguf",
        "window": WINDOW,
        "prompt": PROMPT,
        "logits": [round(float(v), 6) for v in logits[-1]],
        "greedy": greedy(meta, tensors, PROMPT, GREEDY),
        "greedy_without_window": greedy(plain_meta, tensors, PROMPT, GREEDY),
    }
    with open(os.path.join(out_dir, "sliding_window_reference.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(result["greedy"], result["greedy_without_window"], sep="\n")


if __name__ == "__main__":
    main()
