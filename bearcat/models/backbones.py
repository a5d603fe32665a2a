"""Backbones: image (B, H, W, C) in 0..255 -> feature map (B, H', W', C').

Each conf/backbone/*.yaml names a builder here with `_target_` (built with
`_partial_: true`) and its settings; the builder is then called with the input tensor.
Input scaling happens inside the backbone, because some Keras applications rescale
internally and others expect it done for them.
"""
from __future__ import annotations

import keras
from keras import layers


def _conv_bn(x, filters: int, kernel, strides=1, name: str = ""):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def cnn_small(inputs, filters=(32, 64, 96, 128), pools=((2, 2), (2, 2), (2, 1), (2, 1)),
              convs_per_block: int = 1, scale: float = 1 / 255.0, offset: float = 0.0):
    """Plain conv-BN-ReLU blocks with max pooling: the fast CPU default.

    Pools of (2, 1) late in the stack halve the height but keep the width, so the
    sequence modes get one time step per 4 input columns.
    """
    if len(filters) != len(pools):
        raise ValueError("backbone.filters and backbone.pools must have the same length")
    x = layers.Rescaling(scale, offset, name="rescale")(inputs)
    for b, (f, pool) in enumerate(zip(filters, pools)):
        for c in range(convs_per_block):
            x = _conv_bn(x, int(f), 3, name=f"block{b}_{c}")
        if tuple(pool) != (1, 1):
            x = layers.MaxPooling2D(tuple(pool), name=f"block{b}_pool")(x)
    return x


def keras_application(inputs, application: str, feature_layer: str | None = None, weights: str | None = None,
                      scale: float = 1 / 255.0, offset: float = 0.0, **kwargs):
    """A `keras.applications` network, randomly initialised unless `weights` is a local
    file; features come from `feature_layer` (a layer name) or the last layer."""
    try:
        ctor = getattr(keras.applications, application)
    except AttributeError:
        raise ValueError(f"backbone.application={application}: not in keras.applications") from None
    x = inputs
    if scale != 1.0 or offset != 0.0:
        x = layers.Rescaling(scale, offset, name="rescale")(x)
    model = ctor(include_top=False, weights=None, input_tensor=x, **kwargs)
    if weights:
        model.load_weights(weights, skip_mismatch=True)
    if not feature_layer:
        return model.output
    try:
        return model.get_layer(feature_layer).output
    except ValueError:
        raise ValueError(f"backbone.feature_layer={feature_layer}: no such layer in {application}") from None
