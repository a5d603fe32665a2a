"""Shared test fixtures: every test gets its own output folder, cache and MLflow store,
so tests never touch outputs/ or each other."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
SHARED = ROOT.parent / "shared" / "datasets"


def ctrl_c_as_from_a_terminal() -> None:
    """preexec_fn of a child sent SIGINT: Python's own Ctrl-C handling, as under a terminal.
    A child inherits an ignored SIGINT (pytest started as a shell script's background job)
    and would go on ignoring it, as Bearcat then does on purpose."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def last_checkpoint(folder: Path):
    """(model weights, optimizer arrays) of a run's last epoch checkpoint."""
    import h5py
    import numpy as np

    from bearcat.callbacks import read_state

    ckpt = folder / "checkpoints" / read_state(folder / "checkpoints")["last"]
    arrays = []
    with h5py.File(ckpt / "model.weights.h5") as f:  # the layers' weights (the file also holds the optimizer's)
        f["layers"].visititems(lambda name, item: arrays.append(np.asarray(item))
                               if isinstance(item, h5py.Dataset) else None)
    with np.load(ckpt / "optimizer.npz") as saved:
        return arrays, [saved[k] for k in saved.files]


@pytest.fixture(scope="session")
def light_python(tmp_path_factory) -> Path:
    """A virtual environment with Bearcat installed as the README's "Deploy without
    TensorFlow" says: the package without its dependencies, then requirements-light.txt.
    Built once per test session (test_serve, test_rotate and test_click_train use it): the
    xdist workers share it, the first to need it builds it while the others wait."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's folder sits in the session's own
        shared = shared.parent
    venv = shared / "light_venv"
    with open(shared / "light_venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (venv / "built").is_file():
            shutil.rmtree(venv, ignore_errors=True)  # half built by a worker whose build failed
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            for args in (["--no-deps", str(ROOT)], ["-r", str(ROOT / "requirements-light.txt")]):
                done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
                                      capture_output=True, text=True)
                assert done.returncode == 0, done.stderr[-3000:]
            (venv / "built").touch()
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty sqlite MLflow store, created (schema migrations run) once per worker process:
    MLflow spends seconds migrating every new store, and most tests train into their own."""
    import mlflow

    path = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tmp_store(tmp_path, monkeypatch, empty_store):
    """A private sqlite MLflow store (a copy of `empty_store`); MLFLOW_TRACKING_URI points at it."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def make_cfg(tmp_path, tmp_store):
    """compose(config_name, overrides) with the run's paths pointed into tmp_path."""

    def _make(overrides=(), config_name="train", output="run"):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=[
                f"paths.output_dir={tmp_path / output}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                f"mlflow.artifact_root={tmp_path / 'artifacts'}",
                *overrides,
            ])
        return cfg

    return _make


@pytest.fixture(scope="session")
def swust_copy(tmp_path_factory):
    """A copy of 120 images of a shared real data set (never modify the original)."""
    src = SHARED / "swust_cas_20200226"
    if not src.is_dir():
        pytest.fail(f"shared data set missing: {src}")
    dst = tmp_path_factory.mktemp("swust")
    for path in sorted(src.iterdir())[:120]:
        shutil.copy2(path, dst / path.name)
    return dst


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny training run (debug=fast) shared by the export / serve / evaluate tests:
    {"run_id", "output_dir", "tracking_uri", "root"} with its own MLflow store."""
    from bearcat.train import train

    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[
                "debug=fast", f"paths.output_dir={root / 'run'}", f"paths.cache_dir={root / 'cache'}",
                f"mlflow.artifact_root={root / 'artifacts'}"])
        metrics = train(cfg)
    return {"run_id": metrics["mlflow_run_id"], "output_dir": root / "run", "tracking_uri": uri, "root": root}


@pytest.fixture(scope="session")
def exported(trained_run):
    """`trained_run` exported in every format (parity-checked) and registered in MLflow as
    "bearcat-test": {"dir", "summary", "model_name"} plus trained_run's keys."""
    from bearcat.export import export

    root = trained_run["root"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name="export", overrides=[
                f"run_id={trained_run['run_id']}", "format=all", f"output_dir={root / 'export'}",
                "registered_model_name=bearcat-test", f"paths.output_dir={root / 'export_job'}",
                f"paths.cache_dir={root / 'cache'}", f"mlflow.artifact_root={root / 'artifacts'}"])
        summary = export(cfg)
    return {**trained_run, "dir": root / "export", "summary": summary, "model_name": "bearcat-test"}
