"""Serve entry point: `python -m bearcat.serve model=BUNDLE_DIR` (or model=models:/NAME/VERSION).

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


def resolve_model(model: str, workdir: str) -> Path:
    """A bundle folder, or a registered MLflow model (models:/NAME/VERSION) downloaded."""
    if model in (None, "", "???"):
        raise ValueError("pass model=<export bundle folder> or model=models:/NAME/VERSION")
    if str(model).startswith("models:/"):
        from bearcat import tracking

        return tracking.download_model(str(model), workdir)
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"model={model}: folder not found")
    return path


def build_app(cfg: DictConfig, workdir: str):
    from bearcat.runtime import load_predictor
    from bearcat.server.app import Limits, create_app

    if str(cfg.model).startswith("models:/"):
        from bearcat import tracking

        tracking.setup(cfg.mlflow)
    folder = resolve_model(cfg.model, workdir)
    predictor = load_predictor(folder, cfg.runtime, cfg.threads)
    name = cfg.name or (str(cfg.model).removeprefix("models:/") if str(cfg.model).startswith("models:/")
                        else folder.resolve().name)
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
