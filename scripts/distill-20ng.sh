#!/usr/bin/env bash
# Issue 15, 20 Newsgroups: C@5 and PFC@5 distilled from a BERT teacher, at the settings of
# the `recipe` grid's 20 Newsgroups cells (MiniLM-L6, seed 1, 2 epochs, batch 16, max length
# 256, the combining recipe). The teacher is the grid's BERT cell trained again with its
# checkpoint kept (the grid drops checkpoints), at the rate its validation search chose there
# (results/experiments/recipe/20newsgroups/bert-seed1/lr_search.json: 2e-4); each student
# chooses its own rate on validation, as the grid's cells did, from the grid's two highest
# candidates (in the grid's searches 2e-5 and 5e-5 lost to both by 0.4-1.5 in validation
# loss for every variant, and each of the two trials costs 1/8 of the run).
# The teacher's logits on the training split are computed once by `train --distill-from`.
# Loss (1 - w) CE + w T^2 KL, w 0.5, T 2 (train's defaults).
#
# Usage: scripts/distill-20ng.sh [teacher|c|pfc|c-m16|pfc-m16|c-drop0|pfc-drop0|save]...
#   (default: teacher c pfc save)
#   c-m16, pfc-m16: the students with 16 combination tokens (--combine-tokens 16).
#   c-drop0, pfc-drop0: the students without dropout after the combiner (--combine-dropout 0).
#   Resumable: each run continues from its last saved state (`train --resume`) and a finished
#   run (test_report.json present) is skipped. `c` and `pfc` need the finished teacher; run
#   them side by side as two one-thread processes (RAYON_NUM_THREADS=1) after it.
#   save copies each finished run's small files (corefocus.json, metrics.jsonl,
#   test_report.json, lr_search.json) into $RESULTS (default
#   results/experiments/recipe-distill/20newsgroups/).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/distill/20newsgroups
RESULTS=${RESULTS:-results/experiments/recipe-distill/20newsgroups}
TEACHER=$RUNS/bert-seed1
. scripts/runs-20ng.sh
for step in ${*:-teacher c pfc save}; do
  case $step in
    teacher) train "$TEACHER" --variant bert --lr 2e-4 ;;
    c | pfc | c-m16 | pfc-m16 | c-drop0 | pfc-drop0)
      [ -f "$TEACHER/test_report.json" ] || { echo "the teacher $TEACHER is not finished: run '$0 teacher' first" >&2; exit 1; }
      variant=${step%-*}
      extra=()
      case $step in
        *-m16) extra=(--combine-tokens 16) ;;
        *-drop0) extra=(--combine-dropout 0) ;;
      esac
      train "$RUNS/$variant-l5${step#"$variant"}-seed1" --variant "$variant" --combine-layer 5 "${extra[@]}" \
        --distill-from "$TEACHER" --lr auto --lr-grid 1e-4,2e-4 ;;
    save) save_runs ;;
    *) echo "unknown step $step (teacher, c, pfc, c-m16, pfc-m16, c-drop0, pfc-drop0, save)" >&2; exit 2 ;;
  esac
done
