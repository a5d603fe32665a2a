"""Grad-CAM: where the model looks. Heat maps of a convolutional layer's activations,
weighted by how much each channel moves the score of what the model read.

Mode-agnostic score: the log probability of the top class, summed over the output
positions whose top class is not the reserved id 0 (the CTC blank / no character); all
positions when every one is blank; the single top class for one-label outputs.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from bearcat.gallery import contact_sheet

EPS = 1e-7


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


def read_score(probs):
    """Per-image score of what the model read (see the module doc)."""
    import tensorflow as tf

    logp = tf.math.log(tf.reduce_max(probs, axis=-1) + EPS)
    if len(probs.shape) == 2:
        return logp
    top = tf.argmax(probs, axis=-1)
    mask = tf.cast(top != 0, logp.dtype)
    none = tf.cast(tf.reduce_sum(mask, axis=-1, keepdims=True) == 0, logp.dtype)
    mask = mask + none  # all-blank rows: use every position
    return tf.reduce_sum(logp * mask, axis=-1)


def heatmaps(model, images: np.ndarray, layer_name: str | None = None) -> tuple[np.ndarray, str]:
    """(N, H, W) maps in [0, 1] at the input's size, and the layer used."""
    import keras
    import tensorflow as tf

    layer = conv_layer(model, layer_name)
    probe = keras.Model(model.inputs, [layer.output, model.output])
    x = tf.constant(images, tf.float32)
    with tf.GradientTape() as tape:
        features, probs = probe(x, training=False)
        score = read_score(probs)
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
    out = []
    for m in cam:
        m = m / m.max() if m.max() > 0 else m
        img = Image.fromarray((m * 255).astype(np.uint8)).resize((images.shape[2], images.shape[1]), Image.BILINEAR)
        out.append(np.asarray(img, np.float32) / 255.0)
    return np.stack(out), layer.name


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image (H, W, 1|3) uint8 with the heat map blended on top (blue = cold, red = hot)."""
    base = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    colour = np.stack([np.clip(2 * heat, 0, 1), np.clip(2 - 2 * np.abs(2 * heat - 1) - 1, 0, 1),
                       np.clip(1 - 2 * heat, 0, 1)], axis=-1) * 255.0
    return (base * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)


def gradcam_sheet(model, images: np.ndarray, captions: list[str], path, layer_name: str | None = None):
    """A contact sheet of Grad-CAM overlays; returns (path, layer name)."""
    maps, layer = heatmaps(model, images, layer_name)
    tiles = np.stack([overlay(img, m) for img, m in zip(images, maps)])
    return contact_sheet(tiles, captions, path, columns=4, scale=2), layer
