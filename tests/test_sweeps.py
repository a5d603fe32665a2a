"""Sweeps through the real command line: a 2-job multirun (in-process and joblib launchers)
gets an MLflow parent run, two child runs and a summary table; a 3-trial Optuna search
returns a best value. Tiny data (debug=fast) keeps each sweep to a few seconds of training."""
import csv
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import ROOT, ctrl_c_as_from_a_terminal

TINY = ["debug=fast", "dataset.train_size=32", "dataset.val_size=8", "dataset.test_size=8",
        "trainer.bn_calibration_images=0", "trainer.max_minutes=null"]


def run_sweep(tmp_path, *overrides, timeout=None):
    """`python -m bearcat.train -m ...` into tmp_path, with its own MLflow store."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "bearcat.train", "-m", *TINY, *overrides, f"paths.cache_dir={tmp_path / 'cache'}",
           f"mlflow.artifact_root={tmp_path / 'artifacts'}", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**_env(), "MLFLOW_TRACKING_URI": uri},
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(), sweep_dir


def _env():
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def runs_of(client):
    exp = client.get_experiment_by_name("bearcat")
    return client.search_runs([exp.experiment_id])


# joblib ("parallel"): the same sweep in two worker processes (two TensorFlow start-ups)
@pytest.mark.parametrize("launcher", ["basic", pytest.param("parallel", marks=pytest.mark.slow)])
def test_multirun_parent_children_and_summary(tmp_path, launcher):
    # The time limit catches a command that hangs after its jobs: it once waited 5 minutes at
    # exit for joblib's idle workers (about 50 s in all when it ends as it should).
    client, sweep_dir = run_sweep(tmp_path, "optimizer=adam,sgd", f"hydra/launcher={launcher}", timeout=240)
    runs = runs_of(client)
    parents = [r for r in runs if r.data.tags.get("bearcat.sweep_role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    assert parent.info.status == "FINISHED"
    sweep_id = str(sweep_dir.resolve())
    assert parent.data.tags["bearcat.sweep_id"] == sweep_id
    by_job = {r.data.tags["bearcat.job_num"]: r for r in children}
    assert sorted(by_job) == ["0", "1"]
    for job, opt in (("0", "adam"), ("1", "sgd")):
        child = by_job[job]
        assert child.info.status == "FINISHED"
        assert child.data.tags["bearcat.sweep_id"] == sweep_id
        assert f"optimizer={opt}" in child.data.tags["bearcat.overrides"].split()
        assert child.data.params["optimizer._target_"].endswith(opt.upper() if opt == "sgd" else "Adam")
        assert "test_accuracy" in child.data.metrics

    # the summary: one row per job, with its overrides and metric, on disk and in the parent
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.csv", "sweep_summary.md"} <= artifacts
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="sweep_summary.csv",
                                                dst_path=str(tmp_path / "dl"))
    with open(local, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1"]
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children}
    for row in rows:
        child = client.get_run(row["run_id"])
        assert float(row["test_accuracy"]) == pytest.approx(child.data.metrics["test_accuracy"])
        assert row["overrides"] == child.data.tags["bearcat.overrides"]
        assert float(row["best_val_accuracy"]) == pytest.approx(child.data.metrics["best_val_accuracy"])
    # ranked by the default optimized_metric, the best val epoch: never by the test split
    assert parent.data.params["optimized_metric"] == "best_val_accuracy"
    chosen = max((by_job["0"], by_job["1"]), key=lambda c: c.data.metrics["best_val_accuracy"])  # ties: job 0
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(chosen.data.metrics["best_val_accuracy"])
    assert "best_test_accuracy" not in parent.data.metrics
    # the other job's test readings paired with the best job's: same test images, so a difference
    # and an exact McNemar p (blank for the best job itself)
    for row in rows:
        if row["run_id"] == chosen.info.run_id:
            assert row["vs_best_difference"] == row["vs_best_p"] == ""
        else:
            assert float(row["vs_best_difference"]) == pytest.approx(
                float(row["test_accuracy"]) - chosen.data.metrics["test_accuracy"])
            assert 0.0 < float(row["vs_best_p"]) <= 1.0
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["jobs_finished"] == 2
    assert parent.data.tags["bearcat.best_run_id"] == chosen.info.run_id
    md = (sweep_dir / "sweep_summary.md").read_text().splitlines()
    assert len(md) == 4  # header, rule, 2 jobs
    header = [c.strip() for c in md[0].strip("|").split("|")]
    table_rows = {cells[header.index("run_id")]: cells for cells in
                  ([c.strip() for c in line.strip("|").split("|")] for line in md[2:])}
    for child in children:  # the chosen job marked, the figures as logged to 4 places
        cells = table_rows[child.info.run_id]
        assert cells[0].endswith("(best)") == (child is chosen)
        assert cells[header.index("test_accuracy")] == f"{child.data.metrics['test_accuracy']:.4f}"
    assert not (sweep_dir / "learning_curve.csv").exists()  # both jobs train on the same images: no curve


def test_a_sweep_over_designs_pairs_each_job_with_the_best_text_by_text(tmp_path):
    """Two designs drawn with the same dataset.seed: other files (other cache folders), the
    same texts under the same names, so vs_best pairs them by name."""
    client, sweep_dir = run_sweep(tmp_path, "+dataset.style.noise_lines=0,20", timeout=240)
    with (sweep_dir / "sweep_summary.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["status"] == "FINISHED" for r in rows)
    readings = []
    for job in ("0", "1"):
        with (sweep_dir / job / "predictions" / "test_predictions.csv").open(encoding="utf-8") as f:
            readings.append({r["file"]: r["label"] for r in csv.DictReader(f)})
    assert not set(readings[0]) & set(readings[1])  # no path in common
    assert sorted((Path(f).name, label) for f, label in readings[0].items()) == sorted(
        (Path(f).name, label) for f, label in readings[1].items())
    best = [r for r in rows if r["vs_best_difference"] == ""]
    other = [r for r in rows if r["vs_best_difference"] != ""]
    assert len(best) == 1 and len(other) == 1
    assert float(other[0]["vs_best_difference"]) == pytest.approx(
        float(other[0]["test_accuracy"]) - float(best[0]["test_accuracy"]))
    assert 0.0 < float(other[0]["vs_best_p"]) <= 1.0


def test_optuna_two_trials_return_a_best_value(tmp_path):
    # one random trial, then one the TPE sampler chose from it
    client, sweep_dir = run_sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                                  "hydra.sweeper.sampler.n_startup_trials=1")
    optimization = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert optimization["name"] == "optuna"
    best = optimization["best_value"]
    assert 0.0 <= best <= 1.0
    assert set(optimization["best_params"]) >= {"optimizer.learning_rate", "trainer.batch_size", "backbone"}

    runs = runs_of(client)
    parent = next(r for r in runs if r.data.tags.get("bearcat.sweep_role") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    values = [c.data.metrics["best_val_accuracy"] for c in children]
    assert best == pytest.approx(max(values))  # Optuna's best = the best trial logged in MLflow
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best)
    assert parent.data.params["optimized_metric"] == "best_val_accuracy"


@pytest.mark.parametrize("launcher,target", [
    ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher")])
def test_launcher_configs_compose(launcher, target):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    assert cfg.hydra.callbacks.mlflow_sweep._target_ == "bearcat.sweeps.MlflowSweepCallback"
    if launcher == "slurm":  # the plugin's own keys and ours merged: sbatch gets them
        assert cfg.hydra.launcher.timeout_min == 60 and cfg.hydra.launcher.gpus_per_node == 1
        assert "additional_parameters" in cfg.hydra.launcher


def test_bad_sweep_settings_name_the_key(tmp_path):
    from bearcat.sweeps import MlflowSweepCallback

    with pytest.raises(ValueError, match="hydra.callbacks.mlflow_sweep.direction"):
        MlflowSweepCallback(direction="up")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "bearcat.train", *TINY, "optimized_metric=test_acuracy",
           f"paths.cache_dir={tmp_path / 'cache'}", f"mlflow.artifact_root={tmp_path / 'artifacts'}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**_env(), "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode != 0
    assert "optimized_metric=test_acuracy: not a metric of this run" in proc.stderr


def test_a_sweep_ranking_a_metric_the_wrong_way_stops_before_training(tmp_path):
    from bearcat.train import check_sweep_direction

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "bearcat.train", "-m", *TINY, "optimized_metric=test_cer", "trainer.seed=1,2",
           f"paths.cache_dir={tmp_path / 'cache'}", f"mlflow.artifact_root={tmp_path / 'artifacts'}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**_env(), "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode != 0
    assert ("hydra.callbacks.mlflow_sweep.direction=maximize with optimized_metric=test_cer, which is better lower"
            in proc.stderr and "set hydra.callbacks.mlflow_sweep.direction=minimize" in proc.stderr)
    assert not (tmp_path / "cache").exists()  # nothing generated, nothing trained
    # the right direction passes, for the summary's callback and Optuna's sweeper alike
    check_sweep_direction("test_cer", {"hydra.callbacks.mlflow_sweep.direction": "minimize",
                                       "hydra.sweeper.direction": "minimize"})
    check_sweep_direction("best_val_map", {"hydra.sweeper.direction": "maximize"})
    with pytest.raises(ValueError, match="hydra.sweeper.direction=minimize with optimized_metric=best_val_accuracy, "
                                         "which is better higher"):
        check_sweep_direction("best_val_accuracy", {"hydra.sweeper.direction": "minimize"})
    with pytest.raises(ValueError, match="set hydra.sweeper.direction=minimize"):
        check_sweep_direction("best_val_loss", {"hydra.sweeper.direction": "maximize"})


# parallel: the jobs run in joblib's workers, which die with the sweep before their runs end
@pytest.mark.parametrize("launcher", ["basic", pytest.param("parallel", marks=pytest.mark.slow)])
def test_ctrl_c_ends_a_sweep_with_its_parent_and_job_runs_killed(tmp_path, launcher):
    """In a sweep Ctrl-C aborts (a gentle stop would go on to the next job). It raises past
    Hydra's job handling, so the parent run was left RUNNING; now both runs end KILLED.
    400 training images: each parallel job draws them in worker processes of its own."""
    import os
    import signal
    import time

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "bearcat.train", "-m", *TINY, "dataset.train_size=400", "trainer.batch_size=8",
           "trainer.epochs=20", "trainer.seed=1,2", f"hydra/launcher={launcher}", f"paths.cache_dir={tmp_path / 'cache'}",
           f"mlflow.artifact_root={tmp_path / 'artifacts'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    training = 1 if launcher == "basic" else 2  # jobs training at once
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=ctrl_c_as_from_a_terminal, env={**_env(), "MLFLOW_TRACKING_URI": uri})
        deadline = time.monotonic() + 240
        while (time.monotonic() < deadline and proc.poll() is None
               and len(list((tmp_path / "sweep").rglob("state.json"))) < training):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # the jobs are training
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr and "BrokenProcessPool" not in stderr, stderr[-3000:]
    assert proc.returncode == 130 and "\nstopped by Ctrl-C\n" in stderr
    runs = runs_of(mlflow.MlflowClient(uri))
    [parent] = [r for r in runs if r.data.tags.get("bearcat.sweep_role") == "parent"]
    assert parent.info.status == "KILLED" and parent.data.metrics["jobs_finished"] == 0
    # basic: job 0 (job 1 never started); parallel: both, ended by the sweep for its dead workers
    assert [r.info.status for r in runs if r is not parent] == ["KILLED"] * training


def test_images_are_drawn_in_worker_processes_inside_a_joblib_job():
    """hydra/launcher=parallel runs each job in a joblib (loky) worker, whose global start
    method "loky" every spawned child failed to find: a sweep job that drew or decoded 400
    images or more died with BrokenProcessPool."""
    import multiprocessing as mp

    from joblib import Parallel, delayed

    from bearcat.data.parallel import MIN_PARALLEL_JOBS, parallel_map

    def in_a_job(n):
        method = mp.get_start_method(allow_none=True)
        return method, parallel_map(abs, list(range(-n, 0)), workers=2), mp.get_start_method(allow_none=True)

    n = MIN_PARALLEL_JOBS  # enough to start worker processes
    [(before, got, after)] = Parallel(n_jobs=2, backend="loky")(delayed(in_a_job)(n) for _ in range(1))
    assert before == after == "loky" and got == list(range(n, 0, -1))  # and the job's own method put back


def test_a_failed_job_leaves_a_failed_parent_with_the_summary_so_far(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "bearcat.train", "-m", *TINY, "dataset.min_length=4,0",  # 0: a bad setting
           f"paths.cache_dir={tmp_path / 'cache'}", f"mlflow.artifact_root={tmp_path / 'artifacts'}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**_env(), "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode != 0 and "dataset.min_length=0" in proc.stderr
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = runs_of(client)
    [parent] = [r for r in runs if r.data.tags.get("bearcat.sweep_role") == "parent"]
    assert parent.info.status == "FAILED"
    with open(tmp_path / "sweep" / "sweep_summary.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "FINISHED")]  # job 1 failed before its run began
    assert parent.data.metrics["jobs_finished"] == 1
