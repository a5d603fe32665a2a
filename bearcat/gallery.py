"""PNG contact sheets: test predictions with their truth, wrong ones first."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(images: np.ndarray, captions: list[str], path, columns: int = 4,
                  colors: list | None = None, scale: int = 1) -> Path:
    """Grid of uint8 (H, W, C) images, each with its caption underneath, saved as PNG."""
    h, w = images.shape[1] * scale, images.shape[2] * scale
    cell_w, cell_h = max(w, 160), h + 30
    rows = max(1, (len(images) + columns - 1) // columns)
    sheet = Image.new("RGB", (cell_w * columns, cell_h * rows), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for k, (image, text) in enumerate(zip(images, captions)):
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        tile = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
        sheet.paste(tile.resize((w, h), Image.NEAREST) if scale != 1 else tile, (x, y))
        draw.text((x + 2, y + h + 2), text, fill=colors[k] if colors else (0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def prediction_gallery(images: np.ndarray, truths: list[str], results: list[dict], path,
                       max_items: int = 48, columns: int = 4) -> Path:
    """Grid of images, each captioned 'pred (confidence) / truth', errors (red) first."""
    order = sorted(range(len(truths)), key=lambda i: (results[i]["result"] == truths[i], results[i]["confidence"]))
    return reading_sheet(images, truths, results, order[:max_items], path, columns)


def reading_sheet(images: np.ndarray, truths: list[str], results: list[dict], order: list[int], path,
                  columns: int = 4, scale: int = 1) -> Path:
    """Contact sheet of images[order], each captioned 'pred (confidence) / truth', green when
    right and red when wrong."""
    captions = [f"{results[i]['result']} ({results[i]['confidence']:.2f}) / {truths[i]}" for i in order]
    colors = [(0, 110, 0) if results[i]["result"] == truths[i] else (200, 0, 0) for i in order]
    return contact_sheet(images[order], captions, path, columns, colors, scale)


def training_preview(images: np.ndarray, labels: list[str], path, augment=None, count: int = 32,
                     columns: int = 8, scale: int = 2, seed: int = 0) -> Path:
    """Contact sheet of `count` random training images exactly as the model gets them:
    preprocessed, then augmented (when `augment` is given), captioned with their label."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(count, len(images)), replace=False))
    shown = images[pick]
    if augment is not None:
        shown = augment.apply_batch(shown)
    return contact_sheet(shown, [labels[i] for i in pick], path, columns, scale=scale)
