"""Ordinary: one softmax per character position, `max_length` positions over the
vocabulary plus the blank (id 0). Labels shorter than `max_length` are padded with the
blank; decoding takes the top class per position and drops the blanks.

Head: the backbone's columns become a sequence (shared with CTC), then each position asks
for its character with attention: position queries are computed from the whole
sequence's average (so they can depend on the label's length) and attend over the
columns.

Confidence rule (the original toolkit's): the lower bound of a 99% interval of the mean
of the per-position top probabilities, mean - 2.58 x std / sqrt(n) over the n =
`max_length` positions, clipped to [0, 1]. One unsure position pulls it down; a spread
of values pulls it down further.
"""
from __future__ import annotations

import numpy as np

from bearcat.modes.base import Mode
from bearcat.modes.ctc import padded_ids, sequence_features

Z_99 = 2.58  # two-sided 99% normal quantile


def smoothed_crossentropy(num_classes: int, label_smoothing: float, name: str):
    """Loss on integer targets and softmax outputs, with label smoothing."""
    import keras

    def loss(y_true, y_pred):
        target = keras.ops.one_hot(keras.ops.cast(y_true, "int32"), num_classes)
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=label_smoothing)

    loss.__name__ = name
    return loss


def interval_confidence(top: np.ndarray) -> np.ndarray:
    """(B, n) per-position top probabilities -> (B,) mean - 2.58 std / sqrt(n), in [0, 1]."""
    n = top.shape[-1]
    return np.clip(top.mean(axis=-1) - Z_99 * top.std(axis=-1) / np.sqrt(n), 0.0, 1.0)


class OrdinaryMode(Mode):
    name = "ordinary"

    # Keyword defaults are conf/mode/ordinary.yaml's.
    def __init__(self, vocab, max_length, rnn: str = "gru", rnn_units: int = 128, rnn_layers: int = 1,
                 rnn_unroll: bool = True, attention_heads: int = 4, dropout: float = 0.0,
                 label_smoothing: float = 0.1, answer: str | None = None, **extra):
        super().__init__(vocab, max_length, rnn=rnn, rnn_units=rnn_units, rnn_layers=rnn_layers,
                         rnn_unroll=rnn_unroll, attention_heads=attention_heads, dropout=dropout,
                         label_smoothing=label_smoothing, answer=answer, **extra)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"mode.label_smoothing={label_smoothing}: must be in [0, 1)")
        if rnn_units % attention_heads:
            raise ValueError(f"mode.rnn_units={rnn_units} must be divisible by mode.attention_heads={attention_heads}")

    def encode(self, labels):
        return padded_ids(self.vocab, labels, self.max_length)

    def build_head(self, features):
        from keras import layers

        o = self.options
        units, heads = int(o["rnn_units"]), int(o["attention_heads"])
        x = sequence_features(features, units, o["rnn"], o["rnn_layers"], o["dropout"], "ordinary",
                              unroll=bool(o.get("rnn_unroll")))
        summary = layers.GlobalAveragePooling1D(name="ordinary_summary")(x)
        queries = layers.Dense(self.max_length * units, name="ordinary_queries")(summary)
        queries = layers.Reshape((self.max_length, units), name="ordinary_positions")(queries)
        read = layers.MultiHeadAttention(heads, units // heads, name="ordinary_attention")(queries, x)
        read = layers.LayerNormalization(name="ordinary_norm")(layers.Add(name="ordinary_residual")([queries, read]))
        return layers.Dense(self.vocab.num_classes, activation="softmax", name="ordinary_probs", dtype="float32")(read)

    def loss(self, xla: bool = False):
        return smoothed_crossentropy(self.vocab.num_classes, self.options["label_smoothing"], "ordinary_loss")

    def decode(self, probs):
        probs = np.asarray(probs)
        ids = probs.argmax(axis=-1)  # (B, max_length); vocab.decode drops the blank (0)
        confidence = interval_confidence(probs.max(axis=-1))
        return self.with_answers([{"result": self.vocab.decode(row), "confidence": float(c)}
                                  for row, c in zip(ids, confidence)])
