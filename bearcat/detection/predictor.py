"""Detection bundles in use: image -> boxes in the image's own pixels, each named by the
recogniser (class_mode single) or by the detector (per_char).

The image goes through the shared `preprocess` (letterbox onto the model canvas); boxes
come back through the inverse of the same letterbox (`canvas_geometry`).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
from PIL import ImageOps

from bearcat.data.preprocess import PreprocessConfig, letterbox, load_image, preprocess

RECOGNISER_DIR = "recogniser"  # a num_classes bundle inside a detection bundle
CROP_MARGIN = 0.15             # the generator's crop margin (bearcat.data.click.crop_box)
MIN_BOX = 2.0                  # boxes narrower or lower than this many pixels are dropped


def canvas_geometry(width: int, height: int, pre: PreprocessConfig) -> tuple[float, float, float, float]:
    """(x scale, y scale, x offset, y offset) of an image on the model canvas."""
    size, (ox, oy), _ = letterbox(width, height, pre)
    return size[0] / width, size[1] / height, float(ox), float(oy)


def to_canvas(box, geometry) -> list[float]:
    sx, sy, ox, oy = geometry
    return [box[0] * sx + ox, box[1] * sy + oy, box[2] * sx + ox, box[3] * sy + oy]


def from_canvas(box, geometry, width: int, height: int) -> list[float]:
    sx, sy, ox, oy = geometry
    x1, y1, x2, y2 = (box[0] - ox) / sx, (box[1] - oy) / sy, (box[2] - ox) / sx, (box[3] - oy) / sy
    return [float(np.clip(x1, 0, width)), float(np.clip(y1, 0, height)),
            float(np.clip(x2, 0, width)), float(np.clip(y2, 0, height))]


def character_crop(image, box):
    """The square around a detected box that the recogniser was trained on (the
    generator's crop without its random jitter)."""
    from bearcat.data.click import crop_box

    return image.crop(crop_box(random.Random(0), box, image.width, image.height, CROP_MARGIN, jitter=0.0))


class Detector:
    """A detection bundle (+ its recogniser, when it has one) as one predictor."""

    detects = True  # the server answers /v1/click with it

    def __init__(self, folder=None, model=None, mode=None, pre: PreprocessConfig | None = None,
                 recogniser=None, meta: dict | None = None):
        from bearcat.bundle import MODEL_FILE, Predictor, load_keras, read_meta

        if folder is not None:
            meta = read_meta(folder)
            if model is None:
                model = load_keras(Path(folder) / MODEL_FILE)
            if recogniser is None and (Path(folder) / RECOGNISER_DIR).is_dir():
                recogniser = Predictor(Path(folder) / RECOGNISER_DIR)
        if mode is None:
            from bearcat.data.labels import Vocabulary
            from bearcat.modes import build_mode

            mode_cfg = dict(meta["mode"])
            mode = build_mode(mode_cfg.pop("name"), Vocabulary(meta["vocabulary"]), **mode_cfg)
        self.meta = meta or {}
        self.model, self.mode, self.recogniser = model, mode, recogniser
        self.pre = pre or PreprocessConfig.from_dict(self.meta["preprocess"])

    @property
    def names(self) -> list[str]:
        """What this bundle can call a box: its recogniser's classes, else its detector's
        (none for one class without a recogniser)."""
        if self.recogniser is not None:
            return list(self.recogniser.mode.vocab.chars)
        return [] if self.mode.class_mode == "single" else list(self.mode.vocab.chars)

    def detect(self, images: list, score_threshold: float | None = None, batch_size: int = 16) -> list[dict]:
        """PIL images -> results with boxes in each image's pixels."""
        out = []
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size]
            arrays = np.stack([preprocess(img, self.pre) for img in batch]).astype(np.float32)
            raw = np.asarray(self.model.predict_on_batch(arrays))
            for img, result in zip(batch, self.mode.decode(raw, score_threshold)):
                geometry = canvas_geometry(img.width, img.height, self.pre)
                for b in result["boxes"]:
                    b.update(zip(("x1", "y1", "x2", "y2"),
                                 from_canvas([b["x1"], b["y1"], b["x2"], b["y2"]], geometry, img.width, img.height)))
                # a box squeezed to nothing by the image edge (or the padding) names nothing
                result["boxes"] = [b for b in result["boxes"]
                                   if b["x2"] - b["x1"] >= MIN_BOX and b["y2"] - b["y1"] >= MIN_BOX]
                result["confidence"] = min((b["score"] for b in result["boxes"]), default=0.0)
                out.append(result)
        if self.recogniser is not None:
            self.recognise(images, out)
        return out

    def recognise(self, images: list, results: list[dict]) -> None:
        """Name every box with the recogniser; its score becomes detector x recogniser.
        The recogniser's five best names and their probabilities go into `candidates`, and
        the detector's own score into `detector_score`: the click solver weighs them."""
        crops = [(r, b, character_crop(img, (b["x1"], b["y1"], b["x2"], b["y2"])))
                 for img, r in zip(images, results) for b in r["boxes"]]
        if not crops:
            return
        named = self.recogniser.predict([c for _, _, c in crops])
        for (_, box, _), answer in zip(crops, named):
            box["label"] = answer["result"]
            box["candidates"] = dict(zip(answer["top5"], answer["top5_probs"]))
            box["detector_score"] = box["score"]
            box["score"] = box["score"] * float(answer["confidence"])
        for r in results:
            r["result"] = "".join(b["label"] for b in r["boxes"])
            r["confidence"] = min((b["score"] for b in r["boxes"]), default=0.0)

    def predict(self, images, score_threshold: float | None = None) -> list[dict]:
        """images: paths, bytes or PIL images -> {"result", "confidence", "boxes", "time_ms"}."""
        start = time.perf_counter()
        # upright first: preprocess turns a photo by its EXIF orientation, so the boxes must be
        # mapped back with the turned image's width and height
        pictures = [ImageOps.exif_transpose(load_image(img, self.pre.max_pixels)) for img in images]
        results = self.detect(pictures, score_threshold)
        ms = (time.perf_counter() - start) * 1000.0 / max(1, len(results))
        return [{**r, "time_ms": ms} for r in results]
