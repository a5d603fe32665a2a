"""The pieces a run is composed of: data, mode, model, evaluation. Used by train,
evaluate (and later export/serve) so each entry point stays a few lines."""
from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from bearcat.data.labels import Vocabulary
from bearcat.data.pipeline import LoadedSplit, load_split, read_headers, warn_if_animated, warn_if_squeezed
from bearcat.data.preprocess import PreprocessConfig
from bearcat.data.sources import SPLITS, Splits, skip
from bearcat.metrics import text_metrics, wilson_interval
from bearcat.modes import Mode, build_mode
from bearcat.modes.base import mode_class

log = logging.getLogger(__name__)


@dataclass
class Data:
    splits: Splits
    loaded: dict[str, LoadedSplit]
    skipped: dict[str, int]


def preprocess_config(cfg: DictConfig) -> PreprocessConfig:
    return PreprocessConfig.from_dict(OmegaConf.to_container(cfg.preprocess, resolve=True))


def mode_options(cfg: DictConfig, train_images: int | None = None) -> dict:
    """The mode's keyword options; `mode.dropout=auto` resolved by the training split's size
    (`train_images`; unknown counts as a large set)."""
    opts = OmegaConf.to_container(cfg.mode, resolve=True)
    opts.pop("name")
    opts.pop("max_length", None)
    small_dropout, small_set = opts.pop("small_set_dropout", None), opts.pop("small_set_images", None)
    opts.pop("unroll_min_steps", None)
    if str(opts.get("rnn_unroll")) == "auto":  # a full-length training unless plan_unroll learns otherwise
        opts["rnn_unroll"] = True
    if str(opts.get("dropout")) == "auto":
        # ctc_tiny's convolutional head overfits a folder of a thousand images (0.85 against 0.93
        # with 0.3), while the default's 120,000 generated images are far from overfitted
        small = train_images is not None and small_set is not None and train_images < int(small_set)
        opts["dropout"] = float(small_dropout or 0.0) if small else 0.0
        if train_images is not None:
            log.info("mode.dropout=auto: %s (%d training images; mode.small_set_dropout=%s below "
                     "mode.small_set_images=%s, else 0)",
                     opts["dropout"], train_images, small_dropout, small_set)
    return opts


def plan_unroll(cfg: DictConfig, mode, planned_steps: int) -> None:
    """Resolve `mode.rnn_unroll=auto` for a training that plans `planned_steps` steps, in both
    `cfg` (what MLflow records) and the mode (what builds the model): unrolled from
    `mode.unroll_min_steps` steps. The unrolled layer trains a few percent faster per step but
    builds seconds slower (its graph has a copy of the cell per step), a loss a short run
    never earns back."""
    if str(cfg.mode.get("rnn_unroll")) != "auto":
        return
    if str(cfg.mode.get("rnn")) in ("none", "None") or not cfg.mode.get("rnn_layers"):
        cfg.mode.rnn_unroll = mode.options["rnn_unroll"] = False  # no recurrent layer: nothing to unroll
        return
    least = int(cfg.mode.unroll_min_steps)
    unroll = planned_steps >= least
    cfg.mode.rnn_unroll = mode.options["rnn_unroll"] = unroll
    log.info("mode.rnn_unroll=auto: %s (%d planned training steps; unrolled from mode.unroll_min_steps=%d)",
             unroll, planned_steps, least)


def load_sources(cfg: DictConfig) -> Splits:
    """The dataset's splits. A source that takes `preprocess` (one that draws its images) is
    given the run's preprocess settings, to preprocess images while it has them in memory."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_method

    extra, target = {}, cfg.dataset.get("_target_")
    if not target:
        raise ValueError("dataset._target_ is not set: choose a dataset (dataset=synthetic|folder|packed|tiles|click|voc)")
    try:
        source = get_method(target)
    except Exception as err:  # Hydra's message runs over several lines; its first names the trouble
        raise ValueError(f"dataset._target_={target}: cannot be imported ({str(err).splitlines()[0]})") from None
    if "preprocess" in inspect.signature(source).parameters:
        extra["preprocess"] = preprocess_config(cfg).to_dict()
    settings = copy.deepcopy(cfg.dataset)  # keeps its parent: interpolations and errors name dataset.<key>
    with open_dict(settings):
        settings.pop("train_limit", None)  # applied here, not by the source
    try:
        splits = instantiate(settings, cache_dir=cfg.paths.cache_dir, _convert_="all", **extra)
    except InstantiationException as err:  # show the source's own message, not Hydra's wrapper
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise err.__cause__ from None
        raise
    limit = cfg.dataset.get("train_limit")
    return splits if limit is None else limit_train(splits, limit, int(cfg.trainer.get("seed", 0)))


def limit_train(splits, limit, seed: int):
    """`splits` with only `limit` of its training images, picked at random by `seed` but
    nested: with the same seed, a smaller limit's images are among a larger one's (so a
    learning curve adds images rather than swapping them). Val and test are untouched."""
    train = splits.train
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= len(train):
        raise ValueError(f"dataset.train_limit={limit}: give a whole number from 1 to {len(train)}, "
                         f"the training images of this dataset (or null for all)")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    kept = sorted(order[:limit])  # in the source's own order
    log.info("dataset.train_limit=%d: training on %d of %d training images", limit, limit, len(train))
    return dataclasses.replace(splits, train=[train[i] for i in kept])


def build_vocab_and_mode(cfg: DictConfig, splits: Splits, earlier: list[str] | None = None) -> Mode:
    """`earlier`: a vocabulary to keep (init_from_vocabulary=true): its classes first, in
    its order, then any the labels add. A configured charset wins over it."""
    labels = splits.labels()
    charset = splits.charset or cfg.mode.get("charset")
    vocab = mode_class(cfg.mode.name).make_vocabulary(labels, charset)
    if earlier and not charset:
        kept = set(earlier)
        vocab = Vocabulary(list(earlier) + [c for c in vocab.chars if c not in kept])
    max_length = cfg.mode.get("max_length") or max((len(x) for x in labels), default=1)
    return build_mode(cfg.mode.name, vocab, max_length, **mode_options(cfg, len(splits.train)))


def filter_labels(splits: Splits, mode: Mode, skipped: dict[str, int]) -> Splits:
    """Drop (with a warning naming the file) labels the mode cannot learn."""
    kept = {}
    for split, samples in splits.items():
        kept[split] = []
        for path, label in samples:
            problem = mode.check_label(label)
            if problem:
                reason, detail = problem
                skip(skipped, reason, log, "%s: label %r skipped: %s (%s)", path, label, reason, detail)
            else:
                kept[split].append((path, label))
    return Splits(kept["train"], kept["val"], kept["test"], splits.charset, splits.skipped)


def warn_unseen_classes(splits: Splits, mode: Mode) -> None:
    """num_classes learns a class only from training images of it: warn when a tenth or more
    of the val or test labels never appear in training (typically text captchas, every label
    its own class, given to num_classes). Not for angles, whose neighbours answer for them."""
    if mode.name != "num_classes" or getattr(mode, "angles", None) is not None:
        return
    seen = {label for _, label in splits.train}
    for split in ("val", "test"):
        labels = [label for _, label in getattr(splits, split)]
        unseen = sum(label not in seen for label in labels)
        if labels and unseen >= 0.1 * len(labels):
            log.warning("mode=num_classes: %d of %d %s labels never appear among the %d training images' labels "
                        "(%d classes in all), and a class is learnt only from its training images, so at most "
                        "%.1f%% of them can be read right. Text to read character by character needs "
                        "mode=ctc, ctc_tiny or ordinary", unseen, len(labels), split, len(splits.train),
                        len(mode.vocab), 100.0 * (len(labels) - unseen) / len(labels))


def load_data(cfg: DictConfig, splits: Splits, mode: Mode, only: tuple[str, ...] = SPLITS) -> Data:
    skipped = dict(splits.skipped)
    given = splits
    splits = filter_labels(splits, mode, skipped)
    if "train" in only:
        warn_unseen_classes(splits, mode)
    pre = preprocess_config(cfg)
    headers = read_headers(getattr(splits, only[0]))
    warn_if_animated(headers, pre)
    warn_if_squeezed(headers, pre)
    loaded = {}
    for split in only:
        samples = getattr(splits, split)
        loaded[split] = load_split(samples, pre, cfg.paths.cache_dir, desc=f"decoding {split}")
        if loaded[split].errors:
            skipped["unreadable image"] = skipped.get("unreadable image", 0) + len(loaded[split].errors)
        if not len(loaded[split]):
            given_n = len(getattr(given, split))
            why = (f"none of its {len(samples)} images could be read" if samples else
                   f"all {given_n} of its images were skipped (skipped files: {skipped})" if given_n else
                   "it was given no images")
            ratio, root = cfg.dataset.get(f"{split}_ratio"), cfg.dataset.get("root")
            if not samples and ratio is not None and root is not None:  # a folder: say what sized the split
                folder, n = Path(str(root)) / split, len(splits.train) + len(splits.val) + len(splits.test)
                why += (f"; {folder} holds no labelled image" if folder.is_dir() else
                        f"; dataset.{split}_ratio={ratio} is the share of a flat folder it gets, of {n} "
                        f"image{'s' if n != 1 else ''} here (or give the folder a {split}/ sub-folder)")
            raise ValueError(f"the {split} split has no usable images (dataset: {cfg.dataset.get('_target_')}): {why}")
    if skipped:
        log.warning("skipped files: %s", skipped)
    return Data(splits, loaded, skipped)


PRECISIONS = ("auto", "float32", "mixed_bfloat16")
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs with bfloat16 arithmetic


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def precision_name(name: str | None) -> str:
    """trainer.precision checked (null = float32), before anything loads."""
    name = name or "float32"
    if name not in PRECISIONS:
        raise ValueError(f"trainer.precision={name}: choose one of {', '.join(PRECISIONS)}")
    return name


def resolve_precision(name: str | None) -> str:
    """trainer.precision, with `auto` made concrete: mixed_bfloat16 on a machine without a
    GPU whose CPU computes in bfloat16 natively (elsewhere it is emulated and slower), else float32."""
    name = precision_name(name)
    if name != "auto":
        return name
    import tensorflow as tf

    native = bool(cpu_flags() & BF16_FLAGS) and not tf.config.list_physical_devices("GPU")
    return "mixed_bfloat16" if native else "float32"


def build_model(cfg: DictConfig, mode: Mode, precision: str | None = None):
    """Input (uint8 pixels as float) -> backbone -> mode head. `precision` (default
    trainer.precision): mixed_bfloat16 computes in bfloat16 with float32 weights; every
    head's last layer stays float32, so probabilities and the loss keep full precision."""
    import keras

    precision = resolve_precision(precision or (cfg.get("trainer") or {}).get("precision"))
    pre = preprocess_config(cfg)
    node = OmegaConf.to_container(cfg.backbone, resolve=True)
    node.pop("name", None)  # the registry name is for logs and tags, not the builder
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)  # read by each layer as it is made
    try:
        inputs = keras.Input((pre.height, pre.width, pre.channels), name="image")
        features = instantiate(node, _partial_=True)(inputs)
        outputs = mode.build_head(features)
        return keras.Model(inputs, outputs, name=f"bearcat_{mode.name}")
    finally:
        keras.config.set_dtype_policy(before)


def float32_model(cfg: DictConfig, mode: Mode, model):
    """The same model computing in float32 (for testing, export and serving: bfloat16 is
    slow or missing on many CPUs and export formats), with `model`'s weights."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model
    plain = build_model(cfg, mode, "float32")
    plain.set_weights(model.get_weights())
    return plain


def build_optimizer(cfg: DictConfig, learning_rate):
    """cfg.optimizer with the schedule's learning rate; with trainer.ema_momentum it also
    keeps a moving average of the weights, which bearcat.callbacks.AveragedWeights makes the
    validated and saved model."""
    ema = cfg.trainer.get("ema_momentum")
    extra = {"use_ema": True, "ema_momentum": float(ema)} if ema else {}
    return instantiate(cfg.optimizer, learning_rate=learning_rate, **extra)


def compile_model(model, optimizer, loss, jit_compile: bool = False) -> None:
    """Compile, then create the optimizer's slots eagerly. Left to the first `fit` call,
    Keras creates them while it traces the train step, which costs far more for backbones
    with hundreds of weights (README "Training": `scripts/bench_step.py ... opt:lazy`)."""
    model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile)
    model.optimizer.build(model.trainable_variables)


def outputs(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's output for every image, a batch at a time through `predict_on_batch`.
    Why not `model.predict`: it builds a tf.data pipeline on each call, and dropping that
    pipeline's iterator waits for tf.data's autotuning thread to wake. Its naps double from
    10 ms, so a validation could take twice as long (6 of 11 calls on 1,000 images in one
    probe; scripts/bench_data.py, the validation rows). For Keras models only: `predict`
    below also scores exported runtimes (ONNX, TFLite), which have only `predict_on_batch`."""
    if model.distribute_strategy.num_replicas_in_sync > 1:  # e.g. validation while training mirrored:
        # there predict_on_batch gives each replica the whole batch (16 rows back for 8 on 2 replicas)
        return np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0))
    chunks = [np.asarray(model.predict_on_batch(images[i:i + batch_size].astype(np.float32)))
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, *model.output_shape[1:]), np.float32)


def predict(model, mode: Mode, images: np.ndarray, batch_size: int = 256) -> tuple[list[dict], float]:
    """Decoded predictions and the model's time per image in ms (batched). Each batch shape
    is run once before the clock starts: Keras builds a graph on the first call of a shape
    (about 0.5 s here: 1.4 ms per image of a 350-image test split, per shape)."""
    for size in {min(batch_size, len(images)), len(images) % batch_size} - {0}:
        model.predict_on_batch(images[:size].astype(np.float32))
    results = []
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        probs = model.predict_on_batch(images[i:i + batch_size].astype(np.float32))
        results += mode.decode(np.asarray(probs))
    ms = (time.perf_counter() - start) * 1000.0 / max(1, len(images))
    return results, ms


def score(mode: Mode, truths: list[str], results: list[dict]) -> dict[str, float]:
    preds = [r["result"] for r in results]
    metrics = text_metrics(truths, preds)
    if not mode.text:  # classification: top-1, and top-5 from each result's "top5" candidates
        metrics = {"accuracy": metrics["accuracy"],
                   "top5_accuracy": sum(t in r.get("top5", (r["result"],)) for t, r in zip(truths, results))
                   / max(1, len(truths))}
    right = sum(t == p for t, p in zip(truths, preds))
    metrics["accuracy_ci_low"], metrics["accuracy_ci_high"] = wilson_interval(right, len(truths))
    if any("angle" in r for r in results):  # a rotation model (mode.angle): how far off, in degrees
        from bearcat.modes.num_classes import angle_metrics

        metrics |= angle_metrics(truths, results)
    return metrics


def test_metrics(mode: Mode, truths: list[str], results: list[dict], ms: float,
                 low_confidence: float) -> dict[str, float]:
    """A text or tile run's test_* metrics (train and evaluate log them; check_settings
    reads their names off a one-image probe to check optimized_metric before training)."""
    metrics = {f"test_{k}": v for k, v in score(mode, truths, results).items()}
    metrics["test_ms_per_image"] = ms
    metrics["test_low_confidence_fraction"] = (sum(r["confidence"] < low_confidence for r in results)
                                               / max(1, len(results)))
    return metrics
