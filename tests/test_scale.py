"""Scale: tf.distribute strategies (mirrored on two logical CPU devices), the chief rule of
multi-worker training, TensorBoard logs in MLflow, and logging to a live `mlflow server`."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
from omegaconf import OmegaConf

from bearcat.distribute import build_strategy, is_chief, strategy_name
from bearcat.experiment import build_vocab_and_mode, load_data, load_sources
from bearcat.train import train
from tests.conftest import ROOT

TINY = ["debug=fast", "dataset.train_size=32", "dataset.val_size=8", "dataset.test_size=8",
        "trainer.bn_calibration_images=0", "trainer.max_minutes=null"]


def env(**extra):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def test_mirrored_strategy_trains_on_two_cpu_replicas(tmp_path):
    # Splitting the CPU must happen before TensorFlow starts: a fresh process, the real CLI.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "bearcat.train", *TINY, "trainer.strategy=mirrored", "trainer.cpu_devices=2",
           "trainer.epochs=2", f"paths.cache_dir={tmp_path / 'cache'}",
           f"mlflow.artifact_root={tmp_path / 'artifacts'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env(MLFLOW_TRACKING_URI=uri))
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("bearcat").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["replicas"] == 2          # one model replica per logical CPU
    assert run.data.params["trainer.strategy"] == "mirrored"
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 2 and all(0 < v < 1e4 for v in losses)  # two synchronised epochs, finite loss
    assert (tmp_path / "run" / "model" / "model.keras").is_file()


def test_multi_worker_trains_with_two_workers_on_loopback(make_cfg, tmp_path):
    # Two processes, one TF_CONFIG each, as two machines would run it; only worker 0 logs to
    # the shared store, worker 1 into its private worker_mlflow.db.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [*TINY, "trainer.strategy=multi_worker", "trainer.epochs=2", f"paths.cache_dir={tmp_path / 'cache'}",
              f"mlflow.artifact_root={tmp_path / 'artifacts'}"]
    cfg = make_cfg(TINY)  # generate and decode once here, so the two workers only read the cache
    splits = load_sources(cfg)
    load_data(cfg, splits, build_vocab_and_mode(cfg, splits))
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    procs = [subprocess.Popen([sys.executable, "-m", "bearcat.train", *common, f"hydra.run.dir={tmp_path / f'w{i}'}"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env(MLFLOW_TRACKING_URI=uri,
                                      TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})))
             for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("bearcat").experiment_id])  # the chief's only
    assert run.info.status == "FINISHED" and run.data.metrics["replicas"] == 2
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 2 and all(0 < v < 1e4 for v in losses)
    assert "test_accuracy" in run.data.metrics
    worker = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'w1' / 'worker_mlflow.db'}")
    [w1] = worker.search_runs([worker.get_experiment_by_name("bearcat").experiment_id])
    w1_losses = [m.value for m in sorted(worker.get_metric_history(w1.info.run_id, "loss"), key=lambda m: m.step)]
    assert w1_losses == pytest.approx(losses, rel=1e-5)  # one synchronised model: the same loss on both workers


def test_mirrored_step_equals_the_single_device_step():
    # The same batch, weights and optimizer: one step on 2 replicas (each half the batch,
    # gradients all-reduced) must give the weights one step on one device gives.
    code = """
import numpy as np, keras, tensorflow as tf
from omegaconf import OmegaConf
from bearcat.distribute import build_strategy
trainer = OmegaConf.create({"strategy": "mirrored", "cpu_devices": 2, "devices": None})
mirrored = build_strategy(trainer)
x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32"); y = x @ np.arange(5, dtype="float32")[:, None]
def step(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)])
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    start = [np.asarray(w) for w in m.get_weights()]
    m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return start, [np.asarray(w) for w in m.get_weights()]
(start, one), (_, two) = step(tf.distribute.get_strategy()), step(mirrored)
print("REPLICAS", mirrored.num_replicas_in_sync)
print("MAXDIFF", max(float(np.abs(a - b).max()) for a, b in zip(one, two)))
print("MOVED", max(float(np.abs(a - b).max()) for a, b in zip(one, start)))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(line.split() for line in proc.stdout.splitlines() if line.split()[0] in {"REPLICAS", "MAXDIFF", "MOVED"})
    assert out["REPLICAS"] == "2"
    assert float(out["MOVED"]) > 1e-3  # the step changed the weights: the comparison below means something
    assert float(out["MAXDIFF"]) < 1e-5


def test_only_the_chief_logs():
    assert is_chief("")  # one machine
    two = {"cluster": {"worker": ["a:1", "b:1"]}}
    assert is_chief(json.dumps({**two, "task": {"type": "worker", "index": 0}}))
    assert not is_chief(json.dumps({**two, "task": {"type": "worker", "index": 1}}))
    with_chief = {"cluster": {"chief": ["c:1"], "worker": ["a:1"]}}
    assert is_chief(json.dumps({**with_chief, "task": {"type": "chief", "index": 0}}))
    assert not is_chief(json.dumps({**with_chief, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="TF_CONFIG"):
        is_chief("{not json")


def test_bad_strategy_settings_name_the_key(monkeypatch):
    # unset or null is the default, in the early check (bearcat.train, before TensorFlow) as here
    assert [strategy_name(OmegaConf.create(t)) for t in ({}, {"strategy": None}, {"strategy": "mirrored"})] == \
        ["default", "default", "mirrored"]
    with pytest.raises(ValueError, match="trainer.strategy=horovod: use one of default, mirrored, multi_worker"):
        build_strategy(OmegaConf.create({"strategy": "horovod"}))
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="trainer.strategy=multi_worker needs the TF_CONFIG"):
        build_strategy(OmegaConf.create({"strategy": "multi_worker"}))
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="set trainer.max_minutes=null"):
        build_strategy(OmegaConf.create({"strategy": "multi_worker", "max_minutes": 7.5}))


def test_tensorboard_logs_are_run_artifacts(make_cfg, tmp_path):
    metrics = train(make_cfg(TINY + ["trainer.tensorboard=true", "trainer.epochs=2"]))
    client = mlflow.MlflowClient()
    run_id = metrics["mlflow_run_id"]

    def files(path):
        out = []
        for item in client.list_artifacts(run_id, path):
            out += files(item.path) if item.is_dir else [item.path]
        return out

    logged = files("tensorboard")
    assert any(p.startswith("tensorboard/train/") and "tfevents" in p for p in logged), logged
    assert any(p.startswith("tensorboard/validation/") and "tfevents" in p for p in logged), logged
    local = sorted((tmp_path / "run" / "tensorboard" / "train").glob("*tfevents*"))
    assert local and local[0].stat().st_size > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` (sqlite database + artifact store) on a free loopback port."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    log = tmp_path / "mlflow_server.log"  # a file, not a pipe: a chatty server never blocks on a full pipe
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                                 "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=sink, env=env(),
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer /health")
            time.sleep(0.5)
        yield {"url": url, "store": store}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_logs_to_a_live_tracking_server(make_cfg, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server["url"])  # as a team member would
    metrics = train(make_cfg(TINY + ["mlflow.experiment_name=team"]))
    client = mlflow.MlflowClient(mlflow_server["url"])
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "team"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0]
    assert run.data.params["trainer.batch_size"] == "16"
    # artifacts went through the server into its artifact store, not into a local folder
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model", "config.yaml", "vocabulary.json"}
    stored = list((mlflow_server["store"] / "artifacts").rglob("model.keras"))
    assert len(stored) == 1 and stored[0].stat().st_size > 0
