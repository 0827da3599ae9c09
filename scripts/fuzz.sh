#!/usr/bin/env bash
# Runs the libFuzzer targets of fuzz/ for FUZZ_SECS seconds each (default 60).
# cargo fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them (no other toolchain can be fetched here). New inputs go to a scratch
# directory so the committed seed corpus stays as it is; a crash leaves its input in
# fuzz/artifacts/TARGET/ and fails the script. Copy such an input to
# fuzz/regressions/TARGET/ so the ordinary test suite replays it from then on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${FUZZ_SECS:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (crates.io)"
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
# Sanitizer off: the targets are safe Rust, where libFuzzer's own checks catch panics,
# and an AddressSanitizer build of every dependency is build time CI can spend fuzzing
# (FUZZ_SANITIZER=address turns it on).
sanitizer="${FUZZ_SANITIZER:-none}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in preprocess feedback_json; do
  echo "== fuzz $target for ${secs}s (sanitizer: $sanitizer)"
  mkdir -p "$scratch/$target"
  status=0
  cargo fuzz run --sanitizer "$sanitizer" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 \
    >"$scratch/$target.log" 2>&1 || status=$?
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs' "$scratch/$target.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "error: fuzzing $target failed (exit $status); crashing inputs are in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
