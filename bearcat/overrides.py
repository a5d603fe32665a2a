"""Command-line mistakes Hydra lets through or explains badly: a misspelt key added with `+`,
a misspelt key (Hydra advises adding it with `+`), a required value left unset. Hydra
callbacks (conf/hydra/default.yaml) and the wrapper every entry point runs under, kept out of
bearcat.checks so that the modules every worker process imports do not import Hydra."""
from __future__ import annotations

import difflib
import functools
import os
import re
import shlex

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


interrupted = False  # set when Ctrl-C ended the command (`run`)


_BARE = re.compile(r"[A-Za-z0-9_./:@+\- %*?|$\\]")  # a character Hydra reads in a bare value


@functools.cache
def hydra_parser():
    """Hydra's command-line parser, built once: it holds no state between overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def command_arg(key: str, value) -> str:
    """`key=value` as one shell word that Hydra reads back as the string `value`, for the
    commands Bearcat prints for a user to run next (`resume=`, `model=` of a run folder).
    Hydra's grammar refuses a path with a comma, brackets, a quote, a `~` or a non-ASCII
    letter (the é of "données") unquoted, and reads `null` or `1` as another type."""
    text = str(value)
    try:
        plain = hydra_parser().parse_override(f"{key}={text}").value() == text
    except Exception:  # the grammar's error for a value it cannot read unquoted
        plain = False
    if not plain:
        # Hydra's quoted string: a quote is escaped with a backslash, and so is each backslash
        # that would otherwise stand before a quote (the closing one included)
        text = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '\\"', text)
        text = '"' + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + '"'
    return shlex.quote(f"{key}={text}")


def unreadable_values(argv: list[str]) -> list[str]:
    """What to paste instead of each `key=value` Hydra's grammar cannot read as typed, but
    reads in quotes: `dataset.root=/data/验证码` got only "LexerNoViableAltException" and a
    caret. A list (`[...]`) or a dict (`{...}`) is left to Hydra's own message."""
    parser, problems = hydra_parser(), []
    for arg in argv:
        key, equals, value = arg.partition("=")
        if arg.startswith("-") or not equals or value[:1] in ("[", "{"):
            continue
        try:
            parser.parse_override(arg)
            continue
        except Exception:  # Hydra's grammar error: this one is unreadable as typed
            pass
        quoted = command_arg(key, value)
        try:
            parser.parse_override(shlex.split(quoted)[0])
        except Exception:  # not a matter of quotes
            continue
        odd = next((c for c in value if not _BARE.fullmatch(c)), None)
        why = f" ({odd!r} may not stand in a bare value)" if odd else ""
        problems.append(f"{key.lstrip('+~')}: Hydra reads {value} only in quotes{why}; type it as {quoted}")
    return problems


def child(node: DictConfig, key: str):
    """node[key], or None for a value still `???` (reading it would raise)."""
    return None if OmegaConf.is_missing(node, key) else node[key]


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
            present = part in node.keys()  # `in node` is False for a missing (???) value
            # a part already there is only judged if this override added it: the leaf, or a
            # new parent holding nothing but the path's next part
            added = not present or depth == len(parts) - 1 or (
                isinstance(child(node, part), DictConfig) and list(node[part].keys()) == [parts[depth + 1]])
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
            node = child(node, part)
    return problems


class StopBeforeRun(Callback):
    """A check of the composed command line that stops a command, or a whole sweep before its
    first job, with what is wrong (`problems`); registered under hydra.callbacks in
    conf/hydra/default.yaml."""

    def problems(self, config: DictConfig) -> list[str]:
        raise NotImplementedError

    def _check(self, config: DictConfig) -> None:
        problems = self.problems(config)
        if problems:  # SystemExit: Hydra turns a callback's exceptions into mere warnings
            raise SystemExit("; ".join(problems))

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)


class AddedKeysCallback(StopBeforeRun):
    """`+` overrides that add a misspelt key (`misspelt_additions`)."""

    def problems(self, config: DictConfig) -> list[str]:
        hydra = config.hydra
        return misspelt_additions(config, list(hydra.overrides.task), set(hydra.runtime.choices.keys()))


def key_default(yaml_file: str, key: str):
    """The value of `key` (dotted, within the file) as a config file writes it; None when the
    file or the key is not there."""
    if not os.path.isfile(yaml_file):
        return None
    return OmegaConf.select(OmegaConf.load(yaml_file), key, default=None, throw_on_resolution_failure=False)


def key_files(config_dir: str, name: str, choices, key: str) -> list[tuple[str, str]]:
    """(config file, key within it) where `key` of the `name` command is written: its group's
    chosen file (`dataset.root` in dataset/folder.yaml), else the command's own file."""
    group, _, rest = key.partition(".")
    chosen = [(os.path.join(config_dir, group, f"{choices[group]}.yaml"), rest)] if rest and choices.get(group) else []
    return [*chosen, (os.path.join(config_dir, f"{name}.yaml"), key)]


def non_flag_values(config: DictConfig, config_dir: str) -> list[str]:
    """Each `key=value` on the command line that gives a yes/no setting (true or false in conf/)
    anything but true or false: Python reads any text but "" as yes, so `split.move=maybe`
    moved the user's images, and `check.quarantine=no` would have moved unreadable ones. A
    sweep's values too."""
    from hydra.core.override_parser.types import OverrideType

    name, choices = config.hydra.job.config_name, config.hydra.runtime.choices
    problems = []
    for override in hydra_parser().parse_overrides(list(config.hydra.overrides.task)):
        key = override.key_or_group
        if override.type != OverrideType.CHANGE or override.package is not None or key.startswith("hydra") \
                or key in choices:
            continue
        places = key_files(config_dir, name, choices, key)
        if not any(isinstance(key_default(file, inner), bool) for file, inner in places):
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        if any(not isinstance(value, bool) for value in values):
            problems.append(f"{override.input_line}: true or false")
    return problems


class FlagValuesCallback(StopBeforeRun):
    """A yes/no setting given another value (`non_flag_values`)."""

    def problems(self, config: DictConfig) -> list[str]:
        from bearcat import CONFIG_DIR

        return non_flag_values(config, CONFIG_DIR)


def compose_config(config_name: str, overrides=(), hydra: bool = False) -> DictConfig:
    """An entry config of conf/ with these overrides, composed outside a Hydra app run (or
    after one: Hydra's global state is cleared first); `hydra`: with Hydra's own node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bearcat import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def unknown_keys(config_name: str, argv: list[str]) -> list[str]:
    """For each plain `key=value` on the command line that the composed config does not have,
    the key meant (spelt almost alike) or, failing that, the keys beside it. Hydra's own error
    for such a key advises adding it with `+`, which for a misspelt key is wrong advice."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.types import OverrideType

    from bearcat import CONFIG_DIR

    args = get_args_parser().parse_args(argv)
    groups, keys = [], []
    for override in hydra_parser().parse_overrides(args.overrides):
        key = override.key_or_group
        if override.type != OverrideType.CHANGE or override.package is not None or key.startswith("hydra"):
            continue
        if os.path.isdir(os.path.join(CONFIG_DIR, key)):  # a config group: compose with its (first) choice
            value = (next(iter(override.sweep_string_iterator())) if override.is_sweep_override()
                     else override.get_value_element_as_str())
            groups.append(f"{key}={value}")
        else:
            keys.append((key, override.input_line.split("=", 1)[1]))
    if not keys:
        return []
    cfg = compose_config(args.config_name or config_name, groups)
    problems = []
    for key, value in keys:
        parts, node = key.split("."), cfg
        for depth, part in enumerate(parts):
            if not isinstance(node, DictConfig):
                break
            if part not in node.keys():  # `in node` is False for a missing (???) value
                path = ".".join(parts[:depth])
                here = f"{path} holds" if path else "the settings are"
                near = difflib.get_close_matches(part, list(node.keys()), n=1, cutoff=0.6)
                if near:
                    meant = ".".join([*parts[:depth], near[0], *parts[depth + 1:]])
                    problems.append(f"{key}: no such setting; did you mean {meant}={value}? (Hydra's advice, "
                                    f"+{key}={value}, would add a key that nothing reads)")
                else:
                    problems.append(f"{key}: no such setting; {here} {', '.join(sorted(map(str, node.keys())))}")
                break
            node = child(node, part)
    return problems


def command_help(config_name: str) -> str:
    """`--help`: the command's own config file, whose comments say what each key takes, then
    the config groups it composes with their options. (Hydra's own help printed the composed
    config without a comment, and every group in conf/, used or not.)"""
    from bearcat import CONFIG_DIR

    choices = compose_config(config_name, hydra=True).hydra.runtime.choices
    lines = [open(os.path.join(CONFIG_DIR, f"{config_name}.yaml"), encoding="utf-8").read().rstrip(), ""]
    groups = [g for g in choices if not g.startswith("hydra")] + (["hydra/launcher"] if config_name == "train" else [])
    if groups:
        lines.append(f"Config groups (group=option; an option's keys, with comments: {CONFIG_DIR}/<group>/<option>.yaml):")
        for group in sorted(groups):
            options = sorted(name[:-5] for name in os.listdir(os.path.join(CONFIG_DIR, group)) if name.endswith(".yaml"))
            if group == "hydra/launcher":
                options = ["basic", *options]  # Hydra's own, the default
            chosen = choices[group]
            default = ("" if options == [chosen] else " (none by default)" if chosen is None
                       else f" (default {chosen})")
            lines.append(f"  {group}: {', '.join(options)}{default}")
        lines.append("")
    lines += [f"Every key as composed: python -m bearcat.{config_name} --cfg job [overrides]",
              "Hydra's own options: --hydra-help. The README explains each command."]
    return "\n".join(lines)


def run(main, config_name: str):
    """Run a Hydra entry point: `--help` prints `command_help`; when the command stops with
    Hydra's error exit, the key meant for each misspelt key on the command line
    (`unknown_keys`) follows Hydra's message; a Ctrl-C ends it with a line, not a traceback."""
    import sys

    global interrupted
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(command_help(config_name), flush=True)
        return None
    try:
        return main()
    except KeyboardInterrupt:  # a Ctrl-C outside training (which stops gently): no traceback
        interrupted = True  # read at exit by a sweep's parent run (bearcat.sweeps)
        print("stopped by Ctrl-C", file=sys.stderr, flush=True)
        raise SystemExit(130) from None  # the shells' code for a command ended by Ctrl-C
    except SystemExit as stop:
        if stop.code == 1:
            try:
                problems = unreadable_values(sys.argv[1:]) or unknown_keys(config_name, sys.argv[1:])
            except Exception:  # the hint is a courtesy: Hydra's own message has been printed
                problems = []
            for problem in problems:
                print(problem, file=sys.stderr, flush=True)
        raise


# Errors Bearcat raises on purpose about a setting, a file or the data, each with its message.
MESSAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ModuleNotFoundError)
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def raised_on_purpose(error: BaseException) -> bool:
    """An error of a message type raised by a `raise` statement in Bearcat's own code: a
    check that found a bad setting or input. Not one from Python or a library, nor one a
    builtin raised on a line of Bearcat's (`int("abc")`): those are bugs, or lack the key."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return (isinstance(error, MESSAGE_ERRORS) and bool(frames)
            and os.path.abspath(frames[-1].filename).startswith(PACKAGE_DIR + os.sep)
            and (frames[-1].line or "").startswith("raise "))


def in_a_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def plain_errors(task):
    """A command's Hydra task whose purposeful errors (`raised_on_purpose`) end it with their
    message alone: Hydra would print its "Error executing job" line and a traceback above the
    one line that says what to change. Anything else keeps its traceback, and so does every
    error in a sweep (Hydra records the job as failed) or with HYDRA_FULL_ERROR=1."""
    @functools.wraps(task)
    def wrapped(cfg):
        try:
            return task(cfg)
        except MESSAGE_ERRORS as error:
            if not raised_on_purpose(error) or in_a_sweep() or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(str(error)) from None

    return wrapped


def command(main, config_name: str):
    """The `python -m bearcat.<name>` and `bearcat-<name>` entry point of a Hydra `main`: it
    runs through `run` (pyproject.toml's [project.scripts] name these `cli`)."""
    return functools.partial(run, main, config_name)


def unset_keys(node: DictConfig, path: str = "") -> list[str]:
    """The keys under `node` still `???` (required, with no default)."""
    unset = []
    for key in node.keys():
        if not path and key == "hydra":  # Hydra's own settings are not the command's
            continue
        full = f"{path}.{key}" if path else str(key)
        if OmegaConf.is_missing(node, key):
            unset.append(full)
        elif isinstance(node._get_node(key), DictConfig):
            unset += unset_keys(node[key], full)
    return unset


def key_comment(yaml_file: str, key: str) -> str:
    """The comment beside `key` (dotted, within the file) in a config file, with the comment
    lines that continue it; "" when there is none."""
    if not os.path.isfile(yaml_file):
        return ""
    stack, lines = [], open(yaml_file, encoding="utf-8").read().splitlines()
    for number, line in enumerate(lines):
        found = re.match(r"^( *)([A-Za-z_][\w]*):(.*)$", line)
        if not found:
            continue
        depth = len(found.group(1))
        stack = [(d, name) for d, name in stack if d < depth] + [(depth, found.group(2))]
        if ".".join(name for _, name in stack) != key or "#" not in found.group(3):
            continue
        column = line.index("#", len(found.group(1)) + len(found.group(2)) + 1)
        parts = [line[column + 1:].strip()]
        for more in lines[number + 1:]:  # a comment wrapped onto the lines below, aligned
            if len(more) > column and not more[:column].strip() and more[column] == "#":
                parts.append(more[column + 1:].strip())
            else:
                break
        return " ".join(parts)
    return ""


def required_unset(config: DictConfig, config_dir: str) -> list[str]:
    """Each required value (`???`) the command leaves unset, with what it takes (the comment in
    conf/). `prepare` needs only its action's settings (generate.output for action=generate);
    keys set by a sweep's overrides are left to each job."""
    name, choices = config.hydra.job.config_name, config.hydra.runtime.choices
    given = {override.lstrip("+").split("=", 1)[0] for override in config.hydra.overrides.task}
    unset = [key for key in unset_keys(config) if key not in given]
    if name == "prepare":  # the action first, then only its own settings
        unset = ["action"] if "action" in unset else [key for key in unset if key.split(".")[0] == config.action]
    problems = []
    for key in unset:
        comments = (key_comment(file, inner) for file, inner in key_files(config_dir, name, choices, key))
        comment = next(filter(None, comments), "")
        problems.append(f"{key} is not set (pass {key}=...)" + (f": {comment}" if comment else ""))
    return problems


class RequiredKeysCallback(StopBeforeRun):
    """A required value left unset (`required_unset`): without this check the command went on
    to the first line reading the value (after loading TensorFlow) and stopped there with a
    traceback."""

    def problems(self, config: DictConfig) -> list[str]:
        from bearcat import CONFIG_DIR

        return required_unset(config, CONFIG_DIR)
