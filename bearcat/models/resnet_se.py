"""`resnet_se`: a small residual network with squeeze-and-excitation, sized for captchas.

Each stage starts with a strided residual block (projection shortcut) followed by plain
residual blocks; every block ends with an SE gate that re-weights channels from the
block's global average. The default strides ((2,2), (2,2), (2,1), (2,1)) match
`cnn_small`: the default 32 x 96 input becomes a 2 x 24 feature map (height / 16, width / 4),
one time step per 4 input columns for the sequence modes.
"""
from __future__ import annotations

from keras import layers

from bearcat.models.batchnorm import batch_norm


def squeeze_excite(x, ratio: float, name: str):
    """Channel gate: global average -> bottleneck -> sigmoid weights -> x * weights."""
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = layers.Conv2D(max(4, int(channels * ratio)), 1, activation="relu", name=f"{name}_reduce")(s)
    s = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_expand")(s)
    return layers.Multiply(name=f"{name}_scale")([x, s])


def residual_block(x, filters: int, strides, se_ratio: float, name: str):
    """conv3x3(strides)-BN-ReLU-conv3x3-BN-SE, plus the shortcut, then ReLU."""
    strides = tuple(strides)
    shortcut = x
    if strides != (1, 1) or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_proj")(x)
        shortcut = batch_norm(name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = batch_norm(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = batch_norm(name=f"{name}_bn2")(y)
    if se_ratio:
        y = squeeze_excite(y, se_ratio, f"{name}_se")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet_se(inputs, stem_filters: int = 32, filters=(32, 64, 96, 128), blocks=(1, 1, 1, 1),
              strides=((2, 2), (2, 2), (2, 1), (2, 1)), se_ratio: float = 0.25,
              scale: float = 1 / 255.0, offset: float = 0.0):
    """Image (B, H, W, C) in 0..255 -> feature map (B, H/16, W/4, filters[-1]) by default."""
    if not len(filters) == len(blocks) == len(strides):
        raise ValueError("backbone.filters, backbone.blocks and backbone.strides must have the same length")
    x = layers.Rescaling(scale, offset, name="rescale")(inputs)
    x = layers.Conv2D(stem_filters, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = batch_norm(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for s, (f, n, stride) in enumerate(zip(filters, blocks, strides)):
        for b in range(int(n)):
            x = residual_block(x, int(f), stride if b == 0 else (1, 1), se_ratio, f"stage{s}_block{b}")
    return x
