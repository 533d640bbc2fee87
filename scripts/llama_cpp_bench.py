#!/usr/bin/env python3
"""llama.cpp's side of benches/llm.rs: the same prompts, batch and thread count.

    python scripts/llama_cpp_bench.py MODEL.gguf PROMPTS.json NEW_TOKENS THREADS

PROMPTS.json is a list of token-id lists (one per sequence, all the same length),
written by the benchmark. The prompts go through llama_decode in one batch (each
sequence its own seq_id), then NEW_TOKENS - 1 decoding steps of one token per
sequence, greedy, end-of-sequence ignored. Prints one JSON line: prompt and
generation tokens/s. Needs llama-cpp-python (built as README.md says).
"""
import ctypes
import json
import sys
import time

import llama_cpp as L
import numpy as np


def main():
    model_path, ids_path = sys.argv[1], sys.argv[2]
    gen, threads = int(sys.argv[3]), int(sys.argv[4])
    prompts = json.load(open(ids_path))
    batch_size, length = len(prompts), len(prompts[0])

    # Quiet: llama.cpp logs every tensor and graph node to stderr.
    quiet = L.llama_log_callback(lambda level, text, data: None)
    L.llama_log_set(quiet, ctypes.c_void_p())
    L.llama_backend_init()
    started = time.perf_counter()
    model = L.llama_model_load_from_file(model_path.encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    per_seq = (length + gen + 255) // 256 * 256
    cp.n_ctx = batch_size * per_seq
    cp.n_batch = batch_size * length
    cp.n_seq_max = batch_size
    cp.n_threads = threads
    cp.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, cp)
    load = time.perf_counter() - started
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)

    batch = L.llama_batch_init(batch_size * length, 0, batch_size)

    def fill(rows, pos):
        """rows: tokens per sequence; logits for each sequence's last token."""
        n = 0
        last = []
        for seq, tokens in enumerate(rows):
            for j, tok in enumerate(tokens):
                batch.token[n] = tok
                batch.pos[n] = pos + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = j == len(tokens) - 1
                if j == len(tokens) - 1:
                    last.append(n)
                n += 1
        batch.n_tokens = n
        return last

    def greedy(indices):
        out = []
        for i in indices:
            ptr = L.llama_get_logits_ith(ctx, i)
            row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
            out.append(int(row.argmax()))
        return out

    # Warm up on one short sequence, then clear the cache.
    fill([prompts[0][:8]], 0)
    assert L.llama_decode(ctx, batch) == 0
    L.llama_memory_clear(L.llama_get_memory(ctx), True)

    t = time.perf_counter()
    last = fill(prompts, 0)
    assert L.llama_decode(ctx, batch) == 0
    nxt = greedy(last)
    prompt_seconds = time.perf_counter() - t

    t = time.perf_counter()
    for step in range(gen - 1):
        last = fill([[tok] for tok in nxt], length + step)
        assert L.llama_decode(ctx, batch) == 0
        nxt = greedy(last)
    generate_seconds = time.perf_counter() - t

    L.llama_batch_free(batch)
    print(json.dumps({
        "pp_tps": batch_size * length / prompt_seconds,
        "gen_tps": batch_size * (gen - 1) / generate_seconds,
        "prompt_seconds": prompt_seconds,
        "generate_seconds": generate_seconds,
        "load_seconds": load,
    }))


if __name__ == "__main__":
    main()
