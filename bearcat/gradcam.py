"""Heat maps of where the model looks: one for the whole reading and one per character read.

A map is a convolutional layer's activations weighted by the gradient of a score of what
the model read. Two weightings (`method`):

- `hirescam` (default; Draelos & Carin, 2020): each activation times its own gradient,
  summed over channels. A character's map then covers only the places its output position
  draws on.
- `gradcam` (Selvaraju et al., 2017): each channel weighted by its gradient averaged over
  the whole map. The same weight applies at every place, so the map shows where the
  weighted channels fire, not which places the answer used: on a 4-character swust model
  its per-character maps came out left to right in 17 of 300 images, `hirescam`'s in 295
  (`scripts/bench_gradcam.py`; README, "Evaluate").

Scores (mode-agnostic): the log probability of the class each output position wrote. By
default that is the top class; given the readings (CTC, `readings`), it is the most
probable alignment of each reading, so a beam search's reading is explained as read, not
the greedy path. A character's score sums the positions that wrote it (CTC: a run of one
class, merged as CTC merges it; other modes: one position); the whole reading's score sums
every character's, or every position when all are blank (reserved id 0). One-label outputs
(num_classes) have the single top class and no per-character maps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from bearcat.gallery import sheet_image
from bearcat.modes.ctc import best_path

EPS = 1e-7
METHODS = ("hirescam", "gradcam")


def conv_layer(model, name: str | None = None):
    """The layer named `name`, else the last layer with a 4-D (B, H, W, C) output."""
    if name:
        try:
            return model.get_layer(name)
        except ValueError:
            names = [layer.name for layer in model.layers if len(getattr(layer, "output").shape) == 4]
            raise ValueError(f"gradcam_layer={name}: no such layer; 4-D layers: {', '.join(names)}") from None
    for layer in reversed(model.layers):
        try:
            if len(layer.output.shape) == 4:
                return layer
        except (AttributeError, ValueError):  # layers without a single symbolic output
            continue
    raise ValueError("the model has no layer with a 4-D (B, H, W, C) output for Grad-CAM")


def character_positions(top, merge_repeats: bool) -> list[list[int]]:
    """The output positions of each character written by the path `top` (T,) of class ids,
    left to right. Id 0 (blank / no character) writes nothing; with `merge_repeats` (CTC)
    a run of one class is one character, as CTC reads it."""
    chars: list[list[int]] = []
    previous = 0
    for t, c in enumerate(int(c) for c in top):
        if c and merge_repeats and c == previous:
            chars[-1].append(t)
        elif c:
            chars.append([t])
        previous = c
    return chars


@dataclass
class Explanation:
    """Heat maps in [0, 1] at the input's size: `maps` (N, H, W) for each whole reading,
    `characters[i]` one (class id, (H, W) map) per character of image i, left to right,
    and `probabilities[i]` each character's probability (the highest over its positions)."""
    layer: str
    method: str
    maps: np.ndarray
    characters: list[list[tuple[int, np.ndarray]]] = field(default_factory=list)
    probabilities: list[list[float]] = field(default_factory=list)


def _resized(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    cam = np.maximum(cam, 0.0)
    cam = cam / cam.max() if cam.max() > 0 else cam
    img = Image.fromarray((cam * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return np.asarray(img, np.float32) / 255.0


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"gradcam_method={method}: choose one of {', '.join(METHODS)}")


def refused_for_boxes(setting: str) -> ValueError:
    """The error of asking heat maps (`setting`) of a detector: predict and serve raise it."""
    return ValueError(f"{setting}: heat maps explain text and class readings, not a click-captcha detector's boxes")


def check_settings(cfg, runtime: str, setting: str, images: str = "images") -> None:
    """The heat-map settings of an evaluate or predict config (`gradcam_method`,
    `gradcam_images`, and the runtime: the maps need the Keras model's gradients), checked
    before any work; `setting` names how the user asked for them, `images` what is explained."""
    from bearcat.checks import is_whole_number

    if runtime != "keras":
        raise ValueError(f"{setting} explains the Keras model (heat maps need the Keras model's gradients): "
                         f"it needs runtime=keras, not runtime={runtime}")
    check_method(str(cfg.gradcam_method))
    if not is_whole_number(cfg.gradcam_images) or int(cfg.gradcam_images) < 1:
        raise ValueError(f"gradcam_images={cfg.gradcam_images}: the number of {images} to explain, at least 1")


def written_paths(probs: np.ndarray, readings: list[list[int]] | None) -> np.ndarray:
    """(N, T) the class each position wrote: the top class, or with `readings` (CTC class
    ids per image) the most probable alignment of each reading (the top class where a
    reading cannot be aligned)."""
    paths = probs.argmax(axis=-1)
    for i, ids in enumerate(readings or []):
        aligned = best_path(probs[i], ids)
        if aligned is not None:
            paths[i] = aligned
    return paths


def explain(model, images: np.ndarray, layer_name: str | None = None, method: str = "hirescam",
            merge_repeats: bool = False, readings: list[list[int]] | None = None, probs=None) -> Explanation:
    """Heat maps of `images` (N, H, W, C) for the whole reading and for each character.
    `readings` (CTC): the class ids each image was read as, when not the greedy reading.
    `probs`: the model's outputs for `images`, when the caller has them (saves a forward pass)."""
    import keras
    import tensorflow as tf

    check_method(method)
    layer = conv_layer(model, layer_name)
    probe = keras.Model(model.inputs, [layer.output, model.output])
    x = tf.constant(images, tf.float32)
    if probs is None:  # what each position wrote, to choose the scores
        probs = probe(x, training=False)[1]
    probs = np.asarray(probs)
    if probs.ndim == 2:  # one label per image: one score, its top class
        chars, ids, chances = ([[] for _ in images] for _ in range(3))
        top, masks = probs.argmax(axis=-1)[:, None], np.ones((1, len(images), 1), np.float32)
    else:
        top = written_paths(probs, readings)
        top_p = np.take_along_axis(probs, top[..., None], axis=-1)[..., 0]
        chars = [character_positions(row, merge_repeats) for row in top]
        ids = [[int(top[i, p[0]]) for p in positions] for i, positions in enumerate(chars)]
        chances = [[float(top_p[i, p].max()) for p in positions] for i, positions in enumerate(chars)]
        # score 0: the whole reading (all blank: every position); score k: the k-th character
        masks = np.zeros((1 + max(map(len, chars), default=0), *top.shape), np.float32)
        for i, positions in enumerate(chars):
            masks[0, i, [t for p in positions for t in p] or slice(None)] = 1.0
            for k, p in enumerate(positions):
                masks[1 + k, i, p] = 1.0
    # Every score's gradient in one backward pass: the batch repeated once per score, each
    # copy scored by its own mask: 0.50-0.70x the time of a backward pass per score, the same
    # maps (scripts/bench_explain.py; README "Evaluate").
    scores = len(masks)
    with tf.GradientTape() as tape:
        features, out = probe(tf.tile(x, [scores, 1, 1, 1]), training=False)
        out = out if len(out.shape) == 3 else out[:, None, :]
        written = tf.reduce_sum(out * tf.one_hot(np.tile(top, (scores, 1)), out.shape[-1]), axis=-1)
        total = tf.reduce_sum(tf.math.log(written + EPS) * masks.reshape(scores * len(images), -1))
    grads = tape.gradient(total, features)
    if method == "gradcam":
        grads = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cams = tf.reduce_sum(grads * features, axis=-1).numpy().reshape(scores, len(images), *features.shape[1:3])

    height, width = images.shape[1:3]
    maps = np.stack([_resized(c, height, width) for c in cams[0]])
    characters = [[(ids[i][k], _resized(cams[1 + k][i], height, width)) for k in range(len(chars[i]))]
                  for i in range(len(images))]
    return Explanation(layer.name, method, maps, characters, chances)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image (H, W, 1|3) uint8 with the heat map blended on top (blue = cold, red = hot)."""
    base = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    colour = np.stack([np.clip(2 * heat, 0, 1), np.clip(2 - 2 * np.abs(2 * heat - 1) - 1, 0, 1),
                       np.clip(1 - 2 * heat, 0, 1)], axis=-1) * 255.0
    return (base * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)


def centre_x(heat: np.ndarray) -> float | None:
    """The horizontal centre of a heat map's mass, in input pixels (None when all cold)."""
    columns = heat.sum(axis=0)
    if columns.sum() <= 0:
        return None
    return float((columns * (np.arange(len(columns)) + 0.5)).sum() / columns.sum())


def gradcam_sheet(images: np.ndarray, found: Explanation, captions: list[str], char_name=str) -> Image.Image:
    """A contact sheet of `found`, one row per image: the whole reading's map (captioned),
    then one map per character read, captioned with `char_name(class id)` and its probability."""
    columns = 1 + max(map(len, found.characters), default=0)
    blank = np.full((*images.shape[1:3], 3), 255, np.uint8)
    tiles, texts = [], []
    for image, heat, chars, chances, caption in zip(images, found.maps, found.characters, found.probabilities,
                                                    captions):
        tiles.append(overlay(image, heat))
        texts.append(caption)
        for k, ((cid, char_heat), p) in enumerate(zip(chars, chances)):
            tiles.append(overlay(image, char_heat))
            texts.append(f"{k + 1}: {char_name(cid)} ({p:.2f})")
        tiles += [blank] * (columns - 1 - len(chars))
        texts += [""] * (columns - 1 - len(chars))
    return sheet_image(np.stack(tiles), texts, columns=columns, scale=2)
