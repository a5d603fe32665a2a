"""dataset.labels_file: labels listed in a CSV file instead of file names, for labels a file
name cannot hold ("_", "/", "*") and for sets that ship a list. Real images (a copy of a
shared set) under plain names; nothing in the user's folder changes."""
import csv
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from bearcat.data.labels import LabelsFile, label_from_name
from bearcat.data.pack import packed
from bearcat.data.sources import folder
from bearcat.evaluate import evaluate
from bearcat.prepare import prepare
from bearcat.train import train
from tests.conftest import ROOT
from tests.test_prepare import all_files


def maths_label(name_label: str) -> str:
    """A label no file name can hold, derived from the image's own so it stays learnable."""
    return f"{name_label[:2]}/{name_label[2]}_{name_label[3:]}*"


def write_csv(path: Path, rows, header=("file", "label"), bom=False) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def plain_names(src: Path, dst: Path, n: int) -> dict[str, str]:
    """n images copied as img000.jpg, img001.jpg, ...; {new name: its label as a maths label}."""
    dst.mkdir(parents=True)
    labels = {}
    for i, path in enumerate(sorted(src.iterdir())[:n]):
        name = f"img{i:03d}{path.suffix}"
        shutil.copy2(path, dst / name)
        labels[name] = maths_label(label_from_name(path, lowercase=True))
    return labels


def test_a_labels_file_is_read_by_path_or_name_and_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "train").mkdir()
    listed = write_csv(tmp_path / "labels.csv", [
        ["train/a.png", " 3/4_x* "],   # spaces around dropped, inside kept
        [".\\b.png", "Ab c"],          # a Windows path and './' spell the same bare name
        ["c.png", ""],                 # blank: not labelled
        ["d.png", "dd"], ["d.png", "dd"],  # the same row twice is harmless
    ], bom=True)  # a spreadsheet's byte-order mark
    labels = LabelsFile(listed)
    assert labels.label(tmp_path / "train" / "a.png", tmp_path) == "3/4_x*"
    assert labels.label(tmp_path / "train" / "b.png", tmp_path, lowercase=True) == "ab c"  # by bare name
    assert labels.label(tmp_path / "c.png", tmp_path) == ""
    assert labels.label(tmp_path / "x.png", tmp_path) == ""
    assert labels.unused() == ["d.png"]

    write_csv(tmp_path / "twice.csv", [["a.png", "ab"], ["b.png", "cd"], ["a.png", "xy"]])
    with pytest.raises(ValueError, match=r"twice.csv: a.png has two labels, 'ab' \(line 2\) and 'xy' \(line 4\)"):
        LabelsFile(tmp_path / "twice.csv")
    write_csv(tmp_path / "header.csv", [["a.png", "ab"]], header=("name", "text"))
    with pytest.raises(ValueError, match=r"header.csv: no 'file' column.*header: \['name', 'text'\]"):
        LabelsFile(tmp_path / "header.csv")
    with pytest.raises(ValueError, match=r"no 'answer' column \(dataset.label_column=answer\)"):
        LabelsFile(listed, column="answer")
    with pytest.raises(FileNotFoundError, match="dataset.labels_file=.*nowhere.csv: file not found"):
        LabelsFile(tmp_path / "nowhere.csv")


def test_the_folder_source_takes_labels_from_the_list(swust_copy, tmp_path, caplog):
    data = tmp_path / "data"
    labels = plain_names(swust_copy, data, 40)
    unlisted = sorted(labels)[:3]
    rows = [[name, label] for name, label in labels.items() if name not in unlisted]
    write_csv(data / "labels.csv", rows + [["gone.jpg", "ab/c"]])  # a row with no image
    with caplog.at_level(logging.WARNING):
        splits = folder(str(data), labels_file="labels.csv", val_ratio=0.2, test_ratio=0.2)  # found in the root
    got = {Path(path).name: label for _, samples in splits.items() for path, label in samples}
    assert got == {name: labels[name] for name, _ in rows}
    assert len(splits.val) == len(splits.test) == 7
    assert splits.skipped == {"not in labels file": 3}
    assert "1 rows of" in caplog.text and "gone.jpg" in caplog.text

    # a list may hold a space: outside the charset, the label is skipped and the space shown quoted
    spaced = tmp_path / "spaced.csv"
    write_csv(spaced, [[name, "ab c" if i == 0 else label] for i, (name, label) in enumerate(rows)])
    with caplog.at_level(logging.WARNING):
        splits = folder(str(data), labels_file=str(spaced), charset="".join(sorted(set("".join(labels.values())))))
    assert splits.skipped == {"not in labels file": 3, "characters outside charset": 1}
    assert "label 'ab c' has characters outside dataset.charset: ' '; skipped" in caplog.text

    with pytest.raises(ValueError, match="dataset.labels_file and dataset.class_folders=true exclude each other"):
        folder(str(data), labels_file="labels.csv", class_folders=True)
    write_csv(tmp_path / "other.csv", [["elsewhere.jpg", "ab"]])
    with pytest.raises(ValueError, match="no labelled images found .expected images listed in .*other.csv"):
        folder(str(data), labels_file=str(tmp_path / "other.csv"))


def test_a_list_folder_as_extra_train_and_a_list_never_read_by_mistake(swust_copy, tmp_path, caplog):
    """The labelling tool's list output (<md5>.png + labels.csv) joins training as
    extra_train=[DIR/labels.csv]; given as a folder read by name, each image would be
    labelled with its hash: refused, naming the list. A stray list beside LABEL_* images
    is only warned about."""
    files = sorted(swust_copy.iterdir())
    named = tmp_path / "named"
    named.mkdir()
    for p in files[:30]:
        shutil.copy2(p, named / p.name)
    answers = tmp_path / "answers"
    labels = plain_names(swust_copy, answers, 40)
    extra = {name: labels[name] for name in sorted(labels)[30:]}  # images 30-39: not in `named`
    write_csv(answers / "labels.csv", extra.items())  # the tool lists only what was answered

    both = folder(str(named), extra_train=[str(answers / "labels.csv")])
    plain = folder(str(named))
    assert both.train[len(plain.train):] == [(str(answers / n), lab) for n, lab in extra.items()]
    assert both.skipped == {"not in labels file": 30}
    with pytest.raises(ValueError, match=r"dataset.extra_train: .*answers holds the labels list labels.csv and no "
                                         r"image named LABEL_\*: pass dataset.extra_train=\[.*answers/labels.csv\]"):
        folder(str(named), extra_train=[str(answers)])
    with pytest.raises(ValueError, match=r"holds the labels list labels.csv .*pass dataset.labels_file=labels.csv"):
        folder(str(answers))
    # the soup's check= reads a list the same way: the images it names, with its labels
    from bearcat.data.preprocess import PreprocessConfig
    from bearcat.soup import labelled_arrays
    arrays, checked, total = labelled_arrays(str(answers / "labels.csv"), PreprocessConfig(height=32, width=96),
                                             lowercase=False)
    assert sorted(checked) == sorted(extra.values()) and total == len(arrays) == 10
    with pytest.raises(ValueError, match=r"check: .*answers holds the labels list labels.csv .*pass check=.*labels.csv"):
        labelled_arrays(str(answers), PreprocessConfig(height=32, width=96), lowercase=False)
    write_csv(named / "notes.csv", [["x.png", "ab"]])
    with caplog.at_level(logging.WARNING):
        assert folder(str(named)).train == plain.train  # labels still from the names
    assert "holds the labels list notes.csv, not read" in caplog.text


def test_training_and_evaluation_read_labels_no_file_name_can_hold(make_cfg, swust_copy, tmp_path):
    data = tmp_path / "maths"
    labels = plain_names(swust_copy, data, 60)
    listed = write_csv(tmp_path / "answers.csv", [[n, "", lab] for n, lab in labels.items()],
                       header=("file", "label", "answer"))
    before = all_files(data)
    dataset = ["dataset=folder", f"dataset.root={data}", f"dataset.labels_file={listed}",
               "dataset.label_column=answer", "dataset.test_ratio=0.25"]
    metrics = train(make_cfg(["debug=fast", "trainer.epochs=2", *dataset, "mode.max_length=10",
                              "preprocess.height=32", "preprocess.width=96"]))
    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert run.data.metrics["data_test_images"] == 15
    assert run.data.metrics["data_train_images"] + run.data.metrics["data_val_images"] == 45
    vocab = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="vocabulary.json", dst_path=str(tmp_path / "dl"))).read_text())
    assert {"/", "_", "*"} <= set(vocab["chars"])

    # the evaluation of the run (its training config's dataset) reads the same list
    result = evaluate(make_cfg([f"run_id={metrics['mlflow_run_id']}"], config_name="evaluate", output="eval"))
    assert result["test_images"] == 15
    with open(tmp_path / "eval" / "analysis" / "predictions.csv", newline="", encoding="utf-8") as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == 15
    assert all(r["label"] == labels[Path(r["file"]).name] for r in read)
    assert all_files(data) == before  # nothing in the user's folder changed


def test_check_and_split_use_the_list(make_cfg, swust_copy, tmp_path):
    data = tmp_path / "flat"
    labels = plain_names(swust_copy, data, 30)
    (data / "img900.jpg").write_bytes(b"")  # unreadable: quarantined, and its row then names no image
    rows = [[name, label] for name, label in labels.items()][:-2] + [["img900.jpg", "zz/z"]]
    listed = write_csv(tmp_path / "labels.csv", rows)
    before = all_files(data)
    common = ["dataset=folder", f"dataset.root={data}", f"dataset.labels_file={listed}"]
    report = prepare(make_cfg(["action=check", *common], config_name="prepare", output="check"))
    assert report["labels_file"] == str(listed)
    assert report["listed_without_image"] == ["img900.jpg"]
    assert sorted(Path(f).name for f in report["no_label_files"]) == sorted(labels)[-2:]
    assert set("/_*") <= set(report["charset"])
    assert sorted(all_files(data).values()) == sorted(before.values())  # moved to quarantine/, not lost

    # split copies the listed images into train/val/test under their own names: the same
    # list then reads the split folder, and training sees the split it made of the flat one
    out = tmp_path / "split"
    result = prepare(make_cfg(["action=split", *common, f"split.output={out}"], config_name="prepare",
                              output="split"))
    assert sum(result["copied"].values()) == 28 and result["without_label"] == 2
    flat = folder(str(data), labels_file=str(listed))
    split = folder(str(out), labels_file=str(listed))
    for name, samples in flat.items():
        assert [(Path(p).name, lab) for p, lab in getattr(split, name)] == \
            sorted((Path(p).name, lab) for p, lab in samples)

    # pack keeps the list's labels in the shards
    prepare(make_cfg(["action=pack", *common, f"pack.output={tmp_path / 'packed'}"], config_name="prepare",
                     output="pack"))
    shards = packed(str(tmp_path / "packed"))
    assert sorted(shards.labels()) == sorted(flat.labels())


def test_the_maths_example_writes_images_and_their_list_and_never_overwrites(tmp_path):
    """scripts/make_maths_captchas.py: expressions drawn by the captcha library, labels in
    labels.csv; the folder source reads them, every operator among the labels."""
    out = tmp_path / "maths"
    script = [sys.executable, str(ROOT / "scripts" / "make_maths_captchas.py"), "--out", str(out), "--count", "40"]
    done = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    splits = folder(str(out), labels_file="labels.csv")
    labels = splits.labels()
    assert len(labels) == 40 and all(label.endswith("=?") for label in labels)
    assert set("+-*/") <= set("".join(labels))
    for label in labels:  # each expression as drawn, its result a whole number
        a, op, b = re.fullmatch(r"(\d+)([-+*/])(\d+)=\?", label).groups()
        assert op != "/" or int(a) % int(b) == 0
        assert op != "-" or int(a) >= int(b)
    before = all_files(out)
    again = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already holds images or labels.csv" in again.stderr
    assert all_files(out) == before
