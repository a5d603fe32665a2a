"""Do the per-character heat maps sit on their characters? A proxy anyone can re-run: the
share of readings (two characters or more) whose character maps' horizontal centres go
strictly left to right, as the characters do, for each method and layer.

    python scripts/bench_gradcam.py --model outputs/runs/<dir>/model --images data/mysite/test --count 300

Prints one row per layer and method: readings scored, in order, share, and milliseconds
per image for the maps (CPU, batches of 50).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def in_order(explanation) -> tuple[int, int]:
    """(readings of 2+ characters, of them with centres strictly left to right)."""
    from bearcat.gradcam import centre_x

    scored = ordered = 0
    for chars in explanation.characters:
        if len(chars) < 2:
            continue
        centres = [centre_x(heat) for _, heat in chars]
        scored += 1
        ordered += None not in centres and all(b > a for a, b in zip(centres, centres[1:]))
    return scored, ordered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model bundle folder (a run's model/ or an export)")
    parser.add_argument("--images", required=True, help="a folder of images the model reads")
    parser.add_argument("--count", type=int, default=300, help="images explained (the first by name)")
    parser.add_argument("--layers", nargs="*", default=None, help="layers explained (default: the last feature map)")
    args = parser.parse_args()

    import numpy as np

    from bearcat.bundle import Predictor
    from bearcat.data.labels import is_image_file
    from bearcat.data.preprocess import preprocess
    from bearcat.gradcam import METHODS, conv_layer, explain
    from bearcat.modes.ctc import CTCMode

    predictor = Predictor(args.model)
    files = sorted(p for p in Path(args.images).iterdir() if is_image_file(p))[:args.count]
    if not files:
        raise SystemExit(f"--images {args.images}: no images")
    images = np.stack([preprocess(p, predictor.pre) for p in files])
    merge = isinstance(predictor.mode, CTCMode)
    layers = args.layers or [conv_layer(predictor.model).name]
    print(f"{len(files)} images of {args.images}, model {args.model} ({predictor.mode.name})", flush=True)
    print("| layer | method | readings of 2+ characters | characters left to right | share | ms per image |")
    print("|---|---|---:|---:|---:|---:|")
    for layer in layers:
        for method in METHODS:
            scored = ordered = 0
            start = time.perf_counter()
            for i in range(0, len(images), 50):
                s, o = in_order(explain(predictor.model, images[i:i + 50], layer, method, merge))
                scored, ordered = scored + s, ordered + o
            ms = (time.perf_counter() - start) * 1000 / len(images)
            print(f"| {layer} | {method} | {scored} | {ordered} | {ordered / max(1, scored):.3f} | {ms:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
    os._exit(0)  # TensorFlow's threads can hold the exit
