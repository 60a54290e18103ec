#!/usr/bin/env python3
"""Dump a KV trace (docs/TRACE_FORMAT.md, version 1, storage npy) of the trained byte-level
model (weights/ + model.py's CONFIG) with a numpy forward pass (float32; no torch needed).

The sequence is one held-out document of corpus/val.bin (documents are separated by byte 2),
teacher-forced: position p holds byte p of the document, so the "decode steps" are the
document's own next bytes and every position has the query the model computes there
(query_begin = 0, so one trace serves every context up to positions - decode_steps).

  python3 dump_trace.py --doc 39 --positions 16384 --decode-steps 128 --out traces/membarriers
  python3 dump_trace.py --check        # numpy forward vs weights/reference_logits.npy (torch, bf16)
  python3 dump_trace.py --text FILE --positions 576 --decode-steps 64 --out DIR   # any text
Needs python3-numpy (Debian). Writes float32 .npy files: k, v [positions, 64] and
q [positions, 4, 64] for every layer and KV head (about 25 MB per layer at 16384 positions).
"""
import argparse, json, os, struct, sys, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = dict(vocab=256, d_model=512, n_layers=8, n_q_heads=8, n_kv_heads=2, head_dim=64,
              d_ff=1408, rope_theta=500000.0, norm_eps=1e-5, max_seq=16384)  # = model.py


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        base = 8 + n
        buf = np.fromfile(path, dtype=np.uint8)
    out = {}
    for k, m in hdr.items():
        if k == "__metadata__":
            continue
        a, b = m["data_offsets"]
        raw = buf[base + a: base + b]
        if m["dtype"] == "BF16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif m["dtype"] == "F32":
            arr = raw.view("<f4")
        else:
            sys.exit(f"dump_trace: {path}: tensor {k} has dtype {m['dtype']}, expected BF16 or F32")
        out[k] = arr.reshape(m["shape"]).astype(np.float32)
    return out


def load_weights(wdir):
    w = {}
    files = sorted(f for f in os.listdir(wdir) if f.endswith(".safetensors"))
    if not files:
        sys.exit(f"dump_trace: no .safetensors in {wdir}")
    for f in files:
        w.update(load_safetensors(os.path.join(wdir, f)))
    return w


def rmsnorm(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def rope(x, cos, sin):  # x [T, H, D], rotate-half as model.py
    d2 = x.shape[-1] // 2
    x1, x2 = x[..., :d2], x[..., d2:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def forward(w, tokens, c=CONFIG, record=None, chunk=512):
    """Full causal forward over tokens; record(layer, q [T,Hq,D], k [T,Hkv,D], v) if given."""
    T = len(tokens)
    hd, nq, nkv = c["head_dim"], c["n_q_heads"], c["n_kv_heads"]
    g = nq // nkv
    inv = 1.0 / (c["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    x = w["embed.weight"][np.asarray(tokens)]
    scale = 1.0 / np.sqrt(hd)
    for L in range(c["n_layers"]):
        p = f"layers.{L}."
        h = rmsnorm(x, w[p + "attn_norm.weight"], c["norm_eps"])
        q = rope((h @ w[p + "wq.weight"].T).reshape(T, nq, hd), cos, sin)
        k = rope((h @ w[p + "wk.weight"].T).reshape(T, nkv, hd), cos, sin)
        v = (h @ w[p + "wv.weight"].T).reshape(T, nkv, hd)
        if record:
            record(L, q, k, v)
        att = np.empty((T, nq, hd), dtype=np.float32)
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            for j in range(nq):
                kv = j // g
                sc = (q[s:e, j] @ k[:e, kv].T) * scale  # [e-s, e]
                sc[np.triu_indices(e - s, k=s + 1, m=e)] = -np.inf
                sc -= sc.max(-1, keepdims=True)
                np.exp(sc, out=sc)
                sc /= sc.sum(-1, keepdims=True)
                att[s:e, j] = sc @ v[:e, kv]
        x = x + att.reshape(T, nq * hd) @ w[p + "wo.weight"].T
        h = rmsnorm(x, w[p + "mlp_norm.weight"], c["norm_eps"])
        a1 = h @ w[p + "w1.weight"].T
        x = x + ((a1 / (1 + np.exp(-a1))) * (h @ w[p + "w3.weight"].T)) @ w[p + "w2.weight"].T
    return rmsnorm(x, w["norm.weight"], c["norm_eps"]) @ w["head.weight"].T


def val_docs(path):
    v = np.fromfile(path, dtype=np.uint8)
    cut = np.flatnonzero(v == 2)
    st = np.concatenate([[0], cut[:-1] + 1])
    return v, st, cut - st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=os.path.join(HERE, "weights"))
    ap.add_argument("--val", default=os.path.join(HERE, "corpus", "val.bin"))
    ap.add_argument("--doc", type=int, default=39, help="index of the val.bin document")
    ap.add_argument("--text", help="take the bytes of this file instead of a val.bin document")
    ap.add_argument("--positions", type=int, default=16384)
    ap.add_argument("--decode-steps", type=int, default=128)
    ap.add_argument("--out")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bos", action="store_true",
                    help="put the document separator (byte 2, what precedes every document in "
                         "training) at position 0, as a BOS token, and the document after it")
    a = ap.parse_args()
    w = load_weights(a.weights)
    if a.text:
        v = np.fromfile(a.text, dtype=np.uint8)
        st, ln, a.doc = np.array([0]), np.array([len(v)]), 0
    elif not a.check:
        v, st, ln = val_docs(a.val)
    if a.check:
        ref = np.load(os.path.join(a.weights, "reference_logits.npy"))
        v = np.fromfile(os.path.join(a.weights, "reference_input.bin"), dtype=np.uint8)  # val.bin[:1025]
        got = forward(w, v[:ref.shape[0]].astype(np.int64))
        d = np.abs(got - ref)
        lp = lambda z: z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
        nxt = v[1:ref.shape[0] + 1].astype(np.int64)
        nll = lambda z: -lp(z)[np.arange(len(nxt)), nxt].mean()
        agree = (got.argmax(-1) == ref.argmax(-1)).mean()
        print(f"numpy fp32 vs torch bf16 logits: max |diff| {d.max():.3f}, mean {d.mean():.4f}; "
              f"argmax agreement {agree:.4f}; nll numpy {nll(got):.4f} torch {nll(ref):.4f} nats/byte")
        # bf16 autocast against float32: a few argmax flips on near-ties, no systematic drift
        if agree < 0.98 or abs(nll(got) - nll(ref)) > 0.01 or d.max() > 0.5:
            sys.exit("dump_trace --check: the numpy forward disagrees with torch's reference logits")
        return
    if a.positions > CONFIG["max_seq"]:
        sys.exit(f"dump_trace: --positions {a.positions} exceeds the training length {CONFIG['max_seq']}")
    if a.positions < a.decode_steps + 16:
        sys.exit(f"dump_trace: --positions {a.positions} must exceed --decode-steps {a.decode_steps} by a page (16)")
    if not (0 <= a.doc < len(st)):
        sys.exit(f"dump_trace: --doc {a.doc}: val.bin has documents 0..{len(st)-1}")
    if ln[a.doc] < a.positions:
        sys.exit(f"dump_trace: {'--text ' + a.text if a.text else 'document %d' % a.doc} has {ln[a.doc]} bytes, "
                 f"fewer than --positions {a.positions}")
    toks = v[st[a.doc]: st[a.doc] + a.positions - int(a.bos)].astype(np.int64)
    if a.bos:
        toks = np.concatenate([[2], toks])
    os.makedirs(a.out, exist_ok=True)
    c = CONFIG
    g = c["n_q_heads"] // c["n_kv_heads"]

    def record(L, q, k, vv):
        for H in range(c["n_kv_heads"]):
            np.save(os.path.join(a.out, f"layer.{L}.kv.{H}.k.npy"), np.ascontiguousarray(k[:, H]))
            np.save(os.path.join(a.out, f"layer.{L}.kv.{H}.v.npy"), np.ascontiguousarray(vv[:, H]))
            np.save(os.path.join(a.out, f"layer.{L}.kv.{H}.q.npy"),
                    np.ascontiguousarray(q[:, H * g:(H + 1) * g]))
        print(f"layer {L} written ({time.time()-t0:.0f}s)", flush=True)

    t0 = time.time()
    logits = forward(w, toks, record=record)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = (lse[:-1] - logits[np.arange(len(toks) - 1), toks[1:]]).mean()
    head = bytes(v[st[a.doc]: st[a.doc] + 60]).decode("utf-8", "replace").strip().splitlines()[0:2]
    C = a.positions - a.decode_steps
    man = {"format": "pnmkv-kv-trace", "version": 1, "storage": "npy", "files": [],
           "dtype": "float32",
           "model": {"name": "pnmkv-trained-bytes-22M", "layers": c["n_layers"],
                     "q_heads": c["n_q_heads"], "kv_heads": c["n_kv_heads"], "head_dim": c["head_dim"]},
           "gqa": "contiguous", "rope_applied": True, "softmax_scale": 1.0 / np.sqrt(c["head_dim"]),
           "context_tokens": C, "decode_steps": a.decode_steps, "positions": a.positions,
           "query_begin": 0, "layers": list(range(c["n_layers"])),
           "kv_heads": list(range(c["n_kv_heads"])), "tokens": [int(t) for t in toks],
           "source": (f"experiments/trained_model/dump_trace.py {('--text ' + a.text) if a.text else '--doc %d' % a.doc} --positions {a.positions} "
                      f"--decode-steps {a.decode_steps}{' --bos' if a.bos else ''} --weights {os.path.basename(os.path.normpath(a.weights))}; "
                      f"{('text ' + os.path.basename(a.text)) if a.text else 'val.bin document %d' % a.doc} ({ln[a.doc]} bytes, "
                      f"starts {' / '.join(head)!r}), teacher-forced; numpy float32 forward; "
                      f"mean next-byte loss on it {nll:.4f} nats")}
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(man, f)
    print(f"trace of {a.positions} positions in {a.out} ({time.time()-t0:.0f}s); loss on the document {nll:.4f} nats/byte")


if __name__ == "__main__":
    main()
