"""The README's commands keep working as the configs and scripts change: every
`python -m bearcat.X` (or `bearcat-X`) line it shows composes with the current configs (no
unknown key, no missing group option), and every flag of a `python scripts/NAME.py` line
it shows is one that script accepts. Placeholders (`<run id>`, `M`, `...`) stand for any
value; a group set to one is left out."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bearcat import CONFIG_DIR
from bearcat.click import CLI_KEYS, CLI_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("train", "evaluate", "export", "predict", "serve", "label", "prepare", "soup", "curve", "compare")
GROUPS = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}


def code_lines(markdown: str) -> list[str]:
    """Each line of the fenced blocks (a trailing backslash joins the next) and each inline
    code span of the prose, its white space made single (spans wrap across lines)."""
    lines, prose, block, inside = [], [], [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            if inside:
                lines += "\n".join(block).replace("\\\n", " ").splitlines()
                block = []
            inside = not inside
        else:
            (block if inside else prose).append(line)
    return lines + [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", "\n".join(prose))]


def bearcat_commands(lines: list[str]) -> list[tuple[str, str]]:
    """(entry point, its arguments) of every Bearcat command in these lines."""
    found = []
    for line in lines:
        line = re.split(r"\s#(?:\s|$)", line)[0]  # a shell comment
        for part in re.split(r"&&|\||;", line):
            m = re.search(r"(?:python -m bearcat\.([a-z_]+)|\bbearcat-([a-z]+))\b(.*)", part)
            if m:
                found.append((m.group(1) or m.group(2), m.group(3).strip()))
    return found


def _placeholder(value: str) -> bool:
    return value in ("X", "...") or re.fullmatch(r"[A-Z][A-Z_]*", value) is not None


def override_sets(args: str) -> list[list[str]]:
    """The Hydra overrides of a command line; one set per value of a multirun sweep (each
    swept value with the others at their first), the line itself otherwise."""
    tokens = shlex.split(re.sub(r"<[^>]*>", "X", args))
    multirun = "-m" in tokens or "--multirun" in tokens
    overrides, sweeps = [], {}
    for token in tokens:
        if token.startswith("-") or "=" not in token:
            continue
        key, value = token.split("=", 1)
        swept = multirun
        if key.startswith("hydra.sweeper.params."):  # an Optuna search space: its choices
            key = key[len("hydra.sweeper.params."):]
            choice = re.fullmatch(r"choice\((.*)\)", value)
            if not choice:
                continue  # range() / interval(): numbers, nothing to look up
            value, swept = choice.group(1), True
        if key.lstrip("+~") in GROUPS and _placeholder(value):
            continue
        if swept and "," in value and not value.startswith("["):
            sweeps[len(overrides)] = value.split(",")
            value = sweeps[len(overrides)][0]
        overrides.append(f"{key}={value}")
    sets = [overrides]
    for i, values in sweeps.items():
        key = overrides[i].split("=", 1)[0]
        sets += [overrides[:i] + [f"{key}={v}"] + overrides[i + 1:] for v in values[1:]]
    return sets


def _is_group(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key in GROUPS or "/" in key  # mode=ctc, hydra/launcher=parallel


def refused(commands: list[tuple[str, str]]) -> list[str]:
    """Each command line whose overrides do not compose, with Hydra's reason. Lines with the
    same group choices are composed together first (a compose takes about 0.3 s here, and
    the README has over a hundred lines); only a set that fails is composed line by line."""
    from hydra import compose, initialize_config_dir

    plan: dict[tuple, list[list[str]]] = {}
    for name, args in dict.fromkeys(commands):
        if name in CONFIGS:
            for overrides in override_sets(args):
                groups = tuple(o for o in overrides if _is_group(o))
                plan.setdefault((name, groups), []).append([o for o in overrides if not _is_group(o)])

    def error(name: str, overrides: list[str]) -> str | None:
        try:
            compose(config_name=name, overrides=overrides, return_hydra_config=True)
        except Exception as err:  # Hydra's parse, composition and missing-config errors
            return str(err).splitlines()[0]
        return None

    failures = []
    click_keys = (*CLI_KEYS, *CLI_OPTIONS)
    for args in dict.fromkeys(args for name, args in commands if name == "click"):  # four keys, no Hydra
        extra = [t for t in shlex.split(re.sub(r"<[^>]*>", "X", args))
                 if t.split("=", 1)[0] not in click_keys and t not in ("--help", "-h")]
        if extra:
            failures.append(f"bearcat.click {args}: not one of {', '.join(click_keys)}: {' '.join(extra)}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for (name, groups), lines in plan.items():
            merged: dict[str, str] = {}
            for override in sum(lines, []):
                merged.setdefault(override.split("=", 1)[0], override)  # one value per key
            if error(name, [*groups, *merged.values()]) is None:
                continue
            for others in lines:
                reason = error(name, [*groups, *others])
                if reason:
                    failures.append(f"bearcat.{name} {' '.join([*groups, *others])}: {reason}")
    return failures


def test_every_command_in_the_readme_composes():
    commands = bearcat_commands(code_lines((ROOT / "README.md").read_text(encoding="utf-8")))
    # the reader finds the README's commands at all: every entry point, and scores of trainings
    assert {name for name, _ in commands} >= {*CONFIGS, "click"}
    assert sum(name == "train" for name, _ in commands) >= 40
    assert refused(commands) == []


def test_the_readme_check_catches_a_stale_command():
    """The check itself: a renamed key, a removed option, a bad sweep value and an Optuna
    choice of a missing backbone are each refused; placeholders are not."""
    page = """
```bash
python -m bearcat.train trainer.epochz=3          # a key that does not exist
python -m bearcat.train -m backbone=cnn_small,densenet999 \\
    optimizer=adam
```
Then `python -m bearcat.evaluate run_id=<id>
gradcam_lyer=x` and `bearcat-train hparams_search=optuna
hydra.sweeper.params.backbone=choice(cnn_small,nonet)`, or `python -m bearcat.train mode=M
dataset=folder dataset.root=<your folder>`; `python -m bearcat.click model=<bundle> image=a.png
promt=ab`.
"""
    commands = bearcat_commands(code_lines(page))
    assert [name for name, _ in commands] == ["train", "train", "evaluate", "train", "train", "click"]
    failures = refused(commands)
    assert len(failures) == 5, failures
    assert all(word in " ".join(failures) for word in ("epochz", "densenet999", "gradcam_lyer", "nonet", "promt"))


def test_every_script_flag_in_the_readme_exists():
    lines = code_lines((ROOT / "README.md").read_text(encoding="utf-8"))
    flags: dict[str, set[str]] = {}
    for line in lines:
        for m in re.finditer(r"python scripts/([a-z_]+)\.py((?:\s+[^|;&#`]*)?)", line):
            flags.setdefault(m.group(1), set()).update(re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", m.group(2)))
    assert len(flags) >= 10 and sum(map(len, flags.values())) >= 20  # the reader finds them
    unknown = {}
    for name, used in sorted(flags.items()):
        script = ROOT / "scripts" / f"{name}.py"
        assert script.is_file(), f"README runs scripts/{name}.py, which does not exist"
        shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                               cwd=ROOT, timeout=120)
        assert shown.returncode == 0, f"scripts/{name}.py --help: {shown.stderr[-500:]}"
        missing = used - set(re.findall(r"--[a-z][a-z0-9-]*", shown.stdout))
        if missing:
            unknown[name] = sorted(missing)
    assert unknown == {}


@pytest.mark.parametrize("args, sets", [
    ("-m backbone=a,b optimizer=c,d", [["backbone=a", "optimizer=c"], ["backbone=b", "optimizer=c"],
                                       ["backbone=a", "optimizer=d"]]),
    ("mode=M dataset.root=<a folder> export.format=[onnx,tflite]", [["dataset.root=X", "export.format=[onnx,tflite]"]]),
])
def test_override_sets(args, sets):
    assert override_sets(args) == sets
