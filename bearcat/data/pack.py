"""Packed data: a data set's splits in TFRecord shards, written by `prepare action=pack`
and read back with `dataset=packed dataset.root=FOLDER`.

Lossless either way: `encoding=file` stores each image's own bytes (a PNG stays that PNG,
a JPEG is not re-encoded) and decodes them with the same `preprocess` as a folder;
`encoding=raw` stores the preprocessed uint8 pixels (no decoding at all when loading, but
tied to the `preprocess` settings it was packed with).

A packed sample's path is `<shard file>#<record index>`, so the rest of the pipeline (label
checks, the decoded-array cache, error messages) treats it like a file.
"""
from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path

import numpy as np

from bearcat.atomic import write_json
from bearcat.data.parallel import parallel_map
from bearcat.data.preprocess import ImageError, PreprocessConfig, load_image, preprocess
from bearcat.data.sources import SPLITS, Splits

log = logging.getLogger(__name__)

MANIFEST = "packed.json"
ENCODINGS = ("file", "raw")
_REF = re.compile(r"^(.*\.tfrecord)#(\d+)$")


def is_ref(path: str) -> bool:
    return bool(_REF.match(str(path)))


def source_file(path: str) -> str:
    """The file behind a sample path: the shard for a packed record, else the path."""
    m = _REF.match(str(path))
    return m.group(1) if m else str(path)


# ----------------------------------------------------------------------------- writing

def _encode_one(job):
    """(path, encoding, preprocess dict) -> (bytes, shape, error); a worker job."""
    path, encoding, pre = job
    try:
        if encoding == "raw":
            arr = preprocess(path, PreprocessConfig(**pre))
            return arr.tobytes(), list(arr.shape), None
        load_image(path, pre["max_pixels"])  # decode fully: only good images are packed
        return Path(path).read_bytes(), [], None
    except (ImageError, OSError) as err:
        return None, None, str(err)


def _example(image: bytes, label: str, name: str, shape: list[int]) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode("utf-8")])),
        "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode("utf-8")])),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=shape)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def pack(splits: Splits, output: str | Path, pre: PreprocessConfig, encoding: str = "file",
         shard_size: int = 5000, workers: int | None = None) -> dict:
    """Write every split into output/<split>-NNNNN-of-NNNNN.tfrecord plus packed.json (last,
    so a half-written folder is never read). Unreadable images are left out, named and
    counted. Refuses a folder that already holds packed data."""
    import tensorflow as tf

    if encoding not in ENCODINGS:
        raise ValueError(f"pack.encoding={encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if int(shard_size) < 1:
        raise ValueError(f"pack.shard_size={shard_size}: must be at least 1")
    out = Path(output)
    if (out / MANIFEST).exists() or any(out.glob("*.tfrecord")):
        raise FileExistsError(f"pack.output={out} already holds packed data; choose a new folder "
                              "(or remove it with action=clean when it is under paths.cache_dir)")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "bearcat.packed", "version": 1, "encoding": encoding, "charset": splits.charset,
                "preprocess": pre.to_dict() if encoding == "raw" else None, "splits": {}, "skipped": []}
    for split, samples in splits.items():
        n_shards = max(1, -(-len(samples) // int(shard_size)))
        entry = {"shards": [], "labels": [], "names": []}
        for k in range(n_shards):
            chunk = samples[k * shard_size:(k + 1) * shard_size]
            encoded = parallel_map(_encode_one, [(p, encoding, pre.to_dict()) for p, _ in chunk],
                                   desc=f"packing {split} {k + 1}/{n_shards}", workers=workers)
            name = f"{split}-{k:05d}-of-{n_shards:05d}.tfrecord"
            count = 0
            with tf.io.TFRecordWriter(str(out / name)) as writer:
                for (path, label), (data, shape, err) in zip(chunk, encoded):
                    if err:
                        log.warning("not packed: %s", err)
                        manifest["skipped"].append(err)
                        continue
                    writer.write(_example(data, label, Path(path).name, shape))
                    entry["labels"].append(label)
                    entry["names"].append(Path(path).name)
                    count += 1
            entry["shards"].append({"file": name, "count": count})
        manifest["splits"][split] = entry
    write_json(out / MANIFEST, manifest)
    counts = {s: len(e["labels"]) for s, e in manifest["splits"].items()}
    log.info("packed %s (%s) into %s; %d unreadable left out", counts, encoding, out, len(manifest["skipped"]))
    return {"output": str(out), "encoding": encoding, "counts": counts, "skipped": len(manifest["skipped"]),
            "bytes": sum(f.stat().st_size for f in out.glob("*.tfrecord"))}


# ----------------------------------------------------------------------------- reading

def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"dataset.root={root}: no {MANIFEST} there; "
                                "write packed data with `python -m bearcat.prepare action=pack`")
    return json.loads(path.read_text(encoding="utf-8"))


def packed(root: str | None, lowercase: bool = False, charset: str | None = None, **_ignored) -> Splits:
    """Data source for `dataset=packed`: the splits as they were packed."""
    if root in (None, "", "???"):
        raise ValueError("dataset.root is not set: pass dataset.root=PATH/TO/PACKED (written by action=pack)")
    manifest = read_manifest(root)
    base = Path(root).resolve()
    parts = {}
    for split in SPLITS:
        entry = manifest["splits"].get(split, {"shards": [], "labels": []})
        refs = [f"{base / shard['file']}#{i}" for shard in entry["shards"] for i in range(shard["count"])]
        labels = [lab.lower() if lowercase else lab for lab in entry["labels"]]
        parts[split] = list(zip(refs, labels))
    if not parts["train"]:
        raise ValueError(f"dataset.root={root}: the packed data has no training images")
    charset = charset or manifest.get("charset")
    return Splits(parts["train"], parts["val"], parts["test"],
                  charset=(charset.lower() if lowercase and charset else charset) or None)


def packed_names(refs) -> dict[str, str]:
    """{ref: the file name the image had when it was packed} for the refs (`<shard>#<index>`,
    as dataset=packed names its images) whose packed.json is still beside the shard; other
    refs are left out. Lets readings of packed data be matched with readings of the folder."""
    names, shards = {}, {}
    for ref, shard, index in _packed_refs(refs):
        folder = Path(shard).parent
        if folder not in shards:
            shards[folder] = _shard_names(folder)
        packed_here = shards[folder].get(Path(shard).name, [])
        if index < len(packed_here):
            names[ref] = packed_here[index]
    return names


def packed_files(refs) -> dict[str, tuple[str, bytes]]:
    """{ref: (the file name it was packed under, the file's bytes)} for the refs of packed
    data that keeps the files (pack.encoding=file): what evaluate times from file to answer
    and copies for review. Refs of raw-encoded data (no file kept) and other paths are left
    out."""
    out, shards, encodings = {}, {}, {}
    for ref, shard, index in _packed_refs(refs):
        folder = Path(shard).parent
        if folder not in encodings:
            encodings[folder] = read_manifest(folder)["encoding"]
        if encodings[folder] != "file":
            continue
        if shard not in shards:
            shards[shard] = _read_shard(shard)
        out[ref] = (shards[shard]["name"][index], shards[shard]["image"][index])
    return out


def _packed_refs(refs):
    """(ref, shard file, record index) of each packed record's ref among `refs`."""
    for ref in refs:
        match = _REF.match(str(ref))
        if match:
            yield ref, match.group(1), int(match.group(2))


def _shard_names(folder: Path) -> dict[str, list[str]]:
    """{shard file: the file names packed into it, in record order}; {} without a manifest."""
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError):  # gone, or not a packed folder after all
        return {}
    out = {}
    for entry in manifest.get("splits", {}).values():
        names, start = entry.get("names", []), 0
        for shard in entry["shards"]:
            out[shard["file"]] = names[start:start + shard["count"]]
            start += shard["count"]
    return out


def _records(path: str):
    """The records of a TFRecord file (framing: length, length CRC, data, data CRC). Read
    in plain Python: ~10x faster than a tf.data reader for small records. The CRCs are not
    recomputed; a cut-off shard fails here, a damaged image fails its decoding."""
    data = Path(path).read_bytes()
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path}: shard is cut off at byte {pos}; pack the data again")
        (length,) = struct.unpack_from("<Q", data, pos)
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            raise ValueError(f"{path}: shard is cut off in the record at byte {pos}; pack the data again")
        yield data[start:end]
        pos = end + 4


def _read_shard(path: str) -> dict[str, list]:
    """A shard's image bytes and original file names, in record order."""
    import tensorflow as tf

    images, names = [], []
    for record in _records(path):
        feature = tf.train.Example.FromString(record).features.feature
        images.append(feature["image"].bytes_list.value[0])
        names.append(feature["name"].bytes_list.value[0].decode("utf-8"))
    return {"image": images, "name": names}


def _decode_bytes(job):
    data, pre, name = job
    try:
        return preprocess(data, PreprocessConfig(**pre), name=name), None
    except ImageError as err:
        return None, str(err)


def decode_refs(samples: list[tuple[str, str]], cfg: PreprocessConfig, workers: int | None = None,
                desc: str = "decoding") -> list[tuple[np.ndarray | None, str | None]]:
    """(array, error) per packed sample, in order: raw records are reshaped, file records
    go through `preprocess` in parallel like files from a folder."""
    shards: dict[str, dict] = {}
    manifests: dict[Path, dict] = {}
    jobs, raw = [], []
    for path, _ in samples:
        shard, index = _REF.match(path).groups()
        if shard not in shards:
            shards[shard] = _read_shard(shard)
        folder = Path(shard).parent
        if folder not in manifests:
            manifests[folder] = read_manifest(folder)
            _check_raw_settings(manifests[folder], cfg, folder)
        record = shards[shard]
        i = int(index)
        name = f"{path} ({record['name'][i]})"
        if manifests[folder]["encoding"] == "raw":
            raw.append((len(jobs), np.frombuffer(record["image"][i], np.uint8), name))
            jobs.append(None)
        else:
            jobs.append((record["image"][i], cfg.to_dict(), name))
    todo = [j for j in jobs if j is not None]
    decoded = iter(parallel_map(_decode_bytes, todo, desc=desc, workers=workers))
    results = [None if j is None else next(decoded) for j in jobs]
    shape = (cfg.height, cfg.width, cfg.channels)
    for pos, flat, name in raw:
        ok = flat.size == cfg.height * cfg.width * cfg.channels
        results[pos] = (flat.reshape(shape), None) if ok else (None, f"{name}: damaged record ({flat.size} bytes)")
    return results


def _check_raw_settings(manifest: dict, cfg: PreprocessConfig, folder: Path) -> None:
    if manifest["encoding"] != "raw":
        return
    # through the dataclass, so a key added since packing compares as its default
    packed = PreprocessConfig.from_dict(manifest["preprocess"]).to_dict()
    packed_with = {k: v for k, v in packed.items() if k != "max_pixels"}
    wanted = {k: v for k, v in cfg.to_dict().items() if k != "max_pixels"}
    if packed_with != wanted:
        diff = ", ".join(f"preprocess.{k}: packed {packed_with.get(k)} / now {v}"
                         for k, v in wanted.items() if packed_with.get(k) != v)
        raise ValueError(f"{folder}: packed as preprocessed pixels with other settings ({diff}); "
                         "use the same preprocess settings or pack again (encoding=file keeps any setting open)")
