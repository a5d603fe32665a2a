"""mode.answer=arithmetic: a maths captcha's reading worked out (`7*3=?` -> `21`) in the
bundle's answers, predict's output files, and the server; set in training or when reading."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir

from conftest import CONF, ROOT
from test_serve import http_entry_point, upload_page


@pytest.mark.parametrize("reading, answer", [
    ("7*3=?", "21"), ("12/4=?", "3"), ("15-6=?", "9"), ("9+11=?", "20"), ("7 + 5 = ?", "12"), ("3x4?", "12"),
    ("8÷2=", "4"), ("2×6", "12"), ("2+3*4", "14"), ("(2+3)*4=", "20"), ("-3+5", "2"), ("7/2=?", "3.5"),
    ("3加5等于?", "8"), ("9减去4=？", "5"), ("6乘以7等于", "42"), ("8除2", "4"), ("１２＋３＝？", "15"),
    # not an expression with an operator: misread away, or nothing to work out
    ("20-=?", None), ("154=?", None), ("1/0=?", None), ("", None), ("7+5?=", None), ("a+b", None), ("(2+3", None),
    ("三加五", None),
])
def test_arithmetic_works_out_a_reading_without_eval(reading, answer):
    from bearcat.answers import arithmetic

    assert arithmetic(reading) == answer


def test_unknown_answers_and_answers_of_non_text_models_are_refused():
    from bearcat.answers import answer_function
    from bearcat.bundle import decoding_override

    with pytest.raises(ValueError, match=r"mode.answer='sum'.*arithmetic"):
        answer_function("sum")
    with pytest.raises(ValueError, match=r"^answer='sum'"):
        decoding_override("ctc", {"answer": "sum"})
    with pytest.raises(ValueError, match=r"answer=arithmetic.*mode is num_classes"):
        decoding_override("num_classes", {"answer": "arithmetic"})
    assert decoding_override("ordinary", {"answer": "arithmetic", "decoder": None}) == {"answer": "arithmetic"}
    with pytest.raises(ValueError, match=r"decoder=greedy.*ctc and ctc_tiny"):  # still refused for ordinary
        decoding_override("ordinary", {"answer": "arithmetic", "decoder": "greedy"})


def test_a_maths_model_answers_in_predict_files_and_the_server(make_cfg, tmp_path):
    from bearcat.answers import arithmetic
    from bearcat.bundle import BUNDLE_FILE, Predictor, read_meta
    from bearcat.predict import predict
    from bearcat.server.app import create_app
    from bearcat.train import train

    data = tmp_path / "maths"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_maths_captchas.py"), "--out", str(data),
                    "--count", "48"], check=True, capture_output=True)
    train(make_cfg(["debug=fast", "dataset=folder", f"dataset.root={data}", "dataset.labels_file=labels.csv",
                    "mode.answer=arithmetic", "mode.decoder=greedy"]))
    bundle = tmp_path / "run" / "model"
    assert read_meta(bundle)["mode"]["answer"] == "arithmetic"

    images = sorted(data.glob("*.png"))[:6]
    readings = Predictor(bundle).predict(images)
    for r in readings:  # after one epoch most readings are no expression: answer None, still given
        assert "answer" in r and r["answer"] == arithmetic(r["result"])
    out = tmp_path / "readings.csv"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[f"model={bundle}", f"images={data}", f"out={out}",
                                                        "runtime=keras"])
    assert predict(cfg)["read"] == 48
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "result", "confidence", "answer"]
    assert all(row["answer"] == (arithmetic(row["result"]) or "") for row in rows)

    with TestClient(create_app(Predictor(bundle), "maths")) as c:
        r = c.post("/v1/predict", content=images[0].read_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == readings[0]["result"] and r.json()["answer"] == readings[0]["answer"]
    # the upload page shows the reading and its answer
    with http_entry_point("bearcat.serve", [f"model={bundle}", "runtime=keras"], tmp_path / "serve.log",
                          "/health") as url, upload_page(url, "keras") as page:
        page.set_input_files("#file", str(images[0]))
        page.wait_for_function("document.getElementById('confidence').textContent.startsWith('confidence')")
        want = readings[0]
        answer = "(no answer)" if want["answer"] is None else want["answer"]
        assert page.inner_text("#answer") == f"{want['result'] or '(nothing read)'} = {answer}"

    # a model trained without it (here: its bundle with the key taken out) answers when asked
    older = tmp_path / "older"
    shutil.copytree(bundle, older)
    meta = json.loads((older / BUNDLE_FILE).read_text())
    del meta["mode"]["answer"]
    (older / BUNDLE_FILE).write_text(json.dumps(meta))
    assert "answer" not in Predictor(older).predict(images[:1])[0]
    asked = Predictor(older, decoding={"answer": "arithmetic"}).predict(images)
    assert [(r["result"], r["answer"]) for r in asked] == [(r["result"], r["answer"]) for r in readings]
