#!/usr/bin/env python3
"""Markdown tables for README.md from results/ (pnmkv eval JSON and analyze_trace JSON):
Quest accuracy (gqa max) real vs synthetic by context and budget, and attention statistics."""
import json, os, sys
import numpy as np
R = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def ev(name):
    d = json.load(open(os.path.join(R, f"eval_{name}.json")))
    return {(r["context_tokens"], r["budget_tokens"]): r for r in d["results"] if r["gqa_aggregation"] == "max"}, \
        {c["context_tokens"]: c["sink_page_mass_mean"] for c in d["contexts"]}


def accuracy_table(names, extra=None):
    evs = {n: ev(n)[0] for n in names}
    keys = sorted(evs[names[0]])
    print("| context | budget | " + " | ".join(f"{n} mass / err mean / err p99" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for c, b in keys:
        if b >= c + 128:
            continue
        cells = []
        for n in names:
            r = evs[n].get((c, b))
            cells.append("-" if r is None else f"{r['mass_captured_mean']:.3f} / {r['rel_err_mean']:.3f} / {r['rel_err_p99']:.2f}")
        print(f"| {c} | {b} | " + " | ".join(cells) + " |")


def stats_rows(files):
    rows = []
    for f in files:
        rows += json.load(open(os.path.join(R, f)))["rows"]
    return rows


def stats_table(sets, feats):
    print("| source | context | " + " | ".join(feats) + " |")
    print("|---|---|" + "---|" * len(feats))
    for label, files in sets:
        rows = stats_rows(files)
        for c in sorted({r["context"] for r in rows}):
            rr = [r for r in rows if r["context"] == c]
            print(f"| {label} | {c} | " + " | ".join(f"{np.mean([r[f] for r in rr if f in r]):.3f}" for f in feats) + " |")


if __name__ == "__main__":
    print("### Quest (gqa max) vs dense: attention mass captured / output rel. error mean / p99\n")
    accuracy_table(["membarriers", "perlvms", "synthetic"])
    print("\n### Dense attention statistics (analyze_trace.py; means over heads and 128 steps)\n")
    feats = ["sink4", "0-63", "64-255", "256-1K", "1K-4K", "4K+", "eff_support", "oracle@1024", "quest@1024", "keep1", "keep32"]
    sets = [("trained: membarriers", ["stats_membarriers.json"]), ("trained: perlvms", ["stats_perlvms.json"]),
            ("synthetic default", [f"stats_synthetic_c{c}.json" for c in (2048, 4096, 8192, 16256)])]
    extra = [("synthetic fitted", [f"stats_fitted_c{c}.json" for c in (2048, 4096, 8192, 16256)])]
    if all(os.path.exists(os.path.join(R, f)) for f in extra[0][1]):
        sets += extra
    stats_table(sets, feats)
    if os.path.exists(os.path.join(R, "eval_fitted.json")):
        print("\n### Quest on the fitted preset next to the trained model\n")
        accuracy_table(["membarriers", "perlvms", "fitted", "synthetic"])
