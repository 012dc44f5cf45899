#!/usr/bin/env python3
"""Prints the two issue-5 tables of docs/results.md from results/experiments/*/*/*/result.json:
Table 2 as mean ± sample std over the finished seeds (Δ = mean over seeds of the cell's
accuracy minus BERT's of the same seed), then every finished cell, then the trained cells'
total run time."""
import glob, json, os, re, statistics as st, sys

root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results", "experiments"))


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit("results-tables.py: cannot read %s: %s" % (path, e))


rows = [load(f) for f in sorted(glob.glob(os.path.join(root, "*", "*", "*", "result.json")))]
base = {(r["dataset"], r["seed"]): r["test_accuracy"] for r in rows if r["grid"] == "table2" and r["cell"] == "bert"}
CELLS = ["bert", "p", "pf", "c-l5", "pfc-l5", "c-l4", "pfc-l4"]
GRIDS = {"table2": 0, "table4": 1, "table5": 2, "table6": 3}
DATASETS = ["sst2", "bbc-news", "20newsgroups"]


def ms(xs):
    return "%.2f" % xs[0] if len(xs) == 1 else "%.2f ± %.2f" % (st.mean(xs), st.stdev(xs))


print("| dataset | cell | seeds | test accuracy % | macro-F1 % | Δ vs BERT |\n|---|---|---|---:|---:|---:|")
for ds in DATASETS:
    for c in CELLS:
        rs = sorted((r for r in rows if r["grid"] == "table2" and r["dataset"] == ds and r["cell"] == c), key=lambda r: r["seed"])
        if not rs:
            continue
        deltas = [100 * (r["test_accuracy"] - base[(ds, r["seed"])]) for r in rs if (ds, r["seed"]) in base]
        d = "baseline" if c == "bert" else ("%+.2f" % deltas[0] if len(deltas) == 1 else "%+.2f ± %.2f" % (st.mean(deltas), st.stdev(deltas)))
        print("| %s | %s | %s | %s | %s | %s |" % (ds, c, ",".join(str(r["seed"]) for r in rs),
              ms([100 * r["test_accuracy"] for r in rs]), ms([100 * r["test_macro_f1"] for r in rs]), d))
print()
print("| grid | dataset | cell | test accuracy % | macro-F1 % | Δ vs BERT | best epoch (dev loss) | run s |\n|---|---|---|---:|---:|---:|---:|---:|")


def key(grid, c):
    """Table 2's cells in its order; a sweep's in the paper's: keep ratio p falling,
    combine layer l and cluster count m rising (from the one the sweep varies)."""
    if grid == "table2" and c in CELLS:
        return CELLS.index(c)
    m = re.search({"table4": r"-p([0-9.]+)", "table5": r"-l([0-9]+)", "table6": r"-m([0-9]+)"}.get(grid, "$^"), c)
    if not m:
        return len(CELLS)
    return -float(m.group(1)) if grid == "table4" else float(m.group(1))


for r in sorted(rows, key=lambda r: (GRIDS[r["grid"]], (DATASETS + [r["dataset"]]).index(r["dataset"]), r["seed"], key(r["grid"], r["cell"]))):
    b = base.get((r["dataset"], r["seed"]))
    d = "baseline" if r["cell"] == "bert" else ("%+.2f" % ((r["test_accuracy"] - b) * 100) if b is not None else "n/a")
    note = []
    if r.get("reused_from"):
        note.append("= " + r["reused_from"])
    if r.get("resumed"):
        note.append("resumed")
    if r.get("threads") == 1 and not r.get("reused_from"):
        note.append("1 thread")
    print("| %s | %s | %s, seed %d | %.2f | %.2f | %s | %d (%.3f) | %.0f%s |" % (
        r["grid"], r["dataset"], r["cell"], r["seed"], 100 * r["test_accuracy"], 100 * r["test_macro_f1"], d,
        r["best_epoch"], r["best_val_loss"], r["train_seconds"], " (" + "; ".join(note) + ")" if note else ""))
trained = [r for r in rows if not r.get("reused_from")]
print()
print("%d trained cells (%d more copy a trained cell's result); their run times sum to %.1f hours." % (
    len(trained), len(rows) - len(trained), sum(r["train_seconds"] for r in trained) / 3600))
