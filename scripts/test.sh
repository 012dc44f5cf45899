#!/usr/bin/env bash
# The whole test suite: fetches the test checkpoint (cached), then runs every unit and
# integration test in release mode (the numeric tests need optimised code).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-model.sh
cargo test --release --locked "$@"
