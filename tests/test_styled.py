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
