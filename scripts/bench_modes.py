"""Benchmark the recognition modes side by side under the same wall-time budget.

    python scripts/bench_modes.py                          # ctc, ctc_tiny, ordinary: 6 min each; tiles: 5 min
    python scripts/bench_modes.py --minutes 1 --tiles-minutes 1 --modes ctc_tiny num_classes \
        --overrides paths.cache_dir=/tmp/small dataset.train_size=2000        # quick check on small data

Text modes train on the default generated task (conf/dataset/synthetic.yaml: 4 to 6
characters) with the default backbone, preprocessing, optimizer and schedule;
`num_classes` trains on the generated tiles set (experiment=tiles: dataset=tiles at a
64 x 64 input). For each mode the training step's speed is measured first, then
`trainer.max_minutes` anneals the default cosine schedule over the budget and stops
training when it is spent. Reported: test
accuracy (exact match; top-1 for num_classes), character accuracy (text modes), top-5
accuracy (num_classes), train images/s (fit: mean over the complete epochs, from MLflow;
probe: the compiled training step alone), inference ms/image (batched, test split), epochs
started and wall time (training + test evaluation). Runs are logged to MLflow
(experiment `bench_modes`).
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

TEXT_MODES = ("ctc", "ctc_tiny", "ordinary")
COLUMNS = [("mode", "mode", "s"), ("test accuracy", "test_accuracy", ".4f"),
           ("95% low", "test_accuracy_ci_low", ".4f"), ("95% high", "test_accuracy_ci_high", ".4f"),
           ("char accuracy", "test_char_accuracy", ".4f"), ("top-5 accuracy", "test_top5_accuracy", ".4f"),
           ("train images/s (fit)", "fit_train_images_per_s", ".0f"),
           ("train images/s (probe)", "train_images_per_s", ".0f"), ("inference ms/image", "test_ms_per_image", ".2f"),
           ("params", "params", ",d"),
           ("epochs", "epochs", "d"), ("train + eval wall s", "wall_s", ".0f")]


def main():
    from bearcat.benchmark import add_common_args, run_series

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0,
                        help="training budget per text mode (minutes); 6, the default trainer.max_minutes, leaves "
                             "room for generating the data within 10")
    parser.add_argument("--tiles-minutes", type=float, default=5.0, help="training budget for num_classes (minutes)")
    parser.add_argument("--modes", nargs="+", default=[*TEXT_MODES, "num_classes"],
                        choices=[*TEXT_MODES, "num_classes"])
    add_common_args(parser, ROOT / "outputs" / "bench" / "modes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def overrides(mode):
        chosen = ["experiment=tiles"] if mode == "num_classes" else [f"mode={mode}"]
        return [*chosen, "mlflow.experiment_name=bench_modes", f"run_name=bench-{mode}", *args.overrides]

    run_series(args.modes, overrides, lambda m: args.tiles_minutes if m == "num_classes" else args.minutes,
               args.out, COLUMNS, "mode")


if __name__ == "__main__":
    main()
