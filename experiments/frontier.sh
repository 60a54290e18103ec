#!/usr/bin/env bash
# The search / aggregation frontier (issue 14 items 5 and 6) into RESULTS_DIR: the live runs
# of sweeps/frontier.yaml (frontier_live.csv), the modelled sweep sweeps/frontier_sim.yaml on
# RESULTS_DIR/calibration.json (frontier_sim.csv), `pnmkv eval` on the Llama-3.1-405B shape
# (frontier_eval.csv) and `pnmkv bench kernels --json`
# (kernels.json, kernels.txt). run_all.sh calls it after the calibration run; it can run alone
# on an existing results folder (then `frontier.py plot RESULTS_DIR` and render.py).
# Usage: experiments/frontier.sh PNMKV RESULTS_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
bin="$(realpath "$1")"
out="$(realpath "$2")"
py=python3
for cand in python3 /usr/bin/python3; do
  if "$cand" -c "import yaml, matplotlib" 2>/dev/null; then py="$cand"; break; fi
done
cd "$root"
"$py" "$here/frontier.py" run "$bin" "$out"
"$py" "$here/frontier.py" sim "$bin" "$out" "$(realpath --relative-to="$root" "$out/calibration.json")"
# Accuracy at GQA 16: the live cluster's one GPU cannot hold Llama-3.1-405B's weights (the
# run refuses every request), so pnmkv eval scores its attention shape (head dim 128, 16 query
# heads per KV head) on the same synthetic workload, max and sum, budget 2048 (~4 min).
echo "== eval (Llama-3.1-405B shape, 128K and 1M)" >&2
"$bin" eval --set model.file=cluster_configs/models/llama-3.1-405b.yaml --set eval.budgets_tokens=2048 \
  --set eval.contexts_tokens=131072,1048576 --csv "$out/frontier_eval.csv" > "$out/frontier_eval.txt"
echo "== bench kernels" >&2
"$bin" bench kernels --repeats 3 --json "$out/kernels.json" > "$out/kernels.txt"
