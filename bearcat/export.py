"""Export entry point: `python -m bearcat.export run_id=ID|checkpoint=PATH|model=... format=onnx`.

Writes an export bundle (default `outputs/exports/<run id>/`): `bundle.json` (vocabulary,
preprocessing and decoding settings, what was exported and its parity report), the Keras
model, and the chosen formats (`savedmodel/`, `model.onnx`, `model.tflite`,
`model.int8.tflite`). Every exported model is checked against the Keras model on test
images (largest output difference, identical decoded strings; for the 8-bit model the
share of identical strings); a mismatch fails the export. A click bundle's recogniser is
written in the same formats and checked the same way, on crops of the boxes found.
Optionally the bundle is registered in the MLflow model registry as a pyfunc.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from bearcat import CONFIG_DIR, overrides
from bearcat.atomic import replacing, write_json
from bearcat.runtime import FILES, FORMATS, QUANTIZED, load_runtime

log = logging.getLogger("bearcat.export")


class ParityError(RuntimeError):
    """An exported model answers differently from the Keras model."""


def chosen_formats(value) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    unknown = [n for n in names if n not in FILES and n != "all"]
    if unknown or not names:
        raise ValueError(f"format={value}: choose from {', '.join(FILES)} or all (every format but "
                         f"{', '.join(QUANTIZED)}), or a list: format=[onnx,tflite]")
    expanded = [f for n in names for f in (FORMATS if n == "all" else (n,))]
    return list(dict.fromkeys(expanded))


def unrolled_copy(model):
    """The same model with its recurrent layers unrolled (same weights), for ONNX: an
    unrolled GRU becomes plain matrix products instead of an ONNX Loop, which ONNX
    Runtime runs faster. Returns the model itself when it has no recurrent layer or
    cannot be cloned."""
    import keras

    def unrolled(layer):
        cfg = layer.get_config()
        if isinstance(layer, keras.layers.Bidirectional):
            for key in ("layer", "backward_layer"):
                if key in cfg:
                    cfg[key]["config"]["unroll"] = True
        elif isinstance(layer, keras.layers.RNN):
            cfg["unroll"] = True
        return layer.__class__.from_config(cfg)

    if not any(isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)) for layer in model.layers):
        return model
    try:
        copy = keras.models.clone_model(model, clone_function=unrolled)
        copy.set_weights(model.get_weights())
        copy.predict_on_batch(np.zeros((1, *model.input_shape[1:]), np.float32))  # exporters need a called model
        return copy
    except Exception as err:  # custom layers without a usable config: export as it is
        log.warning("ONNX: recurrent layers left rolled (%s: %s)", type(err).__name__, err)
        return model


def inference_graph(model):
    """`model` called with training=False, as a model of its own, for the exporters that trace
    a plain `model(x)` (SavedModel, ONNX). Keras' Resizing (inside the keras.applications
    backbones) defaults `training` to True, and a call that does not say passes that on to
    every layer after it: BatchNormalization then normalised each batch by the batch's own
    statistics, and Dropout dropped (an ONNX export read an image alone otherwise than in a
    batch, and failed the parity check)."""
    import keras

    inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name)
    wrapped = keras.Model(inputs, model(inputs, training=False), name=model.name)
    wrapped.predict_on_batch(np.zeros((1, *model.input_shape[1:]), np.float32))  # exporters need a called model
    return wrapped


def tflite_bytes(model, quantized: bool = False) -> bytes:
    """The model as a TFLite flat buffer, converted from a traced function (its weights
    frozen as constants) rather than through Keras' `export(format="litert")`, which writes
    a SavedModel first: the same operators and outputs, converted 2x (CTC) to 5x
    (detector) faster (README "Export", `scripts/bench_export.py`)."""
    import tensorflow as tf

    # A fixed batch of 1 lets the converter lower the recurrent loop to TFLite's own ops
    # (a dynamic batch needs the Flex delegate, absent from the plain interpreter).
    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    traced = tf.function(lambda image: model(image, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([traced])  # builtin operators only
    if quantized:  # dynamic-range quantization: weights stored as 8-bit integers; XNNPACK
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # then runs convolutions and products in int8
    return converter.convert()


def write_format(model, folder: Path, fmt: str, cfg: DictConfig) -> Path:
    """Write one format into the bundle folder (atomically: temporary name, then rename)."""
    target = folder / FILES[fmt]
    with replacing(target, keep_suffix=True) as tmp:  # the exporters go by the suffix
        if fmt == "savedmodel":
            inference_graph(model).export(str(tmp), format="tf_saved_model", verbose=False)
        elif fmt == "onnx":
            source = unrolled_copy(model) if cfg.onnx.unroll_rnn else model
            inference_graph(source).export(str(tmp), format="onnx", opset_version=cfg.onnx.opset, verbose=False)
        elif fmt in ("tflite", "tflite_int8"):
            tmp.write_bytes(tflite_bytes(model, quantized=fmt == "tflite_int8"))
        else:
            raise ValueError(f"format={fmt}: unknown")
    return target


def parity_images(cfg: DictConfig, train_config: Path | None, meta: dict, count: int) -> np.ndarray:
    """Up to `count` preprocessed test images of the model's data set; random images
    (with a warning) when the data set is unknown or gone."""
    from bearcat.data.pipeline import load_split
    from bearcat.data.preprocess import PreprocessConfig
    from bearcat.evaluate import evaluation_config
    from bearcat.experiment import load_sources

    pre = PreprocessConfig.from_dict(meta["preprocess"])
    try:
        data_cfg = evaluation_config(cfg.copy(), train_config, meta, split="test")
        splits = load_sources(data_cfg)
        samples = (splits.test or splits.val or splits.train)[:count]
        samples = [(s.path, "") if hasattr(s, "path") else s for s in samples]  # detection records
        images = load_split(samples, pre, cfg.paths.cache_dir, desc="parity images").images
        if len(images):
            return images
        raise ValueError("no readable test images")
    except (ValueError, FileNotFoundError) as err:
        log.warning("parity check on random images: the model's test images are not available (%s)", err)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, pre.height, pre.width, pre.channels), dtype=np.uint8)


def answer(result: dict) -> str:
    """What must not change between formats: the text, and for detection the boxes kept."""
    boxes = [f"{b['label']}@{round(b['x1'])},{round(b['y1'])}" for b in result.get("boxes", ())]
    return result["result"] + (" " + " ".join(boxes) if boxes else "")


def close_answers(a: dict, b: dict, box_pixels: float) -> bool:
    """The quantized formats' parity: the same text; for detection the same boxes (label, and
    each corner within `box_pixels`) in any order, since 8-bit outputs move a box by a pixel
    and swap the left-to-right order of two boxes at nearly the same x."""
    if "boxes" not in a or "boxes" not in b:
        return a["result"] == b["result"]
    left = list(b["boxes"])
    if len(left) != len(a["boxes"]):
        return False
    for box in a["boxes"]:
        match = next((o for o in left if o["label"] == box["label"]
                      and all(abs(o[k] - box[k]) <= box_pixels for k in ("x1", "y1", "x2", "y2"))), None)
        if match is None:
            return False
        left.remove(match)
    return True


def parity_check(folder: Path, formats: list[str], reference, mode, images: np.ndarray, atol: float,
                 agreement: float = 1.0, box_pixels: float = 2.0) -> dict:
    """Run every exported format on the images; compare outputs and decoded strings with
    the Keras model. Raises ParityError naming the format, the difference and an example.
    A quantized format approximates the outputs: only the share of answers close to the
    Keras model's (`close_answers`) is checked, against `agreement`."""
    x = images.astype(np.float32)
    expected = np.asarray(reference.predict_on_batch(x))
    want_results = mode.decode(expected)
    want = [answer(r) for r in want_results]
    report = {}
    for fmt in formats:
        if fmt == "keras":
            continue
        got = load_runtime(folder, fmt).predict_on_batch(x)
        diff = float(np.abs(np.asarray(got) - expected).max())
        got_results = mode.decode(got)
        texts = [answer(r) for r in got_results]
        if fmt in QUANTIZED:
            differ = [i for i, (a, b) in enumerate(zip(want_results, got_results))
                      if not close_answers(a, b, box_pixels)]
        else:
            differ = [i for i, (a, b) in enumerate(zip(want, texts)) if a != b]
        report[fmt] = {"images": len(x), "max_abs_diff": diff, "different_results": len(differ)}
        log.info("parity %s: %d images, max |difference| %.2e, %d different results", fmt, len(x), diff,
                 len(differ))
        example = f"; image {differ[0]}: keras {want[differ[0]]!r} vs {fmt} {texts[differ[0]]!r}" if differ else ""
        if fmt in QUANTIZED:
            report[fmt]["agreement"] = share = 1.0 - len(differ) / len(x)
            if not np.isfinite(diff) or share < agreement:
                raise ParityError(f"{fmt} export reads {share:.3f} of {len(x)} images as the Keras model does "
                                  f"(parity.quantized_agreement={agreement}){example}")
        elif not np.isfinite(diff) or diff > atol or differ:
            raise ParityError(f"{fmt} export does not match the Keras model on {len(x)} images: max |difference| "
                              f"{diff:.3g} (parity.atol={atol}), {len(differ)} different results{example}")
    return report


def listed(formats: list[str], report: dict) -> dict:
    """bundle.json's `exports` entries of the formats written: file, and the parity report."""
    return {fmt: {"file": FILES[fmt], **({"parity": report[fmt]} if fmt in report else {})} for fmt in formats}


def recogniser_inputs(detector, mode, images: np.ndarray, pre) -> np.ndarray:
    """What a click bundle's recogniser reads on the parity images: the crop of each box the
    Keras detector finds there (the Detector's crop and preprocessing), and each whole image,
    so there is something to check when a barely trained detector finds nothing."""
    from PIL import Image

    from bearcat.data.preprocess import preprocess
    from bearcat.detection.predictor import character_crop

    pictures = [Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img) for img in images]
    found = mode.decode(np.asarray(detector.predict_on_batch(images.astype(np.float32))))
    crops = [character_crop(picture, (b["x1"], b["y1"], b["x2"], b["y2"]))  # canvas pixels: the images are canvases
             for picture, result in zip(pictures, found) for b in result["boxes"]]
    return np.stack([preprocess(picture, pre) for picture in crops + pictures])


def export_recogniser(source: Path, stage: Path, earlier: Path, formats: list[str], cfg: DictConfig, detector,
                      mode, images: np.ndarray) -> dict:
    """A click bundle's recogniser (a num_classes bundle in `recogniser/`) staged beside the
    detector in the same formats, each checked like the detector, so the whole bundle reads
    in one runtime, without Keras too. Formats of an earlier export of it into `earlier`
    are kept, as for the detector. Returns the recogniser's parity report."""
    from bearcat.bundle import BUNDLE_FILE, MODEL_FILE, Predictor, load_keras, read_meta
    from bearcat.data.preprocess import PreprocessConfig

    shutil.copytree(source, stage)
    meta = read_meta(stage)
    kept = earlier_exports(earlier, source, meta, formats)
    for fmt in kept:
        copy = shutil.copytree if (earlier / FILES[fmt]).is_dir() else shutil.copy2
        copy(earlier / FILES[fmt], stage / FILES[fmt])
    model = load_keras(stage / MODEL_FILE)
    model.predict_on_batch(np.zeros((1, *model.input_shape[1:]), np.float32))  # exporters need a called model
    for fmt in formats:
        if fmt != "keras":
            write_format(model, stage, fmt, cfg)
    crops = recogniser_inputs(detector, mode, images, PreprocessConfig.from_dict(meta["preprocess"]))
    report = parity_check(stage, formats, model, Predictor(stage, model=model).mode, crops, float(cfg.parity.atol),
                          float(cfg.parity.quantized_agreement))
    write_json(stage / BUNDLE_FILE, {**meta, "exports": kept | listed(formats, report)}, indent=1)
    return report


def commit_export(stage: Path, out: Path) -> None:
    """Move each staged file or folder into `out`, replacing its earlier version (a server
    may be reading the folder: each file appears whole); bundle.json last, so it names only
    files already in place. Other files in `out` are left alone."""
    from bearcat.bundle import BUNDLE_FILE

    for item in sorted(stage.iterdir(), key=lambda p: p.name == BUNDLE_FILE):
        with replacing(out / item.name) as tmp:  # a file or a folder, swapped in whole
            item.rename(tmp)


def earlier_exports(out: Path, bundle: Path, meta: dict, formats: list[str]) -> dict:
    """The `exports` entries of an earlier export of this same model into `out` (same Keras
    file, same settings) whose files are still there, other than `formats`: exporting ONNX
    and then TFLite of one run leaves both usable. Another model's files stay unlisted."""
    import filecmp

    from bearcat.bundle import BUNDLE_FILE, MODEL_FILE, read_meta

    if not ((out / BUNDLE_FILE).is_file() and (out / MODEL_FILE).is_file()):
        return {}
    try:
        earlier = read_meta(out)
    except ValueError:  # not JSON, or another bundle format: nothing of it is kept
        return {}

    def settings(m: dict) -> dict:
        return {k: v for k, v in m.items() if k not in ("exports", "mlflow_run_id")}

    if settings(earlier) != settings(meta) or not filecmp.cmp(out / MODEL_FILE, bundle / MODEL_FILE, shallow=False):
        return {}
    kept = {fmt: entry for fmt, entry in (earlier.get("exports") or {}).items()
            if fmt in FILES and fmt not in formats and (out / FILES[fmt]).exists()}
    if kept:
        log.info("kept %s from the earlier export of this model in %s", ", ".join(kept), out)
    return kept


def export_dir(cfg: DictConfig, run_id: str | None, bundle: Path) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    name = run_id or bundle.resolve().parent.name
    return Path(cfg.exports_root) / name


def check_settings(cfg: DictConfig) -> None:
    """Before the model loads: a wrong one failed after the conversions (a minute), and a
    mistyped dataset.root let the parity check fall back to random images."""
    from bearcat.checks import (check_folder, flag_setting, fraction_setting, is_whole_number, number_setting,
                                whole_setting)

    p = cfg.parity
    if not (is_whole_number(p.images) and p.images >= 1):
        raise ValueError(f"parity.images={p.images}: the check needs at least 1 image")
    for key in ("atol", "quantized_box_pixels"):
        number_setting(f"parity.{key}", p[key])
    fraction_setting("parity.quantized_agreement", p.quantized_agreement)
    whole_setting("onnx.opset", cfg.onnx.opset, 1)
    flag_setting("onnx.unroll_rnn", cfg.onnx.unroll_rnn)
    if cfg.get("dataset") is not None:  # parity images asked for: no fallback to random ones
        check_folder("dataset.root", cfg.dataset.get("root"))


def export(cfg: DictConfig) -> dict:
    formats = chosen_formats(cfg.format)
    check_settings(cfg)  # before MLflow and TensorFlow load
    from bearcat import tracking
    from bearcat.bundle import BUNDLE_FILE, MODEL_FILE, Predictor, load_keras, read_meta
    from bearcat.detection.predictor import RECOGNISER_DIR
    from bearcat.evaluate import locate_bundle

    agreement = float(cfg.parity.quantized_agreement)
    experiment_id = tracking.setup(cfg.mlflow)
    with tempfile.TemporaryDirectory() as workdir:
        bundle, train_config, source_run = locate_bundle(cfg, workdir)
        meta = read_meta(bundle)
        source_run = source_run or meta.get("mlflow_run_id")
        out = export_dir(cfg, source_run, bundle)
        out.mkdir(parents=True, exist_ok=True)
        # Everything is written and checked in a staging folder beside `out` first: a failed
        # parity check leaves `out` as it was, never a mismatching model beside an old bundle.json.
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
        try:
            shutil.copy2(bundle / MODEL_FILE, stage / MODEL_FILE)
            model = load_keras(stage / MODEL_FILE)
            model.predict_on_batch(np.zeros((1, *model.input_shape[1:]), np.float32))  # exporters need a called model
            seconds = {}
            for fmt in formats:
                if fmt != "keras":
                    start = time.perf_counter()
                    write_format(model, stage, fmt, cfg)
                    seconds[fmt] = time.perf_counter() - start
                    log.info("wrote %s (%.1f s)", FILES[fmt], seconds[fmt])
            mode = Predictor(bundle, model=model).mode
            images = parity_images(cfg, train_config, meta, int(cfg.parity.images))
            report = parity_check(stage, formats, model, mode, images, float(cfg.parity.atol), agreement,
                                  float(cfg.parity.quantized_box_pixels))
            inner = {}
            if (bundle / RECOGNISER_DIR).is_dir():  # a detector's recogniser travels with it, in the same formats
                inner = export_recogniser(bundle / RECOGNISER_DIR, stage / RECOGNISER_DIR, out / RECOGNISER_DIR,
                                          formats, cfg, model, mode, images)
            exports = earlier_exports(out, bundle, meta, formats) | listed(formats, report)
            meta = {**meta, "mlflow_run_id": source_run, "exports": exports}
            write_json(stage / BUNDLE_FILE, meta, indent=1)
            commit_export(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    metrics = {f"parity_max_abs_diff_{f}": r["max_abs_diff"] for f, r in report.items()}
    metrics |= {f"parity_agreement_{f}": r["agreement"] for f, r in report.items() if "agreement" in r}
    metrics |= {f"export_seconds_{f}": s for f, s in seconds.items()}
    metrics |= {f"parity_max_abs_diff_recogniser_{f}": r["max_abs_diff"] for f, r in inner.items()}
    metrics |= {f"parity_agreement_recogniser_{f}": r["agreement"] for f, r in inner.items() if "agreement" in r}
    tags = {"bearcat.task": "export", "bearcat.formats": ",".join(formats)}
    if source_run:
        tags["bearcat.source_run_id"] = source_run
    parent = source_run if source_run and tracking.run_exists(source_run) else None
    with tracking.start_run(experiment_id, run_name="export", tags=tags, parent_run_id=parent) as run:
        tracking.log_params({"format": ",".join(formats), "parity.images": len(images),
                             "parity.atol": cfg.parity.atol, "output_dir": str(out.resolve()),
                             "source_run_id": str(source_run)})
        tracking.log_metrics(metrics)
        tracking.log_artifacts(out, "export")
        registered = None
        if cfg.registered_model_name:
            registered = tracking.log_pyfunc(out, cfg.registered_model_name, meta)
            log.info("registered %s version %s", cfg.registered_model_name, registered)
    summary = {"output_dir": str(out), "formats": formats, "parity": report, "mlflow_run_id": run.info.run_id,
               "registered_version": registered, **({"recogniser_parity": inner} if inner else {})}
    print(json.dumps(summary, indent=1))
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@overrides.plain_errors
def main(cfg: DictConfig) -> None:
    export(cfg)


cli = overrides.command(main, "export")  # `--help`, the key meant for a misspelt key, a line for Ctrl-C


if __name__ == "__main__":
    cli()
