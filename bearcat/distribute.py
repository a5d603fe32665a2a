"""Training on several devices or machines through tf.distribute: `trainer.strategy`.

- `default`: one device (TensorFlow's default strategy).
- `mirrored`: one machine, a model replica per device (`trainer.devices`; null = every
  GPU, or every logical CPU device when there is no GPU), gradients all-reduced each step.
- `multi_worker`: several machines (MultiWorkerMirroredStrategy). Every worker runs the same
  command; the `TF_CONFIG` environment variable tells each one the cluster and its own
  role. Only the chief logs to MLflow (see `is_chief`).

`trainer.batch_size` is the global batch: each of N replicas computes batch_size / N images
per step. `trainer.cpu_devices=N` splits the CPU into N logical devices (for trying
`mirrored` without GPUs, as the tests do); it must be set before TensorFlow starts.
"""
from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multi_worker")


def split_cpu(n: int | None) -> None:
    """Expose the CPU as n logical devices (trainer.cpu_devices); a no-op for null/0/1."""
    if not n or int(n) <= 1:
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == int(n):
        return  # already split this way
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(n))
    except RuntimeError as err:
        raise RuntimeError(f"trainer.cpu_devices={n}: TensorFlow was already initialised in this process, "
                           "so its devices can no longer be split; start a new process") from err


def strategy_name(trainer) -> str:
    """trainer.strategy, checked (no TensorFlow needed: bearcat.train checks it before TensorFlow
    loads); unset or null is "default"."""
    name = trainer.get("strategy") or "default"
    if name not in STRATEGIES:
        raise ValueError(f"trainer.strategy={name}: use one of {', '.join(STRATEGIES)}")
    return name


def build_strategy(trainer):
    """The tf.distribute strategy named by trainer.strategy (trainer.devices for mirrored)."""
    import tensorflow as tf

    name = strategy_name(trainer)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("trainer.strategy=multi_worker needs the TF_CONFIG environment variable "
                             '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                             '"task": {"type": "worker", "index": 0}}) on every worker')
        if trainer.get("max_minutes"):
            raise ValueError("trainer.strategy=multi_worker: set trainer.max_minutes=null (each worker's own "
                             "clock would end training at a different step, and the others would wait forever)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    split_cpu(trainer.get("cpu_devices"))
    devices = trainer.get("devices")
    if not devices:
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=list(devices))


def is_chief(tf_config: str | None = None) -> bool:
    """True for the worker that logs and exports: the `chief` task if the cluster has one,
    else worker 0; always True without TF_CONFIG (a single machine)."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw:
        return True
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from None
    task = spec.get("task") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if "chief" in (spec.get("cluster") or {}):
        return kind == "chief"
    return kind == "worker" and index == 0


def prepare_multi_worker_fit(model, strategy, images, targets) -> None:
    """Under MultiWorkerMirroredStrategy, make Keras' fit() work: build the model's training
    state from a local batch (and stop Keras from doing it at the start of fit()), and
    average the per-step scalars across workers in a way that works for scalars.

    Keras 3 (3.15 here) builds that state at the start of fit() from the first batch of the
    distributed dataset; under MultiWorkerMirroredStrategy that batch arrives as per-worker
    values Keras cannot turn into tensors, and fit() stops with "Attempt to convert a value
    (PerReplica...)" (keras-team/keras#20585, tensorflow/tensorflow#72388). Building from a
    plain batch first gives the same variables; the per-model switch-off is needed because
    Keras fetches and converts that first batch even when nothing is left to build.
    Other strategies keep Keras' own path.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    with strategy.scope():
        model._symbolic_build(data_batch=(tf.convert_to_tensor(images[:2], tf.float32),
                                          tf.convert_to_tensor(targets[:2])))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    _average_scalars_across_workers()


def _average_scalars_across_workers() -> None:
    """Keras 3.15 averages each step's loss and metrics across workers with
    strategy.reduce("MEAN", value, axis=0), which fails for scalars ("Invalid reduction
    dimension 0 for input with 0 dimensions"). Average them over replicas (axis=None) instead;
    every other reduction goes through Keras unchanged. Installed once, only for multi_worker."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    keras_reduce = tf_trainer.reduce_per_replica
    if getattr(keras_reduce, "bearcat_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return keras_reduce(values, strategy, reduction)

    reduce_per_replica.bearcat_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica
