"""Detection building blocks on hand-made boxes: anchors, box coding, target assignment,
NMS, decoding, click ordering and click success."""
from __future__ import annotations

import numpy as np
import pytest

from bearcat.click import cheapest_assignment, click_readings, click_success, order_clicks
from bearcat.data.click import ClickObject, ClickRecord
from bearcat.data.labels import Vocabulary
from bearcat.data.preprocess import PreprocessConfig
from bearcat.detection.anchors import (BACKGROUND, IGNORE, AnchorConfig, anchor_boxes, assign_targets, decode_boxes,
                                       encode_boxes, iou_matrix, nms)
from bearcat.detection.predictor import canvas_geometry, from_canvas, to_canvas
from bearcat.modes.efficientdet import DetectionMode


def test_anchor_layout_matches_the_feature_levels():
    cfg = AnchorConfig(min_level=3, max_level=4, anchor_size=4.0, scales=(1.0, 2.0), ratios=(1.0,))
    anchors = anchor_boxes(32, 64, cfg)
    # level 3: 4 x 8 cells, level 4: 2 x 4 cells, 2 anchors each
    assert anchors.shape == ((4 * 8 + 2 * 4) * 2, 4)
    first = anchors[0]  # cell (0, 0) of level 3, scale 1: centre (4, 4), side 32
    np.testing.assert_allclose(first, [4 - 16, 4 - 16, 4 + 16, 4 + 16])
    np.testing.assert_allclose(anchors[1], [4 - 32, 4 - 32, 4 + 32, 4 + 32])   # scale 2, same cell
    np.testing.assert_allclose(anchors[2][:2], [12 - 16, 4 - 16])              # next cell to the right
    level4 = anchors[64]  # first anchor of level 4: centre (8, 8), side 64
    np.testing.assert_allclose(level4, [8 - 32, 8 - 32, 8 + 32, 8 + 32])
    with pytest.raises(ValueError, match="multiples of 2\\*\\*mode.max_level"):
        anchor_boxes(30, 64, cfg)


def test_box_coding_round_trip():
    rng = np.random.default_rng(0)
    anchors = anchor_boxes(64, 128, AnchorConfig())
    xy = rng.uniform(0, 100, (len(anchors), 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (len(anchors), 2))], 1).astype(np.float32)
    np.testing.assert_allclose(decode_boxes(encode_boxes(boxes, anchors), anchors), boxes, atol=1e-3)


def test_targets_give_every_object_a_positive_anchor():
    anchors = anchor_boxes(64, 128, AnchorConfig(anchor_size=3.0))
    boxes = np.array([[10, 10, 34, 36], [60, 20, 70, 28], [90, 5, 125, 60]], np.float32)  # the middle one is tiny
    target = assign_targets(boxes, np.array([0, 1, 2], np.float32), anchors)
    classes = target[:, 4]
    for k in range(3):
        assert (classes == k).sum() >= 1
    iou = iou_matrix(anchors, boxes).max(1)
    assert np.all(classes[(iou < 0.4) & (classes < 0)] == BACKGROUND)
    assert np.all(classes[(iou >= 0.4) & (iou < 0.5)] != BACKGROUND)  # the grey zone is ignored or forced positive
    assert (classes == IGNORE).sum() > 0
    positive = classes >= 0
    decoded = decode_boxes(target[positive, :4], anchors[positive])
    np.testing.assert_allclose(decoded, boxes[classes[positive].astype(int)], atol=1e-3)
    empty = assign_targets(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), anchors)
    assert np.all(empty[:, 4] == BACKGROUND)


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9], [21, 20, 31, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.3])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.99).tolist() == [3, 0, 1, 2, 4]  # nothing overlaps that much
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_decode_turns_logits_into_boxes_left_to_right():
    mode = DetectionMode(Vocabulary(["天", "地"]), input_height=64, input_width=128, class_mode="per_char",
                         min_level=3, max_level=4, anchor_size=3.0, score_threshold=0.5)
    raw = np.full((1, len(mode.anchors), 6), -8.0, np.float32)
    raw[..., :4] = 0.0
    # two confident anchors: "地" on the right, "天" on the left; one weak anchor below the threshold
    right = int(np.argmin(np.abs(mode.anchors[:, 0] - 80) + np.abs(mode.anchors[:, 1] - 10)))
    left = int(np.argmin(np.abs(mode.anchors[:, 0] - 5) + np.abs(mode.anchors[:, 1] - 20)))
    weak = int(np.argmin(np.abs(mode.anchors[:, 0] - 40) + np.abs(mode.anchors[:, 1] - 40)))
    raw[0, right, 5] = 4.0
    raw[0, left, 4] = 3.0
    raw[0, weak, 4] = -1.0
    (result,) = mode.decode(raw)
    assert result["result"] == "天地"
    assert [b["label"] for b in result["boxes"]] == ["天", "地"]
    np.testing.assert_allclose([result["boxes"][1][k] for k in ("x1", "y1", "x2", "y2")], mode.anchors[right], atol=1e-4)
    assert result["confidence"] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)


def test_letterbox_geometry_round_trip():
    pre = PreprocessConfig(height=128, width=256, channels=3)
    geometry = canvas_geometry(320, 160, pre)  # scaled by 0.8, no padding
    assert geometry == pytest.approx((0.8, 0.8, 0.0, 0.0))
    np.testing.assert_allclose(to_canvas([100, 50, 140, 90], geometry), [80, 40, 112, 72])
    tall = canvas_geometry(100, 200, pre)  # scaled by 0.64, centred horizontally
    box = [10, 20, 50, 70]
    np.testing.assert_allclose(from_canvas(to_canvas(box, tall), tall, 100, 200), box, atol=1e-4)


def _box(label, x1, y1, x2, y2, score=0.9):
    return {"label": label, "score": score, "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def test_clicks_follow_the_prompt_and_success_needs_every_character_in_its_box():
    boxes = [_box("地", 50, 0, 70, 20), _box("天", 0, 0, 20, 20, 0.6), _box("天", 100, 0, 120, 20, 0.8)]
    clicks = order_clicks("地天人", boxes)
    assert [c["char"] for c in clicks] == ["地", "天", "人"]
    assert (clicks[0]["x"], clicks[0]["y"]) == (60, 10)
    assert clicks[1]["x"] == 110  # the better-scored of the two 天 boxes
    assert clicks[2]["x"] is None  # nothing named 人
    record = ClickRecord("a.png", 200, 40, "地天", [ClickObject("天", (98, 0, 122, 20), True),
                                                   ClickObject("地", (48, 0, 72, 22), True),
                                                   ClickObject("人", (0, 0, 20, 20), False)])
    assert click_success([record], [{"boxes": boxes}]) == 1.0
    wrong = [_box("地", 50, 0, 70, 20), _box("天", 0, 0, 20, 20)]  # 天 clicked on the distractor's spot
    assert click_success([record, record], [{"boxes": boxes}, {"boxes": wrong}]) == 0.5
    assert click_success([record], [{"boxes": boxes[:1]}]) == 0.0  # 天 not found
    # the same, captcha by captcha, as text: each character not clicked inside its box is _
    readings = click_readings([record] * 3, [{"boxes": boxes}, {"boxes": wrong}, {"boxes": boxes[:1]}])
    assert [r["result"] for r in readings] == ["地天", "地_", "地_"]
    assert [r["confidence"] for r in readings] == [0.8, 0.9, 0.0]  # the least click score; 0 for a miss
    unprompted = ClickRecord("b.png", 200, 40, "", record.objects)
    assert click_readings([unprompted], [{"boxes": boxes}])[0]["result"] == "_"  # nothing to click: not solved
    underscore = ClickRecord("c.png", 200, 40, "_天", [ClickObject("_", (48, 0, 72, 22), True), record.objects[0]])
    assert click_readings([underscore], [{"boxes": wrong}])[0]["result"] == "??"  # _ itself missed: never right


def _named(x1, candidates, score=0.9):
    """A detected box named by a recogniser: its five best names with probabilities."""
    box = _box(max(candidates, key=candidates.get), x1, 0, x1 + 20, 20, score * max(candidates.values()))
    return {**box, "candidates": candidates, "detector_score": score}


def test_recognised_boxes_are_assigned_to_the_prompt_jointly():
    # The recogniser's first guess for both boxes is 天; only the joint assignment sends
    # 地 to its second guess. 人 is no box's candidate: it gets the likeliest box left.
    boxes = [_named(0, {"天": 0.9, "地": 0.05}), _named(50, {"天": 0.55, "地": 0.4}),
             _named(100, {"山": 0.8, "水": 0.1}, score=0.95), _named(150, {"山": 0.7}, score=0.6)]
    clicks = order_clicks("地天人", boxes)
    assert [(c["char"], c["x"]) for c in clicks] == [("地", 60), ("天", 10), ("人", 110)]
    assert clicks[0]["score"] == pytest.approx(0.4 * 0.9) and clicks[2]["score"] < 1e-3
    greedy = order_clicks("地天", [{k: v for k, v in b.items() if k != "candidates"} for b in boxes])
    assert greedy[0]["x"] is None  # by first names alone no box is 地
    assert order_clicks("地天人", boxes[:2])[2]["x"] is None  # two boxes for three characters
    record = ClickRecord("a.png", 200, 40, "地天", [ClickObject("天", (0, 0, 20, 20), True),
                                                   ClickObject("地", (50, 0, 70, 20), True)])
    assert click_success([record], [{"boxes": boxes}]) == 1.0


def test_cheapest_assignment_is_the_least_total_cost_of_all_matchings():
    """Against every matching of small random matrices, both ways round: min(rows, columns)
    pairs, each row and column used once, at the least total cost."""
    import itertools

    rng = np.random.default_rng(3)
    for rows, cols in [(1, 1), (1, 5), (3, 3), (4, 6), (6, 4), (5, 2), (6, 6)] * 20:
        cost = rng.random((rows, cols)) * rng.choice([1.0, 30.0])
        chosen = cheapest_assignment(cost)
        assert len(chosen) == min(rows, cols) and len(set(chosen.values())) == len(chosen)
        if rows <= cols:
            best = min(cost[range(rows), list(c)].sum() for c in itertools.permutations(range(cols), rows))
        else:
            best = min(cost[list(r), range(cols)].sum() for r in itertools.permutations(range(rows), cols))
        assert sum(cost[r, c] for r, c in chosen.items()) == pytest.approx(best)
    assert cheapest_assignment(np.zeros((3, 0))) == {}


def test_a_detector_on_text_data_is_refused_and_frames_it_ignores_are_named(make_cfg, caplog):
    """A detector needs boxes; and it reads an animated image's first frame whatever
    preprocess.frames says (README "Animated captchas"), which the run says before anything."""
    import logging

    from bearcat.train import train

    with caplog.at_level(logging.WARNING, logger="bearcat.train"):
        with pytest.raises(ValueError, match="mode=efficientdet needs a detection dataset .*not bearcat.data.sources"):
            train(make_cfg(["debug=fast", "mode=efficientdet", "optimized_metric=best_val_map",
                            "preprocess.frames=median"]))
    assert [r.getMessage() for r in caplog.records] == [
        "preprocess.frames=median: a detector reads the first frame of an animated image whatever this setting says"]
