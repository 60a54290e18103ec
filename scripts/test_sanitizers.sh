#!/usr/bin/env bash
# Builds the core, transport and actors suites with AddressSanitizer and
# UndefinedBehaviorSanitizer in their own build folder and runs them (leak checking on;
# undefined behaviour fails the test). `./pnmkv test` calls this after the normal suite.
# Usage: scripts/test_sanitizers.sh [ctest args...]
# SANITIZE_BUILD_DIR (default: build-asan) may be set by the caller.
#
# Only our code is instrumented: CAF, UCX and Cap'n Proto are the distribution's builds.
# What they report that is not ours is suppressed in tests/sanitizers/*.supp, each entry
# with its reason; a report from our own code is a bug to fix, never to suppress.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${SANITIZE_BUILD_DIR:-$root/build-asan}"
suites="core;transport;actors"
# -O1 without NDEBUG (PNMKV_DCHECK on too): ASan at -O3 spent minutes on each CAF file; at
# -O1 this whole script (build and run) took under 6 minutes on the 2-core machine.
args="-DPNMKV_SANITIZE=ON -DPNMKV_APPS=OFF -DPNMKV_TEST_DIRS=$suites -DCMAKE_CXX_FLAGS_RELEASE=-O1 -DCMAKE_C_FLAGS_RELEASE=-O1"

# scripts/build.sh configures only once: reconfigure a folder configured otherwise.
if [ -f "$build/build.ninja" ] && ! grep -q '^PNMKV_SANITIZE:BOOL=ON' "$build/CMakeCache.txt"; then
  rm -f "$build/build.ninja"
fi
echo "pnmkv: sanitizer build (address, undefined) of the $suites suites in $build" >&2
BUILD_DIR="$build" CMAKE_ARGS="$args" "$root/scripts/build.sh"

supp="$root/tests/sanitizers"
# The caller's options come last, so they win.
export ASAN_OPTIONS="detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$supp/ubsan.supp${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

jobs="$(nproc 2>/dev/null || echo 2)"
ctest --test-dir "$build" --output-on-failure --timeout 900 -j"$jobs" "$@"
