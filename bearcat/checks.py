"""Type checks for settings read from YAML or the command line. bool is an int to Python,
so `epochs=true` or `threshold=true` would otherwise pass as 1."""
from __future__ import annotations

import numpy as np


def is_whole_number(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    return is_whole_number(value) or isinstance(value, (float, np.floating))
