#!/usr/bin/env bash
# The one test command (README): runs on a brand-new machine with only rustup's toolchain.
# 1. the whole workspace suite (unit, integration, crash, doc and compile-fail tests);
# 2. the loom models of the hand-written synchronisation, in their own target dir
#    because `--cfg cairn_loom` changes how the runtime crate compiles.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== workspace tests =="
cargo test --workspace --locked

echo "== loom models (cfg cairn_loom) =="
RUSTFLAGS="--cfg cairn_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p cairn-runtime --lib --locked --release -- loom_tests
