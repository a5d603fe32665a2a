"""Data sources: where labelled images come from. A source returns file lists per split;
it never knows about the model.

- `synthetic`: captchas drawn with the `captcha` library, generated once into a cache
  folder keyed by every setting that changes the images, then reused.
- `folder`: the user's own folder of `LABEL_anything.png` files, or of images listed with
  their labels in a CSV file (read only, never modified).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from bearcat.atomic import remove_stale, replacing, write_json
from bearcat.checks import is_whole_number, not_found
from bearcat.data.labels import (QUARANTINE, LabelsFile, file_md5, images_outside, is_image_file,
                                 label_from_name, normalize_charset, shown_characters, shown_folders)
from bearcat.data.parallel import parallel_map

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def split_sizes(train_size, val_size, test_size, least: int = 0) -> dict[str, int]:
    """{split: images} of a generated set, checked: whole numbers, at least `least` (training
    needs 1 in each split: it picks its epoch on val and scores on test). A negative or
    fractional size would otherwise draw nothing, or fewer images, without a word."""
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    for split, size in sizes.items():
        if not (is_whole_number(size) and size >= least):
            raise ValueError(f"dataset.{split}_size={size}: a whole number of images, at least {least}")
    return {split: int(size) for split, size in sizes.items()}


NAMED_SKIPS = 10  # files named per reason for skipping; a folder of 20,000 misnamed files would log 20,000 lines


def skip(skipped: dict[str, int], reason: str, logger: logging.Logger, message: str, *args) -> None:
    """Count a skipped file under `reason`, and log `message` (naming the file) for the first
    NAMED_SKIPS of each reason; the rest are only counted (a run's "skipped files" line and
    skipped_* metrics, prepare check's table)."""
    skipped[reason] = skipped.get(reason, 0) + 1
    if skipped[reason] <= NAMED_SKIPS:
        logger.warning(message, *args)
    elif skipped[reason] == NAMED_SKIPS + 1:
        logger.warning("more files skipped (%s): counted, not named here", reason)


@dataclass
class Splits:
    """(path, label) pairs per split, plus what the source knows about its labels."""

    train: list[tuple[str, str]]
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]
    charset: str | None = None           # fixed character set, when the source has one
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def items(self):
        return [(s, getattr(self, s)) for s in SPLITS]

    def labels(self):
        return [label for _, samples in self.items() for _, label in samples]


# ----------------------------------------------------------------------------- synthetic

def _synthetic_key(settings: dict) -> str:
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def cached_paths(done: Path, make) -> list:
    """The files recorded in the marker `done` (paths, or dicts with a "path"), or `make()`
    them and record them. The marker is written last (atomically), so a killed generation is
    redone, never half-used. Each file is at <marker's folder>/<split>/<name> and is recorded
    as <split>/<name>, so the cache still serves when reached by another path (another working
    folder, an absolute paths.cache_dir, a moved folder, another machine's mount)."""
    if done.exists():
        return [_at(entry, done.parent) for entry in json.loads(done.read_text(encoding="utf-8"))]
    made = make()
    write_json(done, [_at(entry, None) for entry in made])
    return made


def _at(entry, root: Path | None):
    """`entry` (a path or a dict with one) with its path as <split>/<name> under `root`, or
    bare when root is None. Markers written before 2026-12-05 hold the whole path as spelt
    then; its last two parts are the same <split>/<name>."""
    path = entry["path"] if isinstance(entry, dict) else entry
    tail = Path(*Path(path).parts[-2:])
    moved = (tail if root is None else root / tail).as_posix()
    return {**entry, "path": moved} if isinstance(entry, dict) else moved


def _random_label(rng: random.Random, charset: str, min_length: int, max_length: int,
                  weights: dict[str, float] | None = None) -> str:
    length = rng.randint(min_length, max_length)
    if not weights:
        return "".join(rng.choice(charset) for _ in range(length))
    return "".join(rng.choices(charset, [weights.get(c, 1.0) for c in charset], k=length))


class _SeededSecrets:
    """The three `secrets` functions ImageCaptcha uses, drawn from a seeded generator."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def randbelow(self, n: int) -> int:
        return self.rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self.rng.getrandbits(k)

    def choice(self, seq):
        return self.rng.choice(seq)


_GENERATORS: dict = {}  # per worker process: building an ImageCaptcha loads its fonts (slow)


def _captcha_generator(s: dict):
    from captcha.image import ImageCaptcha

    style = s.get("style")  # bearcat/data/styled.py; absent = the library's own look
    key = (s["image_width"], s["image_height"], tuple(s["fonts"] or ()), tuple(s["font_sizes"] or ()),
           json.dumps(style, sort_keys=True))
    if key not in _GENERATORS:
        options = dict(width=s["image_width"], height=s["image_height"], fonts=s["fonts"] or None,
                       font_sizes=s["font_sizes"] or None)
        if style:
            from bearcat.data.styled import StyledCaptcha

            _GENERATORS[key] = StyledCaptcha(**options, style=style)
        else:
            _GENERATORS[key] = ImageCaptcha(**options)
    return _GENERATORS[key]


def _draw(job):
    """Draw one captcha and save it: (its path, the image). Deterministic in (seed, split,
    index) whatever the worker. A file already there is read instead: a generation killed
    (or stopped by Ctrl-C) part way, run again, reads what it had drawn, about six times
    faster than drawing it (scripts/bench_data.py, "cold" rows)."""
    out_dir, split, index, s = job[:4]
    key = f"{s['seed']}/{split}/{index}"
    rng = random.Random(key)
    weights = s.get("train_char_weights") if split == "train" else None  # val/test: the plain task
    label = _random_label(rng, s["charset"], s["min_length"], s["max_length"], weights)
    name = hashlib.sha1(key.encode()).hexdigest()[:10]
    path = Path(out_dir) / split / f"{label}_{name}.png"
    if path.is_file():  # whole: files are written under another name and renamed into place
        from PIL import Image

        try:
            with Image.open(path) as drawn:
                drawn.load()
                return str(path), drawn.copy()  # the PNG is lossless: the image as drawn
        except OSError:  # unreadable all the same: drawn again
            pass
    # captcha >= 0.6 draws from `secrets`, which cannot be seeded: give its module a seeded
    # stand-in so the same settings always give the same images.
    import captcha.image

    captcha.image.secrets = _SeededSecrets(random.Random(f"{key}/draw"))
    image = _captcha_generator(s).generate_image(label)
    # Written under a per-process name, then renamed: parallel sweep jobs on a cold cache draw
    # the same files, and writing in place would truncate a file another job is already reading.
    with replacing(path) as tmp:
        # compress_level 1: lossless like the default, several times faster to write.
        image.save(tmp, format="PNG", compress_level=1)
    return str(path), image


def _generate_one(job) -> str:
    """Draw one captcha into its file; its path."""
    return _draw(job)[0]


def _generate_preprocessed(job) -> tuple[str, object]:
    """_generate_one, and the image preprocessed while still in memory (the job's 5th item:
    the preprocess settings). The PNG is lossless, so this is the array decoding the file
    gives, for about a tenth of the time (0.06 against 0.54 ms an image)."""
    from bearcat.data.preprocess import PreprocessConfig, preprocess

    path, image = _draw(job)
    return path, preprocess(image, PreprocessConfig(**job[4]))


def font_files(fonts: list[str] | None) -> list[str]:
    """dataset.fonts entries -> font files; a folder stands for every .ttf/.otf/.ttc in it."""
    files = []
    for font in fonts or []:
        path = Path(font)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in (".ttf", ".otf", ".ttc"))
            if not found:
                raise FileNotFoundError(f"dataset.fonts: no .ttf/.otf/.ttc file in folder {font}")
            files += [str(p.resolve()) for p in found]
        elif path.is_file():
            files.append(str(path.resolve()))
        else:
            raise FileNotFoundError(f"dataset.fonts: font file not found: {font}")
    return files


def focus_weights(chars: str | None, weight: float, charset: str) -> dict[str, float] | None:
    """dataset.train_focus_chars / train_focus_weight -> {character: weight} for the
    characters of `charset` (others are left out: a charset override keeps the default
    focus valid); None when nothing is weighted."""
    if not chars:
        return None
    if not float(weight) > 0.0:
        raise ValueError(f"dataset.train_focus_weight={weight}: must be > 0")
    out = {c: float(weight) for c in dict.fromkeys(str(chars)) if c in charset}
    return out if out and float(weight) != 1.0 else None


def synthetic_settings(charset: str, min_length: int, max_length: int, image_width: int, image_height: int,
                       seed: int, fonts: list[str] | None = None, font_sizes: list[int] | None = None,
                       style: dict | None = None, train_focus_chars: str | None = None,
                       train_focus_weight: float = 1.0) -> dict:
    """Checked generator settings: every value that changes the images."""
    from bearcat.data.styled import style_settings

    charset = "".join(dict.fromkeys(str(charset)))
    if not charset:
        raise ValueError("dataset.charset is empty")
    if "_" in charset or "/" in charset or "\\" in charset:
        raise ValueError("dataset.charset may not contain '_', '/' or '\\' (they cannot appear in file-name labels)")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"dataset.min_length={min_length} / dataset.max_length={max_length}: need 1 <= min <= max")
    settings = dict(charset=charset, min_length=int(min_length), max_length=int(max_length),
                    image_width=int(image_width), image_height=int(image_height), fonts=font_files(fonts),
                    font_sizes=[int(x) for x in font_sizes or []], seed=int(seed))
    style = style_settings(style)
    if style:  # only when set, so the cache keys of unstyled sets stay as they were
        settings["style"] = style
    weights = focus_weights(train_focus_chars, train_focus_weight, charset)
    if weights:  # likewise
        settings["train_char_weights"] = weights
    return settings


def _draw_split(root, split: str, size: int, settings: dict, workers: int | None, fn, extra: tuple = ()) -> list:
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(folder)  # what a killed drawing left half written
    jobs = [(str(root), split, i, settings, *extra) for i in range(size)]
    try:
        return parallel_map(fn, jobs, desc=f"generating {split} captchas", workers=workers)
    except KeyboardInterrupt:
        drawn = sum(1 for path in folder.iterdir() if path.suffix == ".png")
        log.warning("Ctrl-C while generating the %s split (%d captchas): %s keeps the %d drawn so far, and a "
                    "run with the same dataset settings reads them instead of drawing them again",
                    split, size, folder, drawn)
        raise


def generate_split(root, split: str, size: int, settings: dict, workers: int | None = None) -> list[str]:
    """Draw `size` captchas into root/split/ in parallel; their paths, in index order."""
    return _draw_split(root, split, size, settings, workers, _generate_one)


def _generate_and_store(root, split: str, size: int, settings: dict, workers: int | None, lowercase: bool,
                        preprocess: dict, cache_dir: str) -> list[str]:
    """generate_split, and the preprocessed images written to the array cache that training
    reads (bearcat/data/pipeline.py), so a cold run does not decode every file it just drew."""
    import numpy as np

    from bearcat.data.pipeline import cache_file, save_split
    from bearcat.data.preprocess import PreprocessConfig

    drawn = _draw_split(root, split, size, settings, workers, _generate_preprocessed, (preprocess,))
    paths = [path for path, _ in drawn]
    labels = [label_from_name(path, lowercase) for path in paths]
    cache = cache_file(list(zip(paths, labels)), PreprocessConfig(**preprocess), cache_dir)
    if cache is not None:
        save_split(cache, np.stack([arr for _, arr in drawn]), list(range(len(paths))), [])
    return paths


def synthetic(charset: str, min_length: int, max_length: int, image_width: int, image_height: int,
              train_size: int, val_size: int, test_size: int, seed: int, cache_dir: str,
              fonts: list[str] | None = None, font_sizes: list[int] | None = None,
              lowercase: bool = False, workers: int | None = None, style: dict | None = None,
              train_focus_chars: str | None = None, train_focus_weight: float = 1.0,
              preprocess: dict | None = None, **_ignored) -> Splits:
    """Generated captchas, cached under `cache_dir/synthetic/<settings hash>/`. `preprocess`
    (the run's preprocess settings, passed by bearcat.experiment.load_sources): images drawn
    now are also preprocessed as they are drawn, into the run's array cache."""
    sizes = split_sizes(train_size, val_size, test_size)
    settings = synthetic_settings(charset, min_length, max_length, image_width, image_height, seed, fonts,
                                  font_sizes, style, train_focus_chars, train_focus_weight)
    charset = settings["charset"]
    root = Path(cache_dir) / "synthetic" / _synthetic_key(settings)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "settings.json", settings, indent=1)  # parallel sweep jobs share the cache
    out: dict[str, list[tuple[str, str]]] = {}
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)

        def make(split=split):
            if preprocess is None:
                return generate_split(root, split, sizes[split], settings, workers)
            return _generate_and_store(root, split, sizes[split], settings, workers, lowercase, preprocess, cache_dir)

        paths = cached_paths(root / f"{split}.{sizes[split]}.done", make)
        out[split] = [(p, label_from_name(p, lowercase)) for p in paths]
    log.info("synthetic data in %s: %s", root, {k: len(v) for k, v in out.items()})
    folded = "".join(dict.fromkeys(charset.lower())) if lowercase else charset  # "aA" -> "a"
    return Splits(out["train"], out["val"], out["test"], charset=folded)


# -------------------------------------------------------------------------------- folder

def _labelled_files(folder: Path, lowercase: bool, skipped: dict[str, int]) -> list[tuple[str, str]]:
    samples = []
    for path in sorted(folder.iterdir()):
        if not is_image_file(path):
            continue
        label = label_from_name(path, lowercase)
        if not label:
            skip(skipped, "no label in file name", log, "%s: file name holds no label (expected LABEL_anything%s); "
                 "skipped", path, path.suffix)
            continue
        samples.append((str(path), label))
    return samples


def _listed_files(folder: Path, root: Path, listed: LabelsFile, lowercase: bool,
                  skipped: dict[str, int]) -> list[tuple[str, str]]:
    samples, unlisted = [], []
    for path in sorted(folder.iterdir()):
        if is_image_file(path):
            label = listed.label(path, root, lowercase)
            if label:
                samples.append((str(path), label))
            else:
                unlisted.append(path.name)
    if unlisted:  # one line, not one per file: a list may cover a few images of a large folder
        log.warning("%d images in %s have no label in %s (e.g. %s); skipped", len(unlisted), folder,
                    listed.path, ", ".join(unlisted[:5]))
        skipped["not in labels file"] = skipped.get("not in labels file", 0) + len(unlisted)
    return samples


def _class_folder_files(folder: Path, lowercase: bool) -> list[tuple[str, str]]:
    samples = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != QUARANTINE):
        label = sub.name.lower() if lowercase else sub.name
        samples += [(str(p), label) for p in sorted(sub.iterdir()) if is_image_file(p)]
    return samples


def _extra_train(entries, labelled: list, read, skipped: dict[str, int]) -> list[tuple[str, str]]:
    """The samples of the `extra_train` folders (or labels lists), less every image whose
    content is already in dataset.root (any split): a person's label wins over a
    pseudo-label, and a copy of a val or test image must not train the model."""
    known = {file_md5(path) for path, _ in labelled}
    kept = []
    for extra in entries:
        more = read(Path(extra))
        fresh = [(path, label) for path, label in more if file_md5(path) not in known]
        if len(fresh) < len(more):
            key = "extra_train image already in dataset.root"
            skipped[key] = skipped.get(key, 0) + len(more) - len(fresh)
        log.info("%d more training images from %s (dataset.extra_train; %d already in dataset.root, left out)",
                 len(fresh), extra, len(more) - len(fresh))
        kept += fresh
    return kept


def labelled_images(entry: Path, lowercase: bool, skipped: dict[str, int], key: str, remedy: str,
                    column: str = "label") -> list[tuple[str, str]]:
    """(path, label) of a folder's images, labelled by file name; or, when `entry` is a
    labels list (.csv), of the images of its folder that it names. `key` names the setting
    in errors, `remedy` (with LIST for the list's name) the setting that would read a list
    found in a folder."""
    if entry.suffix.lower() == ".csv" and entry.is_file():
        listed = LabelsFile(entry, column=column, key=key)
        return _listed_files(entry.parent, entry.parent, listed, lowercase, skipped)
    if not entry.is_dir():
        raise FileNotFoundError(f"{key}: {entry}: folder not found")
    _unread_list(entry, key, remedy)
    return _labelled_files(entry, lowercase, skipped)


def _unread_list(folder: Path, key: str, remedy: str) -> None:
    """A folder read by file names that holds a labels list (a CSV whose header starts with
    file,label, as `bearcat.label labels_file=` writes): when no image name there holds a
    label (`<md5>.png`), reading names would label each image with its hash, so stop."""
    lists = [p.name for p in sorted(folder.glob("*.csv")) if _header_is_file_label(p)]
    if not lists:
        return
    images = [p for p in folder.iterdir() if is_image_file(p)]
    if images and not any("_" in p.stem for p in images):
        raise ValueError(f"{key}: {folder} holds the labels list {lists[0]} and no image named LABEL_*: "
                         f"pass {remedy.replace('LIST', lists[0])} to read the labels from it (or move the "
                         "list out of the folder to read labels from the file names)")
    log.warning("%s: %s holds the labels list %s, not read: labels come from the file names (%s reads it)",
                key, folder, lists[0], remedy.replace("LIST", lists[0]))


def _header_is_file_label(path: Path) -> bool:
    with open(path, "rb") as handle:  # the first bytes only: a list may be large
        return handle.read(64).decode("utf-8-sig", "replace").startswith("file,label")


def labels_list(labels_file: str | None, column: str, root: Path, class_folders: bool = False) -> LabelsFile | None:
    """The configured labels list; a relative path not found from the working directory is
    looked up in dataset.root (`dataset.labels_file=labels.csv` for a list inside the folder)."""
    if labels_file in (None, ""):
        return None
    if class_folders:
        raise ValueError("dataset.labels_file and dataset.class_folders=true exclude each other: "
                         "a class folder's name is its images' label")
    path = Path(labels_file)
    if not path.is_file() and not path.is_absolute() and (root / path).is_file():
        path = root / path
    return LabelsFile(path, column=column or "label")


def read_folders(base: Path, class_folders: bool = False) -> set[Path]:
    """The folders whose images a folder dataset reads: dataset.root itself, or its train/
    val/ test/ when it has train/; with class folders, the class folders inside those."""
    tops = [base / s for s in SPLITS if (base / s).is_dir()] if (base / "train").is_dir() else [base]
    if not class_folders:
        return set(tops)
    return {sub for top in tops for sub in top.iterdir() if sub.is_dir() and sub.name != QUARANTINE}


def unread_images(base: Path, class_folders: bool = False) -> dict[str, int]:
    """`images_outside` the folders a folder dataset reads, so that images under
    dataset.root that it leaves out are said to be, instead of silently missing."""
    return images_outside(base, read_folders(base, class_folders))


def split_samples(samples: list, val_ratio: float, test_ratio: float, seed: int):
    """Deterministic shuffle-and-cut; the same files and seed always give the same split."""
    order = sorted(samples)
    random.Random(seed).shuffle(order)
    n_test = round(len(order) * test_ratio)
    n_val = round(len(order) * val_ratio)
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def folder(root: str | None, lowercase: bool = False, split_seed: int = 0, val_ratio: float = 0.1,
           test_ratio: float = 0.1, charset: str | None = None, class_folders: bool = False,
           extra_train=(), labels_file: str | None = None, label_column: str = "label", **_ignored) -> Splits:
    """A user's folder: `train/ val/ test/` used as they are, or a flat folder split
    80/10/10 (by default) with a fixed seed. With `class_folders`, one sub-folder per class;
    with `labels_file`, the labels of a CSV list instead of the file names.
    The labelled images of every `extra_train` folder join the training split only (e.g.
    pseudo-labels from `python -m bearcat.label accept_above=...`): never val or test."""
    if root in (None, "", "???"):
        raise ValueError("dataset.root is not set: pass dataset.root=PATH/TO/IMAGES")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(not_found("dataset.root", root, kind="folder"))
    skipped: dict[str, int] = {}
    listed = labels_list(labels_file, label_column, base, class_folders)

    def collect(d: Path) -> list[tuple[str, str]]:
        # the list names images of dataset.root; extra_train entries are read by labelled_images
        if listed:
            return _listed_files(d, base, listed, lowercase, skipped)
        if class_folders:
            return _class_folder_files(d, lowercase)
        return _labelled_files(d, lowercase, skipped)

    if not listed and not class_folders:
        for where, remedy in ((base, "dataset.labels_file=LIST"), (base / "train", "dataset.labels_file=train/LIST")):
            if where.is_dir():
                _unread_list(where, f"dataset.root={root}", remedy)
    if (base / "train").is_dir():
        train = collect(base / "train")
        val = collect(base / "val") if (base / "val").is_dir() else []
        test = collect(base / "test") if (base / "test").is_dir() else []
        if not val:
            train, val, _ = split_samples(train, val_ratio, 0.0, split_seed)
        if not test:
            log.warning("%s has no test/ folder: the test metrics use the val split", base)
            test = val
    else:
        train, val, test = split_samples(collect(base), val_ratio, test_ratio, split_seed)
    extra = [Path(e).resolve() for e in extra_train or ()]
    extra = [e.parent if e.suffix.lower() == ".csv" else e for e in extra]  # a labels list reads its folder
    unread = {k: n for k, n in unread_images(base, class_folders).items()  # an extra_train folder inside is read
              if not any((base / k).resolve().is_relative_to(e) for e in extra)}
    if unread:
        skipped["in a folder not read"] = sum(unread.values())
        reads = "one folder per class, " if class_folders else "images "
        reads += "in train/ val/ test/" if (base / "train").is_dir() else "directly in it"
        log.warning("dataset.root=%s: %d images are in folders it does not read, left out: %s (a folder dataset "
                    "reads %s)", root, sum(unread.values()), shown_folders(unread), reads)
    if listed and listed.unused():
        missing = listed.unused()
        log.warning("%d rows of %s name no image in %s (e.g. %s)", len(missing), listed.path, base,
                    ", ".join(missing[:5]))
    if extra_train:
        def read(entry: Path) -> list[tuple[str, str]]:
            if class_folders:
                if not entry.is_dir():
                    raise FileNotFoundError(f"dataset.extra_train: {entry}: folder not found (class folders)")
                return _class_folder_files(entry, lowercase)
            return labelled_images(entry, lowercase, skipped, "dataset.extra_train",
                                   f"dataset.extra_train=[{entry}/LIST]", label_column)

        train = train + _extra_train(extra_train, train + val + test, read, skipped)
    if not train:
        expected = f"images listed in {listed.path}" if listed else "files like LABEL_anything.png"
        raise ValueError(f"dataset.root={root}: no labelled images found (expected {expected} in it or in train/)")
    if charset:
        charset = normalize_charset(charset)
        charset = charset.lower() if lowercase else charset
        known = set(charset)
        kept = {}
        for split, samples in (("train", train), ("val", val), ("test", test)):
            kept[split] = []
            for path, label in samples:
                bad = set(label) - known
                if bad:
                    skip(skipped, "characters outside charset", log, "%s: label %r has characters outside "
                         "dataset.charset: %s; skipped", path, label, shown_characters("".join(sorted(bad))))
                else:
                    kept[split].append((path, label))
        train, val, test = kept["train"], kept["val"], kept["test"]
    return Splits(train, val, test, charset=charset or None, skipped=skipped)
