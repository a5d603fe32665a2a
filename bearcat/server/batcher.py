"""Micro-batching inside the server's event loop: concurrent requests share one model call.

The server tells the batcher when a request starts (`expect`) and hands over its
preprocessed image (`predict`), or gives up on it (`cancel`: a bad request). The pending
images run as one batch (up to `max_batch` per model call) as soon as every request that
has started is waiting for the model, or after `max_wait_ms` at the latest (a slow
upload does not hold the others up for longer). At low load a request runs at once,
alone; under load, requests that arrive while the model runs are read meanwhile and form
the next batch, so the batch grows with the load and the per-image cost falls.

The model call runs on the event loop's thread: no thread switches on the hot path
(they cost more than a small captcha model on a busy CPU).
"""
from __future__ import annotations

import asyncio

import numpy as np


class Batcher:
    def __init__(self, predict_on_batch, decode, max_batch: int = 16, max_wait_ms: float = 0.0):
        if max_batch < 1:
            raise ValueError(f"batching.max_batch={max_batch}: must be at least 1")
        self.predict_on_batch, self.decode = predict_on_batch, decode
        self.max_batch, self.max_wait = int(max_batch), float(max_wait_ms) / 1000.0
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.expected = 0  # requests started and not yet handed over or cancelled
        self.now_scheduled = False
        self.timer: asyncio.TimerHandle | None = None
        self.batches = self.images = 0  # counters, shown by GET /health

    def expect(self) -> None:
        self.expected += 1

    def cancel(self) -> None:
        self.expected -= 1
        self._schedule()

    async def predict(self, image: np.ndarray) -> dict:
        """Hand over an image of a request announced with `expect`; its decoded result."""
        future = asyncio.get_running_loop().create_future()
        self.expected -= 1
        self.pending.append((image, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self.pending:
            return
        loop = asyncio.get_running_loop()
        if self.expected <= 0 or len(self.pending) >= self.max_batch or self.max_wait <= 0:
            if not self.now_scheduled:  # everyone is here: run at the end of this loop pass
                self.now_scheduled = True
                loop.call_soon(self._flush)
        elif self.timer is None:
            self.timer = loop.call_later(self.max_wait, self._flush)

    def _flush(self) -> None:
        self.now_scheduled = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending, self.pending = self.pending, []
        for i in range(0, len(pending), self.max_batch):
            self._run(pending[i:i + self.max_batch])

    def _run(self, batch: list) -> None:
        try:
            probs = self.predict_on_batch(np.stack([image for image, _ in batch]).astype(np.float32))
            outcomes = [(True, r) for r in self.decode(np.asarray(probs))]
        except Exception as err:  # hand the failure to every waiting request
            outcomes = [(False, err)] * len(batch)
        self.batches += 1
        self.images += len(batch)
        for (_, future), (ok, value) in zip(batch, outcomes):
            if future.cancelled():  # the client went away
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
