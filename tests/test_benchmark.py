"""The benchmark runner's process isolation: a run the kernel kills is reported by name
with its signal, and the runs around it still land in the report."""
import json
import sys

from bearcat.benchmark import run_isolated
from tests.conftest import ROOT

COLUMNS = [("name", "name", "s"), ("accuracy", "test_accuracy", ".2f")]


def test_killed_run_is_reported_and_the_others_kept(tmp_path, capsys):
    def child_argv(name, report):
        if name == "killed":  # as the out-of-memory killer would end it
            code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        else:
            code = (f"import json, pathlib; pathlib.Path({str(report)!r}).write_text("
                    f"json.dumps([{{'name': {name!r}, 'test_accuracy': 0.5}}]))")
        return [sys.executable, "-c", code]

    rows = run_isolated(["first", "killed", "last"], child_argv, tmp_path, COLUMNS, "name")

    assert [r["name"] for r in rows] == ["first", "killed", "last"]
    assert rows[0]["test_accuracy"] == 0.5 and rows[2]["test_accuracy"] == 0.5
    assert "killed by signal 9" in rows[1]["error"]
    report = next(p for p in tmp_path.glob("*-report.json"))
    assert json.loads(report.read_text()) == rows
    assert "| last | 0.50 |" in capsys.readouterr().out


def test_few_labels_scores_against_reviewed_labels(trained_run, tmp_path):
    """bench_few_labels --reviewed: one reading per image, scored against the given labels
    and against the reviewed ones (a corrected label counts as the reviewed answer)."""
    import csv
    import shutil
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_few_labels
    from bearcat.bundle import Predictor

    model = trained_run["output_dir"] / "model"
    source = sorted((trained_run["root"] / "cache" / "synthetic").glob("*/test/*.png"))[:4]
    test = tmp_path / "test"
    test.mkdir()
    for path in source:
        shutil.copy2(path, test / path.name)
    files = sorted(test.iterdir())
    readings = [r["result"].lower() for r in Predictor(model).predict(files)]
    given = [f.name.split("_", 1)[0].lower() for f in files]
    # "Review" the first two: their right answer is what the model reads.
    table = tmp_path / "reviewed.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "reviewed", "seen"])
        writer.writerows([[files[i].name, given[i], readings[i], "test"] for i in (0, 1)])
        writer.writerow(["not_in_the_split.png", "ab", "cd", "ignored"])
    reviewed = bench_few_labels.read_reviewed(table)
    scores = bench_few_labels.score_reviewed(model, test, reviewed)
    changed = sum(given[i] != readings[i] for i in (0, 1))
    assert scores["labels_corrected"] == changed
    assert scores["test_accuracy_given"] == sum(r == g for r, g in zip(readings, given)) / 4
    expected = (2 + sum(r == g for r, g in zip(readings[2:], given[2:]))) / 4
    assert scores["test_accuracy_reviewed"] == expected


def test_few_labels_split_trains_on_reviewed_labels_and_leaves_the_source(tmp_path):
    """--review-train: a listed training image is copied under its reviewed label; test
    images keep theirs (they are scored both ways instead); the source is only read."""
    from pathlib import Path

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_few_labels

    data = tmp_path / "set"
    data.mkdir()
    for i in range(8):
        Image.new("L", (20, 10), 40 * (i % 6)).save(data / f"ab{i}x_{i:032x}.png")
    before = sorted(p.name for p in data.iterdir())
    relabel = {name: "zz" + name[2:4] for name in before}  # "review" every file
    root, pool = bench_few_labels.make_split(data, tmp_path / "out", 3, test=2, val=1, seed=0, relabel=relabel)
    train = sorted(p.name for p in (root / "train").iterdir())
    test = sorted(p.name for p in (root / "test").iterdir())
    assert len(train) == 3 and all(name.startswith("zz") for name in train)
    assert len(test) == 2 and all(name.startswith("ab") for name in test)
    assert {n.split("_", 1)[1] for n in train} | {n.split("_", 1)[1] for n in test} <= {n.split("_", 1)[1] for n in before}
    assert len(pool) == 2 and sorted(p.name for p in data.iterdir()) == before


def test_glyph_confusion_learns_distinct_glyphs_and_reports_the_cells(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import glyph_confusion

    out = tmp_path / "glyphs.json"
    assert glyph_confusion.main(["--charset", "AX", "--per-char", "240", "--epochs", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["charset"] == "AX" and report["glyphs"] == 480 and report["input"] == [33, 19]  # the largest cell, 62 x 35, scaled by 32/60
    assert report["accuracy"] >= 0.9  # A and X are easy to tell apart even after the library's warps
    # the library stretches every glyph into its font's character cell: O and 0 get the same one
    cells = glyph_confusion.cell_and_ink("O0")
    assert cells["O"]["42"]["cell"] == cells["0"]["42"]["cell"] and cells["O"]["42"]["ink"][0] > cells["0"]["42"]["ink"][0]
    dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # the fonts the pretrain_generated preset draws with
    several = glyph_confusion.cell_and_ink("O", [dejavu, dejavu.replace(".ttf", "-Bold.ttf")], [20])
    assert set(several["O"]) == {"DejaVuSans.ttf 20", "DejaVuSans-Bold.ttf 20"}
    assert glyph_confusion.expand("0-3X") == "0123X"
