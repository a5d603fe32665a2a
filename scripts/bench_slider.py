"""Benchmark slider captchas: draw them, train `experiment=slider`, and score how far the
found gap is from the true one on captchas drawn with another seed.

    python scripts/bench_slider.py                              # 3,000 captchas, 15 min of training
    python scripts/bench_slider.py --decoys 1                   # with a fainter fake gap in each
    python scripts/bench_slider.py --count 300 --test-count 50 --minutes 1   # quick check

Reported: the run's test mAP and mAP50 (COCO, on its own 10% test split), then on
`--test-count` fresh captchas (seed 1, never seen in training): the share where the best box's
x1 is within 2, 4 and 8 pixels of the gap's, the median and worst error, the share with no
box at all, and ms per captcha (one at a time, Keras). The x1 is the answer a slider needs:
how far to drag, plus where the piece starts. Runs are logged to MLflow (experiment
`bench_slider`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOLERANCES = (2, 4, 8)


def offsets(bundle: Path, folder: Path) -> dict:
    """How far the best box's x1 lands from the gap's, on every captcha of `folder`."""
    import numpy as np

    from bearcat.data.voc import read_voc
    from bearcat.detection.predictor import Detector

    detector = Detector(bundle)
    errors, missing, times = [], 0, []
    for xml in sorted(folder.glob("*.xml")):
        record = read_voc(xml)
        start = time.perf_counter()
        boxes = detector.predict([record.path])[0]["boxes"]
        times.append(time.perf_counter() - start)
        if not boxes:
            missing += 1
            continue
        best = max(boxes, key=lambda b: b["score"])
        errors.append(abs(best["x1"] - record.objects[0].box[0]))
    n = len(times)
    errors_arr = np.array(errors)
    out = {f"within_{t}px": float((errors_arr <= t).sum() / n) for t in TOLERANCES}
    return {"captchas": n, **out, "no_box": missing / n,
            "median_error_px": float(np.median(errors_arr)) if errors else None,
            "max_error_px": float(errors_arr.max()) if errors else None,
            "ms_per_captcha": 1000 * float(np.median(times[1:] or times))}


def main():
    from bearcat.benchmark import add_common_args, budgeted_run, generated, save_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000, help="captchas to train on (train, val and test splits)")
    parser.add_argument("--test-count", type=int, default=300, help="fresh captchas to measure the offsets on")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget (minutes)")
    parser.add_argument("--decoys", type=int, default=0, help="fake gaps per captcha (training and fresh captchas)")
    add_common_args(parser, ROOT / "outputs" / "bench" / "slider")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tag = f"-decoys{args.decoys}" if args.decoys else ""
    data, fresh = args.out / f"data-{args.count}{tag}", args.out / f"fresh-{args.test_count}{tag}"
    for folder, count, seed in ((data, args.count, 0), (fresh, args.test_count, 1)):
        generated("make_slider_captchas.py", folder, "--count", str(count), "--seed", str(seed), "--decoys", str(args.decoys))
    run_dir = args.out / f"{stamp}-run"
    row = budgeted_run(["experiment=slider", f"dataset.root={data}", "mlflow.experiment_name=bench_slider",
                        *args.overrides], args.minutes, run_dir, probe_steps=0)
    row.update(offsets(run_dir / "model", fresh))
    save_report(args.out / f"{stamp}-report.json", row)
    keys = ["test_map", "test_map50", "epochs", "wall_s", "captchas", *(f"within_{t}px" for t in TOLERANCES),
            "no_box", "median_error_px", "max_error_px", "ms_per_captcha"]
    print(json.dumps({k: row.get(k) for k in keys}, indent=1))
    print(f"report: {args.out / f'{stamp}-report.json'}")


if __name__ == "__main__":
    main()
