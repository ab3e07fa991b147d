#!/usr/bin/env bash
# The one test command (README): runs on a brand-new machine with only rustup's toolchain.
# 0. the PostgreSQL server binaries, installed from Debian packages when missing: the
#    PostgreSQL store's tests start a throwaway cluster of their own on 127.0.0.1, in a
#    temporary directory, and stop it (cairn-testkit's `postgres` module);
# 1. the whole workspace suite (unit, integration, crash, doc and compile-fail tests),
#    and the API docs, whose links must all resolve;
# 2. the same again in always-replay mode (every step reached by replay), then the
#    engine's integration suite on PostgreSQL (one throwaway server for the pass);
# 3. the loom models of the hand-written synchronisation, in their own target dir
#    because `--cfg cairn_loom` changes how the runtime and redb crates compile;
# 4. the OpenTelemetry export (feature `otel`): its test, doc test and lints;
# 5. the HTTP API and the dashboard from outside (scripts/api_checks.sh): the dashboard
#    in headless Chromium and a schema-based fuzzer against the OpenAPI document
#    (installs Chromium from Debian packages and the Python tools when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean build gains nothing from incremental state, and it is the largest part of the
# target directory (about 3 GiB of this suite's 12): a CI disk once filled up with it.
: "${CARGO_INCREMENTAL:=0}"
export CARGO_INCREMENTAL

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "== installing PostgreSQL (Debian packages) =="
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql
  # The package may start a cluster of its own; the tests never use it.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h | while read -r version name _; do
      $sudo pg_ctlcluster "$version" "$name" stop || true
    done
  fi
fi

echo "== workspace tests =="
cargo test --workspace --locked

echo "== API docs (every link resolves) =="
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

echo "== workspace tests again, every run rebuilt from the log after each step =="
# Always-replay mode (EngineBuilder::always_replay): results and histories must not
# depend on runs being kept in memory. Doc tests are the same code paths as the first pass.
CAIRN_ALWAYS_REPLAY=1 cargo test --workspace --locked --tests

echo "== the engine's integration suite again, on PostgreSQL =="
# The store-agnostic SDK suites with CAIRN_TEST_STORE naming a throwaway server (one
# cluster for the whole pass, 127.0.0.1 only, stopped when its stdin closes): each test's
# store is a database named after the path it would have opened (sdk/tests/common).
# The suites about redb files themselves (corruption, power loss, offline replay of
# files, the replay gate on files) run on redb only.
PG_SUITES=(activity_state actors always_replay business_time cancellation composition
  continue_as_new decisions documents dropped_callers durable_steps eviction held_results human_tasks
  messages metrics nondeterminism_mutants notifications one_clock parked_durably raced_steps recovery_errors
  join_shapes replay_order
  sagas schedules search_attributes typed_signals versioning_and_termination waiting
  waiting_on_messages)
cargo build -q -p cairn-testkit --bin throwaway-postgres --locked
coproc PG { ./target/debug/throwaway-postgres; }
pg_in=${PG[1]}
trap 'exec {pg_in}>&- 2>/dev/null || true' EXIT
read -r pg_server <&"${PG[0]}"
# Through the workspace, whose build already has `cairn` with `postgres` (the root crate
# enables it): the first pass's test binaries are run again, not rebuilt.
CAIRN_TEST_STORE="$pg_server" cargo test --workspace --locked \
  $(printf -- '--test %s ' "${PG_SUITES[@]}")
exec {pg_in}>&-
wait "$PG_PID" 2>/dev/null || true
trap - EXIT

echo "== loom models (cfg cairn_loom) =="
RUSTFLAGS="--cfg cairn_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p cairn-runtime -p cairn-redb --lib --locked --release -- loom_tests

echo "== OpenTelemetry export (feature otel) =="
cargo test -p cairn --features otel --locked --test otel
cargo test -p cairn --features otel --locked --doc telemetry
cargo clippy -p cairn --features otel --all-targets --locked -- -D warnings

echo "== the dashboard in a real browser, the API fuzzed against its document =="
bash scripts/api_checks.sh
