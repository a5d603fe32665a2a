"""Checks of settings read from YAML or the command line: types (bool is an int to Python,
so `epochs=true` or `threshold=true` would otherwise pass as 1) and paths that do not exist.
No Hydra here: bearcat.data.preprocess imports this in every worker process and in the
light install (the `+` key check lives in bearcat/overrides.py)."""
from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np


def is_whole_number(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    return is_whole_number(value) or isinstance(value, (float, np.floating))


def whole_setting(key: str, value, least: int, most: int | None = None) -> int:
    """`value` as an int, or a ValueError naming `key=value` and the range it takes."""
    if not is_whole_number(value) or value < least or (most is not None and value > most):
        span = f"from {least} to {most}" if most is not None else f"{least} or more"
        # quoted only when text reads as a number ('128' from YAML), else as the user typed it
        shown = repr(value) if isinstance(value, str) and value.strip().lstrip("+-").isdigit() else value
        raise ValueError(f"{key}={shown}: a whole number, {span}")
    return int(value)


def check_folder(key: str, value) -> None:
    """A folder setting, when set, names a folder that is there (else the name meant)."""
    if value not in (None, "") and not Path(str(value)).is_dir():
        raise FileNotFoundError(not_found(key, value, kind="folder"))


def number_setting(key: str, value) -> None:
    """A number, 0 or more, else a ValueError naming `key=value` (text reached Keras or float())."""
    if not (is_number(value) and value >= 0):
        raise ValueError(f"{key}={value}: a number, 0 or more")


def flag_setting(key: str, value) -> None:
    """True or false: Python reads any text but "" as true (`split.move=maybe` moved images)."""
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value}: true or false")


def fraction_setting(key: str, value, optional: bool = False) -> None:
    """A confidence or share from 0 to 1 (None too when `optional`), else a ValueError naming `key=value`."""
    if (value is None and optional) or (is_number(value) and 0 <= value <= 1):
        return
    raise ValueError(f"{key}={value}: a number from 0 to 1{', or null' if optional else ''}")


def whole_settings(cfg, **spans) -> list[int]:
    """A command's whole-number settings, each `key=(least, most)`, checked before anything
    slow loads (the command's `overrides.plain_errors` ends it with the one line)."""
    return [whole_setting(key, cfg.get(key), *span) for key, span in spans.items()]


def not_found(key: str, value, also: str = "", kind: str = "file or folder") -> str:
    """`key=value: no such file or folder` (then `also`), with the name meant when the folder
    above holds one spelt almost alike, else what it holds: a mistyped run folder, model file
    or data folder."""
    path = Path(str(value))
    message = f"{key}={value}: no such {kind}{also}"
    if path.parent.is_dir():
        names = sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("."))
        near = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
        if near:
            message += f"; did you mean {path.parent / near[0]}?"
        elif names:
            message += f"; {path.parent} holds {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
    return message
