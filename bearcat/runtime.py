"""Inference runtimes for a model bundle: Keras, ONNX Runtime, TFLite, SavedModel.

Each runtime takes the model's input batch (uint8 pixels as float32, (B, H, W, C)) and
returns the model's softmax output as NumPy, through `predict_on_batch`, so
`bearcat.bundle.Predictor` (the shared preprocess + `mode.decode`) works unchanged on any
of them. Only the Keras and SavedModel runtimes import TensorFlow, and TFLite when LiteRT's
own interpreter (`ai-edge-litert`) is not installed.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# format name -> file or folder inside an export bundle
FILES = {"keras": "model.keras", "savedmodel": "savedmodel", "onnx": "model.onnx", "tflite": "model.tflite",
         "tflite_int8": "model.int8.tflite"}
# Weights stored as 8-bit integers: a smaller, faster model whose outputs only approximate
# the Keras model's, so it is exported and run only when named, never by `all` or `auto`.
QUANTIZED = ("tflite_int8",)
FORMATS = tuple(f for f in FILES if f not in QUANTIZED)  # format=all: the exact ones


class KerasRuntime:
    name = "keras"

    def __init__(self, path: Path, threads: int = 0):
        from bearcat.bundle import load_keras

        self.model = load_keras(path)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(x))


class OnnxRuntime:
    name = "onnx"

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)  # 0 = ONNX Runtime's choice (all cores)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})[0]


def tflite_interpreter():
    """LiteRT's own interpreter (the `ai-edge-litert` package, no TensorFlow) when it is
    installed, else TensorFlow's `tf.lite.Interpreter` (deprecated by TensorFlow in its favour)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        if importlib.util.find_spec("tensorflow") is None:
            raise ModuleNotFoundError("TFLite models need the ai-edge-litert package (pip install ai-edge-litert) "
                                      "or TensorFlow; neither is installed") from None
        import tensorflow as tf

        return tf.lite.Interpreter


class TFLiteRuntime:
    """TFLite models are exported with a fixed batch of 1 (see bearcat.export): a batch
    is run image by image."""

    name = "tflite"

    def __init__(self, path: Path, threads: int = 0, name: str = "tflite"):
        self.name = name  # tflite or tflite_int8: the same interpreter reads both
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice (and its import's)
            self.interpreter = tflite_interpreter()(model_path=str(path), num_threads=int(threads) or None)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        out = []
        for image in np.asarray(x, np.float32):
            self.interpreter.set_tensor(self.input, image[None])
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output)[0].copy())
        return np.stack(out)


class SavedModelRuntime:
    name = "savedmodel"

    def __init__(self, path: Path, threads: int = 0):
        import tensorflow as tf

        self.tf = tf
        self.model = tf.saved_model.load(str(path))

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        out = self.model.serve(self.tf.constant(x, self.tf.float32))
        return np.asarray(out)


# runtime -> (package it imports, what to do when it is missing); TFLite: tflite_interpreter
_FULL = ("install Bearcat in full (pip install .) or read an ONNX or TFLite export of the bundle "
         "(README \"Deploy without TensorFlow\")")
NEEDS = {"keras": ("keras", _FULL), "savedmodel": ("tensorflow", _FULL),
         "onnx": ("onnxruntime", "pip install onnxruntime")}

RUNTIMES = {"keras": KerasRuntime, "onnx": OnnxRuntime, "tflite": TFLiteRuntime, "savedmodel": SavedModelRuntime,
            "tflite_int8": lambda path, threads: TFLiteRuntime(path, threads, name="tflite_int8")}


def available_formats(folder) -> list[str]:
    """The formats a bundle holds. An export's bundle.json lists the ones it wrote (and
    checked): a file an earlier export left in the same folder is not one of them."""
    from bearcat.bundle import BUNDLE_FILE, read_meta

    folder = Path(folder)
    present = [f for f, name in FILES.items() if (folder / name).exists()]
    exports = read_meta(folder).get("exports") if (folder / BUNDLE_FILE).is_file() else None
    return [f for f in present if f == "keras" or f in exports] if exports else present


def named_runtime(model, runtime: str) -> str:
    """The runtime to use for `model=`: the format of the file it names when it names one
    of a bundle's model files (model.onnx runs in ONNX Runtime whatever `runtime` says),
    else `runtime`."""
    from bearcat.bundle import bundle_member

    named = {name: fmt for fmt, name in FILES.items()}.get(Path(str(model)).name)
    if named is None or not bundle_member(model):
        return runtime
    if runtime not in ("auto", named):
        log.info("model=%s names the bundle's %s model: runtime %s, not %s", model, named, named, runtime)
    return named


def load_runtime(folder, runtime: str = "onnx", threads: int = 0):
    """The bundle's model in `runtime` (keras | onnx | tflite | savedmodel | tflite_int8 |
    auto: the first present of onnx, tflite, savedmodel, keras; never the quantized one)."""
    folder = Path(folder)
    if runtime == "auto":
        present = available_formats(folder)
        runtime = next((f for f in ("onnx", "tflite", "savedmodel", "keras") if f in present), "keras")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime}: choose one of {sorted(RUNTIMES)} or auto")
    path = folder / FILES[runtime]
    held = available_formats(folder)
    if runtime not in held:
        raise FileNotFoundError(
            f"{folder}: the bundle has no {runtime} model ({FILES[runtime]}); it holds "
            f"{held or 'no model'}. Export one with `python -m bearcat.export "
            f"checkpoint={folder} format={runtime}`" + (f", or read it with runtime={held[0]}" if held else ""))
    package, remedy = NEEDS.get(runtime, (None, None))
    if package and importlib.util.find_spec(package) is None:
        raise ModuleNotFoundError(f"runtime={runtime} needs the {package} package, which is not installed: {remedy}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return RUNTIMES[runtime](path, threads)


def load_predictor(folder, runtime: str = "onnx", threads: int = 0, decoding: dict | None = None):
    """A `bearcat.bundle.Predictor` whose model runs in the chosen runtime; for a detection
    bundle a `bearcat.detection.predictor.Detector` (its recogniser in the same runtime).
    `decoding`: `decoder` / `beam_width` to read with instead of the model's own."""
    from bearcat.bundle import Predictor, decoding_override, read_meta

    mode_name = read_meta(folder)["mode"]["name"]
    decoding_override(mode_name, decoding)  # refused before the model loads
    engine = load_runtime(folder, runtime, threads)
    if mode_name == "efficientdet":
        from bearcat.detection.predictor import RECOGNISER_DIR, Detector

        inner = Path(folder) / RECOGNISER_DIR
        # the recogniser in the detector's runtime; an export from before recognisers were
        # exported holds it in Keras format only
        inner_runtime = engine.name if inner.is_dir() and engine.name in available_formats(inner) else "keras"
        recogniser = load_predictor(inner, inner_runtime, threads) if inner.is_dir() else None
        predictor = Detector(folder, model=engine, recogniser=recogniser)
    else:
        predictor = Predictor(folder, model=engine, decoding=decoding)
    predictor.runtime = engine.name
    return predictor
