"""Benchmark the backbone zoo on this machine: parameters, training and inference speed,
peak memory, and test accuracy after a fixed short training budget.

    python scripts/bench_backbones.py --folder ../shared/datasets/swust_cas_20191218 --minutes 3
    python scripts/bench_backbones.py                                # generated data, 1 min each
    python scripts/bench_backbones.py --minutes 0.3 --backbones cnn_small resnet_se   # quick check

Each backbone is trained with the same mode, optimizer and schedule, either on a small
generated set (default 1000 training images, mode ctc, in its own cache folder so the
default data set is left alone) or, with `--folder`, on a labelled folder through the
`swust` preset (its split, case folding and `ordinary` mode unless `--mode` says
otherwise). `trainer.max_minutes` anneals the default cosine schedule over the budget and
stops training when it is spent (mid-epoch for slow backbones; the table shows the epochs
started). Speeds: compiled training steps and batched inference at the configured
preprocessing size and training batch size. Every backbone runs in its own process, so
one that the kernel kills or that crashes natively is reported with its exit code and the
others still run; peak memory is that process's. Runs are logged to MLflow (experiment `bench_backbones`).
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
           ("train + eval wall s", "wall_s", ".0f"), ("peak memory MB", "peak_rss_mb", ".0f")]


def main():
    from bearcat import CONFIG_DIR
    from bearcat.benchmark import add_common_args, run_isolated, run_series

    backbones = sorted(p.stem for p in (Path(CONFIG_DIR) / "backbone").glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget per backbone (minutes)")
    parser.add_argument("--backbones", nargs="+", default=backbones, choices=backbones)
    parser.add_argument("--folder", type=Path, help="train on this labelled folder (swust preset) instead of generated data")
    parser.add_argument("--mode", help="the mode every backbone is trained with (default: ctc on generated "
                        "data, the preset's on --folder)")
    parser.add_argument("--train-size", type=int, default=1000, help="generated training images")
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--probe-steps", type=int, default=5, help="timed batches (trainer.batch_size) for the speed columns")
    parser.add_argument("--child-report", type=Path, help=argparse.SUPPRESS)  # set for the per-backbone process
    add_common_args(parser, ROOT / "outputs" / "bench" / "backbones")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.folder:
        data = ["experiment=swust", f"dataset.root={args.folder.resolve()}"]
    else:
        data = [f"paths.cache_dir={args.out / 'cache'}", f"dataset.train_size={args.train_size}",
                f"dataset.val_size={args.val_size}", f"dataset.test_size={args.test_size}"]
    mode = args.mode or (None if args.folder else "ctc")
    def overrides(backbone):
        return [*data, f"backbone={backbone}", *([f"mode={mode}"] if mode else []),
                "mlflow.experiment_name=bench_backbones", f"run_name=bench-{backbone}", *args.overrides]

    if args.child_report:
        run_series(args.backbones, overrides, lambda b: args.minutes, args.out, COLUMNS, "backbone",
                   args.probe_steps, report=args.child_report)
        return

    def child_argv(backbone, report):  # this command line, narrowed to one backbone (the last --backbones wins)
        return [sys.executable, __file__, *sys.argv[1:], "--backbones", backbone, "--child-report", str(report)]

    run_isolated(args.backbones, child_argv, args.out, COLUMNS, "backbone")


if __name__ == "__main__":
    main()
