#!/usr/bin/env bash
# One-step set-up used by the README and CI: Python packages (and, where a feature needs
# them, system packages). Run inside the virtual environment you want to use.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -U pip
python -m pip install -q -e ".[dev]"
# A CJK font for Chinese captchas (click captchas, chinese_text): Debian's WenQuanYi Micro
# Hei, about 5 MB. Users without root can name their own font file instead (README).
if [ ! -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends fonts-wqy-microhei >/dev/null
  else
    echo "setup.sh: no CJK font; install fonts-wqy-microhei or pass dataset.font=/path/to/font.ttf" >&2
  fi
fi
# Headless Chromium for the upload-page test (Debian's package; playwright drives it and
# never downloads a browser of its own). Skipped when already there; needs root for apt.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "setup.sh: chromium is missing; install it (apt-get install chromium chromium-driver) for the browser test" >&2
  fi
fi
