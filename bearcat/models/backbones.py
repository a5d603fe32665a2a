"""Backbones: image (B, H, W, C) in 0..255 -> feature map (B, H', W', C').

Each conf/backbone/*.yaml names a builder here with `_target_` (built with
`_partial_: true`) and its settings; the builder is then called with the input tensor.
Input scaling happens inside the backbone, because some Keras applications rescale
internally and others expect it done for them.
"""
from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from bearcat.models.batchnorm import batch_norm


def _conv_bn(x, filters: int, kernel, strides=1, name: str = ""):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = batch_norm(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@keras.saving.register_keras_serializable(package="bearcat")
class SpaceToDepth(layers.Layer):
    """Fold each k x k block of pixels into k*k channels: a lossless k-fold downscale, so
    the first convolution sees every input pixel at the cost of a k-times smaller map."""

    def __init__(self, block: int, **kwargs):
        super().__init__(**kwargs)
        self.block = int(block)

    def call(self, x):
        k = self.block
        _, h, w, c = x.shape
        x = keras.ops.reshape(x, (-1, h // k, k, w // k, k, c))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (-1, h // k, w // k, k * k * c))

    def compute_output_shape(self, shape):
        k = self.block
        return (shape[0], shape[1] // k, shape[2] // k, shape[3] * k * k)

    def get_config(self):
        return {**super().get_config(), "block": self.block}


def cnn_small(inputs, filters=(32, 64, 96, 128), pools=((2, 2), (2, 2), (2, 1), (2, 1)),
              convs_per_block: int = 1, scale: float = 1 / 255.0, offset: float = 0.0, stem_stride: int = 1,
              space_to_depth: int = 1):
    """Plain conv-BN-ReLU blocks with max pooling: the fast CPU default.

    Pools of (2, 1) late in the stack halve the height but keep the width, so the
    sequence modes get one time step per 4 input columns. `stem_stride` 2 makes the very
    first convolution strided: a larger input for little more compute. `space_to_depth` k
    folds k x k pixel blocks into channels first: a k-times larger input (full-size images)
    for about the same compute, one time step per 4k input columns.
    """
    if len(filters) != len(pools):
        raise ValueError("backbone.filters and backbone.pools must have the same length")
    x = layers.Rescaling(scale, offset, name="rescale")(inputs)
    if space_to_depth > 1:
        if x.shape[1] % space_to_depth or x.shape[2] % space_to_depth:
            raise ValueError(f"backbone.space_to_depth={space_to_depth} needs preprocess.height and preprocess.width "
                             f"divisible by it, got {x.shape[1]}x{x.shape[2]}")
        x = SpaceToDepth(space_to_depth, name="space_to_depth")(x)
    for b, (f, pool) in enumerate(zip(filters, pools)):
        for c in range(convs_per_block):
            stride = stem_stride if b == 0 and c == 0 else 1
            x = _conv_bn(x, int(f), 3, strides=stride, name=f"block{b}_{c}")
        if tuple(pool) != (1, 1):
            x = layers.MaxPooling2D(tuple(pool), name=f"block{b}_pool")(x)
    return x


def _gray_to_rgb(x):
    """Tile a 1-channel image to 3 channels inside the model (ImageNet-shaped stems)."""
    return layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])


def keras_application(inputs, application: str, feature_layer: str | None = None, weights: str | None = None,
                      scale: float = 1 / 255.0, offset: float = 0.0, rgb: bool = True,
                      input_size=None, min_size: int = 32, **kwargs):
    """A `keras.applications` network, randomly initialised unless `weights` is a local
    weights file; features come from `feature_layer` (a layer name) or the last layer.

    Inside the model, in order: gray is tiled to 3 channels (`rgb`), the image is resized
    to `input_size` (height, width) when given (so the chosen stride-16 layer keeps the
    same number of columns whatever the preprocessing size), and pixels are mapped by
    `scale` / `offset` (1 / 0 for networks that rescale inside, e.g. EfficientNet,
    MobileNetV3, ConvNeXt).
    """
    try:
        ctor = getattr(keras.applications, application)
    except AttributeError:
        raise ValueError(f"backbone.application={application}: not in keras.applications") from None
    x = inputs
    if rgb and x.shape[-1] == 1:
        x = _gray_to_rgb(x)
    if input_size:
        # training=False said, not left to Resizing's default (True), which a call of the model
        # that does not say (model(x), an exporter's trace) passes on to the layers after it:
        # BatchNormalization would then normalise by the batch. fit says training=True itself.
        x = layers.Resizing(int(input_size[0]), int(input_size[1]), interpolation="bilinear", name="resize")(
            x, training=False)
    height, width = x.shape[1], x.shape[2]
    if min(height, width) < min_size:
        raise ValueError(f"backbone={application} needs at least {min_size}x{min_size} pixels but gets "
                         f"{height}x{width}: raise backbone.input_size (or preprocess.height / preprocess.width)")
    if scale != 1.0 or offset != 0.0:
        x = layers.Rescaling(scale, offset, name="rescale")(x)
    try:
        model = ctor(include_top=False, weights=None, input_tensor=x, **kwargs)
    except ValueError as err:
        raise ValueError(f"backbone={application} cannot be built on a {height}x{width}x{x.shape[-1]} input: "
                         f"{err}") from None
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"backbone.weights={weights}: file not found (no download: give a local file)")
        model.load_weights(weights, skip_mismatch=True)
    if not feature_layer:
        return model.output
    try:
        return model.get_layer(feature_layer).output
    except ValueError:
        raise ValueError(f"backbone.feature_layer={feature_layer}: no such layer in {application}") from None
