"""Benchmark: the per-epoch BatchNorm re-estimate (bearcat.callbacks.PreciseBatchNorm) run
through only the layers that feed the BatchNorm layers (what training does) against the
same re-estimate through the whole model (the baseline), on one model, alternating.

    python scripts/bench_bn_calibration.py                       # the default model
    python scripts/bench_bn_calibration.py --overrides mode=ordinary --repeats 5

The model is built from the composed config (overrides as for `python -m bearcat.train`)
and fed random images of its input size; the re-estimate uses the configured
`trainer.bn_calibration_images` and `trainer.bn_calibration_chunk`. Both ways must give
the same statistics: the script checks that and prints the largest difference. Compare
the ratio: absolute times on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides (key=value)")
    parser.add_argument("--repeats", type=int, default=3, help="timed re-estimates per way (alternating)")
    args = parser.parse_args()

    import keras
    import numpy as np

    from bearcat.benchmark import random_batch_model
    from bearcat.callbacks import PreciseBatchNorm

    cfg, _, model, images, _ = random_batch_model(args.overrides, count=2048)
    t = cfg.trainer

    class WholeModel(PreciseBatchNorm):  # the baseline: every chunk through the whole model
        def _feeder(self, layers):
            return self.model

    ways = {"cut out": PreciseBatchNorm, "whole model": WholeModel}
    callbacks = {}
    for name, cls in ways.items():
        cb = cls(images, int(t.bn_calibration_images), int(t.seed), t.get("bn_calibration_chunk"))
        cb.set_model(model)
        callbacks[name] = cb
    layers = callbacks["cut out"].layers
    if not layers:
        raise SystemExit("this model has no BatchNorm layers: nothing to re-estimate")
    stats = {}
    times = {name: [] for name in ways}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not timed
        for name, cb in callbacks.items():
            start = time.perf_counter()
            cb.on_epoch_end(repeat)
            if repeat:
                times[name].append(time.perf_counter() - start)
            stats[name] = [keras.ops.convert_to_numpy(v) for layer in layers
                           for v in (layer.moving_mean, layer.moving_variance)]
    diff = max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6))) for a, b in zip(*stats.values()))
    base = statistics.median(times["whole model"])
    feed = callbacks["cut out"].feed
    part = "the whole model (could not cut)" if feed is model else f"{len(feed.layers)} of {len(model.layers)} layers"
    print(f"model: {model.name}, {len(layers)} BatchNorm layers, {len(callbacks['cut out'].batch)} images "
          f"in chunks of {callbacks['cut out'].chunk}; cut-out part: {part}")
    print("| way | median s | range | x whole model |\n|---|---:|---:|---:|")
    for name in ways:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.2f} | {min(times[name]):.2f}-{max(times[name]):.2f} | {med / base:.2f} |")
    print(f"largest relative difference of the re-estimated statistics: {diff:.2e}")
    if diff > 1e-3:
        raise SystemExit("the two ways disagree")


if __name__ == "__main__":
    main()
