#!/usr/bin/env bash
# The trained model's trace path (issue 15 item 4): numpy forward vs torch's reference
# logits (dump_trace.py --check fails on disagreement), a 576-position trace of the text of
# core/workload.hpp, `pnmkv eval` on it (a budget covering every page equals dense attention,
# smaller budgets capture less), and analyze_trace.py's own Quest on the same trace agreeing
# with pnmkv's mass captured.
# Usage: trained_model_pipeline.sh <pnmkv binary>. Exit 77 (skip) without python3 + numpy.
set -euo pipefail
pnmkv="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=../numpy_python.sh
. "$root/tests/numpy_python.sh"
tm="$root/experiments/trained_model"

"$py" "$tm/dump_trace.py" --check
"$py" "$tm/dump_trace.py" --text "$root/core/workload.hpp" --positions 576 --decode-steps 64 --out "$tmp/t"

"$pnmkv" eval --set "model.file=$root/cluster_configs/models/trained-bytes-22m.yaml" \
  --set workload.kind=trace --set "workload.trace_dir=$tmp/t" --set eval.contexts_tokens=256,512 \
  --set eval.steps=64 --set eval.kv_heads=2 --set eval.budgets_tokens=64,128,1024 \
  --json "$tmp/eval.json" --threads 2 | tee "$tmp/eval.txt"
grep -q "on the KV trace" "$tmp/eval.txt" || fail "eval did not run on the trace"

"$py" "$tm/analyze_trace.py" "$tmp/t" --contexts 256,512 --steps 64 --budgets 64,128,1024 \
  --json "$tmp/stats.json" >/dev/null

"$py" - "$tmp/eval.json" "$tmp/stats.json" <<'PY'
import json, sys
ev = json.load(open(sys.argv[1]))["results"]
st = json.load(open(sys.argv[2]))["rows"]
bad = []
for r in ev:
    if r["gqa_aggregation"] != "max":
        continue
    c, b = r["context_tokens"], r["budget_tokens"]
    if b == 1024:  # 1024 tokens cover every page of 512 + 64 positions: dense
        if r["rel_err_max"] > 1e-4 or r["mass_captured_min"] < 0.9999:
            bad.append(f"context {c}: full budget is not dense (err max {r['rel_err_max']}, mass min {r['mass_captured_min']})")
    else:
        if not r["mass_captured_mean"] < 0.9999:
            bad.append(f"context {c} budget {b}: captured all the mass ({r['mass_captured_mean']}): nothing tested")
        rows = [x for x in st if x["context"] == c]
        mine = sum(x[f"quest@{b}"] for x in rows) / len(rows)
        # float32 vs bf16 page summaries may swap a near-tied page now and then
        if abs(mine - r["mass_captured_mean"]) > 0.005:
            bad.append(f"context {c} budget {b}: pnmkv mass {r['mass_captured_mean']:.4f}, analyze_trace {mine:.4f}")
if bad:
    sys.exit("FAIL: " + "; ".join(bad))
print("trained model pipeline: numpy forward = torch, full budget = dense, Quest mass agrees with analyze_trace")
PY
