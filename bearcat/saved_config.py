"""An earlier run's config.yaml (read by `resume=`, evaluation and export), with the names
today's settings have: a setting renamed since is read under its new name, so the old name
is never read anywhere else (and Bearcat's hints can say that nothing reads it)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

# settings renamed, per dataset source (its _target_): {old name: new name}
RENAMED = {
    # 2026-12-07: named as dataset=folder names them
    "bearcat.data.voc.voc": {"val_fraction": "val_ratio", "test_fraction": "test_ratio", "seed": "split_seed"},
}


def load_saved_config(path: str | Path) -> DictConfig:
    """The config saved at `path`, its renamed settings under their new names."""
    cfg = OmegaConf.load(path)
    dataset = cfg.get("dataset")
    if isinstance(dataset, DictConfig):
        for old, new in RENAMED.get(dataset.get("_target_"), {}).items():
            if old in dataset and new not in dataset:
                with open_dict(dataset):
                    dataset[new] = dataset.pop(old)
    return cfg
