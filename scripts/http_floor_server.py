#!/usr/bin/env python
"""The baseline server of `scripts/bench_serve.py`: a bare FastAPI app with no Bearcat code
and no model. POST /v1/predict reads the JSON body, decodes the base64 image, then keeps
the CPU busy for a fixed time (the raw model's, measured by the benchmark) and answers a
small JSON like Bearcat's. Its overhead over that fixed time is what FastAPI + uvicorn +
this machine cost a request whose handler computes that long: the floor for Bearcat's.

    python scripts/http_floor_server.py --port 8001 --busy-ms 4.9
"""
from __future__ import annotations

import argparse
import base64
import json
import time

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app(busy_ms: float) -> FastAPI:
    app = FastAPI()
    block = np.random.default_rng(0).random((128, 128), np.float32)  # busy work that uses memory, like a model

    @app.get("/health")
    async def health():
        return {"status": "ok", "images": 0, "batches": 0}

    @app.post("/v1/predict")
    async def predict(request: Request):
        start = time.perf_counter()
        base64.b64decode(json.loads(await request.body())["image"])
        while (time.perf_counter() - start) * 1000.0 < busy_ms:
            block @ block
        return JSONResponse({"result": "", "confidence": 1.0, "time_ms": (time.perf_counter() - start) * 1000.0})

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--busy-ms", type=float, required=True, help="CPU time of each request's handler, ms")
    args = ap.parse_args()
    # the same uvicorn settings as bearcat.serve's defaults
    uvicorn.run(create_app(args.busy_ms), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, timeout_keep_alive=5)


if __name__ == "__main__":
    main()
