"""num_classes: whole-image classification (image-grid tiles, one-word answers).

Every distinct label is a class (from the file name, or one sub-folder per class with
`dataset.class_folders=true`). Class ids are 1..N; id 0 stays reserved. Scored by top-1
accuracy (`accuracy`) and top-5 accuracy (`top5_accuracy`); each prediction also carries
its five best classes in `"top5"` and their probabilities in `"top5_probs"`.

With `angle=true` (rotation captchas: every class is an angle in degrees) each prediction
also carries `"angle"`: the mean direction of the best class and the two classes either
side of it, weighted by their probabilities, which is finer than one class step.

Confidence rule: the top class's probability.
"""
from __future__ import annotations

import math

import numpy as np

from bearcat.data.labels import Vocabulary
from bearcat.modes.base import Mode
from bearcat.modes.ordinary import smoothed_crossentropy

TOP_K = 5
ANGLE_NEIGHBOURS = 2  # classes either side of the best one that the angle is averaged over


def angle_between(a: float, b: float) -> float:
    """The shorter way round between two angles in degrees (0-180)."""
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def mean_direction(angles, weights) -> float:
    """The weighted mean direction of angles in degrees, 0-360: 350 and 10 average to 0."""
    x = sum(w * math.cos(math.radians(a)) for a, w in zip(angles, weights))
    y = sum(w * math.sin(math.radians(a)) for a, w in zip(angles, weights))
    return math.degrees(math.atan2(y, x)) % 360.0


def angle_metrics(truths: list[str], results: list[dict]) -> dict[str, float]:
    """Each answer's `angle` against its label's angle: the mean error in degrees and the
    share within 10 degrees. Labels are angles rounded to the class step, so these include
    up to half a step of the labels' own rounding."""
    errors = [angle_between(r["angle"], float(t)) for t, r in zip(truths, results)]
    n = max(1, len(errors))
    return {"angle_error": sum(errors) / n, "angle_within_10deg": sum(e <= 10.0 for e in errors) / n}


def class_angles(names) -> np.ndarray:
    """Each class name read as an angle in degrees; a clear error for one that is not."""
    out = []
    for name in names:
        try:
            value = float(name)
        except ValueError:
            value = None
        if value is None or not 0.0 <= value < 360.0:
            raise ValueError(f"mode.angle=true: every class must be an angle in degrees (0 to 360, the label of "
                             f"each image); the class {name!r} is not")
        out.append(value)
    return np.array(out)


class NumClassesMode(Mode):
    name = "num_classes"
    text = False

    def __init__(self, vocab, max_length=1, units: int = 128, dropout: float = 0.2, label_smoothing: float = 0.0,
                 angle: bool = False, **extra):
        super().__init__(vocab, max_length, units=units, dropout=dropout, label_smoothing=label_smoothing,
                         angle=bool(angle), **extra)
        self.class_ids = {c: i + 1 for i, c in enumerate(vocab.chars)}
        self.angles = class_angles(vocab.chars) if angle else None
        if self.angles is not None:
            # each class's neighbourhood, fixed by the classes, so found once here rather than per
            # answer: the classes within ANGLE_NEIGHBOURS steps of it, a step being the smallest
            # gap between two classes
            gaps = [angle_between(a, b) for i, a in enumerate(self.angles) for b in self.angles[i + 1:]]
            window = ANGLE_NEIGHBOURS * min(gaps, default=0.0) + 1e-6
            self.neighbours = [np.array([j for j, b in enumerate(self.angles) if angle_between(a, b) <= window])
                               for a in self.angles]

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
            if self.angles is not None:
                out[-1]["angle"] = round(self.refined_angle(row[1:], ids[0] - 1), 2)
        return out

    def refined_angle(self, probs: np.ndarray, best: int) -> float:
        """The best class's angle moved towards its neighbours by their probabilities."""
        near = self.neighbours[best]
        return mean_direction(self.angles[near], np.maximum(probs[near], 0.0))
