#!/usr/bin/env python
"""Rotation captchas: a round picture turned by some angle, which the user must turn back
upright. The example of `experiment=rotate` (mode=num_classes, one class per angle step).

    python scripts/make_rotate_captchas.py --out data/rotate [--count 30000] [--step 5] [--seed 0]
    python -m bearcat.train experiment=rotate dataset.root=data/rotate

Each captcha is a round picture `--size` pixels across (white outside the circle) turned
clockwise by an angle drawn uniformly from 0-360 degrees. Its label is that angle rounded to
the nearest multiple of `--step` (0, 5, ..., 355 with the default step): turn the picture
back counter-clockwise by it. The exact angle of each file is in OUT/angles.csv (columns
file, angle), for measuring errors finer than a step.

Pictures are generated landscapes (a sky, a horizon, ground, and things standing on it:
trees, houses, mountains, clouds, a sun), or cut from your own upright photos with
`--background-dir DIR` (a random square of each, sometimes mirrored left to right). The
circle hides the corners, so nothing but the picture tells the angle. Refuses a folder that
already holds images: nothing is overwritten.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SKIES = [((40, 90, 170), (150, 195, 235)),    # day: deep blue above, pale at the horizon
         ((110, 115, 125), (190, 190, 195)),  # overcast
         ((60, 50, 110), (245, 150, 80)),     # sunset
         ((10, 15, 45), (50, 60, 100))]       # night
GROUNDS = [((60, 120, 40), (25, 70, 20)),     # grass: far colour, near colour
           ((150, 120, 80), (100, 75, 45)),   # earth
           ((225, 228, 235), (190, 195, 210)),  # snow: lighter than some skies
           ((210, 190, 140), (170, 145, 95)),   # sand
           ((40, 70, 110), (20, 40, 70))]     # water


def _jitter(rng: random.Random, colour, amount: int = 25):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def _gradient(draw, top: int, bottom: int, width: int, c0, c1) -> None:
    span = max(1, bottom - top)
    for y in range(top, bottom):
        t = (y - top) / span
        draw.line([(0, y), (width, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(c0, c1)))


def _tree(draw, rng, x: float, base: float, h: float) -> None:
    trunk = (rng.randint(70, 110), rng.randint(45, 70), rng.randint(20, 40))
    crown = _jitter(rng, (40, 110, 40), 35)
    draw.rectangle([x - h * 0.06, base - h * 0.4, x + h * 0.06, base], fill=trunk)
    if rng.random() < 0.5:  # a fir: a triangle pointing up
        draw.polygon([(x - h * 0.3, base - h * 0.3), (x + h * 0.3, base - h * 0.3), (x, base - h)], fill=crown)
    else:                   # a round crown on top of the trunk
        draw.ellipse([x - h * 0.3, base - h, x + h * 0.3, base - h * 0.35], fill=crown)


def _house(draw, rng, x: float, base: float, h: float) -> None:
    w = h * rng.uniform(0.8, 1.4)
    wall = _jitter(rng, rng.choice([(200, 190, 170), (170, 80, 60), (230, 230, 220)]), 20)
    roof = _jitter(rng, rng.choice([(120, 40, 30), (70, 70, 80)]), 20)
    top = base - h * 0.6
    draw.rectangle([x - w / 2, top, x + w / 2, base], fill=wall)
    draw.polygon([(x - w / 2 - h * 0.08, top), (x + w / 2 + h * 0.08, top), (x, base - h)], fill=roof)
    draw.rectangle([x - w * 0.1, base - h * 0.3, x + w * 0.1, base], fill=(60, 40, 30))  # door on the ground


def scene(rng: random.Random, size: int):
    """An upright generated landscape, size x size RGB."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    horizon = round(size * rng.uniform(0.35, 0.7))
    sky = [_jitter(rng, c) for c in rng.choice(SKIES)]
    ground = [_jitter(rng, c) for c in rng.choice(GROUNDS)]
    _gradient(draw, 0, horizon, size, *sky)
    _gradient(draw, horizon, size, size, *ground)
    if rng.random() < 0.6:  # a sun or moon
        r = size * rng.uniform(0.04, 0.09)
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, max(r + 1, horizon - 2 * r))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(rng, (250, 235, 170), 10))
    for _ in range(rng.randint(0, 3)):  # clouds: flat clusters, wider than tall
        cx, cy = rng.uniform(0, size), rng.uniform(0, horizon * 0.8)
        colour = _jitter(rng, (235, 235, 240), 15)
        for _ in range(rng.randint(3, 5)):
            w, h = size * rng.uniform(0.06, 0.14), size * rng.uniform(0.03, 0.06)
            dx, dy = rng.uniform(-w, w), rng.uniform(-h / 2, h / 2)
            draw.ellipse([cx + dx - w, cy + dy - h, cx + dx + w, cy + dy + h], fill=colour)
    for _ in range(rng.choice((0, 0, 1, 2, 3))):  # mountains standing on the horizon
        w, h = size * rng.uniform(0.2, 0.5), (horizon) * rng.uniform(0.2, 0.7)
        cx = rng.uniform(0, size)
        draw.polygon([(cx - w, horizon), (cx + w, horizon), (cx, horizon - h)],
                     fill=_jitter(rng, (90, 95, 110), 30))
    things = sorted(rng.uniform(horizon + 2, size * 1.05) for _ in range(rng.randint(1, 6)))
    for base in things:  # far ones first; the nearer, the bigger
        h = (base - horizon) * rng.uniform(0.4, 0.9) + size * 0.06
        (_tree if rng.random() < 0.6 else _house)(draw, rng, rng.uniform(0, size), base, h)
    return image


def load_photos(paths: list[str], size: int) -> list:
    """Every photo decoded once, its shorter side scaled down to what the smallest crop needs
    (a captcha is cut from a photo many times). A photo that cannot be read is an error naming
    it, before anything is written."""
    from PIL import Image

    from bearcat.data.preprocess import load_image

    shorter = round(size / 0.6)  # the smallest crop, 0.6 of the shorter side, is then `size` pixels
    out = []
    for path in paths:
        image = load_image(path).convert("RGB")
        scale = shorter / min(image.size)
        if scale < 1:
            image = image.resize((max(shorter, round(image.width * scale)), max(shorter, round(image.height * scale))),
                                 Image.LANCZOS)
        out.append(image)
    return out


def photo(rng: random.Random, image, size: int):
    """A random square of an upright photo, sometimes mirrored (still upright), size x size."""
    from PIL import Image, ImageOps

    side = round(min(image.size) * rng.uniform(0.6, 1.0))
    x, y = rng.randint(0, image.width - side), rng.randint(0, image.height - side)
    square = image.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
    return ImageOps.mirror(square) if rng.random() < 0.5 else square


def circle_mask(size: int):
    """A round mask with a smooth edge (drawn 4x larger, then scaled down)."""
    from PIL import Image, ImageDraw

    big = Image.new("L", (size * 4, size * 4), 0)
    ImageDraw.Draw(big).ellipse([0, 0, size * 4 - 1, size * 4 - 1], fill=255)
    return big.resize((size, size), Image.LANCZOS)


def rotate_captcha(picture, angle: float, mask):
    """`picture` turned clockwise by `angle` degrees, shown in a circle on white. The circle
    fits inside the square whatever the angle, so no corner or fill shows."""
    from PIL import Image

    turned = picture.rotate(-angle, resample=Image.BICUBIC)
    out = Image.new("RGB", picture.size, (255, 255, 255))
    out.paste(turned, (0, 0), mask)
    return out


def label_of(angle: float, step: int) -> str:
    """The angle rounded to the nearest multiple of `step`, in 0..360-step."""
    return str(round(angle / step) * step % 360)


def main() -> None:
    from bearcat.data.labels import holds_images, pictures_in
    from bearcat.data.preprocess import ImageError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a new or empty folder")
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--step", type=int, default=5,
                    help="degrees per class; must divide 360 (5 read finer angles than 10: README)")
    ap.add_argument("--size", type=int, default=128, help="the round picture's diameter, pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--background-dir", default=None, help="cut the pictures from these upright photos")
    args = ap.parse_args()
    if args.step < 1 or 360 % args.step:
        sys.exit(f"--step {args.step}: must be a whole number of degrees that divides 360 (e.g. 5, 10, 15)")
    out = Path(args.out)
    if holds_images(out):
        sys.exit(f"{out}: already holds images; choose a new or empty folder")
    try:
        photos = pictures_in(args.background_dir, "--background-dir") if args.background_dir else []
        photos = load_photos(photos, args.size)
    except (FileNotFoundError, ValueError, ImageError) as error:
        sys.exit(str(error))
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    mask = circle_mask(args.size)
    rows = []
    for n in range(args.count):
        picture = photo(rng, rng.choice(photos), args.size) if photos else scene(rng, args.size)
        angle = rng.uniform(0, 360)
        name = f"{label_of(angle, args.step)}_{n:05d}.png"
        rotate_captcha(picture, angle, mask).save(out / name)
        rows.append((name, f"{angle:.2f}"))
    with open(out / "angles.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "angle"])
        writer.writerows(rows)
    print(f"{args.count} rotation captchas in {out} ({360 // args.step} classes of {args.step} degrees)")


if __name__ == "__main__":
    main()
