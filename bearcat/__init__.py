"""Bearcat: train, evaluate, export and serve captcha solvers (research and study only)."""
import os

# TensorFlow switches its oneDNN kernels on by itself only on some Intel CPUs. On the 2-core
# AMD machine Bearcat is developed on they made the default model's training step 1.2x
# faster (`python scripts/bench_step.py`: median of 3 interleaved runs each). Set before
# TensorFlow is imported; a value the user set wins (TF_ENABLE_ONEDNN_OPTS=0 turns them off).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from pathlib import Path as _Path

# The config tree Hydra composes: conf/ at the top of a checkout (and of an editable install),
# or the copy a wheel carries inside the package (setup.py maps conf/ to bearcat/conf).
_PACKAGED = _Path(__file__).resolve().parent / "conf"
CONFIG_DIR = str(_PACKAGED if (_PACKAGED / "train.yaml").is_file() else _PACKAGED.parent.parent / "conf")
