#!/usr/bin/env bash
# The BBC News runs of docs/results.md: MiniLM-L6, max length 256, 2 epochs, paper recipe
# otherwise (lr 2e-5, batch 16, warm-up 10%, best checkpoint by validation loss).
# Usage: scripts/bbc-runs.sh [variant...]   (default: bert pf pfc); results under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-model.sh
cargo build --release --locked
M=${COREFOCUS_TEST_MODEL:-target/models/all-MiniLM-L6-v2}
DATA=${COREFOCUS_DATA:-../shared/data}/bbc-news
for v in "${@:-bert pf pfc}"; do
  for variant in $v; do
    out=runs/bbc-$variant
    if [ -f "$out/test_report.json" ]; then echo "$out done, skipping"; continue; fi
    start=$(date +%s)
    ./target/release/corefocus train --model "$M" --data "$DATA" --out "$out" \
      --variant "$variant" --max-len 256 --epochs 2 --seed 42 --overwrite
    echo "$variant: $(( $(date +%s) - start )) s" | tee -a runs/bbc-times.txt
  done
done
