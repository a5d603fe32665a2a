"""Benchmark the backbone zoo on this machine: parameters, training and inference speed,
and test accuracy after a fixed short training budget.

    python scripts/bench_backbones.py                                # every backbone, 1 min each
    python scripts/bench_backbones.py --minutes 0.3 --backbones cnn_small resnet_se   # quick check

Each backbone is trained with the same mode (default ctc), optimizer and schedule on a
small generated set (default 1000 training images, in its own cache folder so the
default data set is left alone); `trainer.max_minutes` anneals the default cosine
schedule over the budget and stops training when it is spent (mid-epoch for slow
backbones; the table shows the epochs started). Speeds: one compiled training step and
batched inference at the default preprocessing size, batch 64. Runs are logged to MLflow
(experiment `bench_backbones`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = [("backbone", "backbone", "s"), ("params", "params", ",d"),
           ("train images/s", "train_images_per_s", ".0f"), ("inference images/s", "infer_images_per_s", ".0f"),
           ("inference ms/image", "infer_ms_per_image", ".2f"), ("test accuracy", "test_accuracy", ".4f"),
           ("char accuracy", "test_char_accuracy", ".4f"), ("epochs", "epochs", "d"),
           ("train + eval wall s", "wall_s", ".0f")]


def main():
    from bearcat.benchmark import add_common_args, run_series

    backbones = sorted(p.stem for p in (ROOT / "conf" / "backbone").glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget per backbone (minutes)")
    parser.add_argument("--backbones", nargs="+", default=backbones, choices=backbones)
    parser.add_argument("--mode", default="ctc", help="the mode every backbone is trained with")
    parser.add_argument("--train-size", type=int, default=1000, help="generated training images")
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--probe-steps", type=int, default=5, help="timed batches of 64 for the speed columns")
    add_common_args(parser, ROOT / "outputs" / "bench" / "backbones")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    data = [f"paths.cache_dir={args.out / 'cache'}", f"dataset.train_size={args.train_size}",
            f"dataset.val_size={args.val_size}", f"dataset.test_size={args.test_size}"]
    def overrides(backbone):
        return [f"backbone={backbone}", f"mode={args.mode}", "mlflow.experiment_name=bench_backbones",
                f"run_name=bench-{backbone}", *data, *args.overrides]

    run_series(args.backbones, overrides, lambda b: args.minutes, args.out, COLUMNS, "backbone", args.probe_steps)


if __name__ == "__main__":
    main()
