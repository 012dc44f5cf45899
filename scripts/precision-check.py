#!/usr/bin/env python3
"""What `--precision bf16` (or int8) changes for a fine-tuned checkpoint: test accuracy at
f32 and at that precision (`corefocus eval --precision`), and over the test texts how many
predicted labels differ and the largest change of a class probability (`corefocus predict
--precision`).

    scripts/precision-check.py CHECKPOINT DATASET_DIR [--precision bf16|int8] [--binary target/release/corefocus]

Needs a CPU with Intel AMX or AVX512-BF16 for bf16, AVX512-VNNI for int8 (corefocus says so
otherwise). Prints one Markdown row."""
import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("--binary", default="target/release/corefocus")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "int8"])
    args = ap.parse_args()
    test = Path(args.data) / "test.jsonl.gz"
    texts = [json.loads(line)["text"] for line in gzip.open(test, "rt") if line.strip()]
    accuracy, probs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "texts.txt"
        # predict reads one text per line.
        inputs.write_text("".join(" ".join(t.split()) + "\n" for t in texts))
        for precision in ("f32", args.precision):
            report = Path(tmp) / f"eval-{precision}.json"
            run = [args.binary, "eval", "--checkpoint", args.checkpoint, "--data", args.data]
            subprocess.run(run + ["--precision", precision, "--out", str(report)], check=True,
                           stdout=subprocess.DEVNULL)
            accuracy[precision] = json.loads(report.read_text())["accuracy"]
            out = subprocess.run(
                [args.binary, "predict", "--checkpoint", args.checkpoint, "--precision", precision,
                 str(inputs)], check=True, capture_output=True, text=True).stdout
            probs[precision] = [json.loads(line) for line in out.splitlines()]
    low = args.precision
    pairs = list(zip(probs["f32"], probs[low]))
    if len(pairs) != len(texts):
        sys.exit(f"predict gave {len(probs['f32'])} / {len(probs[low])} lines for {len(texts)} texts")
    flipped = sum(a["label"] != b["label"] for a, b in pairs)
    max_change = max(abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in pairs for k in a["probabilities"])
    print(f"| checkpoint | test texts | accuracy f32 | accuracy {low} | difference (points) | labels changed | largest probability change |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.checkpoint} | {len(texts)} | {100 * accuracy['f32']:.2f} | {100 * accuracy[low]:.2f} | "
          f"{100 * (accuracy[low] - accuracy['f32']):+.2f} | {flipped} | {max_change:.4f} |")


if __name__ == "__main__":
    main()
