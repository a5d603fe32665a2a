"""Deeper evaluation: which characters get confused, how readings fail (substituted, missed,
extra characters), how confidence relates to being right, which labels look wrong,
and how long one image takes end to end. Used by `python -m bearcat.evaluate`."""
from __future__ import annotations

import csv
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bearcat.gallery import _font


def alignment(truth: str, pred: str) -> list[tuple[str, str]]:
    """Levenshtein alignment as (true char, read char) pairs; '' marks a missing or an
    extra character. Matches come out as equal pairs."""
    n, m = len(truth), len(pred)
    cost = np.zeros((n + 1, m + 1), np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j - 1] + (truth[i - 1] != pred[j - 1]), cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    pairs, i, j = [], n, m
    while i or j:
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (truth[i - 1] != pred[j - 1]):
            pairs.append((truth[i - 1], pred[j - 1]))
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + 1:
            pairs.append((truth[i - 1], ""))
            i -= 1
        else:
            pairs.append(("", pred[j - 1]))
            j -= 1
    return pairs[::-1]


def confusions(truths: list[str], preds: list[str], top: int = 20) -> list[dict]:
    """The most frequent errors: {"truth", "read", "count"}; '' = missed / extra character."""
    counts = Counter(p for t, r in zip(truths, preds) for p in alignment(t, r) if p[0] != p[1])
    return [{"truth": t, "read": r, "count": c} for (t, r), c in counts.most_common(top)]


FAILURE_KINDS = ("substituted", "missed_doubled", "missed", "extra", "mixed")


def failure_kind(truth: str, pred: str) -> str | None:
    """How a reading went wrong: only `substituted` characters, only characters `missed`
    (`missed_doubled` when one of them has an equal neighbour, e.g. AA read as A: CTC needs
    a blank between the two), only `extra` characters, or `mixed`. None when right."""
    if truth == pred:
        return None
    ops, doubled, k = Counter(), False, 0
    for t, r in alignment(truth, pred):
        if t != r:
            ops["missed" if not r else "extra" if not t else "substituted"] += 1
        if t and not r:
            doubled |= (k > 0 and truth[k - 1] == t) or (k + 1 < len(truth) and truth[k + 1] == t)
        k += bool(t)
    if len(ops) > 1:
        return "mixed"
    kind = next(iter(ops))
    return "missed_doubled" if kind == "missed" and doubled else kind


def failure_kinds(truths: list[str], preds: list[str]) -> dict[str, int]:
    """Failed readings counted by `failure_kind`."""
    counts = Counter(failure_kind(t, r) for t, r in zip(truths, preds))
    return {kind: counts.get(kind, 0) for kind in FAILURE_KINDS}


def confidence_report(truths: list[str], results: list[dict], threshold: float, bins: int = 10) -> dict:
    """Right / wrong counts per confidence bin, and accuracy of the predictions at or above
    `threshold` (what a user who trusts only confident answers gets)."""
    conf = np.array([r["confidence"] for r in results], np.float64)
    right = np.array([r["result"] == t for r, t in zip(results, truths)], bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    sure = conf >= threshold
    return {
        "edges": edges.round(4).tolist(),
        "right": np.bincount(index[right], minlength=bins).tolist(),
        "wrong": np.bincount(index[~right], minlength=bins).tolist(),
        "threshold": threshold,
        "confident_fraction": float(sure.mean()) if len(conf) else 0.0,
        "confident_accuracy": float(right[sure].mean()) if sure.any() else 0.0,
        "unsure_accuracy": float(right[~sure].mean()) if (~sure).any() else 0.0,
    }


def histogram_png(report: dict, path, size=(480, 260)) -> Path:
    """Stacked bars per confidence bin: right (green) under wrong (red); the threshold dashed."""
    w, h = size
    left, bottom, top_pad = 40, 30, 20
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = _font(11)
    bins = len(report["right"])
    peak = max(1, max(r + x for r, x in zip(report["right"], report["wrong"])))
    bar_w = (w - left - 10) / bins
    scale = (h - bottom - top_pad) / peak
    for k, (r, x) in enumerate(zip(report["right"], report["wrong"])):
        x0 = left + k * bar_w + 2
        y_r = h - bottom - r * scale
        draw.rectangle([x0, y_r, x0 + bar_w - 4, h - bottom], fill=(60, 160, 80))
        draw.rectangle([x0, y_r - x * scale, x0 + bar_w - 4, y_r], fill=(210, 70, 60))
        draw.text((x0, h - bottom + 4), f"{report['edges'][k]:.1f}", fill="black", font=font)
    tx = left + report["threshold"] * (w - left - 10)
    for y in range(top_pad, h - bottom, 6):
        draw.line([tx, y, tx, y + 3], fill="black")
    draw.text((left, 4), f"confidence: right (green) / wrong (red); n max {peak}; "
                         f"accuracy >= {report['threshold']}: {report['confident_accuracy']:.3f}",
              fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def latency(predictor, sources: list, repeats: int = 1) -> dict:
    """End-to-end time of one image (decode file, preprocess, model, decode), ms."""
    if not sources:
        return {}
    predictor.predict(sources[:1])  # warm-up: first calls build graphs / caches
    times = []
    for _ in range(repeats):
        for src in sources:
            start = time.perf_counter()
            predictor.predict([src])
            times.append((time.perf_counter() - start) * 1000.0)
    t = np.array(times)
    return {"latency_ms_p50": float(np.percentile(t, 50)), "latency_ms_p95": float(np.percentile(t, 95)),
            "latency_ms_mean": float(t.mean())}


def write_report(folder, truths: list[str], results: list[dict], threshold: float) -> tuple[dict, list[Path]]:
    """Confusions (JSON) and confidence histogram (JSON + PNG) into `folder`; returns the
    metrics to log and the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preds = [r["result"] for r in results]
    report = confidence_report(truths, results, threshold)
    pairs = confusions(truths, preds)
    (folder / "confusions.json").write_text(json.dumps(pairs, ensure_ascii=False, indent=1), encoding="utf-8")
    kinds = failure_kinds(truths, preds)
    (folder / "failure_kinds.json").write_text(json.dumps(kinds, indent=1))
    (folder / "confidence_histogram.json").write_text(json.dumps(report, indent=1))
    png = histogram_png(report, folder / "confidence_histogram.png")
    metrics = {"accuracy_confident": report["confident_accuracy"], "confident_fraction": report["confident_fraction"],
               "accuracy_unsure": report["unsure_accuracy"]} | {f"failures_{k}": v for k, v in kinds.items()}
    files = [folder / "confusions.json", folder / "failure_kinds.json", folder / "confidence_histogram.json", png]
    return metrics, files


def label_suspects(truths: list[str], results: list[dict], min_confidence: float) -> list[int]:
    """Indices of the failures read with at least `min_confidence`, most confident first.
    Hand-labelled sets carry some wrong labels; a confident reading that disagrees is where
    to look first."""
    chosen = [i for i, (truth, r) in enumerate(zip(truths, results))
              if r["result"] != truth and r["confidence"] >= min_confidence]
    return sorted(chosen, key=lambda i: -results[i]["confidence"])


def write_suspects(folder, suspects: list[int], paths: list[str], truths: list[str], results: list[dict],
                   images: np.ndarray) -> list[Path]:
    """For the `suspects` (indices, see `label_suspects`): label_suspects.csv, a contact sheet
    and a copy of each image in label_suspects/ (under its own name) for review, e.g. with
    `python -m bearcat.label`. The originals are only read."""
    from bearcat.gallery import reading_sheet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "label_suspects.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "prediction", "confidence"])
        writer.writerows([paths[i], truths[i], results[i]["result"], round(float(results[i]["confidence"]), 4)]
                         for i in suspects)
    copies = folder / "label_suspects"
    shutil.rmtree(copies, ignore_errors=True)
    copies.mkdir()
    for k, i in enumerate(suspects):
        source = Path(paths[i])
        target = copies / source.name
        if target.exists():  # the same name in two splits: keep both
            target = copies / f"{source.stem}_{k}{source.suffix}"
        shutil.copy2(source, target)
    if not suspects:
        return [table]
    return [table, reading_sheet(images, truths, results, suspects[:48], folder / "label_suspects.png", scale=2)]


def deep_evaluation(cfg, predictor, data, results: list[dict], out_dir) -> tuple[dict, list[tuple[Path, str]]]:
    """Everything `evaluate` adds past the headline metrics: confusions, confidence
    histogram and accuracy above `low_confidence`, end-to-end latency per image, a gallery
    of failures, the label suspects (see `label_suspects`) and (with `gradcam=true`)
    Grad-CAM heat maps. Returns metrics (without the `test_` prefix) and (file, MLflow
    artifact folder) pairs."""
    from bearcat.gallery import prediction_gallery

    out_dir = Path(out_dir)
    metrics, files = write_report(out_dir / "analysis", data.labels, results, cfg.low_confidence)
    artifacts = [(f, "analysis") for f in files]
    metrics |= latency(predictor, list(data.paths[:cfg.latency_images]))
    failed = [i for i, (r, t) in enumerate(zip(results, data.labels)) if r["result"] != t]
    metrics["failures"] = len(failed)
    suspects = label_suspects(data.labels, results, cfg.suspect_confidence)
    metrics["label_suspects"] = len(suspects)
    artifacts += [(f, "analysis") for f in write_suspects(out_dir / "analysis", suspects, list(data.paths),
                                                           data.labels, results, data.images)]
    if failed:
        gallery = prediction_gallery(data.images[failed], [data.labels[i] for i in failed],
                                     [results[i] for i in failed], out_dir / "failures_gallery.png",
                                     max_items=cfg.gallery_size)
        artifacts.append((gallery, "predictions"))
    if cfg.gradcam:
        from bearcat.gradcam import gradcam_sheet

        n = min(int(cfg.gradcam_images), len(data))
        captions = [f"{results[i]['result']} / {data.labels[i]}" for i in range(n)]
        sheet, layer = gradcam_sheet(predictor.model, data.images[:n], captions, out_dir / "gradcam.png",
                                     cfg.gradcam_layer)
        (out_dir / "gradcam.json").write_text(json.dumps({"layer": layer, "images": n}))
        artifacts += [(sheet, "gradcam"), (out_dir / "gradcam.json", "gradcam")]
    return metrics, artifacts
