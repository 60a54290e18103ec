#!/usr/bin/env python3
"""A numpy forward pass of a llama2.c checkpoint (tests/data/stories260K/stories260K.bin) that
samples its own tokens and dumps a KV trace in pnmkv's layout (docs/TRACE_FORMAT.md).

The model follows llama2.c's run.c exactly: RMSNorm (eps 1e-5), interleaved-pair RoPE
(theta 10000), GQA (query head h uses KV head h // (n_heads / n_kv_heads)), SwiGLU FFN,
tied classifier. There is no tokenizer here: it starts from token 1 (BOS) and samples from
its own distribution (seeded), which needs none.

    python3 scripts/stories260k.py --out /tmp/t260 [--context 448 --steps 64
        --storage npy|npz|npz-deflate|safetensors --dtype float32|float16|bfloat16 --seed 1]

Decoding is incremental with a KV cache, one token at a time; --check also runs the whole
sequence at once (causal attention over every position) and fails unless both agree.
Needs numpy only (Debian: python3-numpy).
"""

import argparse
import hashlib
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pnmkv_trace import STORAGES, DTYPES, TraceWriter  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "..", "tests", "data", "stories260K", "stories260K.bin")
SHA256 = "9414d5a285453a7eab631713d171753232c978f6f97654211469aff8be93c8d6"


def load(path):
    raw = open(path, "rb").read()
    if hashlib.sha256(raw).hexdigest() != SHA256:
        sys.exit("stories260k: %s is not the stories260K.bin this script knows (sha256)" % path)
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    hs = dim // n_heads
    w = np.frombuffer(raw, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        a = w[pos:pos + n].reshape(shape)
        pos += n
        return a.astype(np.float64)

    m = dict(dim=dim, hidden=hidden, layers=n_layers, heads=n_heads, kv_heads=n_kv, vocab=vocab,
             seq_len=seq_len, head_size=hs)
    m["emb"] = take(vocab, dim)
    m["rms_att"] = take(n_layers, dim)
    m["wq"] = take(n_layers, n_heads * hs, dim)
    m["wk"] = take(n_layers, n_kv * hs, dim)
    m["wv"] = take(n_layers, n_kv * hs, dim)
    m["wo"] = take(n_layers, dim, n_heads * hs)
    m["rms_ffn"] = take(n_layers, dim)
    m["w1"] = take(n_layers, hidden, dim)
    m["w2"] = take(n_layers, dim, hidden)
    m["w3"] = take(n_layers, hidden, dim)
    m["rms_final"] = take(dim)
    pos += seq_len * hs  # freq_cis_real, freq_cis_imag (unused: recomputed as run.c does)
    m["wcls"] = m["emb"] if shared else take(vocab, dim)
    if pos != w.size:
        sys.exit("stories260k: %d floats left over in %s; not a version-0 llama2.c checkpoint" % (w.size - pos, path))
    return m


def rmsnorm(x, g):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * g


def rope(x, positions, hs):
    """x: [..., T, heads, hs]; rotates pairs (2i, 2i+1) of each head by pos * 10000^(-2i/hs)."""
    i = np.arange(0, hs, 2)
    freq = 1.0 / np.power(10000.0, i / hs)
    ang = positions[:, None] * freq[None, :]  # [T, hs/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def forward(m, tokens, cache=None, start=0):
    """Runs tokens at positions start.. with the cache of positions < start; returns logits and,
    per layer, the post-RoPE q [T, heads, hs], k and v [T, kv, hs] of these tokens."""
    T = len(tokens)
    hs, H, KV = m["head_size"], m["heads"], m["kv_heads"]
    g = H // KV
    pos = np.arange(start, start + T, dtype=np.float64)
    x = m["emb"][tokens]
    out = []
    for l in range(m["layers"]):
        xb = rmsnorm(x, m["rms_att"][l])
        q = rope((xb @ m["wq"][l].T).reshape(T, H, hs), pos, hs)
        k = rope((xb @ m["wk"][l].T).reshape(T, KV, hs), pos, hs)
        v = (xb @ m["wv"][l].T).reshape(T, KV, hs)
        if cache is not None:
            cache[l][0].append(k)
            cache[l][1].append(v)
            K, V = np.concatenate(cache[l][0]), np.concatenate(cache[l][1])
        else:
            K, V = k, v
        att = np.empty((T, H, hs))
        for h in range(H):
            s = (q[:, h, :] @ K[:, h // g, :].T) / np.sqrt(hs)  # [T, start+T]
            s = s + np.triu(np.full((T, K.shape[0]), -np.inf), k=start + 1)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            att[:, h, :] = (p / p.sum(axis=1, keepdims=True)) @ V[:, h // g, :]
        x = x + att.reshape(T, H * hs) @ m["wo"][l].T
        xb = rmsnorm(x, m["rms_ffn"][l])
        a = xb @ m["w1"][l].T
        x = x + ((a / (1 + np.exp(-a))) * (xb @ m["w3"][l].T)) @ m["w2"][l].T
        out.append((q, k, v))
    return rmsnorm(x, m["rms_final"]) @ m["wcls"].T, out


def sample(m, n, seed, temperature):
    rng = np.random.default_rng(seed)
    cache = [([], []) for _ in range(m["layers"])]
    tokens, logprob = [1], 0.0  # BOS
    for t in range(n - 1):
        logits, _ = forward(m, [tokens[-1]], cache, start=t)
        z = logits[0] / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        nxt = int(rng.choice(m["vocab"], p=p))
        logprob += float(np.log(p[nxt]))
        tokens.append(nxt)
    return tokens, cache, -logprob / (n - 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", required=True, help="trace folder to write")
    ap.add_argument("--context", type=int, default=448, help="prefill (context) tokens")
    ap.add_argument("--steps", type=int, default=64, help="decode steps after the context")
    ap.add_argument("--query-begin", type=int, default=0,
                    help="first position with queries (default 0: any context can be evaluated)")
    ap.add_argument("--storage", default="npy", choices=STORAGES)
    ap.add_argument("--dtype", default="float32", choices=DTYPES)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--check", action="store_true",
                    help="also run the sequence in one pass and compare with the incremental q/k/v")
    a = ap.parse_args()
    m = load(a.model)
    n = a.context + a.steps
    if n > m["seq_len"] or a.context < 1 or a.steps < 0:
        sys.exit("stories260k: context + steps = %d; allowed: [1, %d] (the model's context)" % (n, m["seq_len"]))
    tokens, cache, nll = sample(m, n, a.seed, a.temperature)
    # The last token's K/V: one more step writes them (its logits are not needed).
    forward(m, [tokens[-1]], cache, start=n - 1)
    H, KV, hs = m["heads"], m["kv_heads"], m["head_size"]
    g = H // KV
    # The incremental pass keeps K/V only: the whole sequence in one pass gives the queries
    # of every position (and the K/V to compare with).
    _, full = forward(m, tokens)
    w = TraceWriter(a.out, a.storage, a.dtype,
                    model=dict(name="stories260K", layers=m["layers"], q_heads=H, kv_heads=KV, head_dim=hs),
                    context_tokens=a.context, decode_steps=a.steps, query_begin=a.query_begin,
                    layers=range(m["layers"]), kv_heads=range(KV), tokens=tokens,
                    source="llama2.c stories260K (MIT), numpy forward pass, tokens sampled from BOS "
                           "(seed %d, temperature %g), scripts/stories260k.py" % (a.seed, a.temperature))
    worst = 0.0
    for l in range(m["layers"]):
        K = np.concatenate(cache[l][0])  # [n, KV, hs], incremental
        V = np.concatenate(cache[l][1])
        q, k_full, v_full = full[l]
        worst = max(worst, float(np.abs(K - k_full).max()), float(np.abs(V - v_full).max()))
        qs = q[a.query_begin:].reshape(n - a.query_begin, KV, g, hs).transpose(1, 0, 2, 3)
        w.add_layer(l, K.transpose(1, 0, 2), V.transpose(1, 0, 2), qs)
    w.close()
    print("stories260k: %d tokens (context %d + %d steps), mean NLL of its own samples %.3f nats "
          "(uniform: %.3f); incremental vs one-pass K/V max |diff| %.2e; wrote %s (%s, %s)"
          % (n, a.context, a.steps, nll, np.log(m["vocab"]), worst, a.out, a.storage, a.dtype))
    if a.check and worst > 1e-9:
        sys.exit("stories260k: incremental and one-pass K/V differ by %.3e" % worst)


if __name__ == "__main__":
    main()
