"""The labelling queue behind `python -m bearcat.label`: unlabelled images, the model's
reading of each, lowest confidence first; answers saved as copies named
`ANSWER_<md5 of the file>.<ext>` in the output folder (the folder-dataset convention, so
`dataset=folder dataset.root=OUT` trains on them at once). With a labels list
(`labels_file=labels.csv`), the copies are named `<md5>.<ext>` and each answer is a row of
that CSV file in OUT instead, so answers may hold characters no file name can (`_ / * ?`);
`dataset.labels_file=labels.csv` trains on them.

The source folder is only read. Images whose content is already in the output folder
(labelled earlier, under any name) are not shown again, so a restart carries on where
the last session stopped. Undo removes the copy this session made for the last answer
and puts its image back at the front of the queue. Skip (an image a person cannot read
either) puts it at the back of the queue, nothing saved.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from bearcat.atomic import replacing
from bearcat.checks import not_found
from bearcat.data.labels import LabelsFile, file_md5, images_outside, is_image_file, shown_folders

log = logging.getLogger(__name__)

FORBIDDEN = set('_/\\:*?"<>|')  # "_" ends the label in a file name; the rest are not file-name safe
MAX_ANSWER_BYTES = 120  # UTF-8 bytes: with "_<md5>.ext" and the temporary name's extras, well under 255
LIST_HEADER = ["file", "label"]


@dataclass
class Item:
    id: str                # md5 of the file's bytes
    path: Path
    prediction: str = ""
    confidence: float | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.path.name, "prediction": self.prediction, "confidence": self.confidence}


def check_answer(answer: str, in_name: bool = True) -> str:
    """The answer as saved; `in_name`: it becomes part of a file name (no labels list)."""
    answer = (answer or "").strip()
    if not answer:
        raise ValueError("empty answer: type the characters of the image")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in answer):
        raise ValueError(f"answer {answer!r}: control characters cannot be part of a label")
    if not in_name:
        return answer
    bad = sorted(set(answer) & FORBIDDEN)
    if bad or answer.startswith("."):
        raise ValueError(f"answer {answer!r}: cannot be part of a file name label ({''.join(bad) or 'leading .'}); "
                         "labels_file=labels.csv saves answers in a list instead")
    if len(answer.encode("utf-8")) > MAX_ANSWER_BYTES:
        raise ValueError(f"answer of {len(answer)} characters: longer than a file name label can be "
                         f"({MAX_ANSWER_BYTES} bytes in UTF-8)")
    return answer


def read_list(path: Path) -> dict[str, str]:
    """The rows of a labels list answers can be appended to ({} when new): a CSV whose
    header is file,label, one label per file (else a clear error)."""
    if not path.exists() or not path.stat().st_size:
        return {}
    listed = LabelsFile(path, key="labels_file")
    if listed.header != LIST_HEADER:
        raise ValueError(f"labels_file={path}: header {listed.header}, answers are appended as "
                         f"{','.join(LIST_HEADER)}")
    return listed.labels


def append_row(path: Path, name: str, label: str) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(LIST_HEADER)
        writer.writerow([name, label])
        handle.flush()
        os.fsync(handle.fileno())  # an answer typed is an answer kept, even if the machine stops


def drop_rows(path: Path, name: str) -> None:
    """The list without the rows of `name` (undo), replaced in one rename."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows[:1] + [r for r in rows[1:] if not r or r[0] != name])


def accept_threshold(value) -> float:
    """label's accept_above as a confidence in (0, 1], or a ValueError naming the key."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"accept_above={value}: a confidence between 0 (excluded) and 1")
    return threshold


class LabelQueue:
    def __init__(self, source, out, predictor=None, batch_size: int = 64, labels_file: str | None = None):
        self.source, self.out = Path(source), Path(out)
        if not self.source.is_dir():
            raise FileNotFoundError(not_found("dir", source, kind="folder"))
        if self.out.resolve() == self.source.resolve():
            raise ValueError(f"out={out}: must differ from dir= (the source folder is never changed)")
        self.out.mkdir(parents=True, exist_ok=True)
        # answers as rows of a CSV list in out (relative names) instead of in the file names
        self.listing = self.out / labels_file if labels_file else None
        rows = read_list(self.listing) if self.listing else {}
        self.lock = threading.Lock()
        self.history: list[tuple[Item, Path, str]] = []  # this session's answers, for undo
        self.skipped = 0
        self.unreadable: list[str] = []
        saved = [p for p in self.out.iterdir() if is_image_file(p)]
        if self.listing:
            named = [p.name for p in saved if "_" in p.stem]
            if named:  # the list would not name them: training on it would skip them
                raise ValueError(f"out={out} holds images named by their label ({named[0]}, ...): answers in a "
                                 "labels list go to a folder of their own")
            # a copy without its row (stopped between the two writes) is not done: asked again
            saved = [p for p in saved if rows.get(p.name)]
        done = {file_md5(p) for p in saved}
        items, seen = [], set(done)
        for path in sorted(self.source.iterdir()):
            if not is_image_file(path):
                continue
            digest = file_md5(path)
            if digest not in seen:
                seen.add(digest)
                items.append(Item(digest, path))
        below = images_outside(self.source, {self.source})
        if below:
            log.warning("dir=%s: %d images in its sub-folders are not offered (only the images directly in it): %s",
                        source, sum(below.values()), shown_folders(below))
        self.done_before = len(done)
        if predictor is not None and items:
            items = self._read(items, predictor, batch_size)
        else:
            items = self._decodable(items)
        self.pending = items
        log.info("%d images to label in %s (%d already in %s, %d unreadable)", len(self.pending), self.source,
                 self.done_before, self.out, len(self.unreadable))

    def _read(self, items: list[Item], predictor, batch_size: int) -> list[Item]:
        """The model's reading of every image (through the bundle's own preprocess),
        least confident first; unreadable files are set aside, never shown."""
        from bearcat.bundle import predict_files

        results, failed = predict_files(predictor, [it.path for it in items], batch_size)
        for path, why in failed:
            log.warning("%s", why)
            self.unreadable.append(path.name)
        readable = []
        for it, r in zip(items, results):
            if r is not None:
                it.prediction, it.confidence = r["result"], float(r["confidence"])
                readable.append(it)
        return sorted(readable, key=lambda it: (it.confidence, it.path.name))

    def _decodable(self, items: list[Item]) -> list[Item]:
        """Without a model: the images that decode, in file-name order."""
        from bearcat.data.preprocess import ImageError, load_image

        kept = []
        for it in items:
            try:
                load_image(it.path)
                kept.append(it)
            except ImageError as err:
                log.warning("%s", err)
                self.unreadable.append(it.path.name)
        return kept

    def find(self, item_id: str) -> Item:
        for it in self.pending:
            if it.id == item_id:
                return it
        raise KeyError(item_id)

    def state(self) -> dict:
        with self.lock:
            current = self.pending[0].to_json() if self.pending else None
            upcoming = self.pending[1].id if len(self.pending) > 1 else None
            return {"item": current, "upcoming": upcoming, "remaining": len(self.pending),
                    "saved": len(self.history), "skipped": self.skipped, "done_before": self.done_before,
                    "can_undo": bool(self.history),
                    "last": self._last(), "out": str(self.out)}

    def _last(self) -> str | None:
        if not self.history:
            return None
        _, target, answer = self.history[-1]
        return f"{answer} ({target.name} in {self.listing.name})" if self.listing else target.name

    def answer(self, item_id: str, answer: str) -> Path:
        answer = check_answer(answer, in_name=self.listing is None)
        with self.lock:
            item = self.find(item_id)
            suffix = item.path.suffix.lower()
            target = self.out / (f"{item.id}{suffix}" if self.listing else f"{answer}_{item.id}{suffix}")
            if target.exists() and not self.listing:
                raise FileExistsError(f"{target} already exists")
            if not target.exists():  # with a list, an existing <md5> copy holds these very bytes
                with replacing(target) as tmp:
                    shutil.copyfile(item.path, tmp)  # copy, never move: the source stays as it is
            if self.listing:
                try:
                    append_row(self.listing, target.name, answer)
                except OSError:
                    target.unlink(missing_ok=True)  # no row, no copy: the image stays in the queue
                    raise
            self.pending.remove(item)
            self.history.append((item, target, answer))
            return target

    def skip(self, item_id: str) -> Item:
        """Show the image again after every other one; nothing is saved. A restart shows it
        in its confidence order again."""
        with self.lock:
            item = self.find(item_id)
            self.pending.remove(item)
            self.pending.append(item)
            self.skipped += 1
            return item

    def accept_confident(self, threshold: float) -> list[Path]:
        """Save the model's answer, unreviewed, for every image read with a confidence of at
        least `threshold` (pseudo-labels: point `out` at a folder of their own, so they stay
        apart from answers a person checked). The others stay in the queue."""
        threshold = accept_threshold(threshold)
        chosen = [it for it in self.pending if it.confidence is not None and it.confidence >= threshold]
        saved, refused = [], {}
        for it in chosen:
            try:
                saved.append(self.answer(it.id, it.prediction))
            except ValueError as err:  # an empty reading, or one no file name can hold: leave it queued
                refused.setdefault(str(err), []).append(it.path.name)
        for why, names in refused.items():  # one line a reason: an untrained model reads every image empty
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            log.warning("not saved, left to label: %s: %s", shown, why)
        return saved

    def undo(self) -> dict | None:
        """Take back this session's last answer: its copy is removed, its image shown next."""
        with self.lock:
            if not self.history:
                return None
            item, target, answer = self.history.pop()
            if self.listing:
                drop_rows(self.listing, target.name)
            target.unlink(missing_ok=True)
            self.pending.insert(0, item)
            return {"id": item.id, "answer": answer}
