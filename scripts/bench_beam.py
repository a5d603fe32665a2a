#!/usr/bin/env python
"""CTC beam search speed: a batch of outputs searched in one call against the same outputs
searched one image at a time, and (with --old REV) against the search as it was at a git
revision, one image at a time.

    python scripts/bench_beam.py [--images 256] [--width 10] [--batches 1,8,64,256] [--old 39d8bcb]
    python scripts/bench_beam.py --bundle BUNDLE --data DIR   # a model's unsure outputs

Without --bundle the outputs are random softmaxes of the default CTC model's shape (48
steps, 37 classes), sharpened like a half-trained model's. With --bundle they are that
model's outputs on the images of DIR (Keras runtime) where its greedy reading's
probability is 0.5 or less: the images `decoder=beam_search` searches (computed in a child
process, so TensorFlow's threads are gone before the timing starts). Prints milliseconds
per image of each way, their ratios to one image at a time in this run, and whether every
way read every image the same.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bearcat.modes.ctc import beam_search_batch, collapse, text_probability  # noqa: E402


def old_search(rev: str):
    """beam_search(probs, width) from bearcat/modes/ctc.py at git revision `rev`."""
    source = subprocess.run(["git", "show", f"{rev}:bearcat/modes/ctc.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:  # the loaded module no longer needs its file
        path = Path(tmp) / "ctc_old.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("ctc_old", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.beam_search


def synthetic(images: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(images, 48, 37)) * rng.uniform(1.0, 4.0, size=(images, 1, 1))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def model_outputs(bundle: str, data: str, images: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "outputs.npy"
        subprocess.run([sys.executable, __file__, "--bundle", bundle, "--data", data, "--images", str(images),
                        "--save", str(saved)], check=True)
        return np.load(saved)


def save_model_outputs(bundle: str, data: str, images: int, out: str) -> None:
    from bearcat.bundle import Predictor
    from bearcat.data.preprocess import preprocess

    predictor = Predictor(bundle)
    paths = sorted(p for p in Path(data).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".gif", ".bmp"})
    unsure = []
    for i in range(0, len(paths), 64):
        arrays = np.stack([preprocess(p, predictor.pre) for p in paths[i:i + 64]]).astype(np.float32)
        for p in np.asarray(predictor.model.predict_on_batch(arrays)):
            if text_probability(p, collapse(p.argmax(-1))) <= 0.5:
                unsure.append(p)
        if len(unsure) >= images:
            break
    if not unsure:
        raise SystemExit(f"{bundle} reads every image of {data} with a probability above 0.5: nothing to search")
    print(f"{len(unsure[:images])} unsure outputs of {bundle} on {data}", flush=True)
    np.save(out, np.stack(unsure[:images]))


def ms_per_image(search, probs: np.ndarray) -> tuple[float, list]:
    start = time.perf_counter()
    found = search(probs)
    return (time.perf_counter() - start) / len(probs) * 1e3, found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--width", type=int, default=10, help="beam width (the default model's)")
    ap.add_argument("--batches", default="1,8,64,256", help="batch sizes of the batched search")
    ap.add_argument("--old", help="git revision whose one-image search to time as well")
    ap.add_argument("--bundle", help="a CTC bundle whose outputs to search")
    ap.add_argument("--data", help="images for --bundle")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is printed")
    ap.add_argument("--save", help=argparse.SUPPRESS)  # the child process's output file
    args = ap.parse_args(argv)
    if bool(args.bundle) != bool(args.data):
        ap.error("--bundle and --data go together")
    if args.save:
        save_model_outputs(args.bundle, args.data, args.images, args.save)
        return 0
    probs = model_outputs(args.bundle, args.data, args.images) if args.bundle else synthetic(args.images)
    width = args.width
    ways = {"one at a time": lambda p: [beam_search_batch(x[None], width)[0] for x in p]}
    for size in [int(b) for b in args.batches.split(",")]:
        if 1 < size:
            ways[f"batches of {size}"] = lambda p, s=size: [r for i in range(0, len(p), s)
                                                            for r in beam_search_batch(p[i:i + s], width)]
    if args.old:
        before = old_search(args.old)
        ways[f"{args.old}, one at a time"] = lambda p: [before(x, width) for x in p]
    times = {name: [] for name in ways}
    readings = {}
    for _ in range(max(1, args.rounds)):  # interleaved: the shared machine's speed drifts
        for name, search in ways.items():
            ms, readings[name] = ms_per_image(search, probs)
            times[name].append(ms)
    base = np.median(times["one at a time"])
    print(f"{len(probs)} outputs of {probs.shape[1]} steps x {probs.shape[2]} classes, width {width}, "
          f"median of {args.rounds} rounds:")
    for name in ways:
        ms = np.median(times[name])
        print(f"  {name:>24}: {ms:6.3f} ms per image, {base / ms:5.2f}x the speed of one at a time")
    same = all(r == readings["one at a time"] for r in readings.values())
    print(f"every way read every output the same: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
