#!/usr/bin/env bash
# Configures (once) and builds incrementally. Usage: scripts/build.sh [ninja targets...]
# BUILD_DIR (default: build) and CMAKE_ARGS may be set by the caller.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
if [ ! -f "$build/build.ninja" ]; then
  echo "pnmkv: configuring $build" >&2
  mkdir -p "$build"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} \
    >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
fi
jobs="$(nproc 2>/dev/null || echo 2)"
ninja -C "$build" --quiet -j"$jobs" "$@" 2>&1 | { grep -v "^ninja: no work to do" || true; } >&2
