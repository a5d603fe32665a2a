"""Helpers shared by scripts/bench_modes.py and scripts/bench_backbones.py: compose a
training config, time a model's training step and its inference, run one training under
a time budget and print a table."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

log = logging.getLogger(__name__)
EPOCH_CAP = 1000  # the time budget, not the epoch count, ends a benchmark run


def compose_train(overrides: list[str]) -> DictConfig:
    """The train config with these overrides, outside a Hydra app (paths.output_dir must be set)."""
    from bearcat.overrides import compose_config

    return compose_config("train", overrides)


def random_batch_model(overrides: list[str], count: int | None = None):
    """(cfg, mode, model, images, labels): the configured model, built without data, and
    `count` (default: one batch) random images and labels of its input size and charset."""
    from bearcat.data.labels import Vocabulary
    from bearcat.experiment import build_model, mode_options
    from bearcat.modes import build_mode

    cfg = compose_train(["paths.output_dir=/tmp/bench_step", *overrides])
    charset = str(cfg.dataset.get("charset") or "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    length = int(cfg.mode.get("max_length") or cfg.dataset.get("max_length") or 6)
    mode = build_mode(cfg.mode.name, Vocabulary(charset), length, **mode_options(cfg, cfg.dataset.get("train_size")))
    rng = np.random.default_rng(0)
    pre = cfg.preprocess
    count = int(count or cfg.trainer.batch_size)
    images = rng.integers(0, 256, (count, pre.height, pre.width, pre.channels)).astype(np.uint8)
    labels = ["".join(rng.choice(list(charset), length)) for _ in range(count)]
    return cfg, mode, build_model(cfg, mode), images, labels


def speed(model, loss, images: np.ndarray, targets: np.ndarray, batch_size: int, steps: int = 10,
          build_optimizer: bool = True) -> dict:
    """Images/s of the compiled training step and of batched inference, and parameters,
    after one warm-up step (graph tracing) each; `first_step_s`: compile + that first step.
    `build_optimizer=False` leaves the optimizer's slots to the traced step, as Keras does."""
    import keras

    from bearcat.experiment import compile_model

    start = time.perf_counter()
    optimizer = keras.optimizers.Adam(1e-3)
    if build_optimizer:
        compile_model(model, optimizer, loss)
    else:
        model.compile(optimizer=optimizer, loss=loss)
    x, y = images[:batch_size].astype(np.float32), targets[:batch_size]
    model.train_on_batch(x, y)
    first_step = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    train_ips = steps * len(x) / (time.perf_counter() - start)
    model.predict_on_batch(x)
    start = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    infer_ips = steps * len(x) / (time.perf_counter() - start)
    return {"params": int(model.count_params()), "first_step_s": first_step, "train_images_per_s": train_ips,
            "infer_images_per_s": infer_ips, "infer_ms_per_image": 1000.0 / infer_ips}


def probe(cfg: DictConfig, steps: int = 10) -> dict:
    """Build the configured model on the configured data and time it (see `speed`)."""
    import keras

    from bearcat.experiment import build_model, build_vocab_and_mode, load_data, load_sources

    splits = load_sources(cfg)
    mode = build_vocab_and_mode(cfg, splits)
    train_split = load_data(cfg, splits, mode, only=("train",)).loaded["train"]
    keras.backend.clear_session()
    model = build_model(cfg, mode)
    out = speed(model, mode.loss(), train_split.images, mode.encode(train_split.labels),
                int(cfg.trainer.batch_size), steps)
    keras.backend.clear_session()
    return {**out, "train_images": len(train_split)}


def budgeted_run(overrides: list[str], minutes: float, output_dir: Path, probe_steps: int = 10) -> dict:
    """Probe the speed (`probe_steps=0`: not), then train for `minutes` of training time:
    with the default cosine schedule, `trainer.max_minutes` anneals the learning rate over the
    budget and stops training when it is spent (mid-epoch if need be), so the epoch cap is
    only a ceiling. Returns the test metrics from train() plus the speeds and the wall time."""
    import keras

    from bearcat.train import train

    base = [f"paths.output_dir={output_dir}", "trainer.verbose=2", *overrides]
    measured = probe(compose_train(base), probe_steps) if probe_steps else {}
    cfg = compose_train([*base, f"trainer.epochs={EPOCH_CAP}", f"trainer.max_minutes={minutes}"])
    start = time.monotonic()
    metrics = train(cfg)
    wall = time.monotonic() - start
    keras.backend.clear_session()
    return {**measured, **metrics, "budget_minutes": minutes, "wall_s": wall, **epochs_run(metrics["mlflow_run_id"])}


def generated(script: str, folder: Path, *args: str) -> Path:
    """`folder`, drawn by `python scripts/<script> --out folder <args>` unless it is already
    there: a benchmark draws its captchas once and reuses them."""
    import subprocess
    import sys

    if not folder.is_dir():
        scripts = Path(__file__).resolve().parents[1] / "scripts"
        subprocess.run([sys.executable, str(scripts / script), "--out", str(folder), *args], check=True)
    return folder


def epochs_run(run_id: str) -> dict:
    """Epochs started and the mean training speed of the complete ones (all but the last,
    which the time budget usually cuts short), from the run's MLflow history."""
    import mlflow

    client = mlflow.MlflowClient()
    history = sorted(client.get_metric_history(run_id, "train_images_per_s"), key=lambda m: m.step)
    complete = [m.value for m in history[:-1]]
    return {"epochs": len(history), "fit_train_images_per_s": float(np.mean(complete)) if complete else None}


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table: columns are (header, key, format)."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else format(value, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_report(path: Path, report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")


def add_common_args(parser, out: Path) -> None:
    parser.add_argument("--out", type=Path, default=out, help="folder for the runs and the JSON report")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra config overrides for every run (key=value)")


def run_series(names: list[str], overrides_for, minutes_for, out: Path, columns, key: str,
               probe_steps: int = 10, report: Path | None = None) -> list[dict]:
    """One budgeted run per name; the report is rewritten after each, so a stopped
    benchmark keeps the figures it has; one failing run does not lose the others."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = report or out / f"{stamp}-report.json"
    rows = []
    for name in names:
        minutes = minutes_for(name)
        print(f"\n=== {name}: {minutes} min ===", flush=True)
        try:
            result = budgeted_run(overrides_for(name), minutes, out / f"{stamp}-{name}", probe_steps)
            result["peak_rss_mb"] = peak_rss_mb()
        except Exception as err:
            log.exception("%s failed", name)
            result = {"error": f"{type(err).__name__}: {err}"}
        rows.append({key: name, **result})
        save_report(report, rows)
        print(table(rows[-1:], columns), flush=True)
    print_results(rows, columns, report)
    return rows


def print_results(rows: list[dict], columns, report: Path) -> None:
    print("\n=== results ===")
    print(table(rows, columns))
    print(f"report: {report}")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (per run only when each run has its
    own process: see run_isolated)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_isolated(names: list[str], child_argv, out: Path, columns, key: str) -> list[dict]:
    """Each name in its own Python process (`child_argv(name, report_path)` is its command
    line, which must write run_series' JSON report there): a run that the kernel kills
    (out of memory) or that crashes natively is reported with its exit code instead of
    ending the whole benchmark silently, and each run's peak memory is its own."""
    import subprocess

    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = out / f"{stamp}-report.json"
    rows = []
    for name in names:
        child_report = out / f"{stamp}-{name}.json"
        proc = subprocess.run(child_argv(name, child_report))
        if child_report.exists():
            rows.extend(json.loads(child_report.read_text(encoding="utf-8")))
        else:
            why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
            rows.append({key: name, "error": f"process ended without a report ({why})"})
            print(f"{name}: {rows[-1]['error']}", flush=True)
        save_report(report, rows)
    print_results(rows, columns, report)
    return rows
