"""The FastAPI app: `POST /v1/predict`, `POST /v1/click`, `GET /health`, `GET /v1/models`,
OpenAPI docs at `/docs`, and the upload page at `GET /`.

Every image goes through the model bundle's own `preprocess` settings and `mode.decode`,
so the server answers exactly as evaluation does. Client mistakes (bad base64, a body that
is not an image, too many bytes or pixels, a missing field, a wrong API key) are 4xx
answers with a `detail` message, never 500s.
"""
from __future__ import annotations

import dataclasses
import hmac
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bearcat.click import check_prompt, clean_prompt, order_clicks

from bearcat.data.preprocess import ImageError, preprocess
from bearcat.server.batcher import Batcher
from bearcat.server.codec import RequestError, image_bytes, looks_like_image

PAGE = Path(__file__).with_name("page.html")
log = logging.getLogger("bearcat.serve")


@dataclass
class Limits:
    max_body_bytes: int = 2_000_000   # largest request body, bytes
    max_pixels: int = 4_000_000       # largest decoded image, width x height (decompression bombs)
    max_in_flight: int = 256          # requests handled at once; more get 503


class HTTPProblem(Exception):
    def __init__(self, status: int, detail: str):
        self.status, self.detail = status, detail


ENDPOINTS = "POST /v1/predict, /v1/click, /v1/explain; GET / (the upload page), /health, /v1/models, /docs"


def problem_response(err: HTTPProblem) -> JSONResponse:
    return JSONResponse({"detail": err.detail}, status_code=err.status)


def client_error(err: Exception) -> HTTPProblem:
    """A bad body (RequestError) or image (ImageError) as a 4xx: 413 for too many pixels."""
    too_big = isinstance(err, ImageError) and ("exceeds the limit" in str(err) or "DecompressionBomb" in str(err))
    return HTTPProblem(413 if too_big else 400, str(err))


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPProblem(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise HTTPProblem(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # let request.form() parse what was already read
    return body


async def image_from_request(request: Request, limit: int) -> bytes:
    """JSON {"image": base64}, a multipart file (field `file` or `image`) or a raw image body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limit)
    if kind == "application/json":
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting too deep
            raise HTTPProblem(400, "body is not valid JSON") from None
        if not isinstance(payload, dict) or "image" not in payload:
            raise HTTPProblem(422, 'JSON body needs a field "image" with the base64-encoded image')
        return image_bytes(payload["image"])
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception as err:  # malformed multipart bodies raise several types
            raise HTTPProblem(400, f"malformed multipart body ({err})") from None
        upload = form.get("file") or form.get("image")
        if upload is None:
            raise HTTPProblem(422, 'multipart body needs a file field named "file" (or "image")')
        if isinstance(upload, str):
            return image_bytes(upload)
        return await upload.read()
    if kind.startswith("image/") or kind == "application/octet-stream":
        if not body:
            raise HTTPProblem(400, "empty image body")
        return body
    if kind in ("", "application/x-www-form-urlencoded") and looks_like_image(body):
        return body  # `curl --data-binary @captcha.png` labels the file a form: its bytes say otherwise
    raise HTTPProblem(415, f"unsupported Content-Type {kind or '(none)'!r}: send application/json "
                           '{"image": "<base64>"}, multipart/form-data with a "file", or image/* bytes '
                           '(curl: -F file=@captcha.png, or --data-binary @captcha.png -H "Content-Type: image/png")')


async def prompt_from_request(request: Request, names=()) -> str:
    """The click prompt: JSON field "prompt", multipart field "prompt" or ?prompt=...,
    cleaned of separators the model does not name (`clean_prompt`)."""
    prompt = request.query_params.get("prompt")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        prompt = json.loads(request._body).get("prompt", prompt)  # body already read and checked
    elif kind == "multipart/form-data":
        prompt = (await request.form()).get("prompt", prompt)
    prompt = clean_prompt(prompt, names) if isinstance(prompt, str) else ""
    if not prompt:
        raise HTTPProblem(422, 'send the characters to click as "prompt" (JSON field, form field or ?prompt=)')
    return prompt


def model_info(predictor, name: str) -> dict:
    meta = predictor.meta
    pre = predictor.pre
    return {"name": name, "mode": meta["mode"]["name"], "runtime": getattr(predictor, "runtime", "keras"),
            "input": {"height": pre.height, "width": pre.width, "channels": pre.channels},
            "vocabulary_size": len(meta["vocabulary"]), "max_length": meta["mode"].get("max_length"),
            "source_run_id": meta.get("mlflow_run_id"), "formats": sorted(meta.get("exports", {"keras": {}})),
            "parity": {f: e["parity"] for f, e in meta.get("exports", {}).items() if "parity" in e}}


REQUEST_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["image"],
                                    "properties": {"image": {"type": "string", "description": "base64 image"}}}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string",
                                                                                  "format": "binary"}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}}}}}


class PredictFastPath:
    """ASGI middleware: `POST /v1/predict` goes straight to its handler, past FastAPI's
    exception middleware, router and endpoint wrapper. Why: with a captcha model of about
    2 ms, those layers were a fifth of what the server added per request (README
    "Benchmarks"). Everything else, `/v1/predict/` included, goes on to the app."""

    def __init__(self, app, handler):
        self.app, self.handler = app, handler

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/predict" and scope["method"] == "POST":
            response = await self.handler(Request(scope, receive))
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


HEAT_MAPS = {"gradcam_layer": None, "gradcam_method": "hirescam"}  # /v1/explain: evaluate's defaults


def heat_map_answer(explainer, array) -> dict:
    """One preprocessed image read by the Keras `explainer` -> its reading, each character's
    probability and centre of heat (bearcat.analysis.heat_maps), and the maps as a PNG data
    URL: the whole reading first, then one per character."""
    import base64
    from types import SimpleNamespace

    from bearcat.analysis import heat_maps

    images = array[None]
    probs = explainer.model.predict_on_batch(images.astype("float32"))  # once: the reading, and the maps' scores
    result = explainer.mode.decode(probs)[0]
    sheet, summary = heat_maps(SimpleNamespace(**HEAT_MAPS), explainer, images, ["upload"], [result], probs=probs)
    png = io.BytesIO()
    sheet.save(png, format="PNG")
    return {"result": result["result"], "confidence": float(result["confidence"]),
            "characters": summary["readings"][0]["characters"],
            "image": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")}


def warm_up(predictor) -> float:
    """Read a grey image alone and in a batch of two before the first request; milliseconds.
    Why: the Keras runtime builds its graph on the first call (0.46 s against 6 ms for the
    next) and again for the first other batch size (0.54 s), then serves any size
    (scripts/bench_warmup.py)."""
    from PIL import Image

    grey = Image.new("RGB", (predictor.pre.width, predictor.pre.height), (128, 128, 128))
    start = time.perf_counter()
    predictor.predict([grey])
    predictor.predict([grey, grey])
    return (time.perf_counter() - start) * 1000.0


def create_app(predictor, name: str = "bearcat", limits: Limits | None = None, api_key: str | None = None,
               max_batch: int = 16, max_wait_ms: float = 2.0, model_thread: bool = True,
               explainer=None) -> FastAPI:
    """An app serving `predictor` (a bearcat.bundle.Predictor on any runtime), warmed up.
    `explainer`: the same bundle's Keras Predictor, for heat maps at POST /v1/explain."""
    limits = limits or Limits()
    log.info("model warmed up in %.0f ms", warm_up(predictor))
    pre = dataclasses.replace(predictor.pre, max_pixels=min(predictor.pre.max_pixels, limits.max_pixels))
    batcher = Batcher(predictor.model.predict_on_batch, predictor.mode.decode, max_batch, max_wait_ms, model_thread)
    detects = getattr(predictor, "detects", False)  # detection: boxes mapped back to the image, then named
    if detects:
        predictor.pre = pre  # the server's pixel limit applies to detection too
    info = model_info(predictor, name) | {"explain": explainer is not None}
    state = {"in_flight": 0}
    app = FastAPI(title="Bearcat", version="1", summary="Captcha solving: upload an image, get its text.")
    app.state.batcher = batcher

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, err: HTTPProblem):
        return problem_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        detail = err.detail
        if err.status_code == 404 and detail == "Not Found":  # a path no route has (`/predict`): say which exist
            detail = f"no endpoint at {request.url.path}; the server answers {ENDPOINTS}"
        return JSONResponse({"detail": detail}, status_code=err.status_code, headers=getattr(err, "headers", None))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPProblem(401, "missing or wrong API key: send it in the X-API-Key header")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "runtime": info["runtime"], "api_key_required": api_key is not None,
                "batches": batcher.batches, "images": batcher.images, "pid": os.getpid()}  # counts: this process's

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"models": [info]}

    async def answer(request: Request) -> dict:
        if detects:  # one image through the detector + recogniser, in a worker thread
            data = await image_from_request(request, limits.max_body_bytes)
            return (await run_in_threadpool(predictor.predict, [data]))[0]
        batcher.expect()
        try:
            data = await image_from_request(request, limits.max_body_bytes)
            array = preprocess(data, pre, "image")  # on the loop: a thread hand-off costs more
        except BaseException:
            batcher.cancel()
            raise
        return await batcher.predict(array)

    async def predict_response(request: Request) -> JSONResponse:
        start = time.perf_counter()
        try:
            check_key(request)
            if state["in_flight"] >= limits.max_in_flight:
                raise HTTPProblem(503, f"server busy: {state['in_flight']} requests in progress "
                                       f"(limits.max_in_flight={limits.max_in_flight}); retry later")
            state["in_flight"] += 1
            try:
                result = await answer(request)
            except (RequestError, ImageError) as err:
                raise client_error(err) from None
            finally:
                state["in_flight"] -= 1
        except HTTPProblem as err:  # answered here: the fast path runs outside FastAPI's exception handlers
            return problem_response(err)
        return JSONResponse({**result, "time_ms": (time.perf_counter() - start) * 1000.0})

    @app.post("/v1/predict", openapi_extra=REQUEST_BODY_DOC,
              summary="Read one captcha: JSON {image: base64}, a multipart file or raw image bytes")
    async def predict(request: Request):  # declared for the OpenAPI docs; PredictFastPath answers first
        return await predict_response(request)

    app.add_middleware(PredictFastPath, handler=predict_response)

    @app.post("/v1/explain", openapi_extra=REQUEST_BODY_DOC,
              summary="Heat maps of one reading: where the model looked for the text and for each character")
    async def explain_reading(request: Request):
        start = time.perf_counter()
        check_key(request)
        if explainer is None:
            raise HTTPProblem(404, f"model {name!r} is served without heat maps: start the server with explain=true")
        try:
            data = await image_from_request(request, limits.max_body_bytes)
            array = preprocess(data, pre, "image")
        except (RequestError, ImageError) as err:
            raise client_error(err) from None
        answer = await run_in_threadpool(heat_map_answer, explainer, array)
        return JSONResponse({**answer, "time_ms": (time.perf_counter() - start) * 1000.0})

    @app.post("/v1/click", summary="Click captchas: image + prompt -> ordered click points")
    async def click(request: Request):
        start = time.perf_counter()
        check_key(request)
        if not detects:
            raise HTTPProblem(404, f"model {name!r} (mode={info['mode']}) does not answer click captchas; "
                                   "serve an efficientdet bundle for /v1/click")
        if not predictor.names:  # one class and no recogniser: nothing to match a prompt to
            raise HTTPProblem(409, f"model {name!r} finds characters but has no recogniser to name them")
        try:
            data = await image_from_request(request, limits.max_body_bytes)
            prompt = await prompt_from_request(request, predictor.names)
        except (RequestError, ImageError) as err:
            raise client_error(err) from None
        try:
            check_prompt(prompt, predictor)
        except ValueError as err:  # before the model runs: no click could be right
            raise HTTPProblem(422, str(err)) from None
        try:
            result = (await run_in_threadpool(predictor.predict, [data]))[0]
        except (RequestError, ImageError) as err:
            raise client_error(err) from None
        return JSONResponse({"prompt": prompt, "clicks": order_clicks(prompt, result["boxes"]),
                             "boxes": result["boxes"], "time_ms": (time.perf_counter() - start) * 1000.0})

    return app
