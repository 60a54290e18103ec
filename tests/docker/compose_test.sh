#!/usr/bin/env bash
# The containerised cluster, for real (docker/cluster.sh): builds the image, brings up a
# coordinator, a GPU host and 4 PNM devices in containers, runs a small job and checks its
# output digest against the embedded run of the same config; then, with replicas, a run
# whose device container is killed, one whose device is frozen (docker pause) and one whose
# device is cut off its network (docker network disconnect) each complete with that same
# digest and report the lost device with when it was detected; and a run whose coordinator
# process is killed (restarted by Docker from its journal) has that digest too. Tears
# everything down.
# Skips (exit 77) only when not root or when no Docker daemon can be started, saying why.
# Usage: tests/docker/compose_test.sh PNMKV_BINARY
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:?usage: compose_test.sh PNMKV_BINARY}"
# A project, image, state folder and coordinator port of its own: a user's cluster and image
# are left alone. The images (pnmkvtest:local and the base, pnmkv-base:bookworm) stay as a
# cache for the next run; `PNMKV_PROJECT=pnmkvtest PNMKV_IMAGE=pnmkvtest:local
# docker/cluster.sh clean` removes them.
t_all="$(date +%s%3N)"
. "$root/tests/docker/docker_prologue.sh"
docker_prologue pnmkvtest 27000 pnmkv-compose-test
trap cleanup EXIT

# Small, and long enough to decode through a fault: 1000 steps of 2 requests at 8K tokens.
sets=(--set workload.context_tokens=8192 --set workload.batch=2 --set selection.budget_tokens=512
      --set run.steps=1000 --set run.verify=false --set cluster.pnm_devices=4 --set cluster.replication=2)
config="$root/cluster_configs/default.yaml"

digest_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["output_digest"])' "$1"; }
ms_since() { echo $(( $(date +%s%3N) - $1 )); }

t0="$(date +%s%3N)"
(cd "$root" && "$bin" run --config "$config" "${sets[@]}" --quiet --json "$work/embedded.json" >/dev/null)
want="$(digest_of "$work/embedded.json")"
echo "embedded run: digest $want ($(ms_since "$t0") ms)"

t0="$(date +%s%3N)"
"$cluster" up --config "$config" "${sets[@]}" 2>&1 | tee "$work/up.log"
echo "up (image, config, containers): $(ms_since "$t0") ms"

t0="$(date +%s%3N)"
"$cluster" run --expect-digest "$want" --json "$work/clean.json" >"$work/clean.log" 2>&1 ||
  { tail -n 40 "$work/clean.log"; echo "FAIL: the clean run in containers"; exit 1; }
grep -E "cluster.sh|output digest" "$work/clean.log"
echo "clean run: $(ms_since "$t0") ms"
# The devices holding a primary copy: losing one stalls decoding until it is detected, so
# the loss is always seen while the run still decodes, however fast this machine is.
primaries=($(python3 -c 'import json,sys; print(" ".join(str(d["id"]) for d in json.load(open(sys.argv[1]))["devices"] if d["bytes_held"] > 0))' "$work/clean.json"))
[ "${#primaries[@]}" -ge 2 ] || { echo "FAIL: expected >= 2 devices holding primaries, got ${primaries[*]}"; exit 1; }

scenario() {  # kind device
  local kind="$1" dev="$2" t0; t0="$(date +%s%3N)"
  if ! "$cluster" run --fault "$kind:$dev:0.5" --expect-digest "$want" --json "$work/$kind.json" >"$work/$kind.log" 2>&1; then
    tail -n 40 "$work/$kind.log"
    echo "FAIL: the run with fault $kind on device $dev"
    exit 1
  fi
  grep -E "^fault|cluster.sh: (fault|output)" "$work/$kind.log"
  python3 - "$work/$kind.json" "$dev" "$kind" <<'PY'
import json, sys
rep, dev, kind = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
losses = rep["faults"]["device_losses"]
assert [l["device"] for l in losses] == [dev], f"{kind}: device_losses {losses}, expected exactly device {dev}"
assert rep["requests"]["completed"] == rep["requests"]["submitted"] == 2, f"{kind}: requests {rep['requests']}"
assert losses[0]["detected_unix_ms"] > 0 and losses[0]["reason"], f"{kind}: loss without time or reason: {losses[0]}"
PY
  echo "$kind run: $(ms_since "$t0") ms"
}
scenario crash "${primaries[0]}"
scenario pause "${primaries[1]}"
scenario partition "${primaries[0]}"

# The coordinator's process killed mid-decode: Docker restarts its container (restart:
# on-failure), which resumes from its journal; the nodes and the driver join it again and
# the run has the same digest, with no device lost.
t0="$(date +%s%3N)"
if ! "$cluster" run --fault coordinator:0:0.5 --expect-digest "$want" --json "$work/coordinator.json" \
    >"$work/coordinator.log" 2>&1; then
  tail -n 40 "$work/coordinator.log"
  echo "FAIL: the run with the coordinator killed"
  exit 1
fi
grep -E "cluster.sh: (fault|output)" "$work/coordinator.log"
restarts="$(docker inspect -f '{{.RestartCount}}' "$(docker ps -aq --filter "label=com.docker.compose.project=$PNMKV_PROJECT" \
  --filter label=com.docker.compose.service=coordinator)")"
[ "$restarts" -ge 1 ] || { echo "FAIL: the coordinator container was not restarted (RestartCount $restarts)"; exit 1; }
python3 - "$work/coordinator.json" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
assert rep["faults"]["device_losses"] == [], f"coordinator kill: devices lost {rep['faults']['device_losses']}"
assert rep["requests"]["completed"] == rep["requests"]["submitted"] == 2, rep["requests"]
PY
echo "coordinator run: restarted $restarts time(s), $(ms_since "$t0") ms"

t0="$(date +%s%3N)"
trap - EXIT
cleanup
left="$(docker ps -aq --filter "label=com.docker.compose.project=$PNMKV_PROJECT" 2>/dev/null | wc -l || true)"
[ "${left:-0}" -eq 0 ] || { echo "FAIL: $left containers of $PNMKV_PROJECT left behind"; exit 1; }
echo "down: $(ms_since "$t0") ms; all: $(ms_since "$t_all") ms"
echo PASS
