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
