"""PNG contact sheets: test predictions with their truth, wrong ones first; a learning
curve's chart."""
from __future__ import annotations

import math
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet_image(images, captions, columns, colors, scale).save(path)
    return path


def sheet_image(images: np.ndarray, captions: list[str], columns: int = 4, colors: list | None = None,
                scale: int = 1) -> Image.Image:
    """`contact_sheet`'s grid as an image, for a caller that sends it rather than saves it."""
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
    return sheet


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


CHART_SIZE = (640, 400)             # width, height of a curve chart, pixels
CHART_MARGINS = (60, 20, 36, 50)    # left, right, top, bottom: room for the axis labels
CHART_PAD = 10                      # inside the frame, so no marker or bar end touches it
# one colour per curve (a design, an optimizer, ...), in the order of the sweep's jobs
CURVE_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
                 (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


# Steps of a chart's value axis, finest first: the finest giving at most AXIS_TICKS intervals
# over the values is used, so a curve from 0.86 to 0.90 is not a flat line on a 0-1 axis.
AXIS_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5)
AXIS_TICKS = 6
AXIS_MIN_SPAN = 0.05  # values closer than this are drawn on an axis this tall around them


def value_axis(values: list[float]) -> tuple[float, float, float]:
    """(lowest, highest, step) of a chart's value axis (0-1 scores): the values' range, at
    least AXIS_MIN_SPAN tall, widened to whole steps."""
    lo, hi = max(min(values), 0.0), min(max(values), 1.0)
    if hi - lo < AXIS_MIN_SPAN:
        centre = min(max((lo + hi) / 2, AXIS_MIN_SPAN / 2), 1.0 - AXIS_MIN_SPAN / 2)
        lo, hi = centre - AXIS_MIN_SPAN / 2, centre + AXIS_MIN_SPAN / 2
    for step in AXIS_STEPS:
        low, high = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        if high - low <= AXIS_TICKS:
            break
    return round(low * step, 6), round(high * step, 6), step


def fitted(draw, text: str, font, width: float) -> str:
    """`text`, shortened in the middle with "…" until it is at most `width` pixels wide (a
    long group label keeps its start and its end, where designs usually differ)."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 2:
        keep -= 1
        short = text[:(keep + 1) // 2] + "…" + text[len(text) - keep // 2:]
        if draw.textlength(short, font=font) <= width:
            return short
    return "…"


def curve_chart(series: list[dict], title: str, path) -> Path:
    """Learning curves as PNG. Each series is {"label", "sizes" (training images), "means"
    (0-1), "lows", "highs"}: its means joined by a line, with a capped bar from low to high at
    each size (the spread over its jobs), drawn over the marker so a narrow one still shows.
    The x axis spans every series' sizes (at least two), logarithmic when they span 4x or
    more, as learning curves usually do; the value axis spans the values (`value_axis`). With
    more than one series a legend under the chart names them (long names shortened)."""
    (width, height), (left, right, top, bottom) = CHART_SIZE, CHART_MARGINS
    sizes = sorted({size for one in series for size in one["sizes"]})
    log_x = sizes[-1] >= 4 * sizes[0]
    scale = math.log if log_x else float
    first, last = scale(sizes[0]), scale(sizes[-1])
    lowest, highest, step = value_axis([v for one in series for key in ("means", "lows", "highs") for v in one[key]])

    def x(size):
        return left + CHART_PAD + (scale(size) - first) / (last - first) * (width - left - right - 2 * CHART_PAD)

    def y(value):
        spread = (highest - min(max(value, lowest), highest)) / (highest - lowest)
        return top + CHART_PAD + spread * (height - top - bottom - 2 * CHART_PAD)

    font = _font(12)
    line = 16  # a legend row: below the chart, so it never hides a curve
    legend = line * len(series) + 6 if len(series) > 1 else 0
    image = Image.new("RGB", (width, height + legend), "white")
    draw = ImageDraw.Draw(image)
    for k in range(round((highest - lowest) / step) + 1):
        level = lowest + k * step
        draw.line([(left, y(level)), (width - right, y(level))], fill=(225, 225, 225))
        draw.text((8, y(level) - 7), f"{level:.2f}", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for size in sizes:  # centred under its point, but kept inside the image
        text_width = draw.textlength(str(size), font=font)
        at = min(max(x(size) - text_width / 2, 2), width - 2 - text_width)
        draw.text((at, height - bottom + 6), str(size), fill="black", font=font)
    draw.text((left, 10), title, fill="black", font=font)
    draw.text((left, height - 22), "training images" + (" (log scale)" if log_x else ""), fill="black", font=font)
    for k, one in enumerate(series):
        colour = CURVE_COLOURS[k % len(CURVE_COLOURS)]
        points = [(x(size), y(mean)) for size, mean in zip(one["sizes"], one["means"])]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        for size, low, high in zip(one["sizes"], one["lows"], one["highs"]):
            if high <= low:  # one job, or jobs that agree: nothing to show but the marker
                continue
            px, py_low, py_high = x(size), y(low), y(high)
            draw.line([(px, py_low), (px, py_high)], fill=colour, width=2)
            for end in (py_low, py_high):
                draw.line([(px - 6, end), (px + 6, end)], fill=colour, width=2)
    for k, one in enumerate(series if legend else []):
        colour, row = CURVE_COLOURS[k % len(CURVE_COLOURS)], height + k * line
        draw.rectangle([left, row + 3, left + 12, row + 11], fill=colour)
        draw.text((left + 18, row), fitted(draw, one["label"], font, width - left - 18 - 4), fill="black", font=font)
    image.save(path)
    return Path(path)
