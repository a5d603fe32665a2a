"""What every generated data set shares: a cache folder keyed by the settings that change
the images, a seeded random generator per image, and drawing each split once in parallel.

Layout: `cache_dir/<name>/<hash of the settings>/settings.json`, one folder per split, and
a marker `<split>.<size>.done` (written last) that records what was drawn.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from bearcat.atomic import remove_stale, write_json
from bearcat.data.parallel import parallel_map
from bearcat.data.sources import SPLITS, cached_paths


def settings_root(cache_dir: str | Path, name: str, settings: dict) -> Path:
    """`cache_dir/name/<hash of settings>/`, created, with the settings written into it."""
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    root = Path(cache_dir) / name / hashlib.sha1(blob.encode()).hexdigest()[:12]
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "settings.json", settings, indent=1)  # parallel sweep jobs share the cache
    return root


def sample_rng(seed: int, split: str, index: int) -> tuple[random.Random, str]:
    """The random generator of one image and a short tag for its file name; both depend only
    on (seed, split, index), so any worker draws the same image."""
    key = f"{seed}/{split}/{index}"
    return random.Random(key), hashlib.sha1(key.encode()).hexdigest()[:10]


def draw_split(root: Path, split: str, count: int, draw, settings: dict, what: str, workers: int | None = None,
               finish=None) -> list:
    """[draw((root, split, index, settings)) for each index] into root/split/, in parallel;
    then `finish(split, results)` (e.g. to write a per-split index file)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), split, i, settings) for i in range(int(count))]
    results = parallel_map(draw, jobs, desc=f"drawing {split} {what}", workers=workers)
    if finish:
        finish(split, results)
    return results


def generate_splits(root: Path, sizes: dict[str, int], draw, settings: dict, what: str,
                    workers: int | None = None, finish=None) -> dict[str, list]:
    """{split: draw_split(...)}, drawn once per split and then read back from its marker,
    written after `finish`."""
    out = {}
    for split in SPLITS:
        (root / split).mkdir(exist_ok=True)

        def make(split=split):
            remove_stale(root / split)  # what a killed drawing left half written
            return draw_split(root, split, sizes[split], draw, settings, what, workers, finish)

        out[split] = cached_paths(root / f"{split}.{int(sizes[split])}.done", make)
    return out
