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
