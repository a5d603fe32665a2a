"""Train entry point: `python -m bearcat.train [overrides]`.

config -> data source -> preprocess -> tf.data -> mode -> backbone + head -> fit ->
evaluate on the test split -> MLflow. Returns `optimized_metric` for sweepers.
"""
from __future__ import annotations

import logging
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from bearcat import CONFIG_DIR, overrides
from bearcat.checks import (check_folder, fraction_setting, is_number, is_whole_number, number_setting,
                            whole_setting)
from bearcat.metrics import lower_is_better
from bearcat.saved_config import load_saved_config

log = logging.getLogger("bearcat.train")


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config an interrupted run was started with (its own output dir included)."""
    saved = Path(cfg.resume) / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no config.yaml there; pass the run's output folder")
    old = load_saved_config(saved)
    old.resume = cfg.resume
    return old


_ABSENT = object()


def resume_conflicts(cfg: DictConfig, overrides) -> list[str]:
    """The command-line settings given beside resume= that the run's saved config.yaml does
    not hold (a group chosen, a value changed): a resume continues the run as it was started,
    so they would be ignored without a word. Settings equal to the saved ones are fine."""
    saved_file = Path(cfg.resume) / "config.yaml"
    if not saved_file.is_file():  # resumed_config says so
        return []
    saved = load_saved_config(saved_file)

    def plain(value):
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    conflicts = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.split(".")[0].split("/")[0] == "hydra":
            continue
        now, then = OmegaConf.select(cfg, key, default=_ABSENT), OmegaConf.select(saved, key, default=_ABSENT)
        if now is _ABSENT or plain(now) != plain(then):  # absent: a preset of the global package (experiment, debug)
            conflicts.append(override if then is _ABSENT or OmegaConf.is_config(then) else
                             f"{override} (the run has {key}={then})")
    return conflicts


def check_resume_overrides(cfg: DictConfig, overrides) -> None:
    """Refuse `resume=RUN other=settings` that would change the run (`resume_conflicts`);
    `overrides` as typed (the command line's, or those given to bearcat.api.config)."""
    if not cfg.get("resume"):
        return
    conflicts = resume_conflicts(cfg, overrides)
    if conflicts:
        raise ValueError(f"resume={cfg.resume} continues the run with its own config.yaml, so these settings would "
                         f"be ignored: {', '.join(conflicts)}. Resume without them; or start a new run, from this "
                         f"one's weights with init_from={cfg.resume}")


@contextmanager
def tracked_run(cfg: DictConfig, experiment_id: str, ckpt_dir: Path, model, default_name: str, backbone: str):
    """The run's MLflow run around its training: started, or with `resume=` reopened and the
    last checkpoint restored into `model`; inside a multirun a child of the sweep's parent
    run, with the sweep's tags. Yields (run, state, initial_epoch); `state` is None for a new
    run, which logs its params and config here. The run ends FINISHED when the block
    completes, FAILED when it raises, KILLED on Ctrl-C."""
    from bearcat import tracking
    from bearcat.callbacks import read_state, resume_epoch
    from bearcat.sweeps import child_run_options

    state = read_state(ckpt_dir) if cfg.get("resume") else None
    sweep = child_run_options(experiment_id)
    run = tracking.start_run(experiment_id, run_id=(state or {}).get("mlflow_run_id"),
                             run_name=cfg.get("run_name") or default_name,
                             tags={"bearcat.mode": cfg.mode.name, "bearcat.backbone": backbone,
                                   "bearcat.output_dir": str(Path(cfg.paths.output_dir).resolve()), **sweep["tags"]},
                             parent_run_id=None if state else sweep["parent_run_id"])
    status = "FAILED"
    try:
        initial_epoch = resume_epoch(model, ckpt_dir, state, run.info.run_id)
        if state:  # the last committed epoch's metrics, in case the kill came before they were sent
            tracking.log_epoch_record(state, resend=True)
        else:  # a resumed run logged these when it started
            tracking.log_params(cfg)
            tracking.log_artifact(Path(cfg.paths.output_dir) / "config.yaml")
        yield run, state, initial_epoch
        status = "FINISHED"
    except KeyboardInterrupt:  # a second Ctrl-C (the first stops training gently), or one while testing
        status = "KILLED"
        raise
    finally:
        tracking.end_run(status)


def epoch_callbacks(cfg: DictConfig, train_images, val_metrics, schedule_callbacks: list, checkpointer,
                    monitor: str) -> list:
    """The per-epoch callbacks every mode trains with. Order matters: the averaged weights
    are swapped in (trainer.ema_momentum), BatchNorm statistics are re-estimated, val
    metrics computed and recorded, then the checkpoint commits the epoch with its record
    and sends the record to MLflow. A kill before the commit retrains
    the epoch, unlogged; after it, the resume sends the record again (stored once)."""
    from bearcat import tracking
    from bearcat.callbacks import (AveragedWeights, EarlyStopping, PreciseBatchNorm, TimeBudget, ValidationMetrics,
                                   tensorboard)
    from bearcat.optim.schedules import ResumablePlateau, TimeBudgetCosine

    for callback in schedule_callbacks:
        if isinstance(callback, ResumablePlateau):  # it commits its counts with the epoch, like early stopping
            callback.state = checkpointer.state
    callbacks = []
    if cfg.trainer.get("ema_momentum"):  # a restored epoch checkpoint holds the average in the model
        callbacks.append(AveragedWeights(swapped=bool(checkpointer.state.get("last"))))
    if cfg.trainer.bn_calibration_images:
        callbacks.append(PreciseBatchNorm(train_images, cfg.trainer.bn_calibration_images, cfg.trainer.seed,
                                          cfg.trainer.get("bn_calibration_chunk")))
    callbacks += [ValidationMetrics(val_metrics, int(cfg.trainer.batch_size)), *schedule_callbacks,
                  tracking.epoch_callback(checkpointer.state)]
    stopping = cfg.callbacks.early_stopping
    if stopping.patience:  # before the checkpointer, which commits its count with the epoch
        callbacks.append(EarlyStopping(monitor, stopping.patience, stopping.min_delta, checkpointer.state))
    callbacks.append(checkpointer)
    checkpointer.on_commit = tracking.log_epoch_record
    if cfg.trainer.get("max_minutes") and not any(isinstance(c, TimeBudgetCosine) for c in callbacks):
        callbacks.append(TimeBudget(cfg.trainer.max_minutes))
    if cfg.trainer.get("tensorboard"):
        callbacks.append(tensorboard(Path(cfg.paths.output_dir) / "tensorboard"))
    return callbacks


def training_stream(cfg: DictConfig, images, targets, augment=None):
    """The endless, shuffled training stream of every mode, seeded by trainer.seed, as a
    function of the step to begin at: a resumed run's picks up where the stopped run was
    (past the images of the steps done)."""
    from bearcat.data.pipeline import make_dataset

    batch_size = int(cfg.trainer.batch_size)
    return lambda step: make_dataset(images, targets, batch_size, shuffle=True, seed=cfg.trainer.seed,
                                     augment=augment, repeat=True, start=step * batch_size)


def fit_unless_done(model, stream, cfg: DictConfig, callbacks: list, checkpointer, initial_epoch: int,
                    steps_per_epoch: int) -> None:
    """`fit` from `initial_epoch`, unless this run's training has already ended (a resume
    after a kill during testing goes straight back to testing). A resumed run's time budget
    counts the training time its earlier attempts used. `stream(step)`: the training data
    from that step on (`training_stream`). A run stopped part-way through an epoch (Ctrl-C)
    resumes with the rest of that epoch, a `fit` of its own, so it trains on the batches an
    uninterrupted run would have, no fewer."""
    from bearcat.callbacks import StopOnInterrupt, part_steps

    part = part_steps(checkpointer.state)
    if part >= steps_per_epoch:  # fewer training images than when stopped: a fit of the rest would never end
        log.warning("the part-epoch stopped after %d steps, but an epoch now has %d (the training split has "
                    "shrunk): epoch %d counts as done", part, steps_per_epoch, initial_epoch + 1)
        checkpointer.state.pop("part_steps")
        checkpointer.state["epoch"] = initial_epoch = initial_epoch + 1
        part = 0
    if checkpointer.state.get("training_done") or initial_epoch >= cfg.trainer.epochs:
        log.info("training had ended (epoch %d): testing the best checkpoint", initial_epoch)
        if not checkpointer.state.get("training_done"):  # killed before it said so, or the part-epoch above
            checkpointer.finish()
        return
    from bearcat import tracking

    action = on_interrupt(cfg)
    checkpointer.stopper = stopper = StopOnInterrupt(abort=action == "abort")
    callbacks = [*callbacks, stopper]
    with stopper if action else nullcontext():
        if part:  # the rest of the part-epoch, then the whole ones
            fit_epochs(model, stream(initial_epoch * steps_per_epoch + part), cfg, callbacks, checkpointer,
                       initial_epoch, initial_epoch + 1, steps_per_epoch - part)
            initial_epoch += 1
        if not (part and model.stop_training) and initial_epoch < cfg.trainer.epochs:
            fit_epochs(model, stream(initial_epoch * steps_per_epoch), cfg, callbacks, checkpointer,
                       initial_epoch, cfg.trainer.epochs, steps_per_epoch)
    if stopper.pressed:
        state = checkpointer.state
        cut = part_steps(state)  # the steps of the epoch this Ctrl-C cut short (0: it ended whole)
        epoch, best = state.get("epoch", 0) + (1 if cut else 0), state.get("best_epoch")
        state["interrupted_at_epoch"] = epoch
        tracking.set_tags({"bearcat.interrupted": f"Ctrl-C in epoch {epoch} of {cfg.trainer.epochs}"})
        steps = f" (after {cut} of its {steps_per_epoch} steps)" if cut else ""
        log.warning("stopped by Ctrl-C in epoch %d of %d%s: testing the best epoch so far (epoch %s); "
                    "python -m bearcat.train %s trains on from there", epoch, cfg.trainer.epochs, steps, best,
                    overrides.command_arg("resume", cfg.paths.output_dir))
    elif "interrupted_at_epoch" in checkpointer.state:  # resumed after a Ctrl-C, now trained to its end
        tracking.set_tags({"bearcat.interrupted": f"Ctrl-C in epoch {checkpointer.state['interrupted_at_epoch']} "
                                                  f"of {cfg.trainer.epochs}, then resumed to the end"})
    checkpointer.finish(done=not stopper.pressed)


def fit_epochs(model, data, cfg: DictConfig, callbacks: list, checkpointer, initial_epoch: int, epochs: int,
               steps: int) -> None:
    """One `fit`, its time budget counting the training time used before it."""
    from bearcat.callbacks import TimeBudget
    from bearcat.optim.schedules import TimeBudgetCosine

    for callback in callbacks:
        if isinstance(callback, (TimeBudget, TimeBudgetCosine)):
            callback.used_before = checkpointer.trained_seconds()
    model.fit(data, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, steps_per_epoch=steps,
              verbose=progress_display(cfg.trainer.verbose), shuffle=False)  # the data shuffles itself


def on_interrupt(cfg: DictConfig) -> str | None:
    """What Ctrl-C does to training (`StopOnInterrupt`), at the end of a batch: "stop" a
    single run gently, or "abort" it. A sweep aborts: a gentle stop would end one job and go
    on to the next. So do several machines (trainer.strategy=multi_worker): one worker
    stopping early would leave the others waiting for it (the time budget is refused there
    for the same reason). None leaves Ctrl-C to Python: off the main thread, which cannot
    handle signals, and in a command started with Ctrl-C ignored (a shell script's background
    job, `cmd &`), which goes on ignoring it, as Python itself does."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return None
    if cfg.trainer.get("strategy") == "multi_worker":
        return "abort"
    return "abort" if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN else "stop"


def progress_display(setting, stream=None) -> int:
    """Keras `verbose` for trainer.verbose. auto: a progress bar on a terminal, else one line
    per epoch, because a bar written to a file is redrawn there at every step (a 2-minute
    swust run wrote 272 KB of it to its log)."""
    if str(setting) == "auto":
        stream = sys.stdout if stream is None else stream
        return 1 if getattr(stream, "isatty", lambda: False)() else 2
    return int(setting)


TEXT_MONITORS = ("val_accuracy", "val_char_accuracy", "val_cer", "val_loss")


def plan_epochs(cfg: DictConfig, steps_per_epoch: int) -> int:
    """Resolve trainer.epochs=auto in `cfg` (everything after reads a number; config.yaml
    keeps `auto`, so a resume plans alike): auto_epochs, raised on a small set to make
    auto_steps steps; then callbacks.early_stopping.patience=auto, a share of those epochs
    (never below patience_min, so a short run is not cut shorter than a fixed patience would).
    Returns the epochs."""
    t = cfg.trainer
    if str(t.epochs) == "auto":
        epochs = max(int(t.auto_epochs), math.ceil(int(t.auto_steps) / max(steps_per_epoch, 1)))
        log.info("trainer.epochs=auto: %d epochs of %d steps (at least %d epochs and %d steps)", epochs,
                 steps_per_epoch, int(t.auto_epochs), int(t.auto_steps))
        t.epochs = epochs
    stopping = cfg.callbacks.early_stopping
    if str(stopping.patience) == "auto":  # a share of the run, so a small set's short epochs get as much
        stopping.patience = max(int(stopping.patience_min), math.ceil(int(t.epochs) * float(stopping.patience_share)))
        log.info("callbacks.early_stopping.patience=auto: %d epochs (%s of %d, at least %d)", stopping.patience,
                 stopping.patience_share, int(t.epochs), int(stopping.patience_min))
    return int(t.epochs)


def check_settings(cfg: DictConfig) -> None:
    """Settings that would otherwise fail late (after the data is decoded) or quietly."""
    t = cfg.trainer
    if t.get("freeze_backbone_epochs") and not cfg.get("init_from"):
        raise ValueError(f"trainer.freeze_backbone_epochs={t.freeze_backbone_epochs} would freeze a freshly "
                         "initialised backbone: set init_from=RUN (an earlier run's weights) or set it to 0")
    if not (str(t.get("verbose")) == "auto" or is_number(t.get("verbose")) and t.verbose in (0, 1, 2)):
        raise ValueError(f"trainer.verbose={t.get('verbose')}: 0 (silent), 1 (a bar), 2 (a line per epoch) or auto")
    if str(t.get("epochs")) != "auto" and not is_whole_number(t.get("epochs")):
        raise ValueError(f"trainer.epochs={t.get('epochs')}: a whole number of epochs, or auto")
    for key, low in (("batch_size", 1), ("epochs", 1), ("auto_epochs", 1), ("auto_steps", 0),
                     ("bn_calibration_images", 0)):
        if t.get(key) is not None and t[key] != "auto" and int(t[key]) < low:
            raise ValueError(f"trainer.{key}={t[key]}: must be at least {low}")
    stopping = cfg.callbacks.early_stopping
    patience, share, least = stopping.get("patience"), stopping.get("patience_share"), stopping.get("patience_min")
    if str(patience) != "auto" and not (is_whole_number(patience) and patience >= 0):
        raise ValueError(f"callbacks.early_stopping.patience={patience}: a whole number of epochs (0 = never), or auto")
    if str(patience) == "auto" and not (is_number(share) and 0 < share <= 1):
        raise ValueError(f"callbacks.early_stopping.patience_share={share}: a number above 0, at most 1")
    if str(patience) == "auto" and not (is_whole_number(least) and least >= 1):
        raise ValueError(f"callbacks.early_stopping.patience_min={least}: a whole number of epochs, at least 1")
    if t.get("bn_calibration_chunk") is not None and int(t.bn_calibration_chunk) < 1:
        raise ValueError(f"trainer.bn_calibration_chunk={t.bn_calibration_chunk}: at least 1, or null")
    ema = t.get("ema_momentum")
    if ema is not None and not (is_number(ema) and 0 < ema < 1):
        raise ValueError(f"trainer.ema_momentum={ema}: a number between 0 and 1 (e.g. 0.99), or null")
    m = cfg.mode
    for key in ("dropout", "small_set_dropout"):  # Keras would only say "rate must be a scalar tensor..."
        value = m.get(key)
        if value is not None and not (key == "dropout" and str(value) == "auto") and \
                not (is_number(value) and 0 <= value < 1):
            raise ValueError(f"mode.{key}={value}: a fraction from 0 up to (not including) 1"
                             + (", or auto" if key == "dropout" else ""))
    if str(m.get("dropout")) == "auto" and not (is_whole_number(m.get("small_set_images"))
                                                 and m.small_set_images >= 0):
        raise ValueError(f"mode.small_set_images={m.get('small_set_images')}: a whole number of training images "
                         "(mode.dropout=auto uses mode.small_set_dropout below it)")
    if m.get("max_length") is not None and not (is_whole_number(m.max_length) and m.max_length >= 1):
        raise ValueError(f"mode.max_length={m.max_length}: a whole number of characters, at least 1, "
                         "or null (the longest label)")
    unroll = m.get("rnn_unroll")
    if unroll is not None and not isinstance(unroll, bool) and str(unroll) != "auto":
        raise ValueError(f"mode.rnn_unroll={unroll}: true, false or auto")
    if str(unroll) == "auto" and not (is_whole_number(m.get("unroll_min_steps")) and m.unroll_min_steps >= 0):
        raise ValueError(f"mode.unroll_min_steps={m.get('unroll_min_steps')}: a whole number of training steps "
                         "(mode.rnn_unroll=auto unrolls from it)")
    lr = cfg.optimizer.get("learning_rate")
    if not (is_number(lr) and lr > 0):
        raise ValueError(f"optimizer.learning_rate={lr}: a number above 0 (e.g. 0.001)")
    if "train_size" in cfg.dataset:  # a generated set: its sizes, before anything is drawn
        from bearcat.data.sources import split_sizes

        split_sizes(cfg.dataset.train_size, cfg.dataset.val_size, cfg.dataset.test_size, least=1)
    check_folder("dataset.root", cfg.dataset.get("root"))  # the commonest typo: told before TensorFlow loads
    if t.get("max_minutes") is not None and not (is_number(t.max_minutes) and t.max_minutes > 0):
        raise ValueError(f"trainer.max_minutes={t.max_minutes}: a positive number of minutes, or null")
    check_parts(cfg)
    if cfg.mode.name != "efficientdet" and cfg.callbacks.monitor not in TEXT_MONITORS:
        raise ValueError(f"callbacks.monitor={cfg.callbacks.monitor}: choose one of {', '.join(TEXT_MONITORS)}")
    # a misspelt or unreported metric would otherwise end the run (or a sweep's first job) after its training
    names = run_metric_names(cfg)
    if cfg.optimized_metric not in names:
        detection = cfg.mode.name == "efficientdet"
        hint = (" (experiment=click sets best_val_map; test_click_success needs characters named: "
                "mode.recogniser or mode.class_mode=per_char)") if detection else ""
        raise ValueError(f"optimized_metric={cfg.optimized_metric}: not a metric of this "
                         f"{'detection ' if detection else ''}run; choose one of {names}{hint}")


def check_parts(cfg: DictConfig) -> None:
    """The optimizer's and scheduler's numbers, the seed, preprocessing, precision and
    strategy: each was checked only after TensorFlow loaded (15-17 s), and a text number
    reached Keras as "Cast string to float is not supported" or float()'s traceback."""
    from bearcat.distribute import strategy_name
    from bearcat.experiment import precision_name, preprocess_config

    for key, value in cfg.optimizer.items():
        if key != "_target_" and value is not None and not isinstance(value, bool):
            number_setting(f"optimizer.{key}", value)
    s = cfg.scheduler
    for key in ("warmup_epochs", "t_mul", "m_mul", "factor", "patience", "min_lr"):
        if key in s:
            number_setting(f"scheduler.{key}", s[key])
    if "alpha" in s:
        fraction_setting("scheduler.alpha", s.alpha)
    if s.get("cycle_epochs") is not None and not (is_number(s.cycle_epochs) and s.cycle_epochs > 0):
        raise ValueError(f"scheduler.cycle_epochs={s.cycle_epochs}: a number of epochs above 0, or null")
    whole_setting("trainer.seed", cfg.trainer.seed, 0)
    precision_name(cfg.trainer.get("precision"))
    strategy_name(cfg.trainer)
    preprocess_config(cfg)  # its own checks (sizes, channels, gray, ...)


def run_metric_names(cfg: DictConfig) -> list[str]:
    """What a run returns, before it trains. A text or tile run: its test_* metrics, named
    from a one-image probe of the same function, and best_<callbacks.monitor>."""
    if cfg.mode.name == "efficientdet":
        from bearcat.detection.train import detection_metric_names

        return detection_metric_names(cfg)
    from bearcat.experiment import test_metrics
    from bearcat.modes.base import mode_class

    # the probe's scoring reads only the class attribute `text`, so the mode's class stands in for a mode
    angle = {"angle": 0.0} if cfg.mode.get("angle") else {}  # rotation models add angle errors
    probe = test_metrics(mode_class(cfg.mode.name), ["0"], [{"result": "0", "confidence": 1.0, "top5": ["0"], **angle}],
                         ms=0.0, low_confidence=0.5)
    return sorted([*probe, f"best_{cfg.callbacks.monitor}"])


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, test and bundle one run (see the module docstring); returns its metrics."""
    if cfg.get("resume"):
        cfg = resumed_config(cfg)
    check_settings(cfg)  # before TensorFlow loads (10-15 s here): a bad setting is told at once
    # init_from=RUN_ID is fetched once, into a folder of its own; a run without init_from makes
    # none (a run killed with -9 cannot remove it: an empty one was left in /tmp each time)
    folder = tempfile.TemporaryDirectory(prefix="bearcat-init-from-") if cfg.get("init_from") else nullcontext("")
    with folder as fetched:
        return train_in(cfg, fetched)


def train_in(cfg: DictConfig, fetched: str) -> dict[str, float]:
    """`train` with its settings checked (a resumed run's own config)."""
    import keras

    from bearcat import tracking
    from bearcat.analysis import write_predictions
    from bearcat.bundle import load_keras, write_bundle
    from bearcat.callbacks import Checkpointer
    from bearcat.data.augment import build_augment
    from bearcat.distribute import build_strategy, is_chief, prepare_multi_worker_fit
    from bearcat.experiment import (build_model, build_optimizer, build_vocab_and_mode, compile_model, float32_model,
                                    load_data, load_sources, outputs, plan_unroll, predict, preprocess_config,
                                    resolve_precision, score, test_metrics)
    from bearcat.gallery import prediction_gallery, training_preview
    from bearcat.optim.schedules import build_schedule
    from bearcat.warmstart import FreezeBackbone, earlier_vocabulary, log_warm_start, warm_start

    out_dir = Path(cfg.paths.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.get("resume"):
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    strategy = build_strategy(cfg.trainer)  # first: trainer.cpu_devices must come before TensorFlow starts
    chief = cfg.trainer.get("strategy") != "multi_worker" or is_chief()  # only the chief logs to MLflow
    keras.utils.set_random_seed(cfg.trainer.seed)
    if cfg.mode.name == "efficientdet":  # boxes, not strings: its own data and scoring
        from bearcat.detection.train import train_detection

        return train_detection(cfg)

    # MLflow first: the vocabulary may come from init_from, which may be a run id
    experiment_id = tracking.setup(cfg.mlflow, uri=None if chief else f"sqlite:///{out_dir.resolve()}/worker_mlflow.db")
    splits = load_sources(cfg)
    mode = build_vocab_and_mode(cfg, splits, earlier_vocabulary(cfg, out_dir, fetched))
    if str(cfg.mode.get("dropout")) == "auto":  # the number used, for MLflow and warm starts (config.yaml keeps auto)
        cfg.mode.dropout = mode.options["dropout"]
    data = load_data(cfg, splits, mode)
    train_split, val_split, test_split = (data.loaded[s] for s in ("train", "val", "test"))
    log.info("images: train %d, val %d, test %d; %s", len(train_split), len(val_split), len(test_split),
             f"vocabulary {len(mode.vocab)} characters; max length {mode.max_length}" if mode.text
             else f"{len(mode.vocab)} classes")

    batch_size = int(cfg.trainer.batch_size)  # global: split over the strategy's replicas
    steps_per_epoch = math.ceil(len(train_split) / batch_size)
    plan_unroll(cfg, mode, plan_epochs(cfg, steps_per_epoch) * steps_per_epoch)
    precision = resolve_precision(cfg.trainer.get("precision"))
    log.info("precision: %s (trainer.precision=%s)", precision, cfg.trainer.get("precision"))
    with strategy.scope():  # variables of model and optimizer on every replica
        model = build_model(cfg, mode, precision)
        lr, schedule_callbacks = build_schedule(cfg.scheduler, cfg.optimizer.learning_rate, steps_per_epoch,
                                                cfg.trainer.epochs, cfg.trainer.get("max_minutes"))
        optimizer = build_optimizer(cfg, lr)
        loss_fn = mode.loss(xla=bool(cfg.trainer.jit_compile))
        compile_model(model, optimizer, loss_fn, cfg.trainer.jit_compile)

    augment = build_augment(cfg.augmentation, seed=cfg.trainer.seed)  # training split only
    val_targets = mode.encode(val_split.labels)
    prepare_multi_worker_fit(model, strategy, train_split.images, mode.encode(train_split.labels[:2]))

    def val_metrics() -> dict:
        probs = outputs(model, val_split.images)
        results = mode.decode(probs)
        loss = float(keras.ops.convert_to_numpy(keras.ops.mean(loss_fn(val_targets, probs))))
        return {"loss": loss, **score(mode, val_split.labels, results)}

    with tracked_run(cfg, experiment_id, ckpt_dir, model, f"{cfg.mode.name}-{cfg.backbone.name}",
                     cfg.backbone.name) as (run, state, initial_epoch):
        if not (state or {}).get("last") and cfg.get("init_from"):  # an earlier run's weights, where they fit
            # (bearcat/warmstart.py), unless a resume restored a checkpoint (a part-epoch's too)
            settings = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["preprocess", "mode"]), resolve=True)
            log_warm_start(warm_start(model, mode.vocab.chars, cfg.init_from, fetched, settings), out_dir)
        if not state:
            tracking.set_tags({"bearcat.precision": precision})  # what trainer.precision=auto chose
            tracking.log_artifact(training_preview(train_split.images, train_split.labels, out_dir / "preview.png",
                                                   augment, seed=cfg.trainer.seed))  # what the model sees
            tracking.log_metrics({"replicas": strategy.num_replicas_in_sync}
                                 | {f"data_{s}_images": len(data.loaded[s]) for s in data.loaded}
                                 | {f"skipped_{k.replace(' ', '_')}": v for k, v in data.skipped.items()})
            with tempfile.TemporaryDirectory() as tmp:
                mode.vocab.save(Path(tmp) / "vocabulary.json")
                tracking.log_artifact(Path(tmp) / "vocabulary.json")
        freeze = FreezeBackbone(model, cfg.trainer.get("freeze_backbone_epochs") or 0)
        freeze.start(initial_epoch)  # after a resume restored the optimizer state
        model.summary(print_fn=log.info)

        checkpointer = Checkpointer(ckpt_dir, cfg.callbacks.monitor, run.info.run_id, state, steps_per_epoch)
        callbacks = [freeze, *epoch_callbacks(cfg, train_split.images, val_metrics, schedule_callbacks, checkpointer,
                                              cfg.callbacks.monitor)]
        stream = training_stream(cfg, train_split.images, mode.encode(train_split.labels), augment)
        fit_unless_done(model, stream, cfg, callbacks, checkpointer, initial_epoch, steps_per_epoch)
        if cfg.trainer.get("tensorboard"):
            tracking.log_artifacts(out_dir / "tensorboard", "tensorboard")

        best = ckpt_dir / "best.keras"
        if best.is_file():  # test the epoch that did best on val, not merely the last one
            model = load_keras(best)
        model = float32_model(cfg, mode, model)  # tested, exported and served as float32 whatever it trained in
        results, ms = predict(model, mode, test_split.images)
        metrics = test_metrics(mode, test_split.labels, results, ms, cfg.low_confidence)
        metrics |= checkpointer.best_metrics()  # e.g. best_val_accuracy: what sweeps should select on
        tracking.log_metrics(metrics)
        log.info("test metrics: %s", {k: round(v, 4) for k, v in metrics.items()})

        gallery = prediction_gallery(test_split.images, test_split.labels, results,
                                     out_dir / "predictions" / "test_gallery.png")
        tracking.log_artifact(gallery, "predictions")
        # every test image's reading: what `bearcat.compare` pairs two runs by
        tracking.log_artifact(write_predictions(out_dir / "predictions" / "test_predictions.csv",
                                                list(test_split.paths), test_split.labels, results), "predictions")
        bundle = write_bundle(out_dir / "model", model, mode, preprocess_config(cfg),
                              {"mlflow_run_id": run.info.run_id})
        tracking.log_artifacts(bundle, "model")
    log_finished(cfg, out_dir, run.info.run_id)
    metrics["mlflow_run_id"] = run.info.run_id
    return metrics


def log_finished(cfg: DictConfig, out_dir: Path, run_id: str, also: str = "") -> None:
    """A run's last line: where it is and the commands to run next (then `also`, a mode's own).
    The hints must work as given: evaluate and export find the run in this store (its
    non-default mlflow.* settings repeated), a run's bundle holds Keras only, serve defaults to ONNX."""
    from bearcat import tracking

    store = "".join(" " + arg for arg in tracking.store_overrides(cfg.mlflow))
    log.info("finished: run folder %s, MLflow run %s. Next: python -m bearcat.evaluate run_id=%s%s | "
             "python -m bearcat.export run_id=%s format=onnx%s, then python -m bearcat.serve "
             "model=outputs/exports/%s (or at once: python -m bearcat.serve %s runtime=keras)%s | "
             "mlflow ui --backend-store-uri %s", out_dir, run_id, run_id, store, run_id, store, run_id,
             overrides.command_arg("model", out_dir), also, shlex.quote(tracking.current_uri()))


def sweep_directions() -> dict[str, str]:
    """{config key: maximize | minimize}: how this multirun ranks optimized_metric (the sweep
    summary's callback and, with hparams_search=optuna, the sweeper); {} outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    found = {}
    summary = hc.callbacks.get("mlflow_sweep")
    if summary is not None and summary.get("direction") is not None:
        found["hydra.callbacks.mlflow_sweep.direction"] = str(summary.direction)
    if isinstance(hc.sweeper.get("direction"), str):  # Optuna's; a list is a multi-objective study
        found["hydra.sweeper.direction"] = hc.sweeper.direction
    return found


def check_sweep_direction(metric: str, directions: dict[str, str]) -> None:
    """A sweep that maximizes a loss or an error rate (or minimizes an accuracy) would pick its
    worst job as the best without a word: stop before the first job trains."""
    want = "minimize" if lower_is_better(metric) else "maximize"
    for key, value in directions.items():
        if value != want:
            raise ValueError(f"{key}={value} with optimized_metric={metric}, which is better "
                             f"{'lower' if want == 'minimize' else 'higher'}: the sweep would rank its worst "
                             f"job first; set {key}={want}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@overrides.plain_errors
def main(cfg: DictConfig) -> float | None:
    check_sweep_direction(cfg.optimized_metric, sweep_directions())
    from hydra.core.hydra_config import HydraConfig

    check_resume_overrides(cfg, HydraConfig.get().overrides.task)
    metrics = train(cfg)
    if cfg.optimized_metric not in metrics:
        raise ValueError(f"optimized_metric={cfg.optimized_metric}: not a metric of this run; "
                         f"choose one of {sorted(k for k in metrics if k != 'mlflow_run_id')}")
    return metrics[cfg.optimized_metric]


def exit_now() -> None:
    """End a finished command without the interpreter's own teardown: what the interpreter
    does first at exit still runs, in its order (wait for threads and run the threading exit
    hooks, then Python's exit handlers: logs flushed, MLflow and multiprocessing cleaned up),
    then the process exits. Why: after generating captchas, tearing down took 7-17 s of the
    default run's 10 minutes (scripts/bench_ctc.py prints it), against about 2 s otherwise.
    The threading step matters: joblib's sweep workers are told to stop there; skipped, the
    multiprocessing exit handler waited for them to idle out (5 minutes)."""
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cli() -> None:
    """`python -m bearcat.train` and the `bearcat-train` command."""
    overrides.run(main, "train")
    exit_now()


if __name__ == "__main__":
    cli()
