#!/usr/bin/env bash
# corefocus against the engines its users would otherwise pick, in one Python process,
# interleaved rounds (scripts/bench-peers.py; protocol in docs/results.md, "Issue 17"):
# PyTorch + HF transformers (eager, sdpa) for training steps and forward passes, ONNX
# Runtime on the same checkpoint exported to ONNX and optimised with its BERT fusions
# (fused Attention, SkipLayerNorm, BiasGelu) for forward passes.
#
# Usage: scripts/bench-peers.sh [bench-peers.py options]   e.g. --shapes 1x128,8x512 --reps 10
# Sets up target/peers-venv once (torch, transformers, onnx, onnxscript, onnxruntime,
# maturin from PyPI; a few GB) and installs the Python package built from this checkout
# into it, then runs the benchmark with RAYON_NUM_THREADS / --threads threads (default 2).
# Run it on a quiet machine: every engine shares the same cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
scripts/fetch-test-model.sh
venv="$root/target/peers-venv"
if [ ! -x "$venv/bin/maturin" ] || ! "$venv/bin/python" -c "import torch, onnxruntime, transformers, onnx, onnxscript" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch transformers onnx onnxscript onnxruntime maturin numpy psutil
fi
export CARGO_TARGET_DIR="$root/target" PYO3_PYTHON="$venv/bin/python" PATH="$venv/bin:$PATH"
"$venv/bin/pip" install --quiet --no-build-isolation --force-reinstall --no-deps ./python
exec "$venv/bin/python" scripts/bench-peers.py --model "${COREFOCUS_TEST_MODEL:-target/models/all-MiniLM-L6-v2}" "$@"
