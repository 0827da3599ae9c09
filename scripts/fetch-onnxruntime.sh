#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library from the PyPI `onnxruntime` wheel (the only
# registry that ships it here) and unpacks it into .cache/onnxruntime/.
# The `ort` crate loads it at run time (feature `load-dynamic`); nothing else downloads.
# Usage: scripts/fetch-onnxruntime.sh [DEST_DIR]   (default: <repo>/.cache/onnxruntime)
set -euo pipefail
ORT_VERSION="${CATSDOGS_ORT_VERSION:-1.32.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/.cache/onnxruntime}"
lib="$dest/libonnxruntime.so"
if [ -e "$lib" ] && [ -e "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$ORT_VERSION" ]; then
  echo "onnxruntime $ORT_VERSION already at $lib"
  exit 0
fi
py="$(command -v python3 || command -v python || true)"
[ -n "$py" ] || { echo "error: python3 with pip is needed to fetch the onnxruntime wheel from PyPI" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==$ORT_VERSION"
wheel="$(ls "$tmp"/onnxruntime-*.whl | head -1)"
mkdir -p "$dest"
"$py" - "$wheel" "$dest" <<'PY'
import sys, zipfile, os, re
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if re.search(r"onnxruntime/capi/libonnxruntime\.so\.\d", n)]
    if not names:
        sys.exit("no libonnxruntime.so.* inside " + wheel)
    name = names[0]
    target = os.path.join(dest, os.path.basename(name))
    with z.open(name) as src, open(target, "wb") as out:
        out.write(src.read())
    link = os.path.join(dest, "libonnxruntime.so")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.basename(name), link)
PY
echo "$ORT_VERSION" > "$dest/VERSION"
echo "onnxruntime $ORT_VERSION unpacked to $lib"
