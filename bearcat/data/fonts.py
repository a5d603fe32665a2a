"""Finding a font that can draw Chinese characters (click captchas, Chinese text captchas).

Bearcat ships no font. `scripts/setup.sh` installs Debian's `fonts-wqy-microhei`
(WenQuanYi Micro Hei, about 5 MB); users can name their own `.ttf`/`.ttc`/`.otf` instead.
"""
from __future__ import annotations

from pathlib import Path

# Searched in order when no font is named: the font setup.sh installs, then other common
# CJK fonts of Debian/Ubuntu, macOS and Windows.
CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)


def find_cjk_font(path: str | None = None, key: str = "dataset.font") -> str:
    """The font file to draw Chinese with: `path` when given (it must exist), else the first
    installed candidate. Raises a FileNotFoundError that says how to get one."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key}: font file not found: {path}")
        return str(Path(path).resolve())
    for candidate in CJK_FONT_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise FileNotFoundError(
        "No font that can draw Chinese characters was found. Install one "
        "(Debian/Ubuntu: `apt-get install fonts-wqy-microhei`, which scripts/setup.sh does "
        f"when run as root) or name a .ttf/.ttc/.otf file with {key}=/path/to/font.")
