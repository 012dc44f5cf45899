#!/usr/bin/env bash
# Batch scoring with Ray against one `corefocus predict` process, on this machine.
#
# 1. A virtual environment (target/ray-venv) with ray[data] from PyPI and the corefocus
#    Python package built from python/ (`pip install ./python`).
# 2. A checkpoint to score with: $CHECKPOINT, else a small pfc classifier trained once on
#    SST-2 (all-MiniLM-L6-v2, max_len 64, 1 epoch on 2000 examples) into target/ray-demo.
# 3. The corpus: the texts of $SPLIT (the first $LIMIT when set), one per line (what
#    `predict` reads).
# 4. One `corefocus predict` process over it (all cores), timed.
# 5. A local Ray cluster (`ray start --head`, $ACTORS x $THREADS_PER_ACTOR CPUs + 1), and
#    examples/ray_batch.py scoring the same texts with $ACTORS actors, timed; the cluster
#    is stopped at the end. The label counts of both runs are compared.
#
#   scripts/ray-demo.sh                       # defaults below
#   LIMIT=5000 ACTORS=4 THREADS_PER_ACTOR=2 scripts/ray-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
data_root="${COREFOCUS_DATA:-$root/../shared/data}"
SPLIT="${SPLIT:-$data_root/sst2/train.jsonl.gz}"
LIMIT="${LIMIT:-0}"
ACTORS="${ACTORS:-2}"
THREADS_PER_ACTOR="${THREADS_PER_ACTOR:-1}"
work="$root/target/ray-demo"
CHECKPOINT="${CHECKPOINT:-$work/sst2-pfc}"
venv="$root/target/ray-venv"
mkdir -p "$work"

echo "== environment"
if [ ! -x "$venv/bin/ray" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "ray[data]" numpy pandas maturin
fi
export CARGO_TARGET_DIR="$root/target" PYO3_PYTHON="$venv/bin/python" PATH="$venv/bin:$PATH"
pip install --quiet --no-build-isolation --force-reinstall --no-deps ./python
cargo build --release --locked --bin corefocus
cli="$root/target/release/corefocus"
echo "ray $(python -c 'import ray; print(ray.__version__)'), $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ ! -f "$CHECKPOINT/corefocus.json" ]; then
    echo "== training a small checkpoint into $CHECKPOINT"
    scripts/fetch-test-model.sh
    "$cli" train --model target/models/all-MiniLM-L6-v2 --data "$data_root/sst2" \
        --out "$CHECKPOINT" --variant pfc --max-len 64 --epochs 1 --lr 1e-4 \
        --max-train-examples 2000 --max-eval-examples 200 --overwrite
fi

echo "== corpus: $SPLIT (LIMIT=$LIMIT; 0: all)"
texts="$work/texts.txt"
python - "$SPLIT" "$LIMIT" "$texts" <<'EOF'
import gzip, json, sys
src, limit, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
opener = gzip.open if src.endswith(".gz") else open
n = 0
with opener(src, "rt", encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
    for line in f:
        if limit and n == limit:
            break
        out.write(" ".join(json.loads(line)["text"].split()) + "\n")
        n += 1
print(f"{n} texts -> {dst}")
EOF
n=$(wc -l < "$texts")

echo "== one corefocus predict process"
start=$(date +%s.%N)
"$cli" predict --checkpoint "$CHECKPOINT" "$texts" > "$work/cli-predictions.jsonl"
end=$(date +%s.%N)
python -c "import sys; n, s = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f'predict: {n} texts in {s:.2f} s: {n / s:.1f} texts/s (one process, all cores)')" \
    "$n" "$start" "$end"

echo "== Ray: local cluster, $ACTORS actors x $THREADS_PER_ACTOR threads"
export RAY_USAGE_STATS_ENABLED=0
# Ray starts its workers at nice 15 by default; `predict` ran at 0, so for a like-for-like
# comparison on a shared machine the actors run at 0 too.
export RAY_worker_niceness=0
ray stop --force >/dev/null 2>&1 || true
# One logical CPU more than the actors reserve, for Ray Data's read and write tasks (with
# none left over, the reads never get scheduled and the actors wait forever).
ray start --head --num-cpus "$((ACTORS * THREADS_PER_ACTOR + 1))" --include-dashboard=false \
    --disable-usage-stats >"$work/ray-start.log" 2>&1
trap 'ray stop --force >/dev/null 2>&1 || true' EXIT
rm -rf "$work/ray-out"
python examples/ray_batch.py --address auto --checkpoint "$CHECKPOINT" --input "$texts" \
    --output "$work/ray-out" --actors "$ACTORS" --threads-per-actor "$THREADS_PER_ACTOR"

echo "== same labels?"
python - "$work/cli-predictions.jsonl" "$work/ray-out" <<'EOF'
import collections, glob, json, os, sys
cli = collections.Counter(json.loads(l)["label"] for l in open(sys.argv[1]))
ray_counts = collections.Counter()
for path in glob.glob(os.path.join(sys.argv[2], "*.json*")):
    ray_counts.update(json.loads(l)["label"] for l in open(path))
print(f"predict {dict(cli)}, ray {dict(ray_counts)}: {'same' if cli == ray_counts else 'DIFFERENT'}")
sys.exit(0 if cli == ray_counts else 1)
EOF
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
