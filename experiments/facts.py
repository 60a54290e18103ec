"""The named figures the prose templates quote (experiments/render.py renders them).

Every fact is read from a result file of experiments/results/ (the simulator's CSV / JSON,
or a table plot.py / sensitivity.py reshaped from them) and formatted here; none is typed in.
Names: h64_<mode>_<field> (405B at 1M on 64 devices, from results/headline_<mode>.json),
best_<mode>_<column> (405B at 1M, the mode's best tokens/$ in default.csv), ratio64_<a>_<b>_<metric>
and ratiobest_<a>_<b>_<metric>, cal_<value>, and the per-section facts below. <mode> is the
mode with '-' as '_' (pnm_kv); a baseline variant is e.g. baseline_noreuse.
"""
import json
import os


def num(x):
    x = float(x)
    if x == int(x) and abs(x) < 1e6:
        return "{:,d}".format(int(x))
    if abs(x) >= 1000:
        return "{:,.0f}".format(x)
    if abs(x) >= 100:
        return "%.0f" % x
    if abs(x) >= 10:
        return "%.1f" % x
    return "%.2f" % x


def ratio(x):
    return "%.2f×" % x if x < 2 else ("%.1f×" if x < 10 else "%.0f×") % x


def gb(x):
    return "%.1f GB" % (float(x) / 1e9)


def pct(x):
    return "%.0f%%" % (100 * float(x))


def slug(label):
    return label.replace(" (no reuse)", "_noreuse").replace("-", "_").replace(" ", "_")


def compute(out, read_csv, read_json, pick, table_of, _fmt):
    f = {}
    default = read_csv("default.csv")
    modes = sorted({r["mode"] for r in default})

    # Headline tables and the 405B / 1M points.
    f["headline_table"] = table_of("results/headline.md")
    for name in sorted(os.listdir(out)):
        if not (name.startswith("headline_") and name.endswith(".json")):
            continue
        label = name[len("headline_"):-len(".json")]
        j = read_json(name)
        s = "h64_" + slug(label)
        for k in ["batch", "tokens_per_s", "step_ms", "energy_j_per_token", "tokens_per_dollar", "gpus",
                  "pnm_devices", "expanders"]:
            f[s + "_" + k] = num(j[k])
        f[s + "_gpu_bytes_per_request"] = gb(j["gpu_bytes_per_request"])
        f[s + "_device_bytes_per_request"] = gb(j["device_bytes_per_request"])
        f[s + "_gpu_free_bytes"] = gb(j["gpu_free_bytes"])
        f[s + "_link_bytes_per_token"] = gb(j["link_bytes_per_step"] / max(1.0, j["batch"]))
        for k, v in j["breakdown_ms"].items():
            f[s + "_bd_" + k + "_ms"] = num(v)
        for k, v in j["energy_j_per_token_by"].items():
            f[s + "_e_" + k + "_j"] = num(v)
        if j["energy_j_per_token"] > 0:
            f[s + "_static_share"] = pct(j["energy_j_per_token_by"]["static"] / j["energy_j_per_token"])
        f[s + "_batch_limited_by"] = j["batch_limited_by"].replace("_", " ")

    h405 = [r for r in default if r["model"] == "Llama-3.1-405B" and r["context_tokens"] == 1048576]
    best = {}
    for m in modes:
        rows = [r for r in h405 if r["mode"] == m]
        best[m] = max(rows, key=lambda r: r["tokens_per_dollar"])
        devs = lambda r: r["expanders"] if r["mode"] == "baseline" else r["pnm_devices"]
        b = "best_" + slug(m)
        f[b + "_devices"] = num(devs(best[m]))
        for k in ["batch", "tokens_per_s", "step_ms", "energy_j_per_token", "tokens_per_dollar"]:
            f[b + "_" + k] = num(best[m][k])
        # tokens/s over the device counts of the sweep (fewest, most).
        rows.sort(key=devs)
        f[b + "_tokens_per_s_fewest"], f[b + "_tokens_per_s_most"] = num(rows[0]["tokens_per_s"]), num(rows[-1]["tokens_per_s"])
        f[b + "_step_ms_64"] = num(next(r["step_ms"] for r in rows if devs(r) == 64))
        f[b + "_step_ms_most"] = num(rows[-1]["step_ms"])
        f[b + "_devices_fewest"], f[b + "_devices_most"] = num(devs(rows[0])), num(devs(rows[-1]))
    h64 = {m: next(r for r in h405 if r["mode"] == m and
                   (r["expanders"] if m == "baseline" else r["pnm_devices"]) == 64) for m in modes}
    for a in modes:
        for b in modes:
            if a == b:
                continue
            for key, sel in [("ratio64", h64), ("ratiobest", best)]:
                for k in ["tokens_per_s", "energy_j_per_token", "tokens_per_dollar"]:
                    f["%s_%s_%s_%s" % (key, slug(a), slug(b), k)] = ratio(sel[a][k] / sel[b][k])

    # Calibration.
    cal = read_json("calibration.json")
    for k, v in cal["values"].items():
        f["cal_" + k] = pct(v["value"]) if "fraction" in k or "overlap" in k else num(v["value"])
    f["cal_model"] = cal["measured"]["model"]
    f["cal_context"] = "%dK" % (cal["measured"]["context_tokens"] // 1024)

    # Sweep sizes.
    for name in ["default", "price", "serving", "budget", "png"]:
        f["points_" + name] = str(len(read_csv(name + ".csv")))
    f["wall_s_default"] = "%.0f" % sum(r["wall_s"] for r in default)

    # Throughput against context, 64 devices: pnm-kv over baseline per (model, context).
    tvc = read_csv("throughput_vs_context.csv")
    rs = []
    for r in tvc:
        if r["mode"] != "pnm-kv":
            continue
        base = [x for x in tvc if x["mode"] == "baseline" and x["model"] == r["model"] and x["context_tokens"] == r["context_tokens"]]
        if base:
            rs.append(r["tokens_per_s"] / base[0]["tokens_per_s"])
    f["tvc_pnm_over_baseline_min"], f["tvc_pnm_over_baseline_max"] = ratio(min(rs)), ratio(max(rs))

    # Scaling with devices at 1M: pnm-kv's efficiency while capacity bounds the batch.
    sc = [r for r in read_csv("scaling_devices.csv") if r["mode"] == "pnm-kv" and r["batch_limited_by"] == "device_capacity"]
    eff = [r["scaling_efficiency_vs_fewest"] for r in sc]
    f["scaling_pnm_eff_min"], f["scaling_pnm_eff_max"] = "%.2f" % min(eff), "%.2f" % max(eff)

    # Maximum batch, 405B on 64 devices, by context.
    mb = read_csv("max_batch.csv")
    for m in modes:
        rows = sorted((r for r in mb if r["model"] == "Llama-3.1-405B" and r["mode"] == m), key=lambda r: r["context_tokens"])
        f["maxbatch_405b_" + slug(m)] = ", ".join("%d" % r["batch"] for r in rows)
        f["maxbatch_405b_" + slug(m) + "_limit"] = rows[-1]["limited_by"].replace("_", " ")

    # Energy per token, 405B on 64 devices: pnm-kv over baseline across contexts.
    ep = read_csv("energy_per_token.csv")
    er = []
    for r in ep:
        if r["mode"] == "pnm-kv":
            base = [x for x in ep if x["mode"] == "baseline" and x["context_tokens"] == r["context_tokens"]]
            if base:
                er.append(base[0]["energy_j_per_token"] / r["energy_j_per_token"])
    f["energy_baseline_over_pnm_min"], f["energy_baseline_over_pnm_max"] = ratio(min(er)), ratio(max(er))

    # Prices.
    ps = read_csv("price_sensitivity.csv")
    f["price_scenarios"] = str(len(ps))
    f["price_rankings"] = "; ".join(sorted({r["ranking"] for r in ps}))
    lo = min(ps, key=lambda r: r["pnm_kv_over_baseline"])
    hi = max(ps, key=lambda r: r["pnm_kv_over_baseline"])
    scen = lambda r: "GPU %gx, PNM %gx, expander %gx" % (r["gpu_price_scale"], r["pnm_price_scale"], r["expander_price_scale"])
    f["price_ratio_min"], f["price_ratio_min_at"] = ratio(lo["pnm_kv_over_baseline"]), scen(lo)
    f["price_ratio_max"], f["price_ratio_max_at"] = ratio(hi["pnm_kv_over_baseline"]), scen(hi)

    # Serving: TPOT of baseline over pnm-kv across the arrival rates, tokens/s at the highest rate.
    sv = read_csv("serving_latency.csv")
    rates = sorted({r["arrivals_per_s"] for r in sv})
    tp = []
    for rate in rates:
        b = [r for r in sv if r["mode"] == "baseline" and r["arrivals_per_s"] == rate]
        p = [r for r in sv if r["mode"] == "pnm-kv" and r["arrivals_per_s"] == rate]
        if b and p:
            tp.append(b[0]["tpot_ms"] / p[0]["tpot_ms"])
    f["serving_tpot_ratio_min"], f["serving_tpot_ratio_max"] = ratio(min(tp)), ratio(max(tp))
    for m in modes:
        top = [r for r in sv if r["mode"] == m and r["arrivals_per_s"] == rates[-1]]
        if top:
            f["serving_%s_tokens_per_s_top" % slug(m)] = num(top[0]["tokens_per_s"])
    f["serving_top_rate"] = "%g" % rates[-1]

    # png-kv against pnm-kv over sweeps/png.yaml (rows in the file's point order: mode first,
    # then model x context x page x budget x steady budget x statistics, 2x3x2x2x2x2x2).
    png = read_csv("png.csv")
    if len(png) == 192:
        half = len(png) // 2
        by_model = {}
        best_pt = None
        for i in range(half):
            a, b = png[half + i], png[i]
            assert a["mode"] == "png-kv" and b["mode"] == "pnm-kv" and a["model"] == b["model"]
            r = a["tokens_per_s"] / b["tokens_per_s"]
            by_model.setdefault(a["model"], []).append(r)
            if best_pt is None or r > best_pt[0]:
                idx = i
                stats = idx % 2; idx //= 2
                steady = [512, 2048][idx % 2]; idx //= 2
                budget = [2048, 16384][idx % 2]; idx //= 2
                page = [16, 64][idx % 2]; idx //= 2
                best_pt = (r, "%s at %s, page %d, budget %d, steady budget %d, %s statistics" % (
                    a["model"].replace("Llama-3.1-", ""), "128K" if a["context_tokens"] == 131072 else "1M", page,
                    budget, steady, "calibrated" if stats == 0 else "optimistic"))
        for m, rs in by_model.items():
            k = "png_over_pnm_" + m.replace("Llama-3.1-", "").lower()
            f[k + "_min"], f[k + "_max"] = "%.3f" % min(rs), "%.3f" % max(rs)
        f["png_over_pnm_best"], f["png_over_pnm_best_at"] = "%.3f" % best_pt[0], best_pt[1]

    # The search / aggregation frontier (experiments/frontier.py): fr_<ctx>_<search>_<agg>_<field>
    # of the live runs (ctx 128k / 1m, search flat / exact_int8), fre_<ctx>_<agg>_<field> of
    # pnmkv eval on the 405B shape, frs_<model>_<ctx>_<search>_<agg>_mb<n>_<field> of the
    # modelled sweep, and the tables.
    lab = lambda c: "1m" if int(c) == 1048576 else "%dk" % (int(c) // 1024)
    sl = lambda x: x.replace("-", "_")
    live = read_csv("frontier_live.csv")
    for r in live:
        k = "fr_%s_%s_%s_" % (lab(r["context_tokens"]), sl(r["search"]), r["aggregation"])
        f[k + "mass"] = "%.3f" % r["attention_mass_mean"]
        f[k + "needles"] = "%.2f" % r["needle_hit_rate"]
        f[k + "err"] = "%.3f" % r["output_rel_err_mean"]
        f[k + "device_ms"] = "%.2f" % r["device_ms"]
        f[k + "device_gb"] = "%.1f" % (r["device_bytes_per_step"] / 1e9)
        f[k + "live_mb"] = "%.0f" % (r["live_device_bytes_per_step"] / 1e6)
        f[k + "step_ms"] = "%.2f" % r["step_ms"]
        f[k + "tokens_per_s"] = "%.0f" % r["tokens_per_s"]
        f[k + "j_per_token"] = "%.2f" % r["energy_j_per_token"]
        f[k + "wall_ms"] = "%.1f" % r["wall_step_ms_p50"]
        f[k + "digest"] = r["output_digest"]
        base = [b for b in live if b["context_tokens"] == r["context_tokens"] and b["search"] == "flat"
                and b["aggregation"] == "max"][0]
        f[k + "bytes_vs_flat"] = "%.2f" % (r["device_bytes_per_step"] / base["device_bytes_per_step"])
        f[k + "live_bytes_vs_flat"] = "%.2f" % (r["live_device_bytes_per_step"] / base["live_device_bytes_per_step"])
        f[k + "step_vs_flat"] = "%.2f" % (base["step_ms"] / r["step_ms"])
        if r["search_rescored_per_selected"] != "":
            f[k + "rescored"] = "%.2f" % r["search_rescored_per_selected"]
    f["fr_steps"] = "%d" % live[0]["steps"]
    f["fr_simd"] = live[0]["simd_target"]
    for r in read_csv("frontier_eval.csv"):
        k = "fre_%s_%s_" % (lab(r["context_tokens"]), r["gqa_aggregation"])
        f[k + "mass"] = "%.3f" % r["mass_captured_mean"]
        f[k + "needles"] = "%d/%d" % (r["needle_hits"], r["needle_asks"])
        f[k + "err"] = "%.3f" % r["rel_err_mean"]
    sim = read_csv("frontier_sim.csv")
    for r in sim:
        m = r["model"].replace("Llama-3.1-", "").lower()
        k = "frs_%s_%s_%s_%s_mb%d_" % (m, lab(r["context_tokens"]), sl(r["search"]), r["gqa_aggregation"],
                                       r["micro_batches"])
        base = [b for b in sim if b["model"] == r["model"] and b["context_tokens"] == r["context_tokens"]
                and b["search"] == "flat" and b["gqa_aggregation"] == "max" and b["micro_batches"] == 1][0]
        for fld in ["tokens_per_s", "energy_j_per_token", "tokens_per_dollar", "step_ms", "batch",
                    "bd_gpu_dense_ms", "bd_device_scan_ms"]:
            f[k + fld] = num(r[fld])
        for fld in ["tokens_per_s", "energy_j_per_token", "tokens_per_dollar", "device_bytes_per_step"]:
            f[k + fld + "_vs_today"] = "%.2f×" % (r[fld] / base[fld])
        f[k + "device_busy_ms"] = num(r["device_busy_fraction"] * r["step_ms"])
    f["frs_rescored"] = "%.2f" % sim[0]["search_rescored_per_selected"]
    ks = read_csv("kernels_search.csv")
    for r in ks:
        k = "frk_%s_%s_g%d_%s_" % (lab(r["context_tokens"]), sl(r["search"]), r["gqa_group"], r["gqa_aggregation"])
        f[k + "bytes_vs_flat_max"] = "%.2f" % r["bytes_vs_flat_max"]
        f[k + "time_vs_flat_max"] = "%.2f" % r["time_vs_flat_max"]
        f[k + "rescored_pct"] = "%.1f%%" % (100 * r["rescored_fraction"])
    f["frk_simd"] = ks[0]["simd_target"]
    for t in ["frontier_live", "frontier_eval", "frontier_sim", "kernels_search"]:
        f[t + "_table"] = table_of("results/" + t + ".md")

    # Lookahead selection (experiments/lookahead.py): la_<model>_<ctx>_<ahead|fresh>_<budget>[_bf16]_<field>
    # of the live runs (model 8b or gqa16; _bf16: run.wire_precision bf16),
    # las_<model>_<ctx>_<search>_<ahead|fresh>_<budget>[_bf16]_<field> of the modelled
    # sweep (vs_today: over flat / fresh / 2048 of the same model and context), and the tables.
    ahead = lambda v: "ahead" if str(v).lower() in ("true", "1", "1.0") else "fresh"
    wire = lambda r: "" if r.get("wire", "fp32") == "fp32" else "_" + r["wire"]  # run.wire_precision
    for r in read_csv("lookahead_live.csv"):
        mlab = "gqa16" if "GQA16" in r["model"] else r["model"].replace("Llama-3.1-", "").lower()
        k = "la_%s_%s_%s_%d%s_" % (mlab, lab(r["context_tokens"]), ahead(r["lookahead"]), r["budget_tokens"],
                                  wire(r))
        f[k + "mass"] = "%.3f" % r["attention_mass_mean"]
        f[k + "mass_min"] = "%.4f" % r["attention_mass_min"]
        f[k + "mass_p01"] = "%.4f" % r["attention_mass_p01"]
        f[k + "mass_p10"] = "%.4f" % r["attention_mass_p10"]
        f[k + "needles"] = "%.2f" % r["needle_hit_rate"]
        f[k + "err"] = "%.3f" % r["output_rel_err_mean"]
        f[k + "step_ms"] = "%.2f" % r["step_ms"]
        f[k + "device_ms"] = "%.2f" % r["device_ms"]
    las = read_csv("lookahead_sim.csv")
    for r in las:
        m = r["model"].replace("Llama-3.1-", "").lower()
        k = "las_%s_%s_%s_%s_%d%s_" % (m, lab(r["context_tokens"]), sl(r["search"]), ahead(r["lookahead"]),
                                       r["budget_tokens"], wire(r))
        base = [b for b in las if b["model"] == r["model"] and b["context_tokens"] == r["context_tokens"] and
                b["search"] == "flat" and ahead(b["lookahead"]) == "fresh" and b["budget_tokens"] == 2048 and
                wire(b) == ""][0]
        for fld in ["tokens_per_s", "step_ms", "bd_device_scan_ms", "bd_link_ms", "energy_j_per_token", "batch"]:
            f[k + fld] = num(r[fld])
        f[k + "vs_today"] = "%.2f×" % (r["tokens_per_s"] / base["tokens_per_s"])
        f[k + "vs_today3"] = "%.3f×" % (r["tokens_per_s"] / base["tokens_per_s"])
        f[k + "device_busy"] = "%.2f" % r["device_busy_fraction"]
    for r in read_csv("lookahead_trace.csv"):
        k = "lat_%s_%d_" % (ahead(r["lookahead"]), r["budget_tokens"])
        f[k + "mass"] = "%.3f" % r["attention_mass_mean"]
        f[k + "mass_min"] = "%.4f" % r["attention_mass_min"]
        f[k + "mass_p01"] = "%.4f" % r["attention_mass_p01"]
        f[k + "mass_p10"] = "%.4f" % r["attention_mass_p10"]
        f[k + "err"] = "%.3f" % r["output_rel_err_mean"]
    for t in ["lookahead_live", "lookahead_sim", "lookahead_trace", "lookahead_sensitivity"]:
        f[t + "_table"] = table_of("results/" + t + ".md")

    # Sensitivity and tornado tables.
    f["sensitivity_table"] = table_of("results/sensitivity.md")
    f["tornado_table"] = table_of("results/tornado.md")
    return f
