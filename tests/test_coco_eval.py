"""COCO mAP of hand-made boxes: perfect, shifted by a known IoU, wrong labels, none."""
import math

import pytest

from bearcat.data.click import ClickObject, ClickRecord
from bearcat.detection.coco_eval import evaluate_detections

CATEGORIES = ["山", "水", "火", "木"]


def records():
    return [ClickRecord("a.png", 200, 100, "山水", [ClickObject("山", (10, 10, 50, 50), True),
                                                   ClickObject("水", (100, 20, 140, 60), True),
                                                   ClickObject("火", (150, 50, 190, 90), False)]),
            ClickRecord("b.png", 200, 100, "水", [ClickObject("水", (20, 30, 60, 70), True)])]


def predict(recs, shift=0.0, score=0.9, label=None):
    """One prediction per object, moved right by `shift` pixels."""
    return [[{"label": label or o.name, "score": score, "x1": o.box[0] + shift, "y1": o.box[1],
              "x2": o.box[2] + shift, "y2": o.box[3]} for o in r.objects] for r in recs]


def iou_of_shift(side, shift):
    inter = (side - shift) * side
    return inter / (2 * side * side - inter)


def test_perfect_predictions_score_one():
    out = evaluate_detections(records(), predict(records()), CATEGORIES)
    assert out["map"] == pytest.approx(1.0) and out["map50"] == pytest.approx(1.0)
    assert out["map75"] == pytest.approx(1.0)
    assert {k: v for k, v in out["per_class_ap"].items() if k != "木"} == pytest.approx({"山": 1, "水": 1, "火": 1})
    assert math.isnan(out["per_class_ap"]["木"])  # no ground truth of that class


def test_iou_of_exactly_0_6_passes_the_thresholds_up_to_0_6():
    assert iou_of_shift(40, 10) == 0.6  # 30 * 40 / (3200 - 1200), exact in floating point
    out = evaluate_detections(records(), predict(records(), shift=10), CATEGORIES)
    # COCO matches at IoU >= threshold: 0.50, 0.55 and 0.60 of the ten thresholds
    assert out["map50"] == pytest.approx(1.0) and out["map75"] == 0.0
    assert out["map"] == pytest.approx(0.3)


def test_iou_just_below_0_6_passes_two_thresholds():
    assert 0.55 < iou_of_shift(40, 10.5) < 0.6
    out = evaluate_detections(records(), predict(records(), shift=10.5), CATEGORIES)
    assert out["map50"] == pytest.approx(1.0) and out["map75"] == 0.0
    assert out["map"] == pytest.approx(0.2)
    assert out["per_class_ap"]["山"] == pytest.approx(0.2)


def test_wrong_labels_and_no_predictions_score_zero():
    recs = records()
    wrong = [[{**p, "label": "木"} for p in preds] for preds in predict(recs)]
    assert evaluate_detections(recs, wrong, CATEGORIES)["map"] == 0.0
    unknown = predict(recs, label="not a category")
    assert evaluate_detections(recs, unknown, CATEGORIES)["map50"] == 0.0
    empty = evaluate_detections(recs, [[] for _ in recs], CATEGORIES)
    assert (empty["map"], empty["map50"], empty["map75"]) == (0.0, 0.0, 0.0)
    assert empty["per_class_ap"]["山"] == 0.0


def test_class_agnostic_ignores_labels_and_distractors_count():
    recs = records()
    out = evaluate_detections(recs, predict(recs, label="木"), CATEGORIES, class_agnostic=True)
    assert out["map"] == pytest.approx(1.0) and set(out["per_class_ap"]) == {"char"}
    # only the targets found: recall 3/4 at precision 1 -> 76 of COCO's 101 recall points
    targets_only = [[p for p, o in zip(preds, r.objects) if o.target] for preds, r in zip(predict(recs), recs)]
    out = evaluate_detections(recs, targets_only, CATEGORIES, class_agnostic=True)
    assert out["map"] == pytest.approx(76 / 101)


def test_a_higher_scored_false_positive_halves_the_precision():
    rec = [ClickRecord("c.png", 100, 100, "山", [ClickObject("山", (10, 10, 40, 40), True)])]
    preds = [[{"label": "山", "score": 0.9, "x1": 60, "y1": 60, "x2": 90, "y2": 90},
              {"label": "山", "score": 0.8, "x1": 10, "y1": 10, "x2": 40, "y2": 40}]]
    assert evaluate_detections(rec, preds, CATEGORIES)["map"] == pytest.approx(0.5)


def test_one_prediction_list_per_image():
    with pytest.raises(ValueError, match="1 prediction lists for 2 images"):
        evaluate_detections(records(), [[]], CATEGORIES)


def test_a_recognised_box_counts_once_per_candidate_name():
    # The recogniser's first guess is wrong (木) and its second right: scored like a
    # per-class detector, the right name still finds its object at the lower score.
    recs = records()
    named = [[{**p, "label": "木", "detector_score": 0.9, "candidates": {"木": 0.6, o.name: 0.4}}
              for p, o in zip(preds, r.objects)] for preds, r in zip(predict(recs), recs)]
    out = evaluate_detections(recs, named, CATEGORIES)
    assert out["map"] == pytest.approx(1.0)  # 木 has no ground truth: its hypotheses are not scored
    first_names_only = [[{k: v for k, v in p.items() if k != "candidates"} for p in preds] for preds in named]
    assert evaluate_detections(recs, first_names_only, CATEGORIES)["map"] == 0.0
