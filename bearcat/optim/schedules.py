"""Learning-rate schedules: `plateau` (reduce on plateau), `cosine` (linear warm-up,
then cosine decay with optional restarts), `cosine_restarts` (the same with restarts on)
and `constant`."""
from __future__ import annotations

import math

import keras


@keras.saving.register_keras_serializable(package="bearcat")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `base_lr` over `warmup_steps`, then cosine decay to
    `base_lr * alpha` over `decay_steps`; with `restarts`, cycles repeat, each `t_mul`
    times longer and `m_mul` times lower."""

    def __init__(self, base_lr: float, warmup_steps: int, decay_steps: int, alpha: float = 0.0,
                 restarts: bool = False, t_mul: float = 2.0, m_mul: float = 1.0):
        self.base_lr, self.warmup_steps, self.decay_steps = float(base_lr), int(warmup_steps), max(1, int(decay_steps))
        self.alpha, self.restarts, self.t_mul, self.m_mul = float(alpha), bool(restarts), float(t_mul), float(m_mul)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        t = ops.maximum(step - self.warmup_steps, 0.0) / self.decay_steps  # progress in first-cycle units
        if self.restarts and self.t_mul != 1.0:
            # cycle i spans t_mul**i units; find i and the position inside it.
            i = ops.floor(ops.log(1.0 - t * (1.0 - self.t_mul)) / math.log(self.t_mul))
            start = (1.0 - ops.power(self.t_mul, i)) / (1.0 - self.t_mul)
            frac = (t - start) / ops.power(self.t_mul, i)
            peak = ops.power(self.m_mul, i)
        elif self.restarts:
            i = ops.floor(t)
            frac, peak = t - i, ops.power(self.m_mul, i)
        else:
            frac, peak = ops.minimum(t, 1.0), 1.0
        cosine = 0.5 * (1.0 + ops.cos(math.pi * frac))
        decayed = self.base_lr * peak * ((1.0 - self.alpha) * cosine + self.alpha)
        warmup = self.base_lr * ops.minimum(step + 1.0, warm) / warm
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return dict(base_lr=self.base_lr, warmup_steps=self.warmup_steps, decay_steps=self.decay_steps,
                    alpha=self.alpha, restarts=self.restarts, t_mul=self.t_mul, m_mul=self.m_mul)


def build_schedule(cfg, base_lr: float, steps_per_epoch: int, epochs: int):
    """-> (learning_rate for the optimizer, extra Keras callbacks)."""
    name = cfg.name
    if name == "constant":
        return float(base_lr), []
    if name == "plateau":
        cb = keras.callbacks.ReduceLROnPlateau(monitor=cfg.monitor, mode=cfg.get("mode", "auto"), factor=cfg.factor,
                                               patience=cfg.patience, min_lr=cfg.min_lr, verbose=1)
        return float(base_lr), [cb]
    if name in ("cosine", "cosine_restarts"):  # the same schedule; the configs differ in `restarts`
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        cycle = cfg.get("cycle_epochs") or max(epochs - cfg.warmup_epochs, 1)
        decay = int(round(cycle * steps_per_epoch))
        return WarmupCosine(base_lr, warmup, decay, cfg.alpha, cfg.restarts, cfg.t_mul, cfg.m_mul), []
    raise ValueError(f"scheduler.name={name}: choose constant, plateau, cosine or cosine_restarts")
