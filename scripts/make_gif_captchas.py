#!/usr/bin/env python
"""Animated GIF captchas whose characters blink: the example of `preprocess.frames`.

    python scripts/make_gif_captchas.py --out data/gif [--count 6000] [--seed 0]
    python -m bearcat.train dataset=folder dataset.root=data/gif preprocess.frames=darkest

Each captcha is 4 frames of 120 x 40 pixels. Character i shows in the frames f where i + f
is even, so any one frame holds only half of the text (the first frame: characters 1 and
3). Every frame adds dots and strokes of its own in the text's colour, which move from
frame to frame. Written as OUT/LABEL_NNNNN.gif. Refuses a folder that already holds
images: nothing is overwritten.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHARSET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: a site that blinks its text avoids those too
SIZE = (120, 40)
FRAMES = 4
LENGTH = 4


def glyph(char: str, font, color: tuple, angle: float):
    """One character on a transparent tile, turned by `angle` degrees."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(char)
    tile = Image.new("RGBA", (right - left + 4, bottom - top + 4), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((2 - left, 2 - top), char, font=font, fill=color)
    return tile.rotate(angle, resample=Image.BILINEAR, expand=True)


def captcha_frames(label: str, rng: random.Random, font_file: str) -> list:
    """The frames of one captcha (RGB images)."""
    from PIL import Image, ImageDraw, ImageFont

    background = tuple(rng.randint(225, 255) for _ in range(3))
    color = tuple(rng.randint(0, 120) for _ in range(3))
    placed = []
    for i, char in enumerate(label):
        tile = glyph(char, ImageFont.truetype(font_file, rng.randint(26, 32)), color, rng.uniform(-20, 20))
        x = 6 + i * 28 + rng.randint(-3, 3)
        y = (SIZE[1] - tile.height) // 2 + rng.randint(-3, 3)
        placed.append((tile, (x, y)))
    frames = []
    for f in range(FRAMES):
        frame = Image.new("RGB", SIZE, background)
        for i, (tile, xy) in enumerate(placed):
            if (i + f) % 2 == 0:
                frame.paste(tile, xy, tile)
        draw = ImageDraw.Draw(frame)
        for _ in range(14):  # dots that move between frames
            x, y = rng.randrange(SIZE[0]), rng.randrange(SIZE[1])
            draw.ellipse((x, y, x + 2, y + 2), fill=color)
        for _ in range(2):  # and short strokes
            x, y = rng.randrange(SIZE[0]), rng.randrange(SIZE[1])
            draw.line((x, y, x + rng.randint(-12, 12), y + rng.randint(-6, 6)), fill=color, width=1)
        frames.append(frame)
    return frames


def main() -> None:
    from captcha.image import DEFAULT_FONTS

    from bearcat.data.labels import holds_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a new or empty folder")
    ap.add_argument("--count", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    if holds_images(out):
        sys.exit(f"{out}: already holds images; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for n in range(args.count):
        label = "".join(rng.choice(CHARSET) for _ in range(LENGTH))
        frames = captcha_frames(label, rng, DEFAULT_FONTS[0])
        frames[0].save(out / f"{label}_{n:05d}.gif", save_all=True, append_images=frames[1:], duration=150, loop=0)
    print(f"{args.count} animated captchas in {out}")


if __name__ == "__main__":
    main()
