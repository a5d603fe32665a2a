#!/usr/bin/env python
"""Single-image latency and accuracy of an exported model, against ddddocr, on the same
images in one run.

    pip install -e ".[bench]"        # ddddocr, the comparison model (optional extra)
    python scripts/bench_infer.py --bundle outputs/exports/<run id> \
        --data /work/shared/datasets/swust_cas_20200226 --lowercase [--ddddocr] [--limit 200]
    python scripts/bench_infer.py --bundle outputs/exports/<run id> --run-dir outputs/runs/<dir> --lowercase --ddddocr

Images: the test split of the folder, split exactly as training split it (`--run-dir`
reads the run's config; else pass the same `--split-seed` / ratios), or `--split all`. Latency = one image at a time, end to
end (bytes -> decode + preprocess -> model -> decode), after a warm-up; "model" is the
model call alone on an already preprocessed image. Accuracy is whole-string exact match
(case-insensitive with --lowercase). Prints a table; --out writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def images_of(data: Path, split: str, lowercase: bool, split_seed: int, val_ratio: float, test_ratio: float,
              run_dir: Path | None = None):
    """(path, label) pairs of the split; with `run_dir`, split exactly as that training run
    split its data set (its config.yaml)."""
    from bearcat.data.sources import folder

    if run_dir is not None:
        from omegaconf import OmegaConf

        from bearcat.experiment import load_sources

        cfg = OmegaConf.load(run_dir / "config.yaml")
        if data is not None:
            cfg.dataset.root = str(data)
        splits = load_sources(cfg)
    else:
        splits = folder(str(data), lowercase=lowercase, split_seed=split_seed, val_ratio=val_ratio,
                        test_ratio=test_ratio)
    if split == "all":
        return splits.train + splits.val + splits.test
    return getattr(splits, split)


def timed(fn, items, warmup: int = 5) -> tuple[list, np.ndarray]:
    for item in items[:warmup]:
        fn(item)
    out, times = [], []
    for item in items:
        start = time.perf_counter()
        out.append(fn(item))
        times.append((time.perf_counter() - start) * 1000.0)
    return out, np.array(times)


def summary(name: str, answers: list[str], truths: list[str], times: np.ndarray, lowercase: bool, **extra) -> dict:
    norm = (lambda s: s.lower()) if lowercase else (lambda s: s)
    right = sum(norm(a) == norm(t) for a, t in zip(answers, truths))
    return {"name": name, "images": len(truths), "accuracy": right / max(1, len(truths)),
            "ms_p50": float(np.percentile(times, 50)), "ms_p95": float(np.percentile(times, 95)),
            "ms_mean": float(times.mean()), **extra}


def bench_bearcat(bundle: Path, runtime: str, threads: int, samples, lowercase: bool) -> dict:
    from bearcat.data.preprocess import preprocess
    from bearcat.runtime import load_predictor

    predictor = load_predictor(bundle, runtime, threads)
    blobs = [Path(p).read_bytes() for p, _ in samples]
    results, times = timed(lambda b: predictor.predict([b])[0]["result"], blobs)
    arrays = [preprocess(b, predictor.pre)[None].astype(np.float32) for b in blobs]
    _, model_times = timed(predictor.model.predict_on_batch, arrays)
    return summary(f"bearcat/{runtime}", results, [t for _, t in samples], times, lowercase,
                   model_ms_p50=float(np.percentile(model_times, 50)))


def bench_ddddocr(samples, lowercase: bool) -> dict:
    try:
        import ddddocr
    except ImportError:
        sys.exit('ddddocr is not installed: pip install -e ".[bench]" (or pip install ddddocr)')
    ocr = ddddocr.DdddOcr(show_ad=False)
    blobs = [Path(p).read_bytes() for p, _ in samples]
    results, times = timed(ocr.classification, blobs)
    return summary("ddddocr", results, [t for _, t in samples], times, lowercase)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="export bundle folder (python -m bearcat.export)")
    ap.add_argument("--data", type=Path, default=None, help="folder of labelled images (LABEL_x.jpg)")
    ap.add_argument("--run-dir", type=Path, default=None,
                    help="the training run's output folder: its data set and split (overrides the split options)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    ap.add_argument("--lowercase", action="store_true", help="case-insensitive labels and scoring")
    ap.add_argument("--split-seed", type=int, default=0, help="as dataset.split_seed in training")
    ap.add_argument("--val-ratio", type=float, default=0.1, help="as dataset.val_ratio in training")
    ap.add_argument("--test-ratio", type=float, default=0.1, help="as dataset.test_ratio in training")
    ap.add_argument("--runtimes", default="onnx", help="comma-separated: onnx,tflite,tflite_int8,savedmodel,keras")
    ap.add_argument("--threads", type=int, default=1, help="threads per model call (0 = runtime's choice)")
    ap.add_argument("--ddddocr", action="store_true", help="also run ddddocr on the same images")
    ap.add_argument("--limit", type=int, default=0, help="use at most this many images (0 = all)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    if args.data is None and args.run_dir is None:
        ap.error("pass --data FOLDER or --run-dir TRAINING_OUTPUT_FOLDER")
    samples = images_of(args.data, args.split, args.lowercase, args.split_seed, args.val_ratio, args.test_ratio,
                        args.run_dir)
    if args.limit:
        samples = samples[:args.limit]
    if not samples:
        sys.exit(f"{args.data}: no images in split {args.split}")
    rows = [bench_bearcat(args.bundle, r.strip(), args.threads, samples, args.lowercase)
            for r in args.runtimes.split(",") if r.strip()]
    if args.ddddocr:
        rows.append(bench_ddddocr(samples, args.lowercase))
    name = args.data.name if args.data else Path(samples[0][0]).parent.name
    print(f"{name}, split {args.split}, {len(samples)} images, {os.cpu_count()} CPUs ({platform.machine()})")
    print(f"{'model':<21}{'accuracy':>9}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'model ms':>10}")
    for r in rows:
        model_ms = f"{r['model_ms_p50']:>10.2f}" if "model_ms_p50" in r else f"{'':>10}"
        print(f"{r['name']:<21}{r['accuracy']:>9.4f}{r['ms_p50']:>9.2f}{r['ms_p95']:>9.2f}{r['ms_mean']:>9.2f}{model_ms}")
    if args.ddddocr:
        ours, theirs = rows[0], rows[-1]
        print(f"latency ratio {ours['name']} / ddddocr (p50): {ours['ms_p50'] / theirs['ms_p50']:.3f}; "
              f"accuracy {ours['accuracy']:.4f} vs {theirs['accuracy']:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"data": name, "split": args.split, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
