#!/usr/bin/env bash
# Installs the Debian 12 packages pnmkv needs, only those missing; quiet when nothing is.
# Runs as root (or through sudo when it is there). The packages are listed below.
# Usage: scripts/setup.sh [--build-only]
set -euo pipefail

# What compiling pnmkv needs (--build-only: all the container image's build stage installs).
build_packages=(
  build-essential cmake ninja-build pkg-config
  libcaf-dev libucx-dev capnproto libcapnp-dev libspdlog-dev libfmt-dev
  libgtest-dev googletest libgmock-dev libbenchmark-dev libyaml-cpp-dev libcli11-dev
  nlohmann-json3-dev libhwy-dev libssl-dev zlib1g-dev
)
# What the tests, benchmarks and experiments use besides.
tool_packages=(git ucx-utils iproute2 procps gnuplot-nox python3 python3-matplotlib python3-numpy)

case "${1:-}" in
  --build-only) packages=("${build_packages[@]}") ;;
  "") packages=("${build_packages[@]}" "${tool_packages[@]}") ;;
  *) echo "pnmkv setup: unknown argument '$1'; allowed: --build-only" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "pnmkv setup: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "pnmkv setup: missing packages (${missing[*]}) and not root; install them or run as root" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
