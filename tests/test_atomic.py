"""Atomic writes (bearcat/atomic.py), used for checkpoints, bundles, caches, reports and the
labelling page's copies: a failed write keeps the old file, nothing temporary stays behind."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bearcat.atomic import HOST, remove_stale, replacing, temp_path, write_json
from tests.conftest import ROOT


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_json(target, {"epoch": 1, "label": "验证码"})
    with pytest.raises(RuntimeError, match="killed"):
        with replacing(target) as tmp:
            tmp.write_text('{"epoch": 2, "la', encoding="utf-8")  # half written
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text(encoding="utf-8")) == {"epoch": 1, "label": "验证码"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_folder_replaces_the_older_folder_whole(tmp_path):
    target = tmp_path / "epoch-0003"
    target.mkdir()
    (target / "stale.h5").write_bytes(b"old")
    with replacing(target) as tmp:
        tmp.mkdir()
        (tmp / "model.weights.h5").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["model.weights.h5"]
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0003"]


def test_writers_that_choose_the_format_by_suffix_write_the_target(tmp_path):
    """np.savez appends .npz to any other name: with keep_suffix the temporary ends in .npz,
    so exactly the target appears; without it, the temporary ends in .tmp (a leftover is
    never taken for an image by a folder scan)."""
    target = tmp_path / "cache.npz"
    with replacing(target, keep_suffix=True) as tmp:
        assert tmp.suffix == ".npz" and tmp.name.startswith(".")
        np.savez(tmp, images=np.arange(6).reshape(2, 3))
    assert np.load(target)["images"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]
    assert temp_path(tmp_path / "A1_x.png").suffix == ".tmp"


def test_two_processes_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "ABCD_0123456789.png"
    code = f"from bearcat.atomic import temp_path; print(temp_path({str(target)!r}))"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    theirs = other.stdout.strip()
    assert theirs != str(temp_path(target))
    assert theirs.startswith(str(tmp_path / ".ABCD_0123456789.png."))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_killed_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = dead_pid()
    (tmp_path / f".epoch-0002.{dead}.tmp").mkdir()
    (tmp_path / f".epoch-0002.{dead}.tmp" / "model.weights.h5").write_bytes(b"half")
    (tmp_path / f".best.{HOST}-{dead}.tmp.keras").write_bytes(b"half")
    live = temp_path(tmp_path / "ABCD_x.png")  # this process's: maybe being written right now
    live.write_bytes(b"in progress")
    elsewhere = f".EFGH_x.png.other-node-7-{dead}.tmp"  # another machine's (a shared cache): its pid means nothing here
    for name in ("ABCD_x.png", ".notes.tmp", "state.json", elsewhere):  # never touched
        (tmp_path / name).write_bytes(b"keep")
    removed = remove_stale(tmp_path)
    assert sorted(p.name for p in removed) == [f".best.{HOST}-{dead}.tmp.keras", f".epoch-0002.{dead}.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".notes.tmp", "ABCD_x.png", "state.json", elsewhere, live.name])
    assert f".{HOST}-{os.getpid()}.tmp" in live.name


def test_a_new_checkpointer_clears_what_a_killed_run_left(tmp_path):
    from bearcat.callbacks import Checkpointer

    dead = dead_pid()
    (tmp_path / f".epoch-0003.{dead}.tmp").mkdir()
    (tmp_path / "epoch-0002").mkdir()
    Checkpointer(tmp_path, "val_accuracy")
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0002"]


def test_a_killed_generation_run_again_reads_what_it_had_drawn(tmp_path):
    """Killed (or stopped by Ctrl-C) part way, a generation leaves whole files but no marker and
    no array cache; run again, it reads those files instead of drawing them, and draws only the
    rest: the same files and the same arrays as a generation never stopped."""
    from bearcat.data.pipeline import load_split
    from bearcat.data.preprocess import PreprocessConfig
    from bearcat.data.sources import synthetic

    pre = PreprocessConfig(height=30, width=80)
    args = dict(charset="AB12", min_length=2, max_length=3, image_width=80, image_height=30, train_size=12,
                val_size=2, test_size=2, seed=7, workers=1, preprocess=pre.to_dict())
    whole = synthetic(**args, cache_dir=str(tmp_path / "whole"))
    cut = synthetic(**args, cache_dir=str(tmp_path / "cut"))
    for leftover in [*(tmp_path / "cut").rglob("*.done"), *(tmp_path / "cut" / "arrays").iterdir()]:
        leftover.unlink()  # as a kill before the end leaves it
    drawn = [Path(p) for p, _ in cut.train]
    for path in drawn[6:]:
        path.unlink()  # not drawn yet when killed
    drawn[0].write_bytes(drawn[0].read_bytes()[:40])  # damaged later: drawn again
    stamps = {p: p.stat().st_mtime_ns for p in drawn[1:6]}
    time.sleep(0.01)
    again = synthetic(**args, cache_dir=str(tmp_path / "cut"))
    assert {p: p.stat().st_mtime_ns for p in drawn[1:6]} == stamps  # read, not drawn again
    assert all(Path(p).read_bytes() == Path(q).read_bytes() for (p, _), (q, _) in zip(again.train, whole.train))
    arrays = [load_split(s.train, pre, str(tmp_path / name), desc="").images
              for s, name in ((whole, "whole"), (again, "cut"))]
    assert np.array_equal(*arrays) and arrays[0].shape[0] == 12


def test_ctrl_c_while_generating_says_what_is_kept(tmp_path, monkeypatch, caplog):
    import bearcat.data.sources as sources

    def interrupted(fn, jobs, **kwargs):  # Ctrl-C after two captchas
        for job in jobs[:2]:
            fn(job)
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "parallel_map", interrupted)
    settings = sources.synthetic_settings("AB12", 2, 3, 80, 30, seed=7)
    with caplog.at_level("WARNING", logger="bearcat.data.sources"), pytest.raises(KeyboardInterrupt):
        sources.generate_split(tmp_path, "train", 5, settings, workers=1)
    assert len(list((tmp_path / "train").glob("*.png"))) == 2
    assert (f"Ctrl-C while generating the train split (5 captchas): {tmp_path / 'train'} keeps the 2 drawn so far, "
            "and a run with the same dataset settings reads them instead of drawing them again") in caplog.text


def test_drawing_a_split_again_clears_what_a_killed_drawing_left(tmp_path):
    from bearcat.data.sources import generate_split, synthetic_settings

    settings = synthetic_settings("AB12", 2, 3, 80, 30, seed=7)
    split = tmp_path / "train"
    split.mkdir()
    dead = dead_pid()
    (split / f".AB_0123456789.png.{dead}.tmp").write_bytes(b"half a png")
    paths = generate_split(tmp_path, "train", 2, settings, workers=1)
    assert sorted(p.name for p in split.iterdir()) == sorted(Path(p).name for p in paths)
