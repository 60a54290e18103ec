# Sourced by the Docker tests (compose_test.sh, chaos_compose_test.sh) once `root` and `bin`
# are set: `docker_prologue PROJECT PORT_BASE STATE_PREFIX` skips (exit 77, saying why) when
# not root or when no Docker daemon can be started; otherwise it exports a project, the
# shared test image, a state folder and a coordinator port of the test's own (a user's
# cluster and image are left alone), and sets `cluster` (docker/cluster.sh), `work` (a
# folder in the state folder) and `cleanup` (takes the cluster down, removes the state).
docker_prologue() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: not root; a Docker daemon, images and containers need root here"
    exit 77
  fi
  export PNMKV_PROJECT="$1" PNMKV_IMAGE=pnmkvtest:local
  PNMKV_DOCKER_STATE="$(mktemp -d "/var/tmp/$3-XXXXXX")"
  export PNMKV_DOCKER_STATE
  export PNMKV_PORT=$(($2 + $$ % 1000))
  BUILD_DIR="$(dirname "$bin")"
  export BUILD_DIR
  cluster="$root/docker/cluster.sh"
  work="$PNMKV_DOCKER_STATE/test"
  mkdir -p "$work"
  local rc=0
  "$cluster" daemon || rc=$?
  if [ "$rc" -eq 3 ]; then
    echo "SKIP: no Docker daemon answers and none could be started here (see above)"
    rm -rf "$PNMKV_DOCKER_STATE"
    exit 77
  fi
  if [ "$rc" -ne 0 ]; then
    echo "FAIL: docker/cluster.sh daemon exited $rc"
    rm -rf "$PNMKV_DOCKER_STATE"
    exit 1
  fi
}
cleanup() {
  "$cluster" down >"$work/down.log" 2>&1 || cat "$work/down.log"
  rm -rf "$PNMKV_DOCKER_STATE"
}
