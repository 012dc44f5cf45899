#!/usr/bin/env bash
# Runs the property tests of tests/fuzz.rs (dataset readers, tokenizer input path,
# checkpoint loaders) with many more cases than the test suite does, for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [CASES]     defaults: 600 s, PROPTEST_CASES=20000
#
# Exits non-zero on a finding (proptest prints the minimal failing input) and 124 when the
# time ran out first. Record runs and findings in docs/errors.md ("Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
cases="${2:-${PROPTEST_CASES:-20000}}"
cargo build --release --locked --test fuzz
start=$(date +%s)
status=0
PROPTEST_CASES="$cases" timeout "$seconds" cargo test --release --locked --test fuzz -- --test-threads 2 || status=$?
echo "fuzz: PROPTEST_CASES=$cases, $(( $(date +%s) - start )) s, exit status $status"
exit "$status"
