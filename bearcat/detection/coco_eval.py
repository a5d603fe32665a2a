"""COCO box mAP of detections against click-captcha records, with pycocotools' COCOeval.

Ground truth is every object of a record (targets and distractors). Predictions are
`{"label", "score", "x1", "y1", "x2", "y2"}` dicts in image pixels, one list per record; a
label outside `categories` cannot match anything and is left out. A box named by a
recogniser (with `candidates`: its five best names and their probabilities, and
`detector_score`) is scored the way a per-class detector is: once per candidate name,
with score detector score x P(name), so a right second guess still counts at its lower
score (EfficientDet's own decoding likewise keeps several classes per box).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

AGNOSTIC = "char"  # the one class of class_agnostic scoring


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _annotation(ann_id: int, image_id: int, category_id: int, x1, y1, x2, y2, **extra) -> dict:
    w, h = float(x2) - float(x1), float(y2) - float(y1)
    return dict(id=ann_id, image_id=image_id, category_id=category_id, bbox=[float(x1), float(y1), w, h],
                area=w * h, iscrowd=0, **extra)


def _value(x: float) -> float:
    """COCOeval's -1 (nothing to score) as nan."""
    return float("nan") if x < 0 else float(x)


def _hypotheses(p: dict, class_agnostic: bool) -> list[tuple[str, float]]:
    """(class name, score) pairs one predicted box stands for."""
    if class_agnostic:
        return [(AGNOSTIC, float(p.get("detector_score", p["score"])))]
    if "candidates" in p:
        det = float(p.get("detector_score", 1.0))
        return [(name, det * float(prob)) for name, prob in p["candidates"].items()]
    return [(p["label"], float(p["score"]))]


def evaluate_detections(records: list, predictions: list[list[dict]], categories: list[str],
                        class_agnostic: bool = False) -> dict:
    """{"map": AP@[.5:.95], "map50", "map75", "per_class_ap": {name: AP@[.5:.95] or nan when
    the class has no ground truth}} (COCO's area "all", 100 detections per image)."""
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(records):
        raise ValueError(f"{len(predictions)} prediction lists for {len(records)} images")
    names = [AGNOSTIC] if class_agnostic else list(categories)
    ids = {name: i + 1 for i, name in enumerate(names)}
    cats = [{"id": i, "name": name} for name, i in ids.items()]
    images, truth, found = [], [], []
    for image_id, (record, preds) in enumerate(zip(records, predictions), 1):
        images.append({"id": image_id, "width": record.width, "height": record.height})
        for obj in record.objects:
            name = AGNOSTIC if class_agnostic else obj.name
            if name not in ids:
                raise ValueError(f"{record.path}: object {obj.name!r} is not one of the categories")
            truth.append(_annotation(len(truth) + 1, image_id, ids[name], *obj.box))
        for p in preds:
            if not (p["x2"] > p["x1"] and p["y2"] > p["y1"]):
                continue
            for name, score in _hypotheses(p, class_agnostic):
                if name in ids:
                    found.append(_annotation(len(found) + 1, image_id, ids[name], p["x1"], p["y1"], p["x2"], p["y2"],
                                             score=score))
    gt, dt = _coco(images, cats, truth), _coco(images, cats, found)
    evaluator = COCOeval(gt, dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision: [iou thresholds, recall points, classes, area ranges, max detections]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, name in enumerate(names):
        p = precision[:, :, k]
        per_class[name] = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
    stats = evaluator.stats
    return {"map": _value(stats[0]), "map50": _value(stats[1]), "map75": _value(stats[2]), "per_class_ap": per_class}
