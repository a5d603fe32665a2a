"""Command-line overrides Hydra accepts but that would do nothing: a misspelt key added
with `+`. A Hydra callback (conf/hydra/default.yaml), kept out of bearcat.checks so that
the modules every worker process imports do not import Hydra."""
from __future__ import annotations

import difflib

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def misspelt_additions(cfg: DictConfig, overrides: list[str], groups=()) -> list[str]:
    """What is wrong with each `+key=value` override (not `++`) that adds a key spelt almost
    like one beside it (`+trainer.max_minute=1` next to trainer.max_minutes). Hydra's own
    error for a misspelt key suggests the `+`, and then adds a key that nothing reads: the run
    would go on without the setting meant. `groups` (config group names: `+experiment=x`
    chooses a preset) are left alone. `cfg` may or may not hold the added key already."""
    problems = []
    for override in overrides:
        if not override.startswith("+") or override.startswith("++") or "=" not in override:
            continue
        key = override[1:].split("=", 1)[0]
        if key in groups or key.startswith("hydra."):
            continue
        parts, node = key.split("."), cfg
        for depth, part in enumerate(parts):
            if not isinstance(node, DictConfig):
                break
            present = part in node
            # a part already there is only judged if this override added it: the leaf, or a
            # new parent holding nothing but the path's next part
            added = not present or depth == len(parts) - 1 or (
                isinstance(node[part], DictConfig) and list(node[part].keys()) == [parts[depth + 1]])
            if added:
                near = difflib.get_close_matches(part, [k for k in node.keys() if k != part], n=1, cutoff=0.8)
                if near:
                    meant = ".".join([*parts[:depth], near[0], *parts[depth + 1:]])
                    value = override.split("=", 1)[1]
                    problems.append(f"{override} adds a new key {'.'.join(parts[:depth + 1])} beside the "
                                    f"existing {'.'.join([*parts[:depth], near[0]])}, and nothing reads a new "
                                    f"key: write {meant}={value}, or ++{key}={value} to add it anyway")
                    break
            if not present:
                break
            node = node[part]
    return problems


class AddedKeysCallback(Callback):
    """Stops a command (or a whole sweep, before its first job) whose `+` overrides add a
    misspelt key (`misspelt_additions`); hydra.callbacks.added_keys in conf/hydra/default.yaml."""

    def _check(self, config: DictConfig) -> None:
        hydra = config.hydra
        problems = misspelt_additions(config, list(hydra.overrides.task), set(hydra.runtime.choices.keys()))
        if problems:  # SystemExit: Hydra turns a callback's exceptions into mere warnings
            raise SystemExit("; ".join(problems))

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)
