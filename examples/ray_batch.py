"""Batch scoring on a Ray cluster: Ray Data streams a corpus through `map_batches`, each
actor holding one corefocus Classifier (loaded once, reused for every batch it gets).

    python examples/ray_batch.py --checkpoint runs/sst2-pfc --input texts.txt \
        --output scored/ [--address auto] [--actors 2] [--threads-per-actor 1]

--input: a text file (one text per line, as `corefocus predict` reads) or JSON Lines with a
"text" field (.jsonl / .jsonl.gz). --output: a folder of JSON Lines files with each text's
label and its probability. Prints one line: texts, seconds, texts/s.

Each actor reserves --threads-per-actor CPUs and runs the engine with that many threads
(RAYON_NUM_THREADS), so the actors share the machine instead of oversubscribing it.
Nothing here is cluster code of its own: Ray schedules the actors and moves the batches.
"""

import argparse
import time

import numpy as np
import ray

import corefocus


class Scorer:
    """One per actor: the checkpoint loaded once; a batch of rows in, labels out."""

    def __init__(self, checkpoint: str, batch_size: int):
        self.classifier = corefocus.Classifier.load(checkpoint)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        labels, probs = self.classifier.predict(texts, batch_size=self.batch_size)
        return {
            "text": np.asarray(texts, dtype=object),
            "label": np.asarray(labels, dtype=object),
            "probability": probs.max(axis=1),
        }


def read_corpus(path: str) -> "ray.data.Dataset":
    if path.endswith((".jsonl", ".jsonl.gz", ".json")):
        return ray.data.read_json(path).select_columns(["text"])
    return ray.data.read_text(path)  # one row {"text": line} per line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--address", default=None, help="Ray cluster address (auto: a running local cluster)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--threads-per-actor", type=int, default=1)
    ap.add_argument("--rows-per-batch", type=int, default=256, help="rows per map_batches call")
    ap.add_argument("--eval-batch", type=int, default=64, help="corefocus batch size (the CLI's --eval-batch)")
    args = ap.parse_args()

    threads = str(args.threads_per_actor)
    ray.init(
        address=args.address,
        runtime_env={"env_vars": {"RAYON_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}},
        log_to_driver=False,
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False

    start = time.perf_counter()
    scored = read_corpus(args.input).map_batches(
        Scorer,
        fn_constructor_args=(args.checkpoint, args.eval_batch),
        batch_size=args.rows_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_cpus=args.threads_per_actor,
    )
    scored.write_json(args.output)
    seconds = time.perf_counter() - start
    n = ray.data.read_json(args.output).count()
    print(
        f"ray: {n} texts in {seconds:.2f} s: {n / seconds:.1f} texts/s "
        f"({args.actors} actors x {args.threads_per_actor} threads)"
    )


if __name__ == "__main__":
    main()
