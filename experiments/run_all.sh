#!/usr/bin/env bash
# Regenerates every table and figure in experiments/results/ from scratch: builds pnmkv
# (scripts/build.sh; BUILD_DIR overrides the build folder), runs the sweeps with
# `pnmkv sim`, then plots (experiments/plot.py, experiments/sensitivity.py; matplotlib) and renders the
# figures quoted in prose (experiments/render.py). Usage: experiments/run_all.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
BUILD_DIR="$build" "$root/scripts/build.sh" pnmkv
bin="$build/pnmkv"
out="$here/results"
rm -rf "$out"
mkdir -p "$out"
cd "$root"  # file names in the results are relative to the repository

# Calibration measured by the live cluster (emulator, real arithmetic on the synthetic
# workload): png-kv on Llama-3.1-8B at 128K tokens, 64 steps, 16 devices (h = 8 x s = 2,
# exact selection, so the cross-shard spread is measured too), searching with exact-int8
# (the same pages as flat, so the same steady and overlap figures; it also measures the
# pages exact-int8 rescores per page selected). About 10 s.
echo "== calibration (pnmkv run --calibration-out)" >&2
"$bin" run --set run.mode=png-kv --set workload.context_tokens=131072 --set run.steps=64 \
  --set workload.batch=2 --set cluster.pnm_devices=16 --set selection.cross_shard=exact \
  --set selection.search=exact-int8 \
  --calibration-out "$out/calibration.json" > "$out/calibration_run.txt"
# The touched-fraction model's points (what exact-int8 rescores by search size, budget, GQA
# group and aggregation): 18 live runs, about 2 min; into calibration.json's search_points.
# With a trace of the trained model (experiments/trained_model/README.md makes one), 4 more
# runs put its real keys next to the synthetic workload's.
echo "== search points (experiments/search_touch.py)" >&2
trace="$here/trained_model/traces/membarriers"
if [ -d "$trace" ]; then python3 "$here/search_touch.py" "$bin" "$out" "$trace"
else python3 "$here/search_touch.py" "$bin" "$out"; fi
cal="sim.calibration_file=experiments/results/calibration.json"

for sweep in default price serving budget png gpu_only; do
  echo "== sweep $sweep" >&2
  start=$(date +%s.%N)
  "$bin" sim --sweep "experiments/sweeps/$sweep.yaml" --set "$cal" --csv "$out/$sweep.csv" > "$out/$sweep.txt"
  echo "   $(echo "$(date +%s.%N) - $start" | bc) s" >&2
done
# The headline points (405B at 1M on 64 devices, sim-base.yaml) with every figure, for the
# prose (experiments/render.py).
for mode in baseline pnm-kv png-kv; do
  "$bin" sim --quiet --config cluster_configs/experiments/sim-base.yaml --set run.mode=$mode --set "$cal" \
    --json "$out/headline_$mode.json" > /dev/null
done
# The baseline without its recall cache (every selected page recalled every step): facts
# h64_baseline_noreuse_* (experiments/facts.py).
"$bin" sim --quiet --config cluster_configs/experiments/sim-base.yaml --set run.mode=baseline \
  --set baseline.recall_cache=none --set "$cal" --json "$out/headline_baseline_noreuse.json" > /dev/null
# pnm-kv without lookahead (the fresh selection png-kv and baseline make; lookahead is on by
# default in pnm-kv only): facts h64_pnm_kv_fresh_*.
"$bin" sim --quiet --config cluster_configs/experiments/sim-base.yaml --set run.mode=pnm-kv \
  --set selection.lookahead=false --set "$cal" --json "$out/headline_pnm-kv-fresh.json" > /dev/null
# gpu-only: on the same 16 GPUs (no 1M-token request fits next to the weights), and on the
# 64 GPUs (tp 8 x pp 8) that hold some.
"$bin" sim --quiet --config cluster_configs/experiments/sim-base.yaml --set run.mode=gpu-only --set "$cal" \
  --json "$out/headline_gpu-only.json" > /dev/null
"$bin" sim --quiet --config cluster_configs/experiments/sim-base.yaml --set run.mode=gpu-only --set sim.tp=8 \
  --set sim.pp=8 --set "$cal" --json "$out/headline_gpu-only-64gpus.json" > /dev/null
# Sweeps read as JSON (each point's overrides name it): the "up to" and typical ratios over
# models x contexts x devices, and the tornado of the headline over the assumptions.
for sweep in sensitivity tornado; do
  echo "== sweep $sweep" >&2
  "$bin" sim --quiet --sweep "experiments/sweeps/$sweep.yaml" --set "$cal" --json "$out/$sweep.json" \
    --csv "$out/${sweep}_points.csv" > "$out/$sweep.txt"
done
# One serving point with its per-request outcomes and the batch size over time.
"$bin" sim --quiet --config cluster_configs/experiments/sim-base.yaml --series \
  --set model.file=cluster_configs/models/llama-3.1-70b.yaml --set workload.context_tokens=131072 \
  --set run.steps=1024 --set workload.arrivals=poisson --set workload.requests=100 \
  --set workload.output_tokens=1024 --set workload.prefill_chunk_tokens=8192 \
  --set workload.prompt_tokens_spread_fraction=0.25 --set cluster.pnm_devices=64 \
  --set run.mode=pnm-kv --set workload.arrival_rate_per_s=0.12 --set sim.batch_series_points_max=500 \
  --set "$cal" \
  --json "$out/batch_over_time.json" > "$out/batch_over_time.txt"

# The search / aggregation frontier (issue 14): the live runs of sweeps/frontier.yaml, the
# modelled points of sweeps/frontier_sim.yaml and the kernel bench's page-search rows
# (experiments/frontier.py; about 10 min, mostly the four 1M-token live runs).
echo "== frontier (live runs, sim sweep, bench kernels)" >&2
"$here/frontier.sh" "$bin" "$out"

# Lookahead selection (issue 14 goal (b)): live accuracy of sweeps/lookahead.yaml and the modelled
# points of sweeps/lookahead_sim.yaml (experiments/lookahead.py; about 20 min, mostly the
# twenty-four 1M-token live runs). Needs PyYAML and, for its plot, matplotlib (the Debian python3 has both;
# a pyenv shim may have only the first).
echo "== lookahead selection (live runs, sim sweep)" >&2
ypy=python3
for cand in python3 /usr/bin/python3; do
  if "$cand" -c "import yaml, matplotlib" 2>/dev/null; then ypy="$cand"; break; fi
done
# With the trained model's trace (as search_touch.py above), the live cluster on real keys too.
if [ -d "$trace" ]; then
  "$ypy" "$here/lookahead.py" run "$bin" "$out" "$(realpath --relative-to="$root" "$out/calibration.json")" "$trace"
else
  "$ypy" "$here/lookahead.py" run "$bin" "$out" "$(realpath --relative-to="$root" "$out/calibration.json")"
fi

# A plotting Python with matplotlib (the Debian one if a pyenv shim shadows it).
py=python3
for cand in python3 /usr/bin/python3; do
  if "$cand" -c "import matplotlib" 2>/dev/null; then py="$cand"; break; fi
done
"$py" "$here/plot.py" "$out"
"$py" "$here/sensitivity.py" "$out" > /dev/null
"$py" "$here/frontier.py" plot "$out"
rm "$out/sensitivity.json" "$out/tornado.json"  # ~1 MB each; *_points.csv keep every point's figures
# Every figure quoted in experiments/README.md and in the README's "What PNM buys" is rendered
# from the results (experiments/render.py, templates experiments/README.in.md and experiments/what_pnm_buys.in.md), never copied by hand.
"$py" "$here/render.py" "$out"
echo "results in $out" >&2
