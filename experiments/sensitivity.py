#!/usr/bin/env python3
"""How far the headline ratios move: "up to" and typical ratios over models, contexts and
device counts, and a tornado of the 405B / 1M ratios over the first-order assumptions.

Usage: sensitivity.py RESULTS_DIR. Reads the JSON of two sweeps written by `pnmkv sim
--sweep ... --json` (experiments/run_all.sh):
  sensitivity.json  sweeps/sensitivity.yaml: modes x models x contexts x device counts
  tornado.json      sweeps/tornado.yaml: 405B at 1M on 64 devices, each assumption at 0.5x / 2x
and writes sensitivity.csv, results/sensitivity.md, sensitivity.png, tornado.csv,
results/tornado.md and tornado.png. Like plot.py it only reads and reshapes simulator output: every ratio is of two
simulated points, each named.

Decisions: a mode's "best device count" at a (model, context) is the one with the most
tokens/$ (more devices always add tokens/s to pnm-kv until the batch cap; tokens/$ charges
them). "Typical" is the median over the (model, context) pairs where both modes ran. A
reference that cannot run a point (e.g. gpu-only when one request's KV does not fit in HBM)
is listed as such, never counted as a ratio.
"""
import json
import os
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")

# Overrides that make a variant of a mode its own row (key -> value -> label).
VARIANTS = {"baseline.recall_cache": {"none": "baseline (no reuse)"}}
SUBJECTS = ["pnm-kv", "png-kv"]
REFERENCES = ["baseline", "baseline (no reuse)", "gpu-only"]
METRICS = [("tokens_per_s", "tokens/s", False), ("tokens_per_dollar", "tokens/$", False),
           ("energy_j_per_token", "J/token", True)]  # True: lower is better
MODEL_ORDER = ["Llama-3.1-8B", "Llama-3.1-70B", "Llama-3.1-405B"]


def ctx_label(c):
    c = int(c)
    return "%dM" % (c >> 20) if c >= 1 << 20 else "%dK" % (c >> 10)


def label_of(point):
    for o in point["overrides"]:
        key, _, value = o.partition("=")
        if key in VARIANTS and value in VARIANTS[key]:
            return VARIANTS[key][value]
    return point["result"]["mode"] if point["ok"] else None


def override(point, key, default=""):
    value = default
    for o in point["overrides"]:
        k, _, v = o.partition("=")
        if k == key:
            value = v  # the last one wins, as in the config
    return value


def devices(r):
    return int(r["expanders"] if r["mode"] == "baseline" else r["pnm_devices"])


def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)["points"]


def write(name, text):  # name: as in experiments/ (results/...); written into `out`
    with open(os.path.join(out, os.path.basename(name)), "w") as f:
        f.write(text)


# 1. "Up to" and typical ratios ---------------------------------------------------------------
points = load("sensitivity.json")
best = {}  # (model, context, label) -> result with the most tokens/$
failed = defaultdict(list)
for p in points:
    lab = label_of(p) or override(p, "run.mode")
    if not p["ok"] or p["result"]["batch"] <= 0:  # nothing admissible (e.g. gpu-only: KV over HBM)
        if not p["ok"]:
            failed[lab].append(p)
        continue
    r = p["result"]
    r["model"] = r["model"]["name"] if isinstance(r["model"], dict) else r["model"]
    key = (r["model"], int(r["context_tokens"]), lab)
    if key not in best or r["tokens_per_dollar"] > best[key]["tokens_per_dollar"]:
        best[key] = r
pairs = sorted({(m, c) for (m, c, _) in best}, key=lambda mc: (MODEL_ORDER.index(mc[0]) if mc[0] in MODEL_ORDER else 9, mc[1]))
labels = {lab for (_, _, lab) in best}
refs = [x for x in REFERENCES if x in labels]

rows = []  # model, context, subject, reference, devices s/r, ratios
missing = defaultdict(list)  # (subject, reference) -> points where the reference did not run
for m, c in pairs:
    for s in SUBJECTS:
        if (m, c, s) not in best:
            continue
        for ref in refs:
            if (m, c, ref) not in best:
                missing[(s, ref)].append("%s %s" % (m, ctx_label(c)))
                continue
            a, b = best[(m, c, s)], best[(m, c, ref)]
            rows.append({"model": m, "context_tokens": c, "subject": s, "reference": ref,
                         "subject_devices": devices(a), "reference_devices": devices(b),
                         "subject_batch": a["batch"], "reference_batch": b["batch"],
                         **{k: a[k] / b[k] for k, _, _ in METRICS}})

with open(os.path.join(out, "sensitivity.csv"), "w") as f:
    cols = ["model", "context_tokens", "subject", "reference", "subject_devices", "reference_devices",
            "subject_batch", "reference_batch"] + [k for k, _, _ in METRICS]
    f.write(",".join(cols) + "\n")
    for r in rows:
        f.write(",".join(("%.6g" % r[k]) if isinstance(r[k], float) else str(r[k]) for k in cols) + "\n")


def where(r):
    return "%s %s (%d vs %d devices)" % (r["model"].replace("Llama-3.1-", ""), ctx_label(r["context_tokens"]),
                                         r["subject_devices"], r["reference_devices"])


md = ["# Sensitivity: every mode at its best device count", "",
      "Sweep `experiments/sweeps/sensitivity.yaml` (3 models x 4 contexts x 6 device counts per mode);",
      "each mode at the device count with the most tokens/$ per (model, context). Ratios are",
      "subject / reference; for J/token lower is better, so \"largest\" there is the smallest.", "",
      "| subject / reference | metric | largest (at) | median | smallest (at) | pairs |",
      "|---|---|---|---|---|---|"]
summary = {}
for s in SUBJECTS:
    for ref in refs:
        sel = [r for r in rows if r["subject"] == s and r["reference"] == ref]
        if not sel:
            continue
        for k, name, lower_better in METRICS:
            ordered = sorted(sel, key=lambda r: r[k], reverse=not lower_better)
            top, bottom = ordered[0], ordered[-1]
            med = statistics.median(r[k] for r in sel)
            summary[(s, ref, k)] = (top, med, bottom)
            md.append("| %s / %s | %s | %.2fx (%s) | %.2fx | %.2fx (%s) | %d |" % (
                s, ref, name, top[k], where(top), med, bottom[k], where(bottom), len(sel)))
for (s, ref), where_missing in sorted(missing.items()):
    md.append("")
    md.append("%s could not run (nothing admissible at any device count) where %s ran: %s." % (
        ref, s, ", ".join(where_missing)))
for lab, ps in sorted(failed.items()):
    md.append("")
    md.append("%d %s points could not run; first reason: %s" % (len(ps), lab, ps[0].get("error", "?")))
write("results/sensitivity.md", "\n".join(md) + "\n")

fig, axes = plt.subplots(1, max(1, len(refs)), figsize=(5 * max(1, len(refs)), 4), squeeze=False)
for ax, ref in zip(axes[0], refs):
    for mi, m in enumerate(MODEL_ORDER):
        for s, style in [("pnm-kv", "-"), ("png-kv", "--")]:
            sel = sorted((r for r in rows if r["model"] == m and r["subject"] == s and r["reference"] == ref),
                         key=lambda r: r["context_tokens"])
            if sel:
                ax.plot([r["context_tokens"] for r in sel], [r["tokens_per_s"] for r in sel], style, marker="o",
                        color="C%d" % mi, label="%s %s" % (m.replace("Llama-3.1-", ""), s))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([131072, 262144, 524288, 1048576], ["128K", "256K", "512K", "1M"])
    ax.axhline(1, color="k", lw=0.5)
    ax.set_title("tokens/s vs %s (best devices each)" % ref)
    ax.set_xlabel("context tokens")
    ax.grid(True, alpha=0.3)
axes[0][0].set_ylabel("ratio")
axes[0][0].legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(out, "sensitivity.png"), dpi=110)
plt.close(fig)

# 2. Tornado: 405B / 1M on 64 devices --------------------------------------------------------
NAMES = {"pnm_device.compute_tflops": "PNM compute (TFLOPS)", "pnm_device.internal_bw_gbps": "PNM bandwidth",
         "cxl.link_bw_gbps_per_direction": "CXL link bandwidth", "energy.hbm_pj_per_bit": "GPU HBM energy per bit",
         "energy.gpu_idle_power_w": "idle power (GPU, PNM, expander)", "gpu.price_usd": "GPU price (and host share)",
         "pnm_device.price_usd": "PNM device price", "expander.price_usd": "expander price",
         "selection.budget_tokens": "selection budget (2048 tokens)"}


def assumption(point):
    scale = override(point, "hardware.scale")
    if scale:
        key, _, factor = scale.split(",")[0].partition("=")
        return NAMES.get(key, key), float(factor)
    budget = override(point, "selection.budget_tokens")
    if budget and int(budget) != 2048:
        return NAMES["selection.budget_tokens"], int(budget) / 2048.0
    return None, 1.0


tpoints = load("tornado.json")
base, varied = {}, defaultdict(dict)  # label -> result; (name, factor) -> label -> result
for p in tpoints:
    if not p["ok"]:
        continue
    name, factor = assumption(p)
    if name is None:
        base[label_of(p)] = p["result"]
    else:
        varied[(name, factor)][label_of(p)] = p["result"]
tref = [x for x in REFERENCES if x in base]
trows = []
for s in [x for x in SUBJECTS if x in base]:
    for ref in tref:
        for (name, factor), res in sorted(varied.items()):
            if s in res and ref in res:
                trows.append({"subject": s, "reference": ref, "assumption": name, "factor": factor,
                              **{k: res[s][k] / res[ref][k] for k, _, _ in METRICS},
                              **{"base_" + k: base[s][k] / base[ref][k] for k, _, _ in METRICS}})
with open(os.path.join(out, "tornado.csv"), "w") as f:
    cols = ["subject", "reference", "assumption", "factor"] + [k for k, _, _ in METRICS] + ["base_" + k for k, _, _ in METRICS]
    f.write(",".join(cols) + "\n")
    for r in trows:
        f.write(",".join(("%.6g" % r[k]) if isinstance(r[k], float) else ('"%s"' % r[k] if "," in str(r[k]) else str(r[k]))
                         for k in cols) + "\n")

tmd = ["# Tornado: Llama-3.1-405B at 1M tokens, 64 devices", "",
       "Sweep `experiments/sweeps/tornado.yaml`: each assumption at 0.5x and 2x its hardware-file value",
       "(the budget: 1024 and 4096 tokens), everything else as in the headline. Ratio subject / reference.", "",
       "| subject / reference | metric | base | assumption | at 0.5x | at 2x |", "|---|---|---|---|---|---|"]
pairs_t = [(s, ref) for s in SUBJECTS for ref in tref if any(r["subject"] == s and r["reference"] == ref for r in trows)]
for s, ref in pairs_t:
    for k, mname, _ in METRICS:
        sel = [r for r in trows if r["subject"] == s and r["reference"] == ref]
        names = sorted({r["assumption"] for r in sel},
                       key=lambda n: -max(abs(r[k] - r["base_" + k]) for r in sel if r["assumption"] == n))
        for n in names:
            lo = next((r[k] for r in sel if r["assumption"] == n and r["factor"] < 1), float("nan"))
            hi = next((r[k] for r in sel if r["assumption"] == n and r["factor"] > 1), float("nan"))
            tmd.append("| %s / %s | %s | %.2fx | %s | %.2fx | %.2fx |" % (s, ref, mname, sel[0]["base_" + k], n, lo, hi))
write("results/tornado.md", "\n".join(tmd) + "\n")

if pairs_t:
    fig, axes = plt.subplots(len(pairs_t), len(METRICS), figsize=(5.5 * len(METRICS), 3.2 * len(pairs_t)), squeeze=False)
    for row, (s, ref) in enumerate(pairs_t):
        sel = [r for r in trows if r["subject"] == s and r["reference"] == ref]
        for col, (k, mname, _) in enumerate(METRICS):
            ax = axes[row][col]
            b = sel[0]["base_" + k]
            names = sorted({r["assumption"] for r in sel},
                           key=lambda n: max(abs(r[k] - b) for r in sel if r["assumption"] == n))
            for y, n in enumerate(names):
                for r in (r for r in sel if r["assumption"] == n):
                    ax.barh(y, r[k] - b, left=b, color="#1f77b4" if r["factor"] < 1 else "#d62728", height=0.6)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.axvline(b, color="k", lw=0.8)
            ax.set_title("%s / %s, %s (base %.2fx)" % (s, ref, mname, b), fontsize=9)
            ax.grid(True, axis="x", alpha=0.3)
    fig.text(0.01, 0.005, "blue: assumption at 0.5x (budget 1024), red: at 2x (budget 4096); "
             "hardware: cluster_configs/hardware/h100-cxl-pnm.yaml, calibration: experiments/results/calibration.json",
             fontsize=6, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(os.path.join(out, "tornado.png"), dpi=110)
    plt.close(fig)
print("\n".join(md + [""] + tmd))
