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


def prediction_gallery(images: np.ndarray, truths: list[str], results: list[dict], path,
                       max_items: int = 48, columns: int = 4) -> Path:
    """Grid of images, each captioned 'pred (confidence) / truth', errors (red) first."""
    order = sorted(range(len(truths)), key=lambda i: (results[i]["result"] == truths[i], results[i]["confidence"]))
    order = order[:max_items]
    h, w = images.shape[1:3]
    cell_w, cell_h = max(w, 160), h + 30
    rows = max(1, (len(order) + columns - 1) // columns)
    sheet = Image.new("RGB", (cell_w * columns, cell_h * rows), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for k, i in enumerate(order):
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        img = images[i][..., 0] if images.shape[-1] == 1 else images[i]
        sheet.paste(Image.fromarray(img).convert("RGB"), (x, y))
        ok = results[i]["result"] == truths[i]
        text = f"{results[i]['result']} ({results[i]['confidence']:.2f}) / {truths[i]}"
        draw.text((x + 2, y + h + 2), text, fill=(0, 110, 0) if ok else (200, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
