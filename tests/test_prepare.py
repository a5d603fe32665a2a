"""`python -m bearcat.prepare`: generate, split, check (every kind of bad input), pack,
preview and clean. Real images come from a copy of a shared data set; nothing a user
owns is ever lost: files in the data + quarantine == files before."""
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from bearcat.compare import compare
from bearcat.data.check import format_report
from bearcat.data.pack import packed, packed_names
from bearcat.data.pipeline import load_split
from bearcat.data.preprocess import PreprocessConfig
from bearcat.data.sources import folder
from bearcat.evaluate import evaluate
from bearcat.experiment import preprocess_config
from bearcat.prepare import prepare
from bearcat.train import train
from tests.conftest import ROOT

LOWER36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def copy_images(src: Path, dst: Path, n: int, start: int = 0) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, dst / p.name)) for p in sorted(src.iterdir())[start:start + n]]


def all_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "report.json"}


def bad_folder(swust: Path, dst: Path) -> dict[str, str]:
    """12 good images plus one file per kind of bad input; returns {case: file name}."""
    good = copy_images(swust, dst, 12)
    real = sorted(swust.iterdir())[20:30]  # other images, so no accidental duplicates
    img = Image.open(real[0]).convert("RGB")
    data = real[1].read_bytes()
    cases = {
        "truncated": "tr3x_truncated.jpg", "zero": "z3r0_empty.png", "text": "t3xt_notanimage.png",
        "alpha": "a1ph_alpha.png", "palette": "pa1e_palette.png", "16bit": "b16b_deep.png",
        "bomb": "b0mb_huge.png", "no_label": "_nolabel.jpg", "outside": "a #d_outside.jpg",
        "duplicate": "dupe_copy.jpg", "chinese": "验证码_cn.png", "mixed_case": "aBcD_mixed.jpg",
    }
    (dst / cases["truncated"]).write_bytes(data[:len(data) // 2])
    (dst / cases["zero"]).write_bytes(b"")
    (dst / cases["text"]).write_text("this is a text file, not a PNG\n")
    rgba = img.convert("RGBA")
    rgba.putalpha(128)  # half transparent
    rgba.save(dst / cases["alpha"])
    img.convert("P").save(dst / cases["palette"])
    Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257).save(dst / cases["16bit"])
    Image.new("L", (6000, 4000), 200).save(dst / cases["bomb"])  # 24 Mpx > preprocess max_pixels
    shutil.copy2(real[2], dst / cases["no_label"])
    shutil.copy2(real[3], dst / cases["outside"])
    shutil.copy2(good[0], dst / cases["duplicate"])
    Image.open(real[4]).save(dst / cases["chinese"])
    shutil.copy2(real[5], dst / cases["mixed_case"])
    (dst / "notes.txt").write_text("not an image: counted, ignored")
    return cases


def test_check_reports_and_quarantines_every_bad_input(make_cfg, swust_copy, tmp_path, caplog, capsys):
    data = tmp_path / "data"
    cases = bad_folder(swust_copy, data)
    before = all_files(data)
    cfg = make_cfg(["action=check", "dataset=folder", f"dataset.root={data}", f"dataset.charset={LOWER36}"],
                   config_name="prepare")
    report = prepare(cfg)

    # nothing lost: every file is still in the data or in quarantine/, byte for byte
    after = all_files(data)
    assert len(after) == len(before) == report["files_before"] == report["files_after"] == 25
    moved = {Path(k).name: v for k, v in after.items() if k.startswith("quarantine/")}
    unreadable = {cases[c] for c in ("truncated", "zero", "text", "bomb")}
    assert set(moved) == unreadable
    assert sorted(after.values()) == sorted(before.values())
    log = json.loads((data / "quarantine" / "report.json").read_text(encoding="utf-8"))
    reasons = {Path(e["file"]).name: e["reason"] for e in log}
    assert set(reasons) == unreadable
    assert "truncated" in reasons[cases["truncated"]] and "0 bytes" in reasons[cases["zero"]]
    assert "cannot decode" in reasons[cases["text"]] and "exceeds the limit" in reasons[cases["bomb"]]
    for name, why in reasons.items():
        assert name in why  # the message names the file

    # counts in the report, each problem named by file
    assert report["image_files"] == 24 and report["readable"] == 20
    assert report["unreadable"] == report["quarantined"] == 4
    assert [Path(f).name for f in report["no_label_files"]] == [cases["no_label"]]
    outside = {Path(o["file"]).name: o["characters"] for o in report["outside_charset_files"]}
    assert outside == {cases["outside"]: " #", cases["chinese"]: "码证验", cases["mixed_case"]: "BD"}
    assert report["duplicates"]["extra_copies"] == 1
    assert cases["duplicate"] in {Path(f).name for f in report["duplicates"]["groups"][0]}
    notes = {Path(c["file"]).name: c["note"] for c in report["converted"]}
    assert "16-bit" in notes[cases["16bit"]] and "palette" in notes[cases["palette"]]
    assert "transparency" in notes[cases["alpha"]]
    assert report["mixed_case_labels"] == 1 and set(report["letters_in_both_cases"]) == {"b", "d"}
    assert report["other_files"] == [str(data / "notes.txt")]
    assert report["width"] == {"min": 90, "median": 90.0, "max": 90} and report["height"]["max"] == 30
    assert report["recommended_preprocess"] == {"height": 32, "width": 96}
    assert report["label_length"] == {"3": 1, "4": 18} and "验" in report["charset"]
    # each problem file is named in the table (its first check.listed, 20), not logged one by one;
    # the quarantine logs one line
    table = capsys.readouterr().out
    for name in cases.values():
        if name not in (cases["alpha"], cases["palette"], cases["16bit"]):  # those are fine, only noted
            assert name in table.split("files to look at:")[1], name
    assert not any(name in caplog.text for name in cases.values())
    assert f"moved 4 unreadable files to {data / 'quarantine'}" in caplog.text
    assert "unreadable       4 (4 moved to quarantine/" in table and "outside charset  3" in table
    # a space is shown quoted, in the list and in the labels' charset, not as an empty gap
    assert f"{data / cases['outside']}: characters outside the charset: ' #'\n" in table
    assert f"{data / cases['chinese']}: characters outside the charset: 码证验\n" in table
    assert re.search(r"\n  charset \(30\) +' #01", table) and len(report["charset"]) == 30
    assert json.loads((tmp_path / "run" / "check.json").read_text(encoding="utf-8"))["quarantined"] == 4

    # a second check moves nothing more and still adds up
    again = prepare(cfg)
    assert again["unreadable"] == 0 and again["files_before"] == again["files_after"] == 25

    # case folding and Unicode labels without a charset: clean
    folded = prepare(make_cfg(["action=check", "dataset=folder", f"dataset.root={data}", "dataset.lowercase=true"],
                              config_name="prepare"))
    assert folded["mixed_case_labels"] == 0 and folded["outside_charset"] == 0 and "b" in folded["charset"]
    assert "B" not in folded["charset"] and "码" in folded["charset"]


def test_check_counts_animated_captchas_and_quarantines_a_merge_it_cannot_read(make_cfg, tmp_path, capsys):
    data = tmp_path / "gifs"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_gif_captchas.py"), "--out", str(data),
                    "--count", "6"], check=True, capture_output=True)
    gifs = sorted(data.iterdir())
    assert len(gifs) == 6 and all(Image.open(p).n_frames == 4 for p in gifs)
    Image.open(gifs[0]).convert("RGB").save(data / "ABCD_still.png")
    cut = data / f"{gifs[1].name.split('_')[0]}_cut.gif"
    cut.write_bytes(gifs[1].read_bytes()[:-40])  # its last frame is damaged, its first is whole

    def check(frames):
        return prepare(make_cfg(["action=check", "dataset=folder", f"dataset.root={data}",
                                 f"preprocess.frames={frames}"], config_name="prepare"))

    first = check("first")
    assert first["readable"] == 8 and first["animated"] == 7 and first["quarantined"] == 0
    assert "animated         7 (preprocess.frames=first: only their first frame is read" in capsys.readouterr().out
    merged = check("darkest")
    assert merged["readable"] == 7 and merged["animated"] == 6 and merged["quarantined"] == 1
    assert "cannot decode frame 4 of 4" in merged["unreadable_files"][0]["reason"]
    assert (data / "quarantine" / cut.name).is_file() and not cut.exists()
    assert "animated         6 (preprocess.frames=darkest: every frame merged)" in capsys.readouterr().out


def test_generate_then_split_copies_never_overwrites(make_cfg, tmp_path, caplog):
    gen = tmp_path / "gen"
    opts = ["action=generate", f"generate.output={gen}", "dataset.train_size=20", "dataset.val_size=3",
            "dataset.test_size=3", "dataset.image_width=100", "dataset.image_height=40", "dataset.charset=AB12"]
    result = prepare(make_cfg(opts, config_name="prepare"))
    assert result["counts"] == {"train": 20, "val": 3, "test": 3}
    names = [p.name for p in (gen / "train").iterdir()]
    assert len(names) == 20 and all(set(n.split("_")[0]) <= set("AB12") for n in names)
    with pytest.raises(FileExistsError, match=r"generate.output=.*already holds images"):
        prepare(make_cfg(opts, config_name="prepare"))
    # a size no split can have is named, and nothing is drawn (it was a silent empty split)
    bad = tmp_path / "bad"
    with pytest.raises(ValueError, match=r"dataset.val_size=-3: a whole number of images, at least 0"):
        prepare(make_cfg([*opts[:1], f"generate.output={bad}", *opts[2:], "dataset.val_size=-3"], config_name="prepare"))
    assert not bad.exists()

    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (gen / "train").iterdir():
        shutil.copy2(p, flat / p.name)
    for i in range(12):
        (flat / f"_unlabelled{i:02d}.png").write_bytes((gen / "val").iterdir().__next__().read_bytes())
    (flat / "older").mkdir()
    shutil.copy2(next((gen / "test").iterdir()), flat / "older")  # in a sub-folder: not split, said so
    before = all_files(flat)
    split_opts = ["action=split", "dataset=folder", f"dataset.root={flat}", "dataset.val_ratio=0.2",
                  "dataset.test_ratio=0.2", f"split.output={tmp_path / 'split'}"]
    with caplog.at_level("WARNING", logger="bearcat"):
        out = prepare(make_cfg(split_opts, config_name="prepare"))
    assert out["copied"] == {"train": 12, "val": 4, "test": 4} and out["without_label"] == 12
    assert len(out["without_label_files"]) == 12
    said = caplog.messages  # the first ten of each kind named, then one line
    assert len([m for m in said if m.endswith("file name holds no label; left where it is")]) == 10
    assert said.count("more files skipped (file name holds no label): counted, not named here") == 1
    assert f"{flat}: 1 images in its sub-folders are not split (left where they are): older/ 1" in said
    assert all_files(flat) == before  # a copy: the flat folder is untouched
    # the same split training makes of the flat folder with that seed and ratios
    ref = folder(str(flat), val_ratio=0.2, test_ratio=0.2)
    for split in ("train", "val", "test"):
        assert sorted(Path(p).name for p, _ in getattr(ref, split)) == \
            sorted(p.name for p in (tmp_path / "split" / split).iterdir())
    # again: nothing overwritten, every clash counted
    target = next((tmp_path / "split" / "train").iterdir())
    target.write_bytes(b"user edited this")
    caplog.clear()
    with caplog.at_level("WARNING", logger="bearcat"):
        again = prepare(make_cfg(split_opts, config_name="prepare"))
    assert again["copied"] == {"train": 0, "val": 0, "test": 0} and again["already_there"] == 20
    assert len(again["already_there_files"]) == 20
    assert len([m for m in caplog.messages if "already exists, not overwritten" in m]) == 10
    assert target.read_bytes() == b"user edited this"

    moved = prepare(make_cfg(split_opts[:-1] + ["split.move=true"], config_name="prepare"))
    assert sum(moved["moved"].values()) == 20
    assert sorted(p.name for p in flat.iterdir() if p.is_file()) == [f"_unlabelled{i:02d}.png" for i in range(12)]
    assert len(all_files(flat)) == len(before)  # moved inside dataset.root, none lost


def test_pack_is_lossless_and_trains_from_packed(make_cfg, swust_copy, tmp_path):
    data = tmp_path / "data"
    copy_images(swust_copy, data, 100)
    (data / "broken_x.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    base = ["action=pack", "dataset=folder", f"dataset.root={data}", "dataset.lowercase=true",
            "pack.shard_size=30"]
    out = prepare(make_cfg(base + [f"pack.output={tmp_path / 'packed'}"], config_name="prepare"))
    assert out["skipped"] == 1 and sum(out["counts"].values()) == 100
    assert len(list((tmp_path / "packed").glob("train-*.tfrecord"))) == 3  # 80 train images / 30 per shard
    raw = prepare(make_cfg(base + [f"pack.output={tmp_path / 'raw'}", "pack.encoding=raw"], config_name="prepare"))
    assert raw["counts"] == out["counts"]
    with pytest.raises(FileExistsError, match="already holds packed data"):
        prepare(make_cfg(base + [f"pack.output={tmp_path / 'packed'}"], config_name="prepare"))
    for action in ("check", "split"):  # they work on folders of images, not on shards
        with pytest.raises(ValueError, match=f"action={action}: dataset.root=.*packed holds packed data"):
            prepare(make_cfg([f"action={action}", "dataset=packed", f"dataset.root={tmp_path / 'packed'}"],
                             config_name="prepare"))

    pre = preprocess_config(make_cfg([]))
    src = folder(str(data), lowercase=True)
    for root in ("packed", "raw"):
        pk = packed(str(tmp_path / root))
        for split in ("train", "val", "test"):
            a = load_split([s for s in getattr(src, split) if "broken" not in s[0]], pre, None)
            b = load_split(getattr(pk, split), pre, str(tmp_path / "cache"))
            assert np.array_equal(a.images, b.images) and a.labels == b.labels, (root, split)
    other = PreprocessConfig(**(pre.to_dict() | {"height": pre.height + 16}))
    with pytest.raises(ValueError, match=f"preprocess.height: packed {pre.height} / now {pre.height + 16}"):
        load_split(packed(str(tmp_path / "raw")).train, other, None)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "raw", cut)
    shard = sorted(cut.glob("train-*.tfrecord"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"{shard.name}: shard is cut off"):
        load_split(packed(str(cut)).train, pre, None)

    metrics = train(make_cfg(["dataset=packed", f"dataset.root={tmp_path / 'packed'}", "debug=fast"]))
    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert run.data.metrics["data_train_images"] == 80 and run.data.metrics["data_test_images"] == 10
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and "preview.png" in {
        a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}

    # readings of packed data go by the names the images were packed under: each packed image
    # is named as its file (3 train shards), and the run's test readings pair with an
    # evaluation of the same model on the folder itself, image for image
    pk = packed(str(tmp_path / "packed"))
    names = packed_names(ref for split in ("train", "val", "test") for ref, _ in getattr(pk, split))
    for split in ("train", "val", "test"):
        refs = [ref for ref, _ in getattr(pk, split)]
        assert [names[r] for r in refs] == [Path(p).name for p, _ in getattr(src, split) if "broken" not in p], split
    on_folder = evaluate(make_cfg([f"checkpoint={tmp_path / 'run'}", "dataset=folder", f"dataset.root={data}",
                                   "dataset.lowercase=true", "latency_images=1"], "evaluate", "eval"))
    paired = compare(metrics["mlflow_run_id"], str(tmp_path / "eval"), tmp_path / "cmp")
    assert paired["matched_by"] == "file name" and paired["images"] == 10 == on_folder["test_images"]
    assert (paired["only_in_a"], paired["only_in_b"], paired["only_a_right"], paired["only_b_right"]) == (0, 0, 0, 0)
    assert paired["a"]["accuracy"] == pytest.approx(metrics["test_accuracy"])

    # evaluated on packed data itself: timed from the file bytes kept in the shards, and the
    # label suspects copied out under their packed names; raw data keeps no file to time or copy
    on_packed = evaluate(make_cfg([f"checkpoint={tmp_path / 'run'}", "latency_images=2", "suspect_confidence=0"],
                                  "evaluate", "eval_packed"))
    assert on_packed["test_images"] == 10 and on_packed["test_latency_ms_p50"] > 0
    copied = sorted(p.name for p in (tmp_path / "eval_packed" / "analysis" / "label_suspects").iterdir())
    assert len(copied) == on_packed["test_label_suspects"] == on_packed["test_failures"] > 0
    assert set(copied) <= {Path(p).name for p, _ in src.test}
    on_raw = evaluate(make_cfg([f"checkpoint={tmp_path / 'run'}", "dataset=packed", f"dataset.root={tmp_path / 'raw'}",
                                "latency_images=2", "suspect_confidence=0"], "evaluate", "eval_raw"))
    assert on_raw["test_images"] == 10 and "test_latency_ms_p50" not in on_raw
    assert on_raw["test_accuracy"] == pytest.approx(on_packed["test_accuracy"])
    assert not list((tmp_path / "eval_raw" / "analysis" / "label_suspects").iterdir())


def test_preview_sheet_shows_augmented_training_images(make_cfg, swust_copy, tmp_path):
    data = tmp_path / "data"
    copy_images(swust_copy, data, 40)
    sheets = {}
    h, w = make_cfg([]).preprocess.height, make_cfg([]).preprocess.width
    for aug in ("none", "heavy"):
        path = tmp_path / f"{aug}.png"
        prepare(make_cfg(["action=preview", "dataset=folder", f"dataset.root={data}", f"augmentation={aug}",
                          "preview.count=8", "preview.columns=4", f"preview.output={path}"], config_name="prepare"))
        sheets[aug] = np.asarray(Image.open(path))
    # 4 x 2 cells of (input width x 2 (at least 160), input height x 2 + 30 for the caption)
    assert sheets["none"].shape == sheets["heavy"].shape == (2 * (2 * h + 30), 4 * max(2 * w, 160), 3)
    assert np.abs(sheets["none"].astype(int) - sheets["heavy"]).mean() > 1.0


def test_clean_removes_only_cache_targets(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    for sub in ("synthetic/abc/train", "arrays", "packed", "mine"):
        (cache / sub).mkdir(parents=True)
        (cache / sub / "f.bin").write_bytes(b"x" * 10)
    user = tmp_path / "userdata"
    user.mkdir()
    (user / "ab12_x.png").write_bytes(b"keep")
    dry = prepare(make_cfg(["action=clean", "clean.dry_run=true"], config_name="prepare"))
    assert len(dry["removed"]) == 3 and (cache / "arrays").is_dir()
    with pytest.raises(ValueError, match="holds"):  # user data inside a cache target: refuse, remove nothing
        prepare(make_cfg(["action=clean", "dataset=folder", f"dataset.root={cache / 'packed' / 'x'}"],
                         config_name="prepare"))
    assert (cache / "packed" / "f.bin").is_file()
    for target in (".", "..", "mine/..", "/tmp", "quarantine"):  # the cache itself, beyond it, or not a plain name
        with pytest.raises(ValueError, match="plain sub-folder name"):
            prepare(make_cfg(["action=clean", f"clean.targets=[{target!r}]"], config_name="prepare"))
    assert (cache / "mine" / "f.bin").is_file() and (cache / "packed" / "f.bin").is_file()
    elsewhere = tmp_path / "elsewhere"  # a cache target that is a link: what it points to is kept
    elsewhere.mkdir()
    (elsewhere / "keep.png").write_bytes(b"keep")
    (cache / "tiles").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="is a link"):
        prepare(make_cfg(["action=clean", "clean.targets=[tiles]"], config_name="prepare"))
    (cache / "tiles").unlink()
    assert (elsewhere / "keep.png").read_bytes() == b"keep"
    done = prepare(make_cfg(["action=clean", "dataset=folder", f"dataset.root={user}"], config_name="prepare"))
    assert sorted(Path(p).name for p in done["removed"]) == ["arrays", "packed", "synthetic"]
    assert sorted(p.name for p in cache.iterdir()) == ["mine"] and (user / "ab12_x.png").read_bytes() == b"keep"


def test_prepare_command_line(tmp_path, swust_copy):
    data = tmp_path / "data"
    copy_images(swust_copy, data, 10)
    (data / "z3r0_empty.png").write_bytes(b"")
    cmd = [sys.executable, "-m", "bearcat.prepare", "dataset=folder", f"dataset.root={data}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    ok = subprocess.run(cmd + ["action=check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "readable         10" in ok.stdout and "z3r0_empty.png: empty image file (0 bytes)" in ok.stdout
    assert (data / "quarantine" / "z3r0_empty.png").is_file()
    bad = subprocess.run(cmd + ["action=frobnicate"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "action=frobnicate: expected one of generate | split" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_check_moves_nothing_for_a_bad_setting_or_report_and_never_replaces(make_cfg, swust_copy, tmp_path):
    data = tmp_path / "data"
    copy_images(swust_copy, data, 6)
    (data / "z3r0_empty.png").write_bytes(b"")
    before = all_files(data)

    def check(*more):
        return prepare(make_cfg(["action=check", "dataset=folder", f"dataset.root={data}", *more],
                                config_name="prepare"))

    # a setting no image can satisfy is a setting error, not six bad images to quarantine
    with pytest.raises(ValueError, match="preprocess.threshold needs preprocess.channels=1"):
        check("preprocess.channels=3", "preprocess.threshold=128")
    assert all_files(data) == before
    # a damaged report stops the check before anything moves
    (data / "quarantine").mkdir()
    (data / "quarantine" / "report.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="report.json: cannot read the quarantine report"):
        check()
    assert all_files(data) == before
    # a name already in quarantine/ is kept; the newcomer gets the next free name
    (data / "quarantine" / "report.json").unlink()
    (data / "quarantine" / "z3r0_empty.png").write_bytes(b"an earlier file")
    report = check()
    assert report["quarantine"][0]["moved_to"] == str(data / "quarantine" / "z3r0_empty.1.png")
    assert (data / "quarantine" / "z3r0_empty.png").read_bytes() == b"an earlier file"
    assert (data / "quarantine" / "z3r0_empty.1.png").read_bytes() == b""
    assert not (data / "z3r0_empty.png").exists() and report["files_before"] == report["files_after"] == 8


@pytest.mark.parametrize("action, setting, message", [
    ("split", "split.move=maybe", "split.move=maybe: true or false"),  # was read as yes: the images were moved
    ("check", "check.quarantine=maybe", "check.quarantine=maybe: true or false"),
    ("check", "check.listed=-5", "check.listed=-5: a whole number, 0 or more"),
    ("check", "workers=-1", "workers=-1: a whole number, 0 or more"),
    ("clean", "clean.dry_run=1", "clean.dry_run=1: true or false"),
    ("pack", "pack.shard_size=0", "pack.shard_size=0: a whole number, 1 or more"),
    ("pack", "pack.encoding=zip", "pack.encoding=zip: expected one of file, raw"),
    ("preview", "preview.count=-1", "preview.count=-1: a whole number, 1 or more"),
    ("preview", "preview.scale=abc", "preview.scale=abc: a whole number, 1 or more"),  # was int()'s traceback
    ("preview", "preview.split=wrong", "preview.split=wrong: choose train, val, test"),  # was getattr's traceback
])
def test_a_bad_action_setting_is_named_and_changes_no_file(make_cfg, swust_copy, tmp_path, action, setting, message):
    data = tmp_path / "data"
    copy_images(swust_copy, data, 6)
    (data / "z3r0_empty.png").write_bytes(b"")  # one for check to quarantine
    before = all_files(data)
    with pytest.raises(ValueError, match=f"^{message}$"):
        prepare(make_cfg([f"action={action}", "dataset=folder", f"dataset.root={data}", setting,
                          f"split.output={tmp_path / 'split'}", f"pack.output={tmp_path / 'packed'}"],
                         config_name="prepare"))
    assert all_files(data) == before and not (tmp_path / "split").exists() and not (tmp_path / "packed").exists()


def test_check_split_folder_finds_leaks_between_splits(make_cfg, swust_copy, tmp_path):
    data = tmp_path / "data"
    train_files = copy_images(swust_copy, data / "train", 8)
    copy_images(swust_copy, data / "val", 2, start=8)
    test_files = copy_images(swust_copy, data / "test", 2, start=10)
    shutil.copy2(train_files[0], data / "test" / train_files[0].name)  # the same captcha in train and test
    (data / "val" / "tr4c_cut.jpg").write_bytes(test_files[0].read_bytes()[:300])
    # images training leaves out: one beside train/, one in a folder inside it
    copy_images(swust_copy, data, 1, start=12)
    copy_images(swust_copy, data / "train" / "more", 1, start=13)
    report = prepare(make_cfg(["action=check", "dataset=folder", f"dataset.root={data}"], config_name="prepare"))
    assert report["splits"] == {"train": 8, "val": 2, "test": 3, "(not read)": 2}
    assert report["not_read"] == {".": 1, "train/more": 1}
    assert ("  not read         2 images in folders training does not read: dataset.root itself 1, train/more/ 1"
            in format_report(report).splitlines())
    assert len(report["duplicates"]["across_splits"]) == 1 and report["duplicates"]["conflicting_labels"] == []
    assert (data / "quarantine" / "val" / "tr4c_cut.jpg").is_file()  # keeps its place in the layout
    assert report["files_before"] == report["files_after"] == 16


def test_generate_draws_the_images_training_draws(make_cfg, tmp_path):
    """action=generate passes every generator key training passes (style with pastels, the
    train-split focus): the same settings give the same files, byte for byte, as the
    training cache."""
    from hydra.utils import instantiate

    opts = ["experiment=pretrain_generated", "dataset.train_size=8", "dataset.val_size=2", "dataset.test_size=2",
            "dataset.style.pale_fraction=0.5", "dataset.train_focus_chars=xyz", "dataset.train_focus_weight=4",
            "dataset.workers=1"]
    gen = tmp_path / "gen"
    prepare(make_cfg(["action=generate", f"generate.output={gen}", *opts], config_name="prepare"))
    splits = instantiate(make_cfg(opts).dataset, cache_dir=str(tmp_path / "cache"), _convert_="all")
    for split in ("train", "val", "test"):
        cached = {Path(p).name: hashlib.md5(Path(p).read_bytes()).hexdigest() for p, _ in getattr(splits, split)}
        drawn = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (gen / split).iterdir()}
        assert drawn == cached and len(drawn) == {"train": 8, "val": 2, "test": 2}[split]
