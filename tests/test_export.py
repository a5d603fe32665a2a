"""Export: bundle layout, parity of every format with Keras, loud failure on mismatch,
MLflow pyfunc registration, the entry point's errors, and the 8-bit TFLite model (its
parity by agreement, its runtime in predict, evaluate and the server)."""
from __future__ import annotations

import base64
import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bearcat.bundle import Predictor, read_meta
from bearcat.data.preprocess import preprocess
from bearcat.export import ParityError, chosen_formats, export, parity_check
from bearcat.runtime import FORMATS, load_predictor, load_runtime, named_runtime
from conftest import CONF


def sample_files(run: dict, count: int = 8) -> list[Path]:
    files = sorted((run["root"] / "cache" / "synthetic").glob("*/test/*.png"))[:count]
    assert files, "the trained run's test images are missing"
    return files


def test_export_writes_every_format_with_parity_report(exported):
    folder = exported["dir"]
    for name in ("bundle.json", "model.keras", "model.onnx", "model.tflite", "savedmodel/saved_model.pb"):
        assert (folder / name).exists(), name
    meta = read_meta(folder)
    source = read_meta(exported["output_dir"] / "model")
    # the settings that decide preprocessing and decoding travel unchanged
    for key in ("mode", "vocabulary", "preprocess"):
        assert meta[key] == source[key]
    assert meta["mlflow_run_id"] == exported["run_id"]
    assert set(meta["exports"]) == set(FORMATS)
    test_size = OmegaConf.load(f"{CONF}/debug/fast.yaml").dataset.test_size
    parity_images = OmegaConf.load(f"{CONF}/export.yaml").parity.images
    for fmt in ("savedmodel", "onnx", "tflite"):
        parity = meta["exports"][fmt]["parity"]
        assert parity["images"] == min(parity_images, test_size)
        assert parity["max_abs_diff"] <= 1e-4
        assert parity["different_results"] == 0
    assert exported["summary"]["parity"] == {f: meta["exports"][f]["parity"] for f in ("savedmodel", "onnx", "tflite")}


@pytest.mark.parametrize("runtime", FORMATS)
def test_every_runtime_reads_like_the_training_bundle(exported, runtime):
    files = sample_files(exported)
    want = Predictor(exported["output_dir"] / "model").predict(files)
    got = load_predictor(exported["dir"], runtime).predict(files)
    assert [g["result"] for g in got] == [w["result"] for w in want]
    np.testing.assert_allclose([g["confidence"] for g in got], [w["confidence"] for w in want], atol=1e-5)
    assert all(g["time_ms"] > 0 for g in got)


def test_the_last_short_batch_is_padded_to_the_traced_size(exported):
    """Ten images in batches of four: the model sees three batches of four (the last padded,
    so Keras runs the graph it already traced) and the readings are those of one image at a time."""
    predictor = Predictor(exported["output_dir"] / "model")
    arrays = np.stack([preprocess(f, predictor.pre) for f in sample_files(exported, 10)])
    shapes, predict_on_batch = [], predictor.model.predict_on_batch

    def recording(batch):
        shapes.append(batch.shape[0])
        return predict_on_batch(batch)

    predictor.model.predict_on_batch = recording
    got = predictor.predict_arrays(arrays, batch_size=4)
    assert shapes == [4, 4, 4]
    shapes.clear()
    one_by_one = [predictor.predict_arrays(a[None], batch_size=4)[0] for a in arrays]
    assert shapes == [1] * 10  # a single short batch is not padded: nothing traced to match
    assert [g["result"] for g in got] == [o["result"] for o in one_by_one]
    np.testing.assert_allclose([g["confidence"] for g in got], [o["confidence"] for o in one_by_one], atol=1e-5)


def test_parity_check_fails_loudly_on_a_different_model(exported):
    import keras

    folder = exported["dir"]
    model = keras.models.load_model(folder / "model.keras", compile=False)
    rng = np.random.default_rng(1)
    # the bundle's ONNX model checked against a reference with other weights: must fail
    model.set_weights([w * rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in model.get_weights()])
    predictor = Predictor(folder, model=model)
    images = np.stack([preprocess(f, predictor.pre) for f in sample_files(exported)])
    with pytest.raises(ParityError, match=r"onnx export does not match the Keras model on 8 images"):
        parity_check(folder, ["onnx"], model, predictor.mode, images, atol=1e-4)
    assert parity_check(folder, ["onnx"], load_runtime(folder, "keras"), predictor.mode, images, 1e-4)["onnx"][
        "different_results"] == 0


def test_registered_pyfunc_answers_like_the_library(exported):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(exported["tracking_uri"])
    version = exported["summary"]["registered_version"]
    model = mlflow.pyfunc.load_model(f"models:/{exported['model_name']}/{version}")
    files = sample_files(exported, 4)
    frame = pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode() for f in files]})
    out = model.predict(frame)
    assert list(out.columns) == ["result", "confidence", "time_ms"]
    want = Predictor(exported["output_dir"] / "model").predict(files)
    assert out["result"].tolist() == [w["result"] for w in want]
    np.testing.assert_allclose(out["confidence"], [w["confidence"] for w in want], atol=1e-5)


def test_export_from_checkpoint_to_the_default_folder(trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="export", overrides=[
            f"checkpoint={trained_run['output_dir']}", "format=keras", f"exports_root={tmp_path / 'exports'}",
            f"paths.output_dir={tmp_path / 'job'}", f"paths.cache_dir={trained_run['root'] / 'cache'}"])
    summary = export(cfg)
    folder = tmp_path / "exports" / trained_run["run_id"]  # outputs/exports/<run id> by default
    assert summary["output_dir"] == str(folder)
    meta = json.loads((folder / "bundle.json").read_text())
    assert list(meta["exports"]) == ["keras"]
    assert load_runtime(folder, "auto").name == "keras"
    with pytest.raises(FileNotFoundError, match="has no onnx model.*, or read it with runtime=keras$"):
        load_runtime(folder, "onnx")


def test_export_into_a_used_folder_replaces_only_after_parity(exported, tmp_path, monkeypatch):
    """Exporting into a folder that holds an earlier export: the formats of an earlier export
    of the same model stay listed; another model's files are not served; a failed parity
    check changes nothing in the folder."""
    from bearcat.bundle import load_keras

    deploy = tmp_path / "deploy"
    shutil.copytree(exported["dir"], deploy)  # every format, from the fixture's export
    (deploy / "notes.txt").write_text("mine")

    def export_to(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return export(compose(config_name="export", overrides=[
                f"checkpoint={exported['output_dir']}", f"output_dir={deploy}", f"paths.output_dir={tmp_path / 'job'}",
                f"paths.cache_dir={exported['root'] / 'cache'}", *overrides]))

    monkeypatch.setenv("MLFLOW_TRACKING_URI", exported["tracking_uri"])
    export_to("format=keras")  # the model the folder was exported from: its ONNX, TFLite... stay usable
    assert sorted(json.loads((deploy / "bundle.json").read_text())["exports"]) == sorted(FORMATS)
    assert load_runtime(deploy, "onnx").name == "onnx"

    other = load_keras(deploy / "model.keras")  # the folder now holds another model's export
    other.set_weights([w + 0.01 for w in other.get_weights()])
    other.save(deploy / "model.keras")
    export_to("format=keras")
    assert list(json.loads((deploy / "bundle.json").read_text())["exports"]) == ["keras"]
    assert (deploy / "model.onnx").is_file()  # left by the earlier export, and not served:
    with pytest.raises(FileNotFoundError, match="has no onnx model"):
        load_runtime(deploy, "onnx")
    assert load_runtime(deploy, "auto").name == "keras"

    before = {p.relative_to(deploy): p.read_bytes() for p in deploy.rglob("*") if p.is_file()}
    import bearcat.export

    real_check = bearcat.export.parity_check
    # the real check with a negative tolerance, which no difference passes (the setting refuses one)
    monkeypatch.setattr(bearcat.export, "parity_check", lambda *args: real_check(*args[:5], -1.0, *args[6:]))
    with pytest.raises(ParityError):
        export_to("format=onnx")
    assert {p.relative_to(deploy): p.read_bytes() for p in deploy.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".deploy")]  # no staging folder left behind
    assert (deploy / "notes.txt").read_text() == "mine"


def test_export_errors_name_the_setting(make_cfg, tmp_path):
    assert chosen_formats("all") == list(FORMATS)
    assert chosen_formats("onnx, tflite") == ["onnx", "tflite"]
    with pytest.raises(ValueError, match="format=pdf"):
        chosen_formats("pdf")
    assert chosen_formats(make_cfg(["format=[onnx,tflite]"], config_name="export").format) == ["onnx", "tflite"]
    cfg = make_cfg([f"checkpoint={tmp_path / 'missing'}"], config_name="export")
    with pytest.raises(FileNotFoundError, match="missing: no such file or folder"):
        export(cfg)
    cfg = make_cfg(["run_id=0123456789abcdef0123456789abcdef"], config_name="export")
    with pytest.raises(ValueError, match="run_id=0123456789abcdef0123456789abcdef: cannot fetch .* MLflow store sqlite"):
        export(cfg)


@pytest.mark.parametrize("override, message", [
    ("parity.images=-1", "parity.images=-1: the check needs at least 1 image"),
    ("parity.atol=abc", "parity.atol=abc: a number, 0 or more"),  # was float()'s traceback after the conversions
    ("parity.quantized_box_pixels=-2", "parity.quantized_box_pixels=-2: a number, 0 or more"),
    ("parity.quantized_agreement=5", "parity.quantized_agreement=5: a number from 0 to 1"),
    ("onnx.opset=abc", "onnx.opset=abc: a whole number, 1 or more"),  # the same, from the ONNX exporter
    ("onnx.unroll_rnn=sometimes", "onnx.unroll_rnn=sometimes: true or false"),
    # parity images asked of a folder that is not there: was a fallback to random images
    ("dataset=folder dataset.root=NOWHERE", "dataset.root=.*nowhere: no such folder"),
])
def test_bad_export_settings_are_refused_before_the_model_is_looked_for(make_cfg, tmp_path, override, message):
    given = [f"checkpoint={tmp_path / 'no_model'}", *override.replace("NOWHERE", str(tmp_path / "nowhere")).split()]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        export(make_cfg(given, config_name="export"))


@pytest.mark.slow
def test_mlflow_models_serve_answers(exported, tmp_path):
    """`mlflow models serve` on the registered pyfunc (a real server on loopback)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": exported["tracking_uri"],
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    version = exported["summary"]["registered_version"]
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(["mlflow", "models", "serve", "-m", f"models:/{exported['model_name']}/{version}",
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()[-2000:]
                time.sleep(0.5)
        files = sample_files(exported, 3)
        body = json.dumps({"dataframe_records": [{"image": base64.b64encode(f.read_bytes()).decode()}
                                                 for f in files]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            predictions = json.load(r)["predictions"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    want = Predictor(exported["output_dir"] / "model").predict(files)
    assert [p["result"] for p in predictions] == [w["result"] for w in want]


def predict_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="predict", overrides=overrides)


def md5s(folder: Path) -> dict:
    import hashlib

    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def mixed_folder(exported, tmp_path) -> tuple[Path, list[Path]]:
    """Copies of 8 test images plus a zero-byte and a non-image `.png`; -> (folder, good files)."""
    import shutil

    folder = tmp_path / "images"
    folder.mkdir()
    good = [Path(shutil.copy2(f, folder / f.name)) for f in sample_files(exported)]
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    (folder / "readme.txt").write_text("not an image file name: never read")
    return folder, sorted(good)


def test_predict_reads_a_folder_like_the_library(exported, mixed_folder, tmp_path, capsys):
    """Every decodable image read in file order, the same as Predictor; bad files named and
    skipped; the JSON-lines file holds everything; the folder is unchanged."""
    from bearcat.predict import predict

    folder, good = mixed_folder
    before = md5s(folder)
    out = tmp_path / "readings" / "all.jsonl"
    summary = predict(predict_cfg([f"model={exported['dir']}", f"images={folder}", f"out={out}", "runtime=onnx"]))
    want = Predictor(exported["output_dir"] / "model").predict(good)
    assert summary["images"] == 10 and summary["read"] == 8 and summary["runtime"] == "onnx"
    assert sorted(Path(p).name for p in summary["unreadable"]) == ["empty.png", "notes.png"]
    lines = [ln.split("\t") for ln in capsys.readouterr().out.splitlines()]
    assert [Path(f).name for f, _, _ in lines] == [p.name for p in good]
    assert [r for _, r, _ in lines] == [w["result"] for w in want]
    np.testing.assert_allclose([float(c) for _, _, c in lines], [w["confidence"] for w in want], atol=1e-3)
    records = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert [Path(r["file"]).name for r in records] == [p.name for p in good]
    np.testing.assert_allclose([r["confidence"] for r in records], [w["confidence"] for w in want], atol=1e-5)
    assert all(r["time_ms"] > 0 for r in records)
    assert md5s(folder) == before


def test_predict_writes_numpy_values_as_json_numbers(tmp_path):
    from bearcat.predict import write_readings

    reading = {"result": "cat", "confidence": np.float32(0.5), "top5_probs": [np.float32(0.5), np.float64(0.25)],
               "boxes": [{"box": np.array([1, 2, 3, 4], np.int64)}]}
    write_readings(tmp_path / "r.jsonl", [(Path("a.png"), reading)])
    assert json.loads((tmp_path / "r.jsonl").read_text()) == {
        "file": "a.png", "result": "cat", "confidence": 0.5, "top5_probs": [0.5, 0.25], "boxes": [{"box": [1, 2, 3, 4]}]}


def test_a_folder_read_without_its_sub_folders_says_how_many_images_they_hold(tmp_path, caplog):
    from bearcat.predict import image_paths

    (tmp_path / "test" / "deeper").mkdir(parents=True)
    for name in ("top_1.png", "test/a_2.png", "test/deeper/b_3.jpg", "test/notes.txt"):
        (tmp_path / name).write_bytes(b"")  # only listed, not decoded
    with caplog.at_level(logging.WARNING, logger="bearcat"):
        assert image_paths(str(tmp_path)) == [tmp_path / "top_1.png"]
    assert caplog.messages == [f"images={tmp_path}: 2 image files in its sub-folders are not read "
                               "(recursive=true reads them): test/ 1, test/deeper/ 1"]
    caplog.clear()
    assert len(image_paths(str(tmp_path), recursive=True)) == 3 and not caplog.messages


def test_predict_takes_a_run_id_and_a_glob_and_names_bad_settings(exported, mixed_folder, tmp_path, monkeypatch):
    import csv

    from bearcat.predict import predict

    monkeypatch.setenv("MLFLOW_TRACKING_URI", exported["tracking_uri"])
    folder, good = mixed_folder
    out = tmp_path / "readings.csv"
    summary = predict(predict_cfg([f"model={exported['run_id']}", f"images={folder}/*.png", f"out={out}"]))
    assert summary["read"] == 8 and summary["runtime"] == "keras"  # a run's bundle holds the Keras model only
    with out.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in rows] == [p.name for p in good]
    want = Predictor(exported["output_dir"] / "model").predict(good)
    assert [r["result"] for r in rows] == [w["result"] for w in want]
    one = predict(predict_cfg([f"model={exported['output_dir']}", f"images={good[0]}"]))  # a run folder, one file
    assert one["images"] == one["read"] == 1
    nested = predict(predict_cfg([f"model={exported['dir']}", f"images={folder.parent}", "recursive=true"]))
    assert nested["images"] == 10 and nested["read"] == 8
    with pytest.raises(FileNotFoundError, match="recursive=true"):
        predict(predict_cfg([f"model={exported['dir']}", f"images={folder.parent}"]))

    with pytest.raises(FileNotFoundError, match="images="):
        predict(predict_cfg([f"model={exported['dir']}", f"images={tmp_path / 'missing'}"]))
    with pytest.raises(FileNotFoundError, match="matches no image"):
        predict(predict_cfg([f"model={exported['dir']}", f"images={folder}/*.gif"]))
    with pytest.raises(ValueError, match="out="):
        predict(predict_cfg([f"model={exported['dir']}", f"images={folder}", f"out={tmp_path / 'r.txt'}"]))
    with pytest.raises(FileNotFoundError, match="model="):
        predict(predict_cfg([f"model={tmp_path}", f"images={folder}"]))
    for setting, said in [("batch_size=0", "batch_size=0: images per model call"),
                          ("batch_size=abc", "batch_size=abc: images per model call"),  # was int()'s traceback
                          ("threads=-1", "threads=-1: a whole number, 0 or more"),  # was given to the runtime
                          ("recursive=maybe", "recursive=maybe: true or false")]:  # was read as true
        with pytest.raises(ValueError, match=f"^{said}"):
            predict(predict_cfg([f"model={exported['dir']}", f"images={folder}", setting]))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 1 files"):
        predict(predict_cfg([f"model={exported['dir']}", f"images={bad}"]))


def test_predict_reads_with_another_decoder_and_refuses_bad_ones(exported, mixed_folder):
    """decoder=greedy reads the CTC model (trained with the default beam search) greedily,
    in any runtime, without changing the bundle; bad values and a mode without a decoder
    choice are refused by name before the model loads."""
    from bearcat.bundle import decoding_override
    from bearcat.modes.ctc import collapse
    from bearcat.predict import predict

    folder, good = mixed_folder
    assert read_meta(exported["dir"])["mode"]["decoder"] == "beam_search"
    greedy = load_predictor(exported["dir"], "onnx", decoding={"decoder": "greedy", "beam_width": None})
    assert greedy.mode.options["decoder"] == "greedy"
    probs = greedy.model.predict_on_batch(np.stack([preprocess(p, greedy.pre) for p in good]).astype(np.float32))
    want = [greedy.mode.vocab.decode(collapse(p.argmax(-1))) for p in probs]  # each step's top class, merged
    assert [r["result"] for r in greedy.predict(good)] == want
    summary = predict(predict_cfg([f"model={exported['dir']}", f"images={folder}", "decoder=greedy",
                                   f"out={folder.parent / 'greedy.jsonl'}"]))
    assert summary["read"] == 8
    rows = [json.loads(line) for line in (folder.parent / "greedy.jsonl").read_text().splitlines()]
    assert [r["result"] for r in rows] == want
    narrow = load_predictor(exported["dir"], "onnx", decoding={"decoder": None, "beam_width": 3})
    assert narrow.mode.options["decoder"] == "beam_search" and narrow.mode.options["beam_width"] == 3
    assert read_meta(exported["dir"])["mode"]["decoder"] == "beam_search"  # the bundle is as it was
    for override, message in [("decoder=wide", "decoder=wide: choose greedy or beam_search"),
                              ("beam_width=0", "beam_width=0: the number of beams")]:
        with pytest.raises(ValueError, match=message):
            predict(predict_cfg([f"model={exported['dir']}", f"images={folder}", override]))
    with pytest.raises(ValueError, match="decoder=beam_search: .* this model's mode is ordinary"):
        decoding_override("ordinary", {"decoder": "beam_search", "beam_width": None})
    assert decoding_override("ordinary", {"decoder": None, "beam_width": None}) == {}


def test_predict_draws_heat_maps_of_the_least_confident_readings(exported, mixed_folder, tmp_path):
    """gradcam=FOLDER: the Keras model reads the folder as the library does, and heat maps
    of the `gradcam_images` least confident readings are drawn, each character's map in the
    order of the reading it explains (the default beam search's); settings that cannot work
    are refused by name before any image is read."""
    from bearcat.predict import predict

    folder, good = mixed_folder
    heat = tmp_path / "heat"
    summary = predict(predict_cfg([f"model={exported['dir']}", f"images={folder}", f"gradcam={heat}",
                                   "gradcam_images=5", f"out={tmp_path / 'read.jsonl'}"]))
    assert summary["runtime"] == "keras" and summary["read"] == 8 and summary["gradcam"] == str(heat / "gradcam.png")
    assert (heat / "gradcam.png").stat().st_size > 0
    want = {Path(w["file"]).name: w for w in map(json.loads, (tmp_path / "read.jsonl").read_text().splitlines())}
    library = load_predictor(exported["dir"], "onnx").predict(good)
    assert [want[p.name]["result"] for p in good] == [r["result"] for r in library]
    explained = json.loads((heat / "gradcam.json").read_text())
    rows = explained["readings"]
    assert explained["images"] == len(rows) == 5 and explained["method"] == "hirescam"
    least = sorted(want.values(), key=lambda w: w["confidence"])[:5]
    assert [Path(r["file"]).name for r in rows] == [Path(w["file"]).name for w in least]
    for row in rows:
        assert row["result"] == want[Path(row["file"]).name]["result"]
        assert "".join(c["char"] for c in row["characters"]) == row["result"]
        assert row["confidence"] == pytest.approx(want[Path(row["file"]).name]["confidence"], abs=1e-4)
    for override, message in [("runtime=onnx", "heat maps need the Keras model's gradients"),
                              ("gradcam_method=cam", "gradcam_method=cam: choose one of"),
                              ("gradcam_images=0", "gradcam_images=0: the number of images")]:
        with pytest.raises(ValueError, match=message):
            predict(predict_cfg([f"model={exported['dir']}", f"images={folder}", f"gradcam={tmp_path / 'no'}",
                                 override]))
    assert not (tmp_path / "no").exists()


def test_a_file_of_the_bundle_names_the_bundle_and_its_runtime(exported, mixed_folder):
    """model=BUNDLE/model.tflite reads with TFLite (whatever runtime= says), bundle.json with
    runtime=auto; the server names the model after the bundle folder."""
    from bearcat.predict import predict
    from bearcat.serve import model_name

    folder, good = mixed_folder
    want = [w["result"] for w in Predictor(exported["output_dir"] / "model").predict(good)]
    for name, runtime, used in [("model.tflite", "onnx", "tflite"), ("savedmodel", "auto", "savedmodel"),
                                ("bundle.json", "auto", "onnx")]:
        summary = predict(predict_cfg([f"model={exported['dir'] / name}", f"images={folder}", f"runtime={runtime}",
                                       f"out={folder.parent / (used + '.jsonl')}"]))
        assert summary["runtime"] == used and summary["read"] == 8
        readings = [json.loads(ln) for ln in (folder.parent / f"{used}.jsonl").read_text().splitlines()]
        assert [r["result"] for r in readings] == want
    assert model_name(OmegaConf.create({"model": str(exported["dir"] / "model.onnx"), "name": None})) == "export"
    with pytest.raises(FileNotFoundError, match="model="):  # a model file outside any bundle
        predict(predict_cfg([f"model={good[0]}", f"images={folder}"]))


def test_predict_entry_point_prints_only_readings(exported, mixed_folder, tmp_path):
    """`python -m bearcat.predict`: stdout is one file<TAB>reading<TAB>confidence line per
    image (logs and warnings go to stderr), so it pipes into other tools."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    folder, good = mixed_folder
    proc = subprocess.run([sys.executable, "-m", "bearcat.predict", f"model={exported['dir']}", f"images={folder}",
                           f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [Path(ln.split("\t")[0]).name for ln in lines] == [p.name for p in good]
    assert all(len(ln.split("\t")) == 3 and 0.0 <= float(ln.split("\t")[2]) <= 1.0 for ln in lines)
    assert "empty.png" in proc.stderr and "notes.png" in proc.stderr


@pytest.fixture(scope="module")
def int8_export(exported, tmp_path_factory):
    """The fixture's export folder (every exact format) copied, with tflite_int8 added to it."""
    folder = tmp_path_factory.mktemp("int8") / "bundle"
    shutil.copytree(exported["dir"], folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", exported["tracking_uri"])
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            summary = export(compose(config_name="export", overrides=[
                f"run_id={exported['run_id']}", "format=tflite_int8", f"output_dir={folder}",
                f"paths.output_dir={folder.parent / 'job'}", f"paths.cache_dir={exported['root'] / 'cache'}"]))
    return {**exported, "int8": folder, "int8_summary": summary}


def test_int8_tflite_is_smaller_reads_like_keras_and_is_chosen_only_by_name(int8_export):
    folder = int8_export["int8"]
    assert (folder / "model.int8.tflite").stat().st_size < 0.5 * (folder / "model.tflite").stat().st_size
    meta = read_meta(folder)
    assert sorted(meta["exports"]) == sorted([*FORMATS, "tflite_int8"])  # the exact formats stay listed
    parity = meta["exports"]["tflite_int8"]["parity"]
    assert parity == int8_export["int8_summary"]["parity"]["tflite_int8"]
    assert parity["agreement"] == 1 - parity["different_results"] / parity["images"] >= 0.9
    assert 0 < parity["max_abs_diff"] < 0.5  # approximate outputs, not another model's

    files = sample_files(int8_export, 16)
    want = Predictor(int8_export["output_dir"] / "model").predict(files)
    predictor = load_predictor(folder, "tflite_int8")
    assert predictor.runtime == "tflite_int8"
    got = predictor.predict(files)
    same = sum(g["result"] == w["result"] for g, w in zip(got, want))
    assert same >= 0.75 * len(files), (same, [(g["result"], w["result"]) for g, w in zip(got, want)])
    np.testing.assert_allclose([g["confidence"] for g in got], [w["confidence"] for w in want], atol=0.2)
    assert load_predictor(folder, "auto").runtime == "onnx"  # never picked for the exact model
    assert named_runtime(folder / "model.int8.tflite", "auto") == "tflite_int8"
    with pytest.raises(FileNotFoundError, match="has no tflite_int8 model"):
        load_runtime(int8_export["dir"], "tflite_int8")


def test_int8_parity_counts_agreement(int8_export, make_cfg):
    import keras

    folder = int8_export["int8"]
    model = keras.models.load_model(folder / "model.keras", compile=False)
    predictor = Predictor(folder, model=model)
    images = np.stack([preprocess(f, predictor.pre) for f in sample_files(int8_export)])
    report = parity_check(folder, ["tflite_int8"], model, predictor.mode, images, atol=1e-4, agreement=0.5)
    assert report["tflite_int8"]["max_abs_diff"] > 1e-4  # the exact formats' tolerance does not apply

    class ClassesShifted:
        """A reference that reads other strings: each class's probability moved to the next class."""

        def predict_on_batch(self, x):
            return np.roll(np.asarray(model.predict_on_batch(x)), 1, axis=-1)

    with pytest.raises(ParityError, match=r"tflite_int8 export reads 0\.\d+ of 8 images as the Keras model does "
                                          r"\(parity.quantized_agreement=0.5\); image \d+: keras "):
        parity_check(folder, ["tflite_int8"], ClassesShifted(), predictor.mode, images, atol=1e-4, agreement=0.5)
    with pytest.raises(ValueError, match="parity.quantized_agreement=1.5"):
        export(make_cfg([f"checkpoint={folder}", "parity.quantized_agreement=1.5"], config_name="export"))
    assert chosen_formats("all") == list(FORMATS) and "tflite_int8" not in FORMATS
    assert chosen_formats("all,tflite_int8") == [*FORMATS, "tflite_int8"]


def test_evaluate_scores_each_runtime_of_an_export_bundle(int8_export, tmp_path, monkeypatch):
    """checkpoint=<export folder> finds its run's data through bundle.json; ONNX scores
    exactly what Keras scores, the 8-bit model what it reads itself."""
    import mlflow

    from bearcat.evaluate import evaluate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", int8_export["tracking_uri"])
    folder = int8_export["int8"]

    def scores(runtime: str, *extra) -> dict:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return evaluate(compose(config_name="evaluate", overrides=[
                f"checkpoint={folder}", f"runtime={runtime}", "latency_images=3", *extra,
                f"paths.output_dir={tmp_path / runtime}", f"paths.cache_dir={int8_export['root'] / 'cache'}"]))

    keras_scores, onnx_scores, int8_scores = scores("keras"), scores("onnx"), scores("tflite_int8")
    test_size = OmegaConf.load(f"{CONF}/debug/fast.yaml").dataset.test_size
    assert keras_scores["test_images"] == onnx_scores["test_images"] == int8_scores["test_images"] == test_size
    for key in ("test_accuracy", "test_char_accuracy", "test_cer"):
        assert onnx_scores[key] == pytest.approx(keras_scores[key]), key
    with (tmp_path / "tflite_int8" / "analysis" / "predictions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    files, labels = [Path(r["file"]) for r in rows], [r["label"] for r in rows]
    own = load_predictor(folder, "tflite_int8").predict(files)
    assert int8_scores["test_accuracy"] == pytest.approx(np.mean([o["result"] == t for o, t in zip(own, labels)]))
    run = mlflow.tracking.MlflowClient(int8_export["tracking_uri"]).get_run(int8_scores["mlflow_run_id"])
    assert run.data.params["runtime"] == "tflite_int8"
    assert run.data.tags["mlflow.parentRunId"] == int8_export["run_id"]  # found through bundle.json
    with pytest.raises(ValueError, match="gradcam=true .* needs runtime=keras"):
        scores("onnx", "gradcam=true")
    greedy = scores("onnx", "decoder=greedy")  # read with another decoder than the model's beam search
    run = mlflow.tracking.MlflowClient(int8_export["tracking_uri"]).get_run(greedy["mlflow_run_id"])
    assert run.data.params["decoder"] == "greedy"
    assert mlflow.tracking.MlflowClient(int8_export["tracking_uri"]).get_run(
        onnx_scores["mlflow_run_id"]).data.params["decoder"] == "beam_search"
    own = load_predictor(folder, "onnx", decoding={"decoder": "greedy"}).predict(files)
    assert greedy["test_accuracy"] == pytest.approx(np.mean([o["result"] == t for o, t in zip(own, labels)]))


def test_the_server_answers_with_the_int8_model(int8_export):
    from fastapi.testclient import TestClient

    from bearcat.server.app import Limits, create_app

    folder = int8_export["int8"]
    files = sample_files(int8_export, 6)
    want = load_predictor(folder, "tflite_int8").predict(files)
    app = create_app(load_predictor(folder, "tflite_int8"), "int8", Limits(max_body_bytes=200_000, max_pixels=1_000_000))
    with TestClient(app) as client:
        assert client.get("/health").json()["runtime"] == "tflite_int8"
        for path, w in zip(files, want):
            r = client.post("/v1/predict", content=path.read_bytes(), headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            assert r.json()["result"] == w["result"]
            assert r.json()["confidence"] == pytest.approx(w["confidence"], abs=1e-6)


def test_quantized_parity_matches_boxes_in_any_order_within_a_few_pixels():
    from bearcat.export import close_answers

    def box(label, x1, y1):
        return {"label": label, "score": 0.9, "x1": x1, "y1": y1, "x2": x1 + 20.0, "y2": y1 + 20.0}

    keras_boxes = {"result": "AB", "boxes": [box("A", 42.4, 93.0), box("B", 42.6, 33.0)]}
    swapped = {"result": "BA", "boxes": [box("B", 42.4, 33.0), box("A", 42.6, 94.5)]}  # order and 1.5 px
    assert close_answers(keras_boxes, swapped, box_pixels=2)
    assert not close_answers(keras_boxes, swapped, box_pixels=1)
    assert not close_answers(keras_boxes, {"result": "AA", "boxes": [box("A", 42.4, 93.0), box("A", 42.6, 33.0)]}, 2)
    assert not close_answers(keras_boxes, {"result": "A", "boxes": [box("A", 42.4, 93.0)]}, 2)
    assert close_answers({"result": "", "boxes": []}, {"result": "", "boxes": []}, 2)
    # text models: the string itself
    assert close_answers({"result": "x7k", "confidence": 0.9}, {"result": "x7k", "confidence": 0.8}, 2)
    assert not close_answers({"result": "x7k"}, {"result": "x7K"}, 2)


def test_evaluate_and_export_take_model_as_predict_does(exported, tmp_path, monkeypatch):
    """model= names the model in evaluate and export as in predict and serve: a registered
    model (scored on its run's test split, found through bundle.json, and exported again), a
    file of a bundle (scored in that format), a run id. Two ways at once are refused by name."""
    import mlflow

    from bearcat.evaluate import evaluate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", exported["tracking_uri"])
    version = exported["summary"]["registered_version"]

    def scores(*overrides, name: str) -> dict:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return evaluate(compose(config_name="evaluate", overrides=[
                *overrides, "latency_images=2", f"paths.output_dir={tmp_path / name}",
                f"paths.cache_dir={exported['root'] / 'cache'}"]))

    by_run = scores(f"run_id={exported['run_id']}", name="run")
    registered = scores(f"model=models:/{exported['model_name']}/{version}", name="registered")
    onnx_file = scores(f"model={exported['dir'] / 'model.onnx'}", name="onnx")
    run_id = scores(f"model={exported['run_id']}", name="model_run_id")
    test_size = OmegaConf.load(f"{CONF}/debug/fast.yaml").dataset.test_size
    for got in (registered, onnx_file, run_id):
        assert got["test_images"] == test_size
        assert got["test_accuracy"] == pytest.approx(by_run["test_accuracy"])
        assert got["test_cer"] == pytest.approx(by_run["test_cer"])
    client = mlflow.tracking.MlflowClient(exported["tracking_uri"])
    for got, runtime in ((registered, "keras"), (onnx_file, "onnx"), (run_id, "keras")):
        run = client.get_run(got["mlflow_run_id"])
        assert run.data.params["runtime"] == runtime
        assert run.data.tags["mlflow.parentRunId"] == exported["run_id"]
    assert client.get_run(onnx_file["mlflow_run_id"]).data.params["checkpoint"] == str(exported["dir"] / "model.onnx")

    with pytest.raises(ValueError, match=f"run_id={exported['run_id']} and model=.*: name the model once"):
        scores(f"run_id={exported['run_id']}", f"model={exported['dir']}", name="twice")
    with pytest.raises(FileNotFoundError, match="model=.*missing: no such file or folder"):
        scores(f"model={tmp_path / 'missing'}", name="missing")
    # a mistyped file or folder name: the one meant, for evaluate as for predict and serve
    from bearcat.bundle import resolve_model

    typo = exported["dir"] / "model.onnxx"
    with pytest.raises(FileNotFoundError, match=f"model={typo}: no such file or folder; did you mean "
                                                f"{exported['dir'] / 'model.onnx'}\\?$"):
        scores(f"model={typo}", name="typo")
    with pytest.raises(FileNotFoundError, match=f"model={typo}: no such file or folder, and not an MLflow run id; "
                                                f"did you mean {exported['dir'] / 'model.onnx'}\\?$"):
        resolve_model(str(typo), str(tmp_path), key="model")
    with pytest.raises(ValueError, match="pass run_id=.*checkpoint=.*model="):
        scores(name="none")

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        summary = export(compose(config_name="export", overrides=[
            f"model=models:/{exported['model_name']}/{version}", "format=onnx", f"output_dir={tmp_path / 'export'}",
            f"paths.output_dir={tmp_path / 'export_job'}", f"paths.cache_dir={exported['root'] / 'cache'}"]))
    assert summary["formats"] == ["onnx"] and summary["parity"]["onnx"]["different_results"] == 0
    assert read_meta(tmp_path / "export")["mlflow_run_id"] == exported["run_id"]
