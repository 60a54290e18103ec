"""Writes a KV trace in pnmkv's layout (docs/TRACE_FORMAT.md) from numpy arrays.

Needs numpy only (safetensors files are written by hand: an 8-byte header length, a JSON
header, raw little-endian data), so the tiny-model test runs with Debian's python3-numpy.
Used by scripts/dump_kv.py (Hugging Face models) and scripts/stories260k.py (llama2.c).

    w = TraceWriter(out_dir, storage="npy", dtype="float32",
                    model=dict(name=..., layers=..., q_heads=..., kv_heads=..., head_dim=...),
                    context_tokens=C, decode_steps=N, query_begin=0,
                    layers=[0, 1], kv_heads=[0, 1, 2, 3])
    w.add_layer(0, k, v, q)   # k, v: [len(kv_heads), C+N, head_dim]
                              # q: [len(kv_heads), C+N-query_begin, group, head_dim]
    w.close()                 # manifest.json last: a folder without it is no trace
"""

import json
import os

import numpy as np

STORAGES = ("npy", "npz", "npz-deflate", "safetensors")
DTYPES = ("float32", "float16", "bfloat16")


def to_storage(a, dtype):
    """float array -> the stored numpy array (bf16 as its raw bits in uint16)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError("non-finite values in a tensor")
    if dtype == "float32":
        return a.astype("<f4")
    if dtype == "float16":
        return a.astype("<f2")
    if dtype == "bfloat16":  # round to nearest even, as pnmkv's to_bf16
        u = a.view("<u4").astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    raise ValueError("dtype %r; allowed: %s" % (dtype, ", ".join(DTYPES)))


def write_safetensors(path, tensors, dtype):
    st = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    header, off = {}, 0
    for name, arr in tensors.items():
        header[name] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
        off += arr.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())


class TraceWriter:
    def __init__(self, out_dir, storage, dtype, model, context_tokens, decode_steps,
                 query_begin, layers, kv_heads, tokens=None, source="", softmax_scale=None):
        if storage not in STORAGES:
            raise ValueError("storage %r; allowed: %s" % (storage, ", ".join(STORAGES)))
        if dtype not in DTYPES:
            raise ValueError("dtype %r; allowed: %s" % (dtype, ", ".join(DTYPES)))
        if not 0 <= query_begin <= context_tokens:
            raise ValueError("query_begin must be in [0, context_tokens]")
        self.out_dir, self.storage, self.dtype = out_dir, storage, dtype
        self.model = dict(model)
        self.group = model["q_heads"] // model["kv_heads"]
        self.positions = context_tokens + decode_steps
        self.layers, self.kv_heads = list(layers), list(kv_heads)
        self.files, self.written = [], set()
        self.manifest = {
            "format": "pnmkv-kv-trace", "version": 1,
            "storage": "npz" if storage.startswith("npz") else storage,
            "files": self.files, "dtype": dtype,
            "model": self.model, "gqa": "contiguous", "rope_applied": True,
            "context_tokens": int(context_tokens), "decode_steps": int(decode_steps),
            "positions": int(self.positions), "query_begin": int(query_begin),
            "layers": [int(x) for x in self.layers], "kv_heads": [int(x) for x in self.kv_heads],
        }
        if softmax_scale is not None:
            self.manifest["softmax_scale"] = float(softmax_scale)
        if tokens is not None:
            if len(tokens) != self.positions:
                raise ValueError("tokens: %d ids for %d positions" % (len(tokens), self.positions))
            self.manifest["tokens"] = [int(t) for t in tokens]
        if source:
            self.manifest["source"] = source
        os.makedirs(out_dir, exist_ok=True)
        stale = os.path.join(out_dir, "manifest.json")
        if os.path.exists(stale):
            os.remove(stale)

    def add_layer(self, layer, k, v, q):
        d = self.model["head_dim"]
        nh = len(self.kv_heads)
        qb = self.manifest["query_begin"]
        want = {"k": (nh, self.positions, d), "v": (nh, self.positions, d),
                "q": (nh, self.positions - qb, self.group, d)}
        for name, arr in (("k", k), ("v", v), ("q", q)):
            if tuple(arr.shape) != want[name]:
                raise ValueError("layer %d %s: shape %s, expected %s" % (layer, name, tuple(arr.shape), want[name]))
        if layer not in self.layers or layer in self.written:
            raise ValueError("layer %d not listed or written twice" % layer)
        tensors = {}
        for i, h in enumerate(self.kv_heads):
            for name, arr in (("k", k), ("v", v), ("q", q)):
                tensors["layer.%d.kv.%d.%s" % (layer, h, name)] = to_storage(arr[i], self.dtype)
        if self.storage == "npy":
            for name, arr in tensors.items():
                np.save(os.path.join(self.out_dir, name + ".npy"), arr)
        elif self.storage.startswith("npz"):
            fn = "layer.%d.npz" % layer
            save = np.savez_compressed if self.storage == "npz-deflate" else np.savez
            save(os.path.join(self.out_dir, fn), **tensors)
            self.files.append(fn)
        else:
            fn = "layer.%d.safetensors" % layer
            write_safetensors(os.path.join(self.out_dir, fn), tensors, self.dtype)
            self.files.append(fn)
        self.written.add(layer)

    def close(self):
        missing = [l for l in self.layers if l not in self.written]
        if missing:
            raise ValueError("layers %s were never written" % missing)
        with open(os.path.join(self.out_dir, "manifest.json"), "w") as f:
            json.dump(self.manifest, f, indent=1)
            f.write("\n")
