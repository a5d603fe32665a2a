"""A model bundle: the Keras model plus everything needed to use it the way it was
trained (vocabulary, preprocessing settings, mode and decoding settings).

Training logs a bundle as the run's `model/` artifact; evaluate, export and serve load it,
so preprocessing at serving time cannot drift from training.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from bearcat.atomic import replacing, write_json
from bearcat.checks import not_found
from bearcat.data.labels import Vocabulary
from bearcat.data.preprocess import PreprocessConfig, preprocess
from bearcat.modes import build_mode

BUNDLE_FILE = "bundle.json"
MODEL_FILE = "model.keras"
FORMAT = "bearcat-bundle/1"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # an MLflow run id


def is_run_id(source) -> bool:
    """`source` names an MLflow run: it looks like a run id and is no path here (a folder or
    file of that name wins)."""
    return RUN_ID.match(str(source)) is not None and not Path(str(source)).exists()


def write_bundle(folder, model, mode, pre: PreprocessConfig, extra: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with replacing(folder / MODEL_FILE, keep_suffix=True) as tmp:
        model.save(tmp)
    meta = {"format": FORMAT, "mode": mode.config(), "vocabulary": mode.vocab.chars,
            "preprocess": pre.to_dict(), **(extra or {})}
    write_json(folder / BUNDLE_FILE, meta, indent=1)  # a server may be reading the bundle
    return folder


def load_keras(path):
    """A saved Keras model (inference only). Bearcat's own layers (EfficientDet's BiFPN
    fusion, cnn_small's SpaceToDepth) register on import: import them first, or a fresh
    process cannot load them."""
    import keras

    import bearcat.detection.model  # noqa: F401  (registers the custom layers)
    import bearcat.models.backbones  # noqa: F401

    return keras.models.load_model(path, compile=False)


def read_meta(folder) -> dict:
    path = Path(folder) / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a Bearcat model bundle (no {BUNDLE_FILE})")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported bundle format {meta.get('format')!r}")
    return meta


def decoding_override(mode_name: str, decoding: dict | None) -> dict:
    """The reading-time `decoder` / `beam_width` / `answer` settings that are set (None = the
    model's own, from training), checked: only CTC models choose how they decode, only text
    models work out answers."""
    chosen = {k: v for k, v in (decoding or {}).items() if v is not None}
    if "answer" in chosen:
        from bearcat.modes.base import mode_class

        if not mode_class(mode_name).text:  # answers are worked out of text readings
            raise ValueError(f"answer={chosen['answer']}: answers are worked out from text readings (ctc, "
                             f"ctc_tiny and ordinary models); this model's mode is {mode_name} (leave it null)")
        from bearcat.answers import answer_function

        answer_function(chosen["answer"], "answer")
    search = {k: v for k, v in chosen.items() if k != "answer"}
    if search:
        if mode_name not in ("ctc", "ctc_tiny"):
            key, value = next(iter(search.items()))
            raise ValueError(f"{key}={value}: decoder and beam_width are for ctc and ctc_tiny models; "
                             f"this model's mode is {mode_name} (leave them null)")
        from bearcat.modes.ctc import check_decoder

        check_decoder(search.get("decoder", "greedy"), search.get("beam_width", 1), prefix="")
    return chosen


def decoding_settings(cfg) -> dict:
    """`decoder`, `beam_width` and `answer` of an evaluate, predict, serve or label config."""
    return {"decoder": cfg.get("decoder"), "beam_width": cfg.get("beam_width"), "answer": cfg.get("answer")}


class Predictor:
    """Images in, {"result", "confidence", "time_ms"} out, through the shared preprocess."""

    def __init__(self, folder, model=None, decoding: dict | None = None):
        meta = read_meta(folder)
        self.folder = Path(folder)
        self.meta = meta
        self.pre = PreprocessConfig.from_dict(meta["preprocess"])
        mode_cfg = dict(meta["mode"])
        name = mode_cfg.pop("name")
        self.mode = build_mode(name, Vocabulary(meta["vocabulary"]), **mode_cfg | decoding_override(name, decoding))
        if model is None:  # Keras only when no other runtime is given (bearcat.runtime)
            model = load_keras(self.folder / MODEL_FILE)
        self.model = model

    def predict_arrays(self, arrays: np.ndarray, batch_size: int = 64) -> list[dict]:
        out = []
        for i in range(0, len(arrays), batch_size):
            batch = arrays[i:i + batch_size].astype(np.float32)
            n = len(batch)
            if i and n < batch_size:
                # the last of several batches, padded to the others' size: Keras then runs the
                # one graph it traced for them instead of tracing another (TensorFlow warns
                # of the retracing when several models read in turn, as bearcat.soup's check does)
                batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), np.float32)])
            probs = self.model.predict_on_batch(batch)
            out += self.mode.decode(np.asarray(probs)[:n])
        return out

    def predict(self, images, batch_size: int = 64) -> list[dict]:
        """images: paths, bytes or PIL images."""
        start = time.perf_counter()
        arrays = np.stack([preprocess(img, self.pre) for img in images])
        results = self.predict_arrays(arrays, batch_size)
        ms = (time.perf_counter() - start) * 1000.0 / max(1, len(results))
        return [{**r, "time_ms": ms} for r in results]


def resolve_model(model, workdir: str, mlflow_cfg=None, key: str = "model") -> Path:
    """The bundle folder a `model=` setting names: a bundle folder, a training run's output
    folder, an MLflow run id, or a registered model (models:/NAME/VERSION), the last two
    fetched into `workdir` from the tracking server `mlflow_cfg` points to. A file of a
    bundle (model.onnx, bundle.json...) names its folder; `runtime.named_runtime` then
    runs that format."""
    if model in (None, "", "???"):
        raise ValueError(f"{key} is not set: pass {key}=<bundle or run folder>, an MLflow run id "
                         "or models:/NAME/VERSION")
    model = str(model)
    if bundle_member(model):
        return Path(model).parent
    # MLflow only for the registry or a run id: a local bundle starts without importing it,
    # and a mistyped path fails on its name without opening (or creating) a tracking store.
    if model.startswith("models:/") or is_run_id(model):
        require_mlflow(key, model)
        from bearcat import tracking

        if mlflow_cfg is not None:
            tracking.setup(mlflow_cfg)
        if model.startswith("models:/"):
            return tracking.download_model(model, workdir)
    return locate_init_bundle(model, workdir, key=key)[0]


def locate_init_bundle(init_from: str, workdir: str, key: str = "init_from") -> tuple[Path, str | None]:
    """init_from (a bundle folder, a run output folder or an MLflow run id) -> (bundle
    folder, source run id if known). `key` names the setting in error messages."""
    path = Path(str(init_from))
    if path.exists():
        for folder in (path, path / "model"):
            if (folder / BUNDLE_FILE).is_file():
                return folder, read_meta(folder).get("mlflow_run_id")
        raise FileNotFoundError(f"{key}={init_from}: holds no model bundle ({BUNDLE_FILE} or model/{BUNDLE_FILE})")
    if not RUN_ID.match(str(init_from)):
        raise FileNotFoundError(not_found(key, init_from, also=", and not an MLflow run id"))
    require_mlflow(key, init_from)
    from bearcat import tracking

    fetched = Path(workdir) / str(init_from)
    if (fetched / "model" / BUNDLE_FILE).is_file():  # fetched into this workdir before (a run reads it twice)
        return fetched / "model", str(init_from)
    try:
        return tracking.download_artifacts(str(init_from), "model", str(fetched)), str(init_from)
    except Exception as err:  # MLflow raises several types for an unknown run or artifact
        raise ValueError(f"{key}={init_from}: cannot fetch the run's model bundle from MLflow ({err})") from None


def require_mlflow(key: str, value) -> None:
    """A run id or registered model is fetched with MLflow, which a light install lacks."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ModuleNotFoundError(f"{key}={value}: fetching a model from MLflow needs the mlflow package, which "
                                  "is not installed; pass the bundle's folder instead")


def bundle_member(model) -> bool:
    """True when `model` is a file (or the savedmodel/ folder) inside a bundle folder."""
    from bearcat.runtime import FILES

    path = Path(str(model))
    return path.name in (*FILES.values(), BUNDLE_FILE) and (path.parent / BUNDLE_FILE).is_file() and path.exists()


def predict_files(predictor, paths: list, batch_size: int = 64) -> tuple[list, list[tuple[Path, str]]]:
    """Every file's reading, in order (None for a file that does not decode), and the files
    that did not, with why. A batch with a bad file is re-read file by file, so one bad
    image costs only itself."""
    from bearcat.data.preprocess import ImageError

    results, failed = [], []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        try:
            results += predictor.predict(chunk)
            continue
        except ImageError:
            pass
        for path in chunk:
            try:
                results += predictor.predict([path])
            except ImageError as err:
                failed.append((Path(path), str(err)))
                results.append(None)
    return results, failed
