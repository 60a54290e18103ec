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
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    feats = ["sink4", "0-63", "64-255", "256-1K", "1K-4K", "4K+", "eff_support", "oracle@1024", "quest@1024", "keep1", "keep32"]
    syn = lambda tag: [f"stats_{tag}_c{c}.json" for c in (2048, 4096, 8192, 16256)]
    if what in ("all", "accuracy"):
        accuracy_table(["membarriers", "perlvms", "synthetic"])
    if what in ("all", "stats"):
        stats_table([("trained: membarriers", ["stats_membarriers.json"]), ("trained: perlvms", ["stats_perlvms.json"]),
                     ("synthetic default", syn("synthetic"))], feats)
    if what in ("all", "fitted"):
        accuracy_table(["membarriers", "fitted", "synthetic"])
    if what in ("all", "fitted_stats"):
        stats_table([("trained: both traces", ["stats_membarriers.json", "stats_perlvms.json"]),
                     ("synthetic fitted", syn("fitted")), ("synthetic default", syn("synthetic"))], feats)
