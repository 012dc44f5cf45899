#!/usr/bin/env bash
# Issue 15, 20 Newsgroups: two probes of why C@5 trails BERT on MiniLM-L6 (docs/combining.md,
# "a likely reason"), at the settings of the `recipe` grid's 20 Newsgroups cells (seed 1,
# 2 epochs, batch 16, max length 256, train's recipe defaults):
#   bert-cls  BERT pooled through [CLS] and the pooler instead of the token mean, at the
#             rate its mean-pooled cell chose (2e-4): how much of BERT's lead comes from
#             MiniLM having been trained so that its token mean is a sentence embedding?
#   c6        C@6: the combining module in the last layer, so five full layers stay (C@5
#             keeps four; bert-base's c@11 keeps ten), its rate chosen on validation from
#             the grid's two highest candidates as the other 20 Newsgroups probes did.
# Usage: scripts/backbone-20ng.sh [bert-cls|c6|save]...  (default: bert-cls c6 save)
#   Resumable (`train --resume`); a finished run (test_report.json present) is skipped. Run
#   the two side by side as one-thread processes (RAYON_NUM_THREADS=1).
#   save copies each finished run's small files into
#   results/experiments/recipe-backbone/20newsgroups/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/backbone/20newsgroups
RESULTS=results/experiments/recipe-backbone/20newsgroups
. scripts/runs-20ng.sh
for step in ${*:-bert-cls c6 save}; do
  case $step in
    bert-cls) train "$RUNS/bert-cls-seed1" --variant bert --pooling cls --lr 2e-4 ;;
    c6) train "$RUNS/c-l6-seed1" --variant c --combine-layer 6 --lr auto --lr-grid 1e-4,2e-4 ;;
    save) save_runs ;;
    *) echo "unknown step $step (bert-cls, c6, save)" >&2; exit 2 ;;
  esac
done
