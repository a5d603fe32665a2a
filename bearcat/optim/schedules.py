"""Learning-rate schedules: `plateau` (reduce on plateau), `cosine` (linear warm-up,
then cosine decay with optional restarts), `cosine_restarts` (the same with restarts on)
and `constant`."""
from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="bearcat")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `base_lr` over `warmup_steps`, then cosine decay to
    `base_lr * alpha` over `decay_steps`; with `restarts`, cycles repeat, each `t_mul`
    times longer and `m_mul` times lower."""

    def __init__(self, base_lr: float, warmup_steps: int, decay_steps: int, alpha: float = 0.0,
                 restarts: bool = False, t_mul: float = 2.0, m_mul: float = 1.0):
        self.base_lr, self.warmup_steps, self.decay_steps = float(base_lr), int(warmup_steps), max(1, int(decay_steps))
        self.alpha, self.restarts, self.t_mul, self.m_mul = float(alpha), bool(restarts), float(t_mul), float(m_mul)
        if self.restarts and self.t_mul < 1.0:  # shrinking cycles end after finitely many steps: log(<= 0) beyond
            raise ValueError(f"scheduler.t_mul={t_mul}: each cycle must be at least as long as the last (>= 1)")
        if self.restarts and self.m_mul <= 0.0:
            raise ValueError(f"scheduler.m_mul={m_mul}: each cycle's peak is the last one's times this (> 0)")

    def __call__(self, step):
        return self.curve(keras.ops.cast(step, "float32"), keras.ops)

    def value(self, step: int) -> float:
        """The learning rate at `step`, computed in NumPy (what `StepSchedule` sets)."""
        return float(self.curve(np.float64(step), np))

    def curve(self, step, ops):
        """The formula, written once for two backends: `ops` is keras.ops (a tensor step, in
        a graph) or numpy (a number); both have every function used here."""
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


class StepSchedule(keras.callbacks.Callback):
    """Sets the optimizer's learning rate from `schedule.value(step)` before every step. Why not
    hand the schedule to the optimizer: Keras then evaluates it inside every training step once
    per variable (AdamW's weight decay reads the learning rate per variable), hundreds of times
    for a large backbone, and the training graph takes that much longer to build."""

    def __init__(self, schedule: WarmupCosine):
        super().__init__()
        self.schedule = schedule

    def learning_rate(self, step: int) -> float:
        return self.schedule.value(step)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.model.optimizer.learning_rate = self.learning_rate(step)


class TimeBudgetCosine(StepSchedule):
    """Warm-up + cosine whose progress is the larger of (steps done / steps planned) and
    (training time used / time budget): on a slow or busy machine the schedule still
    anneals fully and training ends on time; on a fast one it is the plain step schedule.
    Ends training when progress reaches 1."""

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int, budget_minutes: float,
                 alpha: float = 0.0, steps_per_epoch: int | None = None):
        self.total_steps = max(1, int(total_steps))
        self.steps_per_epoch = steps_per_epoch  # for the log line; None: the fit's own steps
        super().__init__(WarmupCosine(base_lr, warmup_steps, self.total_steps - int(warmup_steps), alpha))
        self.budget_s = float(budget_minutes) * 60.0
        self.start = 0.0
        self.used_before = 0.0  # a resumed run's training time so far (set by bearcat.train)
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self.start = time.monotonic() - self.used_before

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def learning_rate(self, step: int, elapsed_s: float | None = None) -> float:
        """The cosine at the step that the time used would have reached, when that is further
        (warm-up goes by steps only)."""
        if elapsed_s is None:
            elapsed_s = time.monotonic() - self.start
        if step < self.schedule.warmup_steps:
            return self.schedule.value(step)
        return self.schedule.value(max(step, elapsed_s / self.budget_s * self.total_steps))

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self.start >= self.budget_s and not self.model.stop_training:
            # (the planned steps end `fit` by themselves.) Said here because Keras' progress
            # line for the epoch then shows all its steps, however few were trained.
            steps = int(self.params.get("steps") or 0)
            epoch_steps = self.steps_per_epoch or steps
            done = batch + 1 + epoch_steps - steps  # a resumed part-epoch's fit has only the rest of its steps
            log.info("time budget of %.3g min reached after step %d of epoch %d's %d; stopping",
                     self.budget_s / 60, done, self.epoch + 1, epoch_steps)
            self.model.stop_training = True


class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras' reduce-on-plateau, resumable: its best value, wait and cooldown counts live in
    `state` (the checkpointer's, which state.json commits with each epoch), so a resumed run
    goes on counting where the killed one stopped instead of starting afresh. The reduced
    rate itself is an optimizer variable and comes back with the optimizer state."""

    state: dict | None = None  # the checkpointer's; set by bearcat.train.epoch_callbacks

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        saved = self.state or {}
        if saved.get("plateau_best") is not None:
            self.best = saved["plateau_best"]
            self.wait, self.cooldown_counter = int(saved["plateau_wait"]), int(saved["plateau_cooldown"])

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.state is not None and self.best is not None:
            self.state.update(plateau_best=float(self.best), plateau_wait=int(self.wait),
                              plateau_cooldown=int(self.cooldown_counter))


def build_schedule(cfg, base_lr: float, steps_per_epoch: int, epochs: int, max_minutes: float | None = None):
    """-> (learning_rate for the optimizer, extra Keras callbacks). With `max_minutes`,
    `cosine` (without restarts) also fits its decay into that much training time."""
    name = cfg.name
    if name == "constant":
        return float(base_lr), []
    if name == "plateau":
        cb = ResumablePlateau(monitor=cfg.monitor, mode=cfg.get("mode", "auto"), factor=cfg.factor,
                              patience=cfg.patience, min_lr=cfg.min_lr, verbose=1)
        return float(base_lr), [cb]
    if name in ("cosine", "cosine_restarts"):  # the same schedule; the configs differ in `restarts`
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        cycle = cfg.get("cycle_epochs") or max(epochs - cfg.warmup_epochs, 1)
        decay = int(round(cycle * steps_per_epoch))
        if max_minutes and not cfg.restarts:
            return float(base_lr), [TimeBudgetCosine(base_lr, warmup, steps_per_epoch * epochs, max_minutes, cfg.alpha,
                                                        steps_per_epoch)]
        schedule = WarmupCosine(base_lr, warmup, decay, cfg.alpha, cfg.restarts, cfg.t_mul, cfg.m_mul)
        return schedule.value(0), [StepSchedule(schedule)]
    raise ValueError(f"scheduler.name={name}: choose constant, plateau, cosine or cosine_restarts")
