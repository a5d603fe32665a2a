"""Serve entry point: `python -m bearcat.serve model=BUNDLE_DIR` (or a training run folder, an MLflow
run id, models:/NAME/VERSION).

FastAPI + uvicorn on `host:port` (loopback by default), ONNX Runtime by default; the app
is in bearcat/server/app.py, the upload page at `GET /`. `workers=N` runs N server
processes on the same port, each with its own copy of the model.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from bearcat import CONFIG_DIR, overrides

WORKER_CONFIG = "BEARCAT_SERVE_WORKER_CONFIG"  # the resolved config, handed to `workers` processes

log = logging.getLogger("bearcat.serve")


def model_name(cfg: DictConfig) -> str:
    from bearcat.bundle import bundle_member

    model = str(cfg.model)  # a registered name, a run id or the folder's name
    if model.startswith("models:/"):
        return cfg.name or model.removeprefix("models:/")
    folder = Path(model).parent if bundle_member(model) else Path(model)
    return cfg.name or folder.resolve().name


def build_app(cfg: DictConfig, workdir: str):
    from bearcat.bundle import decoding_settings, resolve_model
    from bearcat.runtime import load_predictor, named_runtime
    from bearcat.server.app import Limits, create_app

    folder = resolve_model(cfg.model, workdir, cfg.mlflow)
    predictor = load_predictor(folder, named_runtime(cfg.model, cfg.runtime), cfg.threads, decoding_settings(cfg))
    name = model_name(cfg)
    limits = Limits(**cfg.limits)
    log.info("serving %s (%s, runtime %s)", name, folder, predictor.runtime)
    return create_app(predictor, name, limits, cfg.api_key, cfg.batching.max_batch, cfg.batching.max_wait_ms,
                      cfg.batching.model_thread, explainer=heat_map_model(cfg, folder, predictor))


def check_explain(predictor) -> None:
    """explain=true needs Keras (the maps need the model's gradients) and a model that reads text or classes."""
    import importlib.util

    from bearcat.gradcam import refused_for_boxes

    if getattr(predictor, "detects", False):
        raise refused_for_boxes("explain=true")
    if importlib.util.find_spec("keras") is None:
        raise ModuleNotFoundError("explain=true: heat maps need the full install (Keras and TensorFlow); "
                                  "pip install . or leave explain=false")


def heat_map_model(cfg: DictConfig, folder, predictor):
    """With explain=true, the bundle's Keras model (reading as the served one does) for
    POST /v1/explain; heat maps need its gradients, whatever runtime serves /v1/predict."""
    if not cfg.get("explain"):
        return None
    from bearcat.bundle import Predictor, decoding_settings

    check_explain(predictor)
    return Predictor(folder, decoding=decoding_settings(cfg))


def worker_app():
    """The app of one `workers` process (uvicorn imports this factory in each): the model was
    resolved to a local folder once, by the parent, whose config arrives in WORKER_CONFIG."""
    cfg = OmegaConf.create(json.loads(os.environ[WORKER_CONFIG]))
    return build_app(cfg, tempfile.gettempdir())  # a local bundle folder: nothing is fetched


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
@overrides.plain_errors
def main(cfg: DictConfig) -> None:
    import uvicorn

    from bearcat.checks import whole_settings

    # named, before the model loads: `port=abc` got only Python's "invalid literal for int()"
    workers, port, keep_alive, _ = whole_settings(cfg, workers=(1, None), port=(0, 65535),
                                                   keep_alive_seconds=(0, None), threads=(0, None))
    options = dict(host=cfg.host, port=port, log_level=cfg.log_level, access_log=cfg.access_log,
                   timeout_keep_alive=keep_alive)
    with tempfile.TemporaryDirectory() as workdir:
        if workers == 1:
            app = build_app(cfg, workdir)
        else:  # resolve (and download) once here; each worker loads the same folder
            from bearcat.bundle import decoding_settings, resolve_model
            from bearcat.runtime import load_predictor, named_runtime

            folder = Path(resolve_model(cfg.model, workdir, cfg.mlflow)).resolve()
            runtime = named_runtime(cfg.model, cfg.runtime)
            # fail here, once, not in a restart loop of workers
            checked = load_predictor(folder, runtime, cfg.threads, decoding_settings(cfg))
            if cfg.get("explain"):
                check_explain(checked)
            resolved = OmegaConf.to_container(cfg, resolve=True)
            resolved.update(model=str(folder), runtime=runtime, name=model_name(cfg))
            os.environ[WORKER_CONFIG] = json.dumps(resolved)
            app = "bearcat.serve:worker_app"
            options.update(factory=True, workers=workers)
            log.info("starting %d server processes", workers)
        print(f"Bearcat serving on http://{cfg.host}:{cfg.port}/ (API docs at /docs)", flush=True)
        uvicorn.run(app, **options)


cli = overrides.command(main, "serve")  # `--help`, the key meant for a misspelt key, a line for Ctrl-C


if __name__ == "__main__":
    cli()
