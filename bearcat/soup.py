"""Average the weights of several fine-tunes of one model into one ("model soup"):
`python -m bearcat.soup models=[A,B,...] out=DIR [check=LABELLED_FOLDER]`.

Fine-tunes that start from the same pretrained weights (init_from=, differing by seed or
by settings) stay close enough that their average is itself a good model, often better
than each: one model to serve, at one model's cost. Models trained from scratch do not
average (their units are in different orders): check= scores every model and the soup
on labelled images, so the gain or the loss is seen before the soup is used.

The soup is a bundle like any other (predict, evaluate, export, serve): the first model's
settings, the mean of every weight (BatchNorm statistics included: re-estimating them
on the training images read no better in the measurement behind README "Few labels").
It is also logged as an MLflow run ("soup": its sources, check= scores, the bundle), whose
run id names the soup wherever a model is named.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from bearcat import CONFIG_DIR, overrides

log = logging.getLogger("bearcat.soup")

SAME = ("mode", "vocabulary", "preprocess")  # bundle settings every model must share


def average_weights(models: list) -> list[np.ndarray]:
    """The element-wise mean of the models' weights (integer weights, such as counters,
    are taken from the first model)."""
    weights = [m.get_weights() for m in models]
    out = []
    for values in zip(*weights):
        first = values[0]
        out.append(np.mean(np.stack(values), axis=0).astype(first.dtype)
                   if np.issubdtype(first.dtype, np.floating) else first)
    return out


def check_alike(names: list[str], metas: list[dict], models: list) -> None:
    """Every model must have the first one's settings and weight shapes; the error names the
    model and what differs."""
    shapes = [w.shape for w in models[0].get_weights()]
    for name, meta, model in zip(names[1:], metas[1:], models[1:]):
        for key in SAME:
            if meta.get(key) != metas[0].get(key):
                raise ValueError(f"models: {name} has another {key} than {names[0]}: only fine-tunes of one "
                                 "model with the same settings can be averaged")
        if [w.shape for w in model.get_weights()] != shapes:
            raise ValueError(f"models: {name} has other layers or weight shapes than {names[0]}")


def labelled_arrays(folder: str, pre, lowercase: bool) -> tuple[np.ndarray, list[str], int]:
    """A labelled folder (LABEL_anything.ext; or a labels list, standing for the images of
    its folder that it names) decoded once through the models' shared
    preprocessing: (the images that decode, their labels, the number of labelled files)."""
    from bearcat.data.preprocess import ImageError, preprocess
    from bearcat.data.sources import labelled_images

    samples = labelled_images(Path(folder), lowercase, {}, "check", "check=" + str(Path(folder) / "LIST"))
    if not samples:
        raise ValueError(f"check={folder}: no labelled images (LABEL_anything.png, or listed in a labels list)")
    arrays, labels = [], []
    for path, label in samples:
        try:
            arrays.append(preprocess(path, pre))
        except ImageError as err:  # counted as wrong for every model
            log.warning("check: skipped %s", err)
            continue
        labels.append(label)
    images = np.stack(arrays) if arrays else np.empty((0, pre.height, pre.width, pre.channels), np.uint8)
    return images, labels, len(samples)


def exact_match(predictor, arrays: np.ndarray, labels: list[str], total: int, lowercase: bool) -> float:
    """Exact-match accuracy over `total` labelled files, of which `arrays` decoded."""
    results = predictor.predict_arrays(arrays) if len(arrays) else []
    read = [r["result"].lower() if lowercase else r["result"] for r in results]
    return sum(r == label for r, label in zip(read, labels)) / total


def training_config(name: str, folder: Path) -> Path | None:
    """The training config of a model (config.yaml beside its bundle in a run folder, or its
    MLflow run's, fetched beside the fetched bundle); None when neither exists."""
    from bearcat import tracking
    from bearcat.bundle import is_run_id

    beside = Path(folder).parent / "config.yaml"
    if not beside.is_file() and is_run_id(name):
        try:
            tracking.download_artifacts(name, "config.yaml", str(beside.parent))
        except Exception:  # a run without one (a soup of bare bundles): nothing to log
            return None
    return beside if beside.is_file() else None


def check_distinct(names: list[str], models: list) -> None:
    """The same model named twice (a run folder and its run id, or its export) would count
    double in the average: refuse models whose weights are all equal."""
    weights = [m.get_weights() for m in models]
    for j in range(1, len(models)):
        for i in range(j):
            if all(np.array_equal(a, b) for a, b in zip(weights[i], weights[j])):
                raise ValueError(f"models: {names[i]} and {names[j]} hold the same weights (the same model named "
                                 "twice?); a soup averages different fine-tunes, each named once")


def soup(cfg: DictConfig) -> dict:
    """Write the averaged bundle to cfg.out; returns {"out", "models", and with check= the
    accuracy of each model and of the soup}."""
    from bearcat import tracking
    from bearcat.bundle import Predictor, load_keras, read_meta, resolve_model, write_bundle

    given = cfg.models
    names = [str(given)] if isinstance(given, str) else [str(m) for m in (given or [])]
    if len(names) < 2:
        raise ValueError(f"models={names}: name at least two models to average (bundles, run folders or run ids)")
    out = Path(str(cfg.out))
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"out={out}: the folder is not empty; name a new one (nothing is overwritten)")
    with tempfile.TemporaryDirectory(prefix="bearcat-soup-") as workdir:
        folders = []
        for i, name in enumerate(names):  # a folder each: two run ids may hold files of the same name
            (Path(workdir) / str(i)).mkdir()
            folders.append(resolve_model(name, str(Path(workdir) / str(i)), cfg.mlflow, key="models"))
        metas = [read_meta(f) for f in folders]
        for name, meta in zip(names, metas):
            if meta["mode"].get("name") == "efficientdet":  # its bundle also holds the recogniser model
                raise ValueError(f"models: {name} is a click-captcha (detection) bundle; bearcat.soup averages "
                                 "text and class models only")
        models = [load_keras(Path(f) / "model.keras") for f in folders]
        check_alike(names, metas, models)
        check_distinct(names, models)
        predictors = [Predictor(f, model=m) for f, m in zip(folders, models)]
        mixed = load_keras(Path(folders[0]) / "model.keras")
        mixed.set_weights(average_weights(models))
        summary = {"out": str(out), "models": names}
        if cfg.get("check"):
            # a model whose vocabulary has no upper case reads case-insensitively (labels folded)
            lowercase = not any(c.isupper() for c in metas[0]["vocabulary"])
            arrays, labels, total = labelled_arrays(cfg.check, predictors[0].pre, lowercase)
            scores = [exact_match(p, arrays, labels, total, lowercase)
                      for p in [*predictors, Predictor(folders[0], model=mixed)]]
            for name, score in zip([*names, "soup"], scores):
                log.info("%-60s exact match %.4f on %d images of %s", name, score, total, cfg.check)
            summary |= {"check_images": total, "model_accuracy": scores[:-1], "soup_accuracy": scores[-1]}
        mode, pre = predictors[0].mode, predictors[0].pre  # the first model's, which every model shares
        # a run of its own, so the soup sits next to its parts in the MLflow UI and its run id
        # works wherever a model is named (model=, init_from=)
        tags = {"bearcat.task": "soup", "bearcat.mode": mode.name}
        with tracking.start_run(tracking.setup(cfg.mlflow), run_name="soup", tags=tags) as run:
            write_bundle(out, mixed, mode, pre, {"soup_of": names, "mlflow_run_id": run.info.run_id})
            tracking.log_params({"models": names, "out": str(out), "check": str(cfg.get("check"))})
            if "soup_accuracy" in summary:
                # exact match on check=, as `test_accuracy` is on a test split; model_i is models[i]
                tracking.log_metrics({"check_accuracy": summary["soup_accuracy"], "check_images": total,
                                      **{f"check_accuracy_model_{i}": a for i, a in enumerate(summary["model_accuracy"])}})
            tracking.log_artifacts(out, "model")
            # the first model's training config: `evaluate run_id=<soup>` then scores the soup on
            # the data its parts were trained on, and `export run_id=` checks parity on it
            config = training_config(names[0], folders[0])
            if config is not None:
                tracking.log_artifact(config)
    log.info("soup of %d models written to %s, MLflow run %s (python -m bearcat.predict %s images=...)",
             len(names), out, run.info.run_id, overrides.command_arg("model", out))
    return summary | {"mlflow_run_id": run.info.run_id}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="soup")
@overrides.plain_errors
def main(cfg: DictConfig) -> None:
    soup(cfg)


cli = overrides.command(main, "soup")  # `--help`, the key meant for a misspelt key, a line for Ctrl-C


if __name__ == "__main__":
    cli()
