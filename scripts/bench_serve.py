#!/usr/bin/env python
"""Load test of the HTTP server on loopback: throughput and latency percentiles for N
concurrent clients, and the server's overhead over the raw model.

    python scripts/bench_serve.py --bundle outputs/exports/<run id> \
        --data /work/shared/datasets/swust_cas_20200226 [--clients 8] [--seconds 20]

Starts `python -m bearcat.serve model=BUNDLE` on a free 127.0.0.1 port (or uses --url),
then, from this process, keeps `--clients` keep-alive connections busy posting
`{"image": base64}` to /v1/predict for `--seconds` (and at most `--max-requests`).
The "raw" time is the same images through the same runtime in-process, one at a time,
end to end (decode + preprocess + model + decode); the overhead compares it with one
client's HTTP round trip. The baseline in the same run (skip it with --no-floor):
`scripts/http_floor_server.py`, the same raw model behind a bare FastAPI endpoint (none of
Bearcat's server code), under the same single-client load: its overhead is what FastAPI,
uvicorn and this machine cost such a request. Raw, Bearcat and
the baseline are timed in alternating short rounds (`--rounds` of `--round-images`
images each: raw, Bearcat, baseline, raw, ...), so the shared machine's speed, which
drifts by tens of percent within a minute, is the same for all three. `--pin` sets the
cores each process may use (docs/benchmarks.md "More runs, and CPU affinity"). Everything
stops by itself; only loopback is used.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def request_bytes(host: str, port: int, image: bytes) -> bytes:
    body = json.dumps({"image": base64.b64encode(image).decode("ascii")}).encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length")
    return status, await reader.readexactly(length)


async def client(host: str, port: int, payloads: list[bytes], stop_at: float, budget: dict, out: list, k: int):
    reader, writer = await asyncio.open_connection(host, port)
    i = k
    try:
        while time.perf_counter() < stop_at and budget["left"] > 0:
            budget["left"] -= 1
            start = time.perf_counter()
            writer.write(payloads[i % len(payloads)])
            status, body = await read_response(reader)
            ms = (time.perf_counter() - start) * 1000.0
            server_ms = json.loads(body).get("time_ms", 0.0) if status == 200 else 0.0
            out.append((ms, status, server_ms))
            i += 1
    finally:
        writer.close()


async def load(host: str, port: int, payloads: list[bytes], clients: int, seconds: float, max_requests: int):
    out: list = []
    budget = {"left": max_requests}
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(client(host, port, payloads, stop_at, budget, out, k) for k in range(clients)))
    return out, time.perf_counter() - start


def run_load(host, port, payloads, clients, seconds, max_requests) -> dict:
    out, elapsed = asyncio.run(load(host, port, payloads, clients, seconds, max_requests))
    ms = np.array([o[0] for o in out])
    ok = [o for o in out if o[1] == 200]
    return {"clients": clients, "requests": len(out), "errors": len(out) - len(ok), "seconds": elapsed,
            "req_per_s": len(out) / elapsed, "ms_p50": float(np.percentile(ms, 50)),
            "ms_p95": float(np.percentile(ms, 95)), "ms_p99": float(np.percentile(ms, 99)),
            "server_ms_mean": float(np.mean([o[2] for o in ok])) if ok else 0.0}


def health(host: str, port: int) -> dict:
    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=10) as r:
        return json.load(r)


def open_target(host: str, port: int, images: list[bytes]) -> dict:
    return {"host": host, "port": port, "payloads": payloads_for(images, host, port)}


async def alternate(raw_one, targets: dict[str, dict], n_images: int, rounds: int, per_round: int) -> dict:
    """Raw times (`raw_one(i)` per image i) and one-client HTTP times of the same images
    against each target server, in alternating rounds; medians and overheads."""
    conns = {name: await asyncio.open_connection(t["host"], t["port"]) for name, t in targets.items()}
    raw: list[float] = []
    http = {name: [] for name in targets}
    server = {name: [] for name in targets}  # the handlers' own time_ms
    ratios = {name: [] for name in targets}
    try:
        for r in range(rounds):
            idx = [(r * per_round + k) % n_images for k in range(per_round)]
            raw_round = []
            for i in idx:
                start = time.perf_counter()
                raw_one(i)
                raw_round.append((time.perf_counter() - start) * 1000.0)
            raw += raw_round
            for name, (reader, writer) in conns.items():
                round_ms = []
                for i in idx:
                    start = time.perf_counter()
                    writer.write(targets[name]["payloads"][i])
                    status, body = await read_response(reader)
                    round_ms.append((time.perf_counter() - start) * 1000.0)
                    if status != 200:
                        raise SystemExit(f"{name} answered {status} to image {i}: {body[:200]!r}")
                    server[name].append(json.loads(body)["time_ms"])
                http[name] += round_ms
                ratios[name].append(np.median(round_ms) / np.median(raw_round) - 1.0)
    finally:
        for _, writer in conns.values():
            writer.close()
    raw_p50 = float(np.median(raw))
    return {"rounds": rounds, "images_per_round": per_round, "raw_ms_p50": raw_p50,
            **{name: {"http_ms_p50": float(np.median(http[name])), "handler_ms_p50": float(np.median(server[name])),
                      "overhead_p50": float(np.median(http[name])) / raw_p50 - 1.0,
                      "round_overheads": [float(x) for x in ratios[name]]} for name in targets}}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], port: int, log: Path, env: dict | None = None,
                 cpus: set[int] | None = None) -> subprocess.Popen:
    """Start `cmd` (on the cores `cpus`, None = any) and wait until its /health answers."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})},
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.terminate()
                sys.exit(f"server did not start; see {log}")
            time.sleep(0.3)


def payloads_for(images: list[bytes], host: str, port: int) -> list[bytes]:
    return [request_bytes(host, port, b) for b in images]


def start_floor(bundle: Path, runtime: str, threads: int, logs: Path,
                cpus: set[int] | None = None) -> tuple[subprocess.Popen, int]:
    """scripts/http_floor_server.py serving the same bundle, its output in `logs`; (process, port)."""
    port = free_port()
    log = logs / "baseline.log"
    proc = start_server([sys.executable, str(ROOT / "scripts" / "http_floor_server.py"), "--port", str(port),
                         "--bundle", str(bundle), "--runtime", runtime, "--threads", str(threads)], port, log,
                        cpus=cpus)
    return proc, port


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="export bundle folder")
    ap.add_argument("--data", type=Path, required=True, help="folder of images to send")
    ap.add_argument("--images", type=int, default=200, help="distinct images sent in turn")
    ap.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the loaded run")
    ap.add_argument("--max-requests", type=int, default=20000, help="stop after this many requests")
    ap.add_argument("--runtime", default="onnx", help="serve runtime (and the raw model's)")
    ap.add_argument("--threads", type=int, default=1, help="threads per model call")
    ap.add_argument("--url", default=None, help="use this running server (http://127.0.0.1:PORT) instead")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `bearcat.serve` override")
    ap.add_argument("--rounds", type=int, default=20, help="alternating rounds of raw / Bearcat / baseline")
    ap.add_argument("--round-images", type=int, default=50, help="images per round")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip the baseline server (scripts/http_floor_server.py)")
    ap.add_argument("--pin", choices=["none", "split", "same"], default="none",
                    help="CPU affinity: split = this process (clients, raw model) on the first core, the servers on "
                         "the second; same = all on the second core; none = wherever the OS puts them")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    server_cpus = None  # --pin: the cores the servers may run on
    if args.pin != "none":
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            sys.exit("--pin needs at least 2 cores")
        server_cpus = {cores[1]}
        os.sched_setaffinity(0, {cores[0]} if args.pin == "split" else {cores[1]})

    files = sorted(p for p in args.data.iterdir() if p.is_file())[:args.images]
    images = [p.read_bytes() for p in files]
    from bearcat.runtime import load_predictor

    predictor = load_predictor(args.bundle, args.runtime, args.threads)  # the raw model, in this process

    def raw_one(i: int) -> None:
        predictor.predict([images[i]])

    for i in range(min(50, len(images))):  # warm-up
        raw_one(i)

    procs = []
    logs = Path(tempfile.mkdtemp(prefix="bench_serve_"))  # the servers' output: removed after a clean run
    finished = False
    try:
        if args.url:
            host, port = args.url.removeprefix("http://").rstrip("/").split(":")
            port = int(port)
        else:
            host = "127.0.0.1"
            port = free_port(host)
            log = logs / "bearcat.log"
            procs.append(start_server([sys.executable, "-m", "bearcat.serve", f"model={args.bundle}", f"port={port}",
                                       f"runtime={args.runtime}", f"threads={args.threads}",
                                       f"hydra.run.dir={logs / 'bearcat_run'}",
                                       *args.serve_arg], port, log, cpus=server_cpus))
        targets = {"bearcat": open_target(host, port, images)}
        if args.floor:
            floor_proc, floor_port = start_floor(args.bundle, args.runtime, args.threads, logs, server_cpus)
            procs.append(floor_proc)
            targets["baseline"] = open_target("127.0.0.1", floor_port, images)
        for t in targets.values():  # warm-up
            run_load(t["host"], t["port"], t["payloads"], args.clients, 2.0, 400)
        paired = asyncio.run(alternate(raw_one, targets, len(images), args.rounds, args.round_images))
        payloads = targets["bearcat"]["payloads"]
        single = run_load(host, port, payloads, 1, min(args.seconds, 10.0), min(args.max_requests, 2000))
        before = health(host, port)
        loaded = run_load(host, port, payloads, args.clients, args.seconds, args.max_requests)
        after = health(host, port)
        # /health counts one process's batches: with workers=N two calls may reach different ones
        same = before.get("pid") == after.get("pid")
        loaded["mean_batch"] = ((after["images"] - before["images"]) / max(1, after["batches"] - before["batches"])
                                if same else None)
        finished = True
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        if finished:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"servers' output kept in {logs}", file=sys.stderr)
    result = {"pin": args.pin, "paired": paired, "one_client": single, "loaded": loaded,
              "overhead_one_client_p50": paired["bearcat"]["overhead_p50"]}
    print(f"{args.rounds} alternating rounds of {args.round_images} images, one at a time: raw model in-process "
          f"(end to end) p50 {paired['raw_ms_p50']:.2f} ms")
    names = {"bearcat": "Bearcat server", "baseline": "baseline (same model, bare FastAPI endpoint)"}
    for name in targets:
        r = paired[name]
        low, high = np.percentile(r["round_overheads"], [10, 90]) * 100
        print(f"  {names[name]}: 1 client p50 {r['http_ms_p50']:.2f} ms = {100 * r['overhead_p50']:+.1f}% over the raw "
              f"model (per round, 10th-90th percentile {low:+.1f}% to {high:+.1f}%); handler p50 "
              f"{r['handler_ms_p50']:.2f} ms, outside it {r['http_ms_p50'] - r['handler_ms_p50']:.2f} ms")
    for name, r in (("1 client", single), (f"{args.clients} clients", loaded)):
        print(f"{name:>10}: {r['requests']} requests in {r['seconds']:.1f} s = {r['req_per_s']:.0f} req/s, "
              f"p50 {r['ms_p50']:.2f} ms, p95 {r['ms_p95']:.2f} ms, p99 {r['ms_p99']:.2f} ms, errors {r['errors']}, "
              f"server time_ms mean {r['server_ms_mean']:.2f}")
    if loaded["mean_batch"] is not None:
        print(f"mean batch under load: {loaded['mean_batch']:.2f} images per model call")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
