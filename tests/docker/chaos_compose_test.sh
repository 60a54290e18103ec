#!/usr/bin/env bash
# `pnmkv chaos --compose`, for real: a seeded sweep of 3 trials over the container cluster
# (docker/cluster.sh), drawn from crash, hang, partition, coordinator kill and message delay
# (seeds 745-747 draw each of them: delay at a rate and a crash; a hang and a coordinator
# kill; a partition). Every strike of these seeds is due by decode step 350 of 600 and the
# coordinator kill by step 104, so each strikes while the run decodes even on a loaded
# machine (a strike's bash and docker commands take up to ~2 s there); and the kill comes
# last in its trial: the driver is blind to the run's steps while the coordinator is down
# (progress reaches it through the coordinator), so a strike due then would strike late.
# Checks: bad command lines refused with the allowed values; the same seed plans the same
# schedule and the sweep ran exactly that; every invariant held (the command's exit status);
# every container action that stands in for a drawn fault struck (or found its device
# already lost, and said so) and every strike was undone; a crashed device was
# reported lost; the killed coordinator was restarted by Docker and the driver rejoined it;
# nothing of the trials' clusters is left. Skips (exit 77) only when not root or when no
# Docker daemon can be started, saying why.
# Usage: tests/docker/chaos_compose_test.sh PNMKV_BINARY
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$(cd "$(dirname "${1:?usage: chaos_compose_test.sh PNMKV_BINARY}")" && pwd)/$(basename "$1")"
cd "$root"
fail() { echo "FAIL: $*"; exit 1; }

# Refusals first (no Docker needed): each exits 2 naming what is allowed.
expect_refusal() {  # pattern, args...
  local pat="$1" out rc=0; shift
  out="$("$bin" chaos "$@" 2>&1)" || rc=$?
  [ "$rc" -eq 2 ] || fail "pnmkv chaos $*: exit $rc, expected 2 ($out)"
  grep -q -- "$pat" <<<"$out" || fail "pnmkv chaos $*: '$out' does not say '$pat'"
}
expect_refusal "pick one" --compose --multiprocess --plan-only
expect_refusal "allowed: crash|hang|partition" --compose --faults crash,bogus --plan-only
expect_refusal "for --compose only" --cluster-script /bin/true --plan-only
expect_refusal "needs --multiprocess or --compose" --faults coordinator-kill --plan-only

faults=crash,hang,partition,coordinator-kill,delay
plan() { "$bin" chaos --compose --plan-only --trials 3 --seed 745 --faults "$faults"; }
p1="$(plan)"; p2="$(plan)"
[ "$p1" = "$p2" ] || fail "the same seed planned two schedules"
for op in crash pause resume partition heal coordinator; do
  grep -q "cluster.sh fault $op " <<<"$p1" || fail "seeds 745-747 no longer draw a '$op' action; pick seeds that do:
$p1"
done

# The compose test's image (rebuilt from this build, layers cached), a project, state
# folder and port of its own.
. "$root/tests/docker/docker_prologue.sh"
docker_prologue pnmkvchaostest 28000 pnmkv-chaos-test
trap cleanup EXIT

t0="$(date +%s%3N)"
rc=0
nice -n 5 "$bin" chaos --compose --trials 3 --seed 745 --faults "$faults" --out "$work/out" 2>&1 | tee "$work/chaos.log" ||
  rc=$?
[ "$rc" -eq 0 ] || fail "pnmkv chaos --compose exited non-zero (an invariant broke, or the sweep could not run)"
echo "sweep: $(( $(date +%s%3N) - t0 )) ms"

python3 - "$work/out/chaos.jsonl" "$p1" <<'PY'
import json, re, sys
trials = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
planned = re.findall(r"^seed (\d+): (.*)$", sys.argv[2], re.M)
assert [(str(t["seed"]), t["script"]) for t in trials] == planned, f"ran {[(t['seed'], t['script']) for t in trials]}, planned {planned}"
for t in trials:
    assert t["ok"] and not t["violations"], f"seed {t['seed']}: {t['violations']}"
    acts = t.get("container_actions", [])
    for a in acts:
        # A strike may find its device already lost (fenced: its process exited), which is
        # said so; anything else that did not strike is a failure.
        if a["op"] in ("crash", "pause", "partition", "coordinator"):
            assert a["ok"] or "was already lost" in a["error"], f"seed {t['seed']}: {a['op']} {a['node']} did not strike: {a['error']}"
            assert "after the run had ended" not in a["error"], f"seed {t['seed']}: {a['op']} {a['node']} struck too late: {a}"
            assert a["step_issued"] >= a["at_step"], f"seed {t['seed']}: {a} struck before its step"
        if a["op"] in ("resume", "heal"):
            assert a["ok"] or a["error"].startswith("not needed"), f"seed {t['seed']}: {a['op']} {a['node']} was not undone: {a['error']}"
    lost = {l["device"] for l in t["losses"]}
    for e in t["events"]:
        if e["kind"] == "crash":
            assert e["node"] in lost, f"seed {t['seed']}: device {e['node']} crashed but was not reported lost ({t['losses']})"
        if e["kind"] == "coordinator-kill":
            assert t["coordinator_restarts"] >= 1, f"seed {t['seed']}: the coordinator was not restarted"
            assert t["coordinator_recover_ms"], f"seed {t['seed']}: the driver did not rejoin the restarted coordinator"
        if e["kind"] == "delay":
            assert t["fired"].get("delay", 0) > 0, f"seed {t['seed']}: the nodes' delay rule never fired ({t['fired']})"
    print(f"seed {t['seed']}: ok, {len(acts)} container actions, lost {sorted(lost)}, fired {t['fired']}")
PY
grep -q "^fault  *trials" "$work/chaos.log" || fail "no summary table"

trap - EXIT
cleanup
left="$(docker ps -aq --filter "label=com.docker.compose.project=$PNMKV_PROJECT" 2>/dev/null | wc -l || true)"
[ "${left:-0}" -eq 0 ] || fail "$left containers of $PNMKV_PROJECT left behind"
echo PASS
