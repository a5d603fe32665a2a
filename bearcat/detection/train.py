"""Training for mode=efficientdet (called by bearcat.train): click-captcha records ->
letterboxed images + per-anchor targets -> EfficientDet -> COCO mAP on val every epoch
and on test at the end -> MLflow. Uses the same callbacks, checkpoints, schedules and
tracking as the recognition modes."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from bearcat.detection.anchors import assign_targets
from bearcat.detection.predictor import RECOGNISER_DIR, Detector, canvas_geometry, to_canvas

log = logging.getLogger("bearcat.train")


def detection_mode(cfg: DictConfig, categories: list[str]):
    from bearcat.experiment import mode_options, preprocess_config
    from bearcat.modes.efficientdet import DetectionMode

    pre = preprocess_config(cfg)
    return DetectionMode(DetectionMode.detector_classes(categories, cfg.mode.class_mode),
                         input_height=pre.height, input_width=pre.width, **mode_options(cfg))


def check_input_size(cfg: DictConfig, records) -> None:
    """The canvas must divide by the coarsest level's stride. Said here with the size that
    fits the user's images: `mode=efficientdet` alone keeps the text models' 36 x 96."""
    from bearcat.experiment import preprocess_config

    pre, step = preprocess_config(cfg), 2 ** int(cfg.mode.max_level)
    if not records or (pre.height % step == 0 and pre.width % step == 0):
        return  # (anchors.AnchorConfig.check still refuses a bad size without records)
    width, height = (int(np.median([getattr(r, side) for r in records])) for side in ("width", "height"))
    up = lambda value: math.ceil(value / step) * step  # noqa: E731
    raise ValueError(f"preprocess.height/width ({pre.height}x{pre.width}) must be multiples of 2**mode.max_level = "
                     f"{step}: preprocess.height={up(height)} preprocess.width={up(width)} reads these images (median "
                     f"{width} x {height}) at about their size; experiment=click (with dataset=voc for your own) "
                     "reads 320 x 160 captchas at 128 x 256 and sets the rest of the click recipe")


def build_detector(cfg: DictConfig, mode):
    from bearcat.detection.model import build_efficientdet
    from bearcat.experiment import preprocess_config

    pre = preprocess_config(cfg)
    m = cfg.mode
    return build_efficientdet(pre.height, pre.width, pre.channels, len(mode.vocab), mode.anchor_config, phi=m.phi,
                              application=m.application, feature_layers=tuple(m.feature_layers),
                              fpn_channels=m.fpn_channels, fpn_repeats=m.fpn_repeats, head_repeats=m.head_repeats,
                              weights=m.weights)


def load_records(cfg: DictConfig, records: list, mode, split: str):
    """Decoded canvas images (cached on disk) and per-anchor training targets of one split;
    records whose image cannot be read are dropped and counted by the shared loader."""
    from bearcat.data.pipeline import load_split
    from bearcat.experiment import preprocess_config

    pre = preprocess_config(cfg)
    loaded = load_split([(r.path, "") for r in records], pre, cfg.paths.cache_dir, desc=f"decoding {split}")
    by_path = {r.path: r for r in records}
    kept = [by_path[p] for p in loaded.paths]
    targets = []
    for r in kept:
        geometry = canvas_geometry(r.width, r.height, pre)
        boxes = np.array([to_canvas(o.box, geometry) for o in r.objects], np.float32).reshape(-1, 4)
        classes = np.array([mode.class_id(o.name) for o in r.objects], np.float32)
        targets.append(assign_targets(boxes, classes, mode.anchors))
    return loaded.images, np.stack(targets), kept, len(loaded.errors)


def names_characters(has_recogniser: bool, class_mode: str) -> bool:
    """Whether the detector's boxes carry characters (a recogniser, or one class per
    character): only then are per-character mAP and click success measured."""
    return has_recogniser or class_mode == "per_char"


def detection_metric_names(cfg: DictConfig) -> list[str]:
    """What a detection run returns, before it trains (check_settings compares
    optimized_metric with it; a test compares it with a real run's metrics). Click success
    is left out after all when no captcha has a prompt (score_detections)."""
    scored = ["map", "map50", "map75"]
    if names_characters(bool(cfg.mode.get("recogniser")), cfg.mode.class_mode):
        scored += ["map_boxes", "map50_boxes", "click_success"]
    return sorted([*(f"test_{k}" for k in scored), "test_ms_per_image", f"best_{cfg.mode.monitor}"])


def score_detections(detector: Detector, records: list, categories: list[str],
                     score_threshold: float = 0.05) -> tuple[dict, dict, list[dict]]:
    """-> (metrics, pycocotools scores incl. per-class AP, predictions). mAP is per
    character when the detector names characters (recogniser or per_char), else class
    agnostic; click success needs names. With click success, each prediction also carries
    its captcha's `click` reading (bearcat.click.click_readings)."""
    from PIL import Image

    from bearcat.click import click_readings, solved_share
    from bearcat.detection.coco_eval import evaluate_detections

    images = [Image.open(r.path).convert("RGB") for r in records]
    results = detector.detect(images, score_threshold)
    named = names_characters(detector.recogniser is not None, detector.mode.class_mode)
    boxes = [r["boxes"] for r in results]
    scores = evaluate_detections(records, boxes, categories, class_agnostic=not named)
    metrics = {"map": scores["map"], "map50": scores["map50"], "map75": scores["map75"]}
    if named:
        agnostic = evaluate_detections(records, boxes, categories, class_agnostic=True)
        metrics |= {"map_boxes": agnostic["map"], "map50_boxes": agnostic["map50"]}
        if any(r.prompt for r in records):  # no prompt, nothing to click: a slider's gap
            readings = click_readings(records, results, detector.mode.score_threshold)
            metrics["click_success"] = solved_share(records, readings)
            for result, reading in zip(results, readings):
                result["click"] = reading
    return {k: float(v) for k, v in metrics.items()}, scores, results


def write_click_readings(path: Path, records: list, results: list[dict]) -> Path | None:
    """The captchas' click readings as a predictions CSV (file, prompt as label, reading,
    confidence, right), the file bearcat.compare pairs; None when nothing was clicked (no
    prompts, or a detector that names no characters)."""
    from bearcat.analysis import write_predictions

    if not results or "click" not in results[0]:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_predictions(path, [r.path for r in records], [r.prompt for r in records],
                             [r["click"] for r in results])


def load_recogniser(cfg: DictConfig, workdir: str):
    """The num_classes bundle named by mode.recogniser (bundle folder, run folder or MLflow
    run id) and its folder, or (None, None)."""
    if not cfg.mode.get("recogniser"):
        return None, None
    from bearcat.bundle import Predictor
    from bearcat.bundle import locate_init_bundle

    folder, _ = locate_init_bundle(str(cfg.mode.recogniser), workdir, key="mode.recogniser")
    predictor = Predictor(folder)
    if predictor.mode.name != "num_classes":
        raise ValueError(f"mode.recogniser={cfg.mode.recogniser}: a {predictor.mode.name} model; "
                         "a recogniser is a num_classes model trained on character crops")
    return predictor, Path(folder)


def detection_gallery(records: list, results: list[dict], path: Path, count: int = 16) -> Path:
    """Test images with true boxes (green) and predicted boxes + names (red)."""
    from PIL import Image, ImageDraw, ImageFont

    from bearcat.data.fonts import find_cjk_font
    from bearcat.gallery import contact_sheet

    try:
        font = ImageFont.truetype(find_cjk_font(), 14)
    except (FileNotFoundError, OSError):  # no CJK font: names drawn as boxes, still useful
        font = None
    pictures, captions = [], []
    for r, res in list(zip(records, results))[:count]:
        img = Image.open(r.path).convert("RGB")
        draw = ImageDraw.Draw(img)
        for o in r.objects:
            draw.rectangle(o.box, outline=(0, 200, 0), width=2)
        for b in res["boxes"]:
            draw.rectangle((b["x1"], b["y1"], b["x2"], b["y2"]), outline=(230, 0, 0), width=1)
            draw.text((b["x1"], max(0, b["y1"] - 15)), f"{b['label']} {b['score']:.2f}", fill=(230, 0, 0), font=font)
        pictures.append(np.asarray(img))
        captions.append(f"prompt {r.prompt}  answer {res.get('result', '')}")
    return contact_sheet(np.stack(pictures), captions, path, columns=2)


def train_detection(cfg: DictConfig) -> dict:
    import tempfile
    from contextlib import nullcontext

    # where a recogniser named by MLflow run id is downloaded; removed however training ends
    # (but for a kill -9: so none is made for a run without a recogniser)
    recogniser = cfg.mode.get("recogniser")
    with tempfile.TemporaryDirectory(prefix="bearcat-det-") if recogniser else nullcontext("") as workdir:
        return train_in(cfg, workdir)


def train_in(cfg: DictConfig, workdir: str) -> dict:
    import shutil
    import time

    from bearcat import overrides, tracking
    from bearcat.bundle import load_keras, write_bundle
    from bearcat.callbacks import Checkpointer
    from bearcat.detection.model import detection_loss
    from bearcat.experiment import build_optimizer, compile_model, load_sources, preprocess_config
    from bearcat.optim.schedules import build_schedule
    from bearcat.train import (epoch_callbacks, fit_unless_done, log_finished, plan_epochs, tracked_run,
                               training_stream)

    out_dir = Path(cfg.paths.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    if cfg.preprocess.get("frames", "first") != "first":  # README "Animated captchas": not yet for boxes
        log.warning("preprocess.frames=%s: a detector reads the first frame of an animated image whatever this "
                    "setting says", cfg.preprocess.frames)
    splits = load_sources(cfg)
    if not hasattr(splits, "categories"):
        raise ValueError("mode=efficientdet needs a detection dataset (dataset=click or dataset=voc; "
                         f"experiment=click sets everything), not {cfg.dataset.get('_target_')}")
    check_input_size(cfg, splits.train)
    mode = detection_mode(cfg, splits.categories)
    recogniser, recogniser_dir = load_recogniser(cfg, workdir)
    if recogniser is None and mode.class_mode == "single":
        log.warning("mode.class_mode=single without mode.recogniser: boxes are found but not named; "
                    "test_map is class-agnostic and no click success is measured")

    data = {s: load_records(cfg, getattr(splits, s), mode, s) for s in ("train", "val", "test")}
    train_images, train_targets = data["train"][0], data["train"][1]
    val_records = data["val"][2][:int(cfg.mode.val_images) or None]
    test_records = data["test"][2]
    log.info("click captchas: train %d, val %d (scored each epoch: %d), test %d; detector classes %d",
             len(train_images), len(data["val"][2]), len(val_records), len(test_records), len(mode.vocab))

    model = build_detector(cfg, mode)
    batch_size = int(cfg.trainer.batch_size)
    steps_per_epoch = math.ceil(len(train_images) / batch_size)
    plan_epochs(cfg, steps_per_epoch)
    lr, schedule_callbacks = build_schedule(cfg.scheduler, cfg.optimizer.learning_rate, steps_per_epoch,
                                            cfg.trainer.epochs, cfg.trainer.get("max_minutes"))
    compile_model(model, build_optimizer(cfg, lr), detection_loss(len(mode.vocab)),
                  cfg.trainer.jit_compile)
    detector = Detector(model=model, mode=mode, pre=preprocess_config(cfg), recogniser=recogniser)

    def val_metrics() -> dict:
        return score_detections(detector, val_records, splits.categories)[0]

    experiment_id = tracking.setup(cfg.mlflow)
    with tracked_run(cfg, experiment_id, ckpt_dir, model, f"efficientdet-d{cfg.mode.phi}",
                     cfg.mode.application) as (run, state, initial_epoch):
        if not state:
            tracking.log_metrics({f"data_{s}_images": len(d[2]) for s, d in data.items()}
                                 | {f"skipped_{k.replace(' ', '_')}": v for k, v in splits.skipped.items()})
        checkpointer = Checkpointer(ckpt_dir, cfg.mode.monitor, run.info.run_id, state, steps_per_epoch)
        callbacks = epoch_callbacks(cfg, train_images, val_metrics, schedule_callbacks, checkpointer, cfg.mode.monitor)
        stream = training_stream(cfg, train_images, train_targets)
        fit_unless_done(model, stream, cfg, callbacks, checkpointer, initial_epoch, steps_per_epoch)
        best = ckpt_dir / "best.keras"
        if best.is_file():  # test the epoch that did best on val
            detector.model = model = load_keras(best)

        start = time.perf_counter()
        scored, scores, results = score_detections(detector, test_records, splits.categories)
        metrics = {f"test_{k}": v for k, v in scored.items()}
        metrics["test_ms_per_image"] = (time.perf_counter() - start) * 1000.0 / max(1, len(results))
        metrics |= checkpointer.best_metrics()  # best_val_map: what sweeps select on
        tracking.log_metrics(metrics)
        log.info("test metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
        pred_dir = out_dir / "predictions"
        pred_dir.mkdir(parents=True, exist_ok=True)
        per_class = pred_dir / "per_class_ap.json"
        per_class.write_text(json.dumps(scores["per_class_ap"], ensure_ascii=False, indent=1), encoding="utf-8")
        tracking.log_artifact(per_class, "predictions")
        tracking.log_artifact(detection_gallery(test_records, results, pred_dir / "test_boxes.png"), "predictions")
        readings = write_click_readings(pred_dir / "test_predictions.csv", test_records, results)
        if readings is not None:
            tracking.log_artifact(readings, "predictions")
        bundle = write_bundle(out_dir / "model", model, mode, preprocess_config(cfg),
                              {"mlflow_run_id": run.info.run_id, "categories": splits.categories})
        if recogniser_dir is not None:  # self-contained: the recogniser travels with the detector
            shutil.copytree(recogniser_dir, bundle / RECOGNISER_DIR, dirs_exist_ok=True)
        tracking.log_artifacts(bundle, "model")
    # it ended without a word on where the run is (a text run's last line says)
    solve = (f" | python -m bearcat.click {overrides.command_arg('model', bundle)} image=captcha.png "
             "prompt=<the characters to click>") if names_characters(recogniser is not None, mode.class_mode) else ""
    log_finished(cfg, out_dir, run.info.run_id, solve)
    metrics["mlflow_run_id"] = run.info.run_id
    return metrics
