"""Benchmark rotation captchas: draw them, train `experiment=rotate`, and score how far the
model's angle is from the true one on captchas drawn with another seed.

    python scripts/bench_rotate.py                              # 30,000 captchas, 10 min of training
    python scripts/bench_rotate.py --step 10                    # 36 classes of 10 degrees
    python scripts/bench_rotate.py --count 300 --test-count 50 --minutes 1   # quick check

Reported: the run's test accuracy (the exact class, on its own 10% test split), then on
`--test-count` fresh captchas (seed 1, never seen in training) the error against each
captcha's exact angle (angles.csv), read two ways: the best class's angle (`result`), and
the answer's `angle` (the best class moved towards its neighbours by their probabilities).
For each: the share within 5, 10 and 15 degrees, the median and the 95th percentile error;
and ms per captcha (one at a time, Keras). Runs are logged to MLflow (experiment
`bench_rotate`).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOLERANCES = (5, 10, 15)


def summary(errors: list[float], prefix: str) -> dict:
    import numpy as np

    e = np.array(errors)
    out = {f"{prefix}_within_{t}deg": float((e <= t).mean()) for t in TOLERANCES}
    return {**out, f"{prefix}_median_deg": float(np.median(e)), f"{prefix}_p95_deg": float(np.percentile(e, 95))}


def angle_errors(bundle: Path, folder: Path) -> dict:
    """Errors of the best class and of the refined angle against angles.csv."""
    import numpy as np

    from bearcat.bundle import Predictor
    from bearcat.modes.num_classes import angle_between

    with open(folder / "angles.csv", newline="") as f:
        truth = {row["file"]: float(row["angle"]) for row in csv.DictReader(f)}
    predictor = Predictor(bundle)
    best, refined, times = [], [], []
    for name, angle in sorted(truth.items()):
        start = time.perf_counter()
        reading = predictor.predict([str(folder / name)])[0]
        times.append(time.perf_counter() - start)
        best.append(angle_between(float(reading["result"]), angle))
        refined.append(angle_between(reading["angle"], angle))
    return {"captchas": len(truth), **summary(best, "class"), **summary(refined, "angle"),
            "ms_per_captcha": 1000 * float(np.median(times[1:] or times))}


def main():
    from bearcat.benchmark import add_common_args, budgeted_run, generated, save_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=30000, help="captchas to train on (train, val and test splits)")
    parser.add_argument("--test-count", type=int, default=500, help="fresh captchas to measure the errors on")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget (minutes)")
    parser.add_argument("--step", type=int, default=5, help="degrees per class")
    add_common_args(parser, ROOT / "outputs" / "bench" / "rotate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data, fresh = args.out / f"data-{args.count}-step{args.step}", args.out / f"fresh-{args.test_count}-step{args.step}"
    start = time.monotonic()
    generated("make_rotate_captchas.py", data, "--count", str(args.count), "--seed", "0", "--step", str(args.step))
    draw_s = time.monotonic() - start
    generated("make_rotate_captchas.py", fresh, "--count", str(args.test_count), "--seed", "1", "--step", str(args.step))
    run_dir = args.out / f"{stamp}-run"
    row = budgeted_run(["experiment=rotate", f"dataset.root={data}", "mlflow.experiment_name=bench_rotate",
                        *args.overrides], args.minutes, run_dir, probe_steps=0)
    row["draw_s"] = draw_s
    row.update(angle_errors(run_dir / "model", fresh))
    save_report(args.out / f"{stamp}-report.json", row)
    keys = ["test_accuracy", "epochs", "draw_s", "wall_s", "captchas",
            *(k for k in row if k.startswith(("class_", "angle_"))), "ms_per_captcha"]
    print(json.dumps({k: row.get(k) for k in keys}, indent=1))
    print(f"report: {args.out / f'{stamp}-report.json'}")


if __name__ == "__main__":
    main()
