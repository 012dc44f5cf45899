#!/usr/bin/env python3
"""Prints the combining study's table (docs/combining.md) from the run directories that
scripts/combining-study.sh wrote: per run, the test accuracy and macro-F1 of the kept
checkpoint, its validation accuracy, epoch and validation loss, the learning rate (chosen by --lr auto where it
ran), and the combining diagnostics of metrics.jsonl averaged over the run's windows
(combination tokens that received tokens, the largest group's share, the tokens' norm,
pairwise cosine and gradient norm).

With `--over-training GRID_DIR` (e.g. results/experiments/recipe) it prints instead, for
each trained combining cell of an `experiment` grid, the diagnostics at the first and the
last window of its training: how they move over the run."""
import json
import os
import sys


def load(run_dir):
    with open(os.path.join(run_dir, "test_report.json")) as f:
        test = json.load(f)
    records = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    best = min(records, key=lambda r: r["val_loss"])
    with open(os.path.join(run_dir, "corefocus.json")) as f:
        meta = json.load(f)
    lr = meta["train"]["lr"]
    search = os.path.join(run_dir, "lr_search.json")
    if os.path.exists(search):
        with open(search) as f:
            lr = "auto: %g" % json.load(f)["chosen"]
    stats = [p["combine"] for r in records for p in r.get("loss_curve", []) if p.get("combine")]
    mean = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]} if stats else None
    return test, best, lr, mean


def over_training(grid):
    print("| dataset | cell | slots used of m (first -> last window) | largest share | token norm | token cosine | token grad norm (mean) |")
    print("|---|---|---|---|---|---|---:|")
    for dataset in sorted(os.listdir(grid)):
        ddir = os.path.join(grid, dataset)
        if not os.path.isdir(ddir):
            continue
        for cell in sorted(os.listdir(ddir)):
            cdir = os.path.join(ddir, cell)
            try:
                with open(os.path.join(cdir, "result.json")) as f:
                    if json.load(f).get("reused_from"):
                        continue  # a copy of another cell's run
                with open(os.path.join(cdir, "metrics.jsonl")) as f:
                    records = [json.loads(line) for line in f if line.strip()]
            except (OSError, ValueError) as e:
                if os.path.exists(os.path.join(cdir, "result.json")):
                    sys.exit("%s: unreadable cell (%s)" % (cdir, e))
                continue
            stats = [p["combine"] for r in records for p in r.get("loss_curve", []) if p.get("combine")]
            if not stats:
                continue
            a, b = stats[0], stats[-1]
            moved = lambda k, fmt: (fmt + " -> " + fmt) % (a[k], b[k])
            grad = sum(s["token_grad_norm"] for s in stats) / len(stats)
            print("| %s | %s | %s | %s | %s | %s | %.3f |" % (
                dataset, cell, moved("used_slots", "%.2f"), moved("largest_share", "%.2f"),
                moved("token_norm", "%.4f"), moved("token_cosine", "%.4f"), grad))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--over-training":
        return over_training(sys.argv[2])
    root = sys.argv[1] if len(sys.argv) > 1 else "results/combining"
    names = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "test_report.json")))
    print("| run | lr | val acc | test acc | macro-F1 | best epoch (val loss) | slots used of m | largest share | token cosine | token grad norm |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for name in names:
        try:
            test, best, lr, st = load(os.path.join(root, name))
        except (OSError, ValueError, KeyError) as e:
            sys.exit("%s: unreadable run (%s)" % (os.path.join(root, name), e))
        cells = ["%.2f" % (100 * best["val_accuracy"]), "%.2f" % (100 * test["accuracy"]), "%.2f" % (100 * test["macro_f1"]),
                 "%d (%.4f)" % (best["epoch"], best["val_loss"])]
        if st:
            cells += ["%.2f" % st["used_slots"], "%.2f" % st["largest_share"],
                      "%.3f" % st["token_cosine"], "%.3f" % st["token_grad_norm"]]
        else:
            cells += ["-"] * 4
        print("| %s | %s | %s |" % (name, lr, " | ".join(cells)))


if __name__ == "__main__":
    main()
