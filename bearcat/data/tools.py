"""Folder tools behind `python -m bearcat.prepare`: generate captchas into a folder, split
a flat folder into train/val/test, and clean the cache. None of them overwrites or
deletes a user's file."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from bearcat.checks import not_found
from bearcat.data.labels import LabelsFile, holds_images, images_outside, is_image_file, label_from_name, shown_folders
from bearcat.data.sources import QUARANTINE, SPLITS, generate_split, skip, split_samples, synthetic_settings

log = logging.getLogger(__name__)


def generator_settings(kind: str):
    """The function that checks the settings of a generated data set (`dataset=synthetic`,
    `click` or `tiles`); its parameters are the dataset keys that change the images."""
    if kind == "click":
        from bearcat.data.click import click_settings
        return click_settings
    if kind == "tiles":
        from bearcat.data.tiles import tile_settings
        return tile_settings
    return synthetic_settings


def generate(output: str | Path, sizes: dict[str, int], settings: dict, workers: int | None = None,
             kind: str = "synthetic") -> dict:
    """Generated images into output/{train,val,test}/, as training's cache holds them:
    captchas as LABEL_hash.png, tiles as CLASS_hash.png, click captchas as PNG + VOC XML
    with {split}.json and crops/. Refuses a folder that already holds images (generation
    never overwrites)."""
    out = Path(output)
    for split in SPLITS:
        if holds_images(out / split):
            raise FileExistsError(f"generate.output={out}: {out / split} already holds images; "
                                  "choose an empty or new folder (generate never overwrites)")
    settings = generator_settings(kind)(**settings)
    if kind == "click":
        from bearcat.data.click import draw_click_folder
        counts = draw_click_folder(out, sizes, settings, workers)
    elif kind == "tiles":
        from bearcat.data.tiles import draw_tiles_folder
        counts = draw_tiles_folder(out, sizes, settings, workers)
    else:
        counts = {split: len(generate_split(out, split, int(sizes[split]), settings, workers)) if sizes[split] else 0
                  for split in SPLITS}
    log.info("generated %s into %s", counts, out)
    return {"output": str(out), "counts": counts, "settings": settings}


def split_folder(root: str | Path, output: str | Path | None, val_ratio: float, test_ratio: float,
                 seed: int, move: bool = False, listed: LabelsFile | None = None) -> dict:
    """Copy (or move, when asked) the labelled images of a flat folder into
    output/{train,val,test}/. The split is the same one training makes of the flat folder
    with the same seed and ratios. An existing file of the same name is never overwritten:
    it is left, and counted. With a labels list, its images are the labelled ones; names
    are kept, so the list still fits the split folder (it matches bare names too)."""
    src = Path(root)
    if not src.is_dir():
        raise FileNotFoundError(not_found("dataset.root", root, kind="folder"))
    dst = Path(output) if output else src
    files = sorted(p for p in src.iterdir() if is_image_file(p))
    below = {k: v for k, v in images_outside(src, {src}).items() if k.split("/")[0] not in SPLITS}
    if below:
        log.warning("%s: %d images in its sub-folders are not split (left where they are): %s", src,
                    sum(below.values()), shown_folders(below))
    labels = {p: listed.label(p, src) if listed else label_from_name(p) for p in files}
    samples = [(str(p), labels[p]) for p in files if labels[p]]
    unlabelled = [str(p) for p in files if not labels[p]]
    where = f"no label in {listed.path}" if listed else "file name holds no label"
    named: dict[str, int] = {}
    for path in unlabelled:  # the first ten named; split.json lists them all
        skip(named, where, log, "%s: %s; left where it is", path, where)
    if not samples:
        expected = f"images listed in {listed.path}" if listed else "labelled images (LABEL_anything.png)"
        raise ValueError(f"dataset.root={root}: no {expected} directly in it to split")
    parts = dict(zip(SPLITS, split_samples(samples, val_ratio, test_ratio, seed)))
    done = {s: 0 for s in SPLITS}
    exists = []
    for split, chosen in parts.items():
        (dst / split).mkdir(parents=True, exist_ok=True)
        for path, _ in chosen:
            target = dst / split / Path(path).name
            if target.exists():
                skip(named, "already there", log, "%s: already exists, not overwritten (source %s left in place)",
                     target, path)
                exists.append(str(target))
                continue
            (shutil.move if move else shutil.copy2)(path, target)
            done[split] += 1
    verb = "moved" if move else "copied"
    log.info("%s %s into %s; %d already there; %d without a label left in place",
             verb, done, dst, len(exists), len(unlabelled))
    return {"output": str(dst), verb: done, "already_there": len(exists), "already_there_files": exists,
            "without_label": len(unlabelled), "without_label_files": unlabelled}


def clean(cache_dir: str | Path, targets: list[str], protect: list[str | Path] = (), dry_run: bool = False) -> dict:
    """Delete the listed sub-folders of the cache (generated data, decoded arrays, packed
    shards). Refuses when a protected folder (the user's data) lies inside one of them."""
    cache = Path(cache_dir).resolve()
    removed, sizes = [], {}
    guarded = [Path(p).resolve() for p in protect if p not in (None, "", "???")]
    folders = []
    for name in targets:  # every check first: a refusal removes nothing
        name = str(name)
        # one plain folder name: ".", "a/b", "/x" or ".." would reach the cache itself or beyond it
        if Path(name).name != name or name in (".", "..", QUARANTINE):
            raise ValueError(f"clean.targets: {name!r} must be a plain sub-folder name of paths.cache_dir")
        folder = cache / name
        if folder.is_symlink():  # what it points to is not the cache's to remove
            raise ValueError(f"clean: {folder} is a link to {folder.resolve()}; not removing it")
        for user in guarded:
            if user == folder or folder in user.parents:
                raise ValueError(f"clean: {folder} holds {user} (dataset.root); not removing it")
        if folder.exists():
            folders.append(folder)
    for folder in folders:
        sizes[folder.name] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        removed.append(str(folder))
        if not dry_run:
            shutil.rmtree(folder)
    log.info("%s %s (%.1f MB)", "would remove" if dry_run else "removed", removed or "nothing",
             sum(sizes.values()) / 1e6)
    return {"cache_dir": str(cache), "removed": removed, "bytes": sizes, "dry_run": dry_run}
