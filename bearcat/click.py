"""Click solver: `solve(image, prompt)` -> where to click, in prompt order.

    python -m bearcat.click model=BUNDLE image=captcha.png prompt=天地人

Boxes named by a recogniser carry its five best names with their probabilities
(`candidates`): the prompted characters are then matched to boxes all at once, by the
assignment that maximises the product of detector score x P(character | box) over the
prompt, each box used once. So a box whose first guess is another prompted character
still answers with its second guess, and a character no box names is clicked on the
likeliest box left (with a low score). Boxes without candidates (per-character
detectors) are matched greedily: the best-scored box with that name. A prompted
character with no box to click is reported with `"x": null`, so the caller knows the
answer is incomplete. A prompted character the model cannot name at all (outside its
recogniser's classes) is refused: any click for it would be a guess.
"""
from __future__ import annotations

import json
import sys
import unicodedata
from functools import lru_cache

import numpy as np

from bearcat.detection.predictor import Detector


@lru_cache(maxsize=4)
def _detector(bundle: str, runtime: str = "auto") -> Detector:
    from bearcat.runtime import load_predictor

    predictor = load_predictor(bundle, runtime)
    if not getattr(predictor, "detects", False):
        raise ValueError(f"model={bundle}: a {predictor.mode.name} model, not a click-captcha (efficientdet) bundle")
    return predictor


FLOOR = 1e-4  # probability given to a name outside a box's candidates


def _click(char: str, box: dict | None, score: float) -> dict:
    if box is None:
        return {"char": char, "x": None, "y": None, "score": 0.0}
    return {"char": char, "x": (box["x1"] + box["x2"]) / 2, "y": (box["y1"] + box["y2"]) / 2, "score": score}


def order_clicks(prompt: str, boxes: list[dict]) -> list[dict]:
    """Prompt characters -> click points in prompt order (see the module docstring)."""
    if boxes and all("candidates" in b for b in boxes):
        return assign_clicks(prompt, boxes)
    used: set[int] = set()
    clicks = []
    for char in prompt:
        candidates = [(b["score"], k) for k, b in enumerate(boxes) if b["label"] == char and k not in used]
        if not candidates:
            clicks.append(_click(char, None, 0.0))
            continue
        score, k = max(candidates)
        used.add(k)
        clicks.append(_click(char, boxes[k], score))
    return clicks


def cheapest_assignment(cost) -> dict[int, int]:
    """Row -> column, each used at most once, min(rows, columns) pairs of least total cost
    (the Hungarian method, by shortest augmenting paths with row and column potentials).
    In NumPy, so solving needs no SciPy; a prompt and its boxes are a few dozen cells."""
    cost = np.asarray(cost, np.float64)
    if cost.shape[0] > cost.shape[1]:
        return {r: c for c, r in cheapest_assignment(cost.T).items()}
    rows, cols = cost.shape
    u, v = np.zeros(rows + 1), np.zeros(cols + 1)  # potentials; index 0 is the start of a path
    owner = np.zeros(cols + 1, np.int64)  # owner[j]: 1-based row holding column j (0: free)
    for row in range(1, rows + 1):
        owner[0], j0 = row, 0
        reach, via = np.full(cols + 1, np.inf), np.zeros(cols + 1, np.int64)
        used = np.zeros(cols + 1, bool)
        while owner[j0]:  # grow the tree of tight edges until a free column is reached
            used[j0] = True
            i0 = owner[j0]
            slack = cost[i0 - 1] - u[i0] - v[1:]
            better = ~used[1:] & (slack < reach[1:])
            reach[1:][better], via[1:][better] = slack[better], j0
            j1 = int(np.argmin(np.where(used[1:], np.inf, reach[1:]))) + 1
            delta = reach[j1]
            u[owner[used]] += delta
            v[used] -= delta
            reach[~used] -= delta
            j0 = j1
        while j0:  # flip the path back to its start
            j1 = via[j0]
            owner[j0], j0 = owner[j1], j1
    return {int(owner[j]) - 1: j - 1 for j in range(1, cols + 1) if owner[j]}


def assign_clicks(prompt: str, boxes: list[dict]) -> list[dict]:
    """The jointly likeliest box for each prompted character (`cheapest_assignment` of
    -log probability)."""
    prob = np.array([[max(b["candidates"].get(char, 0.0), FLOOR) * max(b.get("detector_score", 1.0), FLOOR)
                      for b in boxes] for char in prompt])
    chosen = cheapest_assignment(-np.log(prob))
    return [_click(char, boxes[chosen[i]], float(prob[i, chosen[i]])) if i in chosen else _click(char, None, 0.0)
            for i, char in enumerate(prompt)]


def clean_prompt(prompt: str, names=()) -> str:
    """The characters to click, without the spaces and separators a pasted prompt often has
    ("帽 鹿 瓜", "帽,鹿,瓜", "【帽】【鹿】【瓜】"): whitespace, and punctuation the model does not
    name (`names`; a model trained to click a comma keeps it)."""
    keep = set(names)
    return "".join(c for c in prompt if c in keep or not (c.isspace() or unicodedata.category(c).startswith("P")))


def check_prompt(prompt: str, detector: Detector) -> None:
    """Refuse an empty prompt, or one with characters the model cannot name, naming them."""
    if not prompt:
        raise ValueError("prompt is empty: give the characters to click, in order")
    known = set(detector.names)
    unknown = "".join(dict.fromkeys(c for c in prompt if c not in known))
    if unknown:
        raise ValueError(f"prompt {prompt!r}: {unknown!r} not among the {len(known)} characters this model names")


def solve(image, prompt: str, model=None, runtime: str = "auto") -> list[dict]:
    """image: path, bytes or PIL image; model: a Detector or a detection bundle folder, read
    in `runtime` (keras | onnx | tflite | tflite_int8 | savedmodel | auto).
    -> [{"char", "x", "y", "score"}, ...] in prompt order (x, y in the image's pixels)."""
    detector = model if isinstance(model, Detector) else _detector(str(model), runtime)
    if not detector.names:  # one class and no recogniser
        raise ValueError("this detection bundle finds characters but cannot name them: train with "
                         "mode.recogniser=<num_classes run or bundle> or mode.class_mode=per_char")
    prompt = clean_prompt(prompt, detector.names)
    check_prompt(prompt, detector)
    result = detector.predict([image])[0]
    return order_clicks(prompt, result["boxes"])


MISSED = "_?#*~"  # marks a prompt character not clicked inside its box: the first of these the prompt lacks


def click_readings(records: list, results: list[dict], score_threshold: float = 0.0) -> list[dict]:
    """Each captcha's clicks read as text, for per-image scoring and bearcat.compare: its
    prompt with every character not clicked inside its true box replaced by `_` (or another
    mark the prompt lacks; right when it equals the prompt); confidence: the least score
    among its clicks."""
    readings = []
    for record, result in zip(records, results):
        # the detector's threshold, as in `solve` (a recogniser's doubt is weighed, not cut)
        boxes = [b for b in result["boxes"] if b.get("detector_score", b["score"]) >= score_threshold]
        clicks = order_clicks(record.prompt, boxes)
        by_char = {o.name: o.box for o in record.objects if o.target}

        def inside(c: dict) -> bool:
            box = by_char.get(c["char"])
            return c["x"] is not None and box is not None and box[0] <= c["x"] <= box[2] and box[1] <= c["y"] <= box[3]

        # `_` unless the prompt holds one (generated captchas never do): a miss must never read right
        missed = next((m for m in MISSED if m not in record.prompt), "\ufffd\ufffd")
        text = "".join(c["char"] if inside(c) else missed for c in clicks) or missed  # no prompt: nothing solved
        readings.append({"result": text, "confidence": min((c["score"] for c in clicks), default=0.0)})
    return readings


def click_success(records: list, results: list[dict], score_threshold: float = 0.0) -> float:
    """Share of captchas whose every prompted character is clicked inside its true box,
    in order (the end-to-end success of a click solver)."""
    return solved_share(records, click_readings(records, results, score_threshold))


def solved_share(records: list, readings: list[dict]) -> float:
    """Share of the `click_readings` that read their captcha's whole prompt."""
    return sum(r["result"] == record.prompt for r, record in zip(readings, records)) / max(1, len(records))


CLI_KEYS = ("model", "image", "prompt")  # the command's required arguments
CLI_OPTIONS = {"runtime": "auto"}  # and its optional ones, with their defaults


def main(argv: list[str] | None = None) -> int:
    """CLI: key=value arguments model=, image=, prompt= and optionally runtime= (Hydra-style,
    without Hydra)."""
    argv = sys.argv[1:] if argv is None else argv
    if {"--help", "-h"} & set(argv):
        print(__doc__.rstrip())
        print("\nKeys: model= (bundle folder), image= (captcha file), prompt= (the characters to click, in order); "
              "runtime= keras | onnx | tflite | tflite_int8 | savedmodel | auto (the default). Prints the clicks as JSON.")
        return 0
    args = CLI_OPTIONS | dict(a.split("=", 1) for a in argv if "=" in a)
    # a misspelt key (promt=) or a stray word would otherwise be dropped without a word
    unknown = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in (*CLI_KEYS, *CLI_OPTIONS)]
    missing = [k for k in CLI_KEYS if not args.get(k)]
    why = []
    if unknown:
        why.append(f"unknown: {', '.join(unknown)}")
    if missing:
        why.append(f"missing: {', '.join(missing)}")
    if why:
        print(f"usage: python -m bearcat.click model=BUNDLE image=PATH prompt=TEXT [runtime=auto] "
              f"({'; '.join(why)})", file=sys.stderr)
        return 2
    try:
        clicks = solve(args["image"], args["prompt"], args["model"], args["runtime"])
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:  # a bad image, prompt, bundle or runtime, named
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(clicks, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
