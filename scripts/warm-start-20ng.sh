#!/usr/bin/env bash
# Issue 15, 20 Newsgroups: does C@5 close its gap when the layers before the combiner start
# from a BERT already fine-tuned on the task? BERT is trained for one epoch (the grid
# cells' settings: MiniLM-L6, seed 1, batch 16, max length 256, the recipe, lr 2e-4, the
# rate every 20 Newsgroups cell chose on validation), then C@5 (or PFC@5) is built from that
# checkpoint (`--model` takes a corefocus checkpoint as its backbone; the classifier and the
# combiner's new tensors start afresh, the combiner's projections from the fine-tuned layer
# 5) and trained for one more epoch at the same rate. Two epochs in all, as the grid's cells;
# each stage has its own warm-up and decay.
#
# Usage: scripts/warm-start-20ng.sh [bert|c|pfc|save]...   (default: bert c save)
#   Resumable per run (`train --resume`); a finished run (test_report.json) is skipped.
#   save copies each finished run's small files into $RESULTS (default
#   results/experiments/warm-start/20newsgroups/).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/warm-start/20newsgroups
RESULTS=${RESULTS:-results/experiments/warm-start/20newsgroups}
FIRST=$RUNS/bert-1ep-seed1
. scripts/runs-20ng.sh
# (runs-20ng.sh's settings at one epoch each, the model given per stage)
common=(--data "$DATA" --epochs 1 --batch-size 16 --max-len 256 --seed 1 --lr 2e-4)
for step in ${*:-bert c save}; do
  case $step in
    bert) train "$FIRST" --model "$M" --variant bert ;;
    c | pfc)
      [ -f "$FIRST/test_report.json" ] || { echo "$FIRST is not finished: run '$0 bert' first" >&2; exit 1; }
      train "$RUNS/$step-l5-warm-seed1" --model "$FIRST" --variant "$step" --combine-layer 5 ;;
    save) save_runs ;;
    *) echo "unknown step $step (bert, c, pfc, save)" >&2; exit 2 ;;
  esac
done
