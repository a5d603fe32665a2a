#!/usr/bin/env python
"""CTC confidence speed: Bearcat's pairwise matrix-product forward algorithm against the
textbook loop (one NumPy step per time step), on the same random softmax outputs.

    python scripts/bench_decode.py [--steps 48] [--classes 37] [--length 5] [--calls 300]

Prints microseconds per call of each, the ratio, and the largest relative difference of
their results (they compute the same probability). 48 steps and 37 classes are the
default CTC model's output (96-pixel input, two steps per feature column, 36 characters
+ blank).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bearcat.modes.ctc import text_probability  # noqa: E402


def loop_probability(probs: np.ndarray, ids: list[int]) -> float:
    """The baseline: the forward algorithm one time step at a time, rescaled each step."""
    ext = np.zeros(2 * len(ids) + 1, np.int64)
    ext[1::2] = ids
    skip = np.zeros(len(ext), bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    alpha = np.zeros(len(ext))
    alpha[:2] = probs[0, ext[:2]]
    log_scale = 0.0
    for t in range(1, len(probs)):
        prev = alpha
        alpha = prev.copy()
        alpha[1:] += prev[:-1]
        alpha[2:] += np.where(skip[2:], prev[:-2], 0.0)
        alpha *= probs[t, ext]
        total = alpha.sum()
        if total <= 0.0:
            return 0.0
        alpha /= total
        log_scale += np.log(total)
    end = alpha[-1] + (alpha[-2] if len(ext) > 1 else 0.0)
    return float(np.exp(log_scale) * end) if end > 0.0 else 0.0


def per_call_us(fn, cases, calls: int) -> float:
    start = time.perf_counter()
    for k in range(calls):
        fn(*cases[k % len(cases)])
    return (time.perf_counter() - start) / calls * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=48, help="CTC time steps")
    ap.add_argument("--classes", type=int, default=37, help="characters + blank")
    ap.add_argument("--length", type=int, default=5, help="characters in the decoded text")
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(20):  # peaked outputs like a trained model's, the text its greedy reading
        logits = rng.normal(size=(args.steps, args.classes)) * 8.0
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        cases.append((probs, list(rng.integers(1, args.classes, size=args.length))))
    diff = max(abs(text_probability(*c) - loop_probability(*c)) / max(loop_probability(*c), 1e-300) for c in cases)
    per_call_us(text_probability, cases, 20)  # warm-up
    per_call_us(loop_probability, cases, 20)
    times = {"loop": [], "pairwise": []}
    for _ in range(3):  # interleaved repeats: the shared machine's speed drifts
        times["loop"].append(per_call_us(loop_probability, cases, args.calls))
        times["pairwise"].append(per_call_us(text_probability, cases, args.calls))
    loop, pairwise = np.median(times["loop"]), np.median(times["pairwise"])
    print(f"{args.steps} steps, {args.classes} classes, {args.length} characters, {args.calls} calls x 3:")
    print(f"step-by-step loop {loop:.0f} us/call, pairwise products {pairwise:.0f} us/call: "
          f"{loop / pairwise:.2f}x faster; largest relative difference {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
