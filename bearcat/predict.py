"""Offline reading: `python -m bearcat.predict model=BUNDLE images=PATH [out=FILE]`.

Reads image files with a model bundle through its own preprocessing and decoding (the
same path as evaluate and serve) and prints one tab-separated line per image: file,
reading, confidence. Files that do not decode are named in a warning and skipped; the
images are only read. `gradcam=FOLDER` also draws heat maps of the least sure readings
(Keras model).
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bearcat import CONFIG_DIR, overrides
from bearcat.atomic import replacing
from bearcat.checks import not_found
from bearcat.data.labels import images_outside, is_image_file, shown_folders

log = logging.getLogger("bearcat.predict")


def image_paths(images: str, recursive: bool = False) -> list[Path]:
    """A file, the image files of a folder (sorted), or those a glob pattern matches."""
    if images in (None, "", "???"):
        raise ValueError("images is not set: pass images=<image file, folder or glob pattern>")
    path = Path(str(images))
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in (path.rglob("*") if recursive else path.iterdir()) if is_image_file(p))
        if not found:
            raise FileNotFoundError(f"images={images}: no image files in this folder"
                                    + ("" if recursive else " (recursive=true looks in sub-folders)"))
        if not recursive:  # e.g. a dataset's train/ val/ test/ beside loose images: say what is left out
            below = images_outside(path, {path})
            if below:
                log.warning("images=%s: %d image files in its sub-folders are not read (recursive=true reads them): "
                            "%s", images, sum(below.values()), shown_folders(below))
        return found
    if glob.has_magic(str(images)):
        found = sorted(Path(p) for p in glob.glob(str(images), recursive=recursive) if is_image_file(Path(p)))
        if not found:
            raise FileNotFoundError(f"images={images}: the pattern matches no image file")
        return found
    raise FileNotFoundError(not_found("images", images))


def plain(value):
    """NumPy scalars and arrays in a reading (top-5 probabilities, boxes) as JSON numbers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


EXTRA_COLUMNS = ("answer", "angle")  # what a maths (mode.answer) or rotation (mode.angle) model adds


def extra_columns(rows: list[tuple[Path, dict]]) -> list[str]:
    return [k for k in EXTRA_COLUMNS if any(k in r for _, r in rows)]


def write_readings(out: Path, rows: list[tuple[Path, dict]]) -> None:
    """.csv: file, result, confidence (and answer or angle when the model gives them); .jsonl:
    one object per image with everything read."""
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = extra_columns(rows)
    with replacing(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        if out.suffix.lower() == ".jsonl":
            for path, r in rows:
                f.write(json.dumps({"file": str(path), **r}, ensure_ascii=False, default=plain) + "\n")
        else:
            writer = csv.writer(f)
            writer.writerow(["file", "result", "confidence", *extra])
            writer.writerows([str(path), r["result"], f"{float(r['confidence']):.6f}", *(r.get(k) for k in extra)]
                             for path, r in rows)


def print_readings(rows: list[tuple[Path, dict]]) -> None:
    """file<TAB>reading<TAB>confidence (<TAB>answer or angle) per image; a reader that stops
    early (`| head`) is fine."""
    extra = extra_columns(rows)
    try:
        for path, r in rows:
            more = "".join("\t" + ("" if r.get(k) is None else str(r[k])) for k in extra)
            sys.stdout.write(f"{path}\t{r['result']}\t{float(r['confidence']):.4f}{more}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


def draw_heat_maps(cfg: DictConfig, predictor, rows: list[tuple[Path, dict]], folder: Path) -> Path:
    """Heat maps of the `gradcam_images` least confident readings (what a user checks first)
    into `folder`: gradcam.png and gradcam.json (bearcat.analysis.explain_images)."""
    import numpy as np

    from bearcat.analysis import explain_images
    from bearcat.data.preprocess import preprocess

    chosen = sorted(rows, key=lambda row: float(row[1]["confidence"]))[:int(cfg.gradcam_images)]
    images = np.stack([preprocess(path, predictor.pre) for path, _ in chosen])
    explain_images(cfg, predictor, images, [path for path, _ in chosen], [r for _, r in chosen], folder)
    return folder / "gradcam.png"


def predict(cfg: DictConfig) -> dict:
    """Read every image `cfg.images` names; returns a summary (counts, time, out file)."""
    from bearcat.bundle import Predictor, decoding_settings, predict_files, read_meta, resolve_model
    from bearcat.checks import flag_setting, is_whole_number, whole_settings
    from bearcat.runtime import load_predictor, named_runtime

    out = Path(cfg.out) if cfg.get("out") else None
    if out is not None and out.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"out={cfg.out}: name a .csv or .jsonl file")
    if not (is_whole_number(cfg.batch_size) and cfg.batch_size >= 1):
        raise ValueError(f"batch_size={cfg.batch_size}: images per model call, at least 1")
    whole_settings(cfg, threads=(0, None))  # threads=-1 went to the runtime as it was
    flag_setting("recursive", cfg.recursive)
    heat_dir = Path(cfg.gradcam) if cfg.get("gradcam") else None
    runtime = named_runtime(cfg.model, cfg.runtime)
    if heat_dir is not None:
        from bearcat.gradcam import check_settings, refused_for_boxes

        runtime = "keras" if runtime == "auto" else runtime  # auto: the Keras model, for its gradients
        check_settings(cfg, runtime, f"gradcam={cfg.gradcam}")
    paths = image_paths(cfg.images, cfg.recursive)
    with tempfile.TemporaryDirectory() as workdir:
        bundle = resolve_model(cfg.model, workdir, cfg.mlflow)
        if heat_dir is None:
            predictor = load_predictor(bundle, runtime, cfg.threads, decoding_settings(cfg))
        elif read_meta(bundle)["mode"]["name"] == "efficientdet":
            raise refused_for_boxes(f"gradcam={cfg.gradcam}")
        else:  # the Keras model itself, for its gradients
            predictor = Predictor(bundle, decoding=decoding_settings(cfg))
            predictor.runtime = "keras"
        start = time.perf_counter()
        results, failed = predict_files(predictor, paths, int(cfg.batch_size))
        seconds = time.perf_counter() - start
    for path, why in failed:
        log.warning("skipped: %s", why)
    rows = [(path, r) for path, r in zip(paths, results) if r is not None]
    if out is not None:
        write_readings(out, rows)
    print_readings(rows)
    summary = {"images": len(paths), "read": len(rows), "unreadable": [str(p) for p, _ in failed],
               "seconds": seconds, "runtime": predictor.runtime, "out": str(out) if out else None}
    if heat_dir is not None and rows:
        summary["gradcam"] = str(draw_heat_maps(cfg, predictor, rows, heat_dir))
        log.info("heat maps of the %d least confident readings: %s", min(len(rows), int(cfg.gradcam_images)),
                 summary["gradcam"])
    log.info("read %d of %d images in %.2f s (%s runtime)%s", len(rows), len(paths), seconds, predictor.runtime,
             f"; {len(failed)} unreadable" if failed else "")
    if not rows:
        raise ValueError(f"images={cfg.images}: none of the {len(paths)} files could be read")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@overrides.plain_errors
def main(cfg: DictConfig) -> None:
    predict(cfg)


cli = overrides.command(main, "predict")  # `--help`, the key meant for a misspelt key, a line for Ctrl-C


if __name__ == "__main__":
    cli()
