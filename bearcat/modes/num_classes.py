"""num_classes: whole-image classification (image-grid tiles, one-word answers).

Every distinct label is a class (from the file name, or one sub-folder per class with
`dataset.class_folders=true`). Class ids are 1..N; id 0 stays reserved. Scored by top-1
accuracy (`accuracy`) and top-5 accuracy (`top5_accuracy`); each prediction also carries
its five best classes in `"top5"` and their probabilities in `"top5_probs"`.

Confidence rule: the top class's probability.
"""
from __future__ import annotations

import numpy as np

from bearcat.data.labels import Vocabulary
from bearcat.modes.base import Mode
from bearcat.modes.ordinary import smoothed_crossentropy

TOP_K = 5


class NumClassesMode(Mode):
    name = "num_classes"
    text = False

    def __init__(self, vocab, max_length=1, units: int = 128, dropout: float = 0.2, label_smoothing: float = 0.0,
                 **extra):
        super().__init__(vocab, max_length, units=units, dropout=dropout, label_smoothing=label_smoothing, **extra)
        self.class_ids = {c: i + 1 for i, c in enumerate(vocab.chars)}

    @classmethod
    def make_vocabulary(cls, labels, charset=None) -> Vocabulary:
        """One class per distinct label (sorted); `charset` does not apply."""
        return Vocabulary(sorted(set(labels)))

    def check_label(self, label):
        if not label:
            return "empty label", ""
        if label not in self.class_ids:
            return "class not in the model's classes", label
        return None

    def encode(self, labels):
        return np.array([self.class_ids[label] for label in labels], np.int32)

    def build_head(self, features):
        from keras import layers

        o = self.options
        x = layers.GlobalAveragePooling2D(name="classes_pool")(features)
        x = layers.Dense(int(o["units"]), activation="relu", name="classes_hidden")(x)
        if o["dropout"]:
            x = layers.Dropout(o["dropout"], name="classes_dropout")(x)
        return layers.Dense(self.vocab.num_classes, activation="softmax", name="classes_probs", dtype="float32")(x)

    def loss(self, xla: bool = False):
        return smoothed_crossentropy(self.vocab.num_classes, self.options["label_smoothing"], "classes_loss")

    def decode(self, probs):
        probs = np.array(probs, dtype=np.float32)
        probs[:, 0] = -1.0  # the reserved id is never an answer
        order = np.argsort(-probs, axis=-1)[:, :TOP_K]
        names = self.vocab.chars
        out = []
        for row, ids in zip(probs, order):
            ids = [i for i in ids if i > 0]
            out.append({"result": names[ids[0] - 1], "confidence": float(row[ids[0]]),
                        "top5": [names[i - 1] for i in ids], "top5_probs": [float(row[i]) for i in ids]})
        return out
