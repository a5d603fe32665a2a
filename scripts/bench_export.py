#!/usr/bin/env python
"""TFLite conversion time: Keras' `model.export(format="litert")` (a SavedModel written,
then converted) against Bearcat's `bearcat.export.tflite_bytes` (a traced function
converted directly), alternating, on the same model. Also checks that both give the same
outputs on random images and hold the same operators.

    python scripts/bench_export.py [--model ctc|detector|BUNDLE] [--rounds 3] [--int8]

`ctc` is the default text model (`conf/train.yaml`, untrained); `detector` is
`experiment=click`'s EfficientDet at its own input size (untrained: the conversion's
work does not depend on the weights' values); a bundle folder reads its `model.keras`.
Prints each conversion, then each way's median and the ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path


def build(which: str):
    from hydra import compose, initialize_config_dir

    from bearcat import CONFIG_DIR

    if which not in ("ctc", "detector"):
        from bearcat.bundle import load_keras

        return load_keras(Path(which) / "model.keras")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        if which == "ctc":
            from bearcat.data.labels import Vocabulary
            from bearcat.experiment import build_model
            from bearcat.modes.base import build_mode

            cfg = compose(config_name="train")
            mode = build_mode("ctc", Vocabulary(list("abcdefghijklmnopqrstuvwxyz0123456789")), 6)
            return build_model(cfg, mode, "float32")
        from bearcat.detection.train import build_detector, detection_mode

        cfg = compose(config_name="train", overrides=["experiment=click"])
        return build_detector(cfg, detection_mode(cfg, list("abcdefgh")))


def keras_litert(model, path: str, quantized: bool) -> bytes:
    import keras
    import tensorflow as tf

    spec = keras.InputSpec(shape=(1, *model.input_shape[1:]), dtype="float32")
    options = {"optimizations": [tf.lite.Optimize.DEFAULT]} if quantized else {}
    model.export(path, format="litert", input_signature=[spec], verbose=False, **options)
    return Path(path).read_bytes()


def operators(blob: bytes) -> Counter:
    """How many of each TFLite operator the flat buffer holds."""
    import tensorflow as tf

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_content=blob)
    return Counter(re.findall(r"Op#\d+ (\w+)", text.getvalue()))


def outputs(blob: bytes, folder: str, images):
    """The flat buffer's outputs, read as Bearcat reads a bundle's TFLite file."""
    from bearcat.runtime import TFLiteRuntime

    path = Path(folder) / "read.tflite"
    path.write_bytes(blob)
    return TFLiteRuntime(path).predict_on_batch(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ctc", help="ctc, detector or an export bundle folder")
    parser.add_argument("--rounds", type=int, default=3, help="conversions of each way")
    parser.add_argument("--int8", action="store_true", help="dynamic-range quantization (format=tflite_int8)")
    args = parser.parse_args()

    import numpy as np

    from bearcat.export import tflite_bytes

    model = build(args.model)
    images = np.random.default_rng(0).integers(0, 256, (4, *model.input_shape[1:])).astype(np.float32)
    times: dict[str, list[float]] = {"keras litert": [], "bearcat": []}
    blobs = {}
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.rounds):
            for way in times:
                start = time.perf_counter()
                if way == "keras litert":
                    blob = keras_litert(model, os.path.join(folder, f"{run}.tflite"), args.int8)
                else:
                    blob = tflite_bytes(model, args.int8)
                times[way].append(time.perf_counter() - start)
                blobs[way] = blob
                print(f"round {run + 1} {way}: {times[way][-1]:.1f} s, {len(blob):,} bytes", flush=True)
        first, second = (outputs(blobs[way], folder, images) for way in times)
    diff = float(np.abs(first - second).max())
    medians = {way: statistics.median(t) for way, t in times.items()}
    print(f"model {args.model} ({model.count_params():,} weights), int8={args.int8}, {args.rounds} rounds")
    for way, median in medians.items():
        print(f"  {way}: median {median:.1f} s")
    print(f"  bearcat / keras litert: {medians['bearcat'] / medians['keras litert']:.2f}x the time")
    print(f"  largest output difference on {len(images)} random images: {diff:.3g}")
    ops = [operators(blobs[way]) for way in times]
    print(f"  the same operators: {ops[0] == ops[1]} ({sum(ops[0].values())} and {sum(ops[1].values())})")
    os._exit(0)  # TensorFlow's threads can hold the exit


if __name__ == "__main__":
    main()
