#!/usr/bin/env bash
# Builds synth_trace (synthetic workload -> KV trace) against the project's core library.
# Needs scripts/build.sh to have built build/core/libpnmkv_core.a (BUILD_DIR to override).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${BUILD_DIR:-$root/build}"
[ -f "$build/core/libpnmkv_core.a" ] || (cd "$root" && scripts/build.sh pnmkv_core)
g++ -std=c++20 -O2 -ffp-contract=off -I"$root" "$here/synth_trace.cpp" "$build/core/libpnmkv_core.a" \
  -lhwy -lpthread -o "$build/synth_trace"
echo "$build/synth_trace"
