"""Styled generated captchas (dataset.style) and the experiment=pretrain_generated preset."""
import hashlib
from pathlib import Path

import pytest
from hydra.utils import instantiate
from PIL import Image

SMALL = ["experiment=pretrain_generated", "dataset.train_size=12", "dataset.val_size=4", "dataset.test_size=4",
         "dataset.workers=1"]


def digest(paths):
    return [hashlib.md5(Path(p).read_bytes()).hexdigest() for p in paths]


def test_pretrain_preset_draws_varied_case_insensitive_captchas(make_cfg, tmp_path):
    cfg = make_cfg(SMALL)
    assert cfg.dataset.style.char_colors and cfg.dataset.lowercase and cfg.run_name == "pretrain_generated"
    splits = instantiate(cfg.dataset, cache_dir=str(tmp_path / "a"), _convert_="all")
    assert splits.charset == "0123456789abcdefghijklmnopqrstuvwxyz"
    names = [Path(p).name.split("_")[0] for p, _ in splits.train]
    assert any(n != n.lower() for n in names) and any(n != n.upper() for n in names)  # both cases drawn
    assert all(label == label.lower() and 3 <= len(label) <= 6 for _, label in splits.train)
    for path, _ in splits.train:
        assert Image.open(path).size == (100, 35)
    again = instantiate(cfg.dataset, cache_dir=str(tmp_path / "b"), _convert_="all")  # same seed: same images
    assert digest(p for p, _ in again.train) == digest(p for p, _ in splits.train)
    plain = instantiate(make_cfg([*SMALL, "dataset.style=null"]).dataset, cache_dir=str(tmp_path / "a"),
                        _convert_="all")
    assert Path(plain.train[0][0]).parent != Path(splits.train[0][0]).parent  # style is part of the cache key


def test_style_and_font_errors_name_the_key(tmp_path):
    from bearcat.data.sources import synthetic_settings

    with pytest.raises(ValueError, match="dataset.style: unknown keys"):
        synthetic_settings("ab", 1, 2, 60, 30, 0, style={"rotaton": 5})
    with pytest.raises(FileNotFoundError, match="dataset.fonts: no .ttf"):
        synthetic_settings("ab", 1, 2, 60, 30, 0, fonts=[str(tmp_path)])
    folder = synthetic_settings("ab", 1, 2, 60, 30, 0, fonts=["/usr/share/fonts/truetype/dejavu"])
    assert len(folder["fonts"]) > 3 and all(f.endswith((".ttf", ".otf", ".ttc")) for f in folder["fonts"])


def test_train_focus_chars_skew_the_train_split_only(make_cfg, tmp_path):
    """dataset.train_focus_chars draws those characters train_focus_weight times as often in
    the training labels; val and test stay the plain task, image for image."""
    from bearcat.data.sources import synthetic_settings

    small = ["dataset.charset=AB12", "dataset.train_size=300", "dataset.val_size=40", "dataset.test_size=40",
             "dataset.workers=1", "dataset.image_width=60", "dataset.image_height=30"]
    plain = instantiate(make_cfg([*small, "dataset.train_focus_chars=null"]).dataset, cache_dir=str(tmp_path),
                        _convert_="all")
    focused = instantiate(make_cfg([*small, "dataset.train_focus_chars=AZ", "dataset.train_focus_weight=10"]).dataset,
                          cache_dir=str(tmp_path), _convert_="all")

    def share_of_a(samples):
        text = "".join(label for _, label in samples)
        return text.count("A") / len(text)

    assert share_of_a(plain.train) < 0.35 and share_of_a(focused.train) > 0.6  # 10 / 13 expected
    for split in ("val", "test"):
        assert [Path(p).name for p, _ in getattr(focused, split)] == [Path(p).name for p, _ in getattr(plain, split)]
        assert digest(p for p, _ in getattr(focused, split)) == digest(p for p, _ in getattr(plain, split))
    assert Path(focused.train[0][0]).parent != Path(plain.train[0][0]).parent  # the focus is part of the cache key
    # Z is not in the charset: left out, so a charset override keeps the default focus valid
    assert synthetic_settings("AB12", 1, 2, 60, 30, 0, train_focus_chars="AZ", train_focus_weight=10)[
        "train_char_weights"] == {"A": 10.0}
    # the default focus (O and 0) on a charset without them changes nothing, not even the cache key
    assert synthetic_settings("AB12", 1, 2, 60, 30, 0, train_focus_chars="O0", train_focus_weight=3) == \
        synthetic_settings("AB12", 1, 2, 60, 30, 0)
    with pytest.raises(ValueError, match=r"dataset.train_focus_weight=0: must be > 0"):
        synthetic_settings("AB12", 1, 2, 60, 30, 0, train_focus_chars="A", train_focus_weight=0)


def test_pale_fraction_draws_glyphs_close_to_white(make_cfg, tmp_path):
    """dataset.style.pale_fraction=1 draws every glyph (and the arc in its colour) as a pastel:
    no pixel darker than 40% of black mixed into white; without pastels the preset's colours are darker."""
    import numpy as np

    quiet = [*SMALL, "dataset.style.noise_lines=0", "dataset.style.noise_dots=0"]  # the dark strokes and dots

    def darkest(overrides, cache):
        splits = instantiate(make_cfg([*quiet, *overrides]).dataset, cache_dir=str(tmp_path / cache), _convert_="all")
        return [int(np.asarray(Image.open(p).convert("L")).min()) for p, _ in splits.train]

    pale = darkest(["dataset.style.pale_fraction=1.0"], "pale")
    plain = darkest(["dataset.style.pale_fraction=0"], "plain")
    assert min(pale) >= 150, pale  # 255 - 0.4 * 255 = 153 at the darkest pastel
    assert sum(d < 150 for d in plain) >= len(plain) // 2, plain
    from bearcat.data.sources import synthetic_settings

    with pytest.raises(ValueError, match=r"dataset.style.pale_fraction=1.5"):
        synthetic_settings("ab", 1, 2, 60, 30, 0, style={"pale_fraction": 1.5})
    with pytest.raises(ValueError, match=r"dataset.style.pale_mix"):
        synthetic_settings("ab", 1, 2, 60, 30, 0, style={"pale_mix": [0.5, 0.2]})
