"""The labelling tool: queue order, saved copies, correction, undo, restart, errors, and
the page itself in headless Chromium (python -m bearcat.label in a subprocess)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir

from bearcat.bundle import MODEL_FILE, Predictor, write_bundle
from bearcat.labelling import LabelQueue
from bearcat.server.label_app import create_label_app
from bearcat.warmstart import output_layer
from conftest import CONF, ROOT
from test_serve import CHROMIUM, CHROMIUM_ARGS, http_entry_point

IMAGES = 6


@pytest.fixture(scope="module")
def reading_bundle(trained_run, tmp_path_factory):
    """trained_run's model with the CTC blank pushed down, so that this barely trained
    model reads every image as some non-empty text, with confidences that differ."""
    source = trained_run["output_dir"] / "model"
    predictor = Predictor(source)
    model = keras.models.load_model(source / MODEL_FILE, compile=False)
    layer = output_layer(model)
    kernel, bias = layer.get_weights()
    bias[::predictor.mode.vocab.num_classes] -= 30.0  # the blank of each CTC step the layer writes
    layer.set_weights([kernel, bias])
    return write_bundle(tmp_path_factory.mktemp("reading") / "bundle", model, predictor.mode, predictor.pre)


@pytest.fixture
def unlabelled(trained_run, tmp_path):
    """IMAGES generated captchas renamed without labels, a broken image and a text file."""
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    files = sorted((trained_run["root"] / "cache" / "synthetic").glob("*/test/*.png"))[:IMAGES]
    for i, path in enumerate(files):
        shutil.copy2(path, folder / f"captcha{i}.png")
    (folder / "broken.png").write_bytes(b"not a picture")
    (folder / "notes.txt").write_text("a file that is not an image")
    return folder


def snapshot(folder: Path) -> dict:
    return {p.name: (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.iterdir())}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def expected_order(folder: Path, bundle: Path) -> list[tuple[str, str, float]]:
    files = sorted(folder.glob("captcha*.png"))
    results = Predictor(bundle).predict(files)
    rows = [(p.name, r["result"], r["confidence"]) for p, r in zip(files, results)]
    return sorted(rows, key=lambda row: (row[2], row[0]))


def test_queue_orders_saves_copies_undoes_and_resumes(unlabelled, reading_bundle, tmp_path):
    before = snapshot(unlabelled)
    out = tmp_path / "labelled"
    queue = LabelQueue(unlabelled, out, Predictor(reading_bundle))
    want = expected_order(unlabelled, reading_bundle)
    assert [it.path.name for it in queue.pending] == [name for name, _, _ in want]  # least confident first
    assert [it.prediction for it in queue.pending] == [text for _, text, _ in want]
    assert all(text for _, text, _ in want) and len({c for _, _, c in want}) == IMAGES
    assert queue.unreadable == ["broken.png"]

    client = TestClient(create_label_app(queue, "reading"))
    first = client.get("/api/state").json()
    assert first["item"]["name"] == want[0][0] and first["remaining"] == IMAGES and not first["can_undo"]
    assert client.get(f"/api/image/{first['item']['id']}").content == (unlabelled / want[0][0]).read_bytes()
    saved = client.post("/api/answer", json={"id": first["item"]["id"], "answer": first["item"]["prediction"]})
    assert saved.status_code == 200 and saved.json()["item"]["name"] == want[1][0]
    name = saved.json()["saved_as"]
    assert name == f"{want[0][1]}_{md5(unlabelled / want[0][0])}.png"
    assert (out / name).read_bytes() == (unlabelled / want[0][0]).read_bytes()

    second = saved.json()["item"]
    assert client.post("/api/answer", json={"id": second["id"], "answer": "Q7_"}).status_code == 400  # "_"
    assert client.post("/api/answer", json={"id": second["id"], "answer": "  "}).status_code == 400
    assert client.post("/api/answer", json={"id": second["id"], "answer": None}).status_code == 422
    assert client.post("/api/answer", json={"id": second["id"], "answer": "Q7\nW"}).status_code == 400
    too_long = client.post("/api/answer", json={"id": second["id"], "answer": "字" * 72})  # 216 bytes of UTF-8
    assert too_long.status_code == 400 and "longer than a file name label" in too_long.json()["detail"]
    deep = client.post("/api/answer", content=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert deep.status_code == 422
    fixed = client.post("/api/answer", json={"id": second["id"], "answer": "Q7W"}).json()
    assert (out / fixed["saved_as"]).is_file() and fixed["saved_as"].startswith("Q7W_")
    assert client.post("/api/answer", json={"id": second["id"], "answer": "X"}).status_code == 409  # done
    undone = client.post("/api/undo").json()
    assert undone["undone"] == {"id": second["id"], "answer": "Q7W"} and undone["item"]["id"] == second["id"]
    assert not (out / fixed["saved_as"]).exists() and sorted(p.name for p in out.iterdir()) == [name]

    skipped = client.post("/api/skip", json={"id": second["id"]}).json()  # comes back after the others
    assert skipped["skipped_name"] == want[1][0] and skipped["skipped"] == 1
    assert skipped["item"]["name"] == want[2][0] and [it.id for it in queue.pending][-1] == second["id"]
    assert client.post("/api/skip", json={"id": first["item"]["id"]}).status_code == 409  # answered
    assert client.post("/api/skip", json={"name": "x"}).status_code == 422
    assert sorted(p.name for p in out.iterdir()) == [name]  # a skip saves nothing

    again = LabelQueue(unlabelled, out, Predictor(reading_bundle))  # a restart: the labelled one is not shown
    assert [it.path.name for it in again.pending] == [n for n, _, _ in want[1:]] and again.done_before == 1
    client.post("/api/undo")
    assert client.post("/api/undo").status_code == 409 and not list(out.iterdir())
    assert snapshot(unlabelled) == before


def test_answers_in_a_labels_list_may_hold_any_character(unlabelled, reading_bundle, tmp_path):
    """labels_file=labels.csv: copies named <md5>.<ext>, answers as rows of the list, so a
    maths captcha's "3/4*" or "a_b" can be saved; undo takes back the row and the copy; the
    folder source reads the list."""
    import csv

    from bearcat.data.sources import folder

    before = snapshot(unlabelled)
    out = tmp_path / "labelled"
    queue = LabelQueue(unlabelled, out, Predictor(reading_bundle), labels_file="labels.csv")
    client = TestClient(create_label_app(queue, "reading"))
    answers = ["3/4*", "a_b", ".5?", "x\\y"]
    saved = []
    for answer in answers:
        item = client.get("/api/state").json()["item"]
        reply = client.post("/api/answer", json={"id": item["id"], "answer": f" {answer} "})
        assert reply.status_code == 200, reply.text
        assert reply.json()["saved_as"] == f"{item['id']}.png"
        assert reply.json()["last"] == f"{answer} ({item['id']}.png in labels.csv)"
        saved.append((item["id"], answer))
    item = client.get("/api/state").json()["item"]
    assert client.post("/api/answer", json={"id": item["id"], "answer": "Q7\nW"}).status_code == 400
    assert client.post("/api/undo").json()["undone"] == {"id": saved[-1][0], "answer": answers[-1]}
    with open(out / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["file", "label"]] + [[f"{i}.png", a] for i, a in saved[:-1]]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{i}.png" for i, _ in saved[:-1]] + ["labels.csv"])
    for image_id, _ in saved[:-1]:
        assert md5(out / f"{image_id}.png") == image_id  # byte-identical copies

    again = LabelQueue(unlabelled, out, labels_file="labels.csv")  # a restart appends to the same list
    assert len(again.pending) == IMAGES - 3 and again.done_before == 3
    # stopped between the copy and its row: the image is asked again, its answer then listed
    item = again.pending[0]
    shutil.copyfile(item.path, out / f"{item.id}.png")
    resumed = LabelQueue(unlabelled, out, labels_file="labels.csv")
    assert resumed.pending[0].id == item.id and resumed.done_before == 3
    resumed.answer(item.id, "7+2")
    splits = folder(str(out), labels_file="labels.csv", val_ratio=0, test_ratio=0)
    assert sorted(label for _, label in splits.train) == sorted(answers[:-1] + ["7+2"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "labels.csv").write_text("name,text\na.png,ab\n")
    with pytest.raises(ValueError, match="labels_file=.*labels.csv: no 'file' column"):
        LabelQueue(unlabelled, tmp_path / "other", labels_file="labels.csv")
    (tmp_path / "other" / "labels.csv").write_text("file,label,note\na.png,ab,x\n")
    with pytest.raises(ValueError, match=r"header \['file', 'label', 'note'\], answers are appended as file,label"):
        LabelQueue(unlabelled, tmp_path / "other", labels_file="labels.csv")
    shutil.copyfile(out / f"{saved[0][0]}.png", tmp_path / "other" / "ab12_x.png")
    with pytest.raises(ValueError, match="holds images named by their label .ab12_x.png, ...."):
        LabelQueue(unlabelled, tmp_path / "other", labels_file="new.csv")
    assert snapshot(unlabelled) == before


def test_label_errors_name_the_key(unlabelled, tmp_path, monkeypatch, caplog):
    from bearcat.label import build_label_app

    store = tmp_path / "never.db"  # a mistyped model path must not open (or create) a tracking store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")

    def cfg(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose(config_name="label", overrides=list(overrides))

    with pytest.raises(ValueError, match="dir is not set"):
        build_label_app(cfg(f"out={tmp_path / 'o'}"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dir=.*nope: no such folder"):
        build_label_app(cfg(f"dir={tmp_path / 'nope'}", f"out={tmp_path / 'o'}"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model=.*not an MLflow run id"):
        build_label_app(cfg(f"dir={unlabelled}", f"out={tmp_path / 'o'}", f"model={tmp_path / 'nope'}"),
                        str(tmp_path))
    assert not store.exists()
    for threshold in ("0", "1.5", "abc"):  # refused before the model (here a path that is not there) is read
        with pytest.raises(ValueError, match=f"accept_above={threshold}: a confidence between 0 .excluded. and 1"):
            build_label_app(cfg(f"dir={unlabelled}", f"out={tmp_path / 'o'}", f"model={tmp_path / 'nope'}",
                                f"accept_above={threshold}"), str(tmp_path))
    detector = tmp_path / "detector"  # the bundle's own description says it: refused before its model loads
    detector.mkdir()
    (detector / "bundle.json").write_text('{"format": "bearcat-bundle/1", "mode": {"name": "efficientdet"}}')
    with pytest.raises(ValueError, match=f"model={detector} is a detector .*dataset=voc"):
        build_label_app(cfg(f"dir={unlabelled}", f"out={tmp_path / 'o'}", f"model={detector}"), str(tmp_path))
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="out=.*must differ from dir"):
        LabelQueue(unlabelled, unlabelled)
    (unlabelled / "day2").mkdir()  # only the images directly in dir= are offered; the rest are counted
    shutil.copy2(unlabelled / "captcha0.png", unlabelled / "day2" / "more.png")
    with caplog.at_level("WARNING", logger="bearcat"):
        queue = LabelQueue(unlabelled, tmp_path / "o")  # no model: file-name order, nothing pre-filled
    assert (f"dir={unlabelled}: 1 images in its sub-folders are not offered (only the images directly in it): "
            "day2/ 1") in caplog.messages
    assert [it.path.name for it in queue.pending] == [f"captcha{i}.png" for i in range(IMAGES)]
    assert queue.unreadable == ["broken.png"]
    assert all(it.prediction == "" and it.confidence is None for it in queue.pending)


def test_accept_above_saves_only_confident_readings_without_a_page(unlabelled, reading_bundle, tmp_path):
    """`python -m bearcat.label ... accept_above=T` (pseudo-labelling): every reading at
    least T confident is saved as a copy named after it; the rest, and the source, stay."""
    before = snapshot(unlabelled)
    want = expected_order(unlabelled, reading_bundle)
    # The threshold goes in the widest gap between neighbouring confidences (geometric
    # middle): two readings a few per cent apart can swap between this process and the
    # subprocess, so a threshold on a near-tie would make the expected set a coin toss.
    confs = [max(conf, 1e-300) for _, _, conf in want]
    k = max(range(1, IMAGES), key=lambda i: confs[i] / confs[i - 1])
    assert confs[k] / confs[k - 1] > 1.5, f"no clear gap between the readings' confidences: {confs}"
    threshold = (confs[k] * confs[k - 1]) ** 0.5
    confident = {md5(unlabelled / name): text for name, text, conf in want if conf >= threshold}
    assert 0 < len(confident) < IMAGES
    out = tmp_path / "pseudo"
    done = subprocess.run([sys.executable, "-m", "bearcat.label", f"dir={unlabelled}", f"out={out}",
                           f"model={reading_bundle}", f"accept_above={threshold}",
                           f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = {p.name.split("_", 1)[1].split(".")[0]: p.name.split("_", 1)[0] for p in out.iterdir()}
    assert saved == confident
    assert f"saved {len(confident)} readings" in done.stdout
    assert snapshot(unlabelled) == before
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        no_model = compose(config_name="label", overrides=[f"dir={unlabelled}", f"out={out}", "accept_above=0.9"])
    from bearcat.label import build_label_app
    with pytest.raises(ValueError, match="accept_above is set but model is not"):
        build_label_app(no_model, str(tmp_path))


def test_accept_above_names_readings_it_cannot_save_once_a_reason(unlabelled, tmp_path, caplog):
    """An untrained model reads every image as nothing, confidently: one warning for them all
    (it was one line per image), another for an answer no file name can hold; all stay queued."""
    queue = LabelQueue(unlabelled, tmp_path / "out")
    readings = ["", "", "", "", "a/b", "ok"]
    for it, text in zip(queue.pending, readings):
        it.prediction, it.confidence = text, 0.99
    caplog.clear()  # the broken image's warning, from reading the folder
    with caplog.at_level("WARNING", logger="bearcat.labelling"):
        saved = queue.accept_confident(0.5)
    names = [it.path.name for it in queue.pending]
    assert [p.name.split("_")[0] for p in saved] == ["ok"] and len(names) == 5
    assert [r.getMessage() for r in caplog.records] == [
        f"not saved, left to label: {names[0]}, {names[1]}, {names[2]} and 1 more: empty answer: type the "
        "characters of the image",
        f"not saved, left to label: {names[4]}: answer 'a/b': cannot be part of a file name label (/); "
        "labels_file=labels.csv saves answers in a list instead"]


@pytest.fixture
def label_server(unlabelled, reading_bundle, tmp_path):
    """`python -m bearcat.label` on a free loopback port: (URL, output folder)."""
    out = tmp_path / "labelled"
    overrides = [f"dir={unlabelled}", f"out={out}", f"model={reading_bundle}"]
    with http_entry_point("bearcat.label", overrides, tmp_path / "label.log", "/api/state") as url:
        yield url, out


def test_label_page_keyboard_only_in_headless_chromium(label_server, unlabelled, reading_bundle, tmp_path):
    from playwright.sync_api import sync_playwright

    url, out = label_server
    before = snapshot(unlabelled)
    want = expected_order(unlabelled, reading_bundle)
    shown = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")

            def wait_for(name: str) -> dict:
                """The page shows `name`, its image loaded, the answer field focused."""
                image_id = json.dumps(md5(unlabelled / name))
                page.wait_for_function(f"document.getElementById('image').src.endsWith({image_id})"
                                       " && document.getElementById('image').complete"
                                       " && document.activeElement.id === 'answer'")
                state = page.evaluate("fetch('api/state').then((r) => r.json())")
                assert state["item"]["name"] == name
                shown.append((name, state["item"]["confidence"]))
                return state

            wait_for(want[0][0])
            assert page.input_value("#answer") == want[0][1]  # the model's answer, pre-filled
            assert page.evaluate("document.getElementById('image').naturalWidth") > 0
            assert f"confidence {want[0][2]:.3f}" in page.inner_text("#guess")
            page.keyboard.press("Enter")  # accept
            wait_for(want[1][0])
            assert page.inner_text("#status").startswith(f"saved {want[0][1]}_")
            page.keyboard.type("K9P")  # typing replaces the pre-filled answer
            page.keyboard.press("Enter")
            wait_for(want[2][0])
            corrected = out / f"K9P_{md5(unlabelled / want[1][0])}.png"
            assert corrected.read_bytes() == (unlabelled / want[1][0]).read_bytes()
            page.keyboard.press("Control+z")  # undo: the corrected image comes back, its answer pre-filled
            wait_for(want[1][0])
            assert page.input_value("#answer") == "K9P" and not corrected.exists()
            page.keyboard.press("End")
            page.keyboard.press("Backspace")
            page.keyboard.type("Q")
            page.keyboard.press("Enter")
            wait_for(want[2][0])
            page.keyboard.press("Escape")  # skip: it comes back after the others
            for name, _, _ in want[3:]:
                wait_for(name)
                if name == want[3][0]:
                    assert page.inner_text("#status") == f"skipped {want[2][0]}: it comes back after the others"
                    assert page.input_value("#answer") == want[3][1]
                page.keyboard.press("Enter")
            wait_for(want[2][0])
            page.keyboard.press("Enter")
            page.wait_for_function("!document.getElementById('done').hidden")
            page.screenshot(path=str(tmp_path / "label_page.png"))
        finally:
            browser.close()

    names = [n for n, _ in shown]
    assert names[:2] == [want[0][0], want[1][0]]
    assert names[3:] == [n for n, _, _ in want[1:]] + [want[2][0]]  # the skipped one last
    confidences = [c for _, c in shown[3:-1]]
    assert confidences == sorted(confidences)  # least confident first
    assert np.allclose(confidences, [c for _, _, c in want[1:]], rtol=1e-4)
    saved = {p.name for p in out.iterdir()}
    assert saved == {f"{want[0][1]}_{md5(unlabelled / want[0][0])}.png", f"K9Q_{md5(unlabelled / want[1][0])}.png"} | \
        {f"{text}_{md5(unlabelled / name)}.png" for name, text, _ in want[2:]}
    for path in out.iterdir():  # byte-identical copies
        assert md5(path) == path.stem.split("_", 1)[1]
    assert snapshot(unlabelled) == before  # the source folder is untouched (names, bytes, times, modes)
    assert (tmp_path / "label_page.png").stat().st_size > 1000
