#!/usr/bin/env python3
"""Blocks of every quantized type moulin reads, dequantized by an independent
implementation (the `gguf` PyPI package's NumPy code, which follows ggml), for
crates/quant's bit-exactness test:

    pip install gguf==0.19.0 numpy
    python scripts/quant_reference.py fixtures/llm/quant_blocks.json

Blocks are random bytes with their f16 scales replaced by finite values (a
random f16 may be NaN or infinite, which says nothing about the decoding). The
seed is fixed: rerunning writes the same file.
"""
import json
import sys
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

BLOCKS = 4
# type: (values per block, bytes per block, offsets of its f16 fields)
TYPES = {
    "Q4_0": (T.Q4_0, 32, 18, [0]),
    "Q4_1": (T.Q4_1, 32, 20, [0, 2]),
    "Q5_0": (T.Q5_0, 32, 22, [0]),
    "Q5_1": (T.Q5_1, 32, 24, [0, 2]),
    "Q8_0": (T.Q8_0, 32, 34, [0]),
    "Q2_K": (T.Q2_K, 256, 84, [80, 82]),
    "Q3_K": (T.Q3_K, 256, 110, [108]),
    "Q4_K": (T.Q4_K, 256, 144, [0, 2]),
    "Q5_K": (T.Q5_K, 256, 176, [0, 2]),
    "Q6_K": (T.Q6_K, 256, 210, [208]),
}


def main(out_path):
    rng = np.random.default_rng(20261130)
    cases = {}
    for name, (qtype, values, size, halves) in TYPES.items():
        raw = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
        for at in halves:
            scales = (rng.standard_normal(BLOCKS) * 0.05).astype(np.float16)
            raw[:, at:at + 2] = scales.view(np.uint8).reshape(BLOCKS, 2)
        expected = dequantize(raw.reshape(-1), qtype).reshape(-1).astype(np.float32)
        assert expected.size == BLOCKS * values and np.isfinite(expected).all()
        cases[name] = {
            "bytes": raw.tobytes().hex(),
            # f32 bit patterns: exact, whatever the JSON reader does with floats.
            "bits": [int(b) for b in expected.view(np.uint32)],
        }
    for name, qtype in [("F16", T.F16), ("BF16", T.BF16)]:
        if name == "F16":
            raw = (rng.standard_normal(64) * 3).astype(np.float16).view(np.uint8)
        else:
            raw = (rng.standard_normal(64).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        expected = dequantize(raw, qtype).reshape(-1).astype(np.float32)
        cases[name] = {"bytes": raw.tobytes().hex(), "bits": [int(b) for b in expected.view(np.uint32)]}
    with open(out_path, "w") as f:
        json.dump({"generator": "gguf " + version("gguf"), "seed": 20261130, "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
