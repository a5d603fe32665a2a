"""Benchmark `preprocess.frames` on animated captchas whose characters blink.

    python scripts/bench_frames.py                                   # 6,000 GIFs, 3 min per setting
    python scripts/bench_frames.py --count 1000 --minutes 0.5 --frames first darkest   # quick check

Draws the captchas once with `scripts/make_gif_captchas.py` (any one frame shows half of
the text), then trains the default model on them as a folder (`dataset=folder`, the default
80/10/10 split) once per setting of `preprocess.frames`, each with the same training-time
budget, and prints the test accuracy of each. Runs are logged to MLflow (experiment
`bench_frames`).
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

COLUMNS = [("preprocess.frames", "frames", "s"), ("test accuracy", "test_accuracy", ".4f"),
           ("char accuracy", "test_char_accuracy", ".4f"), ("epochs", "epochs", "d"),
           ("train images/s (fit)", "fit_train_images_per_s", ".0f"), ("train + eval wall s", "wall_s", ".0f")]


def main():
    from bearcat.benchmark import add_common_args, generated, run_series
    from bearcat.data.preprocess import FRAME_MODES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=6000, help="captchas to draw (train, val and test together)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per setting (minutes)")
    parser.add_argument("--frames", nargs="+", default=["first", "darkest", "median"], choices=FRAME_MODES)
    add_common_args(parser, ROOT / "outputs" / "bench" / "frames")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    data = generated("make_gif_captchas.py", args.out / f"gif-{args.count}", "--count", str(args.count))

    def overrides(frames):
        return ["dataset=folder", f"dataset.root={data}", f"preprocess.frames={frames}",
                "mlflow.experiment_name=bench_frames", f"run_name=bench-frames-{frames}", *args.overrides]

    run_series(args.frames, overrides, lambda _: args.minutes, args.out, COLUMNS, "frames")


if __name__ == "__main__":
    main()
