"""Micro-batching: concurrent requests share one model call.

One worker thread owns the model. It takes the first waiting image, then every image that
is already queued (up to `max_batch`; optionally waiting `max_wait_ms` for more), runs
them as one batch and hands each request its own decoded result. At low load a request
runs alone with no added wait; under load the batch grows and the per-image cost falls.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time

import numpy as np


class Batcher:
    def __init__(self, predict_on_batch, decode, max_batch: int = 16, max_wait_ms: float = 0.0):
        if max_batch < 1:
            raise ValueError(f"batching.max_batch={max_batch}: must be at least 1")
        self.predict_on_batch, self.decode = predict_on_batch, decode
        self.max_batch, self.max_wait = int(max_batch), float(max_wait_ms) / 1000.0
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.batches = self.images = 0  # counters, shown by GET /health
        self.thread = threading.Thread(target=self._work, name="bearcat-batcher", daemon=True)
        self.thread.start()

    async def predict(self, image: np.ndarray) -> dict:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.put((image, future, loop))
        return await future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=5)

    def _collect(self, first) -> list:
        batch = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: finish this batch, then stop
                self.queue.put(None)
                break
            batch.append(item)
        return batch

    def _work(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = self._collect(first)
            try:
                probs = self.predict_on_batch(np.stack([image for image, _, _ in batch]).astype(np.float32))
                outcomes = [(True, r) for r in self.decode(np.asarray(probs))]
            except Exception as err:  # hand the failure to every waiting request
                outcomes = [(False, err)] * len(batch)
            self.batches += 1
            self.images += len(batch)
            for (_, future, loop), (ok, value) in zip(batch, outcomes):
                loop.call_soon_threadsafe(_settle, future, ok, value)


def _settle(future: asyncio.Future, ok: bool, value) -> None:
    if future.cancelled():  # the client went away
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
