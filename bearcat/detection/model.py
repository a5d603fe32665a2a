"""EfficientDet in Keras 3: an EfficientNet from keras.applications, a BiFPN, and class and
box nets shared across levels. Output: one tensor (B, anchors, 4 + classes) holding box
deltas then class logits, in the anchor order of `anchors.anchor_boxes`.

Width and depth follow the EfficientDet compound scaling from `phi` (BiFPN width
64 * 1.35**phi, 3 + phi BiFPN repeats, 3 + phi // 3 head layers) unless set explicitly.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import keras
from keras import layers, ops

from bearcat.detection.anchors import AnchorConfig
from bearcat.models.batchnorm import batch_norm

PRIOR = 0.01  # initial foreground probability of the class net (stable focal-loss start)


def scaled_sizes(phi: int, fpn_channels: int | None = None, fpn_repeats: int | None = None,
                 head_repeats: int | None = None) -> tuple[int, int, int]:
    channels = fpn_channels or int(8 * round(64 * 1.35 ** phi / 8))  # multiple of 8
    return channels, fpn_repeats or 3 + phi, head_repeats or 3 + phi // 3


@keras.saving.register_keras_serializable(package="bearcat")
class FastFusion(layers.Layer):
    """BiFPN fast normalised fusion: sum_i relu(w_i) x_i / (sum_i relu(w_i) + eps)."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(len(input_shape),), initializer="ones", name="w")

    def call(self, inputs):
        w = ops.relu(self.w)
        w = w / (ops.sum(w) + 1e-4)
        return sum(w[i] * x for i, x in enumerate(inputs))


def _sep_conv_bn(x, channels: int, name: str, activate: bool = True):
    x = layers.SeparableConv2D(channels, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = batch_norm(name=f"{name}_bn")(x)
    return layers.Activation("swish", name=f"{name}_act")(x) if activate else x


def _resample(x, channels: int, name: str):
    """1x1 projection to the BiFPN width when a level comes in with another width."""
    if x.shape[-1] == channels:
        return x
    x = layers.Conv2D(channels, 1, padding="same", use_bias=False, name=f"{name}_proj")(x)
    return batch_norm(name=f"{name}_proj_bn")(x)


def bifpn(features: list, channels: int, repeats: int) -> list:
    """features: P_min..P_max, finest first. Each repeat: a top-down then a bottom-up path
    with fast fusion; inner levels also take their own input (the BiFPN skip)."""
    feats = [_resample(f, channels, f"fpn_in{i}") for i, f in enumerate(features)]
    n = len(feats)
    for r in range(repeats):
        top_down = [None] * n
        top_down[-1] = feats[-1]
        for i in range(n - 2, -1, -1):
            up = layers.UpSampling2D(2, interpolation="nearest", name=f"fpn{r}_up{i}")(top_down[i + 1])
            fused = FastFusion(name=f"fpn{r}_td{i}_fuse")([feats[i], up])
            top_down[i] = _sep_conv_bn(layers.Activation("swish")(fused), channels, f"fpn{r}_td{i}", activate=False)
        out = [top_down[0]]
        for i in range(1, n):
            down = layers.MaxPooling2D(3, strides=2, padding="same", name=f"fpn{r}_down{i}")(out[-1])
            inputs = [feats[i], top_down[i], down] if i < n - 1 else [feats[i], down]
            fused = FastFusion(name=f"fpn{r}_bu{i}_fuse")(inputs)
            out.append(_sep_conv_bn(layers.Activation("swish")(fused), channels, f"fpn{r}_bu{i}", activate=False))
        feats = out
    return feats


def _head(feats: list, channels: int, repeats: int, outputs_per_anchor: int, anchors_per_cell: int,
          name: str, bias_init: float = 0.0):
    """Convolutions shared across levels (batch norm per level, as in EfficientDet)."""
    convs = [layers.SeparableConv2D(channels, 3, padding="same", name=f"{name}_conv{k}") for k in range(repeats)]
    final = layers.SeparableConv2D(anchors_per_cell * outputs_per_anchor, 3, padding="same", name=f"{name}_out",
                                   bias_initializer=keras.initializers.Constant(bias_init))
    flat = []
    for level, x in enumerate(feats):
        for k, conv in enumerate(convs):
            x = batch_norm(name=f"{name}_bn{k}_l{level}")(conv(x))
            x = layers.Activation("swish")(x)
        x = final(x)
        flat.append(layers.Reshape((-1, outputs_per_anchor), name=f"{name}_flat_l{level}")(x))
    return layers.Concatenate(axis=1, name=f"{name}_all")(flat) if len(flat) > 1 else flat[0]


def build_efficientdet(height: int, width: int, channels: int, num_classes: int, anchors: AnchorConfig,
                       phi: int = 0, application: str = "EfficientNetB0",
                       feature_layers=("block3b_add", "block5c_add", "block7a_project_bn"),
                       fpn_channels: int | None = None, fpn_repeats: int | None = None,
                       head_repeats: int | None = None, weights: str | None = None) -> keras.Model:
    anchors.check(height, width)
    inputs = keras.Input((height, width, channels), name="image")
    x = layers.Concatenate(name="gray_to_rgb")([inputs] * 3) if channels == 1 else inputs
    try:
        ctor = getattr(keras.applications, application)
    except AttributeError:
        raise ValueError(f"mode.application={application}: not in keras.applications") from None
    options = {}
    if "include_preprocessing" in inspect.signature(ctor).parameters:
        # Our own scaling to [-1, 1]: the application's Normalization layer exports to ONNX
        # with its constants as missing inputs.
        x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(x)
        options["include_preprocessing"] = False
    backbone = ctor(include_top=False, weights=None, input_tensor=x, **options)
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"mode.weights={weights}: file not found (no download: give a local file)")
        backbone.load_weights(weights, skip_mismatch=True)
    try:
        feats = [backbone.get_layer(name).output for name in feature_layers]
    except ValueError as err:
        raise ValueError(f"mode.feature_layers: {err}") from None
    levels = list(range(anchors.min_level, anchors.max_level + 1))
    for level, f in zip(levels, feats):
        if f.shape[1] != height // 2 ** level:
            raise ValueError(f"mode.feature_layers: {f.name if hasattr(f, 'name') else f} has stride "
                             f"{height // f.shape[1]}, expected {2 ** level} for level {level}")
    c, repeats, head_repeats = scaled_sizes(phi, fpn_channels, fpn_repeats, head_repeats)
    feats = feats[:len(levels)]
    while len(feats) < len(levels):  # extra coarse levels (P6, P7): projected and pooled
        extra = _resample(feats[-1], c, f"p{levels[len(feats)]}")
        feats.append(layers.MaxPooling2D(3, strides=2, padding="same", name=f"p{levels[len(feats)]}_pool")(extra))
    feats = bifpn(feats, c, repeats)
    boxes = _head(feats, c, head_repeats, 4, anchors.per_cell, "box")
    logits = _head(feats, c, head_repeats, num_classes, anchors.per_cell, "class",
                   bias_init=-math.log((1 - PRIOR) / PRIOR))
    outputs = layers.Concatenate(axis=-1, name="detections", dtype="float32")([boxes, logits])
    return keras.Model(inputs, outputs, name=f"efficientdet_d{phi}")


def detection_loss(num_classes: int, alpha: float = 0.25, gamma: float = 1.5, huber_delta: float = 0.1,
                   box_weight: float = 50.0):
    """Focal loss over all non-ignored anchors plus Huber box loss over positive anchors,
    both normalised by the number of positive anchors (EfficientDet's recipe)."""

    def loss(y_true, y_pred):
        cls_id = y_true[..., 4]
        positive = ops.cast(cls_id >= 0, "float32")
        valid = ops.cast(cls_id > -2, "float32")
        n_pos = ops.maximum(ops.sum(positive, axis=-1), 1.0)
        onehot = ops.one_hot(ops.cast(ops.maximum(cls_id, 0), "int32"), num_classes) * positive[..., None]
        logits = y_pred[..., 4:]
        p = ops.sigmoid(logits)
        ce = ops.binary_crossentropy(onehot, logits, from_logits=True)
        p_t = onehot * p + (1 - onehot) * (1 - p)
        a_t = onehot * alpha + (1 - onehot) * (1 - alpha)
        focal = ops.sum(a_t * (1 - p_t) ** gamma * ce, axis=-1) * valid
        err = ops.abs(y_true[..., :4] - y_pred[..., :4])
        huber = ops.where(err < huber_delta, 0.5 * err ** 2, huber_delta * (err - 0.5 * huber_delta))
        box = ops.sum(huber, axis=-1) * positive
        return (ops.sum(focal, axis=-1) + box_weight * ops.sum(box, axis=-1) / 4.0) / n_pos

    return loss
