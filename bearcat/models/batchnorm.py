"""BatchNormalization whose training step runs TensorFlow's fused kernel.

Keras 3's BatchNormalization computes batch statistics and the normalisation as separate
element-wise ops (upcast, mean, squared difference, multiply, add, downcast, and as
many again in the gradient). Profiled on the default model (2026-12-02, AMX machine,
bfloat16, batch 64), those ops took about half of the training step's CPU time. One
`FusedBatchNormV3` (and its fused gradient) does the same work in a single pass.

Only the training step changes: inference (validation, export, serving) runs Keras' own
code, so exported graphs are what they were. Moving averages are updated exactly as
Keras does (biased batch variance, `momentum`), which `PreciseBatchNorm` relies on.
"""
from __future__ import annotations

import keras

FUSED = True  # scripts/bench_step.py's `bn:keras` token sets False to time Keras' own layer


@keras.saving.register_keras_serializable(package="bearcat")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """A drop-in `keras.layers.BatchNormalization` (same weights, config and inference)
    for 4-D channels-last inputs, fused in training."""

    def _fusable(self, inputs, training, mask) -> bool:
        return bool(training) and self.trainable and mask is None and not self.renorm \
            and not self.synchronized and len(inputs.shape) == 4 and self.axis in (-1, 3)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], "float32")
        beta = self.beta if self.center else tf.zeros([channels], "float32")
        empty = tf.constant([], "float32")  # no running statistics in: the kernel returns the batch's
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.cast(gamma, "float32"), offset=tf.cast(beta, "float32"), mean=empty,
            variance=empty, epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
            is_training=True)
        # The kernel returns the unbiased (n - 1) variance; Keras averages the biased one.
        n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


def batch_norm(**kwargs) -> keras.layers.BatchNormalization:
    """The BatchNorm layer Bearcat's own models use."""
    return FusedBatchNorm(**kwargs) if FUSED else keras.layers.BatchNormalization(**kwargs)
