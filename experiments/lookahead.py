#!/usr/bin/env python3
"""Lookahead selection (issue 14 goal (b)): live accuracy and modelled throughput.

Usage:
  lookahead.py run PNMKV RESULTS_DIR CALIBRATION [TRACE_DIR]
      the live runs of sweeps/lookahead.yaml (`pnmkv run --json` each: the main job with and
      without selection.lookahead at three budgets, 128K and 1M, the main job's model and
      405B's attention shape) into lookahead_live.csv, the
      modelled sweep sweeps/lookahead_sim.yaml on CALIBRATION into lookahead_sim.csv, then
      the tables (experiments/results/lookahead_live.md and experiments/results/lookahead_sim.md
      when RESULTS_DIR is experiments/results). With TRACE_DIR (a KV trace
      of the model trained in experiments/trained_model, e.g. its traces/membarriers: not in
      the repository, its README says how to make one in ~2 min) also the live cluster on real
      keys and queries: the trace's context, all 8 layers, 120 steps, budgets 512-4096 with and
      without lookahead, into lookahead_trace.csv and .md (kept from an earlier run otherwise)
  lookahead.py sim PNMKV RESULTS_DIR CALIBRATION
      the modelled sweep only (lookahead_sim.csv) and the sensitivity of goal (b)'s configuration
      (lookahead_sensitivity.csv: 405B/1M, one hardware figure scaled at a time), then the tables
      (lookahead_live.csv must exist)
  lookahead.py table RESULTS_DIR
      the tables from the CSVs in RESULTS_DIR
Each command also draws experiments/results/lookahead_breakdown.png (in RESULTS_DIR) from
lookahead_sim.csv: the step's critical path at 1M per configuration (needs matplotlib).

Only runs pnmkv and reshapes what it reports (ratios of two reported figures at most).
"""
import csv
import json
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
sys.path.insert(0, here)

import frontier  # noqa: E402  (its sweep expansion and report fields)

LIVE_FIELDS = [("lookahead", "config.selection.lookahead"),
               ("budget_tokens", "config.selection.budget_tokens"),
               ("wire", "config.run.wire_precision"),
               ("attention_mass_p01", "accuracy.attention_mass_recall_p01"),
               ("attention_mass_p10", "accuracy.attention_mass_recall_p10")] + frontier.LIVE_FIELDS
SIM_KEYS = ["selection.search", "selection.lookahead", "selection.budget_tokens", "run.wire_precision"]
SIM_FIELDS = ["batch", "batch_limited_by", "tokens_per_s", "step_ms", "energy_j_per_token", "tokens_per_dollar",
              "device_bytes_per_step", "device_busy_fraction", "link_bytes_per_step", "pools"]


def run_live(pnmkv, out):
    frontier.run_sweep(pnmkv, out, os.path.join(here, "sweeps", "lookahead.yaml"), LIVE_FIELDS, "lookahead_live.csv")


TRAINED = "cluster_configs/models/trained-bytes-22m.yaml"
TRACE_FIELDS = [("lookahead", "config.selection.lookahead"), ("budget_tokens", "config.selection.budget_tokens"),
                ("context_tokens", "cluster.context_tokens"), ("steps", "cluster.steps"),
                ("attention_mass_mean", "accuracy.attention_mass_recall_mean"),
                ("attention_mass_min", "accuracy.attention_mass_recall_min"),
                ("attention_mass_p01", "accuracy.attention_mass_recall_p01"),
                ("attention_mass_p10", "accuracy.attention_mass_recall_p10"),
                ("output_rel_err_mean", "accuracy.output_rel_err_mean"),
                ("output_rel_err_p99", "accuracy.output_rel_err_p99"),
                ("accuracy_samples", "accuracy.samples"), ("output_digest", "output_digest")]


def run_trace(pnmkv, out, trace_dir):
    """fp32 on the links: the trace's own numpy analysis (trained_model/README.md), which
    these runs reproduce, computes in fp32."""
    rows = []
    for budget in (512, 1024, 2048, 4096):
        for ahead in ("false", "true"):
            sets = ["model.file=" + TRAINED, "workload.kind=trace", "workload.trace_dir=" + trace_dir,
                    "cluster.live_layers=8", "workload.context_tokens=16256", "run.steps=120", "run.verify=true",
                    "selection.search=exact-int8", "selection.gqa_aggregation=max",
                    "selection.budget_tokens=%d" % budget, "selection.lookahead=" + ahead,
                    "run.wire_precision=fp32"]
            rows.append(frontier.run_point(pnmkv, out, [], sets, TRACE_FIELDS))
    frontier.write_rows(out, "lookahead_trace.csv", TRACE_FIELDS, rows)


def trace_table(out):
    from results_io import read_csv

    rows = read_csv(out, "lookahead_trace.csv")
    fresh = {int(r["budget_tokens"]): r for r in rows if not truthy(r["lookahead"])}
    lines = ["| budget | fresh: mass mean / p10 / p01 / min | lookahead: mass mean / p10 / p01 / min | lookahead at "
             "twice the budget: mass mean / p10 / p01 / min | fresh: output rel. error | lookahead at twice the "
             "budget: output rel. error |",
             "|---|---|---|---|---|---|"]
    tail = lambda r: "%.4f / %.4f / %.4f / %.4f" % (r["attention_mass_mean"], r["attention_mass_p10"],
                                                    r["attention_mass_p01"], r["attention_mass_min"])
    for b in sorted(fresh):
        ahead = {int(r["budget_tokens"]): r for r in rows if truthy(r["lookahead"])}
        two = ahead.get(2 * b)
        lines.append("| %d | %s | %s | %s | %.3f | %s |" % (
            b, tail(fresh[b]), tail(ahead[b]), tail(two) if two else "",
            fresh[b]["output_rel_err_mean"], "%.3f" % two["output_rel_err_mean"] if two else ""))
    frontier.write_md(out, "lookahead_trace", lines)


def run_sim(pnmkv, out, calibration):
    rows = []
    for r, keys in frontier.sim_points(pnmkv, out, "experiments/sweeps/lookahead_sim.yaml", calibration):
        row = [r["model"]["name"], int(r["context_tokens"])] + [keys[k] for k in SIM_KEYS]
        row += [r[k] for k in SIM_FIELDS]
        row += [r["breakdown_ms"][k] for k in frontier.BD_KEYS]
        rows.append(row)
    with open(os.path.join(out, "lookahead_sim.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "context_tokens", "search", "lookahead", "budget_tokens", "wire"] + SIM_FIELDS +
                   ["bd_" + k + "_ms" for k in frontier.BD_KEYS])
        w.writerows(rows)


# How the configuration that reaches issue 14's goal (b) (lookahead, exact-int8, 3072 tokens,
# bf16 on the links) stands against today's (flat, no lookahead, 2048, fp32) when one hardware
# figure moves: 405B/1M on 64 devices (sim-base.yaml), each figure of the hardware file scaled
# by hardware.scale, both configurations on the same scaled hardware.
SENS_BASE = ["cluster.pnm_devices=64", "run.mode=pnm-kv", "selection.gqa_aggregation=max", "run.micro_batches=1",
             "model.file=cluster_configs/models/llama-3.1-405b.yaml", "workload.context_tokens=1048576"]
SENS_TODAY = ["selection.search=flat", "selection.lookahead=false", "selection.budget_tokens=2048",
              "run.wire_precision=fp32"]
SENS_AHEAD = ["selection.search=exact-int8", "selection.lookahead=true", "selection.budget_tokens=3072",
              "run.wire_precision=bf16"]
SENS_SCALES = ["", "pnm_device.compute_tflops=0.5", "pnm_device.compute_tflops=2", "pnm_device.int_tops=0.5",
               "pnm_device.int_tops=2", "pnm_device.internal_bw_gbps=0.5", "cxl.link_bw_gbps_per_direction=0.5",
               "cxl.link_bw_gbps_per_direction=2", "cxl.memory_latency_ns=2", "gpu.weight_stream_efficiency=1.1"]


def sim_one(pnmkv, out, calibration, sets):
    tmp = os.path.join(out, "point_sim.json")
    cmd = [pnmkv, "sim", "--quiet", "--config", "cluster_configs/experiments/sim-base.yaml",
           "--set", "sim.calibration_file=" + calibration, "--json", tmp]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL)
    r = json.load(open(tmp))
    os.remove(tmp)
    return r


def run_sensitivity(pnmkv, out, calibration):
    rows = []
    for scale in SENS_SCALES:
        extra = ["hardware.scale=" + scale] if scale else []
        t = sim_one(pnmkv, out, calibration, SENS_BASE + SENS_TODAY + extra)
        a = sim_one(pnmkv, out, calibration, SENS_BASE + SENS_AHEAD + extra)
        rows.append([scale or "none", t["tokens_per_s"], int(t["batch"]), a["tokens_per_s"], int(a["batch"]),
                     a["device_busy_fraction"], a["breakdown_ms"]["device_scan"], a["breakdown_ms"]["link"],
                     a["tokens_per_s"] / t["tokens_per_s"]])
    frontier.write_rows(out, "lookahead_sensitivity.csv",
                        [(n, None) for n in ["scale", "today_tokens_per_s", "today_batch", "ahead_tokens_per_s",
                                             "ahead_batch", "ahead_device_busy", "ahead_device_ms_exposed",
                                             "ahead_link_ms", "ratio"]], rows)


def sensitivity_table(out):
    from results_io import read_csv

    lines = ["| hardware figure scaled | today: tokens/s (batch) | lookahead 3072 bf16: tokens/s (batch) | its device "
             "busy | its device ms exposed | its link ms | ratio |", "|---|---|---|---|---|---|---|"]
    for r in read_csv(out, "lookahead_sensitivity.csv"):
        lines.append("| %s | %.1f (%d) | %.1f (%d) | %.2f | %.2f | %.2f | %.3fx |" % (
            "`%s`" % r["scale"] if r["scale"] != "none" else "none (the hardware file)", r["today_tokens_per_s"],
            r["today_batch"], r["ahead_tokens_per_s"], r["ahead_batch"], r["ahead_device_busy"],
            r["ahead_device_ms_exposed"], r["ahead_link_ms"], r["ratio"]))
    frontier.write_md(out, "lookahead_sensitivity", lines)


def truthy(v):
    return str(v).lower() in ("true", "1")


def is_today(r):
    """Today's configuration: no lookahead, 2048 tokens, fp32 on the wire (and flat, modelled)."""
    return not truthy(r["lookahead"]) and int(r["budget_tokens"]) == 2048 and r.get("wire", "fp32") == "fp32"


def table(out):
    from results_io import read_csv

    if os.path.exists(os.path.join(out, "lookahead_trace.csv")):
        trace_table(out)
    if os.path.exists(os.path.join(out, "lookahead_sensitivity.csv")):
        sensitivity_table(out)
    live = read_csv(out, "lookahead_live.csv")
    sim = read_csv(out, "lookahead_sim.csv")
    lines = ["## Live: the main job (batch %d, %d PNM devices, exact-int8, max, 16 steps)" %
             (live[0]["batch"], live[0]["pnm_devices"]), "",
             "Accuracy from every step checked against dense attention; times are the cost model's charges of "
             "the work the live devices counted. *today*: no lookahead at 2048 tokens, fp32 on the wire (exact-int8 "
             "selects flat's pages, so this is today's accuracy). *wire*: run.wire_precision.", "",
             "*p10 / p01*: at most 10 % / 1 % of the head-steps captured less.", "",
             "| model | context | lookahead | budget | wire | attention mass mean / p10 / p01 / min | output rel. error mean | "
             "needle hits | modelled step ms | device ms | step vs today | digest |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = []
    for r in live:
        if (r["model"], r["context_tokens"]) not in groups:
            groups.append((r["model"], r["context_tokens"]))
    for model, ctx in groups:
        rows = [r for r in live if r["context_tokens"] == ctx and r["model"] == model]
        today = [r for r in rows if is_today(r)][0]
        for r in sorted(rows, key=lambda r: (truthy(r["lookahead"]), int(r["budget_tokens"]), r["wire"] != "fp32")):
            lines.append("| %s | %s | %s | %d | %s | %.4f / %.4f / %.4f / %.4f | %.3f | %.3f (%d asked) | %.3f | %.3f | "
                         "%.2fx | `%s` |" % (
                model, frontier.ctx_label(ctx), "yes" if truthy(r["lookahead"]) else "no", int(r["budget_tokens"]),
                r["wire"], r["attention_mass_mean"], r["attention_mass_p10"], r["attention_mass_p01"],
                r["attention_mass_min"], r["output_rel_err_mean"], r["needle_hit_rate"],
                int(r["needles_asked"]), r["step_ms"], r["device_ms"], today["step_ms"] / r["step_ms"],
                r["output_digest"]))
    frontier.write_md(out, "lookahead_live", lines)
    lines = ["## Modelled: 64 devices (sim-base.yaml), max, one micro-batch", "",
             "*vs today*: tokens/s over flat / no lookahead / 2048 tokens / fp32 of the same model and context. "
             "*device ms exposed*: the step's device time on its path (lookahead: the attention, and what the "
             "devices' total work adds when they cannot keep up).", "",
             "| model | context | search | lookahead | budget | wire | batch | pools | step ms | device ms exposed | "
             "link ms | tokens/s | vs today | J/token | tokens/$ | device busy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sim:
        today = [t for t in sim if t["model"] == r["model"] and t["context_tokens"] == r["context_tokens"] and
                 t["search"] == "flat" and is_today(t)][0]
        lines.append("| %s | %s | %s | %s | %d | %s | %d | %d | %.1f | %.2f | %.2f | %.1f | %.3fx | %.2f | %.3g | %.2f |" % (
            r["model"], frontier.ctx_label(r["context_tokens"]), r["search"],
            "yes" if truthy(r["lookahead"]) else "no", int(r["budget_tokens"]), r["wire"], r["batch"], r["pools"],
            r["step_ms"], r["bd_device_scan_ms"], r["bd_link_ms"], r["tokens_per_s"], r["tokens_per_s"] / today["tokens_per_s"],
            r["energy_j_per_token"], r["tokens_per_dollar"], r["device_busy_fraction"]))
    frontier.write_md(out, "lookahead_sim", lines)


def plot(out):
    """lookahead_breakdown.png: the step's critical path at 1M on 64 devices, today's, exact-int8's
    and lookahead's at each budget, from lookahead_sim.csv's breakdown columns."""
    from results_io import read_csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = read_csv(out, "lookahead_sim.csv")
    parts = ["gpu_dense", "allreduce", "gpu_attention", "link", "device_scan", "queueing", "merge", "lm_head", "copy"]
    cmap = plt.get_cmap("tab10")
    models = ["Llama-3.1-405B", "Llama-3.1-70B"]
    fig, axes = plt.subplots(1, len(models), figsize=(13, 4.8))
    for ax, model in zip(axes, models):
        rows = [r for r in sim if r["model"] == model and r["context_tokens"] == 1048576 and
                (is_today(r) or
                 truthy(r["lookahead"]) and r["search"] == "exact-int8" and int(r["budget_tokens"]) > 2048 or
                 truthy(r["lookahead"]) and r["search"] == "flat" and int(r["budget_tokens"]) == 4096 and
                 r["wire"] == "fp32")]
        rows.sort(key=lambda r: (truthy(r["lookahead"]), r["search"] != "flat", r["wire"] != "fp32", int(r["budget_tokens"])))
        labels = ["%s\n%s\n%d %s" % (r["search"], "lookahead" if truthy(r["lookahead"]) else "fresh",
                                      int(r["budget_tokens"]), r["wire"]) for r in rows]
        bottom = [0.0] * len(rows)
        for i, p in enumerate(parts):
            vals = [max(0.0, r["bd_" + p + "_ms"]) for r in rows]
            ax.bar(range(len(rows)), vals, bottom=bottom, color=cmap(i), label=p)
            bottom = [b + v for b, v in zip(bottom, vals)]
        for j, r in enumerate(rows):
            ax.text(j, bottom[j], "%.0f tok/s" % r["tokens_per_s"], ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_title("%s, 1M tokens, 64 devices, max, 1 micro-batch" % model, fontsize=9)
    axes[0].set_ylabel("ms per decode step (critical path)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.text(0.01, 0.005, "pnmkv sim, experiments/sweeps/lookahead_sim.yaml (experiments/lookahead.py); "
             "budget in tokens and the queries' and partial outputs' type on the links; lookahead: the devices' "
             "searches off the path, their total within the step",
             fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(os.path.join(out, "lookahead_breakdown.png"), dpi=110)


def main():
    if len(sys.argv) in (5, 6) and sys.argv[1] == "run":
        pnmkv, out = os.path.realpath(sys.argv[2]), os.path.realpath(sys.argv[3])
        run_sim(pnmkv, out, sys.argv[4])
        run_sensitivity(pnmkv, out, sys.argv[4])
        run_live(pnmkv, out)
        if len(sys.argv) == 6:
            run_trace(pnmkv, out, os.path.realpath(sys.argv[5]))
        else:
            print("   no TRACE_DIR: lookahead_trace.csv kept as it is", file=sys.stderr)
        table(out)
        plot(out)
    elif len(sys.argv) == 5 and sys.argv[1] == "sim":
        out = os.path.realpath(sys.argv[3])
        run_sim(os.path.realpath(sys.argv[2]), out, sys.argv[4])
        run_sensitivity(os.path.realpath(sys.argv[2]), out, sys.argv[4])
        table(out)
        plot(out)
    elif len(sys.argv) == 3 and sys.argv[1] == "table":
        table(os.path.realpath(sys.argv[2]))
        plot(os.path.realpath(sys.argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
