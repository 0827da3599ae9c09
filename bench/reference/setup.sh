#!/usr/bin/env bash
# Creates (idempotently) the Python venv used by the reference benchmarks and prints its
# python path on the last line of stdout. Everything else goes to stderr.
#
#   bash bench/reference/setup.sh
#
# CATSDOGS_BENCH_VENV: venv location (default .cache/bench-venv, relative to the repo root).
# PYTHON: interpreter used to create the venv (default python3).
# The install is skipped when the venv's marker holds the hash of the current requirements.txt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

venv="${CATSDOGS_BENCH_VENV:-.cache/bench-venv}"
req="$here/requirements.txt"
marker="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ -f "$marker" && "$(cat "$marker")" == "$want" && -x "$venv/bin/python" ]]; then
    echo "bench venv up to date: $venv" >&2
else
    echo "installing bench venv at $venv (several GB: torch, tensorflow)" >&2
    start=$SECONDS
    [[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -r "$req" >&2
    echo "$want" > "$marker"
    echo "installed in $((SECONDS - start)) s; size $(du -sh "$venv" | cut -f1)" >&2
fi

# Absolute path, so callers can run it from any directory.
echo "$(cd "$venv/bin" && pwd)/python"
