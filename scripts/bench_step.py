"""Benchmark: training-step and inference speed of config variants, each in a fresh
process, interleaved, against the first variant as the baseline.

    python scripts/bench_step.py                     # oneDNN off vs on (the default), default model
    python scripts/bench_step.py --variants "base:" "stem2:backbone.stem_stride=2" --repeats 5
    python scripts/bench_step.py --variants "gru:mode.rnn=gru" "none:mode.rnn=none" --common mode=ordinary
    python scripts/bench_step.py --variants "lazy:opt:lazy" "eager:" --common backbone=efficientnetv2b0
    python scripts/bench_step.py --variants "dense:loss:dense" "native:"   # the CTC loss kernels
    python scripts/bench_step.py --variants "keras:bn:keras" "fused:"      # BatchNorm: Keras' layer or fused

A variant is `NAME:TOKENS`, where TOKENS are config overrides (key=value),
`env:VAR=VALUE` environment settings, `opt:lazy` (leave the optimizer's slots to the
first traced step, as plain Keras does, instead of `bearcat.experiment.compile_model`'s
eager build), `loss:dense` (the loss a mode uses under XLA: for CTC the dense
keras.ops.ctc_loss instead of TensorFlow's native kernel) and `bn:keras` (Keras' own
BatchNormalization instead of Bearcat's fused one, bearcat.models.batchnorm); environment settings that
TensorFlow reads at import (TF_ENABLE_ONEDNN_OPTS) are why every measurement runs in its
own process. The model is built from the composed config and fed random images of the
configured input size, so no data set is needed. `first step s` is compile + the first training step (tracing). Absolute
speeds on a shared machine are noisy: compare the ratios, which come from runs interleaved
in time (A B A B ...), and the spread over repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_VARIANTS = ["onednn_off:env:TF_ENABLE_ONEDNN_OPTS=0", "onednn_on:env:TF_ENABLE_ONEDNN_OPTS=1"]


def parse_variant(text: str) -> tuple[str, dict, list[str]]:
    name, _, rest = text.partition(":")
    env, overrides = {}, []
    for token in rest.split():
        if token.startswith("env:"):
            key, _, value = token[4:].partition("=")
            env[key] = value
        else:
            overrides.append(token)
    return name, env, overrides


def measure(overrides: list[str], steps: int) -> dict:
    """In this process: build the configured model and time it (bearcat.benchmark.speed)."""
    from bearcat.benchmark import random_batch_model, speed

    lazy = "opt:lazy" in overrides  # script tokens, passed along with the config overrides
    dense = "loss:dense" in overrides
    if "bn:keras" in overrides:
        import bearcat.models.batchnorm

        bearcat.models.batchnorm.FUSED = False
    tokens = ("opt:lazy", "loss:dense", "bn:keras")
    cfg, mode, model, images, labels = random_batch_model([o for o in overrides if o not in tokens])
    return speed(model, mode.loss(xla=dense), images, mode.encode(labels), int(cfg.trainer.batch_size), steps,
                 build_optimizer=not lazy)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="NAME:TOKENS (see above)")
    parser.add_argument("--common", nargs="*", default=[], help="overrides for every variant")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per variant (interleaved)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:  # one measurement, printed as JSON for the parent
        print("RESULT " + json.dumps(measure(json.loads(args.child), args.steps)), flush=True)
        return

    variants = [parse_variant(v) for v in args.variants]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for r in range(args.repeats):
        for name, env, overrides in variants:
            proc = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--child", json.dumps([*args.common, *overrides])],
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}, capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"variant {name} failed:\n{proc.stderr[-2000:]}")
            results[name].append(json.loads(line[len("RESULT "):]))
            last = results[name][-1]
            print(f"repeat {r + 1}/{args.repeats} {name}: first step {last['first_step_s']:.1f} s, train "
                  f"{last['train_images_per_s']:.0f} images/s, inference {last['infer_images_per_s']:.0f} images/s",
                  flush=True)

    base = variants[0][0]
    keys = ("first_step_s", "train_images_per_s", "infer_images_per_s")
    med = {name: {k: statistics.median(m[k] for m in runs) for k in keys} for name, runs in results.items()}
    print(f"\n| variant | params | first step s (median) | x {base} | train images/s (median) | range | x {base} "
          f"| inference images/s | x {base} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        train = [m["train_images_per_s"] for m in runs]
        print(f"| {name} | {runs[0]['params']:,} | {med[name]['first_step_s']:.1f} "
              f"| {med[name]['first_step_s'] / med[base]['first_step_s']:.2f} "
              f"| {med[name]['train_images_per_s']:.0f} | {min(train):.0f}-{max(train):.0f} "
              f"| {med[name]['train_images_per_s'] / med[base]['train_images_per_s']:.2f} "
              f"| {med[name]['infer_images_per_s']:.0f} "
              f"| {med[name]['infer_images_per_s'] / med[base]['infer_images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
