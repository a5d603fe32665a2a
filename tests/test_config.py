"""Every option of every config group composes, and a wrong option is a clear error."""
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from tests.conftest import CONF

GROUPS = ["mode", "backbone", "optimizer", "scheduler", "dataset", "augmentation", "trainer", "callbacks",
          "paths", "mlflow", "debug", "experiment", "hparams_search"]


def options(group):
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(make_cfg, group, option):
    cfg = make_cfg([f"{group}={option}", "dataset.root=/tmp/x"] if option == "folder" else [f"{group}={option}"])
    assert (cfg.trainer.epochs == "auto" or cfg.trainer.epochs >= 1) and cfg.preprocess.height > 0


@pytest.mark.parametrize("name,key", [("evaluate", "run_id"), ("export", "run_id"), ("predict", "model"),
                                      ("serve", "model"), ("label", "model"), ("prepare", "action")])
def test_other_entry_configs_compose(name, key):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=name, overrides=[f"{key}=abc"])
    assert cfg[key] == "abc" and cfg.task_name == name
    assert cfg.mlflow.tracking_uri  # every entry point can reach runs and registered models


def test_unknown_option_names_the_group(make_cfg):
    with pytest.raises(ConfigCompositionException, match="backbone"):
        make_cfg(["backbone=no_such_net"])
    with pytest.raises(ConfigCompositionException, match="trainer.epochz"):
        make_cfg(["trainer.epochz=3"])


def test_contract_keys_exist(make_cfg):
    cfg = make_cfg()
    for key in ["trainer.epochs", "trainer.batch_size", "trainer.seed", "dataset.train_size", "dataset.val_size",
                "dataset.test_size", "mlflow.tracking_uri", "mlflow.experiment_name", "optimized_metric"]:
        node = cfg
        for part in key.split("."):
            node = node[part]
    assert cfg.mode.name == "ctc" and cfg.backbone.name == "cnn_small"


@pytest.mark.parametrize("preset", options("experiment"))
def test_debug_fast_shrinks_every_preset(make_cfg, preset):
    cfg = make_cfg([f"experiment={preset}", "debug=fast"])  # debug comes last in the defaults list
    assert cfg.trainer.epochs == 1 and cfg.trainer.batch_size == 16
    if "train_size" in cfg.dataset:
        assert cfg.dataset.train_size == 64


@pytest.mark.parametrize("name,overrides,meant", [
    ("train", ["+trainer.max_minute=1"], "write trainer.max_minutes=1"),
    ("train", ["+trainr.max_minutes=1"], "write trainer.max_minutes=1"),  # a new parent spelt like one
    ("train", ["debug=fast", "+optimizer.learning_rat=0.01"], "write optimizer.learning_rate=0.01"),
    ("predict", ["model=x", "+imagez=few"], "write images=few"),
    ("train", ["+dataset.style.noise_lines=20"], None),  # a real addition: dataset.style is null by default
    ("train", ["++trainer.max_minute=1"], None),  # ++: added on purpose
    ("predict", ["model=x", "+mode=ctc"], None),  # a config group added with +
])
def test_a_misspelt_key_added_with_plus_is_named_with_the_key_meant(name, overrides, meant):
    """Hydra's error for a misspelt key suggests `+key=`, which then adds a key nothing reads."""
    from bearcat.overrides import misspelt_additions

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    problems = misspelt_additions(cfg, overrides, set(cfg.hydra.runtime.choices.keys()))
    if meant is None:
        assert problems == []
    else:
        assert len(problems) == 1 and meant in problems[0], problems


def test_a_misspelt_added_key_stops_a_run_and_a_sweep_before_they_start(tmp_path):
    """From the command line (the check is a Hydra callback): nothing trained, no MLflow store,
    no run or sweep folder."""
    import subprocess
    import sys

    store = tmp_path / "mlflow.db"
    for mode, value in (([], "1"), (["-m"], "1,2")):
        done = subprocess.run([sys.executable, "-m", "bearcat.train", *mode, f"+trainer.max_minute={value}", "debug=fast",
                               f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                               f"mlflow.tracking_uri=sqlite:///{store}"], capture_output=True, text=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": ""}, timeout=120)
        assert done.returncode == 1, done.stderr[-2000:]
        assert f"write trainer.max_minutes={value}, or ++trainer.max_minute={value}" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,argv,hint", [
    ("train", ["trainer.max_minute=1"], "did you mean trainer.max_minutes=1?"),
    ("train", ["trainr.epochs=2"], "did you mean trainer.epochs=2?"),  # a misspelt parent
    ("train", ["backbon=mobilenetv2"], "did you mean backbone=mobilenetv2?"),  # a misspelt group
    ("train", ["experiment=swust", "dataset.rot=x"], "did you mean dataset.root=x?"),  # a key of the preset's dataset
    ("train", ["-m", "trainer.epoch=1,2", "backbone=cnn_small,mobilenetv2"], "did you mean trainer.epochs=1,2?"),
    ("evaluate", ["run_idd=abc"], "did you mean run_id=abc?"),
    ("train", ["trainer.zzz=1"], "trainer holds auto_epochs, auto_steps, batch_size"),  # nothing alike: what is there
    ("predict", ["model=x", "images=y"], None),  # required keys (???) are keys too
    ("train", ["+trainer.new=1", "++x=1", "~trainer.seed", "hydra.run.dir=x", "dataset=folder"], None),
])
def test_a_misspelt_key_is_named_with_the_key_meant(name, argv, hint):
    """Hydra's own error for a misspelt key advises adding it with `+`; the hint gives the key meant."""
    from bearcat.overrides import unknown_keys

    problems = unknown_keys(name, argv)
    if hint is None:
        assert problems == []
    else:
        assert len(problems) == 1 and hint in problems[0], problems


@pytest.mark.parametrize("name,overrides,unset", [
    ("predict", [], ["model is not set (pass model=...): bundle folder, training run folder, MLflow run id",
                     "images is not set (pass images=...): an image file, a folder of images"]),
    ("label", ["dir=x"], ["out is not set (pass out=...): folder the answers go to"]),
    ("soup", ["out=x"], ["models is not set (pass models=...): two or more: bundle folders, training run folders "
                         "or MLflow run ids, fine-tuned from the same"]),  # a comment wrapped onto the next line
    ("train", ["experiment=finetune"], ["dataset.root is not set (pass dataset.root=...): the folder of labelled"]),
    ("prepare", [], ["action is not set"]),  # the action first
    ("prepare", ["action=generate"], ["generate.output is not set"]),  # then only its own settings
    ("prepare", ["action=clean"], []),
    ("train", [], []),
    ("evaluate", ["run_id=x"], []),
])
def test_a_required_value_left_unset_is_named_with_what_it_takes(name, overrides, unset):
    from bearcat.overrides import required_unset

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    cfg.hydra.job.config_name = name  # as a command's own run sets it
    problems = required_unset(cfg, CONF)
    assert len(problems) == len(unset) and all(p.startswith(u) for p, u in zip(problems, unset)), problems


def test_a_yes_no_setting_takes_only_true_or_false(tmp_path):
    """Python reads any text but "" as yes: `split.move=maybe` moved the user's images. Every
    setting that conf/ writes as true or false is checked, a sweep's values too, before
    anything runs; true/false/True pass, and so does any value of another setting."""
    import subprocess
    import sys

    from bearcat import CONFIG_DIR
    from bearcat.overrides import compose_config, non_flag_values

    def problems(name, overrides):
        return non_flag_values(compose_config(name, overrides, hydra=True), CONFIG_DIR)

    assert problems("train", ["dataset=folder", "dataset.lowercase=no", "trainer.jit_compile=1",
                              "init_from_vocabulary=yes", "trainer.epochs=3"]) == [
        "dataset.lowercase=no: true or false", "trainer.jit_compile=1: true or false",
        "init_from_vocabulary=yes: true or false"]
    assert problems("train", ["dataset.lowercase=True", "trainer.jit_compile=false", "mode.rnn_unroll=auto",
                              "+trainer.extra=maybe"]) == []
    assert problems("prepare", ["split.move=maybe", "check.quarantine=true"]) == ["split.move=maybe: true or false"]
    # from the command line: one line, nothing moved; a sweep stops before its first job
    data = tmp_path / "data"
    data.mkdir()
    (data / "ab12_1.png").write_bytes(b"x")
    for args, said in [(["bearcat.prepare", "action=split", "dataset=folder", f"dataset.root={data}", "split.move=maybe"],
                        "split.move=maybe: true or false"),
                       (["bearcat.train", "-m", "trainer.jit_compile=true,maybe"],
                        "trainer.jit_compile=true,maybe: true or false")]:
        done = subprocess.run([sys.executable, "-m", *args, f"hydra.run.dir={tmp_path / 'run'}",
                               f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and done.stderr.rstrip().splitlines()[-1] == said, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] and [p.name for p in data.iterdir()] == ["ab12_1.png"]


def test_misspelt_and_unset_keys_are_named_from_the_command_line(tmp_path):
    """Each stops before TensorFlow loads (so no traceback), a sweep before its first job."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", *args, f"hydra.run.dir={tmp_path / 'run'}",
                               f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=120)

    done = run("bearcat.train", "trainer.max_minute=1")
    assert done.returncode == 1 and "Key 'max_minute' is not in struct" in done.stderr  # Hydra's message, then
    assert done.stderr.rstrip().endswith("trainer.max_minute: no such setting; did you mean trainer.max_minutes=1? "
                                         "(Hydra's advice, +trainer.max_minute=1, would add a key that nothing reads)")
    for args in (["bearcat.predict", "images=x"], ["bearcat.train", "-m", "dataset=folder", "trainer.epochs=1,2"]):
        done = run(*args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert ("model is not set (pass model=...)" if "images=x" in args else "dataset.root is not set") in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_bad_setting_ends_a_command_with_its_message_alone(tmp_path, monkeypatch):
    """An error Bearcat raises on purpose (a bad setting, a missing file) ends the command
    with its message as the last and only line: no "Error executing job", no traceback.
    A bug (an error Python or a library raised), a sweep's job and HYDRA_FULL_ERROR=1
    keep the traceback. train's and predict's settings are checked before TensorFlow loads."""
    import subprocess
    import sys

    from bearcat import overrides
    from bearcat.checks import whole_setting

    def run(*args):
        # -X importtime lists every module imported: each setting is checked before TensorFlow loads
        return subprocess.run([sys.executable, "-X", "importtime", "-m", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                              capture_output=True, text=True, timeout=180)

    from PIL import Image

    Image.new("RGB", (96, 36)).save(tmp_path / "a_1.png")
    for args, said in [(["bearcat.train", "trainer.batch_size=0", f"paths.output_dir={tmp_path / 'out'}"],
                        "trainer.batch_size=0: must be at least 1"),
                       (["bearcat.train", "dataset=folder", f"dataset.root={tmp_path / 'nowhere'}",
                         f"paths.output_dir={tmp_path / 'out'}"], f"dataset.root={tmp_path / 'nowhere'}: no such folder"),
                       (["bearcat.predict", f"model={tmp_path / 'nowhere'}", f"images={tmp_path / 'a_1.png'}"],
                        f"model={tmp_path / 'nowhere'}: no such file or folder")]:
        done = run(*args)
        lines = [line for line in done.stderr.splitlines() if line.startswith(said.split(":")[0])]
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "Error executing job" not in done.stderr and len(lines) == 1 and lines[0].startswith(said)
        assert done.stderr.rstrip().splitlines()[-1] == lines[0]  # and the last line
        imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
        assert "hydra" in imported and "tensorflow" not in imported and "keras" not in imported

    def bad_setting(cfg):
        return whole_setting("port", cfg, 0, 65535)

    def bug(cfg):
        return [][cfg]

    def not_ours(cfg):
        raise ValueError("port=abc: raised outside bearcat's code")

    with pytest.raises(SystemExit, match="^port=abc: a whole number, from 0 to 65535$"):
        overrides.plain_errors(bad_setting)("abc")
    with pytest.raises(IndexError):
        overrides.plain_errors(bug)(0)
    with pytest.raises(ValueError, match="outside bearcat"):
        overrides.plain_errors(not_ours)(None)
    # in Bearcat's code, only a `raise` statement's error is a message; a builtin's is a bug
    import linecache
    import os

    for source, shortened in [("raise ValueError('port=abc: bad')\n", True), ("int('abc')\n", False)]:
        fake = os.path.join(overrides.PACKAGE_DIR, f"fake_{shortened}.py")
        linecache.cache[fake] = (len(source), None, [source], fake)
        code = compile(source, fake, "exec")
        with pytest.raises(SystemExit if shortened else ValueError):
            overrides.plain_errors(lambda cfg: exec(code, {}))(None)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="port=abc"):
        overrides.plain_errors(bad_setting)("abc")
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    monkeypatch.setattr(overrides, "in_a_sweep", lambda: True)
    with pytest.raises(ValueError, match="port=abc"):
        overrides.plain_errors(bad_setting)("abc")


def test_help_shows_the_commands_own_config_with_its_comments_and_groups():
    """`--help` prints the entry config file (each key's comment says what it takes) and the
    groups that command composes, not Hydra's comment-less dump of every group in conf/."""
    import subprocess
    import sys

    def helped(name):
        done = subprocess.run([sys.executable, "-m", f"bearcat.{name}", "--help"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    text = helped("predict")
    assert text.startswith((Path(CONF) / "predict.yaml").read_text().rstrip())
    assert "# bundle folder, training run folder, MLflow run id or models:/NAME/VERSION" in text
    assert "  mlflow: default\n" in text and "backbone:" not in text  # only the groups predict composes
    text = helped("train")
    assert "  backbone: cnn_small, convnext_tiny," in text and "resnet_se (default cnn_small)" in text
    assert "  experiment: alnum_ordinary," in text and "tiles (none by default)" in text
    assert "  hydra/launcher: basic, parallel, slurm (default basic)" in text
    assert "python -m bearcat.train --cfg job [overrides]" in text


def test_ctrl_c_outside_training_ends_a_command_with_a_line_not_a_traceback(capsys):
    from bearcat.overrides import run

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run(interrupted, "train")
    assert stop.value.code == 130 and capsys.readouterr().err == "stopped by Ctrl-C\n"


@pytest.mark.parametrize("value", ["outputs/runs/2026-12-07_05-01-11-123456", "/tmp/run sp", "/tmp/run données",
                                   "/tmp/a,b", "/tmp/x=[1]", "/tmp/it's", '/tmp/a"b', "/tmp/a~b", "/tmp/a\\",
                                   '/tmp/a\\"b', " lead", "null", "1", "sqlite:////tmp/m.db"])
def test_a_printed_command_argument_reads_back_as_the_path_it_names(make_cfg, value):
    """The commands a run prints for its user (resume=, model=) must compose as given: Hydra
    refuses a comma, brackets, quotes, `~` or a non-ASCII letter unquoted, and reads null as None."""
    import shlex

    from bearcat.overrides import command_arg

    (word,) = shlex.split(command_arg("resume", value))  # one word to the shell
    assert make_cfg([word]).resume == value  # and the same string to Hydra
    plain = command_arg("resume", "outputs/runs/x")
    assert plain == "resume=outputs/runs/x"  # a plain path is printed as it is


def test_a_value_hydra_reads_only_in_quotes_is_named_with_the_word_to_type(tmp_path):
    """Hydra's own error for `dataset.root=/data/验证码` is "LexerNoViableAltException" and a caret."""
    import shlex
    import subprocess
    import sys

    from bearcat.overrides import compose_config, unreadable_values

    done = subprocess.run([sys.executable, "-m", "bearcat.predict", "model=/data/验证码", "images=x",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "LexerNoViableAltException" in done.stderr and "Traceback" not in done.stderr
    hint = done.stderr.rstrip().splitlines()[-1]
    assert hint == ("model: Hydra reads /data/验证码 only in quotes ('验' may not stand in a bare value); "
                    "type it as 'model=\"/data/验证码\"'")
    (word,) = shlex.split(hint.split("type it as ")[1])
    assert compose_config("predict", [word, "images=x"]).model == "/data/验证码"  # as typed, it reads
    assert unreadable_values(["-m", "model=/tmp/run sp", "trainer.epochs=1,2", "models=[/data/é]",
                              "model=\"/tmp/données\""]) == []  # readable, a sweep, a list, quoted already
    assert unreadable_values(["+dataset.fonts=~/f.ttf"]) == [
        "dataset.fonts: Hydra reads ~/f.ttf only in quotes ('~' may not stand in a bare value); "
        "type it as '+dataset.fonts=\"~/f.ttf\"'"]
