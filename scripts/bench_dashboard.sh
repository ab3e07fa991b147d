#!/usr/bin/env bash
# The dashboard's overview render time with many instances stored: runs the API bench
# (benches/api.rs; CAIRN_BENCH_INSTANCES=n sets the count, 1,000,000 by default), keeps
# its host serving, and times the overview page in headless Chromium
# (tests/browser/render_time.py). Needs what scripts/api_checks.sh installs (Chromium,
# chromedriver, target/pyenv with selenium): run that once first.
set -euo pipefail
cd "$(dirname "$0")/.."
py="$PWD/target/pyenv/bin/python"
[ -x "$py" ] || { echo "run scripts/api_checks.sh once first (it installs Chromium and selenium)" >&2; exit 2; }
work=$(mktemp -d)
mkfifo "$work/stdin"
CAIRN_BENCH_SERVE=1 cargo bench --locked --bench api <"$work/stdin" | tee "$work/bench.log" &
bench=$!
exec 3>"$work/stdin"
trap 'exec 3>&-; wait $bench 2>/dev/null || true; rm -rf "$work"' EXIT
until grep -q "^serving " "$work/bench.log" 2>/dev/null; do
  kill -0 $bench 2>/dev/null || { echo "the bench stopped before serving" >&2; exit 1; }
  sleep 1
done
read -r _ base token < <(grep "^serving " "$work/bench.log")
"$py" tests/browser/render_time.py "$base" "$token" 5
