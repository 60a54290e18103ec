#!/usr/bin/env bash
# Prints, one per line, the Debian packages holding the shared libraries a binary loads
# (ldd, then dpkg -S). The container image's runtime stage installs exactly these, so the
# list never drifts from what the binary links. Fails naming any library it cannot place.
# Usage: docker/runtime-packages.sh BINARY
set -euo pipefail
bin="${1:?usage: runtime-packages.sh BINARY}"
[ -x "$bin" ] || { echo "runtime-packages: '$bin' is not an executable file" >&2; exit 2; }
libs="$(ldd "$bin")" || { echo "runtime-packages: ldd cannot read '$bin'" >&2; exit 1; }
if grep -q "not found" <<<"$libs"; then
  echo "runtime-packages: '$bin' needs libraries this system lacks:" >&2
  grep "not found" <<<"$libs" >&2
  exit 1
fi
owner() {  # the package owning one library path; dpkg knows the pre-usrmerge name or the real one
  local p="$1" real
  real="$(readlink -f "$p")"
  for q in "$p" "$real" "/lib/${p#/usr/lib/}" "/usr/lib/${p#/lib/}" "*/$(basename "$real")"; do
    if out="$(dpkg -S "$q" 2>/dev/null)"; then
      echo "${out%%:*}" | head -n1
      return 0
    fi
  done
  echo "runtime-packages: no installed package owns $p ($real)" >&2
  return 1
}
for p in $(awk '/=> \//{print $3}' <<<"$libs"); do owner "$p"; done | sort -u
