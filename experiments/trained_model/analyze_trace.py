#!/usr/bin/env python3
"""Attention statistics of a KV trace (docs/TRACE_FORMAT.md, storage npy), measured directly
with numpy in float64 softmax: what Quest-style selection is up against.

For every layer and KV head of the trace, every context C in --contexts and every decode
step s < --steps (query position p = C + s, keys 0..p), per query head of the GQA group:
  sink4 / page0    attention mass on positions 0..3 / the first page (0..page-1)
  dist.*           mass by distance p - j: [0,64) [64,256) [256,1K) [1K,4K) [4K,..) (page 0 excluded)
  eff_support      exp(entropy) / (p + 1): share of keys the head effectively reads
  oracle@B         mass of the B/page best pages of this query head (upper bound of any page selection)
  quest@B, err@B   Quest selection (page min/max summaries in float32, score = sum_d max(q_d min_d,
                   q_d max_d), GQA group aggregated by max, first and last page always kept, budget
                   B tokens including them): mass captured and output relative error |o_sel - o|/|o|
  keep1 / keep32   Jaccard overlap of the Quest page set (at --drift-budget) between steps s, s+1 / s+32
  stale@B          lookahead selection: the Quest page set step s-1 chose (its query, its pages)
                   attended by step s's query, with step s's last page kept too (one page over the
                   budget when a page began): mass captured, from step 1 on; what a device that
                   searched with the previous step's query while the GPU ran the step would give
Writes a JSON with every (layer, head, context) row and prints the means.

  python3 analyze_trace.py traces/membarriers --contexts 2048,4096,8192,16256 --steps 128 --json out.json
"""
import argparse, json, os, sys
import numpy as np

BUCKETS = [(0, 64), (64, 256), (256, 1024), (1024, 4096), (4096, 1 << 30)]
BNAMES = ["0-63", "64-255", "256-1K", "1K-4K", "4K+"]


def load(tdir):
    man = json.load(open(os.path.join(tdir, "manifest.json")))
    if man.get("storage") != "npy":
        sys.exit("analyze_trace: only storage npy is read here")
    if man.get("dtype") == "bfloat16":
        conv = lambda a: (a.astype(np.uint32) << 16).view(np.float32)
    else:
        conv = lambda a: a.astype(np.float32)
    get = lambda n: conv(np.load(os.path.join(tdir, n + ".npy"), mmap_mode="r"))
    return man, get


def analyse(q, k, v, C, steps, scale, page, budgets, drift_budget):
    """q [steps, g, d] for positions C..C+steps-1; k, v [C+steps, d]."""
    g = q.shape[1]
    P = C + steps
    r = {}
    npages = (P + page - 1) // page
    # Quest summaries over every page of the full sequence; a step sees pages covering 0..p
    kp = np.full((npages * page, k.shape[1]), np.nan, np.float32)
    kp[:P] = k
    kp = kp.reshape(npages, page, -1)
    kmin, kmax = np.nanmin(kp, 1), np.nanmax(kp, 1)
    acc = {key: [] for key in ["sink4", "page0", "eff_support"] + BNAMES}
    for B in budgets:
        acc[f"oracle@{B}"] = []; acc[f"quest@{B}"] = []; acc[f"err@{B}"] = []; acc[f"stale@{B}"] = []
    sel_sets = []
    prev_chosen = {}  # budget -> the page set the previous step chose
    for s in range(steps):
        p = C + s
        n = p + 1
        lg = (q[s].astype(np.float64) @ k[:n].T.astype(np.float64)) * scale  # [g, n]
        lg -= lg.max(1, keepdims=True)
        a = np.exp(lg); a /= a.sum(1, keepdims=True)
        vv = v[:n].astype(np.float64)
        o = a @ vv  # [g, d]
        acc["sink4"].extend(a[:, :4].sum(1))
        acc["page0"].extend(a[:, :page].sum(1))
        ent = -(a * np.log(np.maximum(a, 1e-300))).sum(1)
        acc["eff_support"].extend(np.exp(ent) / n)
        dist = p - np.arange(n)
        for (lo, hi), nm in zip(BUCKETS, BNAMES):
            m = (dist >= lo) & (dist < hi)
            m[:page] = False
            acc[nm].extend(a[:, m].sum(1))
        npg = (n + page - 1) // page
        pad = np.zeros((g, npg * page)); pad[:, :n] = a
        pm = pad.reshape(g, npg, page).sum(2)  # [g, npg]
        srt = -np.sort(-pm, 1)
        cum = np.cumsum(srt, 1)
        # Quest: score per page and head (the last page holds only part of a page; its
        # summary covers the keys written so far)
        qs = q[s].astype(np.float32)
        mn, mx = kmin[:npg].copy(), kmax[:npg].copy()
        last = k[(npg - 1) * page: n]
        mn[-1], mx[-1] = last.min(0), last.max(0)
        sc = np.maximum(qs[:, None, :] * mn[None], qs[:, None, :] * mx[None]).sum(2)  # [g, npg]
        agg = sc.max(0)
        order = np.argsort(-agg, kind="stable")
        for B in budgets:
            kb = max(2, B // page)
            acc[f"oracle@{B}"].extend(cum[:, min(kb, npg) - 1])
            if kb >= npg:
                chosen = np.arange(npg)
            else:
                forced = [0, npg - 1]
                rest = [x for x in order[: kb + 2] if x not in forced][: kb - 2]
                chosen = np.array(sorted(forced + rest))
            pmask = np.zeros(npg, bool)
            pmask[chosen] = True
            mask = np.repeat(pmask, page)[:n]
            mass = a[:, mask].sum(1)
            acc[f"quest@{B}"].extend(mass)
            if B in prev_chosen:
                smask = np.zeros(npg, bool)
                smask[prev_chosen[B]] = True
                smask[[0, npg - 1]] = True
                acc[f"stale@{B}"].extend(a[:, np.repeat(smask, page)[:n]].sum(1))
            prev_chosen[B] = chosen
            osel = (a[:, mask] @ vv[mask]) / mass[:, None]
            acc[f"err@{B}"].extend(np.linalg.norm(osel - o, axis=1) / np.linalg.norm(o, axis=1))
            if B == drift_budget:
                sel_sets.append(set(chosen.tolist()))
    for key, val in acc.items():
        if not val:
            continue
        r[key] = float(np.mean(val))
        if key.startswith("quest@") or key.startswith("err@"):
            r[key.replace("@", "_p01@" if key.startswith("quest") else "_p99@")] = float(
                np.percentile(val, 1 if key.startswith("quest") else 99))
    jac = lambda x, y: len(x & y) / max(1, len(x | y))
    if len(sel_sets) > 1:
        r["keep1"] = float(np.mean([jac(sel_sets[i], sel_sets[i + 1]) for i in range(len(sel_sets) - 1)]))
    if len(sel_sets) > 32:
        r["keep32"] = float(np.mean([jac(sel_sets[i], sel_sets[i + 32]) for i in range(len(sel_sets) - 32)]))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--contexts", default="2048,4096,8192,16256")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--budgets", default="128,256,512,1024,2048,4096")
    ap.add_argument("--drift-budget", type=int, default=1024)
    ap.add_argument("--page", type=int, default=16)
    ap.add_argument("--layers", default="", help="comma list; default every layer of the trace")
    ap.add_argument("--json")
    a = ap.parse_args()
    man, get = load(a.trace)
    contexts = [int(x) for x in a.contexts.split(",")]
    budgets = [int(x) for x in a.budgets.split(",")]
    layers = [int(x) for x in a.layers.split(",")] if a.layers else man["layers"]
    hd = man["model"]["head_dim"]
    scale = man.get("softmax_scale", 1 / np.sqrt(hd))
    qb = man["query_begin"]
    rows = []
    for C in contexts:
        if C < qb or C + a.steps > man["positions"]:
            sys.exit(f"analyze_trace: context {C} + steps {a.steps} needs query_begin <= {C} and "
                     f"positions >= {C + a.steps}; the trace has query_begin {qb}, positions {man['positions']}")
        for L in layers:
            for H in man["kv_heads"]:
                pre = f"layer.{L}.kv.{H}."
                k, v, q = get(pre + "k"), get(pre + "v"), get(pre + "q")
                r = analyse(np.asarray(q[C - qb: C - qb + a.steps]), np.asarray(k[:C + a.steps]),
                            np.asarray(v[:C + a.steps]), C, a.steps, scale, a.page, budgets, a.drift_budget)
                r.update(layer=L, kv_head=H, context=C)
                rows.append(r)
                print(f"C={C} L{L} H{H}: sink4 {r['sink4']:.3f} page0 {r['page0']:.3f} "
                      + " ".join(f"{n} {r[n]:.3f}" for n in BNAMES)
                      + f" eff {r['eff_support']:.4f} quest@1024 {r['quest@1024']:.3f} oracle@1024 {r['oracle@1024']:.3f}"
                      + f" keep1 {r.get('keep1', float('nan')):.3f}", flush=True)
    out = {"trace": a.trace, "manifest_source": man.get("source", ""), "contexts": contexts,
           "budgets": budgets, "steps": a.steps, "page": a.page, "rows": rows}
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)
    keys = [k for k in rows[0] if k not in ("layer", "kv_head", "context")]
    print("\nmeans over layers and heads:")
    for C in contexts:
        rr = [r for r in rows if r["context"] == C]
        print(f"C={C}: " + " ".join(f"{k} {np.mean([r[k] for r in rr if k in r]):.3f}" for k in keys))


if __name__ == "__main__":
    main()
