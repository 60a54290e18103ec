#!/usr/bin/env bash
# A pnmkv cluster in containers: a coordinator, a GPU host and N PNM devices, one container
# each, from one image, on a private bridge network (docker-compose v1 or v2).
#
#   docker/cluster.sh up [--devices N] [--config F] [--set K=V]... [--from-source | --no-build]
#   docker/cluster.sh run [--json F] [--fault KIND:DEVICE[:DELAY_S]]... [--expect-digest HEX] [--from-host]
#   docker/cluster.sh fault crash|pause|resume|partition|heal|slow|unslow DEVICE [RATE] | coordinator 0
#   docker/cluster.sh status | logs [SERVICE] | down [--keep-daemon] | clean | daemon
#   docker/cluster.sh collect PATH DIR | leftovers       (what `pnmkv chaos --compose` uses)
#
# `up` does what is missing, idempotently: installs docker.io, docker-compose and debootstrap
# (apt, as root), starts a Docker daemon when none answers (and remembers that it did), makes
# the Debian 12 base image (debootstrap + docker import, no registry needed; or
# PNMKV_BASE_IMAGE=debian:bookworm from a registry), builds the image (docker/Dockerfile;
# on a Debian 12 host with the host's build of pnmkv, or --from-source inside the image),
# writes the cluster's config and a fresh secret, and starts the containers. `run` drives one
# run (the same report as every other mode) and brings the cluster up again first if a
# previous run shut it down. `down` removes the containers and network and stops the daemon
# only if `up` started it. Everything lives in the state folder (PNMKV_DOCKER_STATE,
# default docker/.state/PROJECT).
#
# Environment: PNMKV_PROJECT (compose project, default pnmkv), PNMKV_IMAGE (pnmkv:local),
# PNMKV_BASE_IMAGE (pnmkv-base:bookworm), PNMKV_PORT (coordinator on the host's loopback,
# 7000), PNMKV_DEBIAN_MIRROR (default: the first Debian mirror in apt's sources).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
project="${PNMKV_PROJECT:-pnmkv}"
if ! [[ "$project" =~ ^[a-z0-9]+$ ]]; then
  echo "cluster.sh: PNMKV_PROJECT='$project': use lower-case letters and digits only" >&2
  exit 2
fi
state="${PNMKV_DOCKER_STATE:-$root/docker/.state/$project}"
image="${PNMKV_IMAGE:-pnmkv:local}"
base="${PNMKV_BASE_IMAGE:-pnmkv-base:bookworm}"
port="${PNMKV_PORT:-7000}"
node_uid=10001  # the image's user (docker/Dockerfile)
network="${project}_pnmkv"
export PNMKV_IMAGE="$image" PNMKV_BASE_IMAGE="$base" PNMKV_PORT="$port" PNMKV_ETC="$state/etc" PNMKV_VAR="$state/var"

say() { echo "cluster.sh: $*" >&2; }
die() { say "$*"; exit 1; }
now_ms() { date +%s%3N; }
elapsed() { echo "$(( ($(now_ms) - $1) ))"; }  # ms since $1
is_root() { [ "$(id -u)" -eq 0 ]; }
compose() { docker-compose --project-directory "$root/docker" -p "$project" -f "$state/docker-compose.yml" "$@"; }

# --- tools and daemon -------------------------------------------------------------------

ensure_tools() {
  local need=()
  command -v docker >/dev/null || need+=(docker.io)
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v docker-compose >/dev/null || need+=(docker-compose)
  if [ "$base" = pnmkv-base:bookworm ]; then command -v debootstrap >/dev/null || need+=(debootstrap); fi
  command -v tc >/dev/null || need+=(iproute2)
  command -v nsenter >/dev/null || need+=(util-linux)
  [ ${#need[@]} -eq 0 ] && return 0
  is_root || die "missing tools (${need[*]}); install them or run as root"
  say "installing ${need[*]} (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
}

# Exit status 3: no daemon answers and none could be started (tests skip on it).
ensure_daemon() {
  docker info >/dev/null 2>&1 && return 0
  is_root || { say "no Docker daemon answers and starting one needs root"; exit 3; }
  mkdir -p "$state"
  # No systemd here and the init script fails; dockerd is started by hand. These flags
  # leave the host's firewall and ip_forward alone: containers reach each other on their
  # bridge network (with service-name DNS) and nothing outside.
  local driver
  for driver in overlay2 vfs; do
    setsid dockerd --iptables=false --ip6tables=false --ip-forward=false --storage-driver="$driver" \
      >"$state/dockerd.log" 2>&1 </dev/null &
    echo $! >"$state/dockerd.pid"
    local t0; t0=$(now_ms)
    while [ "$(elapsed "$t0")" -lt 20000 ]; do
      if docker info >/dev/null 2>&1; then
        say "started dockerd (pid $(cat "$state/dockerd.pid"), storage driver $driver) in $(elapsed "$t0") ms"
        return 0
      fi
      kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null || break
      sleep 0.2
    done
    kill "$(cat "$state/dockerd.pid")" 2>/dev/null || true
    sleep 1
    say "dockerd with storage driver $driver did not come up; the end of its log:"
    tail -n 5 "$state/dockerd.log" >&2 || true
  done
  rm -f "$state/dockerd.pid"
  say "no Docker daemon could be started"
  exit 3
}

stop_daemon() {
  [ -f "$state/dockerd.pid" ] || return 0
  local pid; pid="$(cat "$state/dockerd.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$state/dockerd.pid"
  # What a hand-started daemon leaves behind.
  ip link del docker0 2>/dev/null || true
  if mountpoint -q /run/docker/netns/default 2>/dev/null; then umount /run/docker/netns/default || true; fi
  say "stopped the dockerd this script started (pid $pid)"
}

# --- images -----------------------------------------------------------------------------

debian_mirror() {
  if [ -n "${PNMKV_DEBIAN_MIRROR:-}" ]; then echo "$PNMKV_DEBIAN_MIRROR"; return; fi
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; ++i) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)"
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

ensure_base() {
  docker image inspect "$base" >/dev/null 2>&1 && return 0
  local t0; t0=$(now_ms)
  if [ "$base" != pnmkv-base:bookworm ]; then
    say "pulling $base"
    docker pull "$base" >&2 || die "cannot pull $base; unset PNMKV_BASE_IMAGE to make a base image with debootstrap"
    return 0
  fi
  is_root || die "making the base image with debootstrap needs root"
  local dir mirror; dir="$(mktemp -d /var/tmp/pnmkv-rootfs-XXXXXX)"; mirror="$(debian_mirror)"
  say "making the base image $base: debootstrap --variant=minbase bookworm from $mirror"
  if ! debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$state/debootstrap.log" 2>&1; then
    tail -n 20 "$state/debootstrap.log" >&2
    rm -rf "$dir"
    die "debootstrap failed (log: $state/debootstrap.log)"
  fi
  tar -C "$dir" -c . | docker import - "$base" >/dev/null
  rm -rf "$dir"
  say "base image $base made in $(elapsed "$t0") ms"
}

host_can_prebuild() {
  [ -f /etc/os-release ] && . /etc/os-release && [ "${ID:-}" = debian ] && [ "${VERSION_ID:-}" = 12 ]
}

# The host is Debian 12, like the image: its build of this tree runs there unchanged and
# goes into the build context (docker/.prebuilt) for the image's build stage to take.
host_build() {
  "$root/scripts/setup.sh"
  BUILD_DIR="${BUILD_DIR:-$root/build}" "$root/scripts/build.sh" pnmkv
  rm -rf "$root/docker/.prebuilt"
  mkdir -p "$root/docker/.prebuilt"
  cp "${BUILD_DIR:-$root/build}/pnmkv" "$root/docker/.prebuilt/pnmkv"
  "$root/docker/runtime-packages.sh" "$root/docker/.prebuilt/pnmkv" >"$root/docker/.prebuilt/runtime-packages"
}

build_image() {
  local prebuilt="$1" t0 args=()
  t0=$(now_ms)
  if [ "$prebuilt" = 1 ]; then
    args+=(--build-arg PREBUILT=docker/.prebuilt)
    say "building image $image from $base with the host's build of pnmkv"
  else
    rm -rf "$root/docker/.prebuilt"
    say "building image $image from $base, compiling pnmkv inside (about 20 minutes on 2 cores)"
  fi
  DOCKER_BUILDKIT=0 docker build --network host -f "$root/docker/Dockerfile" --build-arg BASE="$base" \
    "${args[@]}" -t "$image" "$root" >"$state/build.log" 2>&1 || {
    tail -n 30 "$state/build.log" >&2
    die "image build failed (log: $state/build.log)"
  }
  # The build stage's untagged images (one per build with the legacy builder) are not kept.
  docker image prune -f --filter label=org.pnmkv.stage=build >/dev/null 2>&1 || true
  say "image $image built in $(elapsed "$t0") ms"
}

# pnmkv's own CLI: the host's build when there is one, else the image's, with the repository
# and the config's folder mounted where they are on the host (paths resolve alike).
pnmkv_cli() {
  local bin="${BUILD_DIR:-$root/build}/pnmkv"
  if [ -x "$bin" ] && host_can_prebuild; then (cd "$root" && "$bin" "$@"); return; fi
  local cfgdir; cfgdir="$(dirname "$user_config")"
  docker run --rm --network none -v "$root:$root:ro" -v "$cfgdir:$cfgdir:ro" -w "$root" \
    --entrypoint pnmkv "$image" "$@"
}

# --- config -----------------------------------------------------------------------------

# Writes $state/etc/cluster.yaml (what the containers load), $state/etc/cluster.secret and
# $state/etc/data/ (every file the config names, copied: the containers see only /etc/pnmkv
# and the image), and $state/host.yaml (the same run for a driver on the host).
write_config() {
  # Written aside and swapped in at the end: a refused config leaves the last one whole.
  local etc="$state/etc.new" k v name sets=() host_sets=()
  rm -rf "$etc"
  mkdir -p "$etc/data"
  for s in "${user_sets[@]}"; do sets+=(--set "$s"); done
  devices="${devices:-$(pnmkv_cli config --config "$user_config" "${sets[@]}" --get cluster.pnm_devices)}"
  if ! [[ "$devices" =~ ^[0-9]+$ ]] || [ "$devices" -lt 1 ] || [ "$devices" -gt 64 ]; then
    die "--devices '$devices' is not an integer in 1..64"
  fi
  host_sets=("${sets[@]}" --set "cluster.pnm_devices=$devices")
  local container_sets=("${host_sets[@]}")
  # A driver on the host proves the same secret as the containers (root reads it).
  host_sets+=(--set "fabric.cluster_secret_file=$state/etc/cluster.secret")
  for k in model.file hardware.file sim.gpu_fabric_file sim.calibration_file workload.trace_file faults.script_file; do
    v="$(pnmkv_cli config --config "$user_config" "${sets[@]}" --get "$k")"
    [ -n "$v" ] || continue
    case "$v" in /*) ;; *) v="$root/$v" ;; esac
    [ -f "$v" ] || die "$k names $v, which is not a file here"
    name="$k-$(basename "$v")"
    cp "$v" "$etc/data/$name"
    container_sets+=(--set "$k=/etc/pnmkv/data/$name")
  done
  # The coordinator journals to its writable folder; every node (and the driver) reading a
  # journal path waits for a restarted coordinator instead of exiting.
  container_sets+=(--set cluster.journal_file=/var/lib/pnmkv/coordinator.journal)
  container_sets+=(--set cluster.coordinator_host=coordinator --set cluster.coordinator_port=7000
                   --set fabric.ucx_transport=tcp --set fabric.ucx_net_devices=eth0
                   --set fabric.cluster_secret_file=/etc/pnmkv/cluster.secret)
  pnmkv_cli config --config "$user_config" "${container_sets[@]}" >"$etc/cluster.yaml"
  pnmkv_cli config --config "$user_config" "${host_sets[@]}" >"$state/host.yaml.new"
  # A fresh secret per `up`, readable by the nodes' user only; mounted read-only.
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$etc/cluster.secret"
  chmod 0400 "$etc/cluster.secret"
  if is_root; then chown "$node_uid:$node_uid" "$etc/cluster.secret"; fi
  chmod -R a+rX "$etc/data" "$etc/cluster.yaml"
  "$root/docker/gen-compose.sh" "$devices" >"$state/docker-compose.yml"
  rm -rf "$state/etc"
  mv "$etc" "$state/etc"
  mv "$state/host.yaml.new" "$state/host.yaml"
  { printf 'devices=%q\nuser_config=%q\n' "$devices" "$user_config"
    printf 'user_sets=('; [ ${#user_sets[@]} -eq 0 ] || printf '%q ' "${user_sets[@]}"; printf ')\n'; } >"$state/settings"
}

# --- cluster ------------------------------------------------------------------------------

services() { compose config --services; }
# Container ids of the project (or of one service), by compose's labels: the docker CLI
# answers in milliseconds where docker-compose v1 (Python) takes a second or more, and a
# fault should strike when asked.
project_containers() {
  docker ps -aq --filter "label=com.docker.compose.project=$project" \
    ${1:+--filter "label=com.docker.compose.service=$1"}
}

# All node containers running and healthy?
cluster_healthy() {
  local ids id s
  ids="$(project_containers 2>/dev/null)" || return 1
  [ "$(wc -w <<<"$ids")" -eq "$((devices + 2))" ] || return 1
  for id in $ids; do
    s="$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")"
    [ "$s" = running/healthy ] || return 1
  done
}

unpause_all() {
  local id
  for id in $(project_containers 2>/dev/null); do
    [ "$(docker inspect -f '{{.State.Paused}}' "$id" 2>/dev/null)" = true ] && docker unpause "$id" >/dev/null
  done
  return 0
}

start_cluster() {
  local t0; t0=$(now_ms)
  unpause_all
  # A fresh cluster starts with an empty journal (Docker's restarts keep it: they resume).
  mkdir -p "$state/var"
  rm -f "$state/var/coordinator.journal"
  if is_root; then chown "$node_uid:$node_uid" "$state/var"; fi
  compose up -d --force-recreate --remove-orphans >"$state/up.log" 2>&1 || {
    cat "$state/up.log" >&2
    die "docker-compose up failed"
  }
  while ! cluster_healthy; do
    if [ "$(elapsed "$t0")" -gt 120000 ]; then
      compose ps >&2
      compose logs --tail 20 >&2
      die "the cluster was not healthy within 120 s"
    fi
    for id in $(project_containers); do
      if [ "$(docker inspect -f '{{.State.Status}}' "$id")" = exited ]; then
        compose logs --tail 20 >&2
        die "a node exited during start-up: $(docker inspect -f '{{.Name}}' "$id")"
      fi
    done
    sleep 0.2
  done
  say "cluster up: coordinator, gpu-host, $devices devices, healthy in $(elapsed "$t0") ms"
}

container_of() {  # container id of a device (100, 101, ...) or a service name
  local svc="$1"
  [[ "$svc" =~ ^[0-9]+$ ]] && svc="pnm-device-$svc"
  local id; id="$(project_containers "$svc" 2>/dev/null || true)"
  [ -n "$id" ] || die "no container for '$1'; devices are $(services | grep -o '[0-9]*$' | tr '\n' ' ')(or a service: $(services | tr '\n' ' '))"
  echo "$id"
}

load_settings() {
  [ -f "$state/settings" ] || die "no cluster in $state: run \`docker/cluster.sh up\` first"
  # shellcheck disable=SC1091
  . "$state/settings"
}

cmd_up() {
  local from_source=0 no_build=0
  user_config="$root/cluster_configs/default.yaml"
  user_sets=()
  devices=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --devices) devices="${2:?--devices needs N}"; shift 2 ;;
      --config)
        [ -f "${2:?--config needs a file}" ] || die "--config $2: no such file"
        user_config="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
      --set) user_sets+=("${2:?--set needs KEY=VALUE}"); shift 2 ;;
      --from-source) from_source=1; shift ;;
      --no-build) no_build=1; shift ;;
      *) die "up: unknown argument '$1'; allowed: --devices N, --config F, --set K=V, --from-source, --no-build" ;;
    esac
  done
  if [ -n "$devices" ] && { ! [[ "$devices" =~ ^[0-9]+$ ]] || [ "$devices" -lt 1 ] || [ "$devices" -gt 64 ]; }; then
    die "--devices '$devices' is not an integer in 1..64"
  fi
  local t0 prebuilt=0; t0=$(now_ms)
  mkdir -p "$state"
  if [ "$from_source" = 0 ] && [ "$no_build" = 0 ] && host_can_prebuild; then prebuilt=1; fi
  # With the host's build, the config is checked before any image work; else the image's
  # pnmkv checks it once built.
  if [ "$prebuilt" = 1 ]; then host_build && write_config; fi
  ensure_tools
  ensure_daemon
  if [ "$no_build" = 1 ]; then
    docker image inspect "$image" >/dev/null 2>&1 || die "--no-build: there is no image $image"
    say "using the image $image as it is (--no-build)"
  else
    ensure_base
    build_image "$prebuilt"
  fi
  [ "$prebuilt" = 1 ] || write_config
  start_cluster
  say "up in $(elapsed "$t0") ms (state: $state)"
}

# The host pid of a container's node process: the child of its init (`init: true`: Docker's
# tini is the container's first process and the node its only child).
node_pid() {
  local init kids
  init="$(docker inspect -f '{{.State.Pid}}' "$1" 2>/dev/null || echo 0)"
  [ "$init" -gt 0 ] || return 0
  kids="$(cat "/proc/$init/task/$init/children" 2>/dev/null || pgrep -P "$init" || true)"
  echo "${kids%% *}" | tr -d ' \n'
}

# One fault, now. Logged to $state/faults.jsonl (and printed on stdout) with when it was
# issued (just before the signal or docker command) and when it had taken effect (a SIGKILL
# from the host: as it is sent; a docker command: when it returned, the container frozen
# or cut off by then).
cmd_fault() {
  local kind="${1:-}" target="${2:-}" rate="${3:-10mbit}"
  load_settings
  [ -n "$kind" ] && [ -n "$target" ] || die "fault: usage: fault crash|pause|resume|partition|heal|slow|unslow DEVICE [RATE] | coordinator 0"
  [ "$kind" = coordinator ] && target=coordinator
  local id pid how t t_done tries; id="$(container_of "$target")"
  t="$(now_ms)"  # when the fault was issued
  case "$kind" in
    crash | coordinator)
      # SIGKILL to the node's process from the host, at once (a `docker kill` or `docker
      # exec` takes 0.1-1 s on a loaded machine before it strikes): its init exits 137 with
      # it, so the container exits. A device stays down; the coordinator's container is
      # restarted by Docker (restart: on-failure, which `docker kill` would not trigger: a
      # stop by hand) and resumes from its journal.
      pid="$(node_pid "$id")"
      t="$(now_ms)"
      if [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; then
        how="SIGKILL to the node process (host pid $pid)"
      elif [ "$kind" = crash ]; then
        docker kill --signal KILL "$id" >/dev/null; how="docker kill (SIGKILL)"
      else
        docker exec "$id" sh -c 'kill -9 -1' >/dev/null 2>&1 ||
          die "fault coordinator: its node process is not running (has the run ended?)"
        how="SIGKILL inside (docker exec)"
      fi
      [ "$kind" = crash ] || how="$how; restarted by Docker from its journal" ;;
    pause)
      # The cgroup (v1) freezer gives up when a busy container does not freeze in time
      # ("unable to freeze"), leaving it running: tried again, a few times.
      for tries in 1 2 3 4 5; do
        docker pause "$id" >/dev/null 2>"$state/pause.err" && break
        [ "$tries" -lt 5 ] || { cat "$state/pause.err" >&2; die "fault pause $target: docker pause failed 5 times"; }
        sleep 0.05
      done
      how="docker pause (cgroup freezer)"; [ "$tries" -eq 1 ] || how="$how, attempt $tries" ;;
    resume) docker unpause "$id" >/dev/null; how="docker unpause" ;;
    partition) docker network disconnect -f "$network" "$id"; how="docker network disconnect" ;;
    heal) docker network connect "$network" "$id"; how="docker network connect" ;;
    slow | unslow)
      pid="$(docker inspect -f '{{.State.Pid}}' "$id")"
      if [ "$kind" = unslow ]; then
        nsenter -t "$pid" -n tc qdisc del dev eth0 root 2>/dev/null || true
        how="tc qdisc del"
      elif nsenter -t "$pid" -n tc qdisc replace dev eth0 root netem delay 20ms rate "$rate" 2>/dev/null; then
        how="tc netem delay 20ms rate $rate"
      else
        # netem is not in every kernel (not in this project's CI machines'); a token bucket is.
        nsenter -t "$pid" -n tc qdisc replace dev eth0 root tbf rate "$rate" burst 32kbit latency 400ms ||
          die "fault slow: neither tc netem nor tc tbf works in this kernel"
        how="tc tbf rate $rate (netem unavailable)"
      fi ;;
    *) die "fault: unknown kind '$kind'; allowed: crash, pause, resume, partition, heal, slow, unslow, coordinator" ;;
  esac
  t_done="$(now_ms)"
  # A SIGKILL sent from here strikes as it is sent (the process never runs again): its
  # issue time is when it took effect, not when `date` came back after it.
  case "$how" in "SIGKILL to the node process"*) t_done="$t" ;; esac
  local line
  line="$(printf '{"kind":"%s","target":"%s","how":"%s","injected_unix_ms":%s,"effective_unix_ms":%s}' \
    "$kind" "$target" "$how" "$t" "$t_done")"
  echo "$line" >>"$state/faults.jsonl"
  echo "$line"  # on stdout too: `pnmkv chaos --compose` reads its times from it
  say "fault $kind $target ($how) issued at $(date -u -d "@${t:0:10}" +%H:%M:%S).${t:10}Z, done $((t_done - t)) ms later"
}

# Prints each fault injected during the run next to the report's detection of it.
fault_summary() {
  local json="$1" since="$2"
  [ -f "$state/faults.jsonl" ] && command -v python3 >/dev/null || return 0
  python3 - "$json" "$state/faults.jsonl" "$since" <<'PY'
import json, sys
report = json.load(open(sys.argv[1])) if sys.argv[1] else {}
losses = report.get("faults", {}).get("device_losses", [])
since = int(sys.argv[3])
faults = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
faults = [f for f in faults if f["injected_unix_ms"] >= since]
for f in faults:
    hit = [l for l in losses if str(l["device"]) == f["target"]]
    if f["kind"] in ("resume", "heal", "unslow"):
        print(f"fault {f['kind']} {f['target']}: {f['how']}")
    elif f["kind"] == "slow" and not hit:
        p50 = report.get("wall", {}).get("step_ms_p50")
        print(f"fault slow {f['target']}: {f['how']}; not a device loss"
              + (f" (decode step p50 {p50:.2f} ms; compare a clean run's)" if p50 else ""))
    elif hit:
        l = hit[0]
        print(f"fault {f['kind']} {f['target']}: {f['how']}; detected after "
              f"{l['detected_unix_ms'] - f['injected_unix_ms']} ms, at decode step {l['steps_done']} "
              f"({l['reason']})")
    else:
        print(f"fault {f['kind']} {f['target']}: {f['how']}; not detected as a device loss")
PY
}

cmd_run() {
  local json="" expect="" from_host=0 faults=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --json) json="${2:?--json needs a file}"; shift 2 ;;
      --fault) faults+=("${2:?--fault needs KIND:DEVICE[:DELAY_S]}"); shift 2 ;;
      --expect-digest) expect="${2:?--expect-digest needs a hex digest}"; shift 2 ;;
      --from-host) from_host=1; shift ;;
      *) die "run: unknown argument '$1'; allowed: --json F, --fault KIND:DEVICE[:DELAY_S], --expect-digest HEX, --from-host" ;;
    esac
  done
  load_settings
  local f
  for f in "${faults[@]}"; do
    [[ "$f" =~ ^(crash|pause|partition|slow|coordinator):[0-9]+(:[0-9]+(\.[0-9]+)?)?$ ]] ||
      die "--fault '$f': use KIND:DEVICE[:DELAY_S], KIND one of crash, pause, partition, slow, coordinator (e.g. crash:101:1, coordinator:0:1)"
  done
  ensure_daemon
  cluster_healthy || start_cluster
  mkdir -p "$state/runs"
  chmod 0777 "$state/runs"  # the driver container's user writes its report here
  local n t0 log out rc=0 watchers=()
  n="$(date +%Y%m%d-%H%M%S)-$$"
  log="$state/runs/$n.log"
  out="$state/runs/$n.json"
  t0="$(now_ms)"
  : >"$log"
  # Each fault waits for decoding to begin (the driver's "decode ..." progress line), then
  # for its delay, then strikes.
  for f in "${faults[@]}"; do
    IFS=: read -r kind dev delay <<<"$f"
    (
      for _ in $(seq 1 1200); do grep -q "pnmkv run: decode" "$log" && break; sleep 0.1; done
      sleep "${delay:-1}"
      "$0" fault "$kind" "$dev"
    ) &
    watchers+=($!)
  done
  if [ "$from_host" = 1 ]; then
    local bin="${BUILD_DIR:-$root/build}/pnmkv"
    [ -x "$bin" ] || die "--from-host needs the host's build ($bin): run ./pnmkv --help once"
    # The journal's path (the host's view of it) tells the driver that a lost coordinator
    # comes back (Docker restarts it), so it waits and joins again, as the containers do.
    "$bin" run --config "$state/host.yaml" --set "cluster.journal_file=$state/var/coordinator.journal" \
      --attach "127.0.0.1:$port" --json "$out" 2>&1 | tee "$log" || rc=$?
  else
    docker run --rm --name "${project}-driver-$$" --network "$network" -v "$state/etc:/etc/pnmkv:ro" \
      -v "$state/runs:/runs" --entrypoint pnmkv "$image" \
      run --config /etc/pnmkv/cluster.yaml --attach coordinator:7000 --json "/runs/$n.json" 2>&1 |
      { grep --line-buffered -v "^WARNING: IPv4 forwarding is disabled" || true; } | tee "$log" || rc=$?  # our dockerd's flags
  fi
  for w in "${watchers[@]}"; do wait "$w" || true; done
  say "run finished in $(elapsed "$t0") ms (exit $rc; log $log)"
  [ -f "$out" ] && fault_summary "$out" "$t0"
  [ -n "$json" ] && [ -f "$out" ] && cp "$out" "$json"
  [ "$rc" -eq 0 ] || exit "$rc"
  if [ -n "$expect" ]; then
    # The run's digest: the top-level key (two spaces in); per-request ones sit deeper.
    local got; got="$(grep -o '^  "output_digest": *"[0-9a-f]*"' "$out" | grep -o '[0-9a-f]\{16\}')"
    [ "$got" = "$expect" ] || die "output digest $got, expected $expect"
    say "output digest $got as expected"
  fi
}

# Copies PATH out of every container of the cluster (running or exited) into DIR as
# SERVICE.BASENAME, where it exists, and writes DIR/containers.tsv: service, state, exit
# code, restarts (Docker's count: a killed coordinator comes back). For `pnmkv chaos
# --compose`, which collects the nodes' fault logs with it before `down`.
cmd_collect() {
  local path="${1:-}" dir="${2:-}" id svc
  [ -n "$path" ] && [ -n "$dir" ] || die "collect: usage: collect PATH DIR"
  load_settings
  mkdir -p "$dir"
  : >"$dir/containers.tsv"
  for id in $(project_containers); do
    svc="$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$id")"
    docker cp "$id:$path" "$dir/$svc.$(basename "$path")" 2>/dev/null || true
    docker inspect -f "$svc	{{.State.Status}}	{{.State.ExitCode}}	{{.RestartCount}}" "$id" >>"$dir/containers.tsv"
  done
}

# What of the project is still there: a line per container (driver containers included)
# and per network; nothing after a clean `down`.
cmd_leftovers() {
  docker ps -a --filter "label=com.docker.compose.project=$project" --format 'container {{.Names}} ({{.Status}})'
  docker ps -a --filter "name=${project}-driver-" --format 'container {{.Names}} ({{.Status}})'
  docker network ls --filter "name=${network}" --format '{{.Name}}' | { grep -x "$network" || true; } | sed 's/^/network /'
}

cmd_down() {
  local keep=0
  [ "${1:-}" = --keep-daemon ] && keep=1
  local t0; t0=$(now_ms)
  if [ -f "$state/docker-compose.yml" ] && docker info >/dev/null 2>&1; then
    unpause_all
    docker ps -aq --filter "name=${project}-driver-" | xargs -r docker rm -f >/dev/null
    compose down -v --remove-orphans >"$state/down.log" 2>&1 || cat "$state/down.log" >&2
    # Seen once under load (the 1,000-seed detsim sweep beside a chaos trial): the project's
    # network outlived `compose down` (cause not established; the log went with the trial).
    # Its removal is retried for up to ~10 s, so `leftovers` reports only what stays.
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
      docker network ls --filter "name=${network}" --format '{{.Name}}' | grep -qx "$network" || break
      docker network rm "$network" >/dev/null 2>&1 || sleep 1
    done
  fi
  [ "$keep" = 1 ] || stop_daemon
  say "down in $(elapsed "$t0") ms"
}

case "${1:-}" in
  daemon) mkdir -p "$state"; ensure_tools; ensure_daemon ;;  # exit 3: none can be started
  up) shift; cmd_up "$@" ;;
  run) shift; cmd_run "$@" ;;
  fault) shift; cmd_fault "$@" ;;
  status) load_settings; compose ps ;;
  logs) shift; load_settings; compose logs --no-color ${1:+"$1"} ;;
  down) shift; cmd_down "$@" ;;
  collect) shift; cmd_collect "$@" ;;
  leftovers) cmd_leftovers ;;
  clean)
    cmd_down --keep-daemon
    if docker info >/dev/null 2>&1; then docker rmi -f "$image" "$base" >/dev/null 2>&1 || true; fi
    cmd_down
    rm -rf "$state" "$root/docker/.prebuilt"
    say "removed the images $image and $base (if the daemon was up) and $state" ;;
  *)
    [ -z "${1:-}" ] || say "unknown command '$1'"
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2 ;;
esac
