"""Benchmark: the default `python -m bearcat.train` against two classic CTC baselines on
the same generated captchas and the same wall-time budget.

    python scripts/bench_ctc.py                    # 10-minute budget each (about 35 minutes)
    python scripts/bench_ctc.py --minutes 1        # quick check

1. Runs the default training command in a subprocess with an empty cache, so the wall
   time includes data generation; reads its test accuracy back from MLflow.
2. On the same cached data and the same budget (minus nothing: baselines get the full
   budget for training alone), trains
   - a keras.io-style OCR model (2 conv blocks, dense, 2 BiLSTM, CTC), and
   - a plain CRNN (3 conv-BN-ReLU-pool blocks, one BiGRU, CTC),
   with Adam at their usual 1e-3, and scores them with the default model's own decoder (`mode.decoder`).
3. Measures the input pipeline's images/s alone against the training step's images/s.
4. For every model, also the test accuracy with `O` and `0` counted as one character: the
   captcha library crops each glyph to its ink and stretches it to the font's (monospace)
   box, so its O and 0 become similar ovals (not identical: README "Benchmark: the default
   CTC model"); the gap between the two accuracies is what that similarity costs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_default(workdir: Path, minutes: float, extra: list[str]) -> dict:
    """The default command, timed from start to finish (generation included)."""
    uri = f"sqlite:///{workdir}/mlflow.db"
    cmd = [sys.executable, "-m", "bearcat.train", f"paths.cache_dir={workdir}/cache",
           f"hydra.run.dir={workdir}/run", f"mlflow.artifact_root={workdir}/artifacts", "trainer.verbose=2",
           *extra]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                          capture_output=True, text=True, timeout=minutes * 60 * 3 + 600)
    wall = time.monotonic() - start
    ended = time.time()
    if proc.returncode != 0:
        sys.exit(f"default training failed:\n{proc.stderr[-3000:]}")
    # seconds between the run's last log line ("finished: ...") and the process's exit
    done = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[bearcat\.train\]\[INFO\] - finished:",
                     proc.stdout + proc.stderr)
    exit_s = ended - datetime.strptime(done.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if done else None
    import mlflow

    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["bearcat"], order_by=["start_time DESC"], max_results=1)
    metrics = {k[len("metrics."):]: float(run[k][0]) for k in run.columns if k.startswith("metrics.")}
    from bearcat.benchmark import epochs_run

    return {"wall_s": wall, "exit_s": exit_s, **metrics, **epochs_run(run["run_id"][0])}


def keras_io_model(shape, classes):
    import keras
    from keras import layers

    inp = keras.Input(shape)
    x = layers.Rescaling(1 / 255.0)(inp)
    x = layers.Permute((2, 1, 3))(x)  # width first, as in the keras.io example
    for f in (32, 64):
        x = layers.Conv2D(f, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Reshape((x.shape[1], x.shape[2] * x.shape[3]))(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Bidirectional(layers.LSTM(128, return_sequences=True, dropout=0.25))(x)
    x = layers.Bidirectional(layers.LSTM(64, return_sequences=True, dropout=0.25))(x)
    return keras.Model(inp, layers.Dense(classes, activation="softmax")(x), name="keras_io_ocr")


def plain_crnn(shape, classes):
    import keras
    from keras import layers

    inp = keras.Input(shape)
    x = layers.Rescaling(1 / 255.0)(inp)
    for f, pool in ((64, (2, 2)), (128, (2, 2)), (256, (2, 1))):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(pool)(x)
    x = layers.Permute((2, 1, 3))(x)
    x = layers.Reshape((x.shape[1], x.shape[2] * x.shape[3]))(x)
    x = layers.Bidirectional(layers.GRU(128, return_sequences=True))(x)
    return keras.Model(inp, layers.Dense(classes, activation="softmax")(x), name="plain_crnn")


def train_baseline(build, data, mode, minutes: float, batch_size: int = 64) -> dict:
    import keras

    from bearcat.data.pipeline import make_dataset
    from bearcat.experiment import predict, score

    keras.utils.set_random_seed(42)
    train, val, test = data
    model = build(train.images.shape[1:], mode.vocab.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=mode.loss())
    # endless, like Bearcat's own training: one iterator, no stall at each epoch's start
    ds = make_dataset(train.images, mode.encode(train.labels), batch_size, shuffle=True, seed=42, repeat=True)
    best = {"val_accuracy": -1.0, "weights": None}

    class KeepBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            results, _ = predict(self.model, mode, val.images)
            acc = score(mode, val.labels, results)["accuracy"]
            print(f"  {self.model.name} epoch {epoch + 1}: val_accuracy {acc:.4f}", flush=True)
            if acc > best["val_accuracy"]:
                best.update(val_accuracy=acc, weights=self.model.get_weights())

    class StopOnTime(keras.callbacks.Callback):  # checked every step: an epoch may outlast the budget
        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() - start > minutes * 60:
                self.model.stop_training = True

    start = time.monotonic()
    model.fit(ds, epochs=1000, steps_per_epoch=-(-len(train.images) // batch_size),
              callbacks=[StopOnTime(), KeepBest()], verbose=0)
    elapsed = time.monotonic() - start
    if best["weights"] is not None:
        model.set_weights(best["weights"])
    results, ms = predict(model, mode, test.images)
    return {"train_s": elapsed, "params": model.count_params(), "test_ms_per_image": ms,
            "test_accuracy_o_is_0": folded_accuracy(test.labels, [r["result"] for r in results]),
            **{f"test_{k}": v for k, v in score(mode, test.labels, results).items()}}


def folded_accuracy(truths: list[str], preds: list[str], same: str = "O0") -> float:
    """Exact-match accuracy with the characters of `same` counted as one."""
    table = str.maketrans(same[1:], same[0] * (len(same) - 1))
    return sum(t.translate(table) == p.translate(table) for t, p in zip(truths, preds)) / max(1, len(truths))


def pipeline_speed(images, targets, batch_size=64, batches=300) -> float:
    from bearcat.data.pipeline import make_dataset

    ds = make_dataset(images, targets, batch_size, shuffle=True, repeat=True)
    it = iter(ds)
    next(it)
    start = time.monotonic()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.monotonic() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time budget per model")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--default-overrides", nargs="*", default=[],
                        help="extra overrides for the default run (e.g. a smaller dataset for a quick check)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_ctc_"))
    print(f"workdir {workdir}", flush=True)

    default = run_default(workdir, args.minutes, args.default_overrides)
    interval = (f" (95% interval {default['test_accuracy_ci_low']:.4f}-{default['test_accuracy_ci_high']:.4f})"
                if "test_accuracy_ci_low" in default else "")
    print(f"default: wall {default['wall_s']:.0f}s (generation included), test_accuracy "
          f"{default['test_accuracy']:.4f}{interval}, char {default['test_char_accuracy']:.4f}, "
          f"cer {default['test_cer']:.4f}"
          + (f"; the process exited {default['exit_s']:.1f} s after its last log line" if default["exit_s"] else ""),
          flush=True)

    from bearcat.benchmark import compose_train
    from bearcat.bundle import load_keras
    from bearcat.experiment import build_vocab_and_mode, load_data, load_sources, predict

    cfg = compose_train([f"paths.cache_dir={workdir}/cache", f"paths.output_dir={workdir}/x", *args.default_overrides])
    splits = load_sources(cfg)  # cached by the default run: no regeneration
    mode = build_vocab_and_mode(cfg, splits)
    data = load_data(cfg, splits, mode)
    train, val, test = (data.loaded[s] for s in ("train", "val", "test"))
    pipe = pipeline_speed(train.images, mode.encode(train.labels), cfg.trainer.batch_size)
    default_model = load_keras(workdir / "run" / "model" / "model.keras")
    default_results, _ = predict(default_model, mode, test.images)
    default["test_accuracy_o_is_0"] = folded_accuracy(test.labels, [r["result"] for r in default_results])
    report = {"default": default, "pipeline_images_per_s": pipe}
    epochs_done = default.get("data_train_images", len(train))
    if not args.skip_baselines:
        for name, build in (("keras_io", keras_io_model), ("plain_crnn", plain_crnn)):
            print(f"training {name} for {args.minutes} min", flush=True)
            report[name] = train_baseline(build, (train, val, test), mode, args.minutes)
    print("\n=== results ===")
    print(f"{'model':<12} {'test_acc':>9} {'O=0 acc':>9} {'char_acc':>9} {'cer':>7} {'time_s':>8}")
    print(f"{'bearcat':<12} {default['test_accuracy']:>9.4f} {default['test_accuracy_o_is_0']:>9.4f} "
          f"{default['test_char_accuracy']:>9.4f} {default['test_cer']:>7.4f} {default['wall_s']:>8.0f}"
          f"  (wall, generation included)")
    for name in ("keras_io", "plain_crnn"):
        if name in report:
            r = report[name]
            ratio = (f"{default['test_accuracy'] / r['test_accuracy']:.2f}" if r["test_accuracy"] > 0
                     else "n/a (it read no captcha)")
            print(f"{name:<12} {r['test_accuracy']:>9.4f} {r['test_accuracy_o_is_0']:>9.4f} "
                  f"{r['test_char_accuracy']:>9.4f} {r['test_cer']:>7.4f} "
                  f"{r['train_s']:>8.0f}  (training only)  bearcat/this accuracy ratio {ratio}")
    train_ips = default.get("fit_train_images_per_s")  # complete epochs only: the budget cuts the last one short
    print(f"input pipeline alone: {pipe:.0f} images/s", end="")
    if train_ips:
        print(f"; training step: {train_ips:.0f} images/s; pipeline/training ratio {pipe / train_ips:.1f}")
    else:
        print()
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"report: {workdir / 'report.json'}  (epochs' train images: {epochs_done})")


if __name__ == "__main__":
    main()
