#!/usr/bin/env python3
"""The touched-fraction model's points (issue 14 item 3): what exact-int8 rescores, measured
by the live cluster over searches of different sizes, budgets, GQA groups and aggregations.

Each point is one `pnmkv run --calibration-out` (the live emulator on the synthetic
workload, 4 devices, so one search looks at context / 16 pages of one KV head): its
"search_points" entry says the pages per search, the fraction selected (budget / context),
the query heads scored per KV head, the aggregation and the pages rescored per page
selected. The grid:
  - GQA 16 (the attention shape of Llama-3.1-405B), max: contexts 16K, 128K, 1M x budgets
    256, 2048, 8192 tokens (searches of 1K-64K pages selecting 0.02%-50%);
  - GQA 16, sum; GQA 4 (Llama-3.1-8B) and GQA 8 (Llama-3.1-70B's attention), max: the
    three contexts at budget 2048.
GQA 8 and 16 run experiments/sweeps/models/gqa*-attention.yaml: those attention shapes on a
small dense part, because the live cluster's one GPU cannot hold the real models' weights;
only the attention shape matters to the search.
With TRACE_DIR (a KV trace of the model trained in experiments/trained_model, e.g. its
traces/membarriers: not in the repository, its README says how to make one in ~2 min), four
more: the trace and the synthetic workload of the same shape (trained-bytes-22m: GQA 4, head
dim 64, all 8 layers live), context 16,256, budgets 256 and 2048 -- real keys next to
synthetic ones at the same search.

Writes RESULTS_DIR/search_points.json (the points), a table (experiments/results/search_touch.md) and
puts the points into RESULTS_DIR/calibration.json's "search_points", which the simulator
then asks for each configuration's own searches (it prints when it extrapolates).
Usage: search_touch.py PNMKV RESULTS_DIR [TRACE_DIR]   (about 2-3 min on the 2-core machine)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

MODELS = {
    4: "cluster_configs/models/llama-3.1-8b.yaml",
    8: "experiments/sweeps/models/gqa8-attention.yaml",
    16: "experiments/sweeps/models/gqa16-attention.yaml",
}
CONTEXTS = [16384, 131072, 1048576]


def grid():
    for ctx in CONTEXTS:
        for budget in (256, 2048, 8192):
            yield 16, "max", ctx, budget
    for ctx in CONTEXTS:
        yield 16, "sum", ctx, 2048
        yield 4, "max", ctx, 2048
        yield 8, "max", ctx, 2048


TRAINED = "cluster_configs/models/trained-bytes-22m.yaml"


def trace_grid(trace_dir):
    for budget in (256, 2048):
        for workload in ("trace", "synthetic"):
            extra = ["--set", f"model.file={TRAINED}", "--set", f"workload.kind={workload}", "--set",
                     "cluster.live_layers=8"]
            if workload == "trace":
                extra += ["--set", f"workload.trace_dir={trace_dir}"]
            yield 4, "max", 16256, budget, extra


def measure(binary, group, aggregation, context, budget, tmp, extra=None):
    """One live run's search point. A fresh search with fp32 queries, as the points were
    measured when the model was built: what a search rescores is a property of the search,
    not of when its query was made."""
    out = os.path.join(tmp, f"cal_{group}_{aggregation}_{context}_{budget}_{len(extra or [])}.json")
    model = [] if extra else ["--set", f"model.file={MODELS[group]}"]
    cmd = [binary, "run"] + model + (extra or []) + ["--set", f"workload.context_tokens={context}",
           "--set", f"selection.budget_tokens={budget}", "--set", f"selection.gqa_aggregation={aggregation}",
           "--set", "selection.search=exact-int8", "--set", "run.steps=8", "--set", "run.verify=false",
           "--set", "run.micro_batches=1", "--set", "selection.lookahead=false",
           "--set", "run.wire_precision=fp32", "--calibration-out", out]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        points = json.load(f).get("search_points", [])
    if len(points) != 1:
        raise SystemExit(f"{' '.join(cmd)}: expected one search point, got {len(points)}")
    print(f"   GQA {group:2d} {aggregation} {points[0]['workload']} {context:8d} tokens budget {budget:5d}: "
          f"{points[0]['rescored_per_selected']:.4f} rescored per selected ({time.time() - t0:.1f} s)",
          file=sys.stderr)
    return points[0]


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    binary, results = os.path.realpath(sys.argv[1]), os.path.realpath(sys.argv[2])
    trace_dir = os.path.realpath(sys.argv[3]) if len(sys.argv) == 4 else None
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    os.chdir(root)  # model files are relative to the repository
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for g, agg, ctx, budget in grid():
            points.append(measure(binary, g, agg, ctx, budget, tmp))
        if trace_dir:
            for g, agg, ctx, budget, extra in trace_grid(trace_dir):
                points.append(measure(binary, g, agg, ctx, budget, tmp, extra))
        else:
            print("   no TRACE_DIR: no points on a trace (the simulator says EXTRAPOLATED for one)", file=sys.stderr)
    with open(os.path.join(results, "search_points.json"), "w") as f:
        json.dump(points, f, indent=1)
    cal_file = os.path.join(results, "calibration.json")
    if os.path.exists(cal_file):
        with open(cal_file) as f:
            cal = json.load(f)
        cal["search_points"] = points
        with open(cal_file, "w") as f:
            json.dump(cal, f, indent=2)
    rows = ["| workload | GQA (heads scored) | aggregation | pages per search | selected | rescored per selected | searches |",
            "|---|---|---|---|---|---|---|"]
    for p in points:
        rows.append(f"| {p['workload']} | {p['heads_scored']} | {p['aggregation']} | {p['pages']:.0f} | "
                    f"{100 * p['selected_fraction']:.3g}% | {p['rescored_per_selected']:.4f} | {p['samples']} |")
    stem = "search_touch"  # the table's name in RESULTS_DIR
    with open(os.path.join(results, stem + ".md"), "w") as f:
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
