#!/usr/bin/env python3
"""How an idle gap before a call changes corefocus's 1 x 128 forward latency (the serving
case): for f32 and bf16 (AMX or AVX512-BF16 only), 25 calls after each gap of 0, 5, 20 and 50 ms (the
first 3 dropped), median and min. Uses the Python package (NativeTimedModel, as
scripts/bench-peers.py); set RAYON_NUM_THREADS and COREFOCUS_LINGER_MS as wanted.

    RAYON_NUM_THREADS=2 target/peers-venv/bin/python scripts/gap-latency.py MODEL_DIR"""
import statistics
import sys
import time

import numpy as np
from corefocus._corefocus import NativeTimedModel

model = sys.argv[1]
ids = np.random.default_rng(0).integers(1000, 30000, size=(1, 128)).astype(np.uint32)
ids[0, 0], ids[0, -1] = 101, 102
lists = ids.tolist()
for precision in ["f32", "bf16"]:
    try:
        m = NativeTimedModel.load(model, "bert", 2, precision)
    except Exception as e:  # no bf16 arithmetic: say so and go on
        print(f"{precision}: {e}")
        continue
    for gap in [0.0, 0.005, 0.02, 0.05]:
        times = []
        for _ in range(25):
            time.sleep(gap)
            t = time.perf_counter()
            m.forward(lists)
            times.append(time.perf_counter() - t)
        times = times[3:]
        print(f"{precision} gap {1e3 * gap:.0f} ms: median {1e3 * statistics.median(times):.2f} "
              f"min {1e3 * min(times):.2f} ms")
