#!/usr/bin/env bash
# The one test command (README): runs on a brand-new machine with only rustup's toolchain.
# 0. the PostgreSQL server binaries, installed from Debian packages when missing: the
#    PostgreSQL store's tests start a throwaway cluster of their own on 127.0.0.1, in a
#    temporary directory, and stop it (cairn-testkit's `postgres` module);
# 1. the whole workspace suite (unit, integration, crash, doc and compile-fail tests);
# 2. the same again in always-replay mode (every step reached by replay);
# 3. the loom models of the hand-written synchronisation, in their own target dir
#    because `--cfg cairn_loom` changes how the runtime and redb crates compile;
# 4. the OpenTelemetry export (feature `otel`): its test, doc test and lints;
# 5. the HTTP API and the dashboard from outside (scripts/api_checks.sh): the dashboard
#    in headless Chromium and a schema-based fuzzer against the OpenAPI document
#    (installs Chromium from Debian packages and the Python tools when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

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

echo "== workspace tests again, every run rebuilt from the log after each step =="
# Always-replay mode (EngineBuilder::always_replay): results and histories must not
# depend on runs being kept in memory. Doc tests are the same code paths as the first pass.
CAIRN_ALWAYS_REPLAY=1 cargo test --workspace --locked --tests

echo "== loom models (cfg cairn_loom) =="
RUSTFLAGS="--cfg cairn_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p cairn-runtime -p cairn-redb --lib --locked --release -- loom_tests

echo "== OpenTelemetry export (feature otel) =="
cargo test -p cairn --features otel --locked --test otel
cargo test -p cairn --features otel --locked --doc telemetry
cargo clippy -p cairn --features otel --all-targets --locked -- -D warnings

echo "== the dashboard in a real browser, the API fuzzed against its document =="
bash scripts/api_checks.sh
