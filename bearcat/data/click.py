"""`click`: generated click captchas. A background (gradient, noise, random shapes, or crops
of the user's own pictures), a few Chinese characters to click (the prompt, in click order)
and optional distractor characters, each at a random size, rotation and colour, placed so
that no two boxes overlap.

Drawn once into `cache_dir/click/<hash of the settings>/`:
`{train,val,test}/NNNNNN.png` with a Pascal VOC `NNNNNN.xml` beside each, one COCO JSON per
split (`train.json`, ...), and, with `crops=True`, every character cut out and resized into
`crops/{train,val,test}/CHAR_hash.png` (a `dataset=folder` set for a recogniser).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bearcat.atomic import replacing
from bearcat.checks import not_found
from bearcat.data.fonts import find_cjk_font
from bearcat.data.generated import draw_split, generate_splits, sample_rng, settings_root
from bearcat.data.labels import IMAGE_EXTENSIONS
from bearcat.data.sources import SPLITS, split_sizes

log = logging.getLogger(__name__)

# 100 common simplified characters, chosen to look unlike one another (no 己/已, 人/入,
# 日/曰, 未/末 pairs), all drawn by WenQuanYi Micro Hei.
DEFAULT_CHARSET = (
    "山水火木金石田鸟马鱼龙虎牛羊猫狗花草树林风雨雪云竹星月春夏秋"
    "冬东南西北红黄绿蓝黑白书笔纸画车船飞门窗家国城桥路河海湖江岛"
    "米面茶酒饭菜果桃梨瓜心手耳目人足头衣帽鞋灯钟琴歌舞笑爱福喜鼠"
    "熊象鹿兔鸡羽蛇猪虫贝"
)
BACKGROUNDS = ("gradient", "noise", "shapes", "images", "mixed")
GAP = 2            # pixels kept free between two character boxes
MIN_ALPHA = 32     # glyph mask values below this are dropped, so every boxed pixel is visible ink
MIN_CONTRAST = 90  # grey levels between a character's colour and the background under it


@dataclass
class ClickObject:
    name: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels (x2, y2: exclusive edge)
    target: bool                            # True: named by the prompt; False: a distractor


@dataclass
class ClickRecord:
    path: str
    width: int
    height: int
    prompt: str                             # the target characters, in click order
    objects: list[ClickObject]


@dataclass
class ClickSplits:
    """Click-captcha records per split, plus what the source knows about its classes."""

    train: list[ClickRecord]
    val: list[ClickRecord]
    test: list[ClickRecord]
    categories: list[str]                   # class names; COCO category id = index + 1
    root: str                               # the folder holding the images and labels
    crops_root: str | None = None           # crops/{train,val,test}/CHAR_hash.png, when made
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def items(self):
        return [(s, getattr(self, s)) for s in SPLITS]


def record_from_dict(d: dict) -> ClickRecord:
    return ClickRecord(d["path"], int(d["width"]), int(d["height"]), d.get("prompt", ""),
                       [ClickObject(o["name"], tuple(float(v) for v in o["box"]), bool(o["target"]))
                        for o in d["objects"]])


def record_to_dict(r: ClickRecord) -> dict:
    return dict(path=r.path, width=r.width, height=r.height, prompt=r.prompt,
                objects=[dict(name=o.name, box=list(o.box), target=o.target) for o in r.objects])


# ------------------------------------------------------------------------------ drawing

_FONTS: dict = {}  # per worker process: (path, size) -> FreeTypeFont


def _font(path: str, size: int):
    from PIL import ImageFont

    if (path, size) not in _FONTS:
        _FONTS[(path, size)] = ImageFont.truetype(path, size)
    return _FONTS[(path, size)]


def glyph_mask(font_path: str, char: str, size: int, angle: float):
    """The character's coverage (mode "L"), rotated by `angle` degrees and cropped to its ink;
    None when the font draws nothing for it."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(canvas).text((size, size), char, font=_font(font_path, size), fill=255, anchor="mm")
    if angle:
        canvas = canvas.rotate(angle, resample=Image.BICUBIC)
    canvas = canvas.point(lambda a: 0 if a < MIN_ALPHA else a)
    box = canvas.getbbox()
    return canvas.crop(box) if box else None


def missing_glyphs(font_path: str, chars: str) -> str:
    """The characters `font_path` cannot draw: no ink, or the same box as a code point no font has."""
    font = _font(font_path, 32)
    tofu = bytes(font.getmask("\U000F0000"))
    return "".join(c for c in chars if glyph_mask(font_path, c, 32, 0) is None or bytes(font.getmask(c)) == tofu)


def _band_grey(rng, light: bool) -> int:
    return rng.randint(170, 245) if light else rng.randint(15, 90)


def _tinted(rng, grey: int, tint: int = 40) -> tuple[int, int, int]:
    return tuple(max(0, min(255, grey + rng.randint(-tint, tint))) for _ in range(3))


def draw_background(rng, kind: str, width: int, height: int, images: list[str]) -> np.ndarray:
    """A background of `kind` (gradient, noise, shapes, images): an RGB uint8 array (height,
    width, 3). Slider captchas (scripts/make_slider_captchas.py) draw their pictures with it too."""
    from PIL import Image, ImageDraw

    light = rng.random() < 0.6
    if kind == "gradient":
        c0, c1 = (np.array(_tinted(rng, _band_grey(rng, light)), np.float32) for _ in range(2))
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * math.cos(theta) + yy * math.sin(theta)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        return (c0 * (1 - t[..., None]) + c1 * t[..., None]).round().astype(np.uint8)
    if kind == "noise":
        nrng = np.random.default_rng(rng.getrandbits(64))
        base = np.array(_tinted(rng, _band_grey(rng, light)), np.float32)
        coarse = nrng.normal(0, 25, (max(2, height // 16), max(2, width // 16), 3))
        coarse = np.stack([np.asarray(Image.fromarray(coarse[..., c].astype(np.float32), "F")
                                      .resize((width, height), Image.BILINEAR)) for c in range(3)], -1)
        fine = nrng.normal(0, 10, (height, width, 3))
        return np.clip(base + coarse + fine, 0, 255).round().astype(np.uint8)
    if kind == "shapes":
        img = Image.new("RGB", (width, height), _tinted(rng, _band_grey(rng, light)))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(6, 16)):
            x0, y0 = rng.uniform(-20, width), rng.uniform(-20, height)
            box = [x0, y0, x0 + rng.uniform(10, width / 2), y0 + rng.uniform(10, height / 2)]
            colour = _tinted(rng, _band_grey(rng, light), 60)
            shape = rng.choice(("ellipse", "rectangle", "line"))
            if shape == "ellipse":
                draw.ellipse(box, fill=colour)
            elif shape == "rectangle":
                draw.rectangle(box, fill=colour)
            else:
                draw.line(box, fill=colour, width=rng.randint(1, 4))
        return np.asarray(img)
    # "images": a random crop of one of the user's pictures, scaled up when too small
    with Image.open(rng.choice(images)) as src:
        src = src.convert("RGB")
        scale = max(width / src.width, height / src.height, rng.uniform(1.0, 1.5))
        src = src.resize((max(width, math.ceil(src.width * scale)), max(height, math.ceil(src.height * scale))),
                         Image.BILINEAR)
        x, y = rng.randint(0, src.width - width), rng.randint(0, src.height - height)
        return np.asarray(src.crop((x, y, x + width, y + height)))


def _luma(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _text_colour(rng, under: float) -> tuple[int, int, int]:
    """A random colour at least MIN_CONTRAST grey levels away from `under`."""
    for _ in range(20):
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        if abs(float(_luma(colour)) - under) >= MIN_CONTRAST:
            return colour
    return (0, 0, 0) if under >= 128 else (255, 255, 255)


def _overlaps(box, boxes) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + GAP and b[0] < x2 + GAP and y1 < b[3] + GAP and b[1] < y2 + GAP for b in boxes)


def _layout(rng, s: dict, chars: list[str]):
    """[(char, mask, (x1, y1, x2, y2))] with no two boxes overlapping, or None."""
    placed = []
    for char in chars:
        mask = glyph_mask(s["font"], char, rng.randint(*s["char_size"]), rng.uniform(-s["rotation"], s["rotation"]))
        w, h = mask.size
        if w > s["width"] or h > s["height"]:
            return None
        for _ in range(100):
            x, y = rng.randint(0, s["width"] - w), rng.randint(0, s["height"] - h)
            if not _overlaps((x, y, x + w, y + h), [b for _, _, b in placed]):
                placed.append((char, mask, (x, y, x + w, y + h)))
                break
        else:
            return None
    return placed


def render(s: dict, split: str, index: int):
    """Draw one captcha: (background array, image, ClickRecord without path, its random
    generator for further draws, file tag). Deterministic in (settings, split, index)."""
    from PIL import Image

    rng, tag = sample_rng(s["seed"], split, index)
    kind = s["background"]
    if kind == "mixed":
        kind = rng.choice(("gradient", "noise", "shapes") + (("images",) if s["images"] else ()))
    background = draw_background(rng, kind, s["width"], s["height"], s["images"])
    for _ in range(50):
        n_targets, n_distractors = rng.randint(*s["targets"]), rng.randint(*s["distractors"])
        chars = rng.sample(s["charset"], n_targets + n_distractors)
        placed = _layout(rng, s, chars)
        if placed:
            break
    else:
        raise RuntimeError(f"could not place the characters of {split} image {index} without overlap: "
                           "lower dataset.targets / dataset.distractors / dataset.char_size")
    image = Image.fromarray(background)
    objects = []
    for k, (char, mask, box) in enumerate(placed):
        under = float(_luma(background[box[1]:box[3], box[0]:box[2]]).mean())
        image.paste(Image.new("RGB", mask.size, _text_colour(rng, under)), box[:2], mask)
        objects.append(ClickObject(char, tuple(float(v) for v in box), k < n_targets))
    record = ClickRecord("", s["width"], s["height"], "".join(chars[:n_targets]), objects)
    return background, image, record, rng, tag


def crop_box(rng, box, width: int, height: int, margin: float = 0.15, jitter: float = 0.08):
    """A square around `box` with a margin and a random shift/scale, kept inside the image."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin) * rng.uniform(1 - jitter, 1 + jitter)
    cx = (x1 + x2) / 2 + rng.uniform(-jitter, jitter) * side
    cy = (y1 + y2) / 2 + rng.uniform(-jitter, jitter) * side
    left = min(max(cx - side / 2, 0), max(0, width - side))
    top = min(max(cy - side / 2, 0), max(0, height - side))
    return round(left), round(top), round(left + side), round(top + side)


def _draw_captcha(job) -> dict:
    """Draw, save (PNG + VOC XML + crops) and describe one captcha."""
    from PIL import Image

    from bearcat.data.voc import write_voc

    out_dir, split, index, s = job
    _, image, record, rng, tag = render(s, split, index)
    record.path = str(Path(out_dir) / split / f"{index:06d}.png")
    # Each file under a temporary name, then renamed: parallel sweep jobs on a cold cache draw
    # the same files, and one must not truncate a file the other is reading.
    with replacing(record.path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)
    with replacing(Path(record.path).with_suffix(".xml")) as tmp:
        write_voc(record, tmp)  # same folder: the same relative image path
    if s["crops"]:
        crops = Path(out_dir) / "crops" / split
        crops.mkdir(parents=True, exist_ok=True)
        for k, obj in enumerate(record.objects):
            piece = image.crop(crop_box(rng, obj.box, record.width, record.height))
            with replacing(crops / f"{obj.name}_{tag}-{k}.png") as tmp:
                piece.resize((s["crop_size"],) * 2, Image.BILINEAR).save(tmp, format="PNG", compress_level=1)
    return record_to_dict(record)


# ---------------------------------------------------------------------------- settings

def _pair(value, key: str, low: int) -> tuple[int, int]:
    a, b = (int(v) for v in (value if isinstance(value, (list, tuple)) else (value, value)))
    if not low <= a <= b:
        raise ValueError(f"dataset.{key}={list(value) if isinstance(value, (list, tuple)) else value}: "
                         f"need {low} <= min <= max")
    return a, b


def _background_images(background: str, background_dir: str | None) -> list[str]:
    if background not in BACKGROUNDS:
        raise ValueError(f"dataset.background={background!r}: unknown; choose from {list(BACKGROUNDS)}")
    if not background_dir:
        if background == "images":
            raise ValueError("dataset.background=images needs dataset.background_dir=FOLDER of pictures")
        return []
    folder = Path(background_dir)
    if not folder.is_dir():
        raise FileNotFoundError(not_found("dataset.background_dir", background_dir, kind="folder"))
    images = sorted(str(p.resolve()) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(f"dataset.background_dir={background_dir}: no images in it")
    if background not in ("images", "mixed"):
        log.warning("dataset.background_dir is only used with background=images or mixed; ignored")
        return []
    return images


def click_settings(width: int, height: int, charset: str | None, targets, distractors, char_size, rotation: float,
                   background: str, background_dir: str | None, font: str | None, seed: int, crops: bool,
                   crop_size: int) -> dict:
    """Checked generator settings: every value that changes what is drawn."""
    width, height = int(width), int(height)
    if width < 32 or height < 32:
        raise ValueError(f"dataset.width={width} / dataset.height={height}: need at least 32 pixels each")
    charset = "".join(dict.fromkeys("".join(charset) if charset else DEFAULT_CHARSET))
    bad = [c for c in charset if c in "_/\\" or c.isspace()]
    if bad:
        raise ValueError(f"dataset.charset may not contain {bad} (white space, '_', '/', '\\')")
    targets, distractors = _pair(targets, "targets", 1), _pair(distractors, "distractors", 0)
    char_size = _pair(char_size, "char_size", 8)
    rotation = float(rotation)
    if not 0 <= rotation <= 180:
        raise ValueError(f"dataset.rotation={rotation}: need 0 to 180 degrees")
    most = targets[1] + distractors[1]
    if most > len(charset):
        raise ValueError(f"dataset.targets / dataset.distractors: up to {most} distinct characters per image, "
                         f"but dataset.charset has only {len(charset)}")
    # a rotated glyph's box is at most this many pixels wide (the glyph fills about its em square)
    turn = math.radians(min(rotation, 45))
    side = math.ceil(char_size[1] * (math.cos(turn) + math.sin(turn)))
    if side > min(width, height):
        raise ValueError(f"dataset.char_size={list(char_size)}: characters up to {side} px (rotated by "
                         f"{rotation:g} degrees) do not fit in a {width}x{height} image")
    if most * (side + GAP) ** 2 > 0.45 * width * height:
        raise ValueError(f"dataset.targets / dataset.distractors: too many characters to fit: {most} characters "
                         f"of up to {side} px in a {width}x{height} image; lower them or dataset.char_size")
    font = find_cjk_font(font, key="dataset.font")
    missing = missing_glyphs(font, charset)
    if missing:
        raise ValueError(f"dataset.charset: the font {font} (dataset.font) cannot draw {missing!r}")
    if int(crop_size) < 8:
        raise ValueError(f"dataset.crop_size={crop_size}: need at least 8 pixels")
    return dict(width=width, height=height, charset=charset, targets=targets, distractors=distractors,
                char_size=char_size, rotation=rotation, background=background,
                images=_background_images(background, background_dir), font=font, seed=int(seed),
                crops=bool(crops), crop_size=int(crop_size))


def coco_index(root: Path, categories: list[str]):
    """The `finish` of a drawn split: its COCO index file, root/{split}.json."""
    from bearcat.data.voc import write_coco

    def index_file(split: str, results: list[dict]) -> None:
        write_coco([record_from_dict(d) for d in results], categories, root / f"{split}.json")
    return index_file


def draw_click_folder(output: Path, sizes: dict[str, int], s: dict, workers: int | None = None) -> dict[str, int]:
    """Click captchas with checked settings `s` into output/ as the cache holds them (PNG + VOC
    XML, {split}.json, crops/), without the cache's markers: `prepare action=generate`."""
    index_file = coco_index(output, list(s["charset"]))
    return {split: len(draw_split(output, split, sizes[split], _draw_captcha, s, "click captchas", workers,
                                  index_file)) for split in SPLITS}


def click(train_size: int, val_size: int, test_size: int, seed: int, cache_dir: str, width: int = 320,
          height: int = 160, charset: str | None = None, targets=(3, 4), distractors=(0, 2), char_size=(30, 42),
          rotation: float = 30, background: str = "mixed", background_dir: str | None = None,
          font: str | None = None, workers: int | None = None, crops: bool = True, crop_size: int = 48,
          **_ignored) -> ClickSplits:
    """Generated click captchas, cached under `cache_dir/click/<settings hash>/`."""
    s = click_settings(width, height, charset, targets, distractors, char_size, rotation, background,
                       background_dir, font, seed, crops, crop_size)
    sizes = split_sizes(train_size, val_size, test_size)
    root = settings_root(cache_dir, "click", s)
    categories = list(s["charset"])
    index_file = coco_index(root, categories)
    drawn = generate_splits(root, sizes, _draw_captcha, s, "click captchas", workers, finish=index_file)
    out = {split: [record_from_dict(d) for d in drawn[split]] for split in SPLITS}
    for split in SPLITS:  # another split size drawn since into the same folder rewrote {split}.json
        if len(json.loads((root / f"{split}.json").read_text(encoding="utf-8"))["images"]) != len(out[split]):
            index_file(split, drawn[split])
    log.info("click captchas in %s: %s", root, {k: len(v) for k, v in out.items()})
    return ClickSplits(out["train"], out["val"], out["test"], categories=categories, root=str(root),
                       crops_root=str(root / "crops") if s["crops"] else None)
