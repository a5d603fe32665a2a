"""Data tools: `python -m bearcat.prepare action=generate|split|check|pack|preview|clean`.

Same config tree as training (conf/prepare.yaml composes conf/train.yaml), so the
`dataset`, `preprocess`, `augmentation` and `paths` settings mean the same thing. Each
action prints a summary and writes it as JSON into the run folder.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from bearcat import CONFIG_DIR, overrides

log = logging.getLogger("bearcat.prepare")


def _root(cfg: DictConfig) -> str:
    root = cfg.dataset.get("root")
    if root in (None, "", "???"):
        raise ValueError(f"action={cfg.action} works on a folder: pass dataset=folder dataset.root=PATH")
    from bearcat.data.pack import MANIFEST

    if (Path(root) / MANIFEST).is_file():  # else it reports "0 images" and looks like an empty folder
        raise ValueError(f"action={cfg.action}: dataset.root={root} holds packed data ({MANIFEST}); run it on "
                         "the folder of images the data was packed from (pack leaves out unreadable images)")
    return root


GENERATED = ("synthetic", "click", "tiles")  # the dataset= choices action=generate draws


def do_generate(cfg: DictConfig) -> dict:
    import inspect

    from bearcat.data.sources import split_sizes
    from bearcat.data.tools import generate, generator_settings

    d = cfg.dataset
    kind = str(d.get("_target_", "")).rsplit(".", 1)[-1]
    if kind not in GENERATED:
        raise ValueError(f"action=generate draws dataset={' | '.join(GENERATED)}; this config has "
                         f"dataset._target_={d.get('_target_')}")
    # Every dataset key the generator takes, as training passes them: the same settings draw
    # the same images here and in training's cache (tested), whatever keys are added later.
    values = OmegaConf.to_container(d, resolve=True)
    settings = {k: values[k] for k in inspect.signature(generator_settings(kind)).parameters if k in values}
    sizes = split_sizes(d.train_size, d.val_size, d.test_size)
    return generate(cfg.generate.output, sizes, settings, cfg.workers, kind)


def _labels_list(cfg: DictConfig):
    """dataset.labels_file as training reads it (None: labels from the file names)."""
    from pathlib import Path

    from bearcat.data.sources import labels_list

    d = cfg.dataset
    return labels_list(d.get("labels_file"), d.get("label_column", "label"), Path(_root(cfg)),
                       d.get("class_folders", False))


def do_split(cfg: DictConfig) -> dict:
    from bearcat.data.tools import split_folder

    d = cfg.dataset
    return split_folder(_root(cfg), cfg.split.output, d.get("val_ratio", 0.1), d.get("test_ratio", 0.1),
                        d.get("split_seed", 0), move=cfg.split.move, listed=_labels_list(cfg))


def do_check(cfg: DictConfig) -> dict:
    from bearcat.data.check import check_folder, format_report
    from bearcat.experiment import preprocess_config

    d = cfg.dataset
    report = check_folder(_root(cfg), preprocess_config(cfg), charset=d.get("charset"),
                          lowercase=d.get("lowercase", False), class_folders=d.get("class_folders", False),
                          move_bad=cfg.check.quarantine, workers=cfg.workers, listed=_labels_list(cfg))
    print(format_report(report, cfg.check.listed))
    return report


def do_pack(cfg: DictConfig) -> dict:
    from bearcat.data.pack import pack
    from bearcat.experiment import load_sources, preprocess_config

    return pack(load_sources(cfg), cfg.pack.output, preprocess_config(cfg), cfg.pack.encoding,
                int(cfg.pack.shard_size), cfg.workers)


def do_preview(cfg: DictConfig) -> dict:
    import random

    from bearcat.data.augment import build_augment
    from bearcat.data.pipeline import load_split
    from bearcat.experiment import load_sources, preprocess_config
    from bearcat.gallery import training_preview

    split = cfg.preview.split
    samples = getattr(load_sources(cfg), split)
    if not samples:
        raise ValueError(f"preview.split={split}: that split has no images")
    samples = random.Random(cfg.trainer.seed).sample(samples, min(len(samples), 4 * int(cfg.preview.count)))
    loaded = load_split(samples, preprocess_config(cfg), None, workers=cfg.workers)
    path = Path(cfg.preview.output or Path(cfg.paths.output_dir) / "preview.png")
    augment = build_augment(cfg.augmentation, cfg.trainer.seed) if split == "train" else None  # as in training
    training_preview(loaded.images, loaded.labels, path, augment,
                     count=cfg.preview.count, columns=cfg.preview.columns, scale=cfg.preview.scale,
                     seed=cfg.trainer.seed)
    log.info("preview of %s (augmentation=%s) written to %s", split, cfg.augmentation.name, path)
    return {"output": str(path), "split": split, "augmentation": cfg.augmentation.name}


def do_clean(cfg: DictConfig) -> dict:
    from bearcat.data.tools import clean

    return clean(cfg.paths.cache_dir, list(cfg.clean.targets), protect=[cfg.dataset.get("root")],
                 dry_run=cfg.clean.dry_run)


def check_settings(cfg: DictConfig) -> None:
    """The action's own settings, before any file is read or written. A yes/no must be true or
    false: `split.move=maybe` was read as yes and moved the user's images."""
    from bearcat.checks import flag_setting, whole_setting
    from bearcat.data.pack import ENCODINGS
    from bearcat.data.sources import SPLITS

    if cfg.get("workers") is not None:
        whole_setting("workers", cfg.workers, 0)
    flags = {"split": ["move"], "check": ["quarantine"], "clean": ["dry_run"]}.get(cfg.action, [])
    for key in flags:
        flag_setting(f"{cfg.action}.{key}", cfg[cfg.action][key])
    wholes = {"check": {"listed": 0}, "pack": {"shard_size": 1},
              "preview": {"count": 1, "columns": 1, "scale": 1}}.get(cfg.action, {})
    for key, least in wholes.items():
        whole_setting(f"{cfg.action}.{key}", cfg[cfg.action][key], least)
    if cfg.action == "pack" and cfg.pack.encoding not in ENCODINGS:
        raise ValueError(f"pack.encoding={cfg.pack.encoding}: expected one of {', '.join(ENCODINGS)}")
    if cfg.action == "preview" and cfg.preview.split not in SPLITS:
        raise ValueError(f"preview.split={cfg.preview.split}: choose {', '.join(SPLITS)}")


ACTIONS = {"generate": do_generate, "split": do_split, "check": do_check, "pack": do_pack,
           "preview": do_preview, "clean": do_clean}


def prepare(cfg: DictConfig) -> dict:
    """Run `cfg.action`; its summary is returned and saved as <run folder>/<action>.json."""
    if OmegaConf.is_missing(cfg, "action") or cfg.action not in ACTIONS:
        given = "???" if OmegaConf.is_missing(cfg, "action") else cfg.action
        raise ValueError(f"action={given}: expected one of {' | '.join(ACTIONS)}")
    check_settings(cfg)
    result = ACTIONS[cfg.action](cfg)
    out = Path(cfg.check.report) if cfg.action == "check" and cfg.check.report else \
        Path(cfg.paths.output_dir) / f"{cfg.action}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    if cfg.action != "check":
        summary = {k: (f"{len(v)} items (see the JSON)" if isinstance(v, list) and len(v) > 10 else v)
                   for k, v in result.items()}
        print(json.dumps(summary, ensure_ascii=False, indent=1))
    log.info("%s report: %s", cfg.action, out)
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prepare")
@overrides.plain_errors
def main(cfg: DictConfig) -> None:
    try:
        prepare(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # the user's input: say it, no traceback
        log.error("%s", err)
        sys.exit(2)


cli = overrides.command(main, "prepare")  # `--help`, the key meant for a misspelt key, a line for Ctrl-C


if __name__ == "__main__":
    cli()
