"""Input pipeline speed against the training step of the default model.

    python scripts/bench_data.py                      # 10000 generated captchas (default settings)
    python scripts/bench_data.py --images 400 --steps 10   # a quick check
    python scripts/bench_data.py --folder data/mysite # your own images instead

Measures, in images per second:
  cold      a run's data on an empty cache (generated captchas only): draw the images, then
            decode the files (as runs did before commit 885460d), against preprocessing each
            image while it is drawn (what `python -m bearcat.train` does now), and that run
            again after a kill that left every file drawn but no marker (its files are read,
            not drawn again); all must give the same arrays;
  load      decode + preprocess every image once (what a run does before its first epoch),
            from the image folder, from packed TFRecords (encoding=file and raw) and from
            the decoded-array cache;
  epoch     passes of the tf.data pipeline over the loaded arrays (shuffle, augment, batch,
            cast), with augmentation=none and =light, no model attached; `light` also as it
            ran before 2026-12-05, a call per image instead of per batch (same batches);
  resume    how fast a resumed run passes over the images of the epochs it had trained
            (`make_dataset(start=...)`): the time to its first batch after 30 epochs (at
            least 300,000 images), less that of a fresh start;
  train     the default model's training step (conf/train.yaml: ctc + cnn_small + adamw) on a
            fixed in-memory batch (no input pipeline at all), and fed by each of the
            pipelines above, also autotuned as before 2026-12-05 evening; `--repeats` rounds
            taken in turn, the median shown; timed from the start of training to its last
            step (the fit's end is measured apart, below);
  validate  a validation pass over 1,000 images, through model.predict (before 2026-12-05
            evening) and a batch at a time (now), in the same rounds;
  end       how long dropping the training stream's iterator takes after 1, 3 and 6 s of
            use, as a fit's end does: autotuned, it waited for tf.data's tuning thread to
            wake (naps doubling from 10 ms: 1.27, 2.55, 5.11, 10.23 s ... after the start).
The pipeline is not the bottleneck when a `fit, pipeline` row runs as fast as `train step`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bearcat.benchmark import compose_train  # noqa: E402
from bearcat.data.labels import is_image_file, label_from_name  # noqa: E402
from bearcat.data.pack import pack, packed  # noqa: E402
from bearcat.data.pipeline import load_split, make_dataset  # noqa: E402
from bearcat.data.sources import Splits, synthetic  # noqa: E402
from bearcat.data.tools import generate  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def config(overrides):
    return compose_train(["paths.output_dir=unused", *overrides])


def sample_images(args, cfg, work: Path) -> list[tuple[str, str]]:
    if args.folder:
        files = sorted(p for p in Path(args.folder).iterdir() if is_image_file(p))
    else:
        gen = work / f"generated_{args.images}"
        if not (gen / "train").is_dir():
            settings = {k: cfg.dataset[k] for k in ("charset", "min_length", "max_length", "image_width",
                                                    "image_height", "seed", "fonts", "font_sizes")}
            generate(gen, {"train": args.images, "val": 0, "test": 0}, settings)
        files = sorted((gen / "train").iterdir())
    return [(str(p), label_from_name(p)) for p in files[:args.images] if label_from_name(p)]


def cold_rates(cfg, pre, n: int, scratch: Path) -> dict[str, float]:
    """Images/s of a cold run's data: drawn then decoded, and preprocessed as drawn (each
    into its own empty cache, the same images)."""
    import numpy as np
    from omegaconf import OmegaConf

    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset.pop("_target_")
    dataset.update(train_size=n, val_size=0, test_size=0)
    rows, arrays = {}, []
    for name, given in (("cold: draw, then decode the files", None),
                        ("cold: draw, preprocessed while drawn", pre.to_dict())):
        cache = str(scratch / f"cold_{len(arrays)}")

        def run():
            return load_split(synthetic(**dataset, cache_dir=cache, preprocess=given).train, pre, cache, desc="")

        loaded, sec = timed(run)
        rows[name] = n / sec
        arrays.append(loaded.images)
    # a generation killed after drawing every file (no marker, no array cache), run again:
    # it reads the files instead of drawing them (bearcat.data.sources._draw)
    for leftover in [*Path(cache).rglob("*.done"), *(Path(cache) / "arrays").iterdir()]:
        leftover.unlink()
    loaded, sec = timed(run)
    rows["cold, run again after a kill: files read, not drawn"] = n / sec
    arrays.append(loaded.images)
    assert all(np.array_equal(arrays[0], a) for a in arrays[1:]), "every way must give the same pixels"
    return rows


def streams(images, targets, batch, light) -> dict:
    """The endless training streams compared: none and `light` augmentation, `light`
    called once per image as the pipeline did before 2026-12-05 (the same draws, so the same
    batches: checked here), and both with tf.data's autotuning on, as before that evening."""
    import numpy as np
    import tensorflow as tf

    def one(index, pair):
        image, target = pair
        out = tf.numpy_function(lambda x, k: light.apply_at(x[None], k)[0], [image, index], tf.uint8,
                                stateful=False)
        out.set_shape(image.shape)
        return out, target

    before = tf.data.Dataset.from_tensor_slices((images, targets)).shuffle(len(images), seed=0).repeat()
    before = before.enumerate().map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch)
    before = before.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    out = {"no augmentation": make_dataset(images, targets, batch, shuffle=True, seed=0, repeat=True),
           "light": make_dataset(images, targets, batch, shuffle=True, seed=0, augment=light, repeat=True),
           "light, a call per image (before)": before.prefetch(tf.data.AUTOTUNE)}
    out |= {f"{name}, autotuned (before)": autotuned(out[name]) for name in ("no augmentation", "light")}
    for a, b in zip(out["light"].take(3), out["light, a call per image (before)"].take(3)):
        assert np.array_equal(a[0].numpy(), b[0].numpy()), "both ways must give the same batches"
    return out


def autotuned(ds):
    """`ds` with tf.data's autotuning on, as make_dataset built it before 2026-12-05 evening."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = True
    return ds.with_options(options)


def end_of_fit(images, targets, batch, ages=(1.0, 3.0, 6.0)) -> dict[str, list[float]]:
    """Seconds to drop the training stream's iterator after reading it for each of `ages`
    seconds, as a fit's end (or the garbage collector) drops it: the stream as make_dataset
    builds it, and autotuned."""
    import gc

    waits = {}
    for name, build in (("autotuned (before)", autotuned), ("as built now", lambda ds: ds)):
        for age in ages:
            it = iter(build(make_dataset(images, targets, batch, shuffle=True, seed=0, repeat=True)))
            start = time.perf_counter()
            while time.perf_counter() - start < age:
                next(it)
            dropped = time.perf_counter()
            del it
            gc.collect()  # the iterator sits in reference cycles: it goes here (the collection alone: about 0.2 s)
            waits.setdefault(name, []).append(time.perf_counter() - dropped)
    return waits


def epoch_rate(ds, n: int, batch: int, passes: int) -> float:
    """Images/s of `passes` passes over the stream, no model attached."""
    steps = passes * math.ceil(n / batch)
    for _ in ds.take(2):  # warm-up: build the graph, start the workers
        pass
    _, sec = timed(lambda: [None for _ in ds.take(steps)])
    return steps * batch / sec


def skip_rate(images, targets, batch, augment) -> float:
    """Images/s a resumed run passes over: 30 epochs' worth, at least 300,000 (a measurable time)."""
    skipped = max(30 * len(images), 300_000)

    def first_batch(start: int) -> float:
        ds = make_dataset(images, targets, batch, shuffle=True, seed=0, augment=augment, repeat=True, start=start)
        return timed(lambda: next(iter(ds)))[1]

    first_batch(0)  # warm-up
    fresh = min(first_batch(0) for _ in range(3))
    resumed = min(first_batch(skipped) for _ in range(3))
    return skipped / (resumed - fresh) if resumed > fresh else float("inf")


def validation_rate(model, images, whole: bool) -> float:
    """Images/s of one validation pass over 1,000 images (the default val split): through
    `model.predict` as training validated before 2026-12-05 evening (a new tf.data pipeline
    per call, autotuned), or a batch at a time as it does now (bearcat.experiment.outputs)."""
    import gc

    from bearcat.experiment import outputs

    x = images[:1000]
    if whole:
        _, sec = timed(lambda: model.predict(x.astype("float32"), batch_size=256, verbose=0))
    else:
        _, sec = timed(lambda: outputs(model, x))
    gc.collect()
    return len(x) / sec


def build_default_model(cfg, samples):
    from hydra.utils import instantiate

    from bearcat.experiment import build_model, build_vocab_and_mode

    mode = build_vocab_and_mode(cfg, Splits(samples, [], []))
    model = build_model(cfg, mode)
    model.compile(optimizer=instantiate(cfg.optimizer), loss=mode.loss(), jit_compile=cfg.trainer.jit_compile)
    return model, mode


def fit_rate(model, ds, steps: int, batch: int) -> float:
    """Images/s of a `steps`-step fit fed by the endless stream `ds` (as a training run's
    is), from the start of training to its last step: the fit's end is left out. Why: the
    end drops the stream's iterator, which waits for tf.data's autotuning thread to wake
    (`end of a fit` below), a wait a run pays once, not on every step. Timed with it, some
    short fits read half speed (2 of 6 in the record of 2026-12-05 afternoon:
    `500 898 809 807 500 854`)."""
    import gc

    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # warm-up: trace and compile
    gc.collect()  # Keras keeps the warm-up's iterator in a reference cycle: dropped here, not mid-fit
    clock = Clock()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[clock])
    gc.collect()
    return steps * batch / (clock.end - clock.begin)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10000, help="images to load and iterate")
    ap.add_argument("--steps", type=int, default=100, help="timed training steps per measurement")
    ap.add_argument("--passes", type=int, default=3, help="timed pipeline passes (epochs) per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the training measurements (medians shown)")
    ap.add_argument("--folder", default=None, help="bench these images instead of generated captchas")
    ap.add_argument("--work-dir", default=str(ROOT / "outputs" / "bench_data"), help="scratch folder")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import absl.logging
    import tensorflow as tf  # noqa: F401  (imported before any timing starts)

    absl.logging.set_verbosity(absl.logging.ERROR)  # not one line per autotuned stream: "Changing the value of option"

    from bearcat.data.augment import build_augment
    from bearcat.experiment import preprocess_config

    cfg = config([])
    pre = preprocess_config(cfg)
    batch = int(cfg.trainer.batch_size)
    work = Path(args.work_dir)
    samples = sample_images(args, cfg, work)
    n = len(samples)
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)  # only this script's own packed shards and caches
    rows = {} if args.folder else cold_rates(cfg, pre, args.images, scratch)

    folder_split, sec = timed(lambda: load_split(samples, pre, None, desc=""))
    rows["load: image folder"] = n / sec
    for enc in ("file", "raw"):
        out = scratch / f"packed_{enc}"
        _, pack_sec = timed(lambda: pack(Splits(samples, [], []), out, pre, enc, 5000))
        rows[f"pack ({enc}), once"] = n / pack_sec
        refs = packed(str(out)).train
        loaded, sec = timed(lambda: load_split(refs, pre, None, desc=""))
        assert (loaded.images == folder_split.images).all(), "packed data must decode to the same pixels"
        rows[f"load: packed TFRecords ({enc})"] = n / sec
    load_split(samples, pre, str(scratch / "cache"))  # writes the cache
    cached, sec = timed(lambda: load_split(samples, pre, str(scratch / "cache")))
    rows["load: decoded-array cache"] = n / sec

    model, mode = build_default_model(cfg, samples)
    images, targets = folder_split.images, mode.encode(folder_split.labels)
    light = build_augment(config(["augmentation=light"]).augmentation, seed=0)
    fed = streams(images, targets, batch, light)
    for name, ds in fed.items():
        rows[f"epoch: pipeline + {name}"] = epoch_rate(ds, n, batch, args.passes)
    rows["resume: pass over the epochs done"] = skip_rate(images, targets, batch, light)

    # The same batch shape as the pipeline's (batch dimension unknown), so no retracing in between.
    fixed = make_dataset(images[:batch], targets[:batch], batch).cache().repeat()
    fits = {"train step (fixed batch)": []} | {f"fit, pipeline + {name}": [] for name in fed}
    checks = {"validation (1,000 images): model.predict (before)": True, "validation: a batch at a time": False}
    for whole in checks.values():
        validation_rate(model, images, whole)  # warm-up: trace
    for _ in range(args.repeats):  # in turn, so load from elsewhere on the machine spreads over every row
        fits["train step (fixed batch)"].append(fit_rate(model, fixed, args.steps, batch))
        for name, ds in fed.items():
            fits[f"fit, pipeline + {name}"].append(fit_rate(model, ds, args.steps, batch))
        for name, whole in checks.items():
            fits.setdefault(name, []).append(validation_rate(model, images, whole))
    rows |= {name: statistics.median(rates) for name, rates in fits.items()}
    ends = {}
    for _ in range(args.repeats):
        for name, waits in end_of_fit(images, targets, batch).items():
            ends.setdefault(name, []).append(waits)
    train_step = rows["train step (fixed batch)"]

    print(f"\n{n} images ({'folder ' + args.folder if args.folder else 'generated, default synthetic settings'}), "
          f"preprocess {pre.height}x{pre.width}x{pre.channels}, batch {batch}, {os.cpu_count()} CPU cores, "
          f"default model {cfg.mode.name} + {cfg.backbone.name}\n")
    print(f"| {'measurement':<54} | {'images/s':>10} | {'x train step':>12} |")
    print(f"|{'-' * 56}|{'-' * 12}|{'-' * 14}|")
    for name, rate in rows.items():
        print(f"| {name:<54} | {rate:>10.0f} | {rate / train_step:>12.2f} |")
    print("\ntraining, each round (images/s):")
    for name, rates in fits.items():
        print(f"  {name:<54} {' '.join(f'{r:.0f}' for r in rates)}")
    print("\nend of a fit: seconds to drop the training stream's iterator after 1, 3 and 6 s of use, each round:")
    for name, rounds in ends.items():
        print(f"  {name:<20} " + " | ".join(" ".join(f"{w:.2f}" for w in waits) for waits in rounds))
    if args.json:
        Path(args.json).write_text(json.dumps({"images": n, "rows": rows, "rounds": fits, "end_of_fit": ends},
                                              indent=1))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
