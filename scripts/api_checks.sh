#!/usr/bin/env bash
# The HTTP API and the dashboard from the outside, against the demo host
# (examples/demo_host.rs) on 127.0.0.1:
# 1. the dashboard end to end in real headless Chromium (tests/browser/dashboard.py);
#    screenshots of each page go to target/dashboard-screenshots; then the same on
#    PostgreSQL (screenshots in target/dashboard-screenshots/postgres);
# 2. the BPMN exported by the process map, parsed as BPMN modelling tools parse it
#    (tests/bpmn/check.mjs with bpmn-moddle from npm, into target/npm);
# 3. a schema-based fuzzer (schemathesis) against the served OpenAPI document, a bounded
#    number of cases: no 5xx, only documented statuses, bodies as documented.
# Installs what it needs when missing: Chromium and its driver from Debian packages,
# selenium and schemathesis from PyPI into target/pyenv, bpmn-moddle from npm.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing chromium and chromium-driver (Debian packages)"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver
fi

py="$PWD/target/pyenv"
if [ ! -x "$py/bin/python" ]; then
  python3 -m venv "$py" || {
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3-venv
    python3 -m venv "$py"
  }
fi
"$py/bin/pip" install -q --disable-pip-version-check "selenium>=4.20,<5" "schemathesis>=4.3,<5"

cargo build --locked --example demo_host
host=target/debug/examples/demo_host

echo "-- the dashboard in headless Chromium"
rm -rf target/dashboard-screenshots
"$py/bin/python" tests/browser/dashboard.py "$host" target/dashboard-screenshots

echo "-- the dashboard again, on PostgreSQL (the demo host on a throwaway cluster)"
# The same walk through with the demo host on an empty database of a throwaway cluster
# (127.0.0.1 only, stopped when its stdin closes): the dashboard must work the same on
# a shared store (saved views, for one, are kept in the database there).
cargo build --locked -q -p cairn-testkit --bin throwaway-postgres
coproc PG { ./target/debug/throwaway-postgres; }
pg_in=${PG[1]}
read -r pg_server <&"${PG[0]}"
CAIRN_DEMO_DB="$pg_server/postgres" "$py/bin/python" tests/browser/dashboard.py "$host" \
  target/dashboard-screenshots/postgres
exec {pg_in}>&-
wait "$PG_PID" 2>/dev/null || true

echo "-- the mined BPMN opened as modelling tools open it (bpmn-moddle, the model layer of bpmn-js)"
if [ ! -d target/npm/node_modules/bpmn-moddle ]; then
  if ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q nodejs npm
  fi
  mkdir -p target/npm
  (cd target/npm && npm install --no-audit --no-fund --silent --prefix . bpmn-moddle@9.0.4)
fi
NODE_PATH="$PWD/target/npm/node_modules" node tests/bpmn/check.mjs target/dashboard-screenshots/*.bpmn

echo "-- the API fuzzed against its OpenAPI document"
work=$(mktemp -d)
"$host" --db "$work/fuzz.redb" --port 0 --tokens-out "$work/tokens.json" >"$work/host.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  grep -q "Dashboard: " "$work/host.log" 2>/dev/null && break
  sleep 0.1
done
base=$(sed -n 's|^Dashboard: \(http://127.0.0.1:[0-9]*\)/$|\1|p' "$work/host.log")
token=$("$py/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" "$work/tokens.json")
# positive_data_acceptance is left out: a signal's, update's or start's body is typed per
# name (checked against the declared Rust type), which one schema per route cannot say.
# From the temporary directory: schemathesis keeps a cache where it runs.
(cd "$work" && "$py/bin/st" run "$base/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --exclude-path /api/v1/stream \
  --max-examples 25 --seed 7 \
  --report-json-path "$work/report.json" >"$work/st.log" 2>&1) || {
    cat "$work/st.log"
    exit 1
  }
"$py/bin/python" - "$work/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
cases = report.get("test_cases", {})
print(f"schemathesis: {json.dumps(cases)}; failures: {len(report.get('failures', []))}")
if report.get("failures"):
    sys.exit(1)
PY
