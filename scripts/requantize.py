#!/usr/bin/env python3
"""Write a GGUF file in another quantization with llama.cpp's own quantizer
(through llama-cpp-python, built as README.md says):

    python scripts/requantize.py SRC.gguf DST.gguf TYPE [THREADS]

TYPE is a llama.cpp file type name: Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, Q3_K_M,
Q2_K, ... A quantized source is dequantized first (`allow_requantize`): the
result has the new type's layout and speed, and the accuracy of both
quantizations. The benchmark (`benches/llm.rs`) and the tests use it to turn the
registry's SmolLM2 Q4_1 file into the K-quant mixes people download.
"""
import sys

import llama_cpp as L


def main():
    src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3].upper()
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    ftype = getattr(L, f"LLAMA_FTYPE_MOSTLY_{kind}", None)
    if ftype is None:
        names = sorted(n[len("LLAMA_FTYPE_MOSTLY_"):] for n in dir(L) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        sys.exit(f"unknown type {kind}; llama.cpp knows {', '.join(names)}")
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True
    rc = L.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")


if __name__ == "__main__":
    main()
