#!/usr/bin/env bash
# A/B of the durability bench: an older commit against the working tree, in the same
# minutes, alternating, so that a slow patch of the machine hits both sides.
#
#   scripts/ab.sh BASE [PAIRS] [SECTION]
#
# BASE     a commit (f6427f7 is the code before issue 8's restructure)
# PAIRS    alternating runs of each side (default 6)
# SECTION  throughput (default) or latency: the bench's CAIRN_BENCH_ONLY; throughput
#          reports 1, 100 and 1,000 concurrent instances, each with its own median
#
# The base is checked out in a worktree under target/ab/ with a target directory of its
# own, and both benches are built before the first run. Each run works in a fresh
# directory under $TMPDIR (it must be on the disk being measured, not a tmpfs). Prints
# every run's line, then each side's median. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

base=${1:?usage: scripts/ab.sh BASE [PAIRS] [SECTION]}
pairs=${2:-6}
section=${3:-throughput}
case "$section" in
  throughput) pattern=" concurrent instances" ;;
  latency) pattern="^latency" ;;
  *) echo "SECTION is throughput or latency, not $section" >&2; exit 2 ;;
esac

rev=$(git rev-parse --short "$base^{commit}")
tree="$PWD/target/ab/$rev"
if [ ! -d "$tree" ]; then
  git worktree add --detach "$tree" "$rev" >/dev/null
fi

# The path of the bench executable cargo builds (the line it prints last).
bench_binary() {
  local dir=$1 target=$2
  (cd "$dir" && CARGO_TARGET_DIR="$target" cargo bench --bench durability --no-run 2>&1) |
    sed -n 's/^ *Executable benches\/durability.rs (\(.*\))$/\1/p' | tail -1
}

echo "building $rev (in $tree) and the working tree"
old=$(bench_binary "$tree" "$PWD/target/ab/$rev-target")
new=$(bench_binary "$PWD" "$PWD/target")
case "$new" in /*) ;; *) new="$PWD/$new" ;; esac
[ -x "$old" ] && [ -x "$new" ] || { echo "a bench did not build" >&2; exit 1; }

# The figure of a line: steps/s for throughput, the p50 in us for latency.
figure() {
  if [ "$section" = throughput ]; then
    sed -n 's/.*steps: *\([0-9]*\) durable.*/\1/p'
  else
    sed -n 's/.*p50 \([0-9]*\) us.*/\1/p'
  fi
}

# What a line measures: the number of concurrent instances, or `-` for latency.
size() {
  if [ "$section" = throughput ]; then
    sed -n 's/^throughput *\([0-9]*\) concurrent.*/\1/p'
  else
    echo -
  fi
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for i in $(seq 1 "$pairs"); do
  for side in base new; do
    binary=$old
    [ "$side" = new ] && binary=$new
    work=$(mktemp -d)
    lines=$(cd "$work" && CAIRN_BENCH_ONLY=$section "$binary" --bench | grep -E "$pattern")
    rm -rf "$work"
    while IFS= read -r line; do
      echo "$side $i: $line"
      echo "$side $(echo "$line" | size) $(echo "$line" | figure)" >>"$results"
    done <<<"$lines"
  done
done

median() {
  sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
unit=$([ "$section" = throughput ] && echo "steps/s" || echo "us (3-step p50)")
for size in $(awk '{ print $2 }' "$results" | sort -nu); do
  b=$(awk -v s="$size" '$1 == "base" && $2 == s { print $3 }' "$results" | median)
  n=$(awk -v s="$size" '$1 == "new" && $2 == s { print $3 }' "$results" | median)
  label=$([ "$size" = - ] && echo "" || echo "$size instances: ")
  echo "${label}median $rev: $b $unit; working tree: $n $unit; change $(awk -v b="$b" -v n="$n" 'BEGIN { printf "%+.1f%%", (n - b) * 100 / b }')"
done
