"""The fused BatchNorm layer against Keras' own: same training-mode output, gradients and
moving statistics, same inference, and it survives a save and load."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from bearcat.models.batchnorm import FusedBatchNorm


def _step(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") ** 3)  # a loss whose gradient depends on y
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return [tf.cast(y, "float32").numpy(), *(g.numpy() for g in grads),
            layer.moving_mean.numpy(), layer.moving_variance.numpy()]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batchnorm_matches_keras(policy):
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 7, 6)).astype("float32"))
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        plain, fused = keras.layers.BatchNormalization(momentum=0.9), FusedBatchNorm(momentum=0.9)
        for layer in (plain, fused):
            layer.build(x.shape)
            layer.gamma.assign(np.linspace(0.5, 2.0, 6))
            layer.beta.assign(np.linspace(-1.0, 1.0, 6))
        expected, got = _step(plain, x), _step(fused, x)
        names = ("output", "input gradient", "gamma gradient", "beta gradient", "moving mean", "moving variance")
        for name, want, have in zip(names, expected, got):
            np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-3 * max(1.0, np.abs(want).max()), err_msg=name)
        # the moving statistics moved from their start (0 and 1) toward the batch's (about 2 and 9)
        assert np.all(got[4] > 0.1) and np.all(got[5] > 1.3)
        np.testing.assert_allclose(tf.cast(fused(x), "float32").numpy(), tf.cast(plain(x), "float32").numpy(),
                                   atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_frozen_fused_batchnorm_uses_moving_statistics():
    """A layer frozen for fine-tuning (trainable=False) normalises with its moving
    statistics even in training, as Keras' does, and leaves them alone."""
    x = tf.constant(np.random.default_rng(1).normal(5.0, 2.0, (4, 3, 3, 2)).astype("float32"))
    layer = FusedBatchNorm()
    layer.build(x.shape)
    layer.trainable = False
    y = layer(x, training=True).numpy()
    np.testing.assert_allclose(y, x.numpy() / np.sqrt(1.0 + layer.epsilon), rtol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), np.zeros(2, "float32"))


def test_fused_batchnorm_saves_and_loads(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, FusedBatchNorm(name="bn")(inputs))
    model.get_layer("bn").moving_mean.assign([1.0, 2.0, 3.0])
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(again.get_layer("bn"), FusedBatchNorm)
    np.testing.assert_array_equal(again.get_layer("bn").moving_mean.numpy(), [1.0, 2.0, 3.0])
