"""dataset=click (generated click captchas) and dataset=voc (a user's images + VOC XML):
caching, byte-reproducibility, boxes, prompts, VOC/COCO round trips, bad files, crops."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from bearcat.data.click import (DEFAULT_CHARSET, ClickObject, ClickRecord, click, click_settings, glyph_mask,
                                missing_glyphs, render)
from bearcat.data.fonts import find_cjk_font
from bearcat.data.sources import folder
from bearcat.data.voc import read_coco, read_voc, voc, write_coco, write_voc

TINY = dict(train_size=8, val_size=2, test_size=2, workers=1)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def settings(**changes):
    s = dict(width=320, height=160, charset=None, targets=(3, 4), distractors=(0, 2), char_size=(30, 42),
             rotation=30, background="mixed", background_dir=None, font=None, seed=11, crops=False, crop_size=48)
    return click_settings(**{**s, **changes})


@pytest.fixture(scope="module")
def picture_dir(tmp_path_factory):
    """Three smooth pictures for background=images."""
    folder_ = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for k in range(3):
        small = rng.integers(120, 250, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((400 + 50 * k, 150), Image.BILINEAR).save(folder_ / f"p{k}.png")
    return folder_


# ------------------------------------------------------------------------ generation

def test_generation_is_cached_and_byte_reproducible(tmp_path):
    first = click(seed=5, cache_dir=str(tmp_path / "a"), **TINY)
    root = Path(first.root)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    again = click(seed=5, cache_dir=str(tmp_path / "a"), **TINY)
    assert again == first and {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == stamps
    other = click(seed=5, cache_dir=str(tmp_path / "b"), **TINY)
    files_a, files_b = snapshot(root), snapshot(Path(other.root))
    assert files_a == files_b and any(k.endswith(".done") for k in files_a)  # markers hold <split>/<name>
    assert len([k for k in files_a if k.endswith(".png") and not k.startswith("crops")]) == 12
    assert [len(s) for _, s in first.items()] == [8, 2, 2] and first.categories == list(DEFAULT_CHARSET)
    reseeded = click(seed=6, cache_dir=str(tmp_path / "a"), **TINY)
    assert reseeded.root != first.root
    assert Path(reseeded.train[0].path).read_bytes() != Path(first.train[0].path).read_bytes()


@pytest.mark.parametrize("background", ["gradient", "noise", "shapes", "images", "mixed"])
def test_boxes_are_tight_inked_disjoint_and_prompted_in_order(background, picture_dir):
    s = settings(background=background, background_dir=str(picture_dir) if background == "images" else None,
                 distractors=(1, 2))
    for index in range(6):
        back, image, record, _, _ = render(s, "train", index)
        back, image = back.astype(int), np.asarray(image).astype(int)
        changed = (back != image).any(-1)
        names = [o.name for o in record.objects]
        assert len(set(names)) == len(names) and 4 <= len(names) <= 6
        assert record.prompt == "".join(o.name for o in record.objects if o.target) and 3 <= len(record.prompt) <= 4
        assert sum(not o.target for o in record.objects) >= 1
        outside = changed.copy()
        for obj in record.objects:
            x1, y1, x2, y2 = (int(v) for v in obj.box)
            assert 0 <= x1 < x2 <= record.width and 0 <= y1 < y2 <= record.height
            ink = changed[y1:y2, x1:x2]
            assert ink.mean() > 0.05
            # tight: the first and last rows and columns of the box hold ink
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
            outside[y1:y2, x1:x2] = False
        assert not outside.any()  # nothing drawn outside the boxes
        for a, b in itertools.combinations([o.box for o in record.objects], 2):
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_an_image_depends_only_on_its_seed_split_and_index(picture_dir):
    """What lets any worker process draw any image: no state carries over between images."""
    s = settings(background="mixed", background_dir=str(picture_dir))
    alone = render(s, "test", 3)
    for index in range(8):
        render(s, "test", index)
    again = render(s, "test", 3)
    assert np.array_equal(np.asarray(alone[1]), np.asarray(again[1])) and alone[2] == again[2]
    assert alone[4] != render(s, "val", 3)[4]  # another split, another file tag
    assert len(s["images"]) == 3  # mixed keeps the pictures among its backgrounds to draw from


def test_saved_files_match_the_drawing_and_the_labels(tmp_path):
    made = click(seed=3, cache_dir=str(tmp_path), width=192, height=96, char_size=(20, 24), crop_size=32,
                 background="noise", **TINY)
    s = json.loads((Path(made.root) / "settings.json").read_text(encoding="utf-8"))
    for index, record in enumerate(made.val):
        _, image, drawn, _, _ = render(s, "val", index)
        assert np.array_equal(np.asarray(Image.open(record.path)), np.asarray(image))
        assert (record.prompt, record.objects) == (drawn.prompt, drawn.objects)
        assert read_voc(Path(record.path).with_suffix(".xml")) == record
    for split, records in made.items():
        assert read_coco(Path(made.root) / f"{split}.json") == (records, list(DEFAULT_CHARSET))


def test_crops_make_a_folder_dataset_of_characters(tmp_path):
    made = click(seed=4, cache_dir=str(tmp_path), crop_size=40, **TINY)
    crops = folder(made.crops_root)
    for split, records in made.items():
        expected = sorted(o.name for r in records for o in r.objects)
        assert sorted(label for _, label in getattr(crops, split)) == expected
    path, label = crops.train[0]
    assert Image.open(path).size == (40, 40) and label in DEFAULT_CHARSET
    assert click(seed=4, cache_dir=str(tmp_path), crops=False, **TINY).crops_root is None


def test_hydra_config_builds_both_sources(make_cfg, tmp_path):
    cfg = make_cfg(["dataset=click", "dataset.train_size=3", "dataset.val_size=1", "dataset.test_size=1",
                    "dataset.workers=1", "dataset.background=gradient"])
    made = instantiate(cfg.dataset, cache_dir=cfg.paths.cache_dir, _convert_="all")
    assert [len(s) for _, s in made.items()] == [3, 1, 1] and Path(made.root).is_relative_to(tmp_path)
    cfg = make_cfg(["dataset=voc", f"dataset.root={made.root}/train"])
    mine = instantiate(cfg.dataset, cache_dir=cfg.paths.cache_dir, _convert_="all")
    assert sorted(r.path for _, rs in mine.items() for r in rs) == sorted({r.path for r in made.train})


def test_default_charset_is_drawable_and_distinct():
    font = find_cjk_font()
    assert len(DEFAULT_CHARSET) == len(set(DEFAULT_CHARSET)) == 100
    assert missing_glyphs(font, DEFAULT_CHARSET) == "" and missing_glyphs(font, "山\U000F0001") == "\U000F0001"
    masks = {c: np.asarray(glyph_mask(font, c, 32, 0).resize((24, 24))) > 100 for c in DEFAULT_CHARSET}
    overlap = max((masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                  for a, b in itertools.combinations(DEFAULT_CHARSET, 2))
    assert overlap < 0.7


@pytest.mark.parametrize("changes,error,message", [
    (dict(font="/no/such/font.ttf"), FileNotFoundError, "dataset.font"),
    (dict(background="plasma"), ValueError, "dataset.background='plasma': unknown"),
    (dict(background="images"), ValueError, "dataset.background_dir"),
    (dict(background="images", background_dir="/no/such/dir"), FileNotFoundError, "dataset.background_dir"),
    (dict(targets=(8, 9), distractors=(4, 6)), ValueError, "too many characters to fit"),
    (dict(char_size=(100, 200)), ValueError, "dataset.char_size"),
    (dict(targets=(4, 3)), ValueError, "dataset.targets"),
    (dict(charset="山水火", targets=(3, 4)), ValueError, "dataset.charset has only 3"),
    (dict(charset="山_水火木"), ValueError, "dataset.charset may not contain"),
    (dict(charset="山水火木\U000F0001", distractors=(0, 1)), ValueError, "cannot draw"),
])
def test_bad_settings_name_the_key(changes, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        settings(**changes)


# ------------------------------------------------------------------------ VOC and COCO

def record(path, prompt="山水"):
    return ClickRecord(str(path), 64, 48, prompt, [ClickObject("山", (1.0, 2.0, 20.0, 30.0), True),
                                                 ClickObject("水", (30.0, 5.0, 60.0, 40.0), True),
                                                 ClickObject("火", (22.0, 40.0, 28.0, 48.0), False)])


def test_voc_round_trip(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "x.png")
    original = record(tmp_path / "x.png")
    write_voc(original, tmp_path / "x.xml")
    assert read_voc(tmp_path / "x.xml") == original
    (tmp_path / "images").mkdir()
    (tmp_path / "x.png").rename(tmp_path / "images" / "x.png")
    moved = read_voc(tmp_path / "x.xml", image_dir=tmp_path / "images")
    assert moved.path == str(tmp_path / "images" / "x.png") and moved.objects == original.objects


def test_coco_round_trip_and_pycocotools_reads_it(tmp_path):
    from pycocotools.coco import COCO

    records = [record(tmp_path / "a" / "1.png"), record(tmp_path / "b.png", prompt="")]
    write_coco(records, ["山", "水", "火", "木"], tmp_path / "split.json")
    assert read_coco(tmp_path / "split.json") == (records, ["山", "水", "火", "木"])
    coco = COCO(str(tmp_path / "split.json"))
    assert len(coco.getAnnIds()) == 6 and coco.loadCats(4)[0]["name"] == "木"
    assert coco.loadAnns(coco.getAnnIds(imgIds=1))[0]["bbox"] == [1.0, 2.0, 19.0, 28.0]


GOOD = ("<annotation><filename>{image}</filename><size><width>64</width><height>48</height></size>"
        "<object><name>山</name><bndbox><xmin>{xmin}</xmin><ymin>2</ymin><xmax>{xmax}</xmax><ymax>30</ymax>"
        "</bndbox></object></annotation>")
BAD = {
    "not_xml": "this is not XML <<",
    "no_filename": GOOD.replace("<filename>{image}</filename>", ""),
    "no_size": GOOD.replace("<size><width>64</width><height>48</height></size>", ""),
    "no_name": GOOD.replace("<name>山</name>", ""),
    "no_xmax": GOOD.replace("<xmax>{xmax}</xmax>", ""),
    "text_coordinate": GOOD.replace("{xmin}", "left"),
    "nan_coordinate": GOOD.replace("{xmin}", "nan"),
    "infinite_size": GOOD.replace("<width>64</width>", "<width>inf</width>"),
    "empty_box": GOOD.replace("{xmin}", "25"),
    "outside_image": GOOD.replace("{xmax}", "66"),
    "missing_image": GOOD.replace("{image}", "gone.png"),
    "wrong_size": GOOD.replace("<width>64</width>", "<width>80</width>"),
    "unreadable_image": GOOD.replace("{image}", "unreadable_image.xml"),
}


def write_folder(root: Path, good: int = 5, bad: bool = True):
    root.mkdir(parents=True, exist_ok=True)
    for k in range(good):
        Image.new("RGB", (64, 48), (k * 30, 90, 90)).save(root / f"g{k}.png")
        (root / f"g{k}.xml").write_text(GOOD.format(image=f"g{k}.png", xmin=k, xmax=20), encoding="utf-8")
    for name, text in BAD.items() if bad else ():
        Image.new("RGB", (64, 48)).save(root / f"{name}.png")
        (root / f"{name}.xml").write_text(text.format(image=f"{name}.png", xmin=1, xmax=20), encoding="utf-8")


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_xml_gives_an_error_naming_the_file(tmp_path, name):
    write_folder(tmp_path, good=0)
    with pytest.raises(ValueError, match=str(tmp_path / f"{name}.xml")):
        read_voc(tmp_path / f"{name}.xml")


def test_tolerance_of_one_pixel_is_clipped(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "e.png")
    (tmp_path / "e.xml").write_text(GOOD.format(image="e.png", xmin=-1, xmax=65), encoding="utf-8")
    rec = read_voc(tmp_path / "e.xml")
    assert rec.objects == [ClickObject("山", (0.0, 2.0, 64.0, 30.0), True)] and rec.prompt == ""


def test_voc_folder_skips_bad_files_and_leaves_the_folder_untouched(tmp_path):
    write_folder(tmp_path / "flat")
    before = snapshot(tmp_path / "flat")
    made = voc(str(tmp_path / "flat"), str(tmp_path / "cache"), val_ratio=0.2, test_ratio=0.2, split_seed=1)
    assert snapshot(tmp_path / "flat") == before
    assert made.skipped == {"bad annotation": len(BAD)} and made.categories == ["山"]
    assert [len(s) for _, s in made.items()] == [3, 1, 1]
    assert sorted(Path(r.path).name for _, rs in made.items() for r in rs) == [f"g{k}.png" for k in range(5)]
    assert voc(str(tmp_path / "flat"), None, 0.2, 0.2, split_seed=1) == made  # same seed, same split
    # an earlier run's config.yaml with the names of before 2026-12-07 is read under the new
    # ones (resume=, evaluation, export): the same split; the old names reach nothing else
    from omegaconf import OmegaConf

    from bearcat.saved_config import load_saved_config

    for fraction, same in ((0.2, True), (0.4, False)):
        OmegaConf.save({"dataset": {"_target_": "bearcat.data.voc.voc", "root": str(tmp_path / "flat"),
                                    "val_fraction": fraction, "test_fraction": 0.2, "seed": 1},
                        "trainer": {"seed": 7}}, tmp_path / "config.yaml")
        saved = load_saved_config(tmp_path / "config.yaml")
        assert sorted(saved.dataset) == ["_target_", "root", "split_seed", "test_ratio", "val_ratio"]
        assert saved.trainer.seed == 7
        settings = {k: v for k, v in saved.dataset.items() if k != "_target_"}
        assert (voc(cache_dir=None, **settings) == made) is same
    assert voc(str(tmp_path / "flat"), None, val_fraction=0.4, seed=5) == voc(str(tmp_path / "flat"), None)
    # another source's `seed` (the generator's) is its own
    OmegaConf.save({"dataset": {"_target_": "bearcat.data.sources.synthetic", "seed": 3}}, tmp_path / "config.yaml")
    assert load_saved_config(tmp_path / "config.yaml").dataset == {"_target_": "bearcat.data.sources.synthetic",
                                                                  "seed": 3}


def test_voc_folder_with_split_folders_and_voc_layout(tmp_path):
    for split, n in (("train", 4), ("val", 2), ("test", 1)):
        write_folder(tmp_path / "split" / split, good=n, bad=False)
    made = voc(str(tmp_path / "split"), None)
    assert [len(s) for _, s in made.items()] == [4, 2, 1]
    assert all(Path(r.path).parent.name == split for split, rs in made.items() for r in rs)
    devkit = tmp_path / "devkit"
    (devkit / "Annotations").mkdir(parents=True)
    (devkit / "JPEGImages").mkdir()
    for k in range(3):
        Image.new("RGB", (64, 48)).save(devkit / "JPEGImages" / f"{k}.jpg")
        (devkit / "Annotations" / f"{k}.xml").write_text(GOOD.format(image=f"{k}.jpg", xmin=1, xmax=9), "utf-8")
    made = voc(str(devkit), None, val_ratio=0, test_ratio=0)
    assert len(made.train) == 3 and Path(made.train[0].path).parent.name == "JPEGImages"
    with pytest.raises(ValueError, match="dataset.root is not set"):
        voc("???", None)


GEN_CLICK = ["dataset=click", "dataset.train_size=12", "dataset.val_size=2", "dataset.test_size=2",
             "dataset.targets=[2,2]", "dataset.distractors=[0,1]"]


def test_prepare_generates_click_and_tile_sets_into_a_folder_as_training_draws_them(make_cfg, tmp_path):
    """`prepare action=generate` drew only dataset=synthetic ("draws captchas with the
    dataset=synthetic settings"): click captchas and tiles were reachable only inside the
    cache. Now each goes into generate.output, byte for byte the files training draws, and
    a generated click folder reads back as a user's own VOC set (dataset=voc)."""
    from bearcat.experiment import load_sources
    from bearcat.prepare import prepare
    from bearcat.train import check_settings, train

    out = tmp_path / "clicks"
    report = prepare(make_cfg(["action=generate", f"generate.output={out}", *GEN_CLICK], config_name="prepare"))
    assert report["counts"] == {"train": 12, "val": 2, "test": 2}
    cached = load_sources(make_cfg(GEN_CLICK))  # the same settings, drawn by training into its cache
    for split in ("train", "val", "test"):
        records = getattr(cached, split)
        for record in records:
            mine = out / split / Path(record.path).name
            assert mine.read_bytes() == Path(record.path).read_bytes()
            assert mine.with_suffix(".xml").read_bytes() == Path(record.path).with_suffix(".xml").read_bytes()
        assert len(read_coco(out / f"{split}.json")[0]) == len(records)
        crops = sorted(p.name for p in (out / "crops" / split).iterdir())
        assert crops == sorted(p.name for p in (Path(cached.crops_root) / split).iterdir())
        assert len(crops) == sum(len(r.objects) for r in records)
    assert not list(out.glob("*.done"))  # the cache's markers stay in the cache
    with pytest.raises(FileExistsError, match="already holds images"):  # never drawn over
        prepare(make_cfg(["action=generate", f"generate.output={out}", *GEN_CLICK], config_name="prepare"))

    tiles_out = tmp_path / "tiles"
    tiles = ["dataset=tiles", "dataset.train_size=20", "dataset.val_size=4", "dataset.test_size=4"]
    prepare(make_cfg(["action=generate", f"generate.output={tiles_out}", *tiles], config_name="prepare"))
    drawn = load_sources(make_cfg(tiles))
    for split in ("train", "val", "test"):
        assert {Path(p).name: Path(p).read_bytes() for p, _ in getattr(drawn, split)} == \
               {p.name: p.read_bytes() for p in (tiles_out / split).iterdir()}
    with pytest.raises(ValueError, match=r"action=generate draws dataset=synthetic \| click \| tiles; this config "
                                         r"has dataset._target_=bearcat.data.sources.folder"):
        prepare(make_cfg(["action=generate", f"generate.output={tmp_path / 'x'}", "dataset=folder",
                          f"dataset.root={out}"], config_name="prepare"))

    # the folder as a user's own click set: read back as dataset=voc, the same boxes and
    # prompts; mode=efficientdet alone kept the text models' input size, now refused with the
    # size that fits these images, and it is ranked by best_val_map, a metric it returns
    # (it asked for best_val_accuracy; the end-to-end run is test_click_train's)
    voc = ["mode=efficientdet", "dataset=voc", f"dataset.root={out}"]
    own = load_sources(make_cfg(voc))
    for split in ("train", "val", "test"):
        assert [(Path(r.path).name, r.prompt, r.objects) for r in getattr(own, split)] == \
               [(Path(r.path).name, r.prompt, r.objects) for r in getattr(cached, split)]
    with pytest.raises(ValueError, match=r"\(36x96\) must be multiples of 2\*\*mode.max_level = 32: "
                                         r"preprocess.height=160 preprocess.width=320 reads these images \(median "
                                         r"320 x 160\)"):
        train(make_cfg(voc))
    fits = make_cfg([*voc, "preprocess.height=64", "preprocess.width=128"])
    assert fits.optimized_metric == "best_val_map"
    check_settings(fits)  # raised "optimized_metric=best_val_accuracy: not a metric of this detection run"
