"""CTC: read text of any length (up to the longest training label) from a sequence of
feature columns. Class 0 is the blank.

Confidence rule: the model's probability of the whole decoded text, summed over every
CTC alignment that spells it (the forward algorithm). Unlike a per-column rule it is not
lowered by columns that only hesitate between a character and the blank next to it, which
spell the same text either way.
"""
from __future__ import annotations

import numpy as np

from bearcat.checks import is_whole_number
from bearcat.modes.base import Mode

EPS = 1e-7


def text_probability(probs: np.ndarray, ids: list[int]) -> float:
    """P(text | image) under CTC: the sum over all alignments of `ids` (blank = 0) in the
    (time, classes) softmax output.

    The forward algorithm is linear: alpha_t = alpha_(t-1) @ M_t with M_t = allowed
    transitions x probs[t]. The T - 1 small matrices are multiplied in pairs, a level at a
    time (log2 T batched products instead of T Python steps: about 4x faster for a
    captcha), each level rescaled to a maximum of 1 so nothing underflows.
    """
    ext = np.zeros(2 * len(ids) + 1, np.int64)  # blank, c1, blank, c2, ..., blank
    ext[1::2] = ids
    size = len(ext)
    allowed = np.eye(size) + np.eye(size, k=1)  # stay, or move one state on
    # a skip from s-2 to s is allowed onto a character that differs from the one before it
    skip = np.zeros(size, bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    allowed[np.arange(size - 2)[skip[2:]], np.arange(2, size)[skip[2:]]] = 1.0
    steps = np.asarray(probs, np.float64)[:, ext]  # (T, states)
    alpha = np.zeros(size)
    alpha[:2] = steps[0, :2]
    mats = allowed[None] * steps[1:, None, :]
    log_scale = 0.0
    while len(mats) > 1:
        if len(mats) % 2:
            mats = np.concatenate([mats, np.eye(size)[None]])
        mats = mats[0::2] @ mats[1::2]
        peak = mats.max(axis=(1, 2))
        if not (peak > 0.0).all():
            return 0.0
        mats /= peak[:, None, None]
        log_scale += float(np.log(peak).sum())
    if len(mats):
        alpha = alpha @ mats[0]
    end = alpha[-1] + (alpha[-2] if size > 1 else 0.0)  # finish on the last blank or character
    return float(np.exp(log_scale) * end) if end > 0.0 else 0.0


def collapse(ids: np.ndarray) -> list[int]:
    """Greedy CTC path -> labels: merge repeats, then drop blanks ("AA-A" -> "AA")."""
    out, prev = [], -1
    for i in ids.tolist():
        if i != prev and i != 0:
            out.append(i)
        prev = i
    return out


def beam_search(probs: np.ndarray, width: int) -> list[int]:
    """CTC prefix beam search over one (time, classes) softmax output (blank = 0)."""
    return beam_search_batch(np.asarray(probs)[None], width)[0]


def beam_search_batch(probs: np.ndarray, width: int) -> list[list[int]]:
    """CTC prefix beam search over a batch of (time, classes) softmax outputs (blank = 0).

    Keeps the `width` most probable texts of each image at each step, each scored over
    every alignment that spells it so far, split into alignments ending in a blank and in
    its last character. In NumPy, so reading needs no TensorFlow. A step is the same few
    array operations for any number of images: searched one image at a time, the Python
    work of each step cost more than its arithmetic (scripts/bench_beam.py). Wide enough,
    it finds the most probable text (tests/test_ctc.py)."""
    logp = np.log(np.asarray(probs, np.float64) + EPS)
    images, steps, classes = logp.shape
    if not images:
        return []
    width = max(1, int(width))
    rows, slots = np.arange(images)[:, None], np.arange(width)
    # A step's candidates: each beam as it stays, then each beam grown by each class.
    from_beam = np.concatenate([slots, np.repeat(slots, classes)])
    added = np.concatenate([np.zeros(width, np.int64), np.tile(np.arange(classes), width)])
    # A beam slot is one row of `beams`: its text's length, last character (0 if none), a
    # hash of the text and one of the text without its last character (to find a beam's
    # parent among the beams quickly; then checked character by character), then the text,
    # padded with 0 (never a character). A slot whose sums are -inf is free: no text yet,
    # or none kept there.
    LENGTH, LAST, KEY, PARENT, TEXT = 0, 1, 2, 3, 4
    beams = np.zeros((images, width, TEXT + steps), np.int64)
    ends = np.full((images, width, 2), -np.inf)  # log P of the alignments ending in a blank / its last character
    ends[:, 0, 0] = 0.0
    stay = np.empty((images, width, 2))  # a beam's text staying: its sums ending in a blank / its last character
    # log P of each candidate; a text just grown ends in its new character, so its score is that one sum
    scores = np.empty((images, len(from_beam)))
    grow = scores[:, width:].reshape(images, width, classes)  # a view
    for t in range(steps):
        step = logp[:, t]
        length, last = beams[..., LENGTH], beams[..., LAST]
        total = np.logaddexp(ends[..., 0], ends[..., 1])
        last_p = step[rows, last]
        # the text stays: a blank, or its last character again (CTC merges the repeat;
        # an empty text has no alignment ending in a character, so that sum stays -inf)
        stay[..., 0] = total + step[:, :1]
        stay[..., 1] = ends[..., 1] + last_p
        # one character more; the same character again only after a blank. Class 0 (also
        # the "last character" of an empty text) is the blank: it adds no character.
        grow[:] = total[..., None] + step[:, None, :]
        grow[rows, slots, last] = ends[..., 0] + last_p
        grow[..., 0] = -np.inf
        # a child that is already a beam adds to that beam's sum instead of standing alone
        n, child, par = np.nonzero(beams[:, :, None, PARENT] == beams[:, None, :, KEY])
        if len(n):
            prefix = beams[n, child, TEXT:]
            prefix[np.arange(len(n)), length[n, child] - 1] = 0
            same = ((prefix == beams[n, par, TEXT:]).all(-1) & (length[n, child] > 0)
                    & np.isfinite(total[n, child]) & np.isfinite(total[n, par]))
            n, child, par = n[same], child[same], par[same]
            c = last[n, child]
            stay[n, child, 1] = np.logaddexp(stay[n, child, 1], grow[n, par, c])
            grow[n, par, c] = -np.inf
        scores[:, :width] = np.logaddexp(stay[..., 0], stay[..., 1])
        keep = np.argpartition(scores, -width, axis=1)[:, -width:]
        source, char, grown = from_beam[keep], added[keep], keep >= width
        ends = stay[rows, source]
        np.copyto(ends[..., 0], -np.inf, where=grown)
        np.copyto(ends[..., 1], scores[rows, keep], where=grown)
        beams = beams[rows, source]
        beams[rows, slots, TEXT + beams[..., LENGTH]] = char  # a text that stays writes 0 on its padding
        np.copyto(beams[..., PARENT], beams[..., KEY], where=grown)
        np.copyto(beams[..., KEY], beams[..., KEY] * 0x9E3779B97F4A7C1 + char, where=grown)
        np.copyto(beams[..., LAST], char, where=grown)
        beams[..., LENGTH] += grown
    best = np.logaddexp(ends[..., 0], ends[..., 1]).argmax(axis=1)
    return [beams[i, b, TEXT:TEXT + beams[i, b, LENGTH]].tolist() for i, b in enumerate(best)]


def best_path(probs: np.ndarray, ids: list[int]) -> np.ndarray | None:
    """The most probable single alignment of `ids` in one (time, classes) softmax output: a
    class id per time step that collapses to `ids` (Viterbi). For the greedy reading it is
    the per-step argmax; for another reading (a beam search's) it shows which steps wrote
    each character. None when `ids` cannot fit in the time steps."""
    ext = np.zeros(2 * len(ids) + 1, np.int64)  # blank, c1, blank, c2, ..., blank
    ext[1::2] = ids
    size = len(ext)
    logp = np.log(np.asarray(probs, np.float64)[:, ext] + EPS)  # (T, states)
    skip = np.zeros(size, bool)  # from s-2 onto a character unlike the one before it
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    score = np.full(size, -np.inf)
    score[:2] = logp[0, :2]
    came_from = np.zeros((len(logp), size), np.int64)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, len(logp)):
        moves = np.full((3, size), -np.inf)
        moves[0] = score
        moves[1, 1:] = score[:-1]
        moves[2, 2:] = np.where(skip[2:], score[:-2], -np.inf)
        came_from[t] = moves.argmax(axis=0)
        score = moves[came_from[t], np.arange(size)] + logp[t]
    state = size - 1 if size == 1 or score[-1] >= score[-2] else size - 2
    if not np.isfinite(score[state]):
        return None
    states = np.zeros(len(logp), np.int64)
    for t in range(len(logp) - 1, -1, -1):
        states[t] = state
        state -= came_from[t, state]
    return ext[states]


DECODERS = ("greedy", "beam_search")


def check_decoder(decoder, beam_width, prefix: str = "mode.") -> None:
    """The decoding settings, named as the user set them (`mode.decoder` when training,
    `decoder` when reading)."""
    if decoder not in DECODERS:
        raise ValueError(f"{prefix}decoder={decoder}: choose greedy or beam_search")
    if not is_whole_number(beam_width) or int(beam_width) < 1:
        raise ValueError(f"{prefix}beam_width={beam_width}: the number of beams, at least 1")


def padded_ids(vocab, labels: list[str], max_length: int) -> np.ndarray:
    """Labels -> (N, max_length) int32 character ids; id 0 pads short labels (the blank)."""
    out = np.zeros((len(labels), max_length), np.int32)
    for row, label in enumerate(labels):
        ids = vocab.encode(label)
        out[row, :len(ids)] = ids
    return out


def sequence_features(features, units: int, rnn: str, rnn_layers: int, dropout: float, name: str,
                      upsample: int = 1, unroll: bool = False):
    """(B, H, W, C) feature map -> (B, W * upsample, units) sequence, `upsample` steps per column.

    Upsampling the columns before the recurrent layer is a cheap way to give CTC room for
    a blank between repeated characters ("LL") that fall in neighbouring columns. `unroll`
    writes the recurrent layer out step by step instead of as a loop: for a captcha's few
    dozen columns, 1.07x the training images/s on this CPU (README "Modes").
    """
    from keras import layers

    _, h, w, c = features.shape
    x = layers.Reshape((w, h * c), name=f"{name}_columns")(features)
    x = layers.Dense(units, activation="relu", name=f"{name}_proj")(x)
    if upsample > 1:
        x = layers.UpSampling1D(upsample, name=f"{name}_upsample")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    cell = {"gru": layers.GRU, "lstm": layers.LSTM}.get(rnn)
    if rnn not in ("gru", "lstm", "none", None):
        raise ValueError(f"mode.rnn={rnn}: choose gru, lstm or none")
    for i in range(rnn_layers if cell else 0):
        x = layers.Bidirectional(cell(units // 2, return_sequences=True, unroll=unroll), name=f"{name}_rnn{i}")(x)
    return x


class CTCMode(Mode):
    name = "ctc"

    # Keyword defaults are conf/mode/ctc.yaml's, so build_mode("ctc", ...) is the default model.
    def __init__(self, vocab, max_length, rnn: str = "gru", rnn_units: int = 96, rnn_layers: int = 1,
                 rnn_unroll: bool = True, dropout: float = 0.0, confidence_penalty: float = 0.1,
                 decoder: str = "beam_search", beam_width: int = 10, time_upsample: int = 2,
                 time_upsample_at: str = "output", split_blank_bias: float = 3.0, answer: str | None = None,
                 **extra):
        super().__init__(vocab, max_length, rnn=rnn, rnn_units=rnn_units, rnn_layers=rnn_layers,
                         rnn_unroll=rnn_unroll, dropout=dropout, confidence_penalty=confidence_penalty,
                         decoder=decoder, beam_width=beam_width, time_upsample=time_upsample,
                         time_upsample_at=time_upsample_at, split_blank_bias=split_blank_bias, answer=answer,
                         **extra)
        check_decoder(decoder, beam_width)

    @property
    def min_time_steps(self) -> int:
        return 2 * self.max_length + 1

    def encode(self, labels):
        return padded_ids(self.vocab, labels, self.max_length)

    def check_time_steps(self, features, upsample: int = 1) -> int:
        """Time steps (feature-map width x upsample); a clear error when CTC cannot fit the labels."""
        steps = features.shape[2] * upsample
        if steps < self.min_time_steps:
            raise ValueError(
                f"the backbone gives {steps} time steps (feature-map width x mode.time_upsample) but CTC needs at least "
                f"2 x max_length + 1 = {self.min_time_steps} for labels of up to {self.max_length} characters; "
                f"increase preprocess.width or use a backbone.feature_layer / backbone.pools setting that keeps "
                f"more width")
        return steps

    def build_head(self, features):
        o = self.options
        upsample = int(o.get("time_upsample") or 1)
        at = o.get("time_upsample_at") or "rnn"
        if at not in ("rnn", "output"):
            raise ValueError(f"mode.time_upsample_at={at}: choose rnn or output")
        self.check_time_steps(features, upsample)
        # Extra time steps made before the RNN, or written by the output layer per RNN step.
        rnn_upsample, split = (1, upsample) if at == "output" else (upsample, 1)
        x = sequence_features(features, o["rnn_units"], o["rnn"], o["rnn_layers"], o["dropout"], "ctc", rnn_upsample,
                              bool(o["rnn_unroll"]))
        return self.output_steps(x, split, o.get("split_blank_bias"), "ctc")

    def output_steps(self, x, split: int, blank_bias, name: str):
        """(B, T, units) -> (B, T x split, classes) softmax. With split > 1 the layers before
        run once per step and the output layer writes `split` steps for each: room for a
        blank between doubled characters at the cost of one wider Dense."""
        from keras import layers

        classes = self.vocab.num_classes
        if split == 1:
            return layers.Dense(classes, activation="softmax", name=f"{name}_probs", dtype="float32")(x)
        dense = layers.Dense(split * classes, name=f"{name}_split")
        x = dense(x)
        # Start the extra steps as likely blanks: the first step of each column then learns as
        # with one step per column, and CTC leaves its all-blank plateau as early (on ~1,100
        # real captchas: after 4 epochs instead of none in 20 with a zero bias; README "Modes").
        bias = np.array(dense.bias.numpy())
        bias[classes::classes] = float(blank_bias or 0.0)
        dense.bias.assign(bias)
        x = layers.Reshape((x.shape[1] * split, classes), name=f"{name}_steps")(x)
        return layers.Activation("softmax", name=f"{name}_probs", dtype="float32")(x)

    def loss(self, xla: bool = False):
        """CTC loss of the softmax output. TensorFlow's own CTC kernel, fed sparse labels,
        computes the gradient with the loss: the default model trains 1.13x as fast as with
        the dense keras.ops.ctc_loss, same loss and gradient (README "Modes"). It has no XLA
        kernel, so an XLA-compiled step (`xla`) keeps the dense one."""
        import keras

        def ctc_loss(y_true, y_pred):
            y_true = keras.ops.cast(y_true, "int32")
            label_length = keras.ops.sum(keras.ops.cast(y_true != 0, "int32"), axis=-1)
            shape = keras.ops.shape(y_pred)
            logit_length = keras.ops.full((shape[0],), shape[1], dtype="int32")
            # log of softmax output is a valid logit input: its log_softmax is itself.
            return keras.ops.ctc_loss(y_true, keras.ops.log(y_pred + EPS), label_length, logit_length,
                                      mask_index=0)

        def native_ctc_loss(y_true, y_pred):
            import tensorflow as tf

            labels = tf.sparse.from_dense(tf.cast(y_true, tf.int32))  # padding (0) dropped
            shape = tf.shape(y_pred)
            return tf.nn.ctc_loss(labels, tf.math.log(y_pred + EPS), None, tf.fill([shape[0]], shape[1]),
                                  logits_time_major=False, blank_index=0)

        chosen = ctc_loss if xla else native_ctc_loss
        beta = float(self.options.get("confidence_penalty") or 0.0)
        if beta < 0:
            raise ValueError(f"mode.confidence_penalty={beta}: must be 0 or more")
        if not beta:
            return chosen

        def penalised_ctc_loss(y_true, y_pred):
            # Confidence penalty (Pereyra et al. 2017), CTC's stand-in for label smoothing: a
            # reward for each step's entropy, so steps are not pushed to certainty they cannot back.
            entropy = -keras.ops.sum(y_pred * keras.ops.log(y_pred + EPS), axis=(1, 2))
            return chosen(y_true, y_pred) - beta * entropy

        return penalised_ctc_loss

    def decode(self, probs):
        probs = np.asarray(probs)
        readings = [collapse(p.argmax(axis=-1)) for p in probs]
        confidences = [text_probability(p, ids) for p, ids in zip(probs, readings)]
        # The texts' probabilities sum to 1, so a greedy reading above one half is already
        # the most probable text: the search runs only on the others (all of them in one
        # call), and keeps the more probable of its answer and the greedy one.
        if self.options["decoder"] == "beam_search":
            unsure = [i for i, confidence in enumerate(confidences) if confidence <= 0.5]
            for i, searched in zip(unsure, beam_search_batch(probs[unsure], int(self.options["beam_width"]))):
                searched_confidence = text_probability(probs[i], searched)
                if searched_confidence > confidences[i]:
                    readings[i], confidences[i] = searched, searched_confidence
        return self.with_answers([{"result": self.vocab.decode(ids), "confidence": confidence}
                                  for ids, confidence in zip(readings, confidences)])
