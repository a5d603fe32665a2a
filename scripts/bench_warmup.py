#!/usr/bin/env python
"""First-call latency of a bundle's runtimes, cold and after the server's warm-up.

    python scripts/bench_warmup.py --bundle outputs/bench/swust_cas_20200226/export_ctc \
        [--runtimes keras onnx]

For each runtime, in a fresh load of the bundle: the time of each model call for batches
of 1, 1, 3, 5 and 9 grey images straight after loading ("cold"), then, in another fresh
load, the warm-up `bearcat.server.app.warm_up` runs before serving and the same calls
("warmed"). A graph built on the first call, or on the first call of a new batch size,
shows as a call hundreds of times slower than the next.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

BATCHES = [1, 1, 3, 5, 9]


def call_times(predictor) -> list[float]:
    pre = predictor.pre
    x = np.full((max(BATCHES), pre.height, pre.width, pre.channels), 128, np.float32)
    times = []
    for b in BATCHES:
        start = time.perf_counter()
        predictor.model.predict_on_batch(x[:b])
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="export bundle folder")
    ap.add_argument("--runtimes", nargs="+", default=["keras", "onnx"], help="runtimes the bundle holds")
    args = ap.parse_args(argv)
    from bearcat.runtime import load_predictor
    from bearcat.server.app import warm_up

    print("ms per call for batches " + ", ".join(map(str, BATCHES)))
    for runtime in args.runtimes:
        cold = call_times(load_predictor(args.bundle, runtime, 1))
        predictor = load_predictor(args.bundle, runtime, 1)
        warm_ms = warm_up(predictor)
        warmed = call_times(predictor)
        print(f"{runtime:>10} cold:   " + "  ".join(f"{t:8.1f}" for t in cold))
        print(f"{runtime:>10} warmed: " + "  ".join(f"{t:8.1f}" for t in warmed) + f"   (warm-up took {warm_ms:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
