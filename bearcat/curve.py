"""Learning curves from finished sweeps, put together: `python -m bearcat.curve
sweeps=[DIR,DIR,...] out=DIR`.

A sweep over the number of training images writes its curve when it ends (bearcat/sweeps.py).
To add sizes or seeds to a measured curve, run only the new jobs as another sweep, then join
the sweeps here (their folders, or their MLflow parent run ids when they ran elsewhere against a
shared tracking server): their `sweep_summary.csv` rows are read back and go through the same
`learning_curve` and `write_curve` as a single sweep's, so jobs with the same overrides (other
than size and seed) are one curve whichever sweep ran them. Nothing is trained; the joint
curve is also an MLflow run of its own (its files and `curve_*` metrics, as a sweep's parent).
"""
from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bearcat import CONFIG_DIR, overrides
from bearcat.bundle import is_run_id
from bearcat.sweeps import download_summary, learning_curve, log_curve, write_curve

log = logging.getLogger(__name__)
TEXT_COLUMNS = ("run_id", "status", "overrides")


def read_summary(path: Path) -> tuple[list[dict], str]:
    """A sweep's rows from its sweep_summary.csv (numbers as numbers, empty cells as None) and
    its optimized metric (the column after `overrides`)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    missing = [c for c in ("job", "status", "overrides") if c not in columns]
    if missing or len(columns) <= columns.index("overrides") + 1:
        raise ValueError(f"sweeps: {path} is no sweep summary (columns {columns}; wanted job, status, overrides "
                         "and the optimized metric after them)")

    def value(column: str, text: str):
        if column in TEXT_COLUMNS:
            return text
        if text == "":
            return None
        try:
            return int(text) if column == "job" else float(text)
        except ValueError:
            raise ValueError(f"sweeps: {path}, column {column}: {text!r} is not a number") from None

    return [{c: value(c, r[c]) for c in columns} for r in rows], columns[columns.index("overrides") + 1]


def summary_path(source: str, scratch: Path) -> Path:
    """The sweep_summary.csv of a sweep folder, or of a sweep's MLflow parent run id
    (downloaded into scratch)."""
    if is_run_id(source):
        return download_summary(str(source), scratch / str(source))
    path = Path(str(source)) / "sweep_summary.csv"
    if not path.is_file():
        raise FileNotFoundError(f"sweeps: {path} not found; a sweep writes it when it ends (python -m bearcat.train "
                                "-m ...). Give sweep folders or their MLflow parent run ids")
    return path


def join_curves(sweeps: list[str], out: Path, mlflow_cfg=None, log_run: bool = False) -> dict:
    """The learning curve of every finished job of these sweeps (folders or MLflow parent run
    ids, looked up in the `mlflow` config's store), written into `out` and, with log_run, logged
    as a run named curve-<out's name>: {"curve", "run_id"}."""
    if not sweeps:
        raise ValueError("sweeps=[]: give the sweep folders, e.g. sweeps=[outputs/multiruns/a,outputs/multiruns/b]")
    if log_run and mlflow_cfg is None:
        raise ValueError("join_curves: log_run needs the mlflow config (where to log)")
    from bearcat import tracking

    wanted = log_run or any(is_run_id(s) for s in sweeps)  # files only: no store touched
    experiment = tracking.setup(mlflow_cfg) if mlflow_cfg is not None and wanted else None
    rows, metric = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for source in sweeps:
            own, own_metric = read_summary(summary_path(source, Path(scratch)))
            rows += own
            metric = metric or own_metric
    curve = learning_curve(rows, metric)
    if not curve:
        raise ValueError(f"sweeps={list(map(str, sweeps))}: no group of finished jobs was measured at two sizes "
                         "(dataset.train_limit or dataset.train_size), so there is no curve")
    out.mkdir(parents=True, exist_ok=True)
    written = write_curve(curve, out)
    log.info("learning curve of %d job(s) from %d sweep(s): %s", len(rows), len(sweeps),
             ", ".join(str(out / name) for name in written))
    run_id = None
    if log_run:
        named = [str(s) if is_run_id(s) else str(Path(str(s)).resolve()) for s in sweeps]
        tags = {"bearcat.task": "curve", "bearcat.curve_sweeps": " ".join(named)}
        with tracking.start_run(experiment, run_name=f"curve-{out.resolve().name}", tags=tags) as run:
            run_id = run.info.run_id
            log_curve(run_id, curve, out, written)
        log.info("MLflow run %s: the joint curve's files and curve_* metrics", run_id)
    return {"curve": curve, "run_id": run_id}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="curve")
@overrides.plain_errors
def main(cfg: DictConfig) -> None:
    # one folder may be given bare (sweeps=DIR): its curve drawn again
    join_curves([cfg.sweeps] if isinstance(cfg.sweeps, str) else list(cfg.sweeps), Path(cfg.out), cfg.mlflow,
                log_run=bool(cfg.log_to_mlflow))


cli = overrides.command(main, "curve")  # `--help`, the key meant for a misspelt key, a line for Ctrl-C


if __name__ == "__main__":
    cli()
