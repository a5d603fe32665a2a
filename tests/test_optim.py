"""Optimizers and learning-rate schedules: AdaBelief against a NumPy reference of the
published update rule, the optimizer configs, and each scheduler's curve at known steps."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from hydra.utils import instantiate

from bearcat.optim.adabelief import AdaBelief
from bearcat.optim.schedules import StepSchedule, build_schedule


def adabelief_reference(theta, grads, lr, beta_1, beta_2, epsilon, weight_decay, rectify):
    """AdaBelief (Zhuang et al. 2020, Algorithm 2) with decoupled weight decay and RAdam's
    rectification (Liu et al. 2020, Algorithm 2), in float64, one array per step."""
    theta = np.array(theta, np.float64)
    m = np.zeros_like(theta)
    s = np.zeros_like(theta)
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    for t, g in enumerate(grads, start=1):
        theta = theta - lr * weight_decay * theta
        m = beta_1 * m + (1 - beta_1) * g
        s = beta_2 * s + (1 - beta_2) * (g - m) ** 2 + epsilon
        m_hat = m / (1 - beta_1 ** t)
        s_hat = s / (1 - beta_2 ** t)
        adaptive = m_hat / (np.sqrt(s_hat) + epsilon)
        if not rectify:
            theta = theta - lr * adaptive
            continue
        rho_t = rho_inf - 2 * t * beta_2 ** t / (1 - beta_2 ** t)
        if rho_t > 4:
            r_t = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            theta = theta - lr * r_t * adaptive
        else:
            theta = theta - lr * m_hat
    return theta


@pytest.mark.parametrize("rectify,weight_decay,beta_2", [
    (False, 0.0, 0.999), (True, 0.0, 0.999), (False, 0.05, 0.999), (True, 0.05, 0.99)])
def test_adabelief_matches_reference(rectify, weight_decay, beta_2):
    rng = np.random.default_rng(7)
    start = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    steps = 12  # with beta_2 = 0.999 rho_t passes 4 at step 5: both rectify branches run
    grads = [[rng.normal(size=w.shape) + 0.3 for w in start] for _ in range(steps)]
    lr, eps = 0.01, 1e-8
    opt = AdaBelief(learning_rate=lr, beta_1=0.9, beta_2=beta_2, epsilon=eps, rectify=rectify,
                    weight_decay=weight_decay or None)
    variables = [keras.Variable(w.astype("float32")) for w in start]
    for step in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g.astype("float32")), v) for g, v in zip(step, variables)])
    for i, w in enumerate(start):
        expected = adabelief_reference(w, [step[i] for step in grads], lr, 0.9, beta_2, eps, weight_decay, rectify)
        got = keras.ops.convert_to_numpy(variables[i])
        assert np.abs(expected - w).max() > 1e-3  # the variables did move
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_adabelief_rectify_changes_early_steps():
    """The first steps differ with and without rectification (momentum SGD vs adaptive)."""
    moved = {}
    for rectify in (False, True):
        v = keras.Variable(np.zeros(3, "float32"))
        opt = AdaBelief(learning_rate=0.1, rectify=rectify)
        opt.apply_gradients([(keras.ops.convert_to_tensor(np.array([1.0, -2.0, 0.5], "float32")), v)])
        moved[rectify] = keras.ops.convert_to_numpy(v)
    # step 1: m_hat = g, s_hat = (g - 0.1 g)^2, so the adaptive step is lr * sign(g) / 0.9;
    # rectified (rho_1 = 1 <= 4): momentum SGD, lr * m_hat = lr * g
    np.testing.assert_allclose(moved[False], np.array([-1, 1, -1]) * 0.1 / 0.9, rtol=1e-4)
    np.testing.assert_allclose(moved[True], [-0.1, 0.2, -0.05], rtol=1e-4)


def test_adabelief_config_round_trip(make_cfg):
    cfg = make_cfg(["optimizer=adabelief"])
    opt = instantiate(cfg.optimizer)
    assert isinstance(opt, AdaBelief) and opt.rectify and opt.weight_decay == pytest.approx(1e-4)
    again = AdaBelief.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    rebuilt = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(rebuilt, AdaBelief)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lion", "adabelief"])
def test_optimizer_configs_minimise(make_cfg, name):
    """Each optimizer config, compiled the way training does it (slots built before the first
    step), lowers a small least-squares loss."""
    from bearcat.experiment import compile_model

    cfg = make_cfg([f"optimizer={name}"])
    opt = instantiate(cfg.optimizer, learning_rate=0.05)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    compile_model(model, opt, "mse")
    assert opt.built and opt.iterations.numpy() == 0  # built eagerly, nothing applied yet
    slots = len(opt.variables)
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.5 * before
    assert len(opt.variables) == slots  # fit used the slots built up front, made no others


def lr_at(schedule, step):
    """The schedule at `step`, after checking its NumPy value (what training sets) against
    its keras.ops graph (what an optimizer given the schedule itself would compute)."""
    graph = float(keras.ops.convert_to_numpy(schedule(step)))
    assert schedule.value(step) == pytest.approx(graph, rel=1e-5, abs=1e-9)
    return graph


def test_cosine_curve(make_cfg):
    cfg = make_cfg(["scheduler=cosine", "scheduler.warmup_epochs=1", "scheduler.alpha=0.01",
                    "scheduler.cycle_epochs=null", "scheduler.restarts=false"])  # one cosine after the warm-up
    first_lr, (stepper,) = build_schedule(cfg.scheduler, 0.1, steps_per_epoch=10, epochs=5)
    assert isinstance(stepper, StepSchedule) and first_lr == pytest.approx(0.01)
    schedule = stepper.schedule
    assert lr_at(schedule, 0) == pytest.approx(0.01)     # warm-up: base * (step + 1) / 10
    assert lr_at(schedule, 4) == pytest.approx(0.05)
    assert lr_at(schedule, 10) == pytest.approx(0.1)     # peak right after warm-up
    assert lr_at(schedule, 30) == pytest.approx(0.1 * (0.99 * 0.5 + 0.01), rel=1e-5)  # half-way down
    assert lr_at(schedule, 50) == pytest.approx(0.001, rel=1e-4)  # the floor: alpha x base
    assert lr_at(schedule, 80) == pytest.approx(0.001, rel=1e-4)  # and it stays there


def test_cosine_restarts_curve(make_cfg):
    cfg = make_cfg(["scheduler=cosine_restarts", "scheduler.warmup_epochs=1", "scheduler.cycle_epochs=3",
                    "scheduler.t_mul=2", "scheduler.m_mul=0.8", "scheduler.alpha=0.01"])  # cycles 3, 6, 12 epochs
    _, (stepper,) = build_schedule(cfg.scheduler, 0.1, steps_per_epoch=10, epochs=20)
    schedule = stepper.schedule
    assert schedule.restarts
    assert lr_at(schedule, 10) == pytest.approx(0.1)                      # cycle 1 starts at the peak
    assert lr_at(schedule, 25) == pytest.approx(0.1 * (0.99 * 0.5 + 0.01), rel=1e-4)  # its middle
    assert lr_at(schedule, 39) < 0.003                                     # its end, near the floor
    assert lr_at(schedule, 40) == pytest.approx(0.08, rel=1e-4)            # restart: peak x 0.8
    assert lr_at(schedule, 70) == pytest.approx(0.08 * (0.99 * 0.5 + 0.01), rel=1e-4)  # middle of 6 epochs
    assert lr_at(schedule, 100) == pytest.approx(0.064, rel=1e-4)          # second restart: x 0.8 again


def test_step_schedule_sets_the_rate_before_each_training_step(make_cfg):
    """Training sets the learning rate once per step from the schedule; the optimizer holds a
    plain rate, so its update graph does not evaluate the schedule once per variable."""
    cfg = make_cfg(["scheduler=cosine", "scheduler.warmup_epochs=1", "scheduler.alpha=0.01"])
    first_lr, (stepper,) = build_schedule(cfg.scheduler, 0.1, steps_per_epoch=4, epochs=3)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(first_lr), loss="mse")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    x = np.zeros((16, 2), "float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=3, verbose=0, shuffle=False, callbacks=[stepper, Record()])
    assert seen == pytest.approx([stepper.schedule.value(step) for step in range(12)], rel=1e-6)
    assert seen[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # the warm-up epoch, then the cosine
    assert seen[-1] < seen[4]
    assert not isinstance(model.optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule)


def test_constant_and_plateau(make_cfg):
    lr, callbacks = build_schedule(make_cfg(["scheduler=constant"]).scheduler, 0.05, 10, 5)
    assert lr == 0.05 and callbacks == []

    cfg = make_cfg(["scheduler=plateau", "scheduler.factor=0.5", "scheduler.patience=2", "scheduler.min_lr=1e-5"])
    lr, (callback,) = build_schedule(cfg.scheduler, 0.01, 10, 5)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    callback.set_model(model)
    callback.on_train_begin()
    seen = []
    for epoch, val_loss in enumerate([1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.8]):
        callback.on_epoch_end(epoch, {"val_loss": val_loss})
        seen.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    # no improvement after epoch 1: halved after the 2nd epoch without (patience 2, epoch 3),
    # and again 2 epochs later (epoch 5)
    assert seen == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025, 0.0025])


def test_unknown_scheduler_is_named(make_cfg):
    cfg = make_cfg(["scheduler=constant", "scheduler.name=linear"])
    with pytest.raises(ValueError, match="scheduler.name=linear"):
        build_schedule(cfg.scheduler, 0.1, 10, 5)
    # shrinking cycles run out (the curve was NaN past their sum); a zero peak factor is no schedule
    for bad, message in (("scheduler.t_mul=0.5", "scheduler.t_mul=0.5"), ("scheduler.m_mul=0", "scheduler.m_mul=0")):
        with pytest.raises(ValueError, match=message):
            build_schedule(make_cfg(["scheduler=cosine_restarts", bad]).scheduler, 0.1, 10, 30)


def test_plateau_keeps_counting_across_a_resume(make_cfg, tmp_path):
    """scheduler=plateau (patience 2, factor 0.5) halves the rate after epochs 4 and 8 of these
    val_loss figures. Killed after epoch 3 (one epoch waited) or 5 (after a halving) and resumed
    from state.json, the rates of every epoch are the uninterrupted run's."""
    from bearcat.callbacks import Checkpointer, read_state, restore_last
    from bearcat.train import epoch_callbacks, plan_epochs

    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85]  # val_loss of epochs 1-8
    cfg = make_cfg(["scheduler=plateau", "trainer.bn_calibration_images=0"])  # no images to calibrate on
    plan_epochs(cfg, 1000)  # as training does before its callbacks: epochs and early stopping's patience (30, 6)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")

    def fit(folder, epochs, state=None):
        keras.utils.set_random_seed(0)
        lr, (plateau,) = build_schedule(cfg.scheduler, 0.01, 1, 8)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
        if state:
            restore_last(model, folder, state)
        ckpt = Checkpointer(folder, "val_accuracy", state=state)
        epoch_callbacks(cfg, [], None, [plateau], ckpt, "val_accuracy")  # hands it the checkpointer's state
        assert plateau.state is ckpt.state
        rates = []
        score = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_loss=losses[epoch]))
        record = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: rates.append(round(float(model.optimizer.learning_rate), 6)))
        model.fit(x, y, epochs=epochs, initial_epoch=int((state or {}).get("epoch", 0)), verbose=0,
                  callbacks=[score, plateau, record, ckpt])
        return rates

    whole = fit(tmp_path / "whole", 8)
    assert whole == [0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.005, 0.0025]
    for kill in (3, 5):
        folder = tmp_path / f"killed{kill}"
        first = fit(folder, kill)
        state = read_state(folder)
        assert state["epoch"] == kill and "plateau_wait" in state
        assert first + fit(folder, 8, state) == whole, kill
