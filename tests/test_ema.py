"""trainer.ema_momentum: the moving average of the weights is what is validated and saved,
training goes on from the latest weights, and a resume continues exactly."""
import keras
import numpy as np
import pytest

from bearcat.callbacks import AveragedWeights, Checkpointer, read_state, restore_last
from bearcat.train import train
from tests.conftest import last_checkpoint

MOMENTUM = 0.8
X = np.random.default_rng(0).normal(size=(24, 3)).astype("float32")
Y = (X @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")).astype("float32")


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, use_ema=True, ema_momentum=MOMENTUM), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


class Steps(keras.callbacks.Callback):
    """The weights after every training step (the latest, not the average)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables])


def fit(model, folder, epochs, initial_epoch=0, state=None, averaged=True):
    """Train with a constant val score (the best checkpoint is the last epoch's); the weights
    after every step."""
    steps = Steps()
    val = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_accuracy=0.5))
    callbacks = [steps, val, Checkpointer(folder, "val_accuracy", state=state)]
    if averaged:  # first, as in bearcat.train.epoch_callbacks
        callbacks.insert(0, AveragedWeights(swapped=bool(state)))
    model.fit(X, Y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0,
              callbacks=callbacks)
    return steps.weights


def saved_weights(path):
    return [np.asarray(w) for w in keras.saving.load_model(path).get_weights()]


def test_the_saved_model_is_the_average_and_training_follows_the_latest_weights(tmp_path):
    plain = tiny_model()
    plain_steps = fit(plain, tmp_path / "plain", 3, averaged=False)
    model = tiny_model()
    steps = fit(model, tmp_path / "ema", 3)
    # swapping the average in and out each epoch leaves the training path untouched
    for a, b in zip(steps, plain_steps, strict=True):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    average = steps[0]
    for weights in steps[1:]:
        average = [MOMENTUM * a + (1 - MOMENTUM) * w for a, w in zip(average, weights)]
    best = saved_weights(tmp_path / "ema" / "best.keras")  # val ties: the last epoch's
    for x, y in zip(best, average):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert not np.allclose(best[0], steps[-1][0])  # the average, not the latest weights
    assert np.allclose(saved_weights(tmp_path / "plain" / "best.keras")[0], plain_steps[-1][0])


def test_a_resumed_run_continues_exactly(tmp_path):
    whole = tiny_model()
    fit(whole, tmp_path / "whole", 4)
    killed = tiny_model()
    fit(killed, tmp_path / "killed", 2)
    state = read_state(tmp_path / "killed")
    resumed = tiny_model()
    restore_last(resumed, tmp_path / "killed", state)
    fit(resumed, tmp_path / "killed", 4, initial_epoch=2, state=state)
    resumed_best, whole_best = (saved_weights(tmp_path / run / "best.keras") for run in ("killed", "whole"))
    for x, y in zip(resumed_best, whole_best, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_fit_ends_with_a_frozen_layer(tmp_path):
    """Keras' own end-of-fit EMA step would fail here (2 trainable weights, 4 averaged)."""
    model = tiny_model()
    model.layers[0].trainable = False
    before = keras.ops.convert_to_numpy(model.layers[0].kernel)
    fit(model, tmp_path / "frozen", 2)
    np.testing.assert_array_equal(saved_weights(tmp_path / "frozen" / "best.keras")[0], before)


def test_training_with_ema_momentum_end_to_end(make_cfg, tmp_path):
    """The same seeded run with and without trainer.ema_momentum: training follows the same
    path, and the averaged run's checkpoint keeps those latest weights in its optimizer
    state (its model holds the average, which differs)."""
    tiny = ["debug=fast", "dataset.train_size=96", "trainer.epochs=2", "trainer.precision=float32"]
    train(make_cfg(tiny, output="plain"))
    metrics = train(make_cfg([*tiny, "trainer.ema_momentum=0.9"], output="ema"))
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    plain_model, _ = last_checkpoint(tmp_path / "plain")
    ema_model, ema_optimizer = last_checkpoint(tmp_path / "ema")
    kernels = [w for w in plain_model if w.ndim >= 2]  # trainable for sure (BatchNorm statistics are 1-D)
    assert kernels
    for kernel in kernels:
        assert any(a.shape == kernel.shape and np.allclose(a, kernel, rtol=1e-4, atol=1e-6) for a in ema_optimizer)
        assert not any(a.shape == kernel.shape and np.allclose(a, kernel, rtol=1e-4, atol=1e-6) for a in ema_model)


@pytest.mark.parametrize("value", [1.5, 0, "high", True])
def test_a_bad_ema_momentum_is_named(make_cfg, value):
    with pytest.raises(ValueError, match="trainer.ema_momentum"):
        train(make_cfg(["debug=fast", f"trainer.ema_momentum={value}"]))
