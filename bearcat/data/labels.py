"""Labels from file names, and the vocabulary that maps characters to class ids.

Convention (shared by every folder tool): the label is the file name before the first
``_``; a name without ``_`` uses its whole stem. ``a3Kx_5f2b9c.png`` -> ``a3Kx``.
"""
from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import numpy as np

from bearcat.atomic import write_json

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def label_from_name(path: str | Path, lowercase: bool = False) -> str:
    """Label encoded in a file name; '' when the name holds none (e.g. '_x.png')."""
    stem = Path(path).stem
    label = stem.split("_", 1)[0] if "_" in stem else stem
    # NFC so that a Chinese or accented label typed on another OS compares equal.
    label = unicodedata.normalize("NFC", label)
    return label.lower() if lowercase else label


def normalize_charset(charset: str | None) -> str | None:
    """A configured character set in the same Unicode form (NFC) as the labels read from
    file names, so a decomposed accent or a compatibility ideograph compares equal."""
    return unicodedata.normalize("NFC", str(charset)) if charset else charset


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def file_md5(path) -> str:
    """The md5 of a file's bytes: the same image under any name (labelled copies are named
    `LABEL_<md5>.<ext>`)."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


class Vocabulary:
    """Characters <-> ids. Id 0 is reserved: the CTC blank / the 'no character' class."""

    def __init__(self, chars: str | list[str]):
        chars = list(dict.fromkeys(chars))  # unique, order kept
        if not chars:
            raise ValueError("vocabulary is empty: no labelled images or empty charset")
        self.chars = chars
        self._index = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_labels(cls, labels, charset: str | None = None) -> "Vocabulary":
        if charset:
            return cls(list(normalize_charset(charset)))
        return cls(sorted({c for label in labels for c in label}))

    def __len__(self) -> int:  # number of real characters (without the reserved id 0)
        return len(self.chars)

    @property
    def num_classes(self) -> int:  # including the reserved id 0
        return len(self.chars) + 1

    def unknown(self, label: str) -> set[str]:
        return {c for c in label if c not in self._index}

    def encode(self, label: str) -> list[int]:
        try:
            return [self._index[c] for c in label]
        except KeyError as err:
            raise ValueError(f"label {label!r} has character {err.args[0]!r} outside the vocabulary") from None

    def decode(self, ids) -> str:
        n = len(self.chars)
        return "".join(self.chars[i - 1] for i in np.asarray(ids).tolist() if 0 < i <= n)

    def to_json(self) -> dict:
        return {"chars": self.chars}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])
