"""The HTTP server: FastAPI's test client for the API and its errors, a real uvicorn on
loopback for concurrency, the client example and the upload page in headless Chromium."""
from __future__ import annotations

import base64
import contextlib
import functools
import importlib.util
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir
from PIL import Image

from bearcat.bundle import Predictor, read_meta
from bearcat.runtime import load_predictor
from bearcat.serve import build_app
from bearcat.server.app import Limits, create_app
from conftest import CONF, ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def sample_files(run: dict, count: int = 6) -> list[Path]:
    files = sorted((run["root"] / "cache" / "synthetic").glob("*/test/*.png"))[:count]
    assert len(files) == count
    return files


@pytest.fixture(scope="module")
def expected(exported):
    """What the library (Keras, the training run's own bundle) reads on the sample files."""
    files = sample_files(exported)
    return files, Predictor(exported["output_dir"] / "model").predict(files)


@pytest.fixture(scope="module")
def client(exported):
    app = create_app(load_predictor(exported["dir"], "onnx"), "tiny",
                     Limits(max_body_bytes=200_000, max_pixels=1_000_000))
    with TestClient(app) as c:
        yield c


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_entry_point(module: str, overrides: list[str], log: Path, ready_path: str, timeout: float = 120,
                     python: str = sys.executable, cwd: Path = ROOT):
    """`python -m <module> <overrides> port=<free port>` in a subprocess, waited for until
    `ready_path` answers; yields its URL and stops it afterwards."""
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "w") as out:
        proc = subprocess.Popen([python, "-m", module, *overrides, f"port={port}",
                                 f"hydra.run.dir={log.parent / 'hydra'}"], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + ready_path, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{module} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    """`python -m bearcat.serve` on a free loopback port; yields its URL."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with http_entry_point("bearcat.serve", [f"model={exported['dir']}"], log, "/health", timeout=90) as url:
        yield url


def test_predict_answers_like_the_library(client, expected):
    files, want = expected
    for path, w in zip(files, want):
        data = path.read_bytes()
        answers = [
            client.post("/v1/predict", json={"image": base64.b64encode(data).decode()}),
            client.post("/v1/predict", json={"image": "data:image/png;base64," + base64.b64encode(data).decode()}),
            client.post("/v1/predict", files={"file": (path.name, data, "image/png")}),
            client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"}),
            # what `curl --data-binary @file` sends: the image's bytes labelled a form
            client.post("/v1/predict", content=data, headers={"Content-Type": "application/x-www-form-urlencoded"}),
        ]
        for r in answers:
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"result", "confidence", "time_ms"}
            assert body["result"] == w["result"]
            assert body["confidence"] == pytest.approx(w["confidence"], abs=1e-5)
            assert body["time_ms"] > 0


def test_the_app_warms_the_model_up_before_the_first_request(exported):
    """create_app runs the model on a batch of one and a batch of two before serving, so no
    request pays for building the graph."""
    predictor = load_predictor(exported["dir"], "keras")
    calls = []
    model = predictor.model

    class Counting:
        def predict_on_batch(self, x):
            calls.append(len(x))
            return model.predict_on_batch(x)

    predictor.model = Counting()
    create_app(predictor, "tiny")
    assert calls == [1, 2]


def png_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 255).save(buf, "PNG")
    return buf.getvalue()


def lab_tiff() -> bytes:
    """An image PIL decodes but cannot convert to grey or RGB."""
    buf = io.BytesIO()
    Image.new("LAB", (20, 10)).save(buf, "TIFF")
    return buf.getvalue()


BAD_REQUESTS = {
    "bad base64": (dict(json={"image": "not base64 at all!"}), 400, "not valid base64"),
    "not an image": (dict(json={"image": base64.b64encode(b"hello world").decode()}), 400, "cannot decode image"),
    "raw non-image": (dict(content=b"GIF89a broken", headers={"Content-Type": "image/gif"}), 400, "cannot decode"),
    "empty raw body": (dict(content=b"", headers={"Content-Type": "image/png"}), 400, "empty"),
    "no image field": (dict(json={"picture": "x"}), 422, 'field "image"'),
    "image not text": (dict(json={"image": 12}), 400, "expected base64 text"),
    "broken json": (dict(content=b'{"image": ', headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
    "json nested too deep": (dict(content=b"[" * 100_000, headers={"Content-Type": "application/json"}), 400,
                             "not valid JSON"),
    "LAB image": (dict(content=lab_tiff(), headers={"Content-Type": "image/tiff"}), 400, "cannot convert image"),
    "no file field": (dict(files={"upload": ("a.png", b"x", "image/png")}), 422, 'named "file"'),
    "wrong type": (dict(content=b"text", headers={"Content-Type": "text/plain"}), 415, "unsupported Content-Type"),
    "a real form": (dict(data={"image": "x"}), 415, '-H "Content-Type: image/png"'),
    "too large": (dict(content=b"\0" * 300_000, headers={"Content-Type": "image/png"}), 413, "exceeds the limit"),
    "bomb": (dict(content=png_bytes(4000, 4000), headers={"Content-Type": "image/png"}), 413, "pixels exceeds"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_with_a_message(client, case):
    kwargs, status, message = BAD_REQUESTS[case]
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_health_models_docs_and_click(client, exported):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["runtime"] == "onnx" and health["api_key_required"] is False
    info = client.get("/v1/models").json()["models"][0]
    assert info["mode"] == "ctc" and info["runtime"] == "onnx" and info["source_run_id"] == exported["run_id"]
    pre = json.loads((exported["dir"] / "bundle.json").read_text())["preprocess"]
    assert info["input"] == {k: pre[k] for k in ("height", "width", "channels")}
    assert info["parity"]["onnx"]["different_results"] == 0
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/models", "/health", "/v1/click"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    assert client.get("/v1/predict").status_code == 405  # the endpoint answers POST only
    lost = client.post("/predict", files={"file": ("a.png", b"x")})  # a path of another tool's API
    assert lost.status_code == 404 and lost.json()["detail"].startswith(
        "no endpoint at /predict; the server answers POST /v1/predict, /v1/click, /v1/explain; GET / (the upload page)")
    assert set(spec["paths"]) - {"/", "/v1/predict", "/v1/click", "/v1/explain", "/health", "/v1/models"} == set()
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text
    r = client.post("/v1/click", json={})
    assert r.status_code == 404 and "does not answer click captchas" in r.json()["detail"]


def test_api_key_is_required_when_set(exported, expected):
    files, want = expected
    app = create_app(load_predictor(exported["dir"], "onnx"), "tiny", api_key="s3cret")
    with TestClient(app) as c:
        data = files[0].read_bytes()
        r = c.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        r = c.post("/v1/predict", content=data, headers={"Content-Type": "image/png", "X-API-Key": "wrong"})
        assert r.status_code == 401
        r = c.post("/v1/predict", content=data, headers={"Content-Type": "image/png", "X-API-Key": "s3cret"})
        assert r.status_code == 200 and r.json()["result"] == want[0]["result"]
        assert c.get("/health").json()["api_key_required"] is True
        assert c.get("/v1/models").status_code == 401


def test_serve_a_registered_model(exported, expected, tmp_path, monkeypatch):
    files, want = expected
    monkeypatch.setenv("MLFLOW_TRACKING_URI", exported["tracking_uri"])
    version = exported["summary"]["registered_version"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="serve", overrides=[f"model=models:/{exported['model_name']}/{version}"])
    with TestClient(build_app(cfg, str(tmp_path))) as c:
        assert c.get("/v1/models").json()["models"][0]["name"] == f"{exported['model_name']}/{version}"
        got = [c.post("/v1/predict", content=f.read_bytes(), headers={"Content-Type": "image/png"}).json()
               for f in files]
    assert [g["result"] for g in got] == [w["result"] for w in want]


def test_workers_processes_share_the_port(exported, expected, tmp_path, monkeypatch):
    """`workers=2` with a registered model: both processes come up on the one port (their
    /health pids), name the model alike, and every answer is the library's."""
    from concurrent.futures import ThreadPoolExecutor

    solve = load_script("client_example").solve
    files, want = expected
    monkeypatch.setenv("MLFLOW_TRACKING_URI", exported["tracking_uri"])
    version = exported["summary"]["registered_version"]
    model = f"models:/{exported['model_name']}/{version}"
    log = tmp_path / "server.log"
    with http_entry_point("bearcat.serve", [f"model={model}", "workers=2"], log, "/health", timeout=120) as url:
        def health(_):
            with urllib.request.urlopen(url + "/health", timeout=10) as r:  # a new connection each time
                return json.load(r)

        pids: set[int] = set()
        deadline = time.monotonic() + 60  # the second process may still be loading its model
        with ThreadPoolExecutor(8) as pool:
            while len(pids) < 2 and time.monotonic() < deadline:
                answers = list(pool.map(lambda f: solve(url, f.read_bytes()), files * 2))
                assert [a["result"] for a in answers] == [w["result"] for w in want] * 2
                pids |= {h["pid"] for h in pool.map(health, range(32))}
        assert {h["model"] for h in map(health, range(4))} == {f"{exported['model_name']}/{version}"}
    assert len(pids) == 2, f"answers came from the processes {pids}:\n{log.read_text()[-2000:]}"


def test_serve_workers_fail_once_with_the_reason(exported, tmp_path):
    """workers=0 is refused; a bundle the workers could not load stops the command with the
    reason (checked in the parent) instead of a loop of dying workers."""
    def serve(*overrides):
        return subprocess.run([sys.executable, "-m", "bearcat.serve", *overrides, f"hydra.run.dir={tmp_path}"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    out = serve(f"model={exported['dir']}", "workers=0")
    assert out.returncode != 0 and out.stderr.rstrip().endswith("workers=0: a whole number, 1 or more")
    # before the model is read (here there is none): `port=abc` ended with "invalid literal for int()"
    for setting, said in [("port=abc", "port=abc: a whole number, from 0 to 65535"),
                          ("keep_alive_seconds=-1", "keep_alive_seconds=-1: a whole number, 0 or more"),
                          ("threads=-1", "threads=-1: a whole number, 0 or more")]:
        out = serve(f"model={tmp_path / 'nowhere'}", setting)
        assert out.returncode == 1 and out.stderr.rstrip().endswith(said) and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "bearcat.label", f"dir={tmp_path}", f"out={tmp_path / 'o'}",
                          f"model={tmp_path / 'nowhere'}", "port=80000", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1 and out.stderr.rstrip().endswith("port=80000: a whole number, from 0 to 65535")
    out = subprocess.run([sys.executable, "-m", "bearcat.label", f"dir={tmp_path}", f"out={tmp_path / 'o'}",
                          f"model={tmp_path / 'nowhere'}", "threads=x", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1 and out.stderr.rstrip().endswith("threads=x: a whole number, 0 or more")
    bundle = tmp_path / "no_tflite"
    shutil.copytree(exported["dir"], bundle)
    (bundle / "model.tflite").unlink()  # a copy: the fixture's bundle keeps its file
    out = serve(f"model={bundle}", "workers=2", "runtime=tflite")
    assert out.returncode != 0 and "has no tflite model" in out.stderr


def test_real_server_answers_concurrent_clients(server, expected):
    solve = load_script("client_example").solve
    files, want = expected
    answers: dict[tuple[int, int], dict] = {}

    def client_loop(k: int):
        for i, path in enumerate(files):
            answers[(k, i)] = solve(server, path.read_bytes())

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == 8 * len(files)
    for (k, i), answer in answers.items():
        assert answer["result"] == want[i]["result"]
        assert answer["confidence"] == pytest.approx(want[i]["confidence"], abs=1e-5)
    with urllib.request.urlopen(server + "/health") as r:
        health = json.load(r)
    assert health["images"] >= 8 * len(files)
    assert 1 <= health["batches"] <= health["images"]


def test_client_example_prints_answers_and_accuracy(server, expected, tmp_path):
    files, want = expected
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "client_example.py"), str(folder), "--url", server],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    right = sum(w["result"] == f.name.split("_")[0] for f, w in zip(files, want))
    assert f"accuracy: {right}/{len(files)} = {right / len(files):.4f}" in out.stdout
    assert out.stdout.count(".png:") == len(files)

    # the same images under plain names, their labels in a list (one image left out of it)
    plain = tmp_path / "plain"
    plain.mkdir()
    rows = ["file,label"]
    for i, f in enumerate(files):
        (plain / f"{i}.png").write_bytes(f.read_bytes())
        rows += [f"{i}.png,{f.name.split('_')[0]}"] if i else []
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    listed = subprocess.run([sys.executable, str(ROOT / "scripts" / "client_example.py"), str(plain), "--url", server,
                             "--labels-file", str(tmp_path / "labels.csv")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    right = sum(w["result"] == f.name.split("_")[0] for f, w in list(zip(files, want))[1:])
    assert f"accuracy: {right}/{len(files) - 1} = {right / (len(files) - 1):.4f}" in listed.stdout
    assert listed.stdout.count(".png:") == len(files) - 1 and " 0.png:" not in listed.stdout


@contextlib.contextmanager
def upload_page(url: str, runtime: str = "onnx"):
    """The server's upload page in headless Chromium, its model information loaded."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run scripts/setup.sh"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_function(f"document.getElementById('model').textContent.includes('runtime {runtime}')")
            yield page
        finally:
            browser.close()


def test_upload_page_in_headless_chromium(server, expected, tmp_path):
    files, want = expected
    bad = tmp_path / "notanimage.png"
    bad.write_bytes(b"this is not a picture")
    with upload_page(server) as page:
        page.set_input_files("#file", str(files[0]))
        page.wait_for_function("document.getElementById('confidence').textContent.startsWith('confidence')")
        shown = page.inner_text("#answer")
        assert shown == (want[0]["result"] or "(nothing read)")
        assert page.inner_text("#confidence") == f"confidence {want[0]['confidence']:.3f}"
        assert "ms" in page.inner_text("#time")
        assert page.evaluate("document.getElementById('preview').naturalWidth") == Image.open(files[0]).width
        assert page.evaluate("document.getElementById('heat').hidden")  # served without explain=true
        page.screenshot(path=str(tmp_path / "page.png"))
        page.set_input_files("#file", str(bad))
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert page.inner_text("#error").startswith("400: image: cannot decode image")
        assert page.inner_text("#answer") == ""
    assert (tmp_path / "page.png").stat().st_size > 1000


def test_heat_maps_over_http_and_on_the_upload_page(exported, expected, client, tmp_path):
    """serve explain=true: POST /v1/explain answers the reading (as the library reads it) with
    each character's probability and centre of heat and a PNG of the maps, whose characters
    join to the reading; the upload page shows the maps under the answer. Without
    explain=true the endpoint answers 404 naming the setting; a click model is refused."""
    from types import SimpleNamespace

    from bearcat.serve import check_explain

    files, want = expected
    refused = client.post("/v1/explain", files={"file": (files[0].name, files[0].read_bytes(), "image/png")})
    assert refused.status_code == 404 and "explain=true" in refused.text
    with pytest.raises(ValueError, match="not a click-captcha detector's boxes"):
        check_explain(SimpleNamespace(detects=True))
    with http_entry_point("bearcat.serve", [f"model={exported['dir']}", "explain=true"], tmp_path / "serve.log",
                          "/health", timeout=120) as url:
        with urllib.request.urlopen(url + "/v1/models") as r:
            assert json.loads(r.read())["models"][0]["explain"] is True
        for path, w in zip(files[:3], want):
            body = json.dumps({"image": base64.b64encode(path.read_bytes()).decode()}).encode()
            request = urllib.request.Request(url + "/v1/explain", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as r:
                answer = json.loads(r.read())
            assert answer["result"] == w["result"]
            assert answer["confidence"] == pytest.approx(w["confidence"], abs=1e-5)
            assert "".join(c["char"] for c in answer["characters"]) == answer["result"]
            assert all(0 < c["probability"] <= 1 for c in answer["characters"])
            png = Image.open(io.BytesIO(base64.b64decode(answer["image"].removeprefix("data:image/png;base64,"))))
            # a tile for the whole reading and one per character, each at least the input's width
            assert png.width >= (1 + len(answer["characters"])) * read_meta(exported["dir"])["preprocess"]["width"]
        with upload_page(url) as page:
            page.set_input_files("#file", str(files[0]))
            page.wait_for_function("!document.getElementById('heat').hidden")
            page.wait_for_function("document.getElementById('heat').naturalWidth > 0")
            assert page.inner_text("#answer") == (want[0]["result"] or "(nothing read)")
            assert page.inner_text("#error") == ""


def test_batcher_groups_concurrent_requests(exported, expected):
    """Requests that arrive while the model is busy share the next model call."""
    import asyncio

    from bearcat.data.preprocess import preprocess
    from bearcat.server.batcher import Batcher

    files, want = expected
    predictor = load_predictor(exported["dir"], "onnx")
    calls = []

    def counted(x):
        calls.append(len(x))
        return predictor.model.predict_on_batch(x)

    batcher = Batcher(counted, predictor.mode.decode, max_batch=4, max_wait_ms=20)
    arrays = [preprocess(f, predictor.pre) for f in files]

    async def run():
        return await asyncio.gather(*(batcher.predict(a) for a in arrays))

    got = asyncio.run(run())
    assert [g["result"] for g in got] == [w["result"] for w in want]
    assert sum(calls) == len(files) and max(calls) == 4 and len(calls) < len(files)
    np.testing.assert_allclose([g["confidence"] for g in got], [w["confidence"] for w in want], atol=1e-5)


def test_requests_over_the_in_flight_limit_get_503(exported, expected):
    import asyncio

    import httpx

    files, want = expected
    app = create_app(load_predictor(exported["dir"], "onnx"), "tiny", Limits(max_in_flight=1))
    data = files[0].read_bytes()

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bearcat") as c:
            return await asyncio.gather(*(c.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
                                          for _ in range(4)))

    answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    assert codes[0] == 200 and 503 in codes
    busy = next(r for r in answers if r.status_code == 503)
    assert "server busy" in busy.json()["detail"] and "max_in_flight=1" in busy.json()["detail"]
    assert next(r for r in answers if r.status_code == 200).json()["result"] == want[0]["result"]


def test_predict_takes_the_fast_path_and_the_rest_goes_to_fastapi(exported):
    """POST /v1/predict is answered by PredictFastPath's handler (past FastAPI's router),
    every other request by the app behind it, and the route stays in the OpenAPI docs."""
    import asyncio

    from fastapi.responses import JSONResponse

    from bearcat.server.app import PredictFastPath

    app = create_app(load_predictor(exported["dir"], "onnx"), "tiny")
    assert [m.cls for m in app.user_middleware] == [PredictFastPath]
    with TestClient(app) as c:
        assert "/v1/predict" in c.get("/openapi.json").json()["paths"]
    seen = []

    async def handler(request):
        seen.append(("handler", request.method, request.url.path, await request.body()))
        return JSONResponse({"result": "ok"})

    async def behind(scope, receive, send):
        seen.append(("app", scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    fast = PredictFastPath(behind, handler)

    async def call(method: str, path: str, body: bytes = b"") -> list[dict]:
        sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        await fast({"type": "http", "method": method, "path": path, "headers": [], "query_string": b"",
                    "root_path": "", "scheme": "http", "server": ("x", 80)}, receive, send)
        return sent

    assert asyncio.run(call("POST", "/v1/predict", b"abc"))[0]["status"] == 200
    for method, path in [("GET", "/v1/predict"), ("POST", "/v1/predict/"), ("GET", "/health"), ("POST", "/v1/click")]:
        assert asyncio.run(call(method, path))[0]["status"] == 204
    assert seen == [("handler", "POST", "/v1/predict", b"abc"), ("app", "GET", "/v1/predict"),
                    ("app", "POST", "/v1/predict/"), ("app", "GET", "/health"), ("app", "POST", "/v1/click")]


def test_base64_variants_are_accepted():
    import base64 as b64

    from bearcat.server.codec import RequestError, image_bytes

    data = bytes(range(256)) * 3
    plain = b64.b64encode(data).decode()
    wrapped = "\n".join(plain[i:i + 76] for i in range(0, len(plain), 76))
    assert image_bytes(plain) == image_bytes(wrapped) == image_bytes(b64.urlsafe_b64encode(data).decode()) == data
    assert image_bytes("data:image/png;base64," + plain) == data
    for bad, message in [("abc$", "not valid base64"), ("data:image/png,xyz", "must be base64"), ("", "empty image")]:
        with pytest.raises(RequestError, match=message):
            image_bytes(bad)


def test_bench_serve_alternates_raw_bearcat_and_baseline(server, exported, expected, tmp_path):
    """The overhead measurement of scripts/bench_serve.py against the real server and its
    baseline (the same bundle behind a bare FastAPI endpoint), in alternating rounds."""
    import asyncio

    from bearcat.runtime import load_predictor

    bench = load_script("bench_serve")
    host, port = server.removeprefix("http://").rstrip("/").split(":")
    files, want = expected
    images = [p.read_bytes() for p in files]
    predictor = load_predictor(exported["dir"], "onnx", 1)
    floor, floor_port = bench.start_floor(exported["dir"], "onnx", 1, tmp_path)
    try:
        targets = {"bearcat": bench.open_target(host, int(port), images),
                   "baseline": bench.open_target("127.0.0.1", floor_port, images)}
        result = asyncio.run(bench.alternate(lambda i: predictor.predict([images[i]]), targets, len(images),
                                             rounds=3, per_round=4))
        solve = load_script("client_example").solve
        for image, reading in zip(images, want):  # the baseline runs the same model
            assert solve(f"http://127.0.0.1:{floor_port}", image, timeout=30)["result"] == reading["result"]
    finally:
        floor.terminate()
        floor.wait(timeout=20)
    assert result["raw_ms_p50"] > 0
    for name in ("bearcat", "baseline"):
        r = result[name]
        assert len(r["round_overheads"]) == 3
        assert 0 < r["handler_ms_p50"] < r["http_ms_p50"]  # the round trip contains the handler
        assert r["overhead_p50"] == pytest.approx(r["http_ms_p50"] / result["raw_ms_p50"] - 1.0)


@pytest.mark.slow
def test_a_light_install_reads_and_serves_like_the_library(light_python, exported, expected, tmp_path):
    """Without TensorFlow, Keras or MLflow installed, predict reads the export bundle with
    ONNX Runtime and with LiteRT (TFLite), beam search and greedy, exactly as the full
    library does; the labelling page offers the least confident reading first and saves an
    answer; the server answers like the library; a run folder (Keras only) is refused with
    the reason."""
    files, want = expected
    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=tmp_path)  # not the checkout
    missing = run([str(light_python), "-c", "import importlib.util as u; "
                   "print([m for m in ('tensorflow', 'keras', 'mlflow', 'albumentations') if u.find_spec(m)])"])
    assert missing.stdout.strip() == "[]", missing.stderr
    folder = tmp_path / "images"
    folder.mkdir()
    for f in files:
        shutil.copy2(f, folder / f.name)
    # answer=arithmetic: readings that are no sum have none (bearcat.answers, pure Python, works it out)
    for runtime, extra in [("onnx", []), ("tflite", []), ("onnx", ["decoder=greedy"]),
                           ("onnx", ["answer=arithmetic"])]:
        out = tmp_path / f"{runtime}{len(extra)}.jsonl"
        done = run([str(light_python), "-m", "bearcat.predict", f"model={exported['dir']}", f"images={folder}",
                    f"runtime={runtime}", f"out={out}", *extra, f"hydra.run.dir={tmp_path / 'hydra'}"])
        assert done.returncode == 0, done.stderr[-3000:]
        decoding = dict(x.split("=") for x in extra) if extra else None
        library = load_predictor(exported["dir"], runtime, decoding=decoding).predict(files)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["result"] for r in rows] == [w["result"] for w in library], (runtime, extra)
        assert [r["confidence"] for r in rows] == pytest.approx([w["confidence"] for w in library], abs=1e-5)
        assert [r.get("answer", "none given") for r in rows] == [w.get("answer", "none given") for w in library]
        assert all(("answer" in r) == ("answer=arithmetic" in extra) for r in rows)
    labelled = tmp_path / "labelled"  # the labelling page: least confident reading first, pre-filled
    readings = load_predictor(exported["dir"], "onnx").predict(files)
    first = min(zip(readings, files), key=lambda rf: (rf[0]["confidence"], rf[1].name))
    with http_entry_point("bearcat.label", [f"dir={folder}", f"model={exported['dir']}", f"out={labelled}"],
                          tmp_path / "label.log", "/api/state", python=str(light_python), cwd=tmp_path) as url:
        with urllib.request.urlopen(url + "/api/state", timeout=10) as r:
            item = json.loads(r.read())["item"]
        assert (item["name"], item["prediction"]) == (first[1].name, first[0]["result"])
        assert item["confidence"] == pytest.approx(first[0]["confidence"], rel=1e-4)
        request = urllib.request.Request(url + "/api/answer", data=json.dumps({"id": item["id"], "answer": "AB12"})
                                         .encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert json.loads(r.read())["saved_as"].startswith("AB12_")
    assert [p.name.split("_")[0] for p in labelled.iterdir()] == ["AB12"]
    keras_only = run([str(light_python), "-m", "bearcat.predict", f"model={exported['output_dir']}",
                      f"images={folder}", f"hydra.run.dir={tmp_path / 'hydra'}"])
    assert keras_only.returncode != 0 and "runtime=keras needs the keras package" in keras_only.stderr
    with http_entry_point("bearcat.serve", [f"model={exported['dir']}"], tmp_path / "serve.log", "/health",
                          python=str(light_python), cwd=tmp_path) as url:
        for path, w in zip(files, want):
            request = urllib.request.Request(url + "/v1/predict", data=path.read_bytes(),
                                             headers={"Content-Type": "image/png"})
            with urllib.request.urlopen(request, timeout=10) as r:
                assert json.loads(r.read())["result"] == w["result"]


def test_animated_captchas_train_export_and_serve_with_their_frames_merged(make_cfg, tmp_path, caplog):
    """preprocess.frames travels from training into the bundle, its ONNX export and the
    server: a GIF posted to /v1/predict reads as its merged frames do."""
    from bearcat.data.preprocess import load_image, merge_frames, preprocess
    from bearcat.export import export
    from bearcat.train import train

    data = tmp_path / "gifs"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_gif_captchas.py"), "--out", str(data),
                    "--count", "48"], check=True, capture_output=True)
    with caplog.at_level(logging.WARNING, logger="bearcat"):
        metrics = train(make_cfg(["debug=fast", "dataset=folder", f"dataset.root={data}",
                                  "preprocess.frames=darkest"]))
    assert "reads only the first" not in caplog.text  # the warning of frames=first (test_train) is not given
    summary = export(make_cfg([f"run_id={metrics['mlflow_run_id']}", "format=onnx",
                               f"output_dir={tmp_path / 'export'}"], config_name="export", output="export_job"))
    assert read_meta(summary["output_dir"])["preprocess"]["frames"] == "darkest"

    gif = sorted(data.glob("*.gif"))[0]
    merged, first = tmp_path / "merged.png", tmp_path / "first.png"
    merge_frames(load_image(gif), "darkest").save(merged)
    Image.open(gif).convert("RGB").save(first)
    library = Predictor(tmp_path / "run" / "model")
    assert library.pre.frames == "darkest"
    want = library.predict([merged])[0]
    with TestClient(create_app(load_predictor(summary["output_dir"], "onnx"), "gif")) as c:
        r = c.post("/v1/predict", content=gif.read_bytes(), headers={"Content-Type": "image/gif"})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == want["result"]
    assert r.json()["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
    # the merge is what the model reads: the first frame alone gives other outputs
    outputs = library.model.predict_on_batch(np.stack([preprocess(p, library.pre) for p in (gif, merged, first)]))
    outputs = np.asarray(outputs)
    assert np.allclose(outputs[0], outputs[1]) and not np.allclose(outputs[0], outputs[2], atol=1e-4)
