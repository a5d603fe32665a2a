"""Box labels on disk: Pascal VOC XML (one file per image, the format the original toolkit
read) and COCO JSON (one file per split), and `voc`: a user's folder of images + VOC XML.

VOC as written here: `<annotation><filename>` (relative to the XML's folder), `<size>`
`<width><height><depth>`, an extra `<prompt>` (the characters to click, in order; may be
absent), and per character `<object><name>CHAR</name><target>1|0</target><bndbox>`
`<xmin><ymin><xmax><ymax>` in pixels (xmax, ymax: the exclusive edge, i.e. xmin + width).
The user's files are only read: a bad one is skipped with a warning naming it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from bearcat.atomic import write_json
from bearcat.checks import not_found
from bearcat.data.click import ClickObject, ClickRecord, ClickSplits
from bearcat.data.sources import split_samples

log = logging.getLogger(__name__)

BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image before the file is refused


# ---------------------------------------------------------------------------------- VOC

def write_voc(record: ClickRecord, xml_path: str | Path) -> None:
    xml_path = Path(xml_path)
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = Path(os.path.relpath(record.path, xml_path.parent)).as_posix()
    size = ET.SubElement(root, "size")
    for key, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, key).text = str(int(value))
    ET.SubElement(root, "prompt").text = record.prompt
    for obj in record.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "target").text = "1" if obj.target else "0"
        box = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(box, key).text = str(round(value))
    ET.indent(root)
    ET.ElementTree(root).write(xml_path, encoding="utf-8", xml_declaration=True)


def _text(node, path: str, xml_path) -> str:
    found = node.find(path)
    if found is None or not (found.text or "").strip():
        raise ValueError(f"{xml_path}: missing <{path}>")
    return found.text.strip()


def _number(node, path: str, xml_path) -> float:
    text = _text(node, path, xml_path)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{xml_path}: <{path}> is not a number: {text!r}") from None
    if not math.isfinite(value):  # "nan" and "inf" parse as floats but are no pixel
        raise ValueError(f"{xml_path}: <{path}> is not a finite number: {text!r}")
    return value


def read_voc(xml_path: str | Path, image_dir: str | Path | None = None) -> ClickRecord:
    """One VOC annotation; the image is `<filename>` in `image_dir` (default: the XML's folder).
    Raises ValueError naming the file when anything is missing or wrong."""
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, UnicodeDecodeError) as err:
        raise ValueError(f"{xml_path}: not valid XML ({err})") from None
    if root.tag != "annotation":
        raise ValueError(f"{xml_path}: the root element is <{root.tag}>, expected <annotation>")
    image = Path(image_dir if image_dir is not None else xml_path.parent) / _text(root, "filename", xml_path)
    width, height = (_number(root, f"size/{k}", xml_path) for k in ("width", "height"))
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise ValueError(f"{xml_path}: <size> must be positive whole pixels, got {width:g}x{height:g}")
    prompt = (root.findtext("prompt") or "").strip()
    objects = []
    for k, node in enumerate(root.findall("object")):
        name = _text(node, "name", f"{xml_path}: object {k + 1}")
        where = f"{xml_path}: object {k + 1} ({name})"
        x1, y1, x2, y2 = (_number(node, f"bndbox/{c}", where) for c in ("xmin", "ymin", "xmax", "ymax"))
        if x1 >= x2 or y1 >= y2:
            raise ValueError(f"{where}: empty box, need xmin < xmax and ymin < ymax: {[x1, y1, x2, y2]}")
        if x1 < -BOX_TOLERANCE or y1 < -BOX_TOLERANCE or x2 > width + BOX_TOLERANCE or y2 > height + BOX_TOLERANCE:
            raise ValueError(f"{where}: box {[x1, y1, x2, y2]} lies outside the {width:g}x{height:g} image")
        target = (node.findtext("target") or "1").strip().lower() not in ("0", "false", "no")
        box = (max(0.0, x1), max(0.0, y1), min(width, x2), min(height, y2))
        objects.append(ClickObject(name, box, target))
    if not image.is_file():
        raise ValueError(f"{xml_path}: its image {image} is missing")
    try:
        with Image.open(image) as opened:  # reads the header only
            real = opened.size
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{xml_path}: its image {image} cannot be read ({err})") from None
    if real != (width, height):
        raise ValueError(f"{xml_path}: <size> says {width:g}x{height:g} but the image {image} is {real[0]}x{real[1]}")
    return ClickRecord(str(image), int(width), int(height), prompt, objects)


# --------------------------------------------------------------------------------- COCO

def write_coco(records: list[ClickRecord], categories: list[str], path: str | Path) -> None:
    """One COCO detection file: category id = index in `categories` + 1; image file names
    relative to the file's folder; extra fields `prompt` (images) and `target` (annotations)."""
    path = Path(path)
    ids = {name: i + 1 for i, name in enumerate(categories)}
    images, annotations = [], []
    for image_id, record in enumerate(records, 1):
        images.append(dict(id=image_id, file_name=Path(os.path.relpath(record.path, path.parent)).as_posix(),
                           width=record.width, height=record.height, prompt=record.prompt))
        for obj in record.objects:
            if obj.name not in ids:
                raise ValueError(f"{record.path}: object {obj.name!r} is not one of the categories")
            x1, y1, x2, y2 = obj.box
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=ids[obj.name],
                                    bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1), iscrowd=0,
                                    target=obj.target))
    data = dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=name, supercategory="char") for i, name in enumerate(categories)])
    write_json(path, data)


def read_coco(path: str | Path) -> tuple[list[ClickRecord], list[str]]:
    """(records in image-id order, category names in id order) of a COCO detection file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        records = {}
        for image in sorted(data["images"], key=lambda i: i["id"]):
            records[image["id"]] = ClickRecord(os.path.normpath(path.parent / image["file_name"]), int(image["width"]),
                                               int(image["height"]), image.get("prompt", ""), [])
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            x, y, w, h = (float(v) for v in ann["bbox"])
            records[ann["image_id"]].objects.append(
                ClickObject(names[ann["category_id"]], (x, y, x + w, y + h), bool(ann.get("target", True))))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable COCO detection file ({type(err).__name__}: {err})") from None
    return list(records.values()), [names[i] for i in sorted(names)]


# ---------------------------------------------------------------------- user's folder

def _annotated(folder: Path, skipped: dict[str, int]) -> dict[str, ClickRecord]:
    """{xml path: record} of a folder: XML beside the images, or VOC's Annotations/ +
    JPEGImages/. Bad files are skipped with a warning and counted."""
    found = {}
    places = [(folder, folder)]
    if (folder / "Annotations").is_dir():
        images = folder / "JPEGImages"
        places.append((folder / "Annotations", images if images.is_dir() else folder))
    for xml_dir, image_dir in places:
        for xml in sorted(xml_dir.glob("*.xml")):
            try:
                found[str(xml)] = read_voc(xml, image_dir)
            except ValueError as err:
                log.warning("%s; skipped", err)
                skipped["bad annotation"] = skipped.get("bad annotation", 0) + 1
    return found


def voc(root: str | None, cache_dir: str | None = None, val_ratio: float = 0.1, test_ratio: float = 0.1,
        split_seed: int = 0, **_ignored) -> ClickSplits:
    """A user's folder of images + VOC XML: `train/ val/ test/` used as they are, else a
    seeded split, named as dataset=folder names it. Categories: the sorted set of object names."""
    if root in (None, "", "???"):
        raise ValueError("dataset.root is not set: pass dataset.root=PATH/TO/IMAGES_AND_XML")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(not_found("dataset.root", root, kind="folder"))
    skipped: dict[str, int] = {}
    if (base / "train").is_dir():
        parts = {s: _annotated(base / s, skipped) if (base / s).is_dir() else {} for s in ("train", "val", "test")}
        if not parts["val"]:
            keep, val, _ = split_samples(list(parts["train"]), val_ratio, 0.0, split_seed)
            parts["val"] = {k: parts["train"][k] for k in val}
            parts["train"] = {k: parts["train"][k] for k in keep}
        if not parts["test"]:
            log.warning("%s has no test/ folder: the test metrics use the val split", base)
            parts["test"] = parts["val"]
    else:
        every = _annotated(base, skipped)
        names = split_samples(list(every), val_ratio, test_ratio, split_seed)
        parts = {s: {k: every[k] for k in keys} for s, keys in zip(("train", "val", "test"), names)}
    if not parts["train"]:
        raise ValueError(f"dataset.root={root}: no usable image + VOC XML pairs found")
    records = {s: list(parts[s].values()) for s in ("train", "val", "test")}
    categories = sorted({o.name for rs in records.values() for r in rs for o in r.objects})
    log.info("VOC data in %s: %s (skipped: %s)", base, {k: len(v) for k, v in records.items()}, skipped or "none")
    return ClickSplits(records["train"], records["val"], records["test"], categories=categories, root=str(base),
                       skipped=skipped)
