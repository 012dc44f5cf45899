"""Per-round ratios from bench-peers result files (issue 17), earlier runs included.

For each file, shape and engine: the median over rounds of the engine's time over the base
engine's in the same round (the first corefocus variant unless --base names another), and
the rounds it was slower, as `scripts/bench-peers.py` prints them since session 26. Files
that keep every call's time (`times_s`, in round order: runs 64 on and the 6 Dec gap and
linger runs) are read the same way, whether made before that or after; older ones are
refused with an error naming the file.

    python3 scripts/paired-ratios.py results/peers/2026-12-07-run8*-intel.json
    python3 scripts/paired-ratios.py --base "corefocus bert" --engine "corefocus pf" FILES
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def paired(times: list[float], base: list[float]) -> tuple[float, int]:
    """Median of times[r] / base[r] over the rounds, and the rounds where it is above 1."""
    if len(times) != len(base) or not times:
        raise ValueError(f"{len(times)} rounds against {len(base)}")
    ratios = [t / b for t, b in zip(times, base)]
    return statistics.median(ratios), sum(r > 1 for r in ratios)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--base", help="base engine (default: the file's first corefocus engine)")
    p.add_argument("--engine", help="only this engine")
    args = p.parse_args()
    print("| file | what | shape | engine | base | median over rounds | rounds slower |")
    print("|---|---|---|---|---|---:|---:|")
    for f in args.files:
        try:
            results = json.loads(f.read_text())["results"]
        except (OSError, ValueError, KeyError) as e:
            print(f"{f}: not a bench-peers result file ({e})", file=sys.stderr)
            return 1
        groups: dict[tuple[str, str], dict[str, list[float]]] = {}
        for r in results:
            if "times_s" not in r:
                print(f"{f}: keeps no per-call times (`times_s`), so no per-round ratio", file=sys.stderr)
                return 1
            groups.setdefault((r["what"], r["shape"]), {})[r["engine"]] = r["times_s"]
        for (what, shape), engines in groups.items():
            base = args.base or next((e for e in engines if e.startswith("corefocus")), None)
            if base not in engines:
                print(f"{f}: no engine {base!r} in {what} {shape}", file=sys.stderr)
                return 1
            for engine, times in engines.items():
                if engine == base or (args.engine and engine != args.engine):
                    continue
                try:
                    ratio, slower = paired(times, engines[base])
                except ValueError as e:
                    print(f"{f}: {what} {shape} {engine}: {e}", file=sys.stderr)
                    return 1
                print(f"| {f.name} | {what} | {shape} | {engine} | {base} | {ratio:.3f}x | {slower} of {len(times)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
