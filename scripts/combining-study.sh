#!/usr/bin/env bash
# The combining study of docs/combining.md (issue 15): short runs that compare the
# combining recipe's parts. Each run: corefocus train on all-MiniLM-L6-v2, one thread,
# into runs/combining/<name>/ (skipped when its test_report.json exists). Then
# scripts/combining-table.py prints the study's tables from those directories.
#
# Usage: scripts/combining-study.sh [name...]   (default: every run below, in order)
# Each finished run's small files (metrics.jsonl, test_report.json, lr_search.json,
# corefocus.json) are copied to results/combining/<name>/, which is committed.
#   sst2-2k: 2,000 SST-2 training sentences, --max-len 64, 2 epochs, full dev and test.
#   20ng-2k: 2,000 20 Newsgroups documents, --max-len 128, 2 epochs, 1,000 dev / test.
# Two runs side by side on 2 cores: JOBS=2 (each gets one thread).
# The pfc runs other than sst2-pfc ran before --prune-min-len existed, when every example
# was pruned: their flags say --prune-min-len 0, so that they repeat the same computation.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-model.sh >/dev/null
cargo build --release --locked
M=${COREFOCUS_TEST_MODEL:-target/models/all-MiniLM-L6-v2}
DATA=${COREFOCUS_DATA:-../shared/data}
OUT=runs/combining
mkdir -p "$OUT"
declare -A RUNS=(
  # name                      set     seed variant flags
  [sst2-bert]="sst2 42 bert"
  [sst2-pfc]="sst2 42 pfc"
  [sst2-pf]="sst2 42 pf"
  [sst2-pfc-minlen0]="sst2 42 pfc --prune-min-len 0"
  [sst2-bert-lr1e-4]="sst2 42 bert --lr 1e-4"
  [sst2-bert-lr1e-4-s43]="sst2 43 bert --lr 1e-4"
  [sst2-pfc-paper-lr1e-4]="sst2 42 pfc --lr 1e-4 --method-defaults paper --new-lr-scale 1 --prune-min-len 0"
  [sst2-pfc-papercounts]="sst2 42 pfc --lr 1e-4 --method-defaults paper --combine-pooling counts --new-lr-scale 1 --prune-min-len 0"
  [sst2-pfc-papercounts-s43]="sst2 43 pfc --lr 1e-4 --method-defaults paper --combine-pooling counts --new-lr-scale 1 --prune-min-len 0"
  [sst2-pfc-plain-auto]="sst2 42 pfc --combine-block plain --prune-min-len 0"
  [sst2-pfc-plain]="sst2 42 pfc --lr 1e-4 --combine-block plain --prune-min-len 0"
  [sst2-pfc-plain-scale1-newlr1]="sst2 42 pfc --lr 1e-4 --combine-block plain --combine-scale 1 --new-lr-scale 1 --prune-min-len 0"
  [sst2-pfc-plain-scale1]="sst2 42 pfc --lr 1e-4 --combine-block plain --combine-scale 1 --prune-min-len 0"
  [sst2-pfc-plain-newlr1]="sst2 42 pfc --lr 1e-4 --combine-block plain --new-lr-scale 1 --prune-min-len 0"
  [sst2-pfc-plain-normal]="sst2 42 pfc --lr 1e-4 --combine-block plain --combine-token-init normal --prune-min-len 0"
  [sst2-pfc-plain-mean]="sst2 42 pfc --lr 1e-4 --combine-block plain --combine-pooling mean --prune-min-len 0"
  [sst2-pfc-plain-nonoise]="sst2 42 pfc --lr 1e-4 --combine-block plain --combine-noise false --prune-min-len 0"
  [sst2-pfc-block]="sst2 42 pfc --lr 1e-4 --prune-min-len 0"
  [sst2-pfc-block-nonoise]="sst2 42 pfc --lr 1e-4 --combine-noise false --prune-min-len 0"
  [sst2-c-plain]="sst2 42 c --lr 1e-4 --combine-block plain"
  [sst2-c-block]="sst2 42 c --lr 1e-4"
  [sst2-pfc-distill]="sst2 42 pfc --lr 1e-4 --distill-from runs/combining/sst2-bert --prune-min-len 0"
  [20ng-bert]="20newsgroups 42 bert --lr 1e-4"
  [20ng-pfc-plain]="20newsgroups 42 pfc --lr 1e-4 --combine-block plain --prune-min-len 0"
  [20ng-pfc-distill]="20newsgroups 42 pfc --lr 1e-4 --distill-from runs/combining/20ng-bert --prune-min-len 0"
  # dropout of the combiner's block and the layers after it (issue 15, 6 Dec 2026)
  [20ng-c-lr2e-4-rerun]="20newsgroups 42 c --lr 2e-4"
  [20ng-c-drop0]="20newsgroups 42 c --lr 2e-4 --combine-dropout 0"
  [20ng-c-s43]="20newsgroups 43 c --lr 2e-4"
  [20ng-c-drop0-s43]="20newsgroups 43 c --lr 2e-4 --combine-dropout 0"
  # at the rate every full 20 Newsgroups cell chose (2e-4), and the group residual
  [20ng-bert-lr2e-4]="20newsgroups 42 bert --lr 2e-4"
  [20ng-c-lr2e-4]="20newsgroups 42 c --lr 2e-4"
  [20ng-c-group]="20newsgroups 42 c --lr 2e-4 --combine-residual group"
  [20ng-pfc-group]="20newsgroups 42 pfc --lr 2e-4 --combine-residual group"
  # more combination tokens for long documents
  [20ng-c-m16]="20newsgroups 42 c --lr 2e-4 --combine-tokens 16"
  [20ng-c-m32]="20newsgroups 42 c --lr 2e-4 --combine-tokens 32"
  # the soft assignment (HA = Sim, exact gradient) instead of the straight-through one
  [20ng-c-soft]="20newsgroups 42 c --lr 2e-4 --combine-assignment soft"
  # several assignment heads (the replaced layer's attention has 12 of 32 columns)
  [20ng-c-h12]="20newsgroups 42 c --lr 2e-4 --combine-heads 12"
  [20ng-c-h4]="20newsgroups 42 c --lr 2e-4 --combine-heads 4"
  # each combination token attends to all the tokens (softmax over j; 6 Dec 2026, session 19)
  [20ng-c-attend]="20newsgroups 42 c --lr 2e-4 --combine-assignment attend"
  [20ng-c-attend-s43]="20newsgroups 43 c --lr 2e-4 --combine-assignment attend"
  [20ng-c-attend-h12]="20newsgroups 42 c --lr 2e-4 --combine-assignment attend --combine-heads 12"
  # the embedded tokens do not attend to the combination tokens before the combiner (7 Dec 2026)
  [20ng-c-hidden]="20newsgroups 42 c --lr 2e-4 --combine-visible false"
  [20ng-c-hidden-s43]="20newsgroups 43 c --lr 2e-4 --combine-visible false"
)
ORDER=(sst2-bert sst2-pfc sst2-pf sst2-pfc-minlen0 sst2-bert-lr1e-4-s43 sst2-pfc-plain-auto sst2-pfc-plain-scale1
  sst2-pfc-plain-newlr1 sst2-pfc-plain-scale1-newlr1 sst2-pfc-plain-normal sst2-pfc-plain-mean sst2-pfc-plain-nonoise
  sst2-pfc-block sst2-pfc-block-nonoise sst2-c-plain sst2-c-block sst2-pfc-papercounts
  sst2-pfc-papercounts-s43 sst2-pfc-distill 20ng-bert 20ng-pfc-plain 20ng-pfc-distill
  20ng-bert-lr2e-4 20ng-c-lr2e-4 20ng-c-group 20ng-pfc-group 20ng-c-m16 20ng-c-m32 20ng-c-soft
  20ng-c-h12 20ng-c-h4 20ng-c-lr2e-4-rerun 20ng-c-drop0 20ng-c-s43 20ng-c-drop0-s43
  20ng-c-attend 20ng-c-attend-s43 20ng-c-attend-h12 20ng-c-hidden 20ng-c-hidden-s43)
one() {
  local name=$1
  [ -f "$OUT/$name/test_report.json" ] && return 0
  read -r set seed variant flags <<<"${RUNS[$name]}"
  local size="--max-len 64"
  [ "$set" = 20newsgroups ] && size="--max-len 128 --max-eval-examples 1000"
  echo "== $name ($(date -u +%H:%M:%S))"
  # shellcheck disable=SC2086
  RAYON_NUM_THREADS=1 target/release/corefocus train --model "$M" --data "$DATA/$set" \
    --out "$OUT/$name" --variant "$variant" --epochs 2 --seed "$seed" \
    --max-train-examples 2000 $size --overwrite $flags >"$OUT/$name.log" 2>&1
}
names=("${@:-${ORDER[@]}}")
if [ "${JOBS:-1}" -le 1 ]; then
  for n in "${names[@]}"; do one "$n"; done
else
  # Two lanes; a run needing a teacher waits for it in its own lane's order.
  for lane in 0 1; do
    (i=0; for n in "${names[@]}"; do
       [ $((i % 2)) -eq $lane ] && one "$n"; i=$((i + 1)); done) &
  done
  wait
fi
for d in "$OUT"/*/; do
  n=$(basename "$d")
  [ -f "$d/test_report.json" ] || continue
  mkdir -p "results/combining/$n"
  for f in metrics.jsonl test_report.json lr_search.json corefocus.json; do
    [ -f "$d/$f" ] && cp "$d/$f" "results/combining/$n/$f"
  done
done
python3 scripts/combining-table.py results/combining
