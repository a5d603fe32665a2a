"""Labelling entry point: `python -m bearcat.label dir=UNLABELLED model=BUNDLE out=LABELLED`.

Serves the labelling page (bearcat/server/label_app.py) with uvicorn. The model reads
every image once at start-up through the bundle's own preprocessing (bearcat.bundle /
bearcat.runtime), so the pre-filled answers are what the trained model would answer.
"""
from __future__ import annotations

import logging
import tempfile

import hydra
from omegaconf import DictConfig

from bearcat import CONFIG_DIR, overrides

log = logging.getLogger("bearcat.label")


def required(cfg: DictConfig, key: str) -> str:
    value = cfg.get(key)
    if value in (None, "", "???"):
        raise ValueError(f"{key} is not set: pass {key}=PATH")
    return str(value)


def build_label_app(cfg: DictConfig, workdir: str):
    from bearcat.labelling import LabelQueue, accept_threshold
    from bearcat.server.label_app import create_label_app

    source, out = required(cfg, "dir"), required(cfg, "out")
    if cfg.get("accept_above") is not None:  # checked before the model loads and reads every image
        if not cfg.get("model"):
            raise ValueError("accept_above is set but model is not: the answers saved are the model's readings")
        accept_threshold(cfg.accept_above)
    predictor, name = None, None
    if cfg.get("model"):
        from bearcat.bundle import decoding_settings, read_meta, resolve_model
        from bearcat.runtime import load_predictor, named_runtime

        folder = resolve_model(cfg.model, workdir, cfg.mlflow)
        if read_meta(folder)["mode"]["name"] == "efficientdet":  # before loading it
            raise ValueError(f"model={cfg.model} is a detector (mode=efficientdet): the labelling page saves one "
                             "text answer per image, for text and class models; a detector learns from boxes "
                             "(Pascal VOC files beside the images: dataset=voc)")
        predictor = load_predictor(folder, named_runtime(cfg.model, cfg.runtime), cfg.threads, decoding_settings(cfg))
        name = str(cfg.model)
    queue = LabelQueue(source, out, predictor, labels_file=cfg.get("labels_file"))
    return create_label_app(queue, name), queue


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="label")
@overrides.plain_errors
def main(cfg: DictConfig) -> None:
    import uvicorn

    from bearcat.checks import whole_settings

    port, _ = whole_settings(cfg, port=(0, 65535), threads=(0, None))  # before the model reads every image
    with tempfile.TemporaryDirectory() as workdir:
        app, queue = build_label_app(cfg, workdir)
        if cfg.get("accept_above") is not None:  # no page: save the confident readings and stop
            saved = queue.accept_confident(float(cfg.accept_above))
            print(f"Bearcat saved {len(saved)} readings with confidence >= {cfg.accept_above} into {cfg.out}; "
                  f"{len(queue.pending)} images left below it", flush=True)
            return
        print(f"Bearcat labelling {len(queue.pending)} images of {cfg.dir} into {cfg.out}: "
              f"http://{cfg.host}:{port}/", flush=True)
        uvicorn.run(app, host=cfg.host, port=port, log_level=cfg.log_level)


cli = overrides.command(main, "label")  # `--help`, the key meant for a misspelt key, a line for Ctrl-C


if __name__ == "__main__":
    cli()
