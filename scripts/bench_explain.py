#!/usr/bin/env python
"""Heat-map speed: milliseconds per `bearcat.gradcam.explain` call on a bundle's images, for
this source tree and optionally earlier ones (a `git worktree` of an earlier commit), runs
interleaved, with the largest difference between their maps.

    python scripts/bench_explain.py --model outputs/runs/<run>/model --images <folder> \
        [--source before=/tmp/before] [--counts 1 8] [--runs 3]

Each source runs in its own process (PYTHONPATH), reads the same first images by name,
decodes them with the bundle's own decoder and explains those readings, as `evaluate
gradcam=true`, `predict gradcam=` and the server's /v1/explain do. Where `explain` takes the
model's outputs (`probs=`, as /v1/explain passes them), it is also timed given them, the
model call that makes them included ("outputs given").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model: str, images: str, counts: list[int], runs: int, out: str) -> None:
    """In this process: time explain on the first max(counts) images; save the maps to `out`."""
    import inspect
    import time

    import numpy as np

    from bearcat.bundle import Predictor
    from bearcat.data.labels import is_image_file
    from bearcat.data.preprocess import preprocess
    from bearcat.gradcam import explain
    from bearcat.modes.ctc import CTCMode

    predictor = Predictor(model)
    files = sorted(p for p in Path(images).iterdir() if is_image_file(p))[:max(counts)]
    x = np.stack([preprocess(f, predictor.pre) for f in files])
    ctc = isinstance(predictor.mode, CTCMode)
    results = predictor.predict_arrays(x)
    readings = [predictor.mode.vocab.encode(r["result"]) for r in results] if ctc else None
    given = "probs" in inspect.signature(explain).parameters
    timings, maps = {}, {}
    for n in counts:
        args = dict(merge_repeats=ctc, readings=readings[:n] if ctc else None)

        def with_outputs():
            return explain(predictor.model, x[:n], probs=predictor.model.predict_on_batch(x[:n].astype(np.float32)),
                           **args)

        for key, call in [(str(n), lambda: explain(predictor.model, x[:n], **args))] + (
                [(f"{n} given", with_outputs)] if given else []):
            call()  # warm-up
            seconds = []
            for _ in range(runs):
                start = time.perf_counter()
                found = call()
                seconds.append(time.perf_counter() - start)
            timings[key] = 1000.0 * float(np.median(seconds))
            maps[f"maps{key}"] = found.maps
            maps[f"chars{key}"] = np.stack([m for row in found.characters for _, m in row]) \
                if any(found.characters) else np.zeros((0,))
    np.savez(out, **maps)
    print(json.dumps(timings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model bundle folder with a Keras model")
    parser.add_argument("--images", required=True, help="a folder of images the model reads")
    parser.add_argument("--source", action="append", default=[], help="NAME=SOURCE: another source tree to time")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8], help="images per explain call")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per count (the median is kept)")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child process's output file
    args = parser.parse_args()
    if args.measure:
        measure(args.model, args.images, args.counts, args.runs, args.measure)
        return

    import numpy as np

    sources = [("this", str(ROOT))] + [tuple(s.split("=", 1)) for s in args.source]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, source in sources:
            env = {**os.environ, "PYTHONPATH": os.path.abspath(source), "TF_CPP_MIN_LOG_LEVEL": "2"}
            out = f"{tmp}/{name}.npz"
            done = subprocess.run([sys.executable, __file__, "--model", args.model, "--images", args.images,
                                   "--counts", *map(str, args.counts), "--runs", str(args.runs), "--measure", out],
                                  env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
            results[name] = (json.loads(done.stdout.strip().splitlines()[-1]), np.load(out))
        print("| source | images | ms per call | ratio to this | max map difference |")
        print("|---|---:|---:|---:|---:|")
        base_times, base_maps = results["this"]
        for name, (times, maps) in results.items():
            for n in args.counts:
                for key, label in ((str(n), name), (f"{n} given", f"{name}, outputs given")):
                    if key in times:  # each against this source's maps of the plain call
                        diff = max(float(np.abs(maps[f"{kind}{key}"] - base_maps[f"{kind}{n}"]).max(initial=0.0))
                                   for kind in ("maps", "chars"))
                        print(f"| {label} | {n} | {times[key]:.0f} | {times[key] / base_times[str(n)]:.2f} | "
                              f"{diff:.2g} |")


if __name__ == "__main__":
    main()
