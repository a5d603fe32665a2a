#!/usr/bin/env bash
# One-step set-up used by the README and CI: Python packages (and, where a feature needs
# them, system packages). Run inside the virtual environment you want to use.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -U pip
python -m pip install -q -e ".[dev]"
