# Shared by scripts/distill-20ng.sh, scripts/backbone-20ng.sh, scripts/warm-start-20ng.sh
# and scripts/depth-20ng.sh (sourced, not run): the 20 Newsgroups grid cells' settings, a
# resumable `train`, and `save_runs`. The caller sets RUNS (run directories) and RESULTS
# (where finished runs' small files are kept in git).
M=${COREFOCUS_TEST_MODEL:-target/models/all-MiniLM-L6-v2}
DATA=${COREFOCUS_DATA:-../shared/data}/20newsgroups
common=(--model "$M" --data "$DATA" --epochs 2 --batch-size 16 --max-len 256 --seed 1)

# train OUT ARGS...: skips a finished run (test_report.json present), resumes a started one.
train() {
  local out=$1
  shift
  if [ -f "$out/test_report.json" ]; then
    echo "$out: finished"
    return
  fi
  local resume=()
  [ -f "$out/resume/state.json" ] && resume=(--resume)
  echo "== $out ($(date -u +%H:%M:%S))"
  ./target/release/corefocus train "${common[@]}" "${resume[@]}" --out "$out" "$@"
}

# save_runs: copies each finished run's small files into $RESULTS/<run>/ (temp file + rename).
save_runs() {
  local d f
  for d in "$RUNS"/*/; do
    [ -f "$d/test_report.json" ] || continue
    mkdir -p "$RESULTS/$(basename "$d")"
    for f in corefocus.json metrics.jsonl test_report.json lr_search.json; do
      [ -f "$d/$f" ] || continue
      cp "$d/$f" "$RESULTS/$(basename "$d")/$f.tmp" && mv -f "$RESULTS/$(basename "$d")/$f.tmp" "$RESULTS/$(basename "$d")/$f"
    done
  done
}
