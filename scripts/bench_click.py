"""Benchmark click captchas end to end: generate, train the character recogniser on the
generator's crops, train the EfficientDet detector, score on the test split.

    python scripts/bench_click.py                      # defaults: recogniser 8 min, detector 40 min
    python scripts/bench_click.py --recogniser outputs/bench/click/<stamp>-recogniser/model   # reuse one
    python scripts/bench_click.py --recogniser-minutes 1 --detector-minutes 2 \
        --overrides dataset.train_size=200             # quick check

Both models train with `trainer.max_minutes` (the cosine schedule anneals over the
budget). Reported: recogniser test accuracy (top-1 on crops), detector test mAP@[.5:.95]
and mAP50 per character (detector boxes named by the recogniser) and class-agnostic
(boxes only), click-solve success (every prompted character clicked inside its true box,
in order), inference ms/image (detector + recogniser, test split), and wall times of
each stage. Runs are logged to MLflow (experiment `bench_click`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = [("stage", "stage", "s"), ("test mAP", "test_map", ".4f"), ("test mAP50", "test_map50", ".4f"),
           ("mAP boxes only", "test_map_boxes", ".4f"), ("mAP50 boxes only", "test_map50_boxes", ".4f"),
           ("click success", "test_click_success", ".4f"), ("test accuracy", "test_accuracy", ".4f"),
           ("ms/image", "test_ms_per_image", ".1f"), ("epochs", "epochs", "d"), ("wall s", "wall_s", ".0f")]


def main():
    from hydra.utils import instantiate

    from bearcat.benchmark import EPOCH_CAP, add_common_args, compose_train, epochs_run, save_report, table
    from bearcat.train import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recogniser-minutes", type=float, default=8.0, help="recogniser training budget (minutes)")
    parser.add_argument("--detector-minutes", type=float, default=40.0, help="detector training budget (minutes)")
    parser.add_argument("--recogniser", default=None,
                        help="use this recogniser bundle (e.g. from an earlier run) instead of training one")
    add_common_args(parser, ROOT / "outputs" / "bench" / "click")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = args.out / f"{stamp}-report.json"
    common = ["mlflow.experiment_name=bench_click", "trainer.verbose=2", f"trainer.epochs={EPOCH_CAP}"]
    rows = []

    def stage(name: str, overrides: list[str]) -> dict:
        print(f"\n=== {name} ===", flush=True)
        start = time.monotonic()
        metrics = train(compose_train([f"paths.output_dir={args.out / f'{stamp}-{name}'}", *common, *overrides]))
        row = {"stage": name, **metrics, "wall_s": time.monotonic() - start, **epochs_run(metrics["mlflow_run_id"])}
        rows.append(row)
        save_report(report, rows)
        print(table([row], COLUMNS), flush=True)
        return row

    begin = time.monotonic()
    data_cfg = compose_train(["experiment=click", "paths.output_dir=/tmp", *args.overrides])
    splits = instantiate(data_cfg.dataset, cache_dir=data_cfg.paths.cache_dir, _convert_="all")
    rows.append({"stage": "generate", "wall_s": time.monotonic() - begin})
    recogniser = args.recogniser or args.out / f"{stamp}-recogniser" / "model"
    if not args.recogniser:
        stage("recogniser", ["mode=num_classes", "dataset=folder", f"dataset.root={splits.crops_root}",
                             "preprocess.height=48", "preprocess.width=48", "preprocess.channels=1",
                             "optimized_metric=test_accuracy", "run_name=click-recogniser",
                             f"trainer.max_minutes={args.recogniser_minutes}"])
    stage("detector", ["experiment=click", f"mode.recogniser={recogniser}",
                       f"trainer.max_minutes={args.detector_minutes}", *args.overrides])
    rows.append({"stage": "total", "wall_s": time.monotonic() - begin})
    save_report(report, rows)
    print("\n=== results ===")
    print(table(rows, COLUMNS))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
