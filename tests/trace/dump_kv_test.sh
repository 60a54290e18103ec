#!/usr/bin/env bash
# scripts/dump_kv.py on a tiny randomly initialised Llama-shaped model built from a config
# (2 layers, 4 query / 2 KV heads, head_dim 16; no download, bytes as tokens): it checks its
# capture against the model's decoding cache, and pnmkv imports the trace and evaluates it
# (a budget covering every page equals dense attention). Needs torch and transformers: exit
# 77 (skip), said in the output, where they are not installed (CI, the development machine).
# Usage: dump_kv_test.sh <pnmkv binary>
set -euo pipefail
pnmkv="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
py=""
for c in "${PNMKV_PYTHON:-}" python3 /usr/bin/python3; do
  [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 &&
    "$c" -c "import torch, transformers, numpy" 2>/dev/null && { py="$c"; break; }
done
if [ -z "$py" ]; then
  # What runs without torch still must: the script compiles and explains itself.
  for c in "${PNMKV_PYTHON:-}" python3 /usr/bin/python3; do
    if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && "$c" -c "import numpy" 2>/dev/null; then
      "$c" "$root/scripts/dump_kv.py" --help | grep -q -- "--random-config" || { echo "FAIL: dump_kv.py --help"; exit 1; }
      break
    fi
  done
  echo "SKIP: no python3 with torch, transformers and numpy here (scripts/dump_kv.py runs next to a model)"
  exit 77
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/config.json" <<'J'
{"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
 "max_position_embeddings": 1024, "rope_theta": 10000.0, "tie_word_embeddings": false}
J
cat >"$tmp/model.yaml" <<'Y'
name: tiny-random-llama
source: tests/trace/dump_kv_test.sh config.json
layers: 2
hidden: 64
q_heads: 4
kv_heads: 2
head_dim: 16
ffn: 128
vocab: 256
tied_embeddings: false
Y
cat "$root"/scripts/*.py "$root"/trace/*.cpp >"$tmp/text.txt"  # any text: bytes are the tokens
for st in "safetensors bfloat16 bfloat16" "npy float32 float32"; do
  set -- $st
  "$py" "$root/scripts/dump_kv.py" --random-config "$tmp/config.json" --tokenizer bytes \
    --text "$tmp/text.txt" --out "$tmp/$1" --context 256 --steps 16 --query-begin 128 \
    --storage "$1" --dtype "$2" --torch-dtype "$3" --device cpu --seed 3
  "$pnmkv" eval --set "model.file=$tmp/model.yaml" --set workload.kind=trace \
    --set "workload.trace_dir=$tmp/$1" --set eval.contexts_tokens=128,256 --set eval.steps=16 \
    --set eval.kv_heads=2 --set eval.budgets_tokens=32,1024 --json "$tmp/$1.json" --threads 1 | tee "$tmp/$1.txt"
  grep -q "on the KV trace" "$tmp/$1.txt"
  "$py" - "$tmp/$1.json" <<'P'
import json, sys
rows = json.load(open(sys.argv[1]))["results"]
full = [r for r in rows if r["budget_tokens"] == 1024]
assert len(full) == 4 and all(r["rel_err_max"] < 1e-5 and abs(r["mass_captured_min"] - 1) < 1e-5 for r in full), full
assert all(r["samples"] == 2 * 16 * 2 * 2 for r in rows), rows
print("dump_kv trace checks passed")
P
done
echo "dump_kv.py: tiny random Llama -> trace -> pnmkv eval passed"
