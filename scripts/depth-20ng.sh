#!/usr/bin/env bash
# Issue 15, 20 Newsgroups: is C@5's gap the depth it gives up? C@5 on MiniLM-L6 runs four
# full layers, then the combiner (in layer 5's place) and layer 6 over 8 tokens. This trains
# BERT cut to its first 4 and first 5 layers (scripts/truncate-checkpoint.py) at the
# settings of the `recipe` grid's 20 Newsgroups cells (seed 1, 2 epochs, batch 16, max
# length 256, train's recipe defaults) and the rate every 20 Newsgroups cell chose (2e-4).
# If BERT-4 ends near C@5 (82.14), the combiner and the layer after it add little to the
# first four layers; if near BERT (83.99), depth is not what C@5 lacks.
# Usage: [SEED=N] scripts/depth-20ng.sh [bert4|bert5|save]...  (default: bert4 bert5 save)
#   SEED (default 1) is train's --seed, as the grid's cells of that seed (all chose 2e-4).
#   Resumable (`train --resume`); a finished run (test_report.json present) is skipped. Run
#   the two side by side as one-thread processes (RAYON_NUM_THREADS=1).
#   save copies each finished run's small files into
#   results/experiments/recipe-depth/20newsgroups/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/depth/20newsgroups
RESULTS=results/experiments/recipe-depth/20newsgroups
. scripts/runs-20ng.sh
# (the model is given per run)
SEED=${SEED:-1}
common=(--data "$DATA" --epochs 2 --batch-size 16 --max-len 256 --seed "$SEED")
for step in ${*:-bert4 bert5 save}; do
  case $step in
    bert4 | bert5)
      layers=${step#bert}
      cut=runs/depth/minilm-l$layers
      [ -f "$cut/model.safetensors" ] || python3 scripts/truncate-checkpoint.py "$M" "$cut" "$layers"
      train "$RUNS/bert-$layers-layers-seed$SEED" --model "$cut" --variant bert --lr 2e-4 ;;
    save) save_runs ;;
    *) echo "unknown step $step (bert4, bert5, save)" >&2; exit 2 ;;
  esac
done
