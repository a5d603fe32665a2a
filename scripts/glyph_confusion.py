#!/usr/bin/env python
"""How well can single characters be told apart as the `captcha` library draws them?

    python scripts/glyph_confusion.py [--charset 0-9A-Z] [--per-char 1500] [--scale 0.533]
                                      [--fonts F.ttf ...] [--font-sizes 42 50 56]
                                      [--epochs 12] [--out outputs/bench/glyphs.json]

Draws isolated characters with ImageCaptcha's own per-character step (`_draw_character`:
crop to the ink, random rotation, random warp back into the font's character cell), seeded,
scales them as Bearcat's default preprocessing scales a 160x60 captcha to 32 pixels high
(0.533), trains a small CNN on them and prints its held-out accuracy and the most confused
pairs. No neighbours, no noise curve or dots: this is the easiest form of the task, so the
figures say how much of a character's identity the drawing itself leaves, at that scale,
for one small classifier (not a proven limit). It also prints each character's cell and ink
size: the cell is what every glyph is stretched into.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def expand(charset: str) -> str:
    """'0-9A-Z' -> '0123...XYZ' (ranges of two characters around a dash)."""
    out, i = [], 0
    while i < len(charset):
        if i + 2 < len(charset) and charset[i + 1] == "-":
            out += [chr(c) for c in range(ord(charset[i]), ord(charset[i + 2]) + 1)]
            i += 3
        else:
            out.append(charset[i])
            i += 1
    return "".join(out)


def cell_and_ink(chars: str, fonts: list[str] | None = None, font_sizes: list[int] | None = None) -> dict:
    """{character: {font size (with several fonts "FILE SIZE"): {"cell": [w, h], "ink": [w, h]}}}:
    the cell ImageCaptcha stretches the glyph into, and the glyph's own ink size."""
    from captcha.image import ImageCaptcha
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    sizes = {}
    truefonts = ImageCaptcha(fonts=fonts, font_sizes=font_sizes).truefonts
    several = len({font.path for font in truefonts}) > 1
    for font in truefonts:
        name = f"{Path(font.path).name} {font.size}" if several else str(font.size)
        for c in chars:
            _, _, w, h = draw.multiline_textbbox((1, 1), c, font=font)
            ink = Image.new("L", (int(w) + 8, int(h) + 8))
            ImageDraw.Draw(ink).text((0, 0), c, font=font, fill=255)
            x0, y0, x1, y1 = ink.getbbox()
            sizes.setdefault(c, {})[name] = {"cell": [int(w), int(h)], "ink": [x1 - x0, y1 - y0]}
    return sizes


def draw_glyphs(chars: str, per_char: int, scale: float, seed: int, fonts: list[str] | None = None,
                font_sizes: list[int] | None = None, cells: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (images N x H x W x 1 in 0..1, class ids): each glyph's alpha centred on a blank
    canvas the size of the largest cell, then resized by `scale`. `cells`: what
    `cell_and_ink` returns for these characters and fonts (computed when not given)."""
    import captcha.image
    from PIL import Image, ImageDraw

    from bearcat.data.sources import _SeededSecrets

    generator = captcha.image.ImageCaptcha(fonts=fonts, font_sizes=font_sizes)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cells = cells or cell_and_ink(chars, fonts, font_sizes)
    width = max(size["cell"][0] for sizes in cells.values() for size in sizes.values())
    height = max(size["cell"][1] for sizes in cells.values() for size in sizes.values())
    out_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    images, labels = [], []
    library_secrets = captcha.image.secrets
    captcha.image.secrets = _SeededSecrets(random.Random(seed))  # the library's draws, seeded
    try:
        for k, c in enumerate(chars):
            for _ in range(per_char):
                alpha = generator._draw_character(c, draw, (0, 0, 0)).getchannel("A")
                canvas = Image.new("L", (width, height))
                canvas.paste(alpha, ((width - alpha.width) // 2, (height - alpha.height) // 2))
                images.append(np.asarray(canvas.resize(out_size, Image.BILINEAR), np.float32) / 255.0)
                labels.append(k)
    finally:
        captcha.image.secrets = library_secrets
    return np.stack(images)[..., None], np.array(labels)


def classifier(shape: tuple, classes: int):
    import keras

    x = inputs = keras.Input(shape)
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPool2D(2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--charset", default="0-9A-Z", help="characters to tell apart (ranges like 0-9 allowed)")
    ap.add_argument("--per-char", type=int, default=1500, help="glyphs drawn per character (a sixth held out)")
    ap.add_argument("--scale", type=float, default=32 / 60, help="resize factor (0.533: 60-pixel captchas to 32)")
    ap.add_argument("--fonts", nargs="+", help="font files (.ttf); default: the library's own")
    ap.add_argument("--font-sizes", type=int, nargs="+", help="font sizes; default: the library's (42 50 56)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    import keras

    from bearcat.atomic import write_json
    from bearcat.callbacks import PreciseBatchNorm
    from bearcat.experiment import outputs

    chars = expand(args.charset)
    if len(set(chars)) != len(chars) or len(chars) < 2:
        ap.error(f"--charset {args.charset}: needs two or more different characters")
    keras.utils.set_random_seed(args.seed)
    cells = cell_and_ink(chars, args.fonts, args.font_sizes)
    x, y = draw_glyphs(chars, args.per_char, args.scale, args.seed, args.fonts, args.font_sizes, cells)
    order = np.random.default_rng(args.seed).permutation(len(x))
    x, y = x[order], y[order]
    held = len(x) // 6
    model = classifier(x.shape[1:], len(chars))
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, args.epochs * (len(x) - held) // 64)),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    # BatchNorm statistics re-estimated after each epoch, as Bearcat's training does (they lag the weights)
    model.fit(x[held:], y[held:], batch_size=64, epochs=args.epochs, verbose=2,
              callbacks=[PreciseBatchNorm(x[held:], 2048, args.seed)])
    predicted = outputs(model, x[:held]).argmax(1)  # not model.predict: see bearcat.experiment.outputs
    truth = y[:held]
    confusion = np.zeros((len(chars), len(chars)), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    pairs = []
    for i in range(len(chars)):
        for j in range(i + 1, len(chars)):
            both = confusion[i, i] + confusion[i, j] + confusion[j, i] + confusion[j, j]
            mixed = confusion[i, j] + confusion[j, i]
            if mixed:
                pairs.append({"pair": chars[i] + chars[j], "confused": int(mixed),
                              "pair_accuracy": round(1 - mixed / max(both, 1), 4)})
    pairs.sort(key=lambda p: -p["confused"])
    report = {"charset": chars, "glyphs": len(x), "held_out": int(held), "scale": args.scale,
              "input": list(x.shape[1:3]), "epochs": args.epochs,
              "accuracy": round(float((predicted == truth).mean()), 4),
              "per_char_accuracy": {c: round(float(confusion[k, k] / max(confusion[k].sum(), 1)), 4)
                                    for k, c in enumerate(chars)},
              "most_confused": pairs[:10], "fonts": args.fonts, "font_sizes": args.font_sizes,
              "cells": cells}
    print(f"glyphs {len(x)} ({held} held out), input {x.shape[1]} x {x.shape[2]} (scale {args.scale:.3f}): "
          f"accuracy {report['accuracy']:.4f}")
    for p in pairs[:10]:
        print(f"  {p['pair']}: {p['confused']} confused, accuracy within the pair {p['pair_accuracy']:.4f}")
    for c in sorted(chars, key=lambda c: report["per_char_accuracy"][c])[:6]:
        size = next(iter(report["cells"][c]))
        print(f"  {c}: accuracy {report['per_char_accuracy'][c]:.4f}; at font size {size} "
              f"cell {report['cells'][c][size]['cell']}, ink {report['cells'][c][size]['ink']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, report, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
