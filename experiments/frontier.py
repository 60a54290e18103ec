#!/usr/bin/env python3
"""The search / aggregation frontier (issue 14 items 5 and 6): live runs, then tables and plots.

Usage:
  frontier.py run PNMKV RESULTS_DIR [SWEEP]
                                       one `pnmkv run --json` per point of sweeps/frontier.yaml
                                       (the live emulator), reduced to RESULTS_DIR/frontier_live.csv
  frontier.py sim PNMKV RESULTS_DIR CALIBRATION
                                       `pnmkv sim --sweep sweeps/frontier_sim.yaml` on the
                                       calibration, reduced to RESULTS_DIR/frontier_sim.csv
  frontier.py plot RESULTS_DIR         frontier.png, experiments/results/frontier_sim.md, kernels_search.csv,
                                       step_breakdown_search.png from frontier_live.csv,
                                       frontier_sim.csv (`pnmkv sim --sweep sweeps/frontier_sim.yaml`)
                                       and kernels.json (`pnmkv bench kernels --json`)

Only runs pnmkv and reshapes what it reports: every figure here is a field of a live run's
report, of the simulator's CSV or of the bench's JSON (no figure is computed that they did
not compute, beyond ratios of two of them).
"""
import csv
import itertools
import json
import os
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
sys.path.insert(0, here)

SEARCHES = ["flat", "exact-int8"]
AGGS = ["max", "sum"]


def ctx_label(c):
    c = int(float(c))
    return "%dM" % (c >> 20) if c >= 1 << 20 else "%dK" % (c >> 10)


# --- live runs ---------------------------------------------------------------------------
LIVE_FIELDS = [
    ("model", "model.name"),
    ("model_file", "model.file"),
    ("context_tokens", "cluster.context_tokens"),
    ("search", "config.selection.search"),
    ("aggregation", "config.selection.gqa_aggregation"),
    ("micro_batches", "config.run.micro_batches"),
    ("steps", "cluster.steps"),
    ("batch", "cluster.batch"),
    ("pnm_devices", "cluster.pnm_devices"),
    ("attention_mass_mean", "accuracy.attention_mass_recall_mean"),
    ("attention_mass_min", "accuracy.attention_mass_recall_min"),
    ("output_rel_err_mean", "accuracy.output_rel_err_mean"),
    ("output_rel_err_p99", "accuracy.output_rel_err_p99"),
    ("output_rel_err_max", "accuracy.output_rel_err_max"),
    ("needle_hit_rate", "accuracy.needle_hit_rate"),
    ("needles_asked", "accuracy.needles_asked"),
    ("accuracy_samples", "accuracy.samples"),
    ("device_ms", "virtual.breakdown_ms.device"),
    ("gpu_dense_ms", "virtual.breakdown_ms.gpu_dense"),
    ("step_ms", "virtual.step_ms_mean"),
    ("tokens_per_s", "virtual.tokens_per_s"),
    ("energy_j_per_token", "virtual.energy_j_per_token"),
    ("tokens_per_dollar", "virtual.tokens_per_dollar"),
    ("device_bytes_per_step", "virtual.device_bytes_per_step"),
    ("live_device_bytes_per_step", "wall.live_device_bytes_per_step"),
    ("live_device_flops_per_step", "wall.live_device_flops_per_step"),
    ("live_device_int_ops_per_step", "wall.live_device_int_ops_per_step"),
    ("wall_step_ms_p50", "wall.step_ms_p50"),
    ("wall_step_ms_mean", "wall.step_ms_mean"),
    ("wall_step_bound_ms", "wall.step_bound_ms"),
    ("wall_prefill_s", "wall.prefill_s"),
    ("search_rescored_per_selected", "calibration.values.search_rescored_per_selected.value"),
    ("simd_target", "simd_target"),
    ("output_digest", "output_digest"),
]


def field(report, dotted):
    v = report
    for k in dotted.split("."):
        if not isinstance(v, dict) or k not in v:
            return ""
        v = v[k]
    return v


def points(sweep_file):
    import yaml

    spec = yaml.safe_load(open(sweep_file))
    config = os.path.normpath(os.path.join(os.path.dirname(sweep_file), spec["config"]))
    keys = [a["key"] for a in spec["axes"]]
    for combo in itertools.product(*[a["values"] for a in spec["axes"]]):
        yield config, list(spec.get("set", [])) + ["%s=%s" % kv for kv in zip(keys, combo)]


def run_point(pnmkv, out, args, sets, fields):
    """One `pnmkv run --json` with `args` and `sets` (--set each); its report's `fields`."""
    report_file = os.path.join(out, "point_run.json")
    cmd = [pnmkv, "run", "--quiet"] + args + ["--json", report_file]
    for s in sets:
        cmd += ["--set", s]
    start = time.time()
    print("== live: " + " ".join(sets[-3:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL)
    report = json.load(open(report_file))
    os.remove(report_file)
    print("   %.0f s" % (time.time() - start), file=sys.stderr, flush=True)
    return [field(report, k) for _, k in fields]


def write_rows(out, csv_name, fields, rows):
    with open(os.path.join(out, csv_name), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([name for name, _ in fields])
        w.writerows(rows)


def run_sweep(pnmkv, out, sweep, fields, csv_name):
    """Every point of a sweep file (`points`), one run each, into RESULTS_DIR/csv_name."""
    rows = [run_point(pnmkv, out, ["--config", os.path.relpath(config, root)], sets, fields)
            for config, sets in points(sweep)]
    write_rows(out, csv_name, fields, rows)


def run(pnmkv, out, sweep=os.path.join(here, "sweeps", "frontier.yaml")):
    run_sweep(pnmkv, out, sweep, LIVE_FIELDS, "frontier_live.csv")


# --- the modelled points (pnmkv sim --sweep sweeps/frontier_sim.yaml) -------------------
SIM_KEYS = {"selection.search": "search", "selection.gqa_aggregation": "gqa_aggregation",
            "run.micro_batches": "micro_batches"}
SIM_FIELDS = ["batch", "batch_limited_by", "tokens_per_s", "step_ms", "energy_j_per_token",
              "energy_all_in_j_per_token", "tokens_per_dollar", "device_bytes_per_step", "device_busy_fraction",
              "link_bytes_per_step"]


def sim_points(pnmkv, out, sweep, calibration):
    """`pnmkv sim --sweep SWEEP` on the calibration with --json (its points name their overrides,
    which the CSV does not): each point's result and its overrides by key."""
    tmp = os.path.join(out, "sweep_sim.json")
    subprocess.run([pnmkv, "sim", "--quiet", "--sweep", sweep, "--set", "sim.calibration_file=" + calibration,
                    "--json", tmp], cwd=root, check=True, stdout=subprocess.DEVNULL)
    pts = json.load(open(tmp))["points"]
    os.remove(tmp)
    for p in pts:
        if not p["ok"]:
            raise SystemExit("a point of %s failed: %s" % (sweep, p))
    return [(p["result"], dict(o.split("=", 1) for o in p["overrides"])) for p in pts]


def sim(pnmkv, out, calibration):
    """The figures the tables and plots use, in frontier_sim.csv."""
    header = ["model", "context_tokens"] + list(SIM_KEYS.values()) + SIM_FIELDS + \
        ["bd_" + k + "_ms" for k in BD_KEYS] + ["mb_serial_ms", "mb_overlap_ms", "search_rescored_per_selected",
                                                 "search_rescored_source"]
    rows = []
    for r, keys in sim_points(pnmkv, out, "experiments/sweeps/frontier_sim.yaml", calibration):
        row = [r["model"]["name"], int(r["context_tokens"])]
        row += [keys[k] for k in SIM_KEYS]  # every one is an axis of the sweep
        row += [r[k] for k in SIM_FIELDS]
        row += [r["breakdown_ms"][k] for k in BD_KEYS]
        mb = r.get("micro_batches", {})
        cal = r["calibration"]["values"]["search_rescored_per_selected"]
        row += [mb.get("serial_ms", ""), mb.get("overlap_ms", ""), cal["value"], cal["source"]]
        rows.append(row)
    with open(os.path.join(out, "frontier_sim.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


BD_KEYS = ["gpu_dense", "allreduce", "gpu_attention", "link", "device_scan", "queueing", "merge", "lm_head", "copy"]


def write_md(out, stem, lines):
    """A Markdown table into RESULTS_DIR/<stem> plus the Markdown extension."""
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")


# --- tables and plots --------------------------------------------------------------------
def plot(out):
    from results_io import read_csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = read_csv(out, "frontier_live.csv")
    sim = read_csv(out, "frontier_sim.csv")
    colors = {"max": "#1f77b4", "sum": "#ff7f0e"}
    markers = {"flat": "o", "exact-int8": "s"}
    contexts = sorted({r["context_tokens"] for r in live})

    # 1. The frontier: modelled device time and bytes per step vs live accuracy.
    fig, axes = plt.subplots(3, len(contexts), figsize=(5.2 * len(contexts), 10.5))
    panels = [("device_ms", "modelled device ms per step (32 layers)", "attention_mass_mean",
               "attention mass captured (mean)"),
              ("device_bytes_per_step", "modelled device GB per step", "needle_hit_rate", "needle hit rate"),
              ("device_ms", "modelled device ms per step (32 layers)", "output_rel_err_mean",
               "output relative error (mean)")]
    for col, ctx in enumerate(contexts):
        for row, (xk, xl, yk, yl) in enumerate(panels):
            ax = axes[row][col]
            for r in [r for r in live if r["context_tokens"] == ctx]:
                x = r[xk] / (1e9 if xk == "device_bytes_per_step" else 1)
                ax.scatter([x], [r[yk]], color=colors[r["aggregation"]], marker=markers[r["search"]], s=60,
                           label="%s / %s" % (r["search"], r["aggregation"]))
                ax.annotate("%s/%s" % (r["search"], r["aggregation"]), (x, r[yk]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
            ax.set_xlabel(xl, fontsize=8)
            ax.set_ylabel(yl, fontsize=8)
            ax.margins(x=0.12, y=0.25)
            ax.set_xlim(left=0)
            if row == 0:
                ax.set_title("Llama-3.1-8B shape, %s tokens, batch 2, 4 devices" % ctx_label(ctx), fontsize=9)
    axes[0][-1].legend(fontsize=7)
    r0 = live[0]
    fig.text(0.01, 0.005, "live emulator (pnmkv run, cluster_configs/default.yaml, %d steps, seed 1, "
             "SIMD %s) | hardware: cluster_configs/hardware/h100-cxl-pnm.yaml | accuracy vs dense attention, "
             "every step" % (r0["steps"], r0["simd_target"]), fontsize=6, color="#555555")
    fig.suptitle("Page search x GQA aggregation: device work per step vs accuracy (live runs)")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(os.path.join(out, "frontier.png"), dpi=110)
    plt.close(fig)

    # The live points as a table, and pnmkv eval's GQA-16 check (the live cluster's one GPU
    # cannot hold Llama-3.1-405B's weights, so its attention shape is evaluated offline).
    lines = ["| context | search | aggregation | attention mass mean / min | output rel. error mean / p99 | "
             "needle hit rate | device ms (modelled) | device GB (modelled) | live device MB | device bytes vs flat/max | "
             "step ms (modelled) | tokens/s | wall step p50 ms | digest |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ctx in contexts:
        rows = [r for r in live if r["context_tokens"] == ctx]
        base = [r for r in rows if r["search"] == "flat" and r["aggregation"] == "max"][0]
        for r in rows:
            lines.append("| %s | %s | %s | %.4f / %.4f | %.3f / %.3f | %.2f (%d asked) | %.2f | %.2f | %.0f | %.2f | %.2f | "
                         "%.1f | %.1f | `%s` |" % (
                             ctx_label(ctx), r["search"], r["aggregation"], r["attention_mass_mean"],
                             r["attention_mass_min"], r["output_rel_err_mean"], r["output_rel_err_p99"],
                             r["needle_hit_rate"], r["needles_asked"], r["device_ms"],
                             r["device_bytes_per_step"] / 1e9, r["live_device_bytes_per_step"] / 1e6,
                             r["device_bytes_per_step"] / base["device_bytes_per_step"], r["step_ms"],
                             r["tokens_per_s"], r["wall_step_ms_p50"], r["output_digest"]))
    write_md(out, "frontier_live", lines)
    ev = read_csv(out, "frontier_eval.csv")
    lines = ["| context | aggregation | attention mass mean / min | output rel. error mean / p99 | needle hits |",
             "|---|---|---|---|---|"]
    for r in ev:
        lines.append("| %s | %s | %.4f / %.4f | %.3f / %.3f | %d of %d |" % (
            ctx_label(r["context_tokens"]), r["gqa_aggregation"], r["mass_captured_mean"], r["mass_captured_min"],
            r["rel_err_mean"], r["rel_err_p99"], r["needle_hits"], r["needle_asks"]))
    write_md(out, "frontier_eval", lines)

    # 2. The modelled choices at scale (frontier_sim.csv) against today's defaults.
    lines = ["| model | context | search | aggregation | micro-batches | batch | step ms | device ms exposed | "
             "tokens/s | vs today | J/token | tokens/$ | vs today | dense ms | GPU share of the step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in ["Llama-3.1-405B", "Llama-3.1-70B"]:
        for ctx in sorted({r["context_tokens"] for r in sim}):
            rows = [r for r in sim if r["model"] == model and r["context_tokens"] == ctx]
            base = [r for r in rows if r["search"] == "flat" and r["gqa_aggregation"] == "max"
                    and r["micro_batches"] == 1][0]
            for r in sorted(rows, key=lambda r: (SEARCHES.index(r["search"]), AGGS.index(r["gqa_aggregation"]),
                                                 r["micro_batches"])):
                dev = r["bd_device_scan_ms"]
                # The GPU's share of the step's critical path (dense layers, all-reduces, merge,
                # LM head); the rest is the devices' exposed time and the links.
                gpu = sum(r["bd_" + k + "_ms"] for k in ["gpu_dense", "allreduce", "gpu_attention", "merge", "lm_head"])
                bound = "%.0f%%" % (100 * gpu / r["step_ms"])
                lines.append("| %s | %s | %s | %s | %d | %d | %.1f | %.1f | %.1f | %.2f× | %.2f | %.3g | %.2f× | %.1f | %s |" % (
                    model, ctx_label(ctx), r["search"], r["gqa_aggregation"], r["micro_batches"], r["batch"],
                    r["step_ms"], dev, r["tokens_per_s"], r["tokens_per_s"] / base["tokens_per_s"],
                    r["energy_j_per_token"], r["tokens_per_dollar"],
                    r["tokens_per_dollar"] / base["tokens_per_dollar"], r["bd_gpu_dense_ms"], bound))
    write_md(out, "frontier_sim", lines)

    # 3. The step-time breakdown per search (and aggregation, micro-batches) at 1M, 64 devices.
    parts = ["bd_gpu_dense_ms", "bd_allreduce_ms", "bd_gpu_attention_ms", "bd_link_ms", "bd_device_scan_ms",
             "bd_queueing_ms", "bd_merge_ms", "bd_lm_head_ms", "bd_copy_ms"]
    cmap = plt.get_cmap("tab10")
    models = ["Llama-3.1-405B", "Llama-3.1-70B"]
    fig, axes = plt.subplots(1, len(models), figsize=(13, 4.8))
    table = []
    for ax, model in zip(axes, models):
        rows = sorted([r for r in sim if r["model"] == model and r["context_tokens"] == 1048576],
                      key=lambda r: (r["micro_batches"], SEARCHES.index(r["search"]), AGGS.index(r["gqa_aggregation"])))
        labels = ["%s\n%s\nmb %d" % (r["search"], r["gqa_aggregation"], r["micro_batches"]) for r in rows]
        bottom = [0.0] * len(rows)
        for i, p in enumerate(parts):
            vals = [max(0.0, r[p]) for r in rows]
            ax.bar(range(len(rows)), vals, bottom=bottom, color=cmap(i), label=p[3:-3])
            bottom = [b + v for b, v in zip(bottom, vals)]
        for j, r in enumerate(rows):
            ax.text(j, bottom[j], "%.0f tok/s" % r["tokens_per_s"], ha="center", va="bottom", fontsize=6)
            table.append([model, int(r["context_tokens"]), r["search"], r["gqa_aggregation"], r["micro_batches"],
                          r["batch"], r["step_ms"], r["tokens_per_s"]] + [r[p] for p in parts])
        ax.set_xticks(range(len(rows)), labels, fontsize=6)
        ax.set_title("%s, 1M tokens, 64 devices" % model, fontsize=9)
    axes[0].set_ylabel("ms per decode step (critical path)")
    axes[-1].legend(fontsize=7, loc="upper right", framealpha=0.9)
    fig.suptitle("Step-time breakdown per page search, GQA aggregation and micro-batches (pnm-kv, max batch)")
    fig.text(0.01, 0.005, "pnmkv sim, sweeps/frontier_sim.yaml on cluster_configs/experiments/sim-base.yaml | "
             "hardware: cluster_configs/hardware/h100-cxl-pnm.yaml | calibration: results/calibration.json",
             fontsize=6, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(os.path.join(out, "step_breakdown_search.png"), dpi=110)
    plt.close(fig)
    with open(os.path.join(out, "step_breakdown_search.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "context_tokens", "search", "gqa_aggregation", "micro_batches", "batch", "step_ms",
                    "tokens_per_s"] + [p[3:] for p in parts])
        w.writerows(table)

    # 4. The kernel bench's page-search rows, per query (pnmkv bench kernels --json).
    kj = json.load(open(os.path.join(out, "kernels.json")))
    rows = search_rows(kj)
    with open(os.path.join(out, "kernels_search.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(rows[0].keys()))
        for r in rows:
            w.writerow(list(r.values()))
    lines = ["| context | search | GQA | aggregation | bytes per query | time per query | rescored pages | "
             "bytes / time vs flat (same aggregation) | bytes / time vs flat max |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %s | %d | %s | %.1f MiB | %.0f us | %.2f%% | %.2f / %.2f | %.2f / %.2f |" % (
            ctx_label(r["context_tokens"]), r["search"], r["gqa_group"], r["gqa_aggregation"],
            r["bytes_per_query"] / 2**20, r["us_per_query"], 100 * r["rescored_fraction"], r["bytes_vs_flat"],
            r["time_vs_flat"], r["bytes_vs_flat_max"], r["time_vs_flat_max"]))
    write_md(out, "kernels_search", lines)


def search_rows(kj):
    """The bench's `search` rows (one query's whole selection) with their ratios to flat at the
    same context and GQA group: with the same aggregation, and with max (today's default)."""
    rows = kj["search"]

    def flat_of(r, agg):
        return [f for f in rows if f["search"] == "flat" and f["context_tokens"] == r["context_tokens"]
                and f["gqa_group"] == r["gqa_group"] and f["gqa_aggregation"] == agg][0]

    out = []
    for r in rows:
        same, today = flat_of(r, r["gqa_aggregation"]), flat_of(r, "max")
        out.append({
            "context_tokens": r["context_tokens"], "search": r["search"], "gqa_group": r["gqa_group"],
            "gqa_aggregation": r["gqa_aggregation"], "bytes_per_query": r["bytes_per_query"],
            "us_per_query": 1e6 * r["seconds_per_query"], "rescored_fraction": r["rescored_fraction"],
            "vs_read": r["vs_read"],
            "bytes_vs_flat": r["bytes_per_query"] / same["bytes_per_query"],
            "time_vs_flat": r["seconds_per_query"] / same["seconds_per_query"],
            "bytes_vs_flat_max": r["bytes_per_query"] / today["bytes_per_query"],
            "time_vs_flat_max": r["seconds_per_query"] / today["seconds_per_query"],
            "simd_target": kj.get("simd_target", ""),
        })
    return out


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "run":
        run(os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3]), *[os.path.abspath(a) for a in sys.argv[4:]])
    elif len(sys.argv) == 5 and sys.argv[1] == "sim":
        sim(os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 3 and sys.argv[1] == "plot":
        plot(os.path.abspath(sys.argv[2]))
    else:
        sys.exit(__doc__)
