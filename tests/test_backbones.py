"""Every backbone builds for every text mode at the default input size (build only: no
compile, no training), plus the backbone options: gray input, resizing, local weights,
size errors."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bearcat.data.labels import Vocabulary
from bearcat.experiment import mode_options
from bearcat.modes import build_mode

BACKBONES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "backbone").glob("*.yaml"))
TEXT_MODES = ("ctc", "ctc_tiny", "ordinary")
VOCAB = Vocabulary("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
MAX_LENGTH = 6  # the default generated task: labels of 4 to 6 characters


def features_of(cfg, inputs):
    node = OmegaConf.to_container(cfg.backbone, resolve=True)
    node.pop("name")
    return instantiate(node, _partial_=True)(inputs)


@pytest.fixture(autouse=True)
def fresh_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


def test_the_zoo_is_complete():
    assert set(BACKBONES) >= {"cnn_small", "densenet121", "densenet169", "densenet201", "mobilenetv2",
                              "mobilenetv3small", "mobilenetv3large", "efficientnetb0", "efficientnetv2b0",
                              "resnet50v2", "convnext_tiny", "resnet_se"}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_builds_for_every_text_mode(make_cfg, backbone):
    cfg = make_cfg([f"backbone={backbone}"])
    pre = cfg.preprocess
    inputs = keras.Input((pre.height, pre.width, pre.channels), name="image")
    features = features_of(cfg, inputs)
    assert features.shape[2] >= 2 * MAX_LENGTH + 1, "too few time steps for CTC at the default input"
    for mode_name in TEXT_MODES:
        mode_cfg = make_cfg([f"backbone={backbone}", f"mode={mode_name}"])
        mode = build_mode(mode_name, VOCAB, MAX_LENGTH, **mode_options(mode_cfg))
        model = keras.Model(inputs, mode.build_head(features), name=f"{backbone}_{mode_name}")
        steps = model.output.shape[1]
        assert model.output.shape[2] == VOCAB.num_classes
        assert steps == MAX_LENGTH if mode_name == "ordinary" else steps >= 2 * MAX_LENGTH + 1
    if cfg.backbone.get("rgb"):  # an ImageNet-shaped network takes the gray input tiled to 3 channels inside
        assert model.get_layer("gray_to_rgb").output.shape[-1] == 3


@pytest.mark.parametrize("size", [(32, 96), (48, 128), (64, 200)])
def test_application_resizes_inside_the_model(make_cfg, size):
    """Whatever the preprocessing size, a keras.applications backbone sees its own
    input_size (48 x 256): 16 columns at stride 16, finite for 0..255 gray pixels."""
    cfg = make_cfg(["backbone=mobilenetv3small"])
    inputs = keras.Input((*size, 1))
    model = keras.Model(inputs, features_of(cfg, inputs))
    x = np.random.default_rng(0).integers(0, 256, (2, *size, 1)).astype("float32")
    out = model.predict_on_batch(x)
    assert out.shape == (2, 3, 16, 48) and np.isfinite(out).all()
    # a plain call (a user's model(x)) is inference too: the resizing no longer passes on
    # its default training=True, which put BatchNormalization on the batch's statistics
    assert np.abs(np.asarray(model(x)) - out).max() < 1e-5
    if size == (32, 96):  # and training still trains: fit's training=True reaches BatchNormalization
        batchnorm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
        before = np.array(batchnorm.moving_mean)
        model.compile(optimizer="sgd", loss="mse")
        model.train_on_batch(x, np.zeros_like(out))
        assert np.abs(np.array(batchnorm.moving_mean) - before).max() > 0


def test_local_weights_file_is_loaded(make_cfg, tmp_path):
    """Weights saved from the plain keras.applications network (as a user would bring them)
    load into the backbone: the first convolution's kernel arrives unchanged."""
    reference = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(48, 256, 3))
    path = tmp_path / "mobilenetv3small.weights.h5"
    reference.save_weights(path)
    cfg = make_cfg(["backbone=mobilenetv3small", f"backbone.weights={path}"])
    inputs = keras.Input((48, 256, 1))
    model = keras.Model(inputs, features_of(cfg, inputs))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("conv").kernel),
                                  keras.ops.convert_to_numpy(reference.get_layer("conv").kernel))

    cfg = make_cfg(["backbone=mobilenetv3small", f"backbone.weights={tmp_path / 'missing.weights.h5'}"])
    with pytest.raises(FileNotFoundError, match="backbone.weights=.*missing"):
        features_of(cfg, keras.Input((48, 128, 1)))


def test_too_small_input_is_a_clear_error(make_cfg):
    cfg = make_cfg(["backbone=densenet121", "backbone.input_size=null"])
    with pytest.raises(ValueError, match="needs at least 32x32 pixels but gets 16x128: raise backbone.input_size"):
        features_of(cfg, keras.Input((16, 128, 1)))


def test_too_narrow_features_for_ctc_name_the_fix(make_cfg):
    cfg = make_cfg(["backbone=mobilenetv3small", "backbone.input_size=null", "mode=ctc_tiny"])
    features = features_of(cfg, keras.Input((48, 96, 1)))  # stride 16: 6 columns < 13
    mode = build_mode("ctc_tiny", VOCAB, MAX_LENGTH, **mode_options(cfg))
    with pytest.raises(ValueError, match="gives 6 time steps .* 2 x max_length \\+ 1 = 13 .* preprocess.width"):
        mode.build_head(features)


def test_resnet_se_is_small_with_se_gates(make_cfg):
    cfg = make_cfg(["backbone=resnet_se"])
    inputs = keras.Input((48, 128, 1))
    model = keras.Model(inputs, features_of(cfg, inputs))
    assert model.output.shape[1:] == (3, 32, 128)  # height / 16, one time step per 4 columns, like cnn_small
    assert any(layer.name.endswith("_se_scale") for layer in model.layers)
    assert 200_000 < model.count_params() < 2_000_000


def test_space_to_depth_keeps_every_pixel_and_survives_saving(make_cfg, tmp_path):
    """cnn_small with space_to_depth=2 on a 64 x 160 input gives the feature map of the
    default on 32 x 80; the fold is the reference reordering and the model reloads."""
    from bearcat.models.backbones import SpaceToDepth

    x = np.arange(2 * 4 * 6 * 3, dtype="float32").reshape(2, 4, 6, 3)
    folded = keras.ops.convert_to_numpy(SpaceToDepth(2)(x))
    reference = x.reshape(2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 2, 3, 12)
    np.testing.assert_array_equal(folded, reference)

    cfg = make_cfg(["backbone.space_to_depth=2"])
    inputs = keras.Input((64, 160, 1))
    model = keras.Model(inputs, features_of(cfg, inputs))
    default = features_of(make_cfg([]), keras.Input((32, 80, 1)))
    assert model.output.shape[1:] == default.shape[1:]
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 160, 1)).astype("float32")
    model.save(tmp_path / "s2d.keras")
    again = keras.models.load_model(tmp_path / "s2d.keras")
    np.testing.assert_allclose(again.predict_on_batch(images), model.predict_on_batch(images), rtol=1e-5, atol=1e-5)
    # A fresh process (export, serve) loads it through the bundle loader, which registers the layer.
    import subprocess
    import sys

    code = ("import sys; from bearcat.bundle import load_keras; "
            "print(load_keras(sys.argv[1]).get_layer('space_to_depth').block)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s2d.keras")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("2"), done.stderr[-2000:]
    with pytest.raises(ValueError, match="backbone.space_to_depth=2 needs preprocess.height .* got 63x160"):
        features_of(cfg, keras.Input((63, 160, 1)))


def test_exports_run_in_inference_mode_behind_a_resizing_layer(make_cfg, tmp_path):
    """Keras' Resizing, which sits in front of every keras.applications backbone, defaults
    `training` to True and passes it on to the layers after it when the model is called
    without `training`, as the SavedModel and ONNX exporters call it. The exports must still
    normalise with BatchNormalization's moving statistics and leave Dropout off: an image reads
    as Keras reads it, and the same alone as in a batch (before, an ONNX export of a
    mobilenetv2 run failed the parity check). A small stand-in for such a backbone: exporting
    mobilenetv3small itself took 46 s."""
    from bearcat.export import write_format
    from bearcat.runtime import load_runtime

    inputs = keras.Input((36, 96, 1), name="image")
    x = keras.layers.Resizing(48, 128, name="resize")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4)(keras.layers.Rescaling(1 / 255)(x))
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    batchnorm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    batchnorm.moving_mean.assign(np.full(8, 0.5, np.float32))  # far from any batch's own statistics
    batchnorm.moving_variance.assign(np.full(8, 4.0, np.float32))
    x = np.random.default_rng(0).integers(0, 256, (4, 36, 96, 1)).astype("float32")
    plain = np.asarray(model(x))  # Keras' own plain call: training mode (it moves the moving statistics)
    want = np.asarray(model.predict_on_batch(x))
    assert np.abs(plain - want).max() > 0.01
    for fmt in ("onnx", "savedmodel"):
        write_format(model, tmp_path, fmt, make_cfg([], config_name="export"))
        runtime = load_runtime(tmp_path, fmt)
        batch, alone = np.asarray(runtime.predict_on_batch(x)), np.asarray(runtime.predict_on_batch(x[:1]))
        assert np.abs(batch - want).max() < 1e-5, fmt
        assert np.abs(alone[0] - batch[0]).max() < 1e-5, fmt
