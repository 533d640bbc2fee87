#!/usr/bin/env python3
"""An independent reading of a Llama GGUF file in NumPy, to check moulin's runner.

It parses the GGUF file itself (no llama.cpp, no moulin code), dequantizes the
tensors, un-permutes the Q/K rows llama.cpp stores for its interleaved RoPE,
runs one forward pass over a fixed list of token ids in float64 and writes, as
JSON, the logits that tests/llm.rs compares against:

    python scripts/llm_reference.py MODEL.gguf fixtures/llm/reference_logits.json

Needs only NumPy (setup.sh's converter environment has it).
"""
import json
import struct
import sys

import numpy as np

# A question in ChatML, with SmolLM2's default system prompt; its token ids are
# written with the logits and the test feeds the runner those same ids.
PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def unpack(self, fmt):
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self):
        n = self.unpack("<Q")
        s = self.data[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def value(self, kind):
        if kind in GGUF_SCALARS:
            return self.unpack(GGUF_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            inner = self.unpack("<I")
            n = self.unpack("<Q")
            return [self.value(inner) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {kind}")


def dequantize(kind, raw, count):
    if kind == 0:  # F32
        return np.frombuffer(raw, dtype="<f4", count=count).astype(np.float64)
    if kind == 1:  # F16
        return np.frombuffer(raw, dtype="<f2", count=count).astype(np.float64)
    blocks = count // 32
    if kind == 8:  # Q8_0: f16 scale, 32 x i8
        b = np.frombuffer(raw, dtype=np.uint8, count=blocks * 34).reshape(blocks, 34)
        d = b[:, :2].copy().view("<f2").astype(np.float64)
        q = b[:, 2:].copy().view(np.int8).astype(np.float64)
        return (q * d).reshape(-1)
    if kind in (2, 3):  # Q4_0: f16 scale, 16 bytes; Q4_1: f16 scale, f16 min, 16 bytes
        size = 18 if kind == 2 else 20
        b = np.frombuffer(raw, dtype=np.uint8, count=blocks * size).reshape(blocks, size)
        d = b[:, :2].copy().view("<f2").astype(np.float64)
        qs = b[:, size - 16:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)
        if kind == 2:
            return ((q - 8.0) * d).reshape(-1)
        m = b[:, 2:4].copy().view("<f2").astype(np.float64)
        return (q * d + m).reshape(-1)
    raise ValueError(f"tensor type {kind} not handled by this reference")


BLOCK_BYTES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34)}


def header(data):
    """A GGUF file's header: version, metadata, tensor infos, and where the
    metadata ends, where the tensor infos end and where the tensor data starts."""
    r = Reader(data)
    assert r.unpack("<I") == 0x46554747, "not a GGUF file"
    version = r.unpack("<I")
    assert version in (2, 3), version
    n_tensors = r.unpack("<Q")
    n_kv = r.unpack("<Q")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.unpack("<I"))
    kv_end = r.pos
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
        kind = r.unpack("<I")
        offset = r.unpack("<Q")
        infos.append((name, dims, kind, offset))
    align = meta.get("general.alignment", 32)
    base = (r.pos + align - 1) // align * align
    return {"version": version, "meta": meta, "infos": infos,
            "kv_end": kv_end, "infos_end": r.pos, "base": base}


def load(path):
    data = open(path, "rb").read()
    h = header(data)
    meta, infos, base = h["meta"], h["infos"], h["base"]
    tensors = {}
    for name, dims, kind, offset in infos:
        count = int(np.prod(dims))
        per, size = BLOCK_BYTES[kind]
        raw = data[base + offset: base + offset + count // per * size]
        # GGUF lists the fastest dimension first; NumPy wants it last.
        tensors[name] = dequantize(kind, raw, count).reshape(list(reversed(dims)))
    return meta, tensors


def unpermute(w, heads):
    """Undo llama.cpp's Q/K row permutation (back to "rotate half" RoPE)."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def forward(meta, t, ids):
    arch = meta["general.architecture"]
    heads = meta[f"{arch}.attention.head_count"]
    kv_heads = meta[f"{arch}.attention.head_count_kv"]
    eps = meta[f"{arch}.attention.layer_norm_rms_epsilon"]
    theta = meta.get(f"{arch}.rope.freq_base", 10000.0)
    layers = meta[f"{arch}.block_count"]
    x = t["token_embd.weight"][ids]
    n, dim = x.shape
    hd = dim // heads
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.outer(np.arange(n), inv)
    cos = np.concatenate([np.cos(ang)] * 2, axis=1)
    sin = np.concatenate([np.sin(ang)] * 2, axis=1)

    def rope(v):  # v: heads, n, hd
        half = hd // 2
        rotated = np.concatenate([-v[..., half:], v[..., :half]], axis=-1)
        return v * cos + rotated * sin

    causal = np.triu(np.full((n, n), -np.inf), 1)
    # Mistral's sliding window: query i sees keys i - window + 1 ..= i.
    window = meta.get(f"{arch}.attention.sliding_window")
    if window:
        causal = causal + np.tril(np.full((n, n), -np.inf), -int(window))
    for i in range(layers):
        p = f"blk.{i}."
        h = rms_norm(x, t[p + "attn_norm.weight"], eps)
        q = h @ unpermute(t[p + "attn_q.weight"], heads).T
        k = h @ unpermute(t[p + "attn_k.weight"], kv_heads).T
        v = h @ t[p + "attn_v.weight"].T
        q = rope(q.reshape(n, heads, hd).transpose(1, 0, 2))
        k = rope(k.reshape(n, kv_heads, hd).transpose(1, 0, 2))
        v = v.reshape(n, kv_heads, hd).transpose(1, 0, 2)
        group = heads // kv_heads
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + causal
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(n, dim)
        x = x + o @ t[p + "attn_output.weight"].T
        h = rms_norm(x, t[p + "ffn_norm.weight"], eps)
        g = h @ t[p + "ffn_gate.weight"].T
        u = h @ t[p + "ffn_up.weight"].T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ t[p + "ffn_down.weight"].T
    x = rms_norm(x, t["output_norm.weight"], eps)
    head = t.get("output.weight", t["token_embd.weight"])
    return x @ head.T


def tokenize_known(meta):
    """The prompt's token ids, found by greedy longest match on the GGUF vocabulary.

    Not BPE: only a realistic input. The ids go into the JSON and the runner is
    given the same ids, so its tokenizer plays no part in this check."""
    tokens = meta["tokenizer.ggml.tokens"]
    index = {tok: i for i, tok in enumerate(tokens)}
    # GPT-2 byte-level alphabet: bytes map to printable characters.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    byte_char = {b: chr(c) for b, c in zip(bs, cs)}
    text = "".join(byte_char[b] for b in PROMPT.encode("utf-8"))
    text = text.replace("".join(byte_char[b] for b in b"<|im_start|>"), "\0S").replace(
        "".join(byte_char[b] for b in b"<|im_end|>"), "\0E")
    ids = []
    i = 0
    while i < len(text):
        if text.startswith("\0S", i):
            ids.append(index["<|im_start|>"])
            i += 2
            continue
        if text.startswith("\0E", i):
            ids.append(index["<|im_end|>"])
            i += 2
            continue
        for j in range(min(len(text), i + 32), i, -1):
            if text[i:j] in index and "\0" not in text[i:j]:
                ids.append(index[text[i:j]])
                i = j
                break
        else:
            raise ValueError(f"no token for {text[i]!r}")
    return ids


def main():
    model, out = sys.argv[1], sys.argv[2]
    meta, tensors = load(model)
    ids = tokenize_known(meta)
    logits = forward(meta, tensors, np.array(ids))
    last = logits[-1]
    top = np.argsort(-last)[:10]
    result = {
        "model": model.rsplit("/", 1)[-1],
        "note": "float64 NumPy forward pass of scripts/llm_reference.py; not moulin code",
        "token_ids": [int(i) for i in ids],
        "last_top10": [[int(i), float(last[i])] for i in top],
        # A fixed slice of every position's logits, for a tolerance check.
        "positions": [[float(v) for v in row[:16]] for row in logits],
        "last_logsumexp": float(np.log(np.exp(last - last.max()).sum()) + last.max()),
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"{len(ids)} tokens; greedy next token {top[0]} ({meta['tokenizer.ggml.tokens'][top[0]]!r})")


if __name__ == "__main__":
    main()
