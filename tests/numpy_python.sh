# Sourced by the test scripts that need python3 with numpy: sets $py, or exits 77 (ctest's
# skip) saying why; gives a temporary directory $tmp (removed on exit) and fail().
py=""
for c in "${PNMKV_PYTHON:-}" python3 /usr/bin/python3; do
  [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && "$c" -c "import numpy" 2>/dev/null && { py="$c"; break; }
done
if [ -z "$py" ]; then
  echo "SKIP: no python3 with numpy (Debian: python3-numpy, installed by scripts/setup.sh)"
  exit 77
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
