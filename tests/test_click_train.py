"""End to end on tiny click captchas: a recogniser on the generator's crops, an EfficientDet
detector that uses it, test mAP in MLflow, the bundle, the click solver (API and CLI), the
HTTP API, an ONNX export of both models with its parity check, read without TensorFlow."""
from __future__ import annotations

import base64
import csv
import functools
import io
import json
import logging
import logging.handlers
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF

TINY_DETECTOR = ["experiment=click", "dataset.train_size=24", "dataset.val_size=4", "dataset.test_size=6",
                 "dataset.targets=[2,2]", "dataset.distractors=[0,1]", "preprocess.height=64", "preprocess.width=128",
                 "mode.fpn_channels=16", "mode.fpn_repeats=1", "mode.head_repeats=1", "mode.val_images=2",
                 "trainer.epochs=1", "trainer.batch_size=8", "trainer.max_minutes=null", "trainer.verbose=0",
                 "trainer.bn_calibration_images=16"]


def assert_same_clicks(got: list[dict], want: list[dict]) -> None:
    """The same clicks, floats compared after a trip through JSON."""
    assert [c["char"] for c in got] == [c["char"] for c in want]
    for g, w in zip(got, want):
        for key in ("x", "y", "score"):
            assert (g[key] is None and w[key] is None) or g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-5)


@pytest.fixture(scope="module")
def click_run(tmp_path_factory):
    from bearcat.train import train

    root = tmp_path_factory.mktemp("click")
    uri = f"sqlite:///{root}/mlflow.db"
    common = [f"paths.cache_dir={root / 'cache'}", f"mlflow.artifact_root={root / 'artifacts'}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            det_cfg = compose(config_name="train", overrides=[*TINY_DETECTOR, *common,
                                                               f"paths.output_dir={root / 'detector'}"])
        from bearcat.experiment import load_sources

        crops = load_sources(det_cfg).crops_root  # generates the captchas (and their crops) once
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            rec_cfg = compose(config_name="train", overrides=[
                "mode=num_classes", "dataset=folder", f"dataset.root={crops}", "preprocess.height=32",
                "preprocess.width=32", "debug=fast", *common, f"paths.output_dir={root / 'recogniser'}"])
        recogniser = train(rec_cfg)
        det_cfg.mode.recogniser = str(root / "recogniser" / "model")
        said = logging.handlers.BufferingHandler(10_000)  # the detector run's log lines
        logger = logging.getLogger("bearcat.train")
        level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(said)
        try:
            metrics = train(det_cfg)
        finally:
            logger.removeHandler(said)
            logger.setLevel(level)
    return {"metrics": metrics, "root": root, "uri": uri, "recogniser": recogniser, "cfg": det_cfg,
            "log": [r.getMessage() for r in said.buffer]}


def _run_job(click_run, job, config_name: str, overrides: list[str]):
    """Run export / evaluate on the trained detector with the test's own store and folders."""
    root = click_run["root"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", click_run["uri"])
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=[
                f"checkpoint={root / 'detector'}", f"paths.output_dir={root / config_name}",
                f"paths.cache_dir={root / 'cache'}", f"mlflow.artifact_root={root / 'artifacts'}", *overrides])
        return job(cfg)


def test_detector_run_logs_map_and_writes_a_self_contained_bundle(click_run):
    metrics, root = click_run["metrics"], click_run["root"]
    for key in ("test_map", "test_map50", "test_map_boxes", "test_map50_boxes", "test_click_success"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # what check_settings accepts as optimized_metric before training is what the run returned
    from bearcat.detection.train import detection_metric_names

    assert detection_metric_names(click_run["cfg"]) == sorted(k for k in metrics if k != "mlflow_run_id")
    run = mlflow.MlflowClient(click_run["uri"]).get_run(metrics["mlflow_run_id"])
    assert run.data.metrics["test_map"] == pytest.approx(metrics["test_map"])
    assert "test_map50" in run.data.metrics and "val_map" in run.data.metrics
    # what the click preset's sweeps select on (optimized_metric): the best val epoch's mAP
    history = mlflow.MlflowClient(click_run["uri"]).get_metric_history(run.info.run_id, "val_map")
    assert run.data.metrics["best_val_map"] == pytest.approx(max(m.value for m in history))
    assert metrics["best_val_map"] == pytest.approx(run.data.metrics["best_val_map"])
    artifacts = {a.path for a in mlflow.MlflowClient(click_run["uri"]).list_artifacts(run.info.run_id, "predictions")}
    assert {"predictions/per_class_ap.json", "predictions/test_boxes.png"} <= artifacts
    bundle = root / "detector" / "model"
    meta = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    assert meta["mode"]["name"] == "efficientdet" and meta["vocabulary"] == ["char"]
    assert (bundle / "recogniser" / "bundle.json").is_file()
    # the run's last line says where it is and what to run next, as a text run's does (it said nothing)
    done = [line for line in click_run["log"] if line.startswith("finished:")]
    assert len(done) == 1 and f"run folder {root / 'detector'}, MLflow run {run.info.run_id}. Next:" in done[0]
    assert f"python -m bearcat.evaluate run_id={run.info.run_id}" in done[0]
    assert f"python -m bearcat.click model={bundle} image=captcha.png prompt=" in done[0]


def test_solver_answers_in_prompt_order(click_run, capsys):
    from bearcat.click import clean_prompt, main, order_clicks, solve
    from bearcat.detection.predictor import Detector

    root, cfg = click_run["root"], click_run["cfg"]
    from bearcat.experiment import load_sources

    record = load_sources(cfg).test[0]
    detector = Detector(root / "detector" / "model")
    assert detector.recogniser is not None
    (result,) = detector.predict([record.path], score_threshold=0.0)
    assert result["boxes"], "with no score threshold an untrained detector still returns its best boxes"
    for b in result["boxes"]:  # boxes are in the captcha's own pixels and named by the recogniser
        assert 0 <= b["x1"] <= b["x2"] <= record.width and 0 <= b["y1"] <= b["y2"] <= record.height
        assert b["label"] in load_sources(cfg).categories
        assert max(b["candidates"], key=b["candidates"].get) == b["label"]  # for the joint assignment
    clicks = solve(record.path, record.prompt, detector)
    assert [c["char"] for c in clicks] == list(record.prompt)
    assert all((c["x"] is None) == (c["y"] is None) for c in clicks)
    assert clicks == order_clicks(record.prompt, detector.predict([record.path])[0]["boxes"])
    # on the boxes found with no threshold (never none, above): each click is the centre of
    # one box, and no box is clicked twice
    chosen = order_clicks(record.prompt, result["boxes"])
    centres = [((b["x1"] + b["x2"]) / 2, (b["y1"] + b["y2"]) / 2) for b in result["boxes"]]
    placed = [(c["x"], c["y"]) for c in chosen if c["x"] is not None]
    assert placed and all(p in centres for p in placed) and len(set(placed)) == len(placed)
    assert main([f"model={root / 'detector' / 'model'}"]) == 2  # missing image= and prompt=
    # a misspelt key is named, not dropped
    assert main([f"model={root / 'detector' / 'model'}", f"image={record.path}", f"prompt={record.prompt}",
                 "treshold=0.5"]) == 2
    assert "unknown: treshold=0.5" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "python -m bearcat.click model=BUNDLE" in capsys.readouterr().out
    # a character the recogniser has no class for is refused, named, not clicked at a guess
    assert detector.names == list(detector.recogniser.mode.vocab.chars) and "X" not in detector.names
    assert set(detector.names) <= set(load_sources(cfg).categories) and set(record.prompt) <= set(detector.names)
    with pytest.raises(ValueError, match=r"'X' not among the \d+ characters this model names"):
        solve(record.path, record.prompt[0] + "X", detector)
    assert main([f"model={root / 'detector' / 'model'}", f"image={record.path}", "prompt=X"]) == 2
    assert solve(record.path, " ".join(record.prompt) + " ", detector) == clicks  # spaces are not characters
    # nor are the separators of a pasted prompt, when the model does not name them
    assert not set(",，、【】“”") & set(detector.names)
    assert solve(record.path, "，".join(record.prompt), detector) == clicks
    assert solve(record.path, "".join(f"【{c}】" for c in record.prompt), detector) == clicks
    assert main([f"model={root / 'detector' / 'model'}", f"image={record.path}",
                 "prompt=" + ", ".join(record.prompt)]) == 0
    assert clean_prompt("a,b、c", names="abc,") == "a,bc"  # a comma the model names is a character
    with pytest.raises(ValueError, match="prompt is empty"):
        solve(record.path, "  ", detector)

    # a photo stored on its side with an EXIF orientation: boxes in the upright picture's pixels
    from PIL import Image

    upright = Image.open(record.path).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to show"
    stored = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(stored, "PNG", exif=exif)
    (turned,) = detector.predict([stored.getvalue()], score_threshold=0.0)
    corners = ("x1", "y1", "x2", "y2")
    assert len(turned["boxes"]) == len(result["boxes"])
    assert [b[k] for b in turned["boxes"] for k in corners] == pytest.approx(
        [b[k] for b in result["boxes"] for k in corners], abs=1e-3)


def test_click_cli_loads_the_bundle_in_a_fresh_process(click_run):
    # A fresh interpreter has not imported the detector's custom layers: loading must do it.
    import subprocess
    import sys

    from bearcat.click import solve
    from bearcat.experiment import load_sources

    record = load_sources(click_run["cfg"]).test[0]
    done = subprocess.run([sys.executable, "-m", "bearcat.click", f"model={click_run['root'] / 'detector' / 'model'}",
                           f"image={record.path}", f"prompt={record.prompt}"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    clicks = json.loads(done.stdout.strip().splitlines()[-1])
    assert [c["char"] for c in clicks] == list(record.prompt)
    assert_same_clicks(clicks, solve(record.path, record.prompt, click_run["root"] / "detector" / "model"))


def test_http_click_and_predict(click_run):
    from fastapi.testclient import TestClient

    from bearcat.click import solve
    from bearcat.detection.predictor import Detector
    from bearcat.experiment import load_sources
    from bearcat.server.app import create_app

    record = load_sources(click_run["cfg"]).test[0]
    client = TestClient(create_app(Detector(click_run["root"] / "detector" / "model"), "click-test"))
    image = Path(record.path).read_bytes()
    answer = client.post("/v1/click", json={"image": base64.b64encode(image).decode(), "prompt": record.prompt})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [c["char"] for c in body["clicks"]] == list(record.prompt)
    assert_same_clicks(body["clicks"], solve(record.path, record.prompt, click_run["root"] / "detector" / "model"))
    assert body["prompt"] == record.prompt and "boxes" in body
    multipart = client.post("/v1/click", files={"file": ("c.png", io.BytesIO(image), "image/png")},
                            data={"prompt": record.prompt})
    assert multipart.status_code == 200 and multipart.json()["clicks"] == body["clicks"]
    spaced = client.post("/v1/click", json={"image": base64.b64encode(image).decode(), "prompt": " ".join(record.prompt)})
    assert spaced.status_code == 200 and spaced.json()["prompt"] == record.prompt
    assert_same_clicks(spaced.json()["clicks"], body["clicks"])
    quoted = client.post("/v1/click", data={"prompt": "、".join(f"“{c}”" for c in record.prompt)},
                         files={"file": ("c.png", io.BytesIO(image), "image/png")})
    assert quoted.status_code == 200 and quoted.json()["prompt"] == record.prompt
    assert client.post("/v1/click", json={"image": base64.b64encode(image).decode(), "prompt": "，、"}).status_code == 422
    assert client.post("/v1/click", json={"image": base64.b64encode(image).decode()}).status_code == 422
    assert client.post("/v1/click", json={"image": "bm90IGFuIGltYWdl", "prompt": record.prompt}).status_code == 400
    unknown = client.post("/v1/click", json={"image": base64.b64encode(image).decode(), "prompt": record.prompt + "X"})
    assert unknown.status_code == 422 and "'X' not among" in unknown.text
    # the detector alone (one class, no recogniser) names nothing: no prompt can be matched
    bare = Detector(click_run["root"] / "detector" / "model")
    bare.recogniser = None
    assert bare.names == []
    with pytest.raises(ValueError, match="cannot name them"):
        solve(record.path, record.prompt, bare)
    refused = TestClient(create_app(bare, "bare")).post(
        "/v1/click", json={"image": base64.b64encode(image).decode(), "prompt": record.prompt})
    assert refused.status_code == 409 and "no recogniser" in refused.text
    predicted = client.post("/v1/predict", files={"file": ("c.png", io.BytesIO(image), "image/png")})
    assert predicted.status_code == 200 and isinstance(predicted.json()["boxes"], list)
    assert client.get("/v1/models").json()["models"][0]["mode"] == "efficientdet"


@pytest.fixture(scope="module")
def click_onnx(click_run) -> Path:
    """The detector and its recogniser exported to ONNX (with the parity check)."""
    from bearcat.export import export

    out = click_run["root"] / "onnx"
    summary = _run_job(click_run, export, "export", ["format=onnx", f"output_dir={out}", "parity.images=4"])
    assert summary["parity"]["onnx"]["different_results"] == 0
    # the recogniser too, checked on crops of the boxes found and on the whole images
    checked = summary["recogniser_parity"]["onnx"]
    assert checked["different_results"] == 0 and checked["images"] >= 4
    return out


def assert_same_boxes(got: list[dict], want: list[dict], tolerance: float) -> None:
    """The same boxes, named the same, corners and scores within `tolerance`."""
    assert [b["label"] for b in got] == [b["label"] for b in want]
    for g, w in zip(got, want):
        assert [g[k] for k in ("x1", "y1", "x2", "y2", "score")] == pytest.approx(
            [w[k] for k in ("x1", "y1", "x2", "y2", "score")], rel=tolerance, abs=tolerance)


def test_onnx_export_of_a_detector_and_its_recogniser_passes_parity_and_serves(click_run, click_onnx, tmp_path):
    from bearcat.click import main, solve
    from bearcat.detection.predictor import Detector
    from bearcat.experiment import load_sources
    from bearcat.runtime import available_formats, load_predictor

    assert "onnx" in available_formats(click_onnx / "recogniser")
    predictor = load_predictor(click_onnx, "onnx")
    assert predictor.detects and predictor.recogniser.runtime == "onnx"  # the whole bundle in one runtime
    assert load_predictor(click_onnx, "auto").recogniser.runtime == "onnx"
    record = load_sources(click_run["cfg"]).test[0]
    (keras_read,) = Detector(click_run["root"] / "detector" / "model").predict([record.path], score_threshold=0.0)
    (onnx_read,) = predictor.predict([record.path], score_threshold=0.0)
    assert keras_read["boxes"]
    assert_same_boxes(onnx_read["boxes"], keras_read["boxes"], 1e-3)
    assert_same_clicks(solve(record.path, record.prompt, click_onnx, runtime="onnx"),
                       solve(record.path, record.prompt, click_run["root"] / "detector" / "model"))
    assert main([f"model={click_onnx}", f"image={record.path}", f"prompt={record.prompt}", "runtime=onnx"]) == 0
    assert main([f"model={click_onnx}", f"image={record.path}", f"prompt={record.prompt}", "runtime=tflite"]) == 2
    from bearcat.predict import predict

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[f"model={click_onnx}", f"images={record.path}",
                                                        f"gradcam={tmp_path / 'heat'}"])
    with pytest.raises(ValueError, match="not a click-captcha detector's boxes"):
        predict(cfg)


@pytest.mark.slow
def test_a_light_install_solves_click_captchas_like_the_library(click_run, click_onnx, light_python, tmp_path):
    """Without TensorFlow, Keras, MLflow or SciPy, an ONNX click bundle finds and names the
    same boxes, and the click command and the server's /v1/click answer, as in the full
    library."""
    import subprocess

    from bearcat.click import solve
    from bearcat.experiment import load_sources
    from bearcat.runtime import load_predictor

    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    missing = run([str(light_python), "-c", "import importlib.util as u; "
                   "print([m for m in ('tensorflow', 'keras', 'mlflow', 'scipy') if u.find_spec(m)])"])
    assert missing.stdout.strip() == "[]", missing.stderr
    record = load_sources(click_run["cfg"]).test[0]
    boxes = run([str(light_python), "-c", "import json, sys; from bearcat.runtime import load_predictor; "
                 "(r,) = load_predictor(sys.argv[1], 'onnx').predict([sys.argv[2]], score_threshold=0.0); "
                 "print(json.dumps(r['boxes']))", str(click_onnx), str(record.path)])
    assert boxes.returncode == 0, boxes.stderr[-3000:]
    (full,) = load_predictor(click_onnx, "onnx").predict([record.path], score_threshold=0.0)
    light = json.loads(boxes.stdout.strip().splitlines()[-1])
    assert full["boxes"]
    assert_same_boxes(light, full["boxes"], 1e-4)
    for got, want in zip(light, full["boxes"]):  # the recogniser's five best names, as the click solver weighs them
        assert got["candidates"] == pytest.approx(want["candidates"], abs=1e-5)
    done = run([str(light_python), "-m", "bearcat.click", f"model={click_onnx}", f"image={record.path}",
                f"prompt={record.prompt}"])
    assert done.returncode == 0, done.stderr[-3000:]
    want = solve(record.path, record.prompt, click_onnx, runtime="onnx")
    assert_same_clicks(json.loads(done.stdout.strip().splitlines()[-1]), want)
    from test_serve import http_entry_point

    image = base64.b64encode(Path(record.path).read_bytes()).decode()
    with http_entry_point("bearcat.serve", [f"model={click_onnx}"], tmp_path / "serve.log", "/health",
                          python=str(light_python), cwd=tmp_path) as url:
        body = json.dumps({"image": image, "prompt": record.prompt}).encode()
        request = urllib.request.Request(url + "/v1/click", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert_same_clicks(json.loads(answer.read())["clicks"], want)


def test_evaluate_scores_a_detection_run(click_run, caplog):
    from bearcat import analysis
    from bearcat.compare import compare
    from bearcat.evaluate import evaluate

    root = click_run["root"]
    with caplog.at_level(logging.WARNING, logger="bearcat.evaluate"):
        metrics = _run_job(click_run, evaluate, "evaluate", ["gradcam=true"])
    assert "a detector gets none" in caplog.text  # said, not silently skipped
    assert metrics["test_images"] == 6
    # the same model on the same split: the training run's own test figures
    assert metrics["test_map"] == pytest.approx(click_run["metrics"]["test_map"], abs=1e-6)
    assert metrics["test_click_success"] == pytest.approx(click_run["metrics"]["test_click_success"])
    assert (root / "evaluate" / "per_class_ap.json").is_file() and (root / "evaluate" / "evaluation_boxes.png").is_file()
    # captcha by captcha (prompt, clicks read as text): the training run's test split and the
    # evaluation's, which bearcat.compare pairs
    with (root / "evaluate" / "analysis" / "predictions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(len(r["prediction"]) == len(r["label"]) > 0 for r in rows)
    assert np.mean([r["right"] == "1" for r in rows]) == pytest.approx(metrics["test_click_success"])
    paired = compare(str(root / "detector"), str(root / "evaluate"), root / "compare")
    assert (paired["images"], paired["only_a_right"], paired["only_b_right"]) == (6, 0, 0)
    assert paired["a"]["accuracy"] == pytest.approx(click_run["metrics"]["test_click_success"])
    # which click confidence to answer above, from the same readings
    answering = json.loads((root / "evaluate" / "analysis" / "answer_thresholds.json").read_text())
    assert answering["images"] == 6 and (root / "evaluate" / "analysis" / "answer_thresholds.md").is_file()
    want = analysis.answer_thresholds([r["label"] for r in rows],
                                      [{"result": r["prediction"], "confidence": r["confidence"]} for r in rows])
    assert metrics["test_answered_at_99"] == pytest.approx(want["targets"][-1]["answered"], abs=1e-3)


def test_upload_page_solves_a_click_captcha_in_headless_chromium(click_run, tmp_path):
    """`bearcat.serve` of a detector: the page offers a prompt field; with a prompt it lists
    the clicks in prompt order (as `solve` places them) and numbers them on the image; a
    character the model cannot name shows the server's 422; an empty prompt reads the boxes."""
    import math
    import shutil

    from playwright.sync_api import sync_playwright

    from bearcat.click import solve
    from bearcat.experiment import load_sources
    from test_serve import CHROMIUM, CHROMIUM_ARGS, http_entry_point

    # a copy whose threshold lets the tiny detector's weak boxes through, so there are clicks to place
    model = tmp_path / "model"
    shutil.copytree(click_run["root"] / "detector" / "model", model)
    meta = json.loads((model / "bundle.json").read_text())
    meta["mode"]["score_threshold"] = 0.0
    (model / "bundle.json").write_text(json.dumps(meta))
    record = load_sources(click_run["cfg"]).test[0]
    want = [f"{c['char']}: no box left to click" if c["x"] is None else
            f"{c['char']} at ({math.floor(c['x'] + 0.5)}, {math.floor(c['y'] + 0.5)}), score {c['score']:.3f}"
            for c in solve(record.path, record.prompt, model)]
    with http_entry_point("bearcat.serve", [f"model={model}", "runtime=keras"], tmp_path / "serve.log",
                          "/health", timeout=120) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('efficientdet')")
            assert page.is_visible("#prompt")
            page.fill("#prompt", record.prompt)
            page.set_input_files("#file", str(record.path))
            page.wait_for_function("document.getElementById('confidence').textContent.startsWith('confidence')")
            assert page.inner_text("#answer") == " ".join(record.prompt)
            assert page.locator("#clicks li").all_inner_texts() == want and " at (" in want[0]
            page.screenshot(path=str(tmp_path / "click.png"))
            page.fill("#prompt", record.prompt[0] + "X")
            page.press("#prompt", "Enter")  # a changed prompt solves the same image again
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert page.inner_text("#error").startswith("422: prompt") and "'X' not among" in page.inner_text("#error")
            assert page.locator("#clicks li").count() == 0
            page.fill("#prompt", "")
            page.press("#prompt", "Enter")
            page.wait_for_function("document.getElementById('confidence').textContent.startsWith('confidence')")
            assert page.inner_text("#error") == "" and page.locator("#clicks li").count() == 0
        finally:
            browser.close()
    assert (tmp_path / "click.png").stat().st_size > 1000


def test_tflite_int8_export_of_a_detector_reads_boxes(click_run):
    """A detector exports to 8-bit TFLite (parity by agreement on its boxes), detects through
    it, and `evaluate runtime=tflite_int8` scores it."""
    import mlflow

    from bearcat.detection.train import score_detections
    from bearcat.evaluate import evaluate
    from bearcat.export import export
    from bearcat.experiment import load_sources
    from bearcat.runtime import load_predictor

    root = click_run["root"]
    summary = _run_job(click_run, export, "export", ["format=tflite_int8", f"output_dir={root / 'int8'}",
                                                    "parity.images=4"])
    assert summary["parity"]["tflite_int8"]["agreement"] >= 0.9
    assert summary["recogniser_parity"]["tflite_int8"]["agreement"] >= 0.9  # the recogniser in 8 bits too
    # the backbone's weights in 8 bits: under a third of the Keras file
    assert (root / "int8" / "model.int8.tflite").stat().st_size < 0.35 * (root / "int8" / "model.keras").stat().st_size
    predictor = load_predictor(root / "int8", "tflite_int8")
    assert predictor.detects and predictor.runtime == predictor.recogniser.runtime == "tflite_int8"
    records = load_sources(click_run["cfg"]).test
    assert isinstance(predictor.predict([records[0].path])[0]["boxes"], list)
    # evaluate scores the 8-bit detector itself: the mAP its own predictions give
    metrics = _run_job(click_run, evaluate, "evaluate", [f"checkpoint={root / 'int8'}", "runtime=tflite_int8"])
    scored, _, _ = score_detections(predictor, records, load_sources(click_run["cfg"]).categories)
    assert metrics["test_images"] == 6
    assert metrics["test_map"] == pytest.approx(scored["map"], abs=1e-9)
    params = mlflow.tracking.MlflowClient(click_run["uri"]).get_run(metrics["mlflow_run_id"]).data.params
    assert params["runtime"] == "tflite_int8" and params["checkpoint"] == str(root / "int8")
