"""Labels from file names, and the vocabulary that maps characters to class ids.

Convention (shared by every folder tool): the label is the file name before the first
``_``; a name without ``_`` uses its whole stem. ``a3Kx_5f2b9c.png`` -> ``a3Kx``. A labels
file (`LabelsFile`, ``dataset.labels_file``) replaces the names where they cannot hold the
label.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import unicodedata
from pathlib import Path

import numpy as np

from bearcat.atomic import write_json

QUARANTINE = "quarantine"  # where prepare check moves unreadable files, under dataset.root
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def label_from_name(path: str | Path, lowercase: bool = False) -> str:
    """Label encoded in a file name; '' when the name holds none (e.g. '_x.png')."""
    stem = Path(path).stem
    return clean_label(stem.split("_", 1)[0] if "_" in stem else stem, lowercase)


def clean_label(label: str, lowercase: bool = False) -> str:
    # NFC so that a Chinese or accented label typed on another OS compares equal.
    label = unicodedata.normalize("NFC", label)
    return label.lower() if lowercase else label


class LabelsFile:
    """Labels listed in a CSV file instead of file names: for labels a file name cannot hold
    (`_`, `/`, or `*` `?` on Windows, as in maths captchas) and for sets that ship a list.

    The header row names a `file` column and the label column (default `label`; other
    columns are ignored). `file` is the image's path relative to the data folder
    (`train/x.png`) or its bare name (`x.png`, found in any split folder, so the list still
    fits after `prepare action=split`). Spaces around a label are dropped, inside it kept.
    """

    def __init__(self, path: str | Path, column: str = "label", key: str = "dataset.labels_file"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{key}={path}: file not found")
        self.labels: dict[str, str] = {}
        lines: dict[str, int] = {}
        # utf-8-sig: a list saved by a spreadsheet starts with a byte-order mark
        with open(self.path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = self.header = list(reader.fieldnames or [])
            for name in ("file", column):
                if name not in header:
                    which = "the images' names" if name == "file" else f"dataset.label_column={column}"
                    raise ValueError(f"{key}={path}: no {name!r} column ({which}); header: {header}")
            for row in reader:
                name, label = _file_key(row["file"] or ""), (row[column] or "").strip()
                if not name:
                    continue
                if name in self.labels and self.labels[name] != label:
                    raise ValueError(f"{key}={path}: {name} has two labels, {self.labels[name]!r} "
                                     f"(line {lines[name]}) and {label!r} (line {reader.line_num})")
                self.labels[name], lines[name] = label, reader.line_num
        self.used: set[str] = set()

    def label(self, image: str | Path, root: str | Path, lowercase: bool = False) -> str:
        """The listed label of an image under root; '' when it is not listed (or blank)."""
        image = Path(image)
        for name in (_file_key(image.relative_to(root).as_posix()), image.name):
            if name in self.labels:
                self.used.add(name)
                return clean_label(self.labels[name], lowercase)
        return ""

    def unused(self) -> list[str]:
        """Rows whose image was not found (e.g. a typo, or a file quarantined by the check)."""
        return sorted(set(self.labels) - self.used)


def _file_key(name: str) -> str:
    """One spelling of a listed path: forward slashes, no leading './'."""
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def normalize_charset(charset: str | None) -> str | None:
    """A configured character set in the same Unicode form (NFC) as the labels read from
    file names, so a decomposed accent or a compatibility ideograph compares equal."""
    return unicodedata.normalize("NFC", str(charset)) if charset else charset


def shown_characters(chars: str) -> str:
    """Characters for a message: as they are, or quoted (`' '`, `'\\t'`) when one of them is
    a space or otherwise invisible, which bare would read as nothing."""
    return chars if chars and all(c.isprintable() and not c.isspace() for c in chars) else repr(chars)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def images_outside(base: Path, read: set[Path]) -> dict[str, int]:
    """{folder relative to base ("." for base itself): image files in it} for the folders
    under base that are not in `read` (quarantine/ aside)."""
    counts = {}
    for folder, subs, files in os.walk(base):  # names only: no stat per image
        here = Path(folder)
        if here == base:
            subs[:] = [s for s in subs if s != QUARANTINE]
        if here not in read:
            n = sum(1 for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
            if n:
                counts[here.relative_to(base).as_posix()] = n
    return dict(sorted(counts.items()))


def shown_folders(counts: dict[str, int], most: int = 5) -> str:
    """The first few of `images_outside`, as in "sub/ 584, old/ 12, ... (3 more folders)"."""
    named = [f"{'dataset.root itself' if k == '.' else k + '/'} {v}" for k, v in list(counts.items())[:most]]
    return ", ".join(named) + (f", ... ({len(counts) - most} more folders)" if len(counts) > most else "")


def holds_images(folder: Path) -> bool:
    """Whether `folder` exists with an image directly in it: the tools that write images
    refuse such a folder rather than overwrite."""
    return folder.is_dir() and any(is_image_file(p) for p in folder.iterdir())


def pictures_in(folder, option: str) -> list[str]:
    """The images directly in `folder`, sorted; an error naming `option` when the folder is
    missing or holds none (the generators' `--background-dir`)."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{option} {folder}: folder not found")
    found = sorted(str(p) for p in path.iterdir() if is_image_file(p))
    if not found:
        raise ValueError(f"{option} {folder}: no pictures in it")
    return found


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
