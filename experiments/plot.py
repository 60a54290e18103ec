#!/usr/bin/env python3
"""Figures and tables of experiments/results/ from the sweep CSVs written by `pnmkv sim`.

Usage: plot.py RESULTS_DIR. Reads default.csv, price.csv, serving.csv and
batch_over_time.json there; writes one PNG per figure with the CSV behind it, and
headline.md. Every figure names the hardware file, model file(s) and calibration it used.
Only reads and reshapes simulator output: no figure is computed here that the simulator
did not compute (the price ranking picks, per scenario, the best point of the price sweep).
"""
import csv
import json
import math
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_io import read_csv  # noqa: E402

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = ["baseline", "pnm-kv", "png-kv"]
COLORS = {"baseline": "#d62728", "pnm-kv": "#1f77b4", "png-kv": "#2ca02c"}
MARKERS = {"baseline": "s", "pnm-kv": "o", "png-kv": "^"}
MODEL_ORDER = ["Llama-3.1-8B", "Llama-3.1-70B", "Llama-3.1-405B"]

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")


def short(path):
    i = path.find("cluster_configs/")
    return path[i:] if i >= 0 else path


def read(name):
    return read_csv(out, name)


def provenance(rows):
    hw = sorted({short(r["hardware_file"]) for r in rows})
    models = sorted({short(r["model_file"]) for r in rows})
    cal = sorted({r["calibration"] if r["calibration"] != "config" else "sim.* config values (assumed)" for r in rows})
    return "hardware: %s | model: %s | calibration: %s" % (", ".join(hw), ", ".join(models), ", ".join(cal))


def footer(fig, rows, extra=""):
    fig.text(0.01, 0.005, provenance(rows) + (" | " + extra if extra else ""), fontsize=6, color="#555555")


def write_csv(name, header, rows):
    with open(os.path.join(out, name), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(r)


def ctx_label(c):
    c = int(c)
    return "%dM" % (c >> 20) if c >= 1 << 20 else "%dK" % (c >> 10)


default = read("default.csv")
price = read("price.csv")
serving = read("serving.csv")
DEV_FIXED = 64


def pick(rows, **kw):
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


# 1. Throughput vs context, per model and mode, at 64 devices ------------------------------
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
table = []
for ax, model in zip(axes, MODEL_ORDER):
    for mode in MODES:
        pts = sorted(pick(default, model=model, mode=mode, pnm_devices=DEV_FIXED if mode != "baseline" else 0.0,
                          expanders=DEV_FIXED if mode == "baseline" else 0.0), key=lambda r: r["context_tokens"])
        xs = [r["context_tokens"] for r in pts]
        ys = [r["tokens_per_s"] for r in pts]
        ax.plot(xs, ys, marker=MARKERS[mode], color=COLORS[mode], label=mode)
        for r in pts:
            table.append([model, mode, int(r["context_tokens"]), DEV_FIXED, int(r["gpus"]), r["batch"], r["tokens_per_s"],
                          r["step_ms"], r["batch_limited_by"]])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([131072, 524288, 1048576, 4194304], ["128K", "512K", "1M", "4M"])
    ax.set_title("%s (%d GPUs)" % (model, int(pick(default, model=model)[0]["gpus"])))
    ax.set_xlabel("context tokens")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("decode tokens/s (max batch)")
axes[0].legend()
fig.suptitle("Throughput vs context length, %d PNM devices (pnm-kv, png-kv) or expanders (baseline)" % DEV_FIXED)
footer(fig, default)
fig.tight_layout(rect=(0, 0.03, 1, 0.95))
fig.savefig(os.path.join(out, "throughput_vs_context.png"), dpi=110)
plt.close(fig)
write_csv("throughput_vs_context.csv", ["model", "mode", "context_tokens", "devices", "gpus", "batch", "tokens_per_s",
                                        "step_ms", "batch_limited_by"], table)


# 2. Throughput vs devices and scaling efficiency -------------------------------------------
def devices_of(r):
    return r["pnm_devices"] if r["mode"] != "baseline" else r["expanders"]


fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
table = []
for ax, model in zip(axes, MODEL_ORDER):
    for mode in MODES:
        pts = sorted(pick(default, model=model, mode=mode, context_tokens=1048576.0), key=devices_of)
        if not pts:
            continue
        xs = [devices_of(r) for r in pts]
        ys = [r["tokens_per_s"] for r in pts]
        ax.plot(xs, ys, marker=MARKERS[mode], color=COLORS[mode], label=mode)
        base = pts[0]
        for r in pts:
            eff = (r["tokens_per_s"] / base["tokens_per_s"]) / (devices_of(r) / devices_of(base))
            table.append([model, mode, 1048576, int(devices_of(r)), r["batch"], r["tokens_per_s"], eff,
                          int(r["pool_devices"]), int(r["sequence_shards"]), r["batch_limited_by"]])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title("%s, 1M tokens" % model)
    ax.set_xlabel("devices (PNM or expanders)")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("decode tokens/s (max batch)")
axes[0].legend()
fig.suptitle("Scaling with the number of devices (ideal: tokens/s doubles with the devices)")
footer(fig, default)
fig.tight_layout(rect=(0, 0.03, 1, 0.95))
fig.savefig(os.path.join(out, "scaling_devices.png"), dpi=110)
plt.close(fig)
write_csv("scaling_devices.csv", ["model", "mode", "context_tokens", "devices", "batch", "tokens_per_s",
                                  "scaling_efficiency_vs_fewest", "pool_devices", "sequence_shards",
                                  "batch_limited_by"], table)

# 3. Energy per token: vs context (405B, 64 devices) and its breakdown at 1M -----------------
E_PARTS = ["e_gpu_dense_j", "e_allreduce_j", "e_lm_head_j", "e_gpu_attention_j", "e_merge_j", "e_device_j",
           "e_link_j", "e_hbm_write_j", "e_static_j"]
fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
table = []
for mode in MODES:
    pts = sorted(pick(default, model="Llama-3.1-405B", mode=mode, **({"expanders": 64.0} if mode == "baseline" else {"pnm_devices": 64.0})),
                 key=lambda r: r["context_tokens"])
    a1.plot([r["context_tokens"] for r in pts], [r["energy_j_per_token"] for r in pts], marker=MARKERS[mode],
            color=COLORS[mode], label=mode)
    for r in pts:
        table.append([r["model"], mode, int(r["context_tokens"]), 64, r["batch"], r["energy_j_per_token"]] +
                     [r[p] for p in E_PARTS])
a1.set_xscale("log", base=2)
a1.set_yscale("log")
a1.set_xticks([131072, 524288, 1048576, 4194304], ["128K", "512K", "1M", "4M"])
a1.set_xlabel("context tokens")
a1.set_ylabel("J per output token")
a1.set_title("Llama-3.1-405B, 16 GPUs, 64 devices")
a1.grid(True, which="both", alpha=0.3)
a1.legend()
bottom = [0.0] * 3
cmap = plt.get_cmap("tab10")
at1m = [pick(default, model="Llama-3.1-405B", mode=m, context_tokens=1048576.0,
             **({"expanders": 64.0} if m == "baseline" else {"pnm_devices": 64.0}))[0] for m in MODES]
for i, p in enumerate(E_PARTS):
    vals = [r[p] for r in at1m]
    a2.bar(MODES, vals, bottom=bottom, color=cmap(i), label=p[2:-2])
    bottom = [b + v for b, v in zip(bottom, vals)]
a2.set_ylabel("J per output token")
a2.set_title("Where the energy goes, 405B at 1M tokens")
a2.legend(fontsize=7)
footer(fig, default)
fig.tight_layout(rect=(0, 0.03, 1, 1))
fig.savefig(os.path.join(out, "energy_per_token.png"), dpi=110)
plt.close(fig)
write_csv("energy_per_token.csv", ["model", "mode", "context_tokens", "devices", "batch", "energy_j_per_token"] +
          [p[2:] for p in E_PARTS], table)

# 4. Tokens per dollar and its price sensitivity ---------------------------------------------
fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.4))
scen = defaultdict(dict)  # (g, p, e) -> mode -> best row
# price.csv rows come in sweep order: mode x devices x gpu x pnm x expander (3 x 4 x 27).
factors = [0.5, 1.0, 1.5]
order = []
for mode in MODES:
    for dev in [32, 64, 128, 256]:
        for g in factors:
            for p in factors:
                for e in factors:
                    order.append((mode, dev, g, p, e))
assert len(order) == len(price), "price.csv does not match the price sweep's axes"
for (mode, dev, g, p, e), r in zip(order, price):
    assert r["mode"] == mode and devices_of(r) == dev
    r["_scen"] = (g, p, e)
    best = scen[(g, p, e)].get(mode)
    if best is None or r["tokens_per_dollar"] > best["tokens_per_dollar"]:
        scen[(g, p, e)][mode] = r
for mode in MODES:
    pts = sorted([r for r in price if r["mode"] == mode and r["_scen"] == (1.0, 1.0, 1.0)], key=devices_of)
    a1.plot([devices_of(r) for r in pts], [r["tokens_per_dollar"] for r in pts], marker=MARKERS[mode],
            color=COLORS[mode], label=mode)
a1.set_xscale("log", base=2)
a1.set_yscale("log")
a1.set_xlabel("devices (PNM or expanders)")
a1.set_ylabel("tokens per $ (3-year amortisation)")
a1.set_title("Llama-3.1-405B at 1M tokens, 16 GPUs, list prices")
a1.grid(True, which="both", alpha=0.3)
a1.legend()
keys = sorted(scen.keys())
table = []
xs = list(range(len(keys)))
for k, mode in enumerate(MODES):
    vals = [scen[s][mode]["tokens_per_dollar"] for s in keys]
    a2.bar([x + (k - 1) * 0.28 for x in xs], vals, width=0.28, color=COLORS[mode], label=mode)
for s in keys:
    ranked = sorted(MODES, key=lambda m: -scen[s][m]["tokens_per_dollar"])
    table.append(list(s) + [scen[s][m]["tokens_per_dollar"] for m in MODES] +
                 [int(devices_of(scen[s][m])) for m in MODES] + [" > ".join(ranked),
                  scen[s]["pnm-kv"]["tokens_per_dollar"] / scen[s]["baseline"]["tokens_per_dollar"]])
a2.set_xticks(xs, ["G%.1f P%.1f E%.1f" % s for s in keys], rotation=90, fontsize=6)
a2.set_yscale("log")
a2.set_ylabel("best tokens per $ over device counts")
a2.set_title("Prices x0.5/x1/x1.5: GPU (G), PNM device (P), expander (E)", fontsize=10)
a2.legend(fontsize=7)
footer(fig, price)
fig.tight_layout(rect=(0, 0.03, 1, 1))
fig.savefig(os.path.join(out, "tokens_per_dollar.png"), dpi=110)
plt.close(fig)
write_csv("price_sensitivity.csv", ["gpu_price_scale", "pnm_price_scale", "expander_price_scale"] +
          ["tokens_per_dollar_" + m for m in MODES] + ["best_devices_" + m for m in MODES] +
          ["ranking", "pnm_kv_over_baseline"], table)

# 5. Step-time breakdown --------------------------------------------------------------------
B_PARTS = ["bd_gpu_dense_ms", "bd_allreduce_ms", "bd_gpu_attention_ms", "bd_link_ms", "bd_device_scan_ms",
           "bd_queueing_ms", "bd_merge_ms", "bd_lm_head_ms", "bd_copy_ms"]
cases = [("Llama-3.1-8B", 131072.0), ("Llama-3.1-70B", 1048576.0), ("Llama-3.1-405B", 1048576.0),
         ("Llama-3.1-405B", 4194304.0)]
fig, axes = plt.subplots(1, len(cases), figsize=(14, 4.4), sharey=False)
table = []
for ax, (model, ctx) in zip(axes, cases):
    rows = [pick(default, model=model, mode=m, context_tokens=ctx,
                 **({"expanders": 64.0} if m == "baseline" else {"pnm_devices": 64.0}))[0] for m in MODES]
    bottom = [0.0] * 3
    for i, p in enumerate(B_PARTS):
        vals = [r[p] for r in rows]
        ax.bar(MODES, vals, bottom=bottom, color=cmap(i), label=p[3:-3])
        bottom = [b + v for b, v in zip(bottom, vals)]
    for j, r in enumerate(rows):
        ax.text(j, bottom[j], "batch %d" % r["batch"], ha="center", va="bottom", fontsize=7)
        table.append([model, r["mode"], int(ctx), 64, r["batch"], r["step_ms"]] + [r[p] for p in B_PARTS])
    ax.set_title("%s, %s" % (model, ctx_label(ctx)), fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
axes[0].set_ylabel("ms per decode step (critical path)")
axes[-1].legend(fontsize=7)
fig.suptitle("Step-time breakdown at the max batch, 64 devices")
footer(fig, default)
fig.tight_layout(rect=(0, 0.03, 1, 0.95))
fig.savefig(os.path.join(out, "step_breakdown.png"), dpi=110)
plt.close(fig)
write_csv("step_breakdown.csv", ["model", "mode", "context_tokens", "devices", "batch", "step_ms"] +
          [p[3:] for p in B_PARTS], table)

# 6. Maximum batch per mode -----------------------------------------------------------------
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
table = []
for ax, model in zip(axes, MODEL_ORDER):
    for mode in MODES:
        pts = sorted(pick(default, model=model, mode=mode, **({"expanders": 64.0} if mode == "baseline" else {"pnm_devices": 64.0})),
                     key=lambda r: r["context_tokens"])
        ax.plot([r["context_tokens"] for r in pts], [r["batch"] for r in pts], marker=MARKERS[mode],
                color=COLORS[mode], label=mode)
        for r in pts:
            table.append([model, mode, int(r["context_tokens"]), 64, int(r["gpus"]), int(r["batch"]),
                          int(r["batch_limit_gpu_memory"]), int(r["batch_limit_device_capacity"]),
                          r["batch_limited_by"]])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks([131072, 524288, 1048576, 4194304], ["128K", "512K", "1M", "4M"])
    ax.set_title(model)
    ax.set_xlabel("context tokens")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("maximum batch (requests)")
axes[0].legend()
fig.suptitle("Maximum batch: GPU memory (baseline: summaries + recall buffers), device capacity, cap 256")
footer(fig, default)
fig.tight_layout(rect=(0, 0.03, 1, 0.95))
fig.savefig(os.path.join(out, "max_batch.png"), dpi=110)
plt.close(fig)
write_csv("max_batch.csv", ["model", "mode", "context_tokens", "devices", "gpus", "batch", "limit_gpu_memory",
                            "limit_device_capacity", "limited_by"], table)

# 7. Serving: latencies vs arrival rate, and the batch over time -----------------------------
fig, axes = plt.subplots(1, 4, figsize=(15, 4))
table = []
rates = [0.02, 0.04, 0.08, 0.12, 0.16]
assert len(serving) == len(MODES) * len(rates), "serving.csv does not match the serving sweep's axes"
for k, mode in enumerate(MODES):
    rows = serving[k * len(rates):(k + 1) * len(rates)]
    for ax, col, name in zip(axes[:3], ["ttft_ms", "tpot_ms", "queueing_ms"], ["TTFT", "TPOT", "queueing delay"]):
        ax.plot(rates, [r[col] / 1e3 for r in rows], marker=MARKERS[mode], color=COLORS[mode], label=mode)
        ax.set_title(name + " (mean)")
        ax.set_xlabel("arrivals per second")
        ax.set_ylabel("seconds")
        ax.grid(True, alpha=0.3)
    for rate, r in zip(rates, rows):
        table.append([mode, rate, r["batch"], r["tokens_per_s"], r["ttft_ms"], r["tpot_ms"], r["queueing_ms"],
                      r["energy_j_per_token"]])
axes[0].legend()
axes[2].set_yscale("symlog", linthresh=0.1)
series_file = os.path.join(out, "batch_over_time.json")
if os.path.exists(series_file):
    j = json.load(open(series_file))
    rows = j["batch_series"]["rows"]
    axes[3].plot([r[0] for r in rows], [r[1] for r in rows], lw=0.8, color=COLORS.get(j["mode"], "k"))
    axes[3].set_title("decode batch over time (%s, %.2f/s)" % (j["mode"], j["config"]["workload"]["arrival_rate_per_s"]))
    axes[3].set_xlabel("simulated seconds")
    axes[3].set_ylabel("requests decoding")
fig.suptitle("Serving Llama-3.1-70B, 128K-token prompts (+-25%), 1024 output tokens, 4 GPUs, 64 devices, Poisson arrivals")
footer(fig, serving)
fig.tight_layout(rect=(0, 0.03, 1, 0.93))
fig.savefig(os.path.join(out, "serving.png"), dpi=110)
plt.close(fig)
write_csv("serving_latency.csv", ["mode", "arrivals_per_s", "batch_mean", "tokens_per_s", "ttft_ms", "tpot_ms",
                                  "queueing_ms", "energy_j_per_token"], table)

# Headline: 405B at 1M tokens ---------------------------------------------------------------
# The three device modes from the default sweep; the references (baseline without the recall
# cache, gpu-only) from the sensitivity sweep's points (sensitivity_points.csv, same base
# config), and gpu-only with the GPUs it needs to hold one request (headline_gpu-only-64gpus.json).
def label(r):
    return "baseline (no reuse)" if r["mode"] == "baseline" and r.get("recall_cache") == "none" else r["mode"]


sens = [r for r in read("sensitivity_points.csv") if r["model"] == "Llama-3.1-405B" and r["context_tokens"] == 1048576.0]
HEAD = MODES + ["baseline (no reuse)", "gpu-only"]
src = {m: [r for r in default if r["model"] == "Llama-3.1-405B" and r["context_tokens"] == 1048576.0 and label(r) == m]
       for m in MODES}
for m in HEAD[len(MODES):]:
    src[m] = [r for r in sens if label(r) == m]
h64 = {m: next(r for r in src[m] if devices_of(r) == 64 or m == "gpu-only") for m in HEAD}
best = {m: max(src[m], key=lambda r: r["tokens_per_dollar"]) for m in HEAD}
g64 = json.load(open(os.path.join(out, "headline_gpu-only-64gpus.json")))
g64["energy_all_in_j_per_token"] = g64.get("energy_all_in_j_per_token", 0)
g64_row = {"gpus": g64["gpus"], "expanders": 0, "pnm_devices": 0, "mode": "gpu-only", "batch": g64["batch"],
           "tokens_per_s": g64["tokens_per_s"], "energy_j_per_token": g64["energy_j_per_token"],
           "energy_all_in_j_per_token": g64["energy_all_in_j_per_token"],
           "tokens_per_dollar": g64["tokens_per_dollar"], "step_ms": g64["step_ms"],
           "batch_limited_by": g64["batch_limited_by"]}
lines = ["# Headline: Llama-3.1-405B, 1M-token contexts", "",
         provenance(pick(default, model="Llama-3.1-405B")), "",
         "| configuration | mode | GPUs | devices | batch | tokens/s | J/token | J/token all-in | tokens/$ | step ms | batch limited by |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]


def row(label_, m, r):
    if r["batch"] <= 0:
        return "| %s | %s | %d | %d | 0 | - | - | - | - | - | %s (not one request fits) |" % (
            label_, m, r["gpus"], devices_of(r), r["batch_limited_by"])
    return "| %s | %s | %d | %d | %d | %.1f | %.2f | %.2f | %.3g | %.1f | %s |" % (
        label_, m, r["gpus"], devices_of(r), r["batch"], r["tokens_per_s"], r["energy_j_per_token"],
        r["energy_all_in_j_per_token"], r["tokens_per_dollar"], r["step_ms"], r["batch_limited_by"])


for label_, sel in [("same hardware (64 devices)", h64), ("each mode's best tokens/$", best)]:
    for m in HEAD:
        lines.append(row(label_, m, sel[m]))
lines.append(row("gpu-only with the GPUs to hold it (tp 8 x pp %d)" % g64["pp"], "gpu-only", g64_row))
lines += ["", "J/token: component-level; all-in: GPU HBM at the measured 18.8 pJ/bit, host server and CXL "
          "switch power (docs/HARDWARE.md §6a). tokens/$ at component-level power. baseline: GPU cache of "
          "recalled pages (baseline.recall_cache=lru); no reuse: every selected page recalled every step. "
          "gpu-only: the KV in HBM, no devices.", "",
          "| ratio | tokens/s | energy/token | energy/token all-in | tokens/$ |", "|---|---|---|---|---|"]
pairs = [("pnm-kv", "baseline"), ("pnm-kv", "baseline (no reuse)"), ("png-kv", "baseline"),
         ("png-kv", "baseline (no reuse)"), ("png-kv", "pnm-kv"), ("pnm-kv", "gpu-only"), ("png-kv", "gpu-only")]
for label_, sel in [("64 devices", h64), ("best tokens/$", best), ("best tokens/$ vs gpu-only on 64 GPUs", dict(best, **{"gpu-only": g64_row}))]:
    for a, b in pairs:
        if label_.endswith("gpu-only on 64 GPUs") and b != "gpu-only":
            continue
        if sel[b]["batch"] <= 0:
            lines.append("| %s / %s (%s) | - | - | - | - |" % (a, b, label_))
            continue
        lines.append("| %s / %s (%s) | %.2fx | %.2fx | %.2fx | %.2fx |" % (
            a, b, label_, sel[a]["tokens_per_s"] / sel[b]["tokens_per_s"],
            sel[a]["energy_j_per_token"] / sel[b]["energy_j_per_token"],
            sel[a]["energy_all_in_j_per_token"] / sel[b]["energy_all_in_j_per_token"],
            sel[a]["tokens_per_dollar"] / sel[b]["tokens_per_dollar"]))
with open(os.path.join(out, "headline.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
