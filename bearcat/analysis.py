"""Deeper evaluation: which characters get confused and which are read worst, how accuracy
falls with the label's length, how readings fail (substituted, missed, extra characters),
how confidence relates to being right, which labels look wrong, and how long one image
takes end to end. Used by `python -m bearcat.evaluate`."""
from __future__ import annotations

import csv
import shutil
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bearcat.atomic import write_json
from bearcat.data.pack import is_ref, packed_files
from bearcat.gallery import _font


@lru_cache(maxsize=1 << 16)
def alignment(truth: str, pred: str) -> list[tuple[str, str]]:
    """Levenshtein alignment as (true char, read char) pairs; '' marks a missing or an
    extra character. Matches come out as equal pairs. Cached: one report asks for each
    reading's alignment three times (confusions, per-character table, failure kinds), and
    callers only read the list."""
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


def symbol_pairs(truths: list[str], preds: list[str], text: bool = True) -> list[tuple[str, str]]:
    """(true, read) units over a data set: each label's characters aligned with the reading's
    (`alignment`) for text modes, the whole label and answer for classification."""
    if not text:
        return list(zip(truths, preds))
    return [p for t, r in zip(truths, preds) for p in alignment(t, r)]


def confusions(truths: list[str], preds: list[str], top: int = 20, text: bool = True) -> list[dict]:
    """The most frequent errors: {"truth", "read", "count"}; '' = missed / extra character."""
    counts = Counter(p for p in symbol_pairs(truths, preds, text) if p[0] != p[1])
    return [{"truth": t, "read": r, "count": c} for (t, r), c in counts.most_common(top)]


def per_symbol(truths: list[str], preds: list[str], text: bool = True) -> list[dict]:
    """Each character of the labels (each class, for classification): how often it occurs,
    the share read right and its most frequent misreading ('' = missed), hardest first.
    What a researcher asks of a captcha design: which glyphs protect it, which give it away."""
    seen, right, wrong = Counter(), Counter(), {}
    for t, r in symbol_pairs(truths, preds, text):
        if not t:  # an extra character belongs to no label character
            continue
        seen[t] += 1
        if t == r:
            right[t] += 1
        else:
            wrong.setdefault(t, Counter())[r] += 1
    rows = [{"truth": t, "count": n, "right": right[t], "recall": round(right[t] / n, 4),
             "read_as": wrong[t].most_common(1)[0][0] if t in wrong else None} for t, n in seen.items()]
    return sorted(rows, key=lambda row: (row["recall"], -row["count"], row["truth"]))


def by_length(truths: list[str], preds: list[str]) -> list[dict]:
    """Exact-match accuracy per label length: how fast a variable-length design gets harder."""
    total, right = Counter(len(t) for t in truths), Counter(len(t) for t, r in zip(truths, preds) if t == r)
    return [{"length": n, "count": total[n], "accuracy": round(right[n] / total[n], 4)} for n in sorted(total)]


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


def scored(truths: list[str], results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(each reading's confidence, whether it is right) as arrays."""
    conf = np.array([float(r["confidence"]) for r in results], np.float64)
    right = np.array([r["result"] == t for r, t in zip(results, truths)], bool)
    return conf, right


def confidence_report(truths: list[str], results: list[dict], threshold: float, bins: int = 10) -> dict:
    """Right / wrong counts per confidence bin, and accuracy of the predictions at or above
    `threshold` (what a user who trusts only confident answers gets)."""
    conf, right = scored(truths, results)
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


ANSWER_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)  # confidences a user may answer above
ANSWER_TARGETS = (0.95, 0.99)  # accuracies of the answers given that a user may want


def answer_thresholds(truths: list[str], results: list[dict], thresholds=ANSWER_THRESHOLDS,
                      targets=ANSWER_TARGETS) -> dict:
    """For a solver that answers only readings at least this confident and otherwise asks
    for another captcha: per threshold, the share answered, the accuracy of those answers,
    captchas shown per one solved (1 / (answered x accuracy)) and wrong answers sent per
    one solved; and per target accuracy, the lowest threshold whose answers reach it on
    these images, with the share it answers (picked here, so check it on other images)."""
    conf, right = scored(truths, results)
    rows = []
    for level in thresholds:
        sure = conf >= level
        share = float(sure.mean()) if len(conf) else 0.0
        accuracy = float(right[sure].mean()) if sure.any() else None
        solved = share * accuracy if accuracy else 0.0
        rows.append({"threshold": level, "answered": share, "accuracy": accuracy,
                     "captchas_per_solved": 1.0 / solved if solved else None,
                     "wrong_per_solved": (1.0 - accuracy) / accuracy if accuracy else None})
    order = np.argsort(-conf, kind="stable")
    ranked, hits = conf[order], np.cumsum(right[order])
    answered = np.arange(1, len(conf) + 1)
    ends = np.r_[ranked[1:] < ranked[:-1], True] if len(conf) else np.zeros(0, bool)  # answer all of a tie or none
    reached = []
    for target in targets:
        fits = np.nonzero(ends & (hits >= target * answered - 1e-9))[0]
        k = int(fits.max()) if fits.size else None
        reached.append({"accuracy": target, "threshold": float(ranked[k]) if k is not None else None,
                        "answered": (k + 1) / len(conf) if k is not None else 0.0,
                        "accuracy_reached": float(hits[k] / (k + 1)) if k is not None else None})
    return {"images": len(conf), "thresholds": rows, "targets": reached}


def answer_thresholds_markdown(answering: dict) -> str:
    """`answer_thresholds` as a person reads it: a table per threshold, a line per target."""
    from bearcat.benchmark import table

    rows = [{**row, "answered": 100 * row["answered"],
             "accuracy": None if row["accuracy"] is None else 100 * row["accuracy"]} for row in answering["thresholds"]]
    lines = [f"Answering only readings at least this confident ({answering['images']} images):", "",
             table(rows, [("confidence at least", "threshold", "g"), ("answered, %", "answered", ".1f"),
                          ("right of those, %", "accuracy", ".2f"), ("captchas per solved", "captchas_per_solved", ".2f"),
                          ("wrong answers per solved", "wrong_per_solved", ".3f")]), ""]
    for reached in answering["targets"]:
        lines.append(f"- right {100 * reached['accuracy']:g}% of the time: " + (
            f"answer at confidence {reached['threshold']:.4f} or more, {100 * reached['answered']:.1f}% of the images "
            f"({100 * reached['accuracy_reached']:.2f}% right); picked on these images, so check it on others"
            if reached["threshold"] is not None else "no threshold gets there on these images"))
    return "\n".join(lines) + "\n"


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


def timed_sources(paths: list[str]) -> list:
    """What `latency` times for each image: its file, or for packed data the file's bytes
    kept in the shard; packed raw data keeps no file, so none of it is timed."""
    packed = packed_files(paths)
    return [packed[p][1] if p in packed else p for p in paths if p in packed or not is_ref(p)]


def write_predictions(path, paths: list[str], truths: list[str], results: list[dict]) -> Path:
    """Every image's reading as CSV (file, label, prediction, confidence, right), in data
    order: for the user's own analysis."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "prediction", "confidence", "right"])
        writer.writerows([p, t, r["result"], round(float(r["confidence"]), 4), int(r["result"] == t)]
                         for p, t, r in zip(paths, truths, results))
    return path


def write_report(folder, truths: list[str], results: list[dict], threshold: float,
                 text: bool = True, answer_at: float | None = None) -> tuple[dict, list[Path]]:
    """Confusions, per-character (per-class) recall, confidence histogram (JSON + PNG) and,
    for text modes, failure kinds and accuracy per label length into `folder`; returns the
    metrics to log and the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preds = [r["result"] for r in results]
    report = confidence_report(truths, results, threshold)
    tables = {"confusions": confusions(truths, preds, text=text),
              "per_character" if text else "per_class": per_symbol(truths, preds, text),
              "confidence_histogram": report}
    if text:  # characters missed or added, and lengths, mean nothing for class names
        tables |= {"failure_kinds": failure_kinds(truths, preds), "by_length": by_length(truths, preds)}
    files = []
    for name, table in tables.items():
        files.append(folder / f"{name}.json")
        write_json(files[-1], table, indent=1)
    files.append(histogram_png(report, folder / "confidence_histogram.png"))
    metrics = {"accuracy_confident": report["confident_accuracy"], "confident_fraction": report["confident_fraction"],
               "accuracy_unsure": report["unsure_accuracy"]}
    answering, answer_files = write_answer_thresholds(folder, truths, results, answer_at)
    metrics |= answering
    files += answer_files
    metrics |= {f"failures_{k}": v for k, v in tables.get("failure_kinds", {}).items()}
    metrics |= {f"accuracy_length_{row['length']}": row["accuracy"] for row in tables.get("by_length", [])}
    return metrics, files


def write_answer_thresholds(folder, truths: list[str], results: list[dict],
                            answer_at: float | None = None) -> tuple[dict, list[Path]]:
    """`answer_thresholds` into folder/answer_thresholds.{json,md}, `answer_at` added to the
    table; returns its metrics (answered_at_95 / threshold_at_95, ... per target) and the
    files. For text and class readings and for click detectors' readings alike."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    levels = sorted({*ANSWER_THRESHOLDS, *([float(answer_at)] if answer_at is not None else [])})
    answering = answer_thresholds(truths, results, thresholds=levels)
    write_json(folder / "answer_thresholds.json", answering, indent=1)
    (folder / "answer_thresholds.md").write_text(answer_thresholds_markdown(answering), encoding="utf-8")
    metrics = {}
    for reached in answering["targets"]:  # e.g. answered_at_99: the share a solver right 99% of the time answers
        level = f"{round(reached['accuracy'] * 100)}"
        metrics[f"answered_at_{level}"] = reached["answered"]
        if reached["threshold"] is not None:
            metrics[f"threshold_at_{level}"] = reached["threshold"]
    return metrics, [folder / "answer_thresholds.json", folder / "answer_thresholds.md"]


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
    packed = packed_files([paths[i] for i in suspects])  # dataset=packed: the files kept in the shards
    for k, i in enumerate(suspects):
        if is_ref(paths[i]) and paths[i] not in packed:
            continue  # packed raw: no file was kept; the table and the sheet show it
        source = Path(packed[paths[i]][0] if paths[i] in packed else paths[i])
        target = copies / source.name
        if target.exists():  # the same name in two splits: keep both
            target = copies / f"{source.stem}_{k}{source.suffix}"
        if paths[i] in packed:
            target.write_bytes(packed[paths[i]][1])
        else:
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
    metrics, files = write_report(out_dir / "analysis", data.labels, results, cfg.low_confidence,
                                  text=predictor.mode.text, answer_at=cfg.get("answer_threshold"))
    files.append(write_predictions(out_dir / "analysis" / "predictions.csv", list(data.paths), data.labels, results))
    artifacts = [(f, "analysis") for f in files]
    metrics |= latency(predictor, timed_sources(list(data.paths[:cfg.latency_images])))
    failed = [i for i, (r, t) in enumerate(zip(results, data.labels)) if r["result"] != t]
    metrics["failures"] = len(failed)
    suspects = label_suspects(data.labels, results, cfg.suspect_confidence)
    metrics["label_suspects"] = len(suspects)
    artifacts += [(f, "analysis") for f in write_suspects(out_dir / "analysis", suspects, list(data.paths),
                                                           data.labels, results, data.images)]
    if failed:
        gallery = prediction_gallery(data.images[failed], [data.labels[i] for i in failed],
                                     [results[i] for i in failed], out_dir / "predictions" / "failures_gallery.png",
                                     max_items=cfg.gallery_size)
        artifacts.append((gallery, "predictions"))
    if cfg.gradcam:
        artifacts += explain_readings(cfg, predictor, data, results, failed, out_dir / "gradcam")
    return metrics, artifacts


def explain_readings(cfg, predictor, data, results: list[dict], failed: list[int], out_dir) -> list[tuple[Path, str]]:
    """`gradcam_images` test images, the failures first (why a reading went wrong is what a
    heat map is wanted for); see `explain_images`."""
    picked = set(failed)
    order = (failed + [i for i in range(len(data)) if i not in picked])[:max(0, int(cfg.gradcam_images))]
    return explain_images(cfg, predictor, data.images[order], [data.paths[i] for i in order],
                          [results[i] for i in order], out_dir, labels=[data.labels[i] for i in order])


def heat_maps(cfg, predictor, images: np.ndarray, paths: list, results: list[dict], labels: list[str] | None = None,
              probs=None) -> tuple[Image.Image, dict]:
    """Heat maps of preprocessed `images` read as `results` by a Keras `predictor`, with the
    `gradcam_layer` and `gradcam_method` settings of `cfg`: the sheet (a row per image: the
    whole reading, then each character; captioned `reading / label`, or the reading and its
    confidence when there are no labels) and the summary (layer, method, and per image its
    file, label if known, reading and each character's probability and horizontal centre of
    heat in input pixels). `probs`: the model's outputs for `images`, when the caller has them."""
    from bearcat.gradcam import centre_x, explain, gradcam_sheet
    from bearcat.modes.ctc import CTCMode

    ctc = isinstance(predictor.mode, CTCMode)
    # CTC: explain each reading as decoded (a beam search's may differ from the greedy path)
    readings = [predictor.mode.vocab.encode(r["result"]) for r in results] if ctc else None
    found = explain(predictor.model, images, cfg.gradcam_layer, str(cfg.gradcam_method),
                    merge_repeats=ctc, readings=readings, probs=probs)
    char_name = (lambda cid: predictor.mode.vocab.decode([cid])) if predictor.mode.text else str
    captions = ([f"{r['result']} / {label}" for r, label in zip(results, labels)] if labels is not None
                else [f"{r['result']} ({float(r['confidence']):.2f})" for r in results])
    rows = []
    for k, (path, r, chars, chances) in enumerate(zip(paths, results, found.characters, found.probabilities)):
        known = {"label": labels[k]} if labels is not None else {"confidence": round(float(r["confidence"]), 4)}
        rows.append({"file": str(path), **known, "result": r["result"],
                     "characters": [{"char": char_name(cid), "probability": round(p, 4), "centre_x": centre_x(heat)}
                                    for (cid, heat), p in zip(chars, chances)]})
    summary = {"layer": found.layer, "method": found.method, "images": len(results), "readings": rows}
    return gradcam_sheet(images, found, captions, char_name), summary


def explain_images(cfg, predictor, images: np.ndarray, paths: list, results: list[dict], out_dir,
                   labels: list[str] | None = None) -> list[tuple[Path, str]]:
    """`heat_maps` written into out_dir as gradcam.png and gradcam.json; returns (file, MLflow
    artifact folder) pairs."""
    sheet, summary = heat_maps(cfg, predictor, images, paths, results, labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheet.save(out_dir / "gradcam.png")
    write_json(out_dir / "gradcam.json", summary, indent=1)
    return [(out_dir / "gradcam.png", "gradcam"), (out_dir / "gradcam.json", "gradcam")]
