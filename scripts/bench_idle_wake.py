#!/usr/bin/env python
"""How much slower does this machine run a small piece of work right after the process
slept than back to back? A server waits for each request, so its work is always of the
first kind, while an in-process benchmark loop is of the second.

    python scripts/bench_idle_wake.py [--repeats 300]

The work: JSON round trips of a small dict (like a request's parsing and answer) and a
small matrix product (like a model layer). Prints the median time of the work back to
back and after sleeping 0.2, 1 and 5 ms, and each one's ratio to back to back.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def work(payload: dict, block: np.ndarray) -> float:
    start = time.perf_counter()
    for _ in range(20):
        json.loads(json.dumps(payload))
    block @ block
    return (time.perf_counter() - start) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    payload = {"result": "abcd", "confidence": 0.9, "time_ms": 1.0, "scores": list(range(50))}
    block = np.random.default_rng(0).random((128, 128), np.float32)
    for _ in range(args.repeats):  # warm-up
        work(payload, block)
    base = None
    for sleep_ms in (0.0, 0.2, 1.0, 5.0, 0.0):  # back to back first and last: drift would show
        times = []
        for _ in range(args.repeats):
            if sleep_ms:
                time.sleep(sleep_ms / 1000.0)
            times.append(work(payload, block))
        median = float(np.median(times))
        base = base or median
        label = "back to back" if sleep_ms == 0.0 else f"after sleeping {sleep_ms:g} ms"
        print(f"{label:>24}: {median:.3f} ms  ({median / base:.2f}x the first back-to-back)")


if __name__ == "__main__":
    main()
