#!/usr/bin/env python
"""Slider captchas: a background with a puzzle-piece-shaped gap, and the gap's box in a
Pascal VOC XML beside each image: the example of `experiment=slider`.

    python scripts/make_slider_captchas.py --out data/slider [--count 3000] [--seed 0]
    python -m bearcat.train experiment=slider dataset.root=data/slider

Each image is 260 x 160 (GeeTest's size). The gap is a square piece of 40 to 50 pixels with
a round knob on two of its sides, shaded 35-60% darker than the background under it, with
a light rim, anywhere right of where the piece starts. Backgrounds are drawn as the click
captchas' are (gradients, noise, shapes), or cut from your own pictures with
`--background-dir DIR`. Writes OUT/NNNNN.png, OUT/NNNNN.xml (one object `gap`; its xmin is
the answer: how far the piece must travel, plus where it starts) and OUT/pieces/NNNNN.png
(the piece, cut from the picture before the gap was shaded). `--decoys N` adds up to N
fake gaps, the same shapes shaded fainter and without a rim; only the real gap is boxed.
Refuses a folder that already holds images: nothing is overwritten.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = (260, 160)
PIECE = (40, 50)        # piece side range, pixels (knobs included)
START = 6               # where the piece starts: the gap is always right of it
SHADE = (0.40, 0.65)    # the gap keeps this share of the background's brightness
DECOY_SHADE = (0.70, 0.85)  # a fake gap, fainter


def piece_mask(side: int, rng: random.Random):
    """An 'L' mask of side x side: a square body with a round knob on its top or bottom and
    on its left or right side."""
    from PIL import Image, ImageDraw

    knob = round(side * 0.14)
    body = (knob, knob, side - knob - 1, side - knob - 1)
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    draw.rectangle(body, fill=255)
    cx = (body[0] + body[2]) / 2
    cy = (body[1] + body[3]) / 2
    top = rng.random() < 0.5
    right = rng.random() < 0.5
    ky = body[1] if top else body[3]
    kx = body[2] if right else body[0]
    draw.ellipse((cx - knob, ky - knob, cx + knob, ky + knob), fill=255)
    draw.ellipse((kx - knob, cy - knob, kx + knob, cy + knob), fill=255)
    return mask


def position(rng: random.Random, side: int) -> tuple[int, int]:
    """Where a piece of this side may go: right of where the piece starts, inside the image."""
    return rng.randint(START + side + 4, SIZE[0] - side - 2), rng.randint(2, SIZE[1] - side - 2)


def overlaps(a, b, margin: int = 4) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def decoy(rng: random.Random, pixels, taken: list) -> None:
    """A fake gap, shaded fainter than the real one and without its rim, where it overlaps
    no gap drawn so far (tried a few times; left out when there is no room)."""
    import numpy as np

    side = rng.randint(*PIECE)
    mask = np.asarray(piece_mask(side, rng), np.float32)[..., None] / 255.0
    for _ in range(20):
        x, y = position(rng, side)
        box = (x, y, x + side, y + side)
        if not any(overlaps(box, other) for other in taken):
            area = pixels[y:y + side, x:x + side]
            pixels[y:y + side, x:x + side] = area * (1 - mask * (1 - rng.uniform(*DECOY_SHADE)))
            taken.append(box)
            return


def slider_captcha(rng: random.Random, images: list[str], decoys: int = 0, decoy_rng: random.Random | None = None):
    """(image, piece, gap box x1 y1 x2 y2) of one captcha, with up to `decoys` fake gaps
    drawn from `decoy_rng`: `rng` draws the same, so every captcha's real gap and picture
    are those of decoys=0."""
    import numpy as np
    from PIL import Image, ImageChops, ImageFilter

    from bearcat.data.click import draw_background

    width, height = SIZE
    kind = "images" if images else rng.choice(("gradient", "noise", "shapes"))
    picture = Image.fromarray(draw_background(rng, kind, width, height, images))
    side = rng.randint(*PIECE)
    mask = piece_mask(side, rng)
    x, y = position(rng, side)
    full = Image.new("L", SIZE, 0)
    full.paste(mask, (x, y))
    piece = picture.crop((x, y, x + side, y + side))
    piece.putalpha(mask)
    rim = ImageChops.subtract(full.filter(ImageFilter.MaxFilter(3)), full)
    pixels = np.asarray(picture, np.float32)
    inside = np.asarray(full, np.float32)[..., None] / 255.0
    edge = np.asarray(rim, np.float32)[..., None] / 255.0
    pixels = pixels * (1 - inside * (1 - rng.uniform(*SHADE)))
    pixels = pixels + edge * (255 - pixels) * 0.6
    box = full.getbbox()  # x2, y2 exclusive
    taken = [box]
    for _ in range(decoys):
        decoy(decoy_rng, pixels, taken)
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)), piece, box


def main() -> None:
    from bearcat.data.click import ClickObject, ClickRecord
    from bearcat.data.labels import holds_images, pictures_in
    from bearcat.data.voc import write_voc

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a new or empty folder")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--background-dir", default=None, help="cut the backgrounds from these pictures")
    ap.add_argument("--decoys", type=int, default=0,
                    help="fake gaps per captcha: the same shapes, fainter (70-85%% of the brightness) and without a rim")
    args = ap.parse_args()
    out = Path(args.out)
    if holds_images(out):
        sys.exit(f"{out}: already holds images; choose a new or empty folder")
    try:
        images = pictures_in(args.background_dir, "--background-dir") if args.background_dir else []
    except (FileNotFoundError, ValueError) as error:
        sys.exit(str(error))
    out.mkdir(parents=True, exist_ok=True)
    (out / "pieces").mkdir(exist_ok=True)
    rng = random.Random(args.seed)
    for n in range(args.count):
        decoy_rng = random.Random(f"{args.seed}/decoys/{n}") if args.decoys else None
        image, piece, box = slider_captcha(rng, images, args.decoys, decoy_rng)
        path = out / f"{n:05d}.png"
        image.save(path)
        piece.save(out / "pieces" / f"{n:05d}.png")
        write_voc(ClickRecord(str(path), *SIZE, "", [ClickObject("gap", tuple(map(float, box)), True)]),
                  out / f"{n:05d}.xml")
    print(f"{args.count} slider captchas in {out} (pieces in {out / 'pieces'})")


if __name__ == "__main__":
    main()
