"""Bearcat from Python (a notebook, a script): the config a command composes, ready for the
function the command runs.

    from bearcat.api import config
    from bearcat.train import train

    metrics = train(config("train", ["debug=fast", "mode=ordinary"]))

`python -m bearcat.<command>` runs inside a Hydra app, which gives each run its folder
(`paths.output_dir: ${hydra:runtime.output_dir}`); composed outside one, that value cannot be
read ("HydraConfig was not set"). `config` gives it the folder the command would have used.
"""
from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from bearcat.overrides import compose_config, misspelt_additions, required_unset


def config(command: str, overrides=()) -> DictConfig:
    """conf/<command>.yaml with `overrides` (command-line syntax: "trainer.epochs=2",
    "dataset=folder"), as `python -m bearcat.<command>` composes it, for the function of
    bearcat.<command> (train, evaluate, export, predict, soup, ...). A run folder, where the
    command has one, is made as the command's would be: outputs/runs/<time> under the current
    folder, unless `paths.output_dir=` is among the overrides. The command line's checks
    come first: a misspelt key added with `+`, a required value left unset (ValueError)."""
    from bearcat import CONFIG_DIR

    cfg = compose_config(command, overrides, hydra=True)
    hydra = cfg.hydra
    problems = (misspelt_additions(cfg, list(hydra.overrides.task), set(hydra.runtime.choices.keys()))
                + required_unset(cfg, CONFIG_DIR))
    if problems:
        raise ValueError("; ".join(problems))
    if command == "train" and cfg.get("resume"):  # as the command refuses them: trainer.epochs=5 went unread
        from bearcat.train import check_resume_overrides

        check_resume_overrides(cfg, list(hydra.overrides.task))
    run_dir = os.path.abspath(str(cfg.hydra.run.dir))  # outputs/runs/${now:...}, resolved now
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
        if "paths" in cfg and OmegaConf.is_interpolation(cfg.paths, "output_dir"):
            cfg.paths.output_dir = run_dir  # what ${hydra:runtime.output_dir} reads in a command
    return cfg
