"""`tiles`: a generated image-classification set for the num_classes mode: one shape per
tile (circle, star, arrow, ...) drawn with Pillow at a random size, rotation, position and
contrast, over a noisy background with distractor lines. Generated once into
`cache_dir/tiles/<hash of the settings>/{train,val,test}/CLASS_hash.png` and reused.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from bearcat.atomic import replacing
from bearcat.data.generated import draw_split, generate_splits, sample_rng, settings_root
from bearcat.data.labels import label_from_name
from bearcat.data.sources import SPLITS, Splits, split_sizes

log = logging.getLogger(__name__)


def _regular(n: int, inner: float | None = None) -> list[tuple[float, float]]:
    """Unit-radius regular n-gon, or an n-pointed star when `inner` (radius) is given."""
    steps = 2 * n if inner else n
    return [((inner if inner and k % 2 else 1.0) * math.cos(2 * math.pi * k / steps - math.pi / 2),
             (inner if inner and k % 2 else 1.0) * math.sin(2 * math.pi * k / steps - math.pi / 2))
            for k in range(steps)]


# class name -> polygon in unit coordinates (None: drawn with ellipses)
POLYGONS = {
    "triangle": _regular(3),
    "square": _regular(4),
    "pentagon": _regular(5),
    "hexagon": _regular(6),
    "star": _regular(5, inner=0.42),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)],
    "circle": None,
    "ring": None,
    "crescent": None,
}
SHAPES = tuple(POLYGONS)


def _draw_shape(draw, shape: str, cx: float, cy: float, radius: float, angle: float, fg: int, bg: int):
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fg)
    elif shape == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=fg,
                     width=max(2, round(radius * 0.3)))
    elif shape == "crescent":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fg)
        dx, dy = 0.45 * radius * math.cos(angle), 0.45 * radius * math.sin(angle)
        r2 = radius * 0.85
        draw.ellipse([cx + dx - r2, cy + dy - r2, cx + dx + r2, cy + dy + r2], fill=bg)
    else:
        c, s = math.cos(angle), math.sin(angle)
        points = [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in POLYGONS[shape]]
        draw.polygon(points, fill=fg)


def _draw_tile(job) -> str:
    """Draw one tile; deterministic in (seed, split, index) whatever the worker."""
    from PIL import Image, ImageDraw, ImageFilter

    out_dir, split, index, s = job
    rng, name = sample_rng(s["seed"], split, index)
    shape = rng.choice(s["classes"])
    size = s["tile_size"]
    bg, delta = rng.randint(0, 255), rng.randint(80, 160)  # at least 80 grey levels of contrast
    fg = bg + delta if bg + delta <= 255 else bg - delta
    if fg < 0:
        fg = 255 if bg < 128 else 0
    tint = [rng.randint(-30, 30) for _ in range(3)]
    img = Image.new("L", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(round(s["noise"] * 6)):  # distractor lines
        xy = [rng.uniform(0, size) for _ in range(4)]
        draw.line(xy, fill=rng.randint(0, 255), width=1)
    radius = rng.uniform(0.25, 0.42) * size
    cx, cy = (rng.uniform(radius, size - radius) for _ in range(2))
    _draw_shape(draw, shape, cx, cy, radius, rng.uniform(0, 2 * math.pi), fg, bg)
    for _ in range(round(s["noise"] * size * size / 20)):  # speckles
        img.putpixel((rng.randrange(size), rng.randrange(size)), rng.randint(0, 255))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    rgb = Image.merge("RGB", [img.point(lambda p, t=t: max(0, min(255, p + t))) for t in tint])
    path = Path(out_dir) / split / f"{shape}_{name}.png"
    with replacing(path) as tmp:  # parallel sweep jobs on a cold cache draw the same files
        rgb.save(tmp, format="PNG")
    return str(path)


def tile_settings(classes: list[str] | None, tile_size: int, noise: float, seed: int) -> dict:
    """Checked generator settings: every value that changes what is drawn."""
    classes = list(classes or SHAPES)
    unknown = sorted(set(classes) - set(SHAPES))
    if unknown:
        raise ValueError(f"dataset.classes: unknown shapes {unknown}; choose from {list(SHAPES)}")
    if len(set(classes)) < 2:
        raise ValueError("dataset.classes: need at least 2 different shapes")
    if tile_size < 16:
        raise ValueError(f"dataset.tile_size={tile_size}: need at least 16 pixels")
    return dict(classes=sorted(set(classes)), tile_size=int(tile_size), noise=float(noise), seed=int(seed))


def draw_tiles_folder(output: Path, sizes: dict[str, int], settings: dict, workers: int | None = None) -> dict:
    """Tiles with checked `settings` into output/{train,val,test}/CLASS_hash.png, without the
    cache's markers: `prepare action=generate`."""
    return {split: len(draw_split(output, split, sizes[split], _draw_tile, settings, "tiles", workers))
            for split in SPLITS}


def tiles(train_size: int, val_size: int, test_size: int, seed: int, cache_dir: str,
          classes: list[str] | None = None, tile_size: int = 64, noise: float = 0.5,
          workers: int | None = None, **_ignored) -> Splits:
    """Generated shape tiles, cached under `cache_dir/tiles/<settings hash>/`."""
    settings = tile_settings(classes, tile_size, noise, seed)
    sizes = split_sizes(train_size, val_size, test_size)
    root = settings_root(cache_dir, "tiles", settings)
    paths = generate_splits(root, sizes, _draw_tile, settings, "tiles", workers)
    out = {split: [(p, label_from_name(p)) for p in paths[split]] for split in SPLITS}
    log.info("tiles in %s: %s", root, {k: len(v) for k, v in out.items()})
    return Splits(out["train"], out["val"], out["test"])
