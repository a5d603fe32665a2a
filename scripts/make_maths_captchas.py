#!/usr/bin/env python
"""Maths captchas ("7*3=?") drawn with the `captcha` library, labelled in a list: the example
of labels no file name can hold (`/`, `*`, `?`), read by `dataset.labels_file`.

    python scripts/make_maths_captchas.py --out data/maths [--count 6000] [--seed 0]
    python -m bearcat.train dataset=folder dataset.root=data/maths dataset.labels_file=labels.csv

Writes OUT/NNNNN.png and OUT/labels.csv (header file,label; the label is the expression as
drawn, e.g. `12/4=?`: reading it is the model's job, working it out the caller's). Refuses a
folder that already holds images or a labels.csv: nothing is overwritten.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def expression(rng: random.Random) -> str:
    """One of a + b, a - b (not negative), a * b, a / b (a whole quotient), then "=?"."""
    op = rng.choice("+-*/")
    a, b = rng.randint(0, 20), rng.randint(1, 20)
    if op == "-":
        a, b = max(a, b), min(a, b)
    if op == "/":
        a = b * rng.randint(0, 9)
    return f"{a}{op}{b}=?"


def main() -> None:
    from captcha.image import ImageCaptcha

    from bearcat.data.labels import holds_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a new or empty folder")
    ap.add_argument("--count", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=180)
    ap.add_argument("--height", type=int, default=60)
    args = ap.parse_args()
    out = Path(args.out)
    if (out / "labels.csv").exists() or holds_images(out):
        sys.exit(f"--out {out}: already holds images or labels.csv; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    drawer = ImageCaptcha(width=args.width, height=args.height)
    random.seed(args.seed)  # the library draws its noise and colours from the global generator
    rows = []
    for i in range(args.count):
        text = expression(rng)
        name = f"{i:05d}.png"
        drawer.generate_image(text).save(out / name)
        rows.append([name, text])
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    print(f"{args.count} maths captchas and labels.csv in {out}")


if __name__ == "__main__":
    main()
