"""`prepare action=check`: decode every image of a folder fully and report what training
would trip over. Unreadable files are moved (never deleted) to `quarantine/` inside the
data folder, with `quarantine/report.json` saying why; the file counts before and after
always add up."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bearcat.atomic import write_json
from bearcat.checks import not_found
from bearcat.data.labels import (LabelsFile, images_outside, is_image_file, label_from_name, normalize_charset,
                                 shown_characters, shown_folders)
from bearcat.data.parallel import parallel_map
from bearcat.data.preprocess import ImageError, PreprocessConfig, load_image, preprocess
from bearcat.data.sources import QUARANTINE, SPLITS, read_folders

log = logging.getLogger(__name__)

SIZE_STEP = 16  # recommended sizes are multiples of this (pooling strides divide them)


def _inspect(job) -> dict:
    """Read, hash and fully decode one file (runs in a worker process)."""
    path, pre = job
    info = {"path": path}
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return info | {"error": f"{path}: cannot read ({err.strerror or err})"}
    info["sha1"] = hashlib.sha1(data).hexdigest()
    try:
        img = load_image(path, pre["max_pixels"])  # from the path: PIL then names the file, not a buffer
        info |= {"width": img.width, "height": img.height, "mode": img.mode}
        try:
            info["frames"] = getattr(img, "n_frames", 1)
        except Exception:  # preprocess names the damage below if preprocess.frames reads the frames
            info["frames"] = 1
        notes = []
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            notes.append("16-bit image, scaled to 8-bit")
        if img.mode == "P":
            notes.append("palette image")
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            notes.append("has transparency, shown on white")
        preprocess(img, PreprocessConfig(**pre), name=path)  # the exact path training takes
        info["notes"] = notes
    except ImageError as err:
        info["error"] = str(err)
    except Exception as err:  # a decoder bug on a hostile file must not stop the check
        info["error"] = f"{path}: cannot preprocess ({type(err).__name__}: {err})"
    return info


def _scan(root: Path) -> tuple[list[Path], list[Path]]:
    """Image files (by extension) and other files under root, quarantine excluded."""
    images, others = [], []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == QUARANTINE or not path.is_file():
            continue
        (images if is_image_file(path) else others).append(path)
    return images, others


def _split_of(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in SPLITS else "(flat)"


def _stats(values: list[int]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


def recommend_size(widths: list[int], heights: list[int], max_length: int) -> dict:
    """Input size for preprocess: the median image rounded up to a multiple of SIZE_STEP,
    widened if needed so a stride-8 CTC model gets 2 x max_length + 1 time steps."""
    if not widths:
        return {}
    up = lambda v: int(math.ceil(v / SIZE_STEP) * SIZE_STEP)  # noqa: E731
    return {"height": up(np.median(heights)), "width": max(up(np.median(widths)), up(8 * (2 * max_length + 1)))}


def _move_to_new_name(src: Path, folder: Path, rel: Path) -> Path:
    """Move src to folder/rel, or folder/<stem>.<n><suffix> when that name is taken; never
    replaces a file. A hard link fails on an existing name, so two checks running at once
    cannot both claim one; a rename alone would silently replace the other's file."""
    target, n = folder / rel, 0
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            os.link(src, target)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: check, then rename
            if not target.exists():
                src.rename(target)
                return target
        else:
            src.unlink()
            return target
        n += 1
        target = (folder / rel).with_name(f"{rel.stem}.{n}{rel.suffix}")


def _read_report(report: Path) -> list:
    """The entries of an earlier quarantine report (read before anything moves, so a
    damaged report stops the check with the files where they were)."""
    if not report.is_file():
        return []
    try:
        entries = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{report}: cannot read the quarantine report ({err}); move it aside and check again") \
            from None
    if not isinstance(entries, list):
        raise ValueError(f"{report}: not a quarantine report (a JSON list); move it aside and check again")
    return entries


def quarantine(root: Path, bad: list[dict]) -> list[dict]:
    """Move each bad file to root/quarantine/<same relative path>; append to report.json."""
    folder = root / QUARANTINE
    report = folder / "report.json"
    old = _read_report(report) if bad else []
    moved = []
    for item in bad:
        src = Path(item["path"])
        target = _move_to_new_name(src, folder, src.relative_to(root))
        moved.append({"file": str(src), "moved_to": str(target), "reason": item["error"],
                      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if moved:
        write_json(report, old + moved, indent=1)
        log.warning("moved %d unreadable files to %s (each, and why, in %s)", len(moved), folder, report)
    return moved


def _label_problems(root: Path, infos: list[dict], lowercase: bool, charset: str | None,
                    class_folders: bool, listed: LabelsFile | None = None) -> tuple[dict, list]:
    """Labels, unlabelled names, characters outside the charset, case mixes."""
    labels, no_label, outside = {}, [], []
    charset = normalize_charset(charset)
    allowed = set(charset.lower() if lowercase and charset else charset or "")
    for info in infos:
        path = Path(info["path"])
        if listed:
            label = listed.label(path, root, lowercase)
        else:
            label = path.parent.name if class_folders else label_from_name(path, lowercase)
        if class_folders and lowercase:
            label = label.lower()
        if not label:
            no_label.append(str(path))
            continue
        labels[str(path)] = label
        bad = sorted(set(label) - allowed) if charset else []
        if bad:
            outside.append({"file": str(path), "label": label, "characters": "".join(bad)})
    chars = set("".join(labels.values()))
    both_cases = sorted(c for c in chars if c.islower() and c.upper() in chars)
    mixed = [f for f, lab in labels.items() if any(c.islower() for c in lab) and any(c.isupper() for c in lab)]
    return labels, [no_label, outside, both_cases, mixed]


def _duplicates(infos: list[dict], labels: dict, root: Path) -> dict:
    groups = defaultdict(list)
    for info in infos:
        groups[info["sha1"]].append(info["path"])
    dup = [sorted(g) for g in groups.values() if len(g) > 1]
    conflicting = [g for g in dup if len({labels.get(p) for p in g}) > 1]
    across = [g for g in dup if len({_split_of(Path(p).relative_to(root)) for p in g}) > 1]
    return {"groups": dup, "extra_copies": sum(len(g) - 1 for g in dup),
            "conflicting_labels": conflicting, "across_splits": across}


def check_folder(root: str | Path, pre: PreprocessConfig, charset: str | None = None, lowercase: bool = False,
                 class_folders: bool = False, move_bad: bool = True, workers: int | None = None,
                 listed: LabelsFile | None = None) -> dict:
    """Check every image under root (train/val/test or flat); return the report. With a
    labels list, labels come from it, and its rows that name no image are reported."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(not_found("dataset.root", root, kind="folder"))
    images, others = _scan(base)
    files_before = len(images) + len(others) + _count_quarantined(base)
    infos = parallel_map(_inspect, [(str(p), pre.to_dict()) for p in images], desc="checking images",
                         workers=workers)
    bad = [i for i in infos if "error" in i]
    good = [i for i in infos if "error" not in i]
    # problem files are named in the report (its table lists the first check.listed), not logged one by one
    moved = quarantine(base, bad) if move_bad else []
    labels, (no_label, outside, both_cases, mixed) = _label_problems(base, good, lowercase, charset, class_folders,
                                                                    listed)
    read = read_folders(base, class_folders)  # images elsewhere are checked, but training leaves them out
    widths, heights = [i["width"] for i in good], [i["height"] for i in good]
    lengths = Counter(len(v) for v in labels.values())
    converted = [{"file": i["path"], "note": n} for i in good for n in i["notes"]]
    larger = sum(w > pre.width or h > pre.height for w, h in zip(widths, heights))
    report = {
        "root": str(base),
        "files_before": files_before,
        "image_files": len(images),
        "readable": len(good),
        "unreadable": len(bad),
        "unreadable_files": [{"file": i["path"], "reason": i["error"]} for i in bad],
        "quarantined": len(moved),
        "quarantine": moved,
        "other_files": [str(p) for p in others],
        "splits": dict(Counter(_split_of(Path(i["path"]).relative_to(base)) if Path(i["path"]).parent in read
                               else "(not read)" for i in good)),
        "not_read": images_outside(base, read),
        "width": _stats(widths),
        "height": _stats(heights),
        "modes": dict(Counter(i["mode"] for i in good)),
        "converted": converted,
        "animated": sum(i["frames"] > 1 for i in good),
        "frames": pre.frames,
        "larger_than_input": larger,
        "preprocess": {"height": pre.height, "width": pre.width},
        "recommended_preprocess": recommend_size(widths, heights, max(lengths, default=1)),
        "label_length": {str(k): lengths[k] for k in sorted(lengths)},
        "charset": "".join(sorted(set("".join(labels.values())))),
        "no_label": len(no_label),
        "no_label_files": no_label,
        "labels_file": str(listed.path) if listed else None,
        # rows of the list with no readable image (a typo, or a file moved to quarantine/)
        "listed_without_image": listed.unused() if listed else [],
        "outside_charset": len(outside),
        "outside_charset_files": outside,
        "letters_in_both_cases": "".join(both_cases),
        "mixed_case_labels": len(mixed),
        "duplicates": _duplicates(good, labels, base),
    }
    report["files_after"] = len(_scan(base)[0]) + len(_scan(base)[1]) + _count_quarantined(base)
    if report["files_after"] != files_before:  # cannot happen unless someone else changed the folder
        raise RuntimeError(f"{base}: {files_before} files before the check, {report['files_after']} after")
    return report


def _count_quarantined(root: Path) -> int:
    folder = root / QUARANTINE
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.name != "report.json" and p.suffix != ".tmp")


def format_report(r: dict, max_listed: int = 10) -> str:
    """The report as a readable two-column table, problems listed by file."""
    def stats(s):
        return "-" if s["min"] is None else f"min {s['min']}  median {s['median']:g}  max {s['max']}"

    dup = r["duplicates"]
    rec = r["recommended_preprocess"]
    rows = [
        ("files", f"{r['files_before']} ({r['image_files']} images, {len(r['other_files'])} other files ignored)"),
        ("readable", f"{r['readable']}"),
        ("unreadable", f"{r['unreadable']}" + (f" ({r['quarantined']} moved to {QUARANTINE}/, see {QUARANTINE}/report.json)"
                                                if r["quarantined"] else "")),
        ("splits", ", ".join(f"{k} {v}" for k, v in sorted(r["splits"].items())) or "-"),
        *([("not read", f"{sum(r['not_read'].values())} images in folders training does not read: "
                        f"{shown_folders(r['not_read'])}")] if r["not_read"] else []),
        ("width (px)", stats(r["width"])),
        ("height (px)", stats(r["height"])),
        ("recommended", (f"preprocess.height={rec['height']} preprocess.width={rec['width']}" if rec else "-")
         + f"  (now {r['preprocess']['height']}x{r['preprocess']['width']}; "
           f"{r['larger_than_input']} images larger, scaled down)"),
        ("label lengths", ", ".join(f"{k}: {v}" for k, v in r["label_length"].items()) or "-"),
        (f"charset ({len(r['charset'])})", shown_characters(r["charset"]) if r["charset"] else "-"),
        ("image modes", ", ".join(f"{k} {v}" for k, v in sorted(r["modes"].items())) or "-"),
        ("converted", f"{len(r['converted'])} (16-bit, palette or transparent; converted on load)"),
        ("animated", f"{r['animated']}" + (f" (preprocess.frames={r['frames']}" + (
            ": only their first frame is read; darkest, lightest or median merges every frame)"
            if r["frames"] == "first" else ": every frame merged)") if r["animated"] else "")),
        ("duplicates", f"{len(dup['groups'])} groups, {dup['extra_copies']} extra copies, "
                       f"{len(dup['conflicting_labels'])} with different labels, "
                       f"{len(dup['across_splits'])} across splits"),
        ("no label", f"{r['no_label']}" + (f" (labels from {r['labels_file']}; "
                                            f"{len(r['listed_without_image'])} of its rows name no readable image)"
                                            if r["labels_file"] else "")),
        ("outside charset", f"{r['outside_charset']}"),
        ("case", f"{r['mixed_case_labels']} labels mix cases; letters in both cases: "
                 f"{r['letters_in_both_cases'] or '-'}"
                 + ("  (dataset.lowercase=true if the site ignores case)" if r["letters_in_both_cases"] else "")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"check of {r['root']}"] + [f"  {k:<{width}}  {v}" for k, v in rows]
    problems = ([f"{i['reason']} (unreadable)" for i in r["unreadable_files"]]
                + [f"{f}: no label in " + (r["labels_file"] or "the file name (expected LABEL_anything.ext)")
                   for f in r["no_label_files"]]
                + [f"{r['labels_file']}: {f}: no such readable image" for f in r["listed_without_image"]]
                + [f"{o['file']}: characters outside the charset: {shown_characters(o['characters'])}"
                   for o in r["outside_charset_files"]]
                + [f"same content: {' = '.join(g)}" for g in dup["groups"]]
                + [f"{c['file']}: {c['note']}" for c in r["converted"]])
    if problems:
        lines.append("files to look at:")
        lines += [f"  {p}" for p in problems[:max_listed]]
        if len(problems) > max_listed:
            lines.append(f"  ... and {len(problems) - max_listed} more (all in the JSON report)")
    return "\n".join(lines)
