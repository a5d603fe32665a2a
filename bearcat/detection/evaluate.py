"""`python -m bearcat.evaluate` for a detection bundle: COCO mAP (per character when the
bundle names characters, else class agnostic), click success, per-class AP and a picture
of the boxes, logged as a child of the training run."""
from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def evaluate_detection(cfg: DictConfig, bundle: Path, train_config: Path | None, source_run: str | None,
                       experiment_id: str) -> dict:
    from bearcat import tracking
    from bearcat.data.sources import SPLITS
    from bearcat.detection.predictor import Detector
    from bearcat.detection.train import detection_gallery, score_detections, write_click_readings
    from bearcat.evaluate import evaluation_config, model_named
    from bearcat.experiment import load_sources

    runtime = str(cfg.get("runtime", "keras"))
    if runtime == "keras":
        detector = Detector(bundle)
    else:  # an exported format of the detector (its recogniser runs in Keras unless exported too)
        from bearcat.runtime import load_predictor

        detector = load_predictor(bundle, runtime)
    cfg = evaluation_config(cfg, train_config, detector.meta)
    splits = load_sources(cfg)
    if not hasattr(splits, "categories"):
        raise ValueError(f"a detection model needs a detection dataset (dataset=click or dataset=voc), "
                         f"not {cfg.dataset.get('_target_')}")
    records = [r for s in SPLITS if cfg.split in (s, "all") for r in getattr(splits, s)]
    if not records:
        raise ValueError(f"no images in the {cfg.split} split of the dataset")
    start = time.perf_counter()
    scored, scores, results = score_detections(detector, records, splits.categories)
    metrics = {f"test_{k}": v for k, v in scored.items()}
    metrics["test_ms_per_image"] = (time.perf_counter() - start) * 1000.0 / len(records)
    metrics["test_images"] = len(records)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = out_dir / "per_class_ap.json"
    per_class.write_text(json.dumps(scores["per_class_ap"], ensure_ascii=False, indent=1), encoding="utf-8")
    gallery = detection_gallery(records, results, out_dir / "evaluation_boxes.png", count=cfg.gallery_size)
    readings = write_click_readings(out_dir / "analysis" / "predictions.csv", records, results)
    answer_files = []
    if readings is not None:  # which click confidence to answer above, as for text readings
        from bearcat.analysis import write_answer_thresholds

        answering, answer_files = write_answer_thresholds(out_dir / "analysis", [r.prompt for r in records],
                                                          [r["click"] for r in results], cfg.get("answer_threshold"))
        metrics |= {f"test_{k}": v for k, v in answering.items()}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    tags = {"bearcat.task": "evaluate", "bearcat.split": str(cfg.split), "bearcat.runtime": runtime}
    if source_run:
        tags["bearcat.source_run_id"] = source_run
    parent = source_run if source_run and tracking.run_exists(source_run) else None
    with tracking.start_run(experiment_id, run_name="evaluate", tags=tags, parent_run_id=parent) as run:
        tracking.log_params({"dataset": OmegaConf.to_container(cfg.dataset, resolve=True), "split": cfg.split,
                             "checkpoint": model_named(cfg), "source_run_id": str(source_run),
                             "runtime": runtime})
        tracking.log_metrics(metrics)
        for path in (per_class, gallery, out_dir / "metrics.json"):
            tracking.log_artifact(path, "predictions")
        for path in ([readings] if readings is not None else []) + answer_files:
            tracking.log_artifact(path, "analysis")
    print(json.dumps(metrics, indent=1))
    return {**metrics, "mlflow_run_id": run.info.run_id}
