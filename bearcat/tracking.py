"""Everything that talks to MLflow: store set-up, flattened params, per-epoch metrics,
artifacts. Nothing else in Bearcat imports mlflow for tracking."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 500  # MLflow's limit for a param value


def tracking_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI wins over the config; a sqlite file's folder is created."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def setup(cfg_mlflow, uri: str | None = None) -> str:
    """Point MLflow at the store and experiment; return the experiment id. `uri` wins over
    MLFLOW_TRACKING_URI and the config (a non-chief worker's private store)."""
    uri = uri or tracking_uri(cfg_mlflow.tracking_uri)
    mlflow.set_tracking_uri(uri)
    name = cfg_mlflow.experiment_name
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None
        if uri.startswith("sqlite:") and cfg_mlflow.get("artifact_root"):
            # Keep a local store's artifacts beside it under outputs/, not in ./mlruns.
            location = Path(cfg_mlflow.artifact_root).resolve().as_uri()
        try:
            return mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
            exp = mlflow.get_experiment_by_name(name)
    return exp.experiment_id


def current_uri() -> str:
    return mlflow.get_tracking_uri()


def store_overrides(cfg_mlflow) -> list[str]:
    """This run's mlflow.* settings that differ from conf/mlflow/default.yaml, as command-line
    overrides: what a next command (evaluate, export) needs to find the run in its store."""
    from bearcat import CONFIG_DIR
    from bearcat.overrides import command_arg

    default = OmegaConf.load(Path(CONFIG_DIR) / "mlflow" / "default.yaml")
    changed = []
    for key, value in default.items():
        mine = cfg_mlflow.get(key)
        if mine != value:
            changed.append(f"mlflow.{key}=null" if mine is None else command_arg(f"mlflow.{key}", mine))
    return changed


def flatten(cfg, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}; long values are cut to MLflow's limit."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, str] = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


def log_params(cfg) -> None:
    params = flatten(cfg)
    items = sorted(params.items())
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        mlflow.log_params(dict(items[i:i + 100]))


def log_metrics(metrics: dict, step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: dict) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


def log_artifacts(folder, artifact_path: str | None = None) -> None:
    mlflow.log_artifacts(str(folder), artifact_path)


def start_run(experiment_id: str, run_id: str | None = None, run_name: str | None = None,
              tags: dict | None = None, parent_run_id: str | None = None):
    return mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                            run_name=run_name, tags=tags, parent_run_id=parent_run_id)


def end_run(status: str = "FINISHED") -> None:
    mlflow.end_run(status)


def download_artifacts(run_id: str, artifact_path: str, dst: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst))


def epoch_callback(state: dict):
    """A Keras callback recording every epoch's metrics (loss, val_loss, val_accuracy...)
    with a timestamp in `state`, the checkpointer's. It must run before the checkpointer,
    which commits the record with the epoch in state.json and then sends it
    (`log_epoch_record`). Why not log at once: an epoch killed after its log and before its
    checkpoint was trained again on resume and logged twice, with other values."""
    import time

    import keras

    class MlflowEpochRecorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            metrics = {k: float(v) for k, v in (logs or {}).items()
                       if isinstance(v, (int, float)) or hasattr(v, "__float__")}
            if "learning_rate" not in metrics and self.model is not None:
                try:
                    metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                except Exception:  # a schedule object has no single value
                    pass
            state["epoch_log"] = {"step": int(epoch), "timestamp": int(time.time() * 1000), "metrics": metrics}

    return MlflowEpochRecorder()


def log_epoch_record(state: dict, resend: bool = False) -> None:
    """Send the last committed epoch's metrics (`state["epoch_log"]`) to the active run.
    With `resend` (on resume, in case the process died between the commit and the send)
    only the metrics not yet in the history with this step and timestamp are sent: MLflow's
    SQL store drops a repeated entry, its file store keeps it, and every epoch must be in
    the history exactly once."""
    from mlflow.entities import Metric

    record = state.get("epoch_log")
    if not record:
        return
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    metrics = [Metric(k, v, record["timestamp"], record["step"]) for k, v in sorted(record["metrics"].items())]
    if resend:
        metrics = [m for m in metrics if not any((h.step, h.timestamp) == (m.step, m.timestamp)
                                                 for h in client.get_metric_history(run_id, m.key))]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def run_exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def log_pyfunc(bundle_dir, registered_model_name: str, meta: dict) -> str:
    """Log an export bundle as an MLflow pyfunc model (bearcat.pyfunc) in the active run and
    register it; returns the new registered version."""
    import bearcat
    import bearcat.pyfunc

    requirements = ["numpy", "pandas", "pillow", "onnxruntime", "mlflow"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's advice to add type hints
        info = mlflow.pyfunc.log_model(
            name="pyfunc", python_model=bearcat.pyfunc.__file__, artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(Path(bearcat.__file__).parent)], pip_requirements=requirements,
            registered_model_name=registered_model_name,
            metadata={"bearcat_mode": meta["mode"]["name"], "bearcat_source_run_id": str(meta.get("mlflow_run_id"))})
    return str(info.registered_model_version)


def download_model(uri: str, dst: str) -> Path:
    """A registered model (models:/NAME/VERSION) -> the Bearcat bundle folder inside it."""
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    found = sorted(folder.glob("artifacts/*/bundle.json"))
    if not found:
        raise FileNotFoundError(f"{uri}: not a Bearcat pyfunc model (no artifacts/<bundle>/bundle.json inside)")
    return found[0].parent
