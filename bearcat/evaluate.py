"""Evaluate entry point: `python -m bearcat.evaluate run_id=ID` (or checkpoint=PATH, or
model= as predict and serve take it).

Scores a trained bundle on its own test split or any dataset, prints the metrics and logs
them to an MLflow run nested under the training run.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from bearcat import CONFIG_DIR, overrides
from bearcat.saved_config import load_saved_config

log = logging.getLogger("bearcat.evaluate")


def locate_bundle(cfg: DictConfig, workdir: str) -> tuple[Path, Path | None, str | None]:
    """-> (bundle folder, the training config file if known, source MLflow run id). The model
    is named by `run_id=`, `checkpoint=` (a path) or `model=`, which takes whatever predict's
    and serve's `model=` takes (a run or bundle folder, a file of a bundle, a run id, or
    models:/NAME/VERSION)."""
    from bearcat.bundle import bundle_member, is_run_id, resolve_model

    named = [key for key in ("run_id", "checkpoint", "model") if cfg.get(key)]
    if len(named) > 1:  # which one would win is not obvious: refuse rather than guess
        raise ValueError(f"{' and '.join(f'{k}={cfg[k]}' for k in named)}: name the model once")
    if not named:
        raise ValueError("pass run_id=<MLflow run id>, checkpoint=<run output folder or bundle folder> or "
                         "model=<bundle or run folder, run id or models:/NAME/VERSION>")
    key = named[0]
    source = str(cfg[key])
    if key == "model":
        if bundle_member(source):
            source = str(Path(source).parent)
        elif source.startswith("models:/"):
            bundle = resolve_model(source, workdir, key="model")
            return bundle, *_run_config(bundle, workdir)
        if is_run_id(source):
            key = "run_id"
    if key == "run_id":
        return _from_run(source, key, workdir)
    return _from_path(Path(source), key, workdir)


def model_named(cfg: DictConfig) -> str:
    """What names the model (run_id=, checkpoint= or model=), as logged with an evaluation."""
    return str(next((cfg[k] for k in ("checkpoint", "model", "run_id") if cfg.get(k)), None))


def _from_run(run_id: str, key: str, workdir: str) -> tuple[Path, Path | None, str]:
    from bearcat import tracking

    try:
        bundle = tracking.download_artifacts(run_id, "model", workdir)
    except Exception as err:  # MLflow raises several types for an unknown run or artifact
        raise ValueError(f"{key}={run_id}: cannot fetch the run's model bundle from the MLflow "
                         f"store {tracking.current_uri()} (MLFLOW_TRACKING_URI picks another store): {err}") from None
    try:
        config = tracking.download_artifacts(run_id, "config.yaml", workdir)
    except Exception:  # a run without a training config (a soup of bundles): dataset= names the data
        config = None
    return bundle, config, run_id


def _from_path(path: Path, key: str, workdir: str) -> tuple[Path, Path | None, str | None]:
    from bearcat.bundle import locate_init_bundle
    from bearcat.checks import not_found

    if not path.exists():
        raise FileNotFoundError(not_found(key, path))
    bundle = locate_init_bundle(str(path), workdir, key=key)[0]  # path itself, or path/model of a run folder
    config = bundle.parent / "config.yaml"
    if bundle != path or config.is_file():  # a run folder's own config, or a bundle beside its run's
        return bundle, config, None
    return bundle, *_run_config(bundle, workdir)  # an export bundle away from its run's folder


def _run_config(bundle: Path, workdir: str) -> tuple[Path | None, str | None]:
    """An export bundle lies away from its run's folder: (the training config, the run id)
    from the MLflow run its bundle.json names, when that run is in the store."""
    from bearcat import tracking
    from bearcat.bundle import read_meta

    run_id = read_meta(bundle).get("mlflow_run_id")
    if not run_id:
        return None, None
    try:
        return tracking.download_artifacts(run_id, "config.yaml", workdir), run_id
    except Exception:  # another store, or a run without a training config: dataset= names the data
        return None, None


def check_split(split: str) -> str:
    from bearcat.data.sources import SPLITS

    if split not in (*SPLITS, "all"):
        raise ValueError(f"split={split}: choose train, val, test or all")
    return split


def check_settings(cfg: DictConfig) -> None:
    """evaluate's own settings, before the model (and TensorFlow) loads: a wrong one would
    otherwise fail late, answer_threshold=abc only after the whole evaluation."""
    from bearcat.checks import check_folder, fraction_setting, is_whole_number, whole_settings

    if not (is_whole_number(cfg.batch_size) and cfg.batch_size >= 1):
        raise ValueError(f"batch_size={cfg.batch_size}: images per prediction batch, at least 1")
    whole_settings(cfg, gallery_size=(0, None), latency_images=(0, None))
    for key in ("low_confidence", "suspect_confidence", "answer_threshold"):
        fraction_setting(key, cfg.get(key), optional=key == "answer_threshold")
    check_split(cfg.split)
    if cfg.get("dataset") is not None:
        check_folder("dataset.root", cfg.dataset.get("root"))


def evaluation_config(cfg: DictConfig, train_config: Path | None, meta: dict,
                      split: str | None = None) -> DictConfig:
    """Dataset from the command line, else from the training run; preprocessing always
    from the bundle (the model's own). A generated dataset draws only the split scored
    (`split`, default `cfg.split`): each image depends on (seed, split, index) alone, so the
    test images are the same, and scoring a run trained on 120,000 generated images no
    longer draws those first (7 minutes)."""
    from bearcat.data.sources import SPLITS

    split = check_split(split or cfg.split)
    with open_dict(cfg):
        if cfg.get("dataset") is None:
            if train_config is None:
                raise ValueError("no dataset: pass dataset=... (the training config is not available)")
            cfg.dataset = load_saved_config(train_config).dataset
        cfg.preprocess = meta["preprocess"]
        if cfg.dataset.get("train_limit") is not None:  # a run of a learning curve
            if split in ("val", "test"):
                cfg.dataset.train_limit = None  # its training images are neither scored nor drawn
            elif cfg.get("trainer") is None:  # scoring the images it trained on: picked by its seed
                trained = load_saved_config(train_config) if train_config is not None else None
                cfg.trainer = {"seed": int(trained.trainer.seed) if trained is not None and "trainer" in trained else 0}
        if split != "all" and cfg.dataset.get(f"{split}_size"):
            for other in SPLITS:
                if other != split and f"{other}_size" in cfg.dataset:
                    cfg.dataset[f"{other}_size"] = 0
    return cfg


def scored_samples(samples: list, mode, skipped: dict[str, int]) -> tuple[list, set[str]]:
    """The (path, label) pairs to score, and the labels among them the model cannot produce
    (a character outside its vocabulary, more characters than it emits, a class it lacks).
    Those are scored as the failures they are, not left out: leaving them out made a
    model that lacks a character look better than it reads the set. Only empty labels are
    skipped (counted in `skipped`)."""
    kept, unreachable, reasons = [], set(), {}
    for path, label in samples:
        problem = mode.check_label(label)
        if problem and problem[0] == "empty label":
            skipped["empty label"] = skipped.get("empty label", 0) + 1
            continue
        if problem:
            unreachable.add(label)
            reasons.setdefault(problem[0], []).append(f"{Path(path).name} ({problem[1]})")
        kept.append((path, label))
    for reason, files in reasons.items():
        log.warning("%d labels the model cannot produce, scored as failures: %s: %s%s", len(files), reason,
                    ", ".join(files[:5]), ", ..." if len(files) > 5 else "")
    return kept, unreachable


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check_settings(cfg)  # before MLflow and TensorFlow load
    from bearcat import tracking
    from bearcat.analysis import deep_evaluation
    from bearcat.bundle import Predictor, decoding_override, decoding_settings, read_meta
    from bearcat.data.pipeline import load_split
    from bearcat.data.sources import SPLITS
    from bearcat.experiment import load_sources, predict, test_metrics
    from bearcat.gallery import prediction_gallery
    from bearcat.runtime import load_predictor, named_runtime

    if cfg.get("model"):  # model=<bundle>/model.onnx scores that format, as predict and serve run it
        with open_dict(cfg):
            cfg.runtime = named_runtime(cfg.model, str(cfg.runtime))
    if cfg.gradcam:
        from bearcat.gradcam import check_settings as check_gradcam

        check_gradcam(cfg, str(cfg.runtime), "gradcam=true", "test images")  # before the evaluation spends its time
    experiment_id = tracking.setup(cfg.mlflow)
    with tempfile.TemporaryDirectory() as workdir:
        bundle, train_config, source_run = locate_bundle(cfg, workdir)
        mode_name = read_meta(bundle)["mode"]["name"]
        decoding = decoding_settings(cfg)
        decoding_override(mode_name, decoding)  # a setting the model has not is refused before any work
        if mode_name == "efficientdet":  # boxes: scored by mAP
            from bearcat.detection.evaluate import evaluate_detection

            if cfg.gradcam:
                log.warning("gradcam=true: heat maps explain text and class models; a detector gets none")
            return evaluate_detection(cfg, bundle, train_config, source_run, experiment_id)
        runtime = str(cfg.runtime)
        # Another runtime scores an exported format (e.g. the 8-bit tflite_int8) on the same images.
        predictor = (Predictor(bundle, decoding=decoding) if runtime == "keras"
                     else load_predictor(bundle, runtime, decoding=decoding))
        cfg = evaluation_config(cfg, train_config, predictor.meta)
        mode, pre = predictor.mode, predictor.pre
        splits = load_sources(cfg)
        chosen = [s for s in SPLITS if cfg.split in (s, "all")]
        samples = [x for s in chosen for x in getattr(splits, s)]
        if cfg.split == "all":
            samples = list(dict.fromkeys(samples))
        skipped = dict(splits.skipped)
        samples, unreachable = scored_samples(samples, mode, skipped)
        data = load_split(samples, pre, cfg.paths.cache_dir, desc=f"decoding {cfg.split}")
        if not len(data):
            raise ValueError(f"no usable images in the {cfg.split} split of the dataset")
        results, ms = predict(predictor.model, mode, data.images, cfg.batch_size)
    metrics = test_metrics(mode, data.labels, results, ms, cfg.low_confidence)
    metrics["test_images"] = len(data)
    metrics["test_unreachable_labels"] = sum(label in unreachable for label in data.labels)
    skipped["unreadable image"] = len(data.errors)
    out_dir = Path(cfg.paths.output_dir)
    deep, deep_artifacts = deep_evaluation(cfg, predictor, data, results, out_dir)  # bearcat/analysis.py
    metrics |= {f"test_{k}": v for k, v in deep.items()}
    gallery = prediction_gallery(data.images, data.labels, results, out_dir / "predictions" / "evaluation_gallery.png",
                                 max_items=cfg.gallery_size)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    tags = {"bearcat.task": "evaluate", "bearcat.split": str(cfg.split), "bearcat.runtime": runtime}
    if source_run:
        tags["bearcat.source_run_id"] = source_run
    with tracking.start_run(experiment_id, run_name="evaluate", tags=tags, parent_run_id=source_run) as run:
        tracking.log_params({"dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
                             "split": cfg.split, "checkpoint": model_named(cfg), "source_run_id": str(source_run),
                             "runtime": runtime, **{k: v for k, v in mode.options.items() if k in decoding}})
        tracking.log_metrics(metrics | {f"skipped_{k.replace(' ', '_')}": v for k, v in skipped.items()})
        tracking.log_artifact(gallery, "predictions")
        tracking.log_artifact(out_dir / "metrics.json")
        for path, folder in deep_artifacts:
            tracking.log_artifact(path, folder)
    print(json.dumps(metrics, indent=1))
    # the reports (failures, confusions, thresholds...) are the point: say where they are
    log.info("evaluation written to %s (metrics.json, analysis/, predictions/), MLflow run %s%s", out_dir,
             run.info.run_id, f" nested under {source_run}" if source_run else "")
    metrics["mlflow_run_id"] = run.info.run_id
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@overrides.plain_errors
def main(cfg: DictConfig) -> float:
    metrics = evaluate(cfg)
    return metrics.get("test_accuracy", metrics.get("test_map"))  # detection models report mAP


cli = overrides.command(main, "evaluate")  # `--help`, the key meant for a misspelt key, a line for Ctrl-C


if __name__ == "__main__":
    cli()
