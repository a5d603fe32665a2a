"""Process-parallel map with a progress bar, used to generate and decode images.

Workers are spawned (not forked): forking a process that has loaded TensorFlow can hang.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from tqdm import tqdm

# Below this many jobs starting worker processes costs more than it saves.
MIN_PARALLEL_JOBS = 400


def parallel_map(fn, jobs: list, desc: str = "", workers: int | None = None, chunksize: int | None = None) -> list:
    """[fn(job) for job in jobs], in order, spread over processes."""
    workers = workers or os.cpu_count() or 1
    show = bool(desc) and len(jobs) >= MIN_PARALLEL_JOBS
    if workers <= 1 or len(jobs) < MIN_PARALLEL_JOBS:
        return [fn(job) for job in tqdm(jobs, desc=desc, disable=not show, leave=False)]
    chunksize = chunksize or max(1, min(256, len(jobs) // (workers * 8)))
    with children_can_start(), ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(tqdm(pool.map(fn, jobs, chunksize=chunksize), total=len(jobs), desc=desc,
                         disable=not show, leave=False))


@contextmanager
def children_can_start():
    """Within, this process's global start method is one a spawned child can find. A child
    first sets its parent's global method, whatever context started it; in a sweep job of
    hydra/launcher=parallel, a joblib (loky) worker, that is "loky", which the child does
    not know: every child died ("cannot find context for 'loky'") and the job with them."""
    method = mp.get_start_method(allow_none=True)
    if method is None or method in mp.get_all_start_methods():
        yield
        return
    mp.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        mp.set_start_method(method, force=True)
