"""Slider captchas: the generator's gaps, pieces and boxes, and `experiment=slider` training a
one-class detector whose boxes come back in the captcha's own pixels."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "make_slider_captchas.py"


def draw(folder, count: int, *extra: str) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(folder), "--count", str(count), *extra], check=True,
                   capture_output=True)


def test_each_captcha_boxes_its_shaded_gap_and_keeps_its_piece(tmp_path):
    from bearcat.data.voc import voc

    data = tmp_path / "slider"
    draw(data, 8)
    splits = voc(str(data), val_ratio=0.25, test_ratio=0.25)
    records = splits.train + splits.val + splits.test
    assert len(records) == 8 and splits.categories == ["gap"]
    for record in records:
        assert (record.width, record.height) == (260, 160) and [o.name for o in record.objects] == ["gap"]
        x1, y1, x2, y2 = (int(v) for v in record.objects[0].box)
        piece = np.asarray(Image.open(data / "pieces" / f"{record.path[-9:-4]}.png"))
        assert piece.shape[2] == 4
        bx1, by1, bx2, by2 = Image.fromarray(piece[..., 3]).getbbox()
        assert (x2 - x1, y2 - y1) == (bx2 - bx1, by2 - by1)  # the box is the piece's shape, exactly
        assert x1 > 6 + piece.shape[1]  # right of where the piece starts
        image = np.asarray(Image.open(record.path).convert("RGB"), np.float64)[y1:y2, x1:x2]
        inside = piece[by1:by2, bx1:bx2, 3] == 255
        shade = image[inside].sum() / max(1.0, piece[by1:by2, bx1:bx2, :3][inside].astype(np.float64).sum())
        assert 0.39 <= shade <= 0.66, shade  # the gap is the piece's own picture, darkened
    again = subprocess.run([sys.executable, str(SCRIPT), "--out", str(data), "--count", "2"], capture_output=True,
                           text=True)
    assert again.returncode != 0 and "already holds images" in again.stderr


def test_decoys_are_fainter_gaps_away_from_the_real_one_which_stays_as_it_was(tmp_path):
    from bearcat.data.voc import read_voc

    draw(tmp_path / "plain", 6)
    draw(tmp_path / "decoys", 6, "--decoys", "1")
    with_decoy = 0
    for n in range(6):
        plain, tricky = (read_voc(tmp_path / kind / f"{n:05d}.xml") for kind in ("plain", "decoys"))
        assert [o.box for o in tricky.objects] == [o.box for o in plain.objects]  # only the real gap is boxed
        x1, y1, x2, y2 = (int(v) for v in plain.objects[0].box)
        a, b = (np.asarray(Image.open(r.path).convert("RGB"), np.int32) for r in (plain, tricky))
        changed = (a != b).any(axis=2)
        assert not changed[max(0, y1 - 2):y2 + 2, max(0, x1 - 2):x2 + 2].any()  # the gap and its rim untouched
        if changed.any():
            with_decoy += 1
            assert (b[changed] <= a[changed]).all()  # a decoy only darkens
            ys, xs = np.nonzero(changed)
            assert 40 - 8 <= xs.max() - xs.min() + 1 <= 50 and 40 - 8 <= ys.max() - ys.min() + 1 <= 50  # one piece
            shade = b[changed].sum() / max(1, a[changed].sum())
            assert 0.69 <= shade <= 0.86, shade  # fainter than any real gap (at most 0.65)
    assert with_decoy >= 5  # a decoy finds room almost always


def test_slider_experiment_trains_a_one_class_detector(make_cfg, tmp_path):
    from bearcat.detection.predictor import Detector
    from bearcat.train import train

    data = tmp_path / "slider"
    draw(data, 32)
    # MobileNetV2 instead of the preset's EfficientNetV2B0: a third less time here (the click tests
    # keep the default network), and any keras.applications network with named feature layers works
    metrics = train(make_cfg([
        "experiment=slider", f"dataset.root={data}", "preprocess.height=64", "preprocess.width=128",
        "mode.application=MobileNetV2", "mode.feature_layers=[block_5_add,block_12_add,out_relu]",
        "mode.fpn_channels=16", "mode.fpn_repeats=1", "mode.head_repeats=1", "mode.val_images=2", "trainer.epochs=1",
        "trainer.batch_size=8", "trainer.max_minutes=null", "trainer.verbose=0", "trainer.bn_calibration_images=16"]))
    assert 0.0 <= metrics["test_map"] <= 1.0 and "test_map_boxes" in metrics
    assert "test_click_success" not in metrics  # nothing to click: a slider has no prompt
    assert not (tmp_path / "run" / "predictions" / "test_predictions.csv").exists()  # so no click readings
    from bearcat.compare import compare

    with pytest.raises(FileNotFoundError, match="a slider's gap detector has none"):  # said, when compared
        compare(str(tmp_path / "run"), str(tmp_path / "run"), tmp_path / "compare")
    detector = Detector(tmp_path / "run" / "model")
    assert detector.names == ["gap"]
    boxes = detector.predict([str(data / "00000.png")], score_threshold=0.0)[0]["boxes"]
    assert 1 <= len(boxes) <= 5  # mode.max_detections of the preset
    for box in boxes:  # in the 260 x 160 captcha's pixels, not the 128 x 64 canvas'
        assert box["label"] == "gap" and 0 <= box["x1"] < box["x2"] <= 260 and 0 <= box["y1"] < box["y2"] <= 160
