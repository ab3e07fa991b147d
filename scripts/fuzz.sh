#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each), one after the other, one
# libFuzzer worker each. Needs the nightly toolchain and cargo-fuzz (fuzz/README.md).
#
#   scripts/fuzz.sh [seconds] [target...]
#
# Starts from the committed corpus (fuzz/corpus/<target>/) and the regressions, writes new
# inputs to fuzz/found/<target>/ (not committed; fold them in as fuzz/README.md says) and
# crashes to fuzz/artifacts/<target>/. Prints libFuzzer's final stats for each target and
# exits non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(event_decode history_replay)
fi

failed=()
summary=()
for target in "${targets[@]}"; do
  mkdir -p "found/$target" "regressions/$target"
  log="found/$target.log"
  echo "== $target: ${seconds} s =="
  status=0
  # libFuzzer adds new inputs to the first directory only; the others are read.
  cargo +nightly fuzz run "$target" "found/$target" "corpus/$target" "regressions/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(Done|stat::)' "$log" || true
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  summary+=("$target: ${runs:-?} execs, ${rate:-?} exec/s, ${seconds} s, status $status")
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    echo "$target FAILED (exit $status); see fuzz/$log and fuzz/artifacts/$target/" >&2
  fi
done

echo "== summary =="
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "crashed: ${failed[*]}" >&2
  exit 1
fi
