"""Rotation captchas: the generator's labels and round pictures, the num_classes `angle`
answer, and `experiment=rotate` training a model whose export and server answer an angle."""
from __future__ import annotations

import csv
import importlib.util
import random
import shutil
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from PIL import Image

from conftest import CONF, ROOT
from test_serve import http_entry_point, upload_page

SCRIPT = ROOT / "scripts" / "make_rotate_captchas.py"


def draw(folder, count: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(folder), "--count", str(count), *extra],
                          capture_output=True, text=True)


def generator():
    spec = importlib.util.spec_from_file_location("make_rotate_captchas", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labels_are_the_angle_rounded_to_the_step_and_only_the_circle_shows(tmp_path):
    data = tmp_path / "rotate"
    assert draw(data, 40, "--step", "15", "--size", "96").returncode == 0
    with open(data / "angles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and sorted(r["file"] for r in rows) == sorted(p.name for p in data.glob("*.png"))
    for row in rows:
        label, angle = int(row["file"].split("_")[0]), float(row["angle"])
        assert label % 15 == 0 and 0 <= label < 360
        assert min(abs(label - angle), 360 - abs(label - angle)) <= 7.5 + 0.01  # the nearest step
        pixels = np.asarray(Image.open(data / row["file"]).convert("RGB"))
        assert pixels.shape == (96, 96, 3)
        for y, x in ((0, 0), (0, 95), (95, 0), (95, 95), (3, 10)):  # outside the circle: plain white
            assert (pixels[y, x] == 255).all()
    assert len({r["file"].split("_")[0] for r in rows}) >= 12  # angles spread over the 24 classes

    refused = draw(data, 2)
    assert refused.returncode != 0 and "already holds images" in refused.stderr
    bad_step = draw(tmp_path / "other", 2, "--step", "7")
    assert bad_step.returncode != 0 and "--step 7" in bad_step.stderr and not (tmp_path / "other").exists()


def test_pictures_cut_from_your_photos_are_turned_by_the_labelled_angle(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    upright = np.zeros((90, 120, 3), np.uint8)
    upright[:45] = (220, 30, 30)  # red above, blue below: which way is up shows at any crop
    upright[45:] = (30, 30, 220)
    Image.fromarray(upright).save(photos / "two_colours.png")
    before = (photos / "two_colours.png").read_bytes()
    data = tmp_path / "rotate"
    assert draw(data, 12, "--background-dir", str(photos), "--size", "64").returncode == 0
    with open(data / "angles.csv", newline="") as f:
        for row in csv.DictReader(f):
            back = Image.open(data / row["file"]).convert("RGB").rotate(float(row["angle"]), resample=Image.BICUBIC)
            column = np.asarray(back, np.float64)[6:58, 30:34].mean(axis=1)  # down the middle, inside the circle
            red, blue = (np.nonzero(column[:, a] > column[:, b] + 100)[0] for a, b in ((0, 2), (2, 0)))
            assert len(red) and len(blue) and red.max() < blue.min(), row  # red above blue: upright again
    assert (photos / "two_colours.png").read_bytes() == before and len(list(photos.iterdir())) == 1
    missing = draw(tmp_path / "other", 2, "--background-dir", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "folder not found" in missing.stderr
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    broken = draw(tmp_path / "other", 2, "--background-dir", str(photos))
    assert broken.returncode != 0 and "broken.jpg" in broken.stderr and not (tmp_path / "other").exists()


def test_turning_a_captcha_back_by_its_angle_gives_the_upright_picture():
    make = generator()
    picture = make.scene(random.Random(3), 128)
    mask = make.circle_mask(128)
    yy, xx = np.mgrid[0:128, 0:128]
    inner = (yy - 63.5) ** 2 + (xx - 63.5) ** 2 < 50 ** 2  # well inside the circle
    upright = np.asarray(picture, np.float64)[inner]
    turned = make.rotate_captcha(picture, 37.0, mask)
    back = np.asarray(turned.rotate(37.0, resample=Image.BICUBIC), np.float64)[inner]
    assert np.abs(back - upright).mean() < 6  # only resampling blur between them
    assert np.abs(np.asarray(turned, np.float64)[inner] - upright).mean() > 3 * np.abs(back - upright).mean()
    assert make.label_of(356.0, 10) == "0" and make.label_of(354.9, 10) == "350" and make.label_of(5.1, 10) == "10"


def angle_mode(names, angle=True):
    from bearcat.data.labels import Vocabulary
    from bearcat.modes import build_mode

    return build_mode("num_classes", Vocabulary(names), 1, angle=angle)


def probs_for(mode, weights: dict) -> np.ndarray:
    row = np.zeros((1, mode.vocab.num_classes), np.float32)
    for name, p in weights.items():
        row[0, mode.class_ids[name]] = p
    return row


def test_the_angle_answer_is_refined_between_neighbouring_classes_and_wraps_round():
    from bearcat.modes.num_classes import angle_metrics

    names = [str(a) for a in range(0, 360, 10)]
    mode = angle_mode(names)
    # half-way between 350 and 0, across the wrap: 355, not 175
    answer = mode.decode(probs_for(mode, {"350": 0.45, "0": 0.45, "180": 0.1}))[0]
    assert answer["result"] in ("350", "0") and answer["angle"] == pytest.approx(355.0, abs=0.01)
    # a class far from the best one (the picture upside down) does not pull the angle
    answer = mode.decode(probs_for(mode, {"90": 0.6, "100": 0.2, "270": 0.2}))[0]
    assert answer["result"] == "90" and 90 < answer["angle"] < 95
    answer = mode.decode(probs_for(mode, {"120": 1.0}))[0]
    assert answer["angle"] == pytest.approx(120.0)
    assert "angle" not in angle_mode(names, angle=False).decode(probs_for(mode, {"120": 1.0}))[0]
    assert angle_mode(names).config()["angle"] is True  # saved in the bundle with the mode
    # the metrics a rotation run logs: errors against the labels' angles, across the wrap too
    assert angle_metrics(["350", "10", "90"], [{"angle": 355.0}, {"angle": 30.0}, {"angle": 90.0}]) == \
        pytest.approx({"angle_error": 25 / 3, "angle_within_10deg": 2 / 3})

    with pytest.raises(ValueError, match=r"mode.angle=true.*'cat'"):
        angle_mode(["0", "90", "cat"])
    with pytest.raises(ValueError, match=r"'400'"):
        angle_mode(["0", "400"])


@pytest.fixture(scope="module")
def rotate_run(tmp_path_factory):
    """A tiny experiment=rotate run (30-degree classes) and its ONNX and TFLite export."""
    from hydra import compose, initialize_config_dir

    from bearcat.export import export
    from bearcat.train import train

    root = tmp_path_factory.mktemp("rotate")
    data = root / "rotate"
    assert draw(data, 96, "--step", "30", "--size", "64").returncode == 0
    paths = [f"paths.cache_dir={root / 'cache'}", f"mlflow.artifact_root={root / 'artifacts'}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            train_cfg = compose(config_name="train", overrides=[
                "experiment=rotate", f"dataset.root={data}", "preprocess.height=32", "preprocess.width=32",
                "trainer.epochs=2", "trainer.batch_size=16", "trainer.max_minutes=null", "trainer.verbose=0",
                f"paths.output_dir={root / 'run'}", *paths])
        metrics = train(train_cfg)
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            export_cfg = compose(config_name="export", overrides=[
                f"run_id={metrics['mlflow_run_id']}", "format=[onnx,tflite]", f"output_dir={root / 'export'}",
                f"paths.output_dir={root / 'export_job'}", *paths])
        summary = export(export_cfg)
    return {"metrics": metrics, "data": data, "model": root / "run" / "model", "export": summary["output_dir"]}


def test_rotate_experiment_trains_and_its_onnx_export_and_server_answer_an_angle(rotate_run, tmp_path):
    from fastapi.testclient import TestClient

    from bearcat.bundle import Predictor, read_meta
    from bearcat.modes.num_classes import angle_between
    from bearcat.runtime import load_predictor
    from bearcat.server.app import create_app

    metrics, data = rotate_run["metrics"], rotate_run["data"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert 0.0 <= metrics["test_angle_error"] <= 180.0 and 0.0 <= metrics["test_angle_within_10deg"] <= 1.0
    meta = read_meta(rotate_run["model"])
    assert meta["mode"]["angle"] is True and meta["vocabulary"] == sorted(str(a) for a in range(0, 360, 30))

    library = Predictor(rotate_run["model"])
    files = sorted(data.glob("*.png"))[:4]
    want = library.predict(files)
    for answer in want:  # the refined angle stays within two classes of the best one
        assert angle_between(answer["angle"], float(answer["result"])) <= 60.0

    onnx = load_predictor(rotate_run["export"], "onnx")
    assert [a["angle"] for a in onnx.predict(files)] == pytest.approx([a["angle"] for a in want], abs=0.05)
    with TestClient(create_app(onnx, "rotate")) as c:
        r = c.post("/v1/predict", content=files[0].read_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == want[0]["result"] and r.json()["angle"] == pytest.approx(want[0]["angle"], abs=0.05)
    with http_entry_point("bearcat.serve", [f"model={rotate_run['export']}"], tmp_path / "serve.log",
                          "/health") as url, upload_page(url) as page:  # the upload page shows the angle
        page.set_input_files("#file", str(files[0]))
        page.wait_for_function("document.getElementById('confidence').textContent.startsWith('confidence')")
        # JavaScript's toFixed rounds a tie up; Python's format would round it to even
        shown = Decimal(r.json()["angle"]).quantize(Decimal("0.1"), ROUND_HALF_UP)
        assert page.inner_text("#answer") == f"turned {shown}° clockwise"


@pytest.mark.slow
def test_a_light_install_answers_the_angle_like_the_library(rotate_run, light_python, tmp_path):
    """Without TensorFlow, predict's CSV gives the angle the full library gives, with ONNX
    Runtime and with LiteRT."""
    from bearcat.runtime import load_predictor

    files = sorted(rotate_run["data"].glob("*.png"))[:8]
    folder = tmp_path / "images"
    folder.mkdir()
    for f in files:
        shutil.copy2(f, folder / f.name)
    for runtime in ("onnx", "tflite"):
        out = tmp_path / f"{runtime}.csv"
        done = subprocess.run([str(light_python), "-m", "bearcat.predict", f"model={rotate_run['export']}",
                               f"images={folder}", f"runtime={runtime}", f"out={out}",
                               f"hydra.run.dir={tmp_path / 'hydra'}"], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
        library = load_predictor(rotate_run["export"], runtime).predict(files)
        assert list(rows[0]) == ["file", "result", "confidence", "angle"]
        assert [r["result"] for r in rows] == [w["result"] for w in library], runtime
        assert [float(r["angle"]) for r in rows] == pytest.approx([w["angle"] for w in library], abs=1e-3)
