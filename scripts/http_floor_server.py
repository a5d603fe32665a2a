#!/usr/bin/env python
"""The baseline server of `scripts/bench_serve.py`: the raw model behind the least HTTP
code FastAPI allows. POST /v1/predict reads the JSON body, decodes the base64 image and
calls the same in-process predictor the benchmark times as "raw" (bytes in, answer out),
then answers a small JSON like Bearcat's. None of Bearcat's server code runs: no body
limits, API key, batcher or error mapping. Its overhead over the raw model is what
FastAPI + uvicorn + this machine cost such a request: the floor for Bearcat's server.
Running the same model, not a stand-in computation, keeps the floor honest when the
shared machine's speed drifts.

    python scripts/http_floor_server.py --port 8001 --bundle outputs/exports/<run id>
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def create_app(predictor) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok", "images": 0, "batches": 0}

    @app.post("/v1/predict")
    async def predict(request: Request):
        start = time.perf_counter()
        data = base64.b64decode(json.loads(await request.body())["image"])
        result = predictor.predict([data])[0]
        return JSONResponse({**result, "time_ms": (time.perf_counter() - start) * 1000.0})

    return app


def main() -> None:
    from bearcat.runtime import load_predictor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bundle", type=Path, required=True, help="export bundle folder")
    ap.add_argument("--runtime", default="onnx")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    predictor = load_predictor(args.bundle, args.runtime, args.threads)
    # the same uvicorn settings as bearcat.serve's defaults
    uvicorn.run(create_app(predictor), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, timeout_keep_alive=5)


if __name__ == "__main__":
    main()
