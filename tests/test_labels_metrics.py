import pytest

from bearcat.data.labels import Vocabulary, label_from_name
from bearcat.metrics import edit_ops, text_metrics


@pytest.mark.parametrize("name,label", [
    ("a3Kx_5f2b9c.png", "a3Kx"), ("AB12.png", "AB12"), ("x_y_z.jpg", "x"), ("_nolabel.png", ""),
    ("验证码_1.png", "验证码"), ("dir/ABC_1.PNG", "ABC"),
])
def test_label_from_name(name, label):
    assert label_from_name(name) == label


def test_lowercase_and_vocabulary_round_trip(tmp_path):
    assert label_from_name("AbC_1.png", lowercase=True) == "abc"
    vocab = Vocabulary.from_labels(["ba", "验c"])
    assert vocab.chars == sorted("abc验") and vocab.num_classes == 5
    assert vocab.decode(vocab.encode("验ab")) == "验ab"
    assert 0 not in vocab.encode("abc")  # 0 is reserved for the blank
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").chars == vocab.chars
    with pytest.raises(ValueError, match="'z'"):
        vocab.encode("az")


def test_a_decomposed_charset_matches_labels_read_from_names(tmp_path):
    from bearcat.data.sources import folder

    decomposed = "e\u0301"  # e + combining acute: the NFC label read from a file name is the one character é
    (tmp_path / "\u00e9e_1.png").write_bytes(b"")  # file contents do not matter to the source
    split = folder(str(tmp_path), charset=decomposed + "e", val_ratio=0.0, test_ratio=0.0)
    assert [label for _, label in split.train] == ["\u00e9e"] and split.skipped == {}
    assert Vocabulary.from_labels([], charset=decomposed + "e").encode("\u00e9e") == [1, 2]


def test_edit_ops_and_metrics():
    assert edit_ops("ABCD", "ABCD") == (4, 0, 0, 0)
    assert edit_ops("ABCD", "ABXD") == (3, 1, 0, 0)
    assert edit_ops("ABCD", "ABD") == (3, 0, 1, 0)
    assert edit_ops("ABC", "ABCC") == (3, 0, 0, 1)
    m = text_metrics(["ABCD", "XY"], ["ABCD", "XZ"])
    assert m["accuracy"] == 0.5
    assert m["char_accuracy"] == pytest.approx(5 / 6)
    assert m["cer"] == pytest.approx(1 / 6)
    assert text_metrics(["AB"], [""])["cer"] == 1.0


def test_accuracy_gets_the_95_percent_wilson_interval_of_its_test_size():
    """The textbook values (5 of 10: 0.2366-0.7634; none of 10: up to 0.2775), one that does
    not leave [0, 1] at 10 of 10, and one that narrows as the test set grows; score() gives a
    run's test_accuracy_ci_low / _high from the readings."""
    from bearcat.experiment import score
    from bearcat.metrics import wilson_interval
    from bearcat.modes import build_mode

    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(386, 400) == pytest.approx((0.9421, 0.9790), abs=1e-4)  # few labels' 0.965: not 0.98
    assert wilson_interval(1917, 2000) == pytest.approx((0.9488, 0.9664), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing measured: anything
    mode = build_mode("ctc", Vocabulary.from_labels([], charset="AB"), 2)
    truths = ["AB", "BA", "AA", "BB"]
    results = [{"result": r, "confidence": 1.0} for r in ("AB", "BA", "AA", "AB")]
    metrics = score(mode, truths, results)
    assert metrics["accuracy"] == 0.75
    assert (metrics["accuracy_ci_low"], metrics["accuracy_ci_high"]) == wilson_interval(3, 4)
    assert metrics["accuracy_ci_low"] < 0.75 < metrics["accuracy_ci_high"]


def test_batched_test_time_leaves_out_the_first_call_of_each_shape(monkeypatch):
    """test_ms_per_image: a model that is slow on the first call of each batch shape (as Keras
    is, building its graph) is timed on its steady calls only; every image is still read."""
    import numpy as np

    import bearcat.experiment as experiment
    from bearcat.modes import build_mode

    clock = [0.0]
    monkeypatch.setattr(experiment.time, "perf_counter", lambda: clock[0])
    seen = set()

    class FirstCallSlow:
        calls = 0

        def predict_on_batch(self, x):
            if x.shape[0] not in seen:  # a new shape costs 1000 s on the fake clock
                seen.add(x.shape[0])
                clock[0] += 1000.0
            clock[0] += 0.001 * len(x)  # then 1 ms per image
            FirstCallSlow.calls += 1
            return np.full((len(x), 8, 4), 0.25, np.float32)

    mode = build_mode("ctc", Vocabulary("ABC"), 2)
    results, ms = experiment.predict(FirstCallSlow(), mode, np.zeros((10, 4, 4, 1), np.uint8), batch_size=4)
    assert len(results) == 10 and seen == {4, 2}
    assert ms == pytest.approx(1.0)  # 10 images at 1 ms, no graph building
    assert FirstCallSlow.calls == 2 + 3  # one warm-up per shape, then the three batches


def test_paired_comparison_statistics_by_hand():
    """McNemar's exact p: a fair coin splits 6 disagreements 6-0 with chance 2/64, 9-1 with
    2 * 11/1024; even splits and none at all say nothing (1). b - a on 2,000 images where b alone
    reads 23 and a alone 9: +0.007, and Agresti and Min's interval worked out by hand
    (9.5 and 23.5 of 2,002: 0.006993 ± 1.96 * sqrt(33 - 14^2 / 2002) / 2002)."""
    import math

    from bearcat.metrics import mcnemar_p, paired_difference

    assert mcnemar_p(0, 6) == 2 / 64 and mcnemar_p(6, 0) == 2 / 64
    assert mcnemar_p(1, 9) == 2 * 11 / 1024
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0 and mcnemar_p(0, 1) == 1.0
    difference, low, high = paired_difference(9, 23, 2000)
    half = 1.959964 * math.sqrt(33 - 14 ** 2 / 2002) / 2002
    assert difference == pytest.approx(0.007)
    assert (low, high) == pytest.approx((14 / 2002 - half, 14 / 2002 + half))
    assert low > 0  # b is ahead beyond chance: McNemar agrees
    assert mcnemar_p(9, 23) < 0.05
    _, low, high = paired_difference(0, 0, 100)  # never disagreeing: a narrow interval around 0, not none
    assert low < 0 < high and high < 0.02


def test_a_folder_of_misnamed_files_names_ten_and_counts_all(tmp_path, caplog):
    """25 files without a label and 12 outside the charset: each reason names its first 10
    files, says once that the rest are only counted, and the source counts every one."""
    from bearcat.data.sources import NAMED_SKIPS, folder

    for i in range(25):
        (tmp_path / f"_{i:02d}.png").write_bytes(b"")
    for i in range(12):
        (tmp_path / f"z{i:02d}_x.png").write_bytes(b"")
    (tmp_path / "ab_1.png").write_bytes(b"")
    with caplog.at_level("WARNING", logger="bearcat.data.sources"):
        split = folder(str(tmp_path), charset="ab0123456789", val_ratio=0.0, test_ratio=0.0)
    assert split.train == [(str(tmp_path / "ab_1.png"), "ab")]
    assert split.skipped == {"no label in file name": 25, "characters outside charset": 12}
    said = [r.getMessage() for r in caplog.records]
    assert [m.split(":")[0] for m in said if "file name holds no label" in m] == [
        str(tmp_path / f"_{i:02d}.png") for i in range(NAMED_SKIPS)]
    assert len([m for m in said if "has characters outside dataset.charset" in m]) == NAMED_SKIPS
    assert [m for m in said if m.startswith("more files skipped")] == [
        "more files skipped (no label in file name): counted, not named here",
        "more files skipped (characters outside charset): counted, not named here"]


def test_images_in_folders_a_folder_dataset_does_not_read_are_counted_and_named(tmp_path, caplog):
    """Flat, split into train/ val/ test/, and one folder per class: images anywhere else under
    dataset.root (quarantine/ aside) are left out with a warning and a skipped count, not silently."""
    from bearcat.data.sources import folder

    def files(root, names):
        for name in names:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(name.encode())  # only listed (and hashed), not decoded
        return str(root)

    flat = files(tmp_path / "flat", ["ab_1.png", "cd_2.jpg", "sub/ef_3.png", "sub/deeper/gh_4.GIF", "sub/notes.txt",
                                     "quarantine/ij_5.png"])
    split = tmp_path / "split"
    files(split, ["train/ab_1.png", "train/cd_2.png", "val/ef_3.png", "test/gh_4.png", "ij_5.png", "train/x/kl_6.png"])
    classes = files(tmp_path / "classes", ["cat/1.png", "dog/2.png", "cat/old/3.png"])
    for root, kwargs, read, skipped, said in [
        (flat, {}, 2, 2, "sub/ 1, sub/deeper/ 1 (a folder dataset reads images directly in it)"),
        (str(split), {}, 4, 2, "dataset.root itself 1, train/x/ 1 (a folder dataset reads images in train/ val/ test/)"),
        (classes, {"class_folders": True}, 2, 1, "cat/old/ 1 (a folder dataset reads one folder per class, directly in it)"),
    ]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="bearcat.data.sources"):
            got = folder(root, val_ratio=0.0, test_ratio=0.0, **kwargs)
        assert len(set(got.train + got.val + got.test)) == read
        assert got.skipped == {"in a folder not read": skipped}
        assert caplog.messages[-1] == (f"dataset.root={root}: {skipped} images are in folders it does not read, "
                                       f"left out: {said}")
    assert folder(str(split / "train"), val_ratio=0.0, test_ratio=0.0).skipped == {"in a folder not read": 1}
    inside = folder(str(split / "train"), val_ratio=0.0, test_ratio=0.0, extra_train=[str(split / "train" / "x")])
    assert inside.skipped == {} and len(inside.train) == 3  # an extra_train folder inside dataset.root is read
    assert inside.train[-1] == (str(split / "train" / "x" / "kl_6.png"), "kl")
    (split / "train" / "x" / "kl_6.png").unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="bearcat.data.sources"):
        assert folder(str(split / "train"), val_ratio=0.0, test_ratio=0.0).skipped == {}
    assert not [m for m in caplog.messages if "does not read" in m]


def test_unreadable_images_are_named_ten_and_counted_all(tmp_path, caplog):
    """12 files that are not images among 2 that are: decoding names the first 10, says once
    that the rest are only counted, and keeps every error (the run's skipped count)."""
    from PIL import Image

    from bearcat.data.pipeline import load_split
    from bearcat.data.preprocess import PreprocessConfig
    from bearcat.data.sources import NAMED_SKIPS

    samples = []
    for i in range(12):
        (tmp_path / f"ab{i:02d}_x.png").write_text("not an image")
        samples.append((str(tmp_path / f"ab{i:02d}_x.png"), "ab"))
    for i in range(2):
        Image.new("L", (40, 20), 255).save(tmp_path / f"ba_{i}.png")
        samples.append((str(tmp_path / f"ba_{i}.png"), "ba"))
    with caplog.at_level("WARNING", logger="bearcat.data.pipeline"):
        loaded = load_split(samples, PreprocessConfig(height=16, width=32), None, workers=1)
    assert loaded.images.shape == (2, 16, 32, 1) and loaded.labels == ["ba", "ba"] and len(loaded.errors) == 12
    said = [r.getMessage() for r in caplog.records]
    named = [m for m in said if m.startswith("skipped unreadable image:")]
    assert len(named) == NAMED_SKIPS and all(f"ab{i:02d}_x.png" in m for i, m in enumerate(named))
    assert said[-1] == "more files skipped (unreadable image): counted, not named here"
    assert len(said) == NAMED_SKIPS + 1
