#!/usr/bin/env bash
# The search / aggregation frontier (issue 14 items 5 and 6) into RESULTS_DIR: the live runs
# of sweeps/frontier.yaml (frontier_live.csv), the modelled sweep sweeps/frontier_sim.yaml on
# RESULTS_DIR/calibration.json (frontier_sim.csv) and `pnmkv bench kernels --json`
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
echo "== bench kernels" >&2
"$bin" bench kernels --repeats 3 --json "$out/kernels.json" > "$out/kernels.txt"
