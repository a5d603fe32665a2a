"""Training callbacks: validation metrics, atomic checkpoints with resume state, a
wall-clock budget, and a stop on Ctrl-C."""
from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from pathlib import Path

import keras
import numpy as np

from bearcat.atomic import remove_stale, replacing, write_json
from bearcat.metrics import lower_is_better


log = logging.getLogger(__name__)

STATE_FILE = "state.json"


class ValidationMetrics(keras.callbacks.Callback):
    """Decode the val split every epoch and add val_accuracy (exact match) and, for text
    modes, val_char_accuracy and val_cer to the epoch logs. Listed first so that
    checkpointing, early stopping and MLflow see these values."""

    def __init__(self, evaluate_fn, batch_size: int):
        super().__init__()
        self.evaluate_fn = evaluate_fn  # () -> dict of val metrics
        self.batch_size = batch_size
        self.epoch_start = 0.0
        self.step_start = 0

    def _steps(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start, self.step_start = time.monotonic(), self._steps()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            # measured before validation, from the steps really taken (an epoch cut short
            # by the time budget counts only its own steps)
            images = (self._steps() - self.step_start) * self.batch_size
            logs["train_images_per_s"] = images / max(time.monotonic() - self.epoch_start, 1e-9)
            logs.update({f"val_{k}": v for k, v in self.evaluate_fn().items()})


def better_direction(monitor: str) -> str:
    """'min' for a loss or an error rate, else 'max' (accuracy, mAP)."""
    return "min" if lower_is_better(monitor) else "max"


# What a part-epoch leaves as it was: early stopping's and the plateau's counts (the epoch
# counts once, when a resume has trained it whole) and the last whole epoch's MLflow record.
UNCHANGED_BY_PART = ("early_stopping_best", "early_stopping_wait", "plateau_best", "plateau_wait",
                     "plateau_cooldown", "epoch_log")


def part_steps(state: dict) -> int:
    """The steps a Ctrl-C'd epoch had trained when it was committed (state.json's "part_steps",
    beside "epoch", the whole epochs); 0 when the last commit was a whole epoch."""
    return int(state.get("part_steps") or 0)


class Checkpointer(keras.callbacks.Callback):
    """`best.keras` (the best monitored value) and the last epoch's weights + optimizer
    state for resuming. Every write goes to a temporary name first and is renamed into
    place, so a kill at any moment leaves a usable checkpoint. `on_commit(state)`, when
    set, runs after each epoch is committed (MLflow logging: bearcat.train.epoch_callbacks)."""

    def __init__(self, folder, monitor: str = "val_accuracy", run_id: str | None = None,
                 state: dict | None = None, steps_per_epoch: int | None = None):
        super().__init__()
        # An epoch that Ctrl-C ends short of steps_per_epoch (`stopper.pressed`; the fit's
        # StopOnInterrupt) is committed as a part-epoch, which a resume finishes (state.json's
        # "part_steps"; bearcat.train.fit_unless_done). One the time budget ends is a last epoch.
        self.steps_per_epoch = steps_per_epoch
        self.stopper = None
        self.offset = self.epoch_steps = 0
        self.before: dict = {}
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in remove_stale(self.folder):  # a killed run's half-written checkpoint
            log.info("removed %s, left by a process killed while writing it", path)
        self.monitor = monitor
        self.state = dict(state or {})
        self.state.setdefault("best", None)
        self.state["mlflow_run_id"] = run_id
        self.used_before = float(self.state.get("trained_seconds", 0.0))  # training time of earlier attempts
        self.started: float | None = None  # when this process's training began (set once)
        self.on_commit = None

    def trained_seconds(self) -> float:
        return self.used_before + (0.0 if self.started is None else time.monotonic() - self.started)

    def on_train_begin(self, logs=None):
        if self.started is None:  # a resume that finishes a part-epoch fits twice: its time counts once
            self.started = time.monotonic()
        if not (self.folder / STATE_FILE).is_file():  # a kill before the first epoch resumes this MLflow run
            write_json(self.folder / STATE_FILE, self.state, indent=1)

    def best_metrics(self) -> dict:
        """{"best_<monitor>": the best epoch's value} (what sweeps select on); {} before any epoch."""
        return {} if self.state["best"] is None else {f"best_{self.monitor}": self.state["best"]}

    def finish(self, done: bool = True) -> None:
        """Training has ended (all epochs, early stopping or the time budget): a resume after
        a kill in the testing that follows goes straight back to testing. Not `done` (stopped by
        Ctrl-C): a resume trains on from the last epoch."""
        self.state.update(training_done=done, trained_seconds=self.trained_seconds())
        write_json(self.folder / STATE_FILE, self.state, indent=1)

    def on_epoch_begin(self, epoch, logs=None):
        # a resume's first epoch may begin part-way
        self.offset = self.epoch_steps = part_steps(self.state)
        self.before = {k: self.state[k] for k in UNCHANGED_BY_PART if k in self.state}

    def on_train_batch_end(self, batch, logs=None):
        self.epoch_steps = self.offset + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        # Ties go to the later epoch: on a small val split the metric saturates (e.g. 1.0 for
        # many epochs) and the later, further-annealed weights read the test split better.
        best = self.state["best"]
        if value is not None and (best is None or (value <= best if better_direction(self.monitor) == "min"
                                                   else value >= best)):
            self.state["best"] = float(value)
            self.state["best_epoch"] = epoch + 1  # counted from 1, like "epoch" and the epoch-NNNN folders
            with replacing(self.folder / "best.keras", keep_suffix=True) as tmp:
                self.model.save(tmp)
        cut = self.stopper is not None and self.stopper.pressed and self.steps_per_epoch
        part = self.epoch_steps if cut and self.epoch_steps < self.steps_per_epoch else 0
        # a part-epoch has a folder of its own: the whole epoch, once trained, must not
        # replace the folder state.json names (a kill in between would leave none)
        name = f"epoch-{epoch + 1:04d}" + ("-part" if part else "")
        with replacing(self.folder / name) as tmp_dir:
            tmp_dir.mkdir()
            self.model.save_weights(tmp_dir / "model.weights.h5")
            opt = self.model.optimizer
            np.savez(tmp_dir / "optimizer.npz", *[keras.ops.convert_to_numpy(v) for v in opt.variables])
        previous = self.state.get("last")
        self.state.update(epoch=epoch + (0 if part else 1), last=name, trained_seconds=self.trained_seconds())
        self.state.pop("part_steps", None)
        if part:  # "epoch" counts whole epochs; a resume trains the rest of this one
            for key in UNCHANGED_BY_PART:
                self.state.pop(key, None)
            self.state.update(part_steps=part, **self.before)
        write_json(self.folder / STATE_FILE, self.state, indent=1)
        if previous and previous != name:
            shutil.rmtree(self.folder / previous, ignore_errors=True)
        if self.on_commit is not None and not part:  # MLflow's history holds each epoch once, whole
            self.on_commit(self.state)


# The monitored value of a model that reads nothing yet. A CTC model often stays there for its
# first few hundred steps; on a small folder those are many short epochs, and counting them
# stopped a 1,400-image ctc_tiny run after 7 epochs at accuracy 0 (README "Training").
NOTHING_YET = {"val_accuracy": 0.0, "val_char_accuracy": 0.0, "val_map": 0.0, "val_map50": 0.0, "val_cer": 1.0}


def reads_nothing(monitor: str, value: float) -> bool:
    if monitor not in NOTHING_YET:  # val_loss: no such floor
        return False
    floor = NOTHING_YET[monitor]
    return value >= floor if lower_is_better(monitor) else value <= floor


class EarlyStopping(keras.callbacks.Callback):
    """Stop after `patience` epochs in which `monitor` did not improve by more than
    `min_delta` (Keras' rule), counted from the first epoch in which the model reads
    something (`NOTHING_YET`; a run that never does ends with its epochs or time budget).
    The count lives in `state`, the checkpointer's, which state.json commits with each
    epoch: a resumed run goes on counting where the killed one stopped (Keras' own
    callback would start afresh). Must run before the checkpointer."""

    def __init__(self, monitor: str, patience: int, min_delta: float, state: dict):
        super().__init__()
        self.monitor, self.patience, self.min_delta = monitor, int(patience), abs(float(min_delta))
        self.lower = better_direction(monitor) == "min"
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        best = self.state.get("early_stopping_best")
        if best is None and reads_nothing(self.monitor, value):
            return  # the count starts once the model reads something
        if best is None or (value < best - self.min_delta if self.lower else value > best + self.min_delta):
            self.state.update(early_stopping_best=float(value), early_stopping_wait=0)
            return
        self.state["early_stopping_wait"] = wait = int(self.state.get("early_stopping_wait", 0)) + 1
        if wait >= self.patience:
            self.model.stop_training = True
            log.info("early stopping after epoch %d: %s not better than %.4f for %d epochs", epoch + 1,
                     self.monitor, best, wait)


def read_state(folder) -> dict | None:
    path = Path(folder) / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def restore_last(model, folder, state: dict) -> None:
    """Load the last epoch's weights and optimizer state saved by `Checkpointer`."""
    ckpt = Path(folder) / state["last"]
    opt = model.optimizer
    opt.build(model.trainable_variables)  # before the weights file, whose optimizer part an unbuilt one skips (a warning)
    model.load_weights(ckpt / "model.weights.h5")
    with np.load(ckpt / "optimizer.npz") as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(opt.variables):
        raise ValueError(f"{ckpt}: optimizer state does not match this model/optimizer")
    for var, value in zip(opt.variables, values):
        var.assign(value)


def resume_epoch(model, folder, state: dict | None, run_id: str) -> int:
    """The epoch to train from: 0 for a new run; when resuming, the last checkpoint's
    weights and optimizer state are loaded and its epoch count returned."""
    if not state or not state.get("last"):  # new, or killed before its first epoch ended
        return 0
    restore_last(model, folder, state)
    epoch, steps = int(state["epoch"]), part_steps(state)
    where = f"{steps} step{'s' if steps > 1 else ''} into epoch {epoch + 1}" if steps else f"after epoch {epoch}"
    log.info("resumed %s %s (MLflow run %s)", folder, where, run_id)
    return epoch


class TimeBudget(keras.callbacks.Callback):
    """Stop when the next epoch would end past `max_minutes` of training time."""

    def __init__(self, max_minutes: float):
        super().__init__()
        self.budget = max_minutes * 60.0
        self.start = self.epoch_start = 0.0
        self.used_before = 0.0  # a resumed run's training time so far (set by bearcat.train)

    def on_train_begin(self, logs=None):
        self.start = time.monotonic() - self.used_before

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        if now + (now - self.epoch_start) > self.start + self.budget:
            log.info("time budget of %.3g min reached after epoch %d; stopping", self.budget / 60, epoch + 1)
            self.model.stop_training = True


class StopOnInterrupt(keras.callbacks.Callback):
    """Within `with stopper:` the first Ctrl-C (SIGINT) ends training after the current batch,
    as the time budget ends it after an epoch: the part-epoch is validated and checkpointed
    (as a part-epoch, which a resume finishes: `Checkpointer`), then the run tests and saves
    its best epoch as usual. A second Ctrl-C aborts at once
    (KeyboardInterrupt), as Python's own handler does, which is then put back.

    With `abort=True` (a sweep) the first Ctrl-C aborts instead, but it too waits for the end
    of the batch and raises KeyboardInterrupt from here: raised by Python's handler in the
    middle of TensorFlow's step, it could come out as "SystemError: bad argument to internal
    function", which Hydra takes for a failed job. For the same reason a SystemError leaving
    the `with` block after a second Ctrl-C leaves it as the KeyboardInterrupt it was."""

    def __init__(self, abort: bool = False):
        super().__init__()
        self.abort = abort
        self.pressed = False
        self.pressed_again = False
        self.told = False
        self.previous = None

    def _press(self, signum, frame) -> None:
        # only a flag: logging or printing here could re-enter a stream the main thread is writing
        self.pressed = True
        signal.signal(signal.SIGINT, self._press_again)

    def _press_again(self, signum, frame) -> None:
        self.pressed_again = True
        signal.signal(signal.SIGINT, self.previous)
        raise KeyboardInterrupt

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._press)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if signal.getsignal(signal.SIGINT) in (self._press, self._press_again):
            signal.signal(signal.SIGINT, self.previous)
        if kind is SystemError and self.pressed_again:
            raise KeyboardInterrupt("Ctrl-C") from error

    def _stop(self) -> None:
        if not self.pressed:
            return
        if self.abort:
            raise KeyboardInterrupt("Ctrl-C")
        self.model.stop_training = True
        if not self.told:
            self.told = True
            log.warning("Ctrl-C: training stops after this batch, then the best epoch is tested and saved "
                        "as usual; press Ctrl-C again to abort")

    def on_train_batch_end(self, batch, logs=None):
        self._stop()

    def on_epoch_end(self, epoch, logs=None):  # pressed during validation: no further epoch
        self._stop()


class PreciseBatchNorm(keras.callbacks.Callback):
    """Re-estimate BatchNorm statistics at the end of each epoch from one large batch of
    training images under the current weights.

    Why: with a fast-moving learning rate the moving averages lag the weights; on
    captchas (near-constant backgrounds, tiny activation variances) that lag alone took
    inference accuracy from 84% to 4% while training-mode accuracy was fine. Listed
    before ValidationMetrics so validation, checkpoints and the exported model all use
    the re-estimated statistics.
    """

    def __init__(self, images: np.ndarray, sample: int = 1024, seed: int = 0, chunk: int | None = None):
        super().__init__()
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(images), size=min(sample, len(images)), replace=False)
        self.batch = images[np.sort(pick)].astype(np.float32)
        # Large models (detection) would hold every activation of the whole sample at once:
        # in chunks, each layer's statistics are averaged over the chunks instead.
        self.chunk = int(chunk) if chunk else len(self.batch)

    def set_model(self, model):
        super().set_model(model)
        self.layers = [layer for layer in model._flatten_layers()
                       if isinstance(layer, keras.layers.BatchNormalization)]
        self.feed = self._feeder(self.layers) if self.layers else model

    def _feeder(self, layers):
        """The part of the model that feeds its BatchNorm layers, or the whole model when
        that part cannot be cut out (BatchNorm inside a nested model). Run eagerly, a
        recurrent head steps through its sequence in Python: 5.5 of the 5.6 s this took
        per epoch for the default model (README "Training")."""
        try:
            return keras.Model(self.model.input, [layer.output for layer in layers])
        except (ValueError, AttributeError):
            return self.model

    def on_epoch_end(self, epoch, logs=None):
        if not self.layers:
            return
        momenta = [layer.momentum for layer in self.layers]
        try:
            for k, start in enumerate(range(0, len(self.batch), self.chunk)):
                for layer in self.layers:
                    layer.momentum = k / (k + 1)  # moving stats := mean of the chunks' stats so far
                self.feed(self.batch[start:start + self.chunk], training=True)
        finally:
            for layer, m in zip(self.layers, momenta):
                layer.momentum = m


class AveragedWeights(keras.callbacks.Callback):
    """Validate, checkpoint and keep the moving average of the weights (trainer.ema_momentum)
    rather than the latest ones; training itself goes on from the latest.

    The optimizer keeps the average (Keras' use_ema, updated inside the train step). At each
    epoch's end the model's weights and the optimizer's average slots are exchanged, so the
    callbacks after this one (BatchNorm re-estimate, validation, checkpoints) see the
    average; at the next epoch's start they are exchanged back. An epoch checkpoint thus
    holds the average in the model and the latest weights in the average slots: a resumed
    run starts `swapped` and the first exchange puts it exactly where the killed run was.
    Listed before PreciseBatchNorm, whose statistics must fit the averaged weights.
    """

    def __init__(self, swapped: bool = False):
        super().__init__()
        self.swapped = bool(swapped)

    def _optimizer(self):
        opt = self.model.optimizer
        return getattr(opt, "inner_optimizer", opt)  # a loss-scale wrapper averages in its inner optimizer

    def _exchange(self) -> None:
        opt = self._optimizer()
        for var, average in zip(opt._trainable_variables, opt._model_variables_moving_average):
            latest = keras.ops.convert_to_numpy(var)
            var.assign(average)
            average.assign(latest)
        self.swapped = not self.swapped

    def on_train_begin(self, logs=None):
        opt = self._optimizer()
        if not getattr(opt, "use_ema", False):
            raise ValueError("AveragedWeights needs an optimizer built with use_ema=True (trainer.ema_momentum)")
        # fit's end would copy the average slots over the model's weights (Keras' EMA
        # finalisation): with the average swapped in, those slots hold the latest weights, and
        # with the backbone still frozen the lists differ in length. The checkpoints hold
        # what is kept, so the finalisation is turned off.
        opt.finalize_variable_values = lambda var_list: None

    def on_epoch_begin(self, epoch, logs=None):
        if self.swapped:
            self._exchange()

    def on_epoch_end(self, epoch, logs=None):
        if not self.swapped:
            self._exchange()


def tensorboard(log_dir) -> keras.callbacks.TensorBoard:
    """Keras' TensorBoard logging (trainer.tensorboard=true) into log_dir."""
    try:
        import tensorboard  # noqa: F401  (tf.summary needs it; TensorFlow no longer installs it)
    except ImportError:
        raise ImportError("trainer.tensorboard=true needs the tensorboard package: "
                          "pip install tensorboard (or pip install -e '.[scale]')") from None
    return keras.callbacks.TensorBoard(log_dir=str(log_dir))
