"""corefocus against PyTorch and ONNX Runtime, side by side in one process (issue 17).

Run it through scripts/bench-peers.sh, which sets up the environment. Every engine gets
the same checkpoint, the same random token ids (full length, [CLS] ... [SEP]) and the
same thread count; each round times one call of every engine, in an order shuffled per
round (interleaved), so machine noise hits all alike; the table gives the median and min over the timed rounds and
each engine's median over corefocus bert's (above 1: corefocus is faster), its min over our min (the steadier
comparison on a contended host), and the median over rounds of its time over ours in the same round, with the
number of rounds it was slower (the host's drift between rounds cancels there, so differences of a percent or two
show; the JSON keeps every call's time). Each call starts on an idle machine: after at least
--gap-s, and then until the other threads of the process (every engine's pool) have gone quiet,
since ONNX Runtime's worker keeps a CPU busy for tens of milliseconds after its call (the
stderr line "other threads' CPU ms after one ... call" and the JSON's
threads_busy_after_call_ms show how long, per engine; gap_before_s each call's wait).

- PyTorch: transformers' BertForSequenceClassification, eager with sdpa attention,
  inference_mode for forward passes; training steps are forward + backward + clipping at
  1.0 + AdamW (lr 1e-5), as `corefocus bench`'s step.
- ONNX Runtime: the same PyTorch model exported to ONNX (opset 17, dynamic batch and
  length) and optimised with onnxruntime.transformers' BERT optimizer (fused Attention,
  SkipLayerNorm, BiasGelu; the fusion counts are printed), ORT_ENABLE_ALL, one session
  with intra_op_num_threads = threads.
- corefocus: `corefocus._corefocus.NativeTimedModel`, the Model::forward and train_step
  that `corefocus bench` times, for each --variants entry (`VARIANT/bf16`: its forward
  passes with the linear layers in bf16, `--precision bf16`, Intel AMX or AVX512-BF16 only;
  `VARIANT/int8`: in int8, `--precision int8`, AVX512-VNNI only). `VARIANT/bf16` entries
  also train in bf16 (`train --precision bf16`: mixed precision, the linear layers'
  products in bf16 with f32 sums); int8 entries are left out of the training rows.
- PyTorch bf16 (engine `pytorch-bf16`): the PyTorch model's training step under
  `torch.autocast("cpu", dtype=torch.bfloat16)` (its mixed precision: linear layers and
  attention products in bf16, master weights f32), the peer of corefocus's bf16 training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF-format BERT checkpoint directory")
    p.add_argument("--shapes", default="1x128,8x512", help="forward shapes, BATCHxLEN,...")
    p.add_argument("--train-shapes", default="8x512", help="training-step shapes ('' for none)")
    p.add_argument("--variants", default="bert,pf,pfc@5", help="corefocus variants, e.g. bert,pfc@5,bert/bf16,bert/int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--train-reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--gap-s",
        type=float,
        default=0.05,
        help="idle seconds at least before each timed call; then, unless --fixed-gap, until "
        "every engine's pool threads have gone quiet (ONNX Runtime's keep one CPU busy for "
        "about 60 ms after a call, longer than this default), at most 1 s",
    )
    p.add_argument(
        "--fixed-gap",
        action="store_true",
        help="idle exactly --gap-s before each call, whether or not an engine's pool threads "
        "still spin (the protocol of runs 1-99)",
    )
    p.add_argument(
        "--engines",
        default="pytorch,onnxruntime,corefocus",
        help="which engines take part (e.g. onnxruntime,corefocus to see how each fares "
        "without the others between its calls; onnxruntime-int8 adds ONNX Runtime on its "
        "dynamically int8-quantised graph, pytorch-bf16 PyTorch's training step under bf16 "
        "autocast)",
    )
    p.add_argument(
        "--no-spin",
        action="store_true",
        help="ONNX Runtime's and OpenMP's pool threads block instead of spinning after work "
        "(session.intra_op.allow_spinning 0, OMP_WAIT_POLICY=PASSIVE): to see whether an "
        "engine's spinning threads slow the next engine's call",
    )
    p.add_argument("--out", help="also write the results as JSON here")
    return p.parse_args()


def shapes_of(text):
    out = []
    for s in filter(None, text.split(",")):
        b, n = s.lower().split("x")
        out.append((int(b), int(n)))
    return out


def load_peers(args, ids_of, heads, hidden):
    """PyTorch's model and ONNX Runtime's session of the checkpoint."""
    import onnxruntime as ort
    import torch
    from onnxruntime.transformers import optimizer
    from transformers import BertForSequenceClassification

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch_model = BertForSequenceClassification.from_pretrained(
        args.model, num_labels=2, attn_implementation="sdpa"
    )
    torch_model.eval()

    # Export once (dynamic shapes), then ONNX Runtime's BERT fusions. The export traces
    # the eager attention (same weights): ORT's fuser recognises that graph as one
    # Attention node, where the sdpa graph leaves attention unfused.
    export_model = BertForSequenceClassification.from_pretrained(
        args.model, num_labels=2, attn_implementation="eager"
    )
    export_model.load_state_dict(torch_model.state_dict())
    export_model.eval()
    tmp = Path(tempfile.mkdtemp(prefix="corefocus-peers-"))
    raw, fused = tmp / "model.onnx", tmp / "model-opt.onnx"
    sample = torch.from_numpy(ids_of(1, 16))
    mask = torch.ones_like(sample)
    with torch.no_grad():
        torch.onnx.export(
            export_model,
            (sample, mask),
            str(raw),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": {0: "b", 1: "n"}, "attention_mask": {0: "b", 1: "n"}},
            opset_version=17,
            dynamo=False,
        )
    opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden)
    fusions = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(fused))
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if args.no_spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(fused), so, providers=["CPUExecutionProvider"])
    print(f"ONNX Runtime {ort.__version__} fusions: {fusions}", file=sys.stderr)
    sess_int8 = None
    if "onnxruntime-int8" in args.engines.split(","):
        # ONNX Runtime's dynamic int8 quantisation of the fused graph's linear layers
        # (weights int8 per tensor, activations quantised per call): what its users
        # reach for when f32 is too slow.
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8 = tmp / "model-int8.onnx"
        # (The fused operators are in Microsoft's domain, where shape inference finds no
        # types: their tensors are f32.)
        quantize_dynamic(
            str(fused),
            str(int8),
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        sess_int8 = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])
    return torch, ort, torch_model, (sess, sess_int8), fusions


def _paired_ratios_module():
    """scripts/paired-ratios.py (its name is not an importable module name)."""
    spec = importlib.util.spec_from_file_location(
        "paired_ratios", Path(__file__).with_name("paired-ratios.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The per-round ratio and the rounds slower, as paired-ratios.py computes them from the files.
paired = _paired_ratios_module().paired


def other_threads_cpu_ns():
    """CPU time in ns of every thread of this process but the calling one (the engines'
    pools), from /proc; None where /proc does not report it."""
    if not os.path.exists("/proc/self/schedstat"):
        return None
    me = threading.get_native_id()
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread exited meanwhile
    return total


def settle(min_s, fixed, window_s=0.005, quiet_share=0.05, max_s=1.0):
    """Sleeps `min_s`, then (unless `fixed`) until the other threads have used less than
    `quiet_share` of one CPU over the last `window_s`, so that no engine's pool threads
    still spin while the next engine runs (ONNX Runtime's spin for ~60 ms after a call,
    measured: docs/results.md, session 29); at most `max_s` in all. Returns the seconds
    slept."""
    t0 = time.perf_counter()
    time.sleep(min_s)
    prev = None if fixed else other_threads_cpu_ns()
    while prev is not None and time.perf_counter() - t0 < max_s:
        time.sleep(window_s)
        now = other_threads_cpu_ns()
        if now is None or now - prev < quiet_share * window_s * 1e9:
            break
        prev = now
    return time.perf_counter() - t0


def threads_busy_after(call, marks_s):
    """Runs `call` once, then returns the other threads' CPU ms since it returned, at each
    of `marks_s` seconds after (how long the engines' pools stay busy after a call)."""
    call()
    c0, t0 = other_threads_cpu_ns(), time.perf_counter()
    busy = []
    for mark in marks_s:
        time.sleep(max(0.0, t0 + mark - time.perf_counter()))
        busy.append(round((other_threads_cpu_ns() - c0) / 1e6, 1))
    return busy


def main():
    args = parse_args()
    # Thread counts must be set before the engines start their pools.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.no_spin:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    chosen = set(filter(None, args.engines.split(",")))
    if "corefocus" not in chosen:
        sys.exit("--engines must include corefocus (the ratios are to its first variant)")
    import numpy as np

    from corefocus._corefocus import NativeTimedModel

    rng = np.random.default_rng(args.seed)
    config = json.loads((Path(args.model) / "config.json").read_text())
    vocab, heads, hidden = config["vocab_size"], config["num_attention_heads"], config["hidden_size"]
    layers = config["num_hidden_layers"]

    def ids_of(batch, length):
        ids = rng.integers(1000, vocab, size=(batch, length), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        return ids

    # Without PyTorch and ONNX Runtime in the run they are not even imported, so that
    # corefocus can be timed alone in its process (their pools then hold no threads).
    torch = ort = torch_model = sess = sess_int8 = None
    fusions = {}
    if chosen & {"pytorch", "pytorch-bf16", "onnxruntime", "onnxruntime-int8"}:
        torch, ort, torch_model, (sess, sess_int8), fusions = load_peers(args, ids_of, heads, hidden)

    variants = [v for v in args.variants.split(",") if v]

    def version(module):
        return module.__version__ if module else "not loaded"

    def load_cf(entry):
        variant, _, precision = entry.partition("/")
        return NativeTimedModel.load(args.model, variant, 2, precision or "f32")

    cf = {v: load_cf(v) for v in variants}

    def forward_engines(ids):
        lists = ids.astype(np.uint32).tolist()
        # A list per call, as ORT gets its numpy arrays: conversion is part of the call.
        engines = [(f"corefocus {v}", (lambda m: lambda: m.forward(lists))(m)) for v, m in cf.items()]
        if "pytorch" in chosen:
            t_ids = torch.from_numpy(ids)
            t_mask = torch.ones_like(t_ids)

            def torch_fwd():
                with torch.inference_mode():
                    torch_model(input_ids=t_ids, attention_mask=t_mask).logits

            engines.append(("pytorch", torch_fwd))
        if "onnxruntime" in chosen:
            o_feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            engines.append(("onnxruntime", lambda: sess.run(None, o_feed)))
        if "onnxruntime-int8" in chosen:
            o_feed8 = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            engines.append(("onnxruntime int8", lambda: sess_int8.run(None, o_feed8)))
        return engines

    def train_engines(ids):
        lists = ids.astype(np.uint32).tolist()
        labels = [i % 2 for i in range(ids.shape[0])]
        engines = [
            (f"corefocus {v}", (lambda m: lambda: m.train_step(lists, labels))(m))
            for v, m in cf.items()
            if not v.endswith("/int8")
        ]
        t_ids = t_mask = t_labels = None
        if chosen & {"pytorch", "pytorch-bf16"}:
            t_ids = torch.from_numpy(ids)
            t_mask = torch.ones_like(t_ids)
            t_labels = torch.tensor(labels)

        def torch_step_with(adamw, autocast):
            def step():
                torch_model.train()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = torch_model(input_ids=t_ids, attention_mask=t_mask, labels=t_labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
                adamw.step()
                adamw.zero_grad(set_to_none=True)
                torch_model.eval()

            return step

        for engine, autocast in [("pytorch", False), ("pytorch-bf16", True)]:
            if engine in chosen:
                adamw = torch.optim.AdamW(torch_model.parameters(), lr=1e-5, weight_decay=0.0)
                engines.append((engine.replace("-", " "), torch_step_with(adamw, autocast)))
        return engines

    order_rng = random.Random(args.seed)
    # The idle seconds before each timed call, by engine (of the latest shape).
    gaps = {}

    def interleaved(engines, warmup, reps):
        # One call of every engine per round, in an order shuffled per round (so that no
        # engine always follows the same one); each starts after an idle gap.
        times = {name: [] for name, _ in engines}
        gaps.update({name: [] for name, _ in engines})
        for r in range(warmup + reps):
            order = list(engines)
            order_rng.shuffle(order)
            for name, call in order:
                gap = settle(args.gap_s, args.fixed_gap)
                t0 = time.perf_counter()
                call()
                dt = time.perf_counter() - t0
                if r >= warmup:
                    times[name].append(dt)
                    gaps[name].append(gap)
        return times

    results = []
    plan = [("forward", s, forward_engines, args.reps) for s in shapes_of(args.shapes)]
    plan += [("training step", s, train_engines, args.train_reps) for s in shapes_of(args.train_shapes)]
    # How long each engine's pool threads stay busy after a call (what the gaps must
    # outlast), on the first shape: their CPU time since the call, in ms, at each mark.
    busy_marks_s = [0.01, 0.02, 0.05, 0.1, 0.2]
    busy_after_call = {}
    for what, (b, n), make, reps in plan:
        engines = make(ids_of(b, n))
        if not busy_after_call and other_threads_cpu_ns() is not None:
            for name, call in engines:
                settle(args.gap_s, args.fixed_gap)
                busy_after_call[name] = threads_busy_after(call, busy_marks_s)
            print(
                f"other threads' CPU ms after one {what} {b}x{n} call, at "
                + "/".join(f"{1e3 * m:g}" for m in busy_marks_s)
                + " ms: "
                + "; ".join(f"{k} {'/'.join(map(str, v))}" for k, v in busy_after_call.items()),
                file=sys.stderr,
            )
        times = interleaved(engines, args.warmup, reps)
        ours = times[f"corefocus {variants[0]}"]
        base, base_min = statistics.median(ours), min(ours)
        for name, ts in times.items():
            med = statistics.median(ts)
            # Each round's call over ours in the same round: the host's drift between
            # rounds cancels, so small differences (pf against bert at 1 x 128) show.
            per_round_ratio, rounds_slower = paired(ts, ours)
            results.append(
                {
                    "what": what,
                    "shape": f"{b}x{n}",
                    "engine": name,
                    "median_s": med,
                    "min_s": min(ts),
                    "samples": len(ts),
                    # Every timed call, in round order (the spread, not only its summary).
                    "times_s": ts,
                    f"ratio_to_corefocus_{variants[0]}": med / base,
                    # On a contended host the minima are the steadier comparison.
                    f"min_ratio_to_corefocus_{variants[0]}": min(ts) / base_min,
                    f"paired_ratio_to_corefocus_{variants[0]}": per_round_ratio,
                    f"rounds_slower_than_corefocus_{variants[0]}": rounds_slower,
                    # The idle gap before each timed call (at least --gap-s; longer while
                    # the previous engine's threads still ran).
                    "gap_before_s": gaps[name],
                }
            )

    from corefocus._corefocus import threads_pinned

    pinned = threads_pinned()
    print(
        f"\nmodel {args.model} ({layers} layers, hidden {hidden}), {args.threads} threads, "
        f"{args.warmup} warm-up + {args.reps} timed rounds ({args.train_reps} for training), interleaved; "
        f"torch {version(torch)}, onnxruntime {version(ort)}; corefocus threads "
        f"{'pinned one per CPU' if pinned else 'not pinned'}\n"
    )
    base_name = f"corefocus {variants[0]}"
    print(
        f"| what | shape | engine | median ms | min ms | its median / {base_name}'s "
        f"| its min / {base_name}'s | median over rounds of its time / {base_name}'s "
        f"| rounds it was slower |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['what']} | {r['shape']} | {r['engine']} | {1e3 * r['median_s']:.1f} | "
            f"{1e3 * r['min_s']:.1f} | {r[f'ratio_to_corefocus_{variants[0]}']:.2f}x | "
            f"{r[f'min_ratio_to_corefocus_{variants[0]}']:.2f}x | "
            f"{r[f'paired_ratio_to_corefocus_{variants[0]}']:.3f}x | "
            f"{r[f'rounds_slower_than_corefocus_{variants[0]}']} of {r['samples']} |"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "threads": args.threads,
                    "corefocus_threads_pinned": pinned,
                    "torch": version(torch),
                    "onnxruntime": version(ort),
                    "ort_fusions": fusions,
                    "gap": "fixed" if args.fixed_gap else "until the pools are quiet",
                    "min_gap_s": args.gap_s,
                    # Per engine: the other threads' CPU ms at busy_marks_s after one call.
                    "busy_marks_s": busy_marks_s,
                    "threads_busy_after_call_ms": busy_after_call,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
