import numpy as np
import pytest

from bearcat.data.labels import Vocabulary
from bearcat.modes import build_mode
from bearcat.modes.ctc import collapse

VOCAB = Vocabulary("ABC")  # ids: A=1, B=2, C=3; 0 = blank


def one_hot(path, classes=4, p=0.9):
    probs = np.full((len(path), classes), (1 - p) / (classes - 1), np.float32)
    probs[np.arange(len(path)), path] = p
    return probs


def test_collapse_merges_repeats_then_drops_blanks():
    assert collapse(np.array([1, 1, 0, 1, 2, 2, 0, 0, 3])) == [1, 1, 2, 3]  # "AA-ABB--C" -> A A B C
    assert collapse(np.array([0, 0, 0])) == []
    assert collapse(np.array([2, 2, 2])) == [2]


@pytest.mark.parametrize("decoder", ["greedy", "beam_search"])
def test_decode_repeats_blanks_and_empty(decoder):
    mode = build_mode("ctc", VOCAB, 4, decoder=decoder)
    probs = np.stack([one_hot([1, 1, 0, 1, 2, 0]), one_hot([0] * 6), one_hot([3, 3, 3, 0, 3, 3])])
    results = mode.decode(probs)
    assert [r["result"] for r in results] == ["AAB", "", "CC"]
    assert all(0.0 < r["confidence"] <= 1.0 for r in results)
    sharper = mode.decode(np.stack([one_hot([1, 1, 0, 1, 2, 0], p=0.99)]))[0]
    assert sharper["result"] == "AAB" and sharper["confidence"] > results[0]["confidence"]


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_wide_beam_search_finds_the_most_probable_text():
    """Against every alignment summed per text: a beam as wide as the number of texts finds
    the most probable one, where greedy decoding (the most probable path) often does not."""
    import itertools

    from bearcat.modes.ctc import beam_search, beam_search_batch, text_probability

    rng = np.random.default_rng(5)
    steps, classes, greedy_misses = 6, 3, 0
    texts = {tuple(collapse(np.array(p))) for p in itertools.product(range(classes), repeat=steps)}
    batch = softmax(rng.normal(size=(40, steps, classes)))
    found = beam_search_batch(batch, len(texts))
    for probs, searched in zip(batch, found):
        best = max(texts, key=lambda t: text_probability(probs, list(t)))
        assert searched == beam_search(probs, len(texts)) == list(best)
        greedy_misses += collapse(probs.argmax(-1)) != list(best)
    assert greedy_misses >= 5  # the cases are ones where the search matters


def test_a_batch_searched_at_once_reads_as_each_image_alone():
    """The batched search keeps each image's beams apart: in one call with sharp, flat and
    one-hot outputs (images whose beams fill at different steps, ties, repeats) each image
    reads as it does alone, at every width, for the default model's output shape too."""
    from bearcat.modes.ctc import beam_search, beam_search_batch

    rng = np.random.default_rng(3)
    for steps, classes in [(9, 4), (48, 37)]:
        sharpness = rng.uniform(0.2, 12.0, size=(30, 1, 1))
        batch = softmax(rng.normal(size=(30, steps, classes)) * sharpness)
        batch[0] = one_hot(rng.integers(0, classes, size=steps), classes=classes)
        batch[1] = one_hot([1, 1, 0, 1, 2, 2, 0, 0, 3][:steps] + [0] * (steps - 9), classes=classes)
        for width in (1, 2, 5, 16):
            found = beam_search_batch(batch, width)
            assert found == [beam_search(p, width) for p in batch]
            assert all(0 not in ids for ids in found)
    assert found[1] == [1, 1, 2, 3]
    assert beam_search_batch(batch[:0], 4) == []


def test_best_path_is_the_most_probable_alignment_of_a_text():
    """Against every path of small outputs: the alignment found spells the text and is the
    most probable path that does; for the greedy text it is the per-step argmax; a text
    longer than the steps allow has none."""
    import itertools

    from bearcat.modes.ctc import best_path

    rng = np.random.default_rng(11)
    steps, classes = 6, 3
    paths = np.array(list(itertools.product(range(classes), repeat=steps)))
    spelled = [tuple(collapse(p)) for p in paths]
    for _ in range(30):
        probs = softmax(rng.normal(size=(steps, classes)))
        path_p = probs[np.arange(steps), paths].prod(axis=1)
        for text in set(spelled):
            found = best_path(probs, list(text))
            assert tuple(collapse(found)) == text
            best = max(path_p[k] for k, t in enumerate(spelled) if t == text)
            assert np.isclose(probs[np.arange(steps), found].prod(), best)
        greedy = probs.argmax(-1)
        assert best_path(probs, collapse(greedy)).tolist() == greedy.tolist()
    assert best_path(one_hot([1, 0, 1]), [1, 1]).tolist() == [1, 0, 1]  # a repeat needs its blank
    assert best_path(one_hot([1, 1, 1]), [1, 1, 1]) is None
    assert best_path(one_hot([2, 2]), []).tolist() == [0, 0]


def test_beam_search_reads_as_tensorflows_decoder():
    """The NumPy beam search against keras.ops.ctc_decode (TensorFlow's beam search) on
    peaked outputs of the default model's shape: they agree on nearly every one (a
    near-tie may be broken differently)."""
    import keras

    from bearcat.modes.ctc import beam_search

    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(size=(200, 48, 37)) * 3.0).astype(np.float32)
    for width in (1, 3, 10):
        decoded, _ = keras.ops.ctc_decode(np.log(probs + 1e-7), np.full(200, 48, np.int32), strategy="beam_search",
                                          beam_width=width, mask_index=0)
        theirs = [[int(i) for i in row if i > 0] for row in np.asarray(decoded[0])]
        same = sum(beam_search(p, width) == t for p, t in zip(probs, theirs))
        assert same >= 196, (width, same)


def test_beam_decoder_searches_only_below_one_half_and_never_reads_less_probably(monkeypatch):
    """decoder=beam_search: a greedy reading with a probability above 0.5 is the most
    probable text (all texts sum to 1) and is kept without a search; below it, the answer
    is the search's unless the greedy reading is more probable."""
    import bearcat.modes.ctc as ctc

    from bearcat.modes.ctc import text_probability

    rng = np.random.default_rng(7)
    mode = build_mode("ctc", VOCAB, 4, decoder="beam_search", beam_width=3)
    greedy = build_mode("ctc", VOCAB, 4, decoder="greedy")
    probs = softmax(rng.normal(size=(300, 9, 4)) * rng.uniform(0.5, 12.0, size=(300, 1, 1)))
    searched = []
    real_search = ctc.beam_search_batch
    monkeypatch.setattr(ctc, "beam_search_batch", lambda p, w: searched.append(p) or real_search(p, w))
    beam, plain = mode.decode(probs), greedy.decode(probs)
    sure = [g["confidence"] > 0.5 for g in plain]
    assert 30 < sum(sure) < 270  # both kinds of case occur
    assert len(searched) == 1 and len(searched[0]) == 300 - sum(sure)  # one search for the batch's unsure images
    for p, b, g, s in zip(probs, beam, plain, sure):
        assert b["confidence"] >= g["confidence"]
        assert b["confidence"] == pytest.approx(text_probability(p, VOCAB.encode(b["result"])))
        if s:
            assert b == g
    assert sum(b["result"] != g["result"] for b, g in zip(beam, plain)) >= 10


def test_confidence_is_the_text_probability_over_all_alignments():
    import itertools

    from bearcat.modes.ctc import text_probability

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=5)
    brute = {}
    for path in itertools.product(range(3), repeat=5):  # every alignment, summed per text
        key = tuple(collapse(np.array(path)))
        brute[key] = brute.get(key, 0.0) + float(np.prod(probs[np.arange(5), path]))
    for key in [(), (1,), (1, 1), (1, 2), (2, 1, 2), (1, 1, 1)]:
        assert text_probability(probs, list(key)) == pytest.approx(brute.get(key, 0.0), rel=1e-9)


def test_confidence_on_long_outputs_matches_the_ctc_loss():
    """Over many time steps (where the pairwise matrix products matter) P(text) agrees with
    exp(-CTC loss) from Keras, repeats and an impossible text included."""
    import keras

    from bearcat.modes.ctc import text_probability

    rng = np.random.default_rng(3)
    for steps, ids in [(61, [1, 2, 3]), (48, [2, 2, 1, 3, 3]), (7, [1, 1, 1, 1])]:
        logits = rng.normal(size=(steps, 4)) * 2.0
        # a likely path with a blank only between equal characters: the CTC skip matters
        seq = [x for k, c in enumerate(ids) for x in ([0, c] if k and ids[k - 1] == c else [c])]
        path = np.repeat(np.array(seq), -(-steps // len(seq)))[:steps]
        logits[np.arange(steps), path] += 4.0  # make the text likely, so the probability is not tiny
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        loss = keras.ops.convert_to_numpy(keras.ops.ctc_loss(
            np.array([ids + [0] * (8 - len(ids))], np.int32), np.log(probs[None]).astype(np.float32),
            np.array([len(ids)], np.int32), np.array([steps], np.int32), mask_index=0))[0]
        expected = float(np.exp(-loss))
        assert text_probability(probs, ids) == pytest.approx(expected, rel=1e-3, abs=1e-12)
    assert text_probability(np.full((3, 4), 0.25), [1, 1, 1]) == 0.0  # "AAA" needs 5 steps


def test_encode_pads_with_blank_and_loss_prefers_truth():
    import keras

    mode = build_mode("ctc", VOCAB, 4)
    y = mode.encode(["AB", "CCA"])
    assert y.tolist() == [[1, 2, 0, 0], [3, 3, 1, 0]]
    loss = mode.loss()
    right = np.stack([one_hot([1, 0, 2, 0, 0, 0, 0, 0, 0]), one_hot([3, 0, 3, 1, 0, 0, 0, 0, 0])])
    wrong = np.stack([one_hot([2, 0, 1, 0, 0, 0, 0, 0, 0]), one_hot([3, 0, 1, 1, 0, 0, 0, 0, 0])])
    l_right = keras.ops.convert_to_numpy(loss(y, right))
    l_wrong = keras.ops.convert_to_numpy(loss(y, wrong))
    assert (l_right < l_wrong).all()


def test_native_ctc_loss_matches_the_dense_one_and_xla_trains():
    """The native CTC kernel (default) and the dense keras.ops.ctc_loss (kept for XLA) give
    the same loss and gradient, doubled characters and variable lengths included; an
    XLA-compiled step trains with the dense one."""
    import keras
    import tensorflow as tf

    mode = build_mode("ctc", VOCAB, 4)
    y = mode.encode(["AB", "CCA", "AAAA", "B"])
    rng = np.random.default_rng(0)
    probs = tf.constant(rng.dirichlet(np.ones(VOCAB.num_classes), (4, 12)).astype("float32"))
    values, grads = [], []
    for xla in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(probs)
            loss = mode.loss(xla=xla)(y, probs)
            total = tf.reduce_sum(loss)
        values.append(loss.numpy())
        grads.append(tape.gradient(total, probs).numpy())
    assert values[0].shape == (4,) and np.isfinite(values[0]).all()
    np.testing.assert_allclose(values[0], values[1], rtol=1e-4)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-3, atol=1e-3 * np.abs(grads[1]).max())

    inputs = keras.Input((1, 12, 4))
    model = keras.Model(inputs, mode.build_head(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=mode.loss(xla=True), jit_compile=True)
    x = rng.random((4, 1, 12, 4)).astype("float32")
    history = model.fit(x, y, epochs=5, batch_size=4, verbose=0).history["loss"]
    assert history[-1] < history[0]


@pytest.mark.parametrize("name", ["ctc", "ctc_tiny"])
def test_confidence_penalty_subtracts_the_weighted_step_entropy(name):
    """mode.confidence_penalty=b: loss = CTC - b x (the entropy of every step, summed), with
    either CTC kernel; a negative weight is refused, naming the key."""
    import keras

    y = build_mode(name, VOCAB, 4).encode(["AB", "CCA"])
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(VOCAB.num_classes), (2, 9)).astype("float32")
    entropy = -(probs * np.log(probs)).sum(axis=(1, 2))
    for xla in (False, True):
        plain = keras.ops.convert_to_numpy(build_mode(name, VOCAB, 4, confidence_penalty=0.0).loss(xla=xla)(y, probs))
        penalised = build_mode(name, VOCAB, 4, confidence_penalty=0.3).loss(xla=xla)(y, probs)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(penalised), plain - 0.3 * entropy, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="mode.confidence_penalty=-0.1"):
        build_mode(name, VOCAB, 4, confidence_penalty=-0.1).loss()


def test_too_few_time_steps_fails_at_build_naming_the_setting():
    import keras

    mode = build_mode("ctc", VOCAB, 6, time_upsample=1)
    features = keras.Input((3, 8, 16))  # 8 columns < 2 * 6 + 1
    with pytest.raises(ValueError, match="13.*preprocess.width"):
        mode.build_head(features)


def test_time_upsample_doubles_the_steps_and_passes_the_check():
    import keras

    mode = build_mode("ctc", VOCAB, 6, time_upsample=2)
    features = keras.Input((3, 8, 16))  # 8 columns x 2 = 16 >= 13
    assert mode.build_head(features).shape[1] == 16


def test_split_blank_bias_starts_the_extra_steps_as_blanks():
    """mode.split_blank_bias: the output layer's bias for the blank of each column's extra
    steps, nothing else; an untrained model then puts more blank on those steps."""
    import keras

    keras.utils.set_random_seed(0)
    mode = build_mode("ctc", VOCAB, 2, time_upsample=3, time_upsample_at="output", rnn_units=16,
                      split_blank_bias=3.0)
    inputs = keras.Input((1, 8, 4))
    model = keras.Model(inputs, mode.build_head(inputs))
    bias = keras.ops.convert_to_numpy(model.get_layer("ctc_split").bias).reshape(3, VOCAB.num_classes)
    assert bias[1:, 0].tolist() == [3.0, 3.0]
    assert not bias[0].any() and not bias[1:, 1:].any()
    probs = model.predict(np.random.default_rng(0).random((4, 1, 8, 4), np.float32), verbose=0)
    blank = probs[..., 0].reshape(4, 8, 3)  # (image, column, step within the column)
    assert (blank[..., 1:] > blank[..., :1]).all()


def test_time_upsample_at_output_splits_each_column_after_the_rnn():
    """time_upsample_at=output: the recurrent layer runs over the 8 columns, the output layer
    writes 2 steps for each (16 in all), and a model trained on doubled characters learns to
    put a blank between them."""
    import keras

    # Seeded before the weights are made: unseeded, the start depended on the tests run before,
    # and about one start in ten settles with the first column's B dropped.
    keras.utils.set_random_seed(0)
    mode = build_mode("ctc", VOCAB, 2, time_upsample=2, time_upsample_at="output", rnn_units=16)
    inputs = keras.Input((1, 8, 4))
    model = keras.Model(inputs, mode.build_head(inputs))
    assert model.output.shape[1:] == (16, VOCAB.num_classes)
    assert model.get_layer("ctc_rnn0").output.shape[1] == 8
    # one column per character; "AA" can only be written as A, blank, A: within its column's two steps
    x = np.zeros((64, 1, 8, 4), np.float32)
    labels = []
    rng = np.random.default_rng(0)
    for i in range(64):
        chars = rng.choice(["A", "B"], 2)
        labels.append("".join(chars))
        for k, c in enumerate(chars):
            x[i, 0, 3 + k, 0 if c == "A" else 1] = 1.0
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=mode.loss())
    # 300 full-batch steps as one epoch of the batch repeated (unshuffled: every step sees the
    # same 64 samples); 300 epochs of one step each spent most of their time starting epochs
    y = mode.encode(labels)
    model.fit(np.tile(x, (300, 1, 1, 1)), np.tile(y, (300, 1)), epochs=1, batch_size=64, shuffle=False, verbose=0)
    read = [r["result"] for r in mode.decode(model.predict(x, verbose=0))]
    assert "AA" in labels and read == labels
    with pytest.raises(ValueError, match="mode.time_upsample_at=input"):
        build_mode("ctc", VOCAB, 2, time_upsample=2, time_upsample_at="input").build_head(inputs)


@pytest.mark.parametrize("name", ["ctc", "ordinary"])
def test_rnn_unroll_computes_the_same_outputs_as_the_loop(name):
    """mode.rnn_unroll=true unrolls the recurrent layer over its steps (faster on a CPU for
    captcha-length sequences, README "Modes"); same weights, same outputs as the loop, and
    the same training step: loss and gradients in a compiled graph, as `fit` runs it."""
    import keras
    import tensorflow as tf

    models = []
    for unroll in (False, True):
        mode = build_mode(name, VOCAB, 2, rnn_units=16, rnn_unroll=unroll)
        inputs = keras.Input((1, 8, 4))
        models.append(keras.Model(inputs, mode.build_head(inputs)))
        assert models[-1].get_layer(f"{name}_rnn0").forward_layer.unroll is unroll
    models[1].set_weights(models[0].get_weights())
    x = np.random.default_rng(0).random((3, 1, 8, 4), np.float32)
    loop, unrolled = (model.predict(x, verbose=0) for model in models)
    np.testing.assert_allclose(unrolled, loop, rtol=1e-5, atol=1e-6)
    y = tf.constant(mode.encode(["A", "AB", "B"]))
    loss = mode.loss()

    def training_step(model):
        @tf.function
        def step(images):
            with tf.GradientTape() as tape:
                value = tf.reduce_mean(loss(y, model(images, training=True)))
            return value, tape.gradient(value, model.trainable_variables)
        return step(tf.constant(x))

    (loss_loop, grads_loop), (loss_unrolled, grads_unrolled) = map(training_step, models)
    assert float(loss_unrolled) == pytest.approx(float(loss_loop), rel=1e-5)
    for a, b in zip(grads_loop, grads_unrolled):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_time_budget_cosine_anneals_by_time_or_steps():
    from bearcat.optim.schedules import TimeBudgetCosine

    sched = TimeBudgetCosine(base_lr=1.0, warmup_steps=10, total_steps=110, budget_minutes=1.0, alpha=0.0)
    assert sched.learning_rate(0, 0.0) == pytest.approx(0.1)     # warm-up ramps linearly
    assert sched.learning_rate(9, 0.0) == pytest.approx(1.0)
    assert sched.learning_rate(60, 0.0) == pytest.approx(0.5)    # half-way by steps, time unused
    assert sched.learning_rate(20, 60.0 * 60 / 110) == pytest.approx(0.5)  # the same progress by time: time wins
    assert sched.learning_rate(20, 60.0) == pytest.approx(0.0)   # budget spent: fully annealed


@pytest.mark.parametrize("epoch_steps", [None, 250])
def test_time_budget_cosine_ends_fit_when_the_budget_is_spent(caplog, epoch_steps):
    import logging
    import time

    import keras
    import numpy as np

    from bearcat.optim.schedules import TimeBudgetCosine

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(), loss="mse")
    # epoch_steps=250: this fit is the last 200 steps of a resumed part-epoch of 250
    budget = TimeBudgetCosine(base_lr=0.1, warmup_steps=2, total_steps=200, budget_minutes=1.0 / 60, alpha=0.01,
                              steps_per_epoch=epoch_steps)
    slow = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(0.1))
    x = np.zeros((200, 4), "float32")
    with caplog.at_level(logging.INFO, logger="bearcat"):
        model.fit(x, x[:, :1], batch_size=1, epochs=1, callbacks=[budget, slow], verbose=0)
    steps = int(model.optimizer.iterations.numpy())
    assert 2 < steps < 40  # 200 planned at >= 0.1 s each; the 1 s budget ends it
    assert float(model.optimizer.learning_rate.numpy()) < 0.02  # annealed to about alpha by the end
    # said once, with the steps really trained (Keras' own progress line would show 200/200)
    said = [r.getMessage() for r in caplog.records if "time budget" in r.getMessage()]
    done, of = (steps, 200) if epoch_steps is None else (steps + 50, 250)
    assert said == [f"time budget of 0.0167 min reached after step {done} of epoch 1's {of}; stopping"]
