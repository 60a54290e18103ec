#!/usr/bin/env bash
# The whole trace path on real trained weights (issue 15 item 3): the numpy forward pass of
# stories260K (scripts/stories260k.py) samples 512 tokens and dumps a KV trace; `pnmkv eval`
# imports it and prints the accuracy table (a budget covering every page equals dense
# attention); the live cluster (`pnmkv run`) decodes on it, also after losing a device
# whose shard is recomputed from the trace, and as separate processes with the same outputs;
# traces in the other storages and dtypes import; a run longer than the trace, a context
# before its first query and a model that is not the trace's are refused, naming both.
# Usage: stories260k_pipeline.sh <pnmkv binary>. Exit 77 (skip) without a python3 that has
# numpy (Debian: python3-numpy; scripts/setup.sh installs it), said in the output.
set -euo pipefail
pnmkv="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=../numpy_python.sh
. "$root/tests/numpy_python.sh"
model="$root/cluster_configs/models/stories260k.yaml"
common=(--set "model.file=$model" --set workload.kind=trace)

# 1. Dump: context 448 + 64 decode steps, queries at every position.
"$py" "$root/scripts/stories260k.py" --out "$tmp/npy" --check
for v in "npz-deflate float16" "safetensors bfloat16" "npz bfloat16"; do
  set -- $v
  "$py" "$root/scripts/stories260k.py" --out "$tmp/$1-$2" --storage "$1" --dtype "$2" \
    --context 96 --steps 8 --query-begin 64 --seed 2 >/dev/null
done

# 2. Eval: every layer, every KV head, two contexts; budget 512 covers every page.
"$pnmkv" eval "${common[@]}" --set "workload.trace_dir=$tmp/npy" \
  --set eval.contexts_tokens=128,448 --set eval.steps=64 --set eval.kv_heads=4 \
  --set eval.budgets_tokens=32,64,128,512 --json "$tmp/eval.json" --threads 2 | tee "$tmp/eval.txt"
grep -q "on the KV trace" "$tmp/eval.txt" || fail "eval did not say it ran on the trace"
grep -q "err_mean" "$tmp/eval.txt" || fail "no accuracy table"
"$py" - "$tmp/eval.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
rows = j["results"]
assert rows, "no results"
full = [r for r in rows if r["budget_tokens"] >= r["context_tokens"] + 64]
assert len(full) == 4, "expected the 512 budget at both contexts and aggregations: %r" % full
for r in full:  # every page selected: dense attention
    assert r["rel_err_max"] < 1e-5, r
    assert abs(r["mass_captured_min"] - 1) < 1e-5, r
    assert r["samples"] == 2 * 64 * 4 * 5, r  # 2 query heads x 64 steps x 4 KV heads x 5 layers
small = [r for r in rows if r["budget_tokens"] == 32]
assert all(r["rel_err_mean"] > 0 and r["mass_captured_mean"] < 1 for r in small), small
print("eval checks passed:", len(rows), "cells")
EOF

# 3. Live cluster, every layer live, full budget: outputs equal dense attention (fp32 on the
# links: the default bf16 partial outputs differ from it by ~2e-3).
run=("$pnmkv" run --quiet "${common[@]}" --set "workload.trace_dir=$tmp/npy" --set run.wire_precision=fp32
     --set workload.context_tokens=448 --set run.steps=16 --set workload.batch=2
     --set cluster.live_layers=5 --set cluster.pnm_devices=2 --set run.step_timeout_ms=60000)
"${run[@]}" --set selection.budget_tokens=512 --json "$tmp/run.json" >/dev/null
# ... a small budget, and a device lost at step 5: its shard is recomputed from the trace.
"${run[@]}" --set selection.budget_tokens=64 --json "$tmp/run64.json" >/dev/null
"${run[@]}" --set selection.budget_tokens=512 --set 'faults.script=crash node=101 step=5' \
  --json "$tmp/crash.json" >/dev/null
# ... and the same job as separate processes (each node maps the trace): the same outputs.
"${run[@]}" --set selection.budget_tokens=64 --multiprocess --json "$tmp/mp64.json" >/dev/null
"$py" - "$tmp/run.json" "$tmp/run64.json" "$tmp/crash.json" "$tmp/mp64.json" <<'EOF'
import json, sys
full, small, crash = (json.load(open(f)) for f in sys.argv[1:4])
for j in (full, small, crash):
    assert j["requests"]["completed"] == 2, j["requests"]
a = full["accuracy"]
assert a["samples"] > 0 and a["output_rel_err_max"] < 1e-5, a
assert abs(a["attention_mass_recall_min"] - 1) < 1e-5, a
assert small["accuracy"]["output_rel_err_mean"] > 0, small["accuracy"]
c = crash["accuracy"]
assert c["output_rel_err_max"] < 1e-5, c
losses = crash["faults"]["device_losses"]
assert losses, "the crash did not happen"
mp = json.load(open(sys.argv[4]))
assert mp["requests"]["output_digests"] == small["requests"]["output_digests"], (mp["requests"], small["requests"])
print("live run checks passed: rel err max %.2e (full), mean %.3g (budget 64); %d device lost, "
      "outputs still dense" % (a["output_rel_err_max"], small["accuracy"]["output_rel_err_mean"], len(losses)))
EOF

# 4. The other storages and dtypes import and evaluate (context 96 + 8 steps).
for d in npz-deflate-float16 safetensors-bfloat16 npz-bfloat16; do
  "$pnmkv" eval "${common[@]}" --set "workload.trace_dir=$tmp/$d" --set eval.contexts_tokens=96 \
    --set eval.steps=8 --set eval.kv_heads=2 --set eval.budgets_tokens=32,128 --threads 1 \
    >"$tmp/$d.txt" || fail "eval on $d"
  grep -q "on the KV trace" "$tmp/$d.txt" || fail "eval on $d did not run on the trace"
done

# 5. Refusals: a run longer than the trace, a context before its first query.
if "${run[@]}" --set workload.context_tokens=500 --set selection.budget_tokens=64 >"$tmp/long.txt" 2>&1; then
  fail "a run past the trace's end was accepted"
fi
grep -q "workload.context_tokens = 500 with run.steps = 16 needs 516 positions" "$tmp/long.txt" ||
  { cat "$tmp/long.txt"; fail "refusal does not name the run's span"; }
grep -q "holds 512 positions" "$tmp/long.txt" || fail "refusal does not name the trace's span"
if "$pnmkv" eval "${common[@]}" --set "workload.trace_dir=$tmp/safetensors-bfloat16" \
  --set eval.contexts_tokens=32 --set eval.steps=8 >"$tmp/early.txt" 2>&1; then
  fail "a context before query_begin was accepted"
fi
grep -q "queries from position 64" "$tmp/early.txt" || { cat "$tmp/early.txt"; fail "early context refusal"; }
if "$pnmkv" eval --set workload.kind=trace >"$tmp/nodir.txt" 2>&1; then fail "kind=trace without a dir"; fi
if "$pnmkv" run --set workload.kind=trace --set "workload.trace_dir=$tmp/npy" >"$tmp/model.txt" 2>&1; then
  fail "a trace of another model was accepted"
fi
grep -q "manifest model.layers = 5) does not match the model file .*llama-3.1-8b.yaml' (layers = 32)" "$tmp/model.txt" ||
  { cat "$tmp/model.txt"; fail "model mismatch refusal"; }
grep -q "needs workload.trace_dir" "$tmp/nodir.txt" || { cat "$tmp/nodir.txt"; fail "no-dir refusal"; }
echo "stories260K pipeline: dump -> import -> eval -> live run passed"
