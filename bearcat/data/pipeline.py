"""tf.data input pipeline.

Images are decoded and preprocessed once, in parallel processes, into a uint8 array that
is cached on disk (keyed by the files and the preprocessing settings) and held in memory;
every epoch then only shuffles, augments (training split only), batches and prefetches.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bearcat.atomic import replacing
from bearcat.data.pack import decode_refs, is_ref, source_file
from bearcat.data.parallel import parallel_map
from bearcat.data.preprocess import ImageError, PreprocessConfig, preprocess
from bearcat.data.sources import skip

log = logging.getLogger(__name__)


def _decode_one(job):
    path, cfg = job
    try:
        return preprocess(path, PreprocessConfig(**cfg)), None
    except ImageError as err:
        return None, str(err)


def _cache_key(samples, cfg: PreprocessConfig) -> str:
    """Each file by its name, label, size and modification time, not by its folder: a moved
    or renamed dataset folder (`mv` keeps the times) still finds its arrays. The paths a
    cached split reports are always the ones asked for (load_split)."""
    settings = cfg.to_dict()
    if settings["frames"] == "first":  # the default leaves out the key, so caches made before it stay valid
        del settings["frames"]
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for path, label in samples:
        st = os.stat(source_file(path))  # a packed record: its shard file
        h.update(f"{Path(path).name}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class LoadedSplit:
    """Preprocessed images of one split with their labels and file paths."""

    def __init__(self, images: np.ndarray, labels: list[str], paths: list[str], errors: list[str]):
        self.images, self.labels, self.paths, self.errors = images, labels, paths, errors

    def __len__(self) -> int:
        return len(self.labels)


def cache_file(samples: list[tuple[str, str]], cfg: PreprocessConfig, cache_dir: str | None) -> Path | None:
    """Where the preprocessed arrays of these samples are cached (None: no cache)."""
    if not cache_dir or not samples:
        return None
    return Path(cache_dir) / "arrays" / f"{_cache_key(samples, cfg)}.npz"


def _split(samples: list[tuple[str, str]], images: np.ndarray, kept: list[int], errors: list[str]) -> LoadedSplit:
    """The split of `images`, the samples at the indices `kept` (unreadable ones left out)."""
    chosen = [samples[i] for i in kept]
    return LoadedSplit(images, [label for _, label in chosen], [path for path, _ in chosen], errors)


def save_split(cache: Path, images: np.ndarray, kept: list[int], errors: list[str]) -> None:
    """`kept`: the index, among the samples asked for, of each image stored (unreadable
    files are left out), so a later load names the samples as they are spelt then."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"kept": kept, "errors": errors}, ensure_ascii=False)
    with replacing(cache, keep_suffix=True) as tmp:  # np.savez adds .npz to other names
        np.savez(tmp, images=images, meta=np.array(meta))


def load_split(samples: list[tuple[str, str]], cfg: PreprocessConfig, cache_dir: str | None,
               desc: str = "decoding", workers: int | None = None) -> LoadedSplit:
    """Decode + preprocess every (path, label); unreadable files are warned about, counted
    and left where they are."""
    cache = cache_file(samples, cfg, cache_dir)
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if "kept" in meta:  # else written before the key left folders out: decoded again
                return _split(samples, z["images"], meta["kept"], meta["errors"])
    if samples and is_ref(samples[0][0]):  # packed TFRecords (dataset=packed)
        results = decode_refs(samples, cfg, workers, desc)
    else:
        results = parallel_map(_decode_one, [(p, cfg.to_dict()) for p, _ in samples], desc=desc, workers=workers)
    images, errors, kept, counted = [], [], [], {}
    for i, (arr, err) in enumerate(results):
        if err:
            skip(counted, "unreadable image", log, "skipped unreadable image: %s", err)
            errors.append(err)
            continue
        images.append(arr)
        kept.append(i)
    shape = (0, cfg.height, cfg.width, cfg.channels)
    stacked = np.stack(images) if images else np.zeros(shape, np.uint8)
    if cache is not None:
        save_split(cache, stacked, kept, errors)
    return _split(samples, stacked, kept, errors)


ANIMATABLE = (".gif", ".png", ".apng", ".webp")  # formats whose files can hold several frames
HEADER_PROBE = 64  # files whose headers are read to judge a split: not all, the default has 120,000
SQUEEZED = 0.6  # below this share of the input's height, the images' characters come out too small


@dataclass(frozen=True)
class Header:
    path: str
    size: tuple[int, int]  # width, height
    frames: int


def read_headers(samples: list[tuple[str, str]]) -> list[Header]:
    """Size and frame count of HEADER_PROBE files spread over the split, read once for the
    warnings below (headers only: no pixels are decoded). Unreadable files are left out:
    they are reported where they are decoded."""
    if not samples or is_ref(samples[0][0]):
        return []
    from PIL import Image

    headers = []
    for path, _ in samples[::max(1, len(samples) // HEADER_PROBE)][:HEADER_PROBE]:
        try:
            with Image.open(path) as img:
                frames = getattr(img, "n_frames", 1) if Path(path).suffix.lower() in ANIMATABLE else 1
                headers.append(Header(path, img.size, frames))
        except Exception:
            continue
    return headers


def warn_if_animated(headers: list[Header], cfg: PreprocessConfig) -> str | None:
    """With preprocess.frames=first, warn (and return the file) when a file probed has several
    frames: the model would otherwise train on part of each animation without a word."""
    animated = next((h for h in headers if h.frames > 1), None) if cfg.frames == "first" else None
    if animated is None:
        return None
    log.warning("%s has %d frames, and preprocess.frames=first reads only the first: darkest, lightest or "
                "median merges them (README \"Animated captchas\")", animated.path, animated.frames)
    return animated.path


def warn_if_squeezed(headers: list[Header], cfg: PreprocessConfig) -> str | None:
    """Warn (and return the message) when the images, at their median size, are read at under
    SQUEEZED of the input's height: much wider than the input, they are scaled down to its
    width (a 300 x 50 captcha in the default 96 x 36 is read at 96 x 16). Names the width that
    keeps their shape at this height."""
    if not headers:
        return None
    from bearcat.data.check import SIZE_STEP
    from bearcat.data.preprocess import letterbox

    width, height = (int(np.median([h.size[i] for h in headers])) for i in (0, 1))
    (_, read_height), _, scale = letterbox(width, height, cfg)
    if scale >= 1.0 or read_height >= SQUEEZED * cfg.height:
        return None
    wide = math.ceil(cfg.height * width / height / SIZE_STEP) * SIZE_STEP
    message = (f"the images' median size is {width} x {height}: the input, preprocess.width={cfg.width} x "
               f"preprocess.height={cfg.height}, reads them at {read_height} pixels high; preprocess.width={wide} "
               f"keeps their shape at this height (python -m bearcat.prepare action=check recommends a size)")
    log.warning(message)
    return message


def make_dataset(images: np.ndarray, targets, batch_size: int, shuffle: bool = False, seed: int = 0,
                 augment=None, drop_remainder: bool = False, repeat: bool = False, start: int = 0):
    """A batched, prefetched tf.data.Dataset of (float32 images, targets).

    `repeat`: endless, reshuffled on every pass, for `fit(..., steps_per_epoch=...)`. Why:
    given a finite dataset, Keras makes a new iterator at the end of each epoch and another
    at the start of the next, and dropping the first waited for its background threads:
    3 to 12 s at an epoch's start in a 6,000-image run of 30-s epochs (docs/benchmarks.md
    "One iterator for the whole training"). An endless one is made once.

    `start`: elements of the stream to pass over first, those of the epochs a resumed run
    already trained: it goes on with the batches and augmentation draws the uninterrupted
    run would have had, not those of its first epochs again."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if start:  # before augmenting: passing over raw slices costs little
        ds = ds.skip(start)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment is not None:
        # Each image augmented by its position in the stream, and the order kept: a seed gives
        # the same batches in every run (bearcat.data.augment.Augmenter.apply_at).
        ds = ds.enumerate().map(lambda b, pair: augment(*pair, first=start + b * batch_size),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    # Autotuning off. Why: dropping an autotuned pipeline's iterator waits for its tuning
    # thread's next wake-up, and its naps double from 10 ms to a minute, so a fit's end, or
    # the garbage collector dropping a finished run's stream later (say in a sweep's next
    # job), stalled up to as long again as the stream had run, at most a minute. Untuned,
    # each AUTOTUNE map runs as many calls as there are cores, and training ran as fast
    # (scripts/bench_data.py: `end of a fit`, and the training rows).
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
