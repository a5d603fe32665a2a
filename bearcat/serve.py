"""Serve entry point: `python -m bearcat.serve model=BUNDLE_DIR` (or a training run folder, an MLflow
run id, models:/NAME/VERSION).

FastAPI + uvicorn on `host:port` (loopback by default), ONNX Runtime by default; the app
is in bearcat/server/app.py, the upload page at `GET /`.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

log = logging.getLogger("bearcat.serve")


def build_app(cfg: DictConfig, workdir: str):
    from bearcat.bundle import resolve_model
    from bearcat.runtime import load_predictor
    from bearcat.server.app import Limits, create_app

    folder = resolve_model(cfg.model, workdir, cfg.mlflow)
    predictor = load_predictor(folder, cfg.runtime, cfg.threads)
    model = str(cfg.model)  # a registered name, a run id or the folder's name
    name = cfg.name or (model.removeprefix("models:/") if model.startswith("models:/") else Path(model).resolve().name)
    limits = Limits(**cfg.limits)
    log.info("serving %s (%s, runtime %s)", name, folder, predictor.runtime)
    return create_app(predictor, name, limits, cfg.api_key, cfg.batching.max_batch, cfg.batching.max_wait_ms,
                      cfg.batching.model_thread)


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    import uvicorn

    with tempfile.TemporaryDirectory() as workdir:
        app = build_app(cfg, workdir)
        print(f"Bearcat serving on http://{cfg.host}:{cfg.port}/ (API docs at /docs)", flush=True)
        uvicorn.run(app, host=cfg.host, port=int(cfg.port), log_level=cfg.log_level, access_log=cfg.access_log,
                    timeout_keep_alive=int(cfg.keep_alive_seconds))


if __name__ == "__main__":
    main()
