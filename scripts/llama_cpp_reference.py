#!/usr/bin/env python3
"""llama.cpp's outputs on the model files tests/quantized.rs runs, committed so
that CI needs no llama.cpp build:

    python scripts/llama_cpp_reference.py SMOLLM2_Q4_1.gguf fixtures/llm

1. A tiny Llama model with random weights (seeded: the same bytes every run),
   written as F32 GGUF with the `gguf` package, then turned by llama.cpp's own
   quantizer into every type and mix moulin reads; and tiny Qwen2 (Q, K, V
   biases) and Qwen3 (per-head norms of Q and K) models, in Q4_K_M:
   `fixtures/llm/tiny/*.gguf` (a few hundred kB each, committed).
2. For each tiny file and for the registry SmolLM2 Q4_1 file: llama.cpp's
   logits after a fixed prompt and its greedy continuation (40 tokens,
   end-of-sequence ignored), with an f32 KV cache and no flash attention (as
   moulin computes them): `fixtures/llm/llama_cpp_reference.json`.

Needs `gguf` and `llama-cpp-python==0.3.36` built as README.md says.
"""
import json
import os
import sys
from importlib.metadata import version

import gguf
import llama_cpp as L
import numpy as np
from llama_cpp import Llama

SEED = 20261130
# Small, but every matrix is a whole number of K-quant super-blocks (256).
VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 288, 256, 256, 2, 4, 2
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"]
GREEDY = 40


def byte_tokens():
    """GPT-2's byte-to-unicode alphabet: the 256 one-byte tokens of a byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tiny(path, arch="llama"):
    rng = np.random.default_rng(SEED)
    w = gguf.GGUFWriter(path, arch)
    w.add_name("moulin tiny random llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0 if arch == "llama" else 1000000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    tokens = byte_tokens() + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * 256 + [3, 3, 3]
    # A few merges (llama.cpp wants some), each making a token of the vocabulary.
    merges = ["e s", "l e", "Ġ d", "Ġ l", "o n", "Ġd e", "Ġl a", "Ġ p"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
        types.append(1)
    while len(tokens) < VOCAB:
        tokens.append(f"<unused{len(tokens)}>")
        types.append(3)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(256)
    w.add_eos_token_id(256)
    w.add_add_bos_token(False)

    def mat(rows, cols, scale=1.0):
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)

    hd = HIDDEN // HEADS
    w.add_tensor("token_embd.weight", (rng.standard_normal((VOCAB, HIDDEN)) * 0.5).astype(np.float32))
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(HEADS * hd, HIDDEN, 2.0))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(KV_HEADS * hd, HIDDEN, 2.0))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(KV_HEADS * hd, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(HIDDEN, HEADS * hd, 2.0))
        if arch == "qwen2":
            for name, rows in [("q", HEADS * hd), ("k", KV_HEADS * hd), ("v", KV_HEADS * hd)]:
                w.add_tensor(f"blk.{i}.attn_{name}.bias", (0.5 * rng.standard_normal(rows)).astype(np.float32))
        if arch == "qwen3":
            for name in ["q", "k"]:
                w.add_tensor(f"blk.{i}.attn_{name}_norm.weight", (1.0 + 0.3 * rng.standard_normal(hd)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(FFN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(FFN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(HIDDEN, FFN, 2.0))
    w.add_tensor("output_norm.weight", norm())
    # A head of its own: tied to the embeddings, a random model repeats its
    # last token forever, which would make a weak test of greedy decoding.
    w.add_tensor("output.weight", mat(VOCAB, HIDDEN, 3.0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# Texts both tokenizers must cut the same way: accents, digits, punctuation,
# spaces, a line break, characters outside the vocabulary (byte fallback).
SPM_TEXTS = [
    "Le présent arrêté fixe les conditions de l'aide.",
    "  Deux espaces, puis 12 345,67 euros ; et « guillemets » !",
    "Première ligne\nseconde ligne\tavec tabulation",
    "Straße, 東京, émoji 🙂 et Œuvre",
    "déclaration",
    "",
]


def train_spm_vocab(text, merges_wanted=300):
    """A SentencePiece-style BPE vocabulary learnt on `text` (words prefixed
    with ▁, pieces scored by merge order), as llama.cpp's `llama` tokenizer
    model stores it: <unk>, <s>, </s>, the 256 byte pieces, then the pieces."""
    words = {}
    for w in text.replace("\n", " ").split(" "):
        if w:
            words["▁" + w] = words.get("▁" + w, 0) + 1
    split = {w: list(w) for w in words}
    pieces = sorted({c for w in words for c in w})
    merged = []
    for _ in range(merges_wanted):
        pairs = {}
        for w, n in words.items():
            s = split[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merged.append(a + b)
        for w in words:
            s, out, i = split[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            split[w] = out
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    seen = set(tokens)
    # Single characters first (lowest scores), merged pieces by merge order.
    for rank, piece in enumerate(merged):
        if piece not in seen:
            tokens.append(piece)
            types.append(1)
            scores.append(-float(rank))
            seen.add(piece)
    for c in pieces:
        if c not in seen:
            tokens.append(c)
            types.append(1)
            scores.append(-1000.0)
            seen.add(c)
    return tokens, scores, types


def write_spm_vocab(path, corpus):
    tokens, scores, types = train_spm_vocab(corpus)
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()


def quantize(src, dst, kind):
    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = 2
    if L.llama_model_quantize(src.encode(), dst.encode(), params) != 0:
        sys.exit(f"quantizing {dst} failed")


def reference(path, ids):
    """llama.cpp's logits after `ids` and its greedy continuation."""
    m = Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False, logits_all=True,
              type_k=0, type_v=0, flash_attn=False)
    m.eval(ids)
    last = np.array(m.scores[len(ids) - 1], dtype=np.float64)
    m.reset()
    greedy = []
    for tok in m.generate(ids, temp=0.0, top_k=1, reset=True):
        greedy.append(int(tok))
        if len(greedy) == GREEDY:
            break
    return last, greedy


def main():
    smollm, out_dir = sys.argv[1], sys.argv[2]
    tiny_dir = os.path.join(out_dir, "tiny")
    os.makedirs(tiny_dir, exist_ok=True)
    f32 = os.path.join(tiny_dir, "tiny-llama.F32.gguf.tmp")
    write_tiny(f32)
    rng = np.random.default_rng(SEED + 1)
    tiny_prompt = [257] + [int(t) for t in rng.integers(0, 256, size=23)]
    cases = {}
    for kind in TYPES:
        path = os.path.join(tiny_dir, f"tiny-llama.{kind}.gguf")
        quantize(f32, path, kind)
        last, greedy = reference(path, tiny_prompt)
        cases[f"tiny/tiny-llama.{kind}.gguf"] = {"prompt": tiny_prompt, "logits": [round(v, 5) for v in last.tolist()], "greedy": greedy}
    os.remove(f32)
    for arch in ["qwen2", "qwen3"]:
        f32 = os.path.join(tiny_dir, f"tiny-{arch}.F32.gguf.tmp")
        write_tiny(f32, arch)
        path = os.path.join(tiny_dir, f"tiny-{arch}.Q4_K_M.gguf")
        quantize(f32, path, "Q4_K_M")
        os.remove(f32)
        last, greedy = reference(path, tiny_prompt)
        cases[f"tiny/tiny-{arch}.Q4_K_M.gguf"] = {"prompt": tiny_prompt, "logits": [round(v, 5) for v in last.tolist()], "greedy": greedy}
    # SmolLM2: the prompt of reference_logits.json (a ChatML question).
    with open(os.path.join(out_dir, "reference_logits.json")) as f:
        ids = json.load(f)["token_ids"]
    last, greedy = reference(smollm, ids)
    top = np.argsort(-last)[:64]
    cases["SmolLM2-135M-Instruct.Q4_1.gguf"] = {
        "prompt": ids,
        "top_logits": [[int(i), round(float(last[i]), 5)] for i in top],
        "greedy": greedy,
    }
    # A SentencePiece vocabulary (no tensors: llama.cpp reads the vocabulary only).
    corpus = open(os.path.join(out_dir, "..", "jobs", "note-conges-injection.md"), encoding="utf-8").read()
    spm = os.path.join(tiny_dir, "spm-vocab.gguf")
    write_spm_vocab(spm, corpus + " " + " ".join(SPM_TEXTS[:3]))
    vocab = Llama(model_path=spm, vocab_only=True, verbose=False)
    cases["tiny/spm-vocab.gguf"] = {
        "texts": SPM_TEXTS,
        "ids": [vocab.tokenize(t.encode(), add_bos=False, special=False) for t in SPM_TEXTS],
    }
    with open(os.path.join(out_dir, "llama_cpp_reference.json"), "w") as f:
        json.dump({"generator": f"llama-cpp-python {version('llama_cpp_python')}, gguf {version('gguf')}",
                   "seed": SEED, "threads": 2, "kv_cache": "f32", "flash_attn": False, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
