"""Micro-batching inside the server's event loop: concurrent requests share one model call.

The server tells the batcher when a request starts (`expect`) and hands over its
preprocessed image (`predict`), or gives up on it (`cancel`: a bad request). The pending
images run as one batch (up to `max_batch` per model call) as soon as every request that
has started is waiting for the model, or after `max_wait_ms` at the latest (a slow
upload does not hold the others up for longer). At low load a request runs at once,
alone; under load, requests that arrive while the model runs are read meanwhile and form
the next batch, so the batch grows with the load and the per-image cost falls.

A request that runs alone runs on the event loop's thread: no thread switch (it costs
more than a small captcha model on a busy CPU). A batch of several runs in one model
thread (`model_thread`), so the loop reads and preprocesses the next requests meanwhile,
on a second core; the pending ones form the next batch as soon as the model is free.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Batcher:
    def __init__(self, predict_on_batch, decode, max_batch: int = 16, max_wait_ms: float = 0.0,
                 model_thread: bool = True):
        if max_batch < 1:
            raise ValueError(f"batching.max_batch={max_batch}: must be at least 1")
        self.predict_on_batch, self.decode = predict_on_batch, decode
        self.max_batch, self.max_wait = int(max_batch), float(max_wait_ms) / 1000.0
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.expected = 0  # requests started and not yet handed over or cancelled
        self.now_scheduled = False
        self.timer: asyncio.TimerHandle | None = None
        self.running = False  # a batch is in the model thread
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="bearcat-model") if model_thread else None
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
        if not self.pending or self.running:  # a running batch flushes the rest when it is done
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
        while self.pending and not self.running:
            batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
            images = np.stack([image for image, _ in batch]).astype(np.float32)
            if self.executor is None or len(batch) == 1:  # alone: a thread hand-off costs more than it saves
                self._deliver(batch, self._compute(images))
                continue
            # Several: run them in the model thread; meanwhile the loop reads the next requests,
            # which form the next batch when this one is done.
            self.running = True
            job = asyncio.get_running_loop().run_in_executor(self.executor, self._compute, images)
            job.add_done_callback(lambda done, batch=batch: self._finished(batch, done.result()))

    def _finished(self, batch: list, outcomes: list) -> None:
        self.running = False
        self._deliver(batch, outcomes)
        if self.pending:
            self._flush()

    def _compute(self, images: np.ndarray) -> list:
        try:
            return [(True, r) for r in self.decode(np.asarray(self.predict_on_batch(images)))]
        except Exception as err:  # hand the failure to every waiting request
            return [(False, err)] * len(images)

    def _deliver(self, batch: list, outcomes: list) -> None:
        self.batches += 1
        self.images += len(batch)
        for (_, future), (ok, value) in zip(batch, outcomes):
            if future.cancelled():  # the client went away
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
