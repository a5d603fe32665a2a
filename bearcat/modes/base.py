"""The small interface every mode implements."""
from __future__ import annotations

import importlib

import numpy as np

from bearcat.answers import answer_function
from bearcat.data.labels import Vocabulary, shown_characters

# mode name -> "module:Class"; a mode never reads files.
REGISTRY = {
    "ctc": "bearcat.modes.ctc:CTCMode",
    "ctc_tiny": "bearcat.modes.ctc_tiny:CTCTinyMode",
    "ordinary": "bearcat.modes.ordinary:OrdinaryMode",
    "num_classes": "bearcat.modes.num_classes:NumClassesMode",
    "efficientdet": "bearcat.modes.efficientdet:DetectionMode",
}


class Mode:
    name = "base"
    text = True  # text modes report char accuracy / CER

    def __init__(self, vocab: Vocabulary, max_length: int, **options):
        self.vocab = vocab
        self.max_length = int(max_length)
        self.options = options
        self.answer = answer_function(options.get("answer"))  # checked before any training

    # --- labels
    @classmethod
    def make_vocabulary(cls, labels: list[str], charset: str | None = None) -> Vocabulary:
        """The classes this mode predicts: characters for text modes."""
        return Vocabulary.from_labels(labels, charset)

    def check_label(self, label: str) -> tuple[str, str] | None:
        """(reason, detail) when this mode cannot learn the label, else None."""
        unknown = self.vocab.unknown(label)
        if unknown:
            return "characters outside the vocabulary", shown_characters("".join(sorted(unknown)))
        if not label:
            return "empty label", ""
        if len(label) > self.max_length:
            return "label longer than the model can emit", f"{len(label)} > max_length={self.max_length}"
        return None

    def encode(self, labels: list[str]) -> np.ndarray:
        raise NotImplementedError

    # --- model
    def build_head(self, features):
        """Backbone feature map (B, H, W, C) -> per-class probabilities."""
        raise NotImplementedError

    def loss(self, xla: bool = False):
        """The Keras loss (y_true = `encode`'s targets, y_pred = the head's output); `xla`:
        the training step is XLA-compiled (trainer.jit_compile), so only ops XLA has."""
        raise NotImplementedError

    # --- predictions
    def decode(self, probs: np.ndarray) -> list[dict]:
        """Model output for a batch -> [{"result": str, "confidence": float}, ...]."""
        raise NotImplementedError

    def with_answers(self, results: list[dict]) -> list[dict]:
        """Each reading's `"answer"` worked out, with `mode.answer` set (maths captchas); the
        text modes' decode ends here."""
        if self.answer is not None:
            for r in results:
                r["answer"] = self.answer(r["result"])
        return results

    def config(self) -> dict:
        """Everything needed to rebuild decoding at serving time (stored in the bundle)."""
        return {"name": self.name, "max_length": self.max_length, **self.options}


def mode_class(name: str) -> type[Mode]:
    if name not in REGISTRY:
        raise ValueError(f"mode={name}: unknown mode; choose one of {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_mode(name: str, vocab: Vocabulary, max_length: int, **options) -> Mode:
    return mode_class(name)(vocab, max_length, **options)
