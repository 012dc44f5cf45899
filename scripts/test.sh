#!/usr/bin/env bash
# The whole test suite: checks formatting and lints (cargo fmt --check, clippy with
# warnings as errors), fetches the test checkpoint (cached), then runs every unit and
# integration test in release mode (the numeric tests need optimised code).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
scripts/fetch-test-model.sh
cargo test --release --locked "$@"
