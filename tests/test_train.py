"""End to end: tiny trainings that log to a private MLflow store, evaluation from a run
id, folder data with bad files, and resume after a kill."""
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pytest
from omegaconf.errors import MissingMandatoryValue
from PIL import Image

from bearcat.evaluate import evaluate
from bearcat.train import train
from tests.conftest import CONF, ROOT, ctrl_c_as_from_a_terminal, last_checkpoint

TINY = ["debug=fast", "dataset.train_size=96", "trainer.epochs=2"]


def run_of(metrics):
    return mlflow.get_run(metrics["mlflow_run_id"])


def artifact_paths(run_id, path=""):
    out = []
    for item in mlflow.MlflowClient().list_artifacts(run_id, path):
        out += artifact_paths(run_id, item.path) if item.is_dir else [item.path]
    return out


def test_tiny_train_logs_metrics_artifacts_and_evaluates_from_run_id(make_cfg, tmp_store, monkeypatch, caplog, capfd):
    # the store named in the config, not by MLFLOW_TRACKING_URI: the hinted commands must name it
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    cfg = make_cfg([*TINY, "trainer.verbose=auto", f"mlflow.tracking_uri={tmp_store}"])
    with caplog.at_level(logging.INFO, logger="bearcat.train"):
        metrics = train(cfg)
    # output to a pipe or file (here pytest's capture), not a terminal: a line per epoch, no bar
    shown = capfd.readouterr().out
    assert "\u2501" not in shown and "\r" not in shown, "the progress bar was drawn"
    assert [line for line in shown.splitlines() if line.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"]
    assert sum("val_accuracy" in line for line in shown.splitlines()) == 2
    run = run_of(metrics)
    assert run.info.status == "FINISHED"
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("finished:")]
    assert len(done) == 1, "the run ends by saying where it is and what to run next"
    assert f"run folder {cfg.paths.output_dir}, MLflow run {run.info.run_id}" in done[0]
    hinted = shlex.split(done[0].split("Next: python -m bearcat.evaluate ")[1].split(" |")[0])
    assert hinted == [f"run_id={run.info.run_id}", f"mlflow.tracking_uri={tmp_store}",
                      f"mlflow.artifact_root={cfg.mlflow.artifact_root}"]
    assert f"bearcat.export run_id={run.info.run_id} format=onnx {shlex.join(hinted[1:])}," in done[0]
    assert f"bearcat.serve model={cfg.paths.output_dir} runtime=keras" in done[0]  # a run holds no ONNX
    assert f"mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}" in done[0]
    for key in ["loss", "val_loss", "val_accuracy", "test_accuracy", "test_char_accuracy", "test_cer"]:
        assert key in run.data.metrics, key
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0 and run.data.metrics["test_cer"] >= 0.0
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [0, 1]
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["mode.name"] == "ctc"
    files = set(artifact_paths(run.info.run_id))
    assert {"model/model.keras", "model/bundle.json", "vocabulary.json", "config.yaml",
            "predictions/test_gallery.png"} <= files

    # evaluate as the hint says, from the run id: same model, same test split -> the same figures
    ev = evaluate(make_cfg(hinted, config_name="evaluate", output="eval"))
    for key in ["test_accuracy", "test_char_accuracy", "test_cer"]:
        assert ev[key] == pytest.approx(run.data.metrics[key], abs=1e-6), key
    ev_run = mlflow.get_run(ev["mlflow_run_id"])
    assert ev_run.data.tags["mlflow.parentRunId"] == run.info.run_id


def test_from_python_bearcat_api_composes_a_command_config_with_its_run_folder(tmp_path, tmp_store, monkeypatch):
    """A notebook has no Hydra app: composed there, paths.output_dir (${hydra:runtime.output_dir})
    could not be read. bearcat.api.config gives it the command's folder, with its checks."""
    from bearcat.api import config

    monkeypatch.chdir(tmp_path)  # the run folder and the data cache go under outputs/ here
    with pytest.raises(ValueError, match=r"dataset.root is not set \(pass dataset.root=...\): the folder"):
        config("train", ["dataset=folder"])
    with pytest.raises(ValueError, match="write trainer.max_minutes=1"):
        config("train", ["+trainer.max_minute=1"])
    cfg = config("train", [*TINY, "trainer.epochs=1"])
    out = Path(cfg.paths.output_dir)
    assert out.parent == tmp_path / "outputs" / "runs" and "hydra" not in cfg
    metrics = train(cfg)
    assert (out / "model" / "bundle.json").is_file() and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert evaluate(config("evaluate", [f"checkpoint={out}"]))["test_accuracy"] == metrics["test_accuracy"]
    assert config("train", ["paths.output_dir=mine"]).paths.output_dir == "mine"  # given: kept
    # a resume continues the run as it was started: a setting beside it is refused, as on the
    # command line (through bearcat.api, trainer.epochs=5 was ignored without a word)
    with pytest.raises(ValueError, match=r"these settings would be ignored: trainer.epochs=5 \(the run has "
                                         r"trainer.epochs=1\)"):
        config("train", [f"resume={out}", "trainer.epochs=5"])
    resumed = train(config("train", [f"resume={out}"]))  # trained to its end: tested again
    assert resumed["mlflow_run_id"] == metrics["mlflow_run_id"]
    assert resumed["test_accuracy"] == metrics["test_accuracy"]


def test_progress_display_auto_draws_a_bar_only_on_a_terminal(tmp_path):
    from bearcat.train import progress_display

    class Terminal:
        def isatty(self):
            return True

    with open(tmp_path / "log", "w") as file:
        assert progress_display("auto", file) == 2
    assert progress_display("auto", Terminal()) == 1
    assert [progress_display(v, Terminal()) for v in (0, 1, 2)] == [0, 1, 2]


def test_auto_epochs_make_at_least_auto_steps_steps(make_cfg):
    """trainer.epochs=auto on a small set: enough epochs for auto_steps (96 images at 16 a
    step: 6 steps an epoch, 15 steps -> 3 epochs), logged as the number; config.yaml keeps
    `auto`, so a resume plans alike. An explicit number is used as given. Early stopping's
    patience=auto is a fifth of the planned epochs, rounded up, at least patience_min (6 of 30,
    28 of 137, 6 of 3; 2 of 3 with patience_min=2)."""
    from omegaconf import OmegaConf

    from bearcat.train import check_settings, plan_epochs

    cfg = make_cfg([*TINY[:2], "trainer.epochs=auto", "trainer.auto_epochs=2", "trainer.auto_steps=15"])
    run = run_of(train(cfg))
    assert run.data.params["trainer.epochs"] == "3"
    assert sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")) == [0, 1, 2]
    assert run.data.params["callbacks.early_stopping.patience"] == "6"  # 3 x 0.2 -> 1, raised to 6
    saved = OmegaConf.load(Path(cfg.paths.output_dir) / "config.yaml")
    assert saved.trainer.epochs == "auto" and saved.callbacks.early_stopping.patience == "auto"
    big = make_cfg(["trainer.epochs=auto"])  # a large set keeps auto_epochs (30)
    assert plan_epochs(big, 1875) == 30 and big.trainer.epochs == 30 and big.callbacks.early_stopping.patience == 6
    small = make_cfg(["trainer.epochs=auto"])
    assert plan_epochs(small, 22) == 137 and small.callbacks.early_stopping.patience == 28  # 1,400 images at 64
    fixed = make_cfg(["trainer.epochs=5", "callbacks.early_stopping.patience=3"])
    assert plan_epochs(fixed, 22) == 5 and fixed.callbacks.early_stopping.patience == 3
    low = make_cfg(["trainer.epochs=3", "callbacks.early_stopping.patience_min=2"])
    assert plan_epochs(low, 22) == 3 and low.callbacks.early_stopping.patience == 2
    longer = make_cfg(["trainer.epochs=40"])
    assert plan_epochs(longer, 22) == 40 and longer.callbacks.early_stopping.patience == 8
    for bad in ("many", "2.5", "0", "true"):
        with pytest.raises(ValueError, match=f"trainer.epochs={bad}:|trainer.epochs={bad.title()}:"):
            check_settings(make_cfg([f"trainer.epochs={bad}"]))
    for bad in ("soon", "2.5", "-1", "true"):
        with pytest.raises(ValueError, match="callbacks.early_stopping.patience="):
            check_settings(make_cfg([f"callbacks.early_stopping.patience={bad}"]))
    for key, bad in (("patience_share", "0"), ("patience_share", "1.5"), ("patience_share", "x"),
                     ("patience_min", "0"), ("patience_min", "2.5"), ("patience_min", "true")):
        with pytest.raises(ValueError, match=f"callbacks.early_stopping.{key}="):
            check_settings(make_cfg([f"callbacks.early_stopping.{key}={bad}"]))


def test_ctc_tiny_dropout_auto_follows_the_training_split_size(make_cfg, caplog):
    """mode.dropout=auto (ctc_tiny's default): small_set_dropout below small_set_images
    training images, else none. The bundle records the number used (serving and warm starts
    rebuild that model) and so does MLflow; config.yaml keeps `auto`, so a resume decides alike."""
    import keras
    from omegaconf import OmegaConf

    from bearcat.bundle import load_keras, read_meta

    built = {}
    for below in ("default", "10"):  # 96 training images: a small set, then (below 10) a large one
        extra = [] if below == "default" else [f"mode.small_set_images={below}"]
        cfg = make_cfg([*TINY, "mode=ctc_tiny", *extra], output=f"below{below}")
        with caplog.at_level("INFO", logger="bearcat.experiment"):
            run = run_of(train(cfg))
        out = Path(cfg.paths.output_dir)
        model = load_keras(out / "model" / "model.keras")
        built[below] = (read_meta(out / "model")["mode"]["dropout"],
                        [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)])
        assert run.data.params["mode.dropout"] == str(built[below][0])  # MLflow: the number used
        assert OmegaConf.load(out / "config.yaml").mode.dropout == "auto"
        keras.backend.clear_session()
    assert built == {"default": (0.3, [0.3]), "10": (0.0, [])}
    assert "mode.dropout=auto: 0.3 (96 training images" in caplog.text


def test_rnn_unroll_auto_loops_a_short_training_and_unrolls_a_long_one(make_cfg, caplog):
    """mode.rnn_unroll=auto: a run planning fewer than unroll_min_steps steps (here 2 epochs
    of 6) trains the recurrent layer as a loop, which builds faster; the bundle, MLflow and
    the saved model say so, and config.yaml keeps `auto`. A long plan unrolls it."""
    from omegaconf import OmegaConf

    from bearcat.bundle import load_keras, read_meta
    from bearcat.data.sources import Splits
    from bearcat.experiment import build_model, build_vocab_and_mode, plan_unroll

    cfg = make_cfg(TINY)
    with caplog.at_level("INFO", logger="bearcat.experiment"):
        run = run_of(train(cfg))
    out = Path(cfg.paths.output_dir)
    assert "mode.rnn_unroll=auto: False (12 planned training steps; unrolled from mode.unroll_min_steps=3000)" \
        in caplog.text
    assert read_meta(out / "model")["mode"]["rnn_unroll"] is False
    assert load_keras(out / "model" / "model.keras").get_layer("ctc_rnn0").forward_layer.unroll is False
    assert run.data.params["mode.rnn_unroll"] == "False"
    assert OmegaConf.load(out / "config.yaml").mode.rnn_unroll == "auto"

    for name, planned, unrolled in (("ordinary", 3000, True), ("ordinary", 2999, False), ("ctc", 3000, True)):
        cfg = make_cfg([f"mode={name}", "mode.max_length=6"], output=f"{name}{planned}")
        mode = build_vocab_and_mode(cfg, Splits([("x.png", "AB12")], [], []))
        plan_unroll(cfg, mode, planned)
        model = build_model(cfg, mode, "float32")
        assert model.get_layer(f"{name}_rnn0").forward_layer.unroll is unrolled
        assert cfg.mode.rnn_unroll is unrolled

    # no recurrent layer: nothing to choose, and no log line claiming a choice
    cfg = make_cfg(["mode.rnn=none"], output="norrn")
    mode = build_vocab_and_mode(cfg, Splits([("x.png", "AB12")], [], []))
    caplog.clear()
    with caplog.at_level("INFO", logger="bearcat.experiment"):
        plan_unroll(cfg, mode, 5000)
    assert cfg.mode.rnn_unroll is False and mode.options["rnn_unroll"] is False
    assert "rnn_unroll" not in caplog.text


def snapshot(folder: Path) -> dict:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_training_that_fails_ends_its_mlflow_run_failed(make_cfg, monkeypatch):
    import keras

    def broken_fit(self, *args, **kwargs):
        raise RuntimeError("fit broke")

    monkeypatch.setattr(keras.Model, "fit", broken_fit)
    cfg = make_cfg(TINY)
    with pytest.raises(RuntimeError, match="fit broke"):
        train(cfg)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.params["trainer.epochs"] == "2"  # logged before training started
    assert "config.yaml" in artifact_paths(runs[0].info.run_id)


def test_one_training_iterator_serves_every_epoch(make_cfg, monkeypatch):
    """Keras makes a new iterator per epoch from a finite dataset (and dropping the old one
    stalled the next epoch's start for seconds); training's endless dataset is iterated once.
    Dropping an iterator of an autotuned pipeline waits for tf.data's tuning thread to wake,
    so the stream is not autotuned, and validation does not go through `model.predict` (a
    new autotuned pipeline per call)."""
    import keras
    import tensorflow as tf

    from bearcat.data import pipeline

    made, iterated, predicts = [], [], []
    real_make, real_iter = pipeline.make_dataset, tf.data.Dataset.__iter__
    monkeypatch.setattr(keras.Model, "predict", lambda *a, **k: predicts.append(1))

    def make(*args, **kwargs):
        made.append(real_make(*args, **kwargs))
        return made[-1]

    def count_iter(self):
        iterated.append(id(self))
        return real_iter(self)

    monkeypatch.setattr(pipeline, "make_dataset", make)
    monkeypatch.setattr(tf.data.Dataset, "__iter__", count_iter)
    metrics = train(make_cfg(["debug=fast", "dataset.train_size=96", "trainer.epochs=3"]))
    assert len(made) == 1 and iterated.count(id(made[0])) == 1
    assert made[0].options().autotune.enabled is False
    assert not predicts
    history = mlflow.MlflowClient().get_metric_history(metrics["mlflow_run_id"], "train_images_per_s")
    assert sorted(m.step for m in history) == [0, 1, 2]


def test_folder_dataset_real_images_with_bad_files(make_cfg, swust_copy, tmp_path):
    data = tmp_path / "mysite"
    data.mkdir()
    for p in sorted(swust_copy.iterdir())[:60]:
        (data / p.name).write_bytes(p.read_bytes())
    (data / "abcd_empty.jpg").write_bytes(b"")                  # zero-byte image
    (data / "abcd_text.png").write_text("not an image")         # text named .png
    Image.new("RGB", (90, 30), "white").save(data / "_nolabel.png")  # no label in the name
    Image.new("RGB", (90, 30), "white").save(data / "abcdefghijklmnopqrstu_long.png")  # longer than emit-able
    before = snapshot(data)
    metrics = train(make_cfg(TINY + [
        "dataset=folder", f"dataset.root={data}", "dataset.lowercase=true", "dataset.test_ratio=0.5",
        "dataset.val_ratio=0.2", "mode.max_length=8", "preprocess.height=32", "preprocess.width=96"]))
    run = run_of(metrics)
    m = run.data.metrics
    assert m["skipped_no_label_in_file_name"] == 1
    assert m["skipped_unreadable_image"] == 2
    assert m["skipped_label_longer_than_the_model_can_emit"] == 1
    assert m["data_train_images"] + m["data_val_images"] + m["data_test_images"] == 60
    vocab = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="vocabulary.json", dst_path=str(tmp_path / "dl"))).read_text())
    assert set(vocab["chars"]) <= set("0123456789abcdefghijklmnopqrstuvwxyz")
    assert snapshot(data) == before  # nothing in the user's folder changed


def test_training_on_animated_captchas_read_by_their_first_frame_says_so(make_cfg, tmp_path, caplog):
    data = tmp_path / "gifs"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_gif_captchas.py"), "--out", str(data),
                    "--count", "40"], check=True, capture_output=True)
    with caplog.at_level(logging.WARNING, logger="bearcat"):
        metrics = train(make_cfg(TINY + ["dataset=folder", f"dataset.root={data}"]))
    warned = [r.getMessage() for r in caplog.records if "preprocess.frames=first reads only the first" in r.getMessage()]
    assert len(warned) == 1 and str(data) in warned[0] and "has 4 frames" in warned[0]
    assert run_of(metrics).data.metrics["data_train_images"] == 32  # trained all the same


def test_missing_and_empty_folder_errors(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.root=.*nowhere"):
        train(make_cfg(["debug=fast", "dataset=folder", f"dataset.root={tmp_path / 'nowhere'}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no labelled images"):
        train(make_cfg(["debug=fast", "dataset=folder", f"dataset.root={tmp_path / 'empty'}"]))
    with pytest.raises(FileNotFoundError, match=f"dataset.root={tmp_path / 'empt'}: no such folder; "
                                                f"did you mean {tmp_path / 'empty'}\\?$"):  # a typo: the folder meant
        train(make_cfg(["debug=fast", "dataset=folder", f"dataset.root={tmp_path / 'empt'}"]))
    with pytest.raises(MissingMandatoryValue, match="dataset.root"):
        train(make_cfg(["debug=fast", "dataset=folder"]))


def test_settings_given_beside_resume_that_would_be_ignored_are_refused(make_cfg, tmp_path):
    """resume= continues a run with its saved config.yaml: a changed value, another group or a
    preset beside it would be ignored without a word, so the command stops naming them; the
    same values as the run's pass."""
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(make_cfg(["dataset=folder", f"dataset.root={tmp_path}", "trainer.max_minutes=1.5"]),
                   run / "config.yaml", resolve=True)
    done = subprocess.run([sys.executable, "-m", "bearcat.train", f"resume={run}", "mode=ordinary",
                           "experiment=swust", f"dataset.root={tmp_path}", "trainer.max_minutes=1.5",
                           f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr  # the message alone
    assert (f"\nresume={run} continues the run with its own config.yaml, so these settings would be ignored: "
            "mode=ordinary, experiment=swust. Resume without them") in "\n" + done.stderr, done.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # nothing trained
    # a value other than the run's is named with the run's own
    from bearcat.train import resume_conflicts

    cfg = make_cfg([f"resume={run}", "trainer.max_minutes=5", "trainer.seed=42"])
    assert resume_conflicts(cfg, ["trainer.max_minutes=5", "trainer.seed=42"]) == [
        "trainer.max_minutes=5 (the run has trainer.max_minutes=1.5)"]


def test_an_empty_split_names_what_sized_it(make_cfg, swust_copy, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(swust_copy.iterdir())[:5]:
        shutil.copy2(path, flat / path.name)
    with pytest.raises(ValueError, match=r"the val split has no usable images .*: it was given no images; "
                                         r"dataset.val_ratio=0 is the share of a flat folder it gets, of 5 images here"):
        train(make_cfg(["debug=fast", "dataset=folder", f"dataset.root={flat}", "dataset.val_ratio=0"]))
    split = tmp_path / "split"
    for name, files in (("train", sorted(flat.iterdir())[:3]), ("val", []), ("test", sorted(flat.iterdir())[3:])):
        (split / name).mkdir(parents=True)
        for path in files:
            shutil.copy2(path, split / name / path.name)
    with pytest.raises(ValueError, match=f"the val split has no usable images .*; {split / 'val'} holds no labelled image$"):
        train(make_cfg(["debug=fast", "dataset=folder", f"dataset.root={split}"]))


def test_a_split_whose_labels_are_all_skipped_says_so_and_names_ten_files_per_reason(make_cfg, caplog):
    """Generated labels of 4-6 characters for a model that emits 2: every one is skipped. The
    error says so (not "given no images"), and the log names 10 files, not every one."""
    from bearcat.data.sources import NAMED_SKIPS

    with caplog.at_level("WARNING", logger="bearcat.experiment"):
        with pytest.raises(ValueError, match=r"the train split has no usable images .*: all 64 of its images were "
                                             r"skipped \(skipped files: \{'label longer than the model can emit': 96\}\)"):
            train(make_cfg(["debug=fast", "mode=ctc_tiny", "mode.max_length=2"]))
    said = [r.getMessage() for r in caplog.records]
    named = [m for m in said if "skipped: label longer than the model can emit (" in m]
    assert len(named) == NAMED_SKIPS == 10 and all(m.split(": label")[0].endswith(".png") for m in named)
    assert said.count("more files skipped (label longer than the model can emit): counted, not named here") == 1


@pytest.mark.parametrize("override,message", [
    ("trainer.batch_size=0", "trainer.batch_size=0: must be at least 1"),
    ("trainer.bn_calibration_images=-1", "trainer.bn_calibration_images=-1"),
    ("trainer.max_minutes=0", "trainer.max_minutes=0"),
    ("optimizer.learning_rate=abc", r"optimizer.learning_rate=abc: a number above 0"),
    ("optimizer.learning_rate=-0.001", r"optimizer.learning_rate=-0.001: a number above 0"),
    ("dataset.train_size=-5", "dataset.train_size=-5: a whole number of images, at least 1"),
    ("dataset.test_size=2.5", "dataset.test_size=2.5: a whole number of images, at least 1"),
    ("dataset.val_size=0", "dataset.val_size=0: a whole number of images, at least 1"),  # val picks the epoch
    ("trainer.max_minutes=abc", "trainer.max_minutes=abc: a positive number of minutes, or null"),
    ("mode.max_length=0", r"mode.max_length=0: a whole number of characters, at least 1, or null"),
    # each of these was checked only after TensorFlow loaded, some with a traceback
    ("optimizer.weight_decay=abc", "optimizer.weight_decay=abc: a number, 0 or more"),
    ("optimizer=sgd optimizer.momentum=-1", "optimizer.momentum=-1: a number, 0 or more"),
    ("scheduler.warmup_epochs=-1", "scheduler.warmup_epochs=-1: a number, 0 or more"),  # was accepted
    ("scheduler.alpha=abc", "scheduler.alpha=abc: a number from 0 to 1"),
    ("scheduler=cosine_restarts scheduler.cycle_epochs=0", "scheduler.cycle_epochs=0: a number of epochs above 0"),
    ("scheduler=plateau scheduler.factor=x", "scheduler.factor=x: a number, 0 or more"),
    ("trainer.seed=abc", "trainer.seed=abc: a whole number, 0 or more"),
    ("trainer.precision=fp16", "trainer.precision=fp16: choose one of auto, float32, mixed_bfloat16"),
    ("trainer.strategy=foo", "trainer.strategy=foo: use one of default, mirrored, multi_worker"),
    ("preprocess.gray=foo", "preprocess.gray='foo': choose one of luma, min"),
    ("mode=ordinary mode.max_length=2.5", r"mode.max_length=2.5: a whole number of characters"),
    ("dataset=tiles mode=num_classes dataset.val_size=-1", "dataset.val_size=-1: a whole number of images"),
    ("~dataset._target_", r"dataset._target_ is not set: choose a dataset"),
    ("dataset._target_=bearcat.data.sources.nothing", r"dataset._target_=bearcat.data.sources.nothing: cannot be imported"),
    ("callbacks.monitor=val_acc", "callbacks.monitor=val_acc: choose one of"),
    ("mode=ctc_tiny mode.dropout=1.5", r"mode.dropout=1.5: a fraction from 0 up to \(not including\) 1, or auto"),
    ("mode.dropout=some", r"mode.dropout=some: a fraction"),
    ("mode=ctc_tiny mode.small_set_dropout=-0.1", r"mode.small_set_dropout=-0.1: a fraction"),
    ("mode=ctc_tiny mode.small_set_images=many", r"mode.small_set_images=many: a whole number of training images"),
    ("mode.rnn_unroll=sometimes", "mode.rnn_unroll=sometimes: true, false or auto"),
    ("trainer.verbose=3", r"trainer.verbose=3: 0 \(silent\), 1 \(a bar\), 2 \(a line per epoch\) or auto"),
    ("trainer.verbose=bar", "trainer.verbose=bar: 0"),
    ("mode=ordinary mode.unroll_min_steps=-1", "mode.unroll_min_steps=-1: a whole number of training steps"),
    ("mode=efficientdet optimized_metric=best_val_accuracy",
     r"optimized_metric=best_val_accuracy: not a metric of this detection run; choose one of \['best_val_map', 'test_map'"),
    # click success needs named characters: a single-class detector without a recogniser has none
    ("experiment=click optimized_metric=test_click_success", "optimized_metric=test_click_success: not a metric"),
    # a misspelt or unreported metric: named before training, not after it
    ("optimized_metric=test_acuracy", r"optimized_metric=test_acuracy: not a metric of this run; choose one of "
                                      r"\['best_val_accuracy', 'test_accuracy', 'test_accuracy_ci_high', "
                                      r"'test_accuracy_ci_low', 'test_cer'"),
    ("callbacks.monitor=val_loss", r"optimized_metric=best_val_accuracy: not a metric of this run; "
                                   r"choose one of \['best_val_loss'"),
])
def test_bad_training_settings_are_named_before_any_work(make_cfg, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(make_cfg(["debug=fast", *override.split()]))
    assert not (tmp_path / "cache").exists()  # stopped before generating or decoding anything


def test_every_preset_optimizer_and_scheduler_passes_the_early_checks():
    """check_parts refuses text and negative numbers: none of conf/'s own choices is refused."""
    from bearcat.overrides import compose_config
    from bearcat.train import check_parts

    presets = [[f"experiment={f.stem}"] for f in sorted((Path(CONF) / "experiment").glob("*.yaml"))]
    groups = [[f"{group}={f.stem}"] for group in ("optimizer", "scheduler")
              for f in sorted((Path(CONF) / group).glob("*.yaml"))]
    assert len(presets) >= 9 and len(groups) >= 9
    for overrides in presets + groups:
        check_parts(compose_config("train", overrides))


def checkpoint_epochs(folder, monitor: str, values: list[float]) -> dict:
    """A Checkpointer on a tiny trained model, fed one epoch per value; its state.json."""
    import keras
    import numpy as np

    from bearcat.callbacks import Checkpointer

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0)
    ckpt = Checkpointer(folder, monitor)
    ckpt.set_model(model)
    for epoch, value in enumerate(values):
        ckpt.on_epoch_end(epoch, {monitor: value})
    return json.loads((Path(folder) / "state.json").read_text())


def test_a_lower_is_better_monitor_keeps_the_lowest_epoch(tmp_path):
    state = checkpoint_epochs(tmp_path, "val_cer", [0.5, 0.2, 0.3])
    assert state["best"] == 0.2 and state["best_epoch"] == 2


def test_extra_train_folders_join_the_train_split_only(swust_copy, tmp_path):
    from bearcat.data.sources import folder

    files = sorted(swust_copy.iterdir())
    main, extra = tmp_path / "labelled", tmp_path / "pseudo"
    for target, chosen in ((main, files[:40]), (extra, files[40:50])):
        target.mkdir()
        for p in chosen:
            shutil.copy2(p, target / p.name)
    plain = folder(str(main), lowercase=True)
    extra_names = {p.name for p in extra.iterdir()}
    test_image = Path(plain.test[0][0])  # a pseudo-labelled copy of a test image, under another label
    shutil.copy2(test_image, extra / f"zzzz_{test_image.name.split('_', 1)[1]}")
    both = folder(str(main), lowercase=True, extra_train=[str(extra)])
    assert both.val == plain.val and both.test == plain.test  # the split of the main folder is unchanged
    assert both.train[:len(plain.train)] == plain.train
    assert {Path(path).name for path, _ in both.train[len(plain.train):]} == extra_names  # not the test copy
    assert both.skipped == {"extra_train image already in dataset.root": 1}
    with pytest.raises(FileNotFoundError, match="dataset.extra_train: .*nowhere: folder not found"):
        folder(str(main), extra_train=[str(tmp_path / "nowhere")])


def signal_after_first_epoch(tmp_path, sent: int, wait: float = 0, images: int = 600,
                             run: str = "run") -> subprocess.Popen:
    """A 3-epoch training run on `images` in a process group of its own, sent `sent` (to the
    whole group, as a terminal's Ctrl-C is) once its first epoch is committed; then waited for
    up to `wait` seconds, after which it is killed. Its run folder is tmp_path/run."""
    from bearcat.overrides import command_arg

    overrides = ["debug=fast", f"dataset.train_size={images}", "trainer.batch_size=8", "trainer.epochs=3",
                 *shlex.split(command_arg("paths.output_dir", tmp_path / run)), f"paths.cache_dir={tmp_path / 'cache'}",
                 f"mlflow.artifact_root={tmp_path / 'artifacts'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    (tmp_path / "tmp").mkdir(exist_ok=True)  # its temporary files, which a kill leaves
    proc = subprocess.Popen([sys.executable, "-m", "bearcat.train", *overrides], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=ctrl_c_as_from_a_terminal, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    state_file = tmp_path / run / "checkpoints" / "state.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state_file.is_file() and json.loads(state_file.read_text()).get("epoch", 0) >= 1:
                os.killpg(proc.pid, sent)
                break
            time.sleep(0.02)
        if wait:
            proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:  # killed below
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc


def test_resume_after_kill_continues_epochs_and_mlflow_run(make_cfg, tmp_store, tmp_path):
    out = tmp_path / "run"
    signal_after_first_epoch(tmp_path, signal.SIGKILL)  # as abrupt as a power cut
    state_file = out / "checkpoints" / "state.json"
    state = json.loads(state_file.read_text())
    assert 1 <= state["epoch"] < 3, f"the run was not interrupted mid-training: {state}"
    killed_at = state["epoch"]
    assert not list((tmp_path / "tmp").glob("bearcat-*"))  # no temporary folder without init_from to leave behind

    # resumed by the entry point, which ends its process itself (bearcat.train.exit_now)
    done = subprocess.run([sys.executable, "-m", "bearcat.train", f"resume={out}",
                           f"hydra.run.dir={tmp_path / 'hydra_resume'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log_lines = (tmp_path / "hydra_resume" / "train.log").read_text().splitlines()
    assert "finished: run folder" in log_lines[-1]  # the log was flushed before the process ended
    client = mlflow.MlflowClient(tmp_store)  # the subprocesses' store (this process may point elsewhere)
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == [0, 1, 2]  # each epoch logged once: resumed at epoch `killed_at`, not from 0
    final = json.loads(state_file.read_text())
    assert final["epoch"] == 3 and killed_at < 3 and final["training_done"]
    assert final["trained_seconds"] > state["trained_seconds"] > 0  # the time budget counts both attempts


def test_ctrl_c_stops_training_then_the_run_tests_saves_and_resumes(make_cfg, tmp_store, tmp_path):
    """The first Ctrl-C ends training after the current batch; the run still tests and saves
    its best epoch, and its MLflow run finishes, tagged. resume= then trains on, given as the
    log gives it (the run folder's name needs Hydra's quotes)."""
    out = tmp_path / "run données, 1"
    proc = signal_after_first_epoch(tmp_path, signal.SIGINT, wait=240, images=200, run=out.name)
    state_file = out / "checkpoints" / "state.json"
    assert proc.returncode == 0
    log_text = (tmp_path / "hydra" / "train.log").read_text()
    assert "Ctrl-C: training stops after this batch" in log_text and "finished: run folder" in log_text
    state = json.loads(state_file.read_text())
    # stopped part-way through epoch 2 (1 whole epoch and part_steps), or at the end of epoch 1
    # or 2 when Ctrl-C came as the epoch's last step ended or during its validation
    stopped = state["epoch"] + (1 if state.get("part_steps") else 0)
    assert state["interrupted_at_epoch"] == stopped and stopped in (1, 2) and not state["training_done"]
    assert (out / "model" / "bundle.json").is_file()  # the best epoch so far, saved as a bundle
    client = mlflow.MlflowClient(tmp_store)
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert run.data.tags["bearcat.interrupted"] == f"Ctrl-C in epoch {stopped} of 3"

    hinted = shlex.split(log_text.split("python -m bearcat.train ")[-1].split(" trains on from there")[0])
    assert hinted == [f'resume="{out}"']
    again = train(make_cfg(hinted))  # trains on to epoch 3, in the same MLflow run
    final = json.loads(state_file.read_text())
    assert final["epoch"] == 3 and final["training_done"] and again["mlflow_run_id"] == run.info.run_id
    # each epoch logged once: a part-epoch is logged when the resume has trained it whole
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [0, 1, 2]
    tag = client.get_run(run.info.run_id).data.tags["bearcat.interrupted"]
    assert tag == f"Ctrl-C in epoch {stopped} of 3, then resumed to the end"


@contextmanager
def sigint_handled_by(handler):
    """SIGINT handled by `handler` within, then as before (pytest may have inherited it ignored)."""
    inherited = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_a_second_ctrl_c_aborts_and_the_handler_is_put_back():
    import threading

    from omegaconf import OmegaConf

    from bearcat.callbacks import StopOnInterrupt
    from bearcat.train import on_interrupt

    with sigint_handled_by(signal.default_int_handler):  # Python's own, as under a terminal
        before = signal.getsignal(signal.SIGINT)
        with StopOnInterrupt() as stopper:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs between bytecodes
            assert stopper.pressed and not stopper.pressed_again
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            assert stopper.pressed_again and signal.getsignal(signal.SIGINT) is before
        assert signal.getsignal(signal.SIGINT) is before
        # raised inside TensorFlow's step, the second Ctrl-C's KeyboardInterrupt can come out as
        # a SystemError (seen once, "bad argument to internal function"): it leaves as what it was
        with pytest.raises(KeyboardInterrupt), StopOnInterrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            except KeyboardInterrupt:
                raise SystemError("Objects/listobject.c:338: bad argument to internal function") from None
        with pytest.raises(SystemError), StopOnInterrupt():  # any other SystemError is left alone
            raise SystemError("not after Ctrl-C")
        assert signal.getsignal(signal.SIGINT) is before
        with StopOnInterrupt():  # never pressed: put back on leaving
            assert signal.getsignal(signal.SIGINT) is not before
        assert signal.getsignal(signal.SIGINT) is before

        found, single = [], OmegaConf.create({"trainer": {"strategy": "default"}})
        worker = threading.Thread(target=lambda: found.append(on_interrupt(single)))
        worker.start()
        worker.join()
        assert on_interrupt(single) == "stop" and found == [None]  # only the main thread can handle signals
        # several machines abort: one worker stopping early would leave the others waiting
        assert on_interrupt(OmegaConf.create({"trainer": {"strategy": "multi_worker"}})) == "abort"
    with sigint_handled_by(signal.SIG_IGN):  # started as a script's background job: it stays ignored
        assert on_interrupt(single) is None


def test_in_a_sweep_ctrl_c_aborts_at_the_end_of_the_batch():
    """KeyboardInterrupt raised by Python's handler inside TensorFlow's step came out once as
    "SystemError: bad argument to internal function", a failed job to Hydra; raised from the
    callback at the end of the batch it is a KeyboardInterrupt."""
    import keras

    from bearcat.callbacks import StopOnInterrupt

    seen = []

    class Press(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(batch)
            if batch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with sigint_handled_by(signal.default_int_handler), StopOnInterrupt(abort=True) as stopper:
        with pytest.raises(KeyboardInterrupt):
            model.fit(np.zeros((64, 2)), np.zeros((64, 1)), batch_size=8, epochs=2, callbacks=[Press(), stopper],
                      verbose=0)
    assert seen == [0, 1] and stopper.pressed


def test_resuming_a_finished_run_goes_straight_to_testing(make_cfg, tmp_path, caplog):
    """A run killed after its training ended (while testing or writing its bundle) is not
    trained again when resumed: the same best checkpoint is tested in the same MLflow run."""
    first = train(make_cfg(["debug=fast", "trainer.epochs=2"]))
    state = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())
    assert state["training_done"] and state["epoch"] == 2 and state["mlflow_run_id"] == first["mlflow_run_id"]
    with caplog.at_level("INFO", logger="bearcat.train"):
        again = train(make_cfg([f"resume={tmp_path / 'run'}"]))
    assert "training had ended" in caplog.text
    assert again["mlflow_run_id"] == first["mlflow_run_id"] and again["test_accuracy"] == first["test_accuracy"]
    history = mlflow.MlflowClient().get_metric_history(first["mlflow_run_id"], "loss")
    assert sorted(m.step for m in history) == [0, 1]  # no epoch trained twice


@pytest.mark.parametrize("dies, store", [("before sending", "sqlite"), ("after sending", "sqlite"),
                                         ("after sending", "file")])
def test_an_epoch_killed_around_its_mlflow_log_is_logged_once(make_cfg, tmp_path, monkeypatch, dies, store):
    """The process dies right after epoch 2 is checkpointed, before or after its metrics
    reach MLflow. Resumed, every epoch is in the history once, with the values of the
    epoch the checkpoint holds (before, an epoch killed between its log and its checkpoint
    was trained again and logged twice). MLflow's file store keeps repeated entries, the
    SQL store drops them: both must end with one."""
    from bearcat import tracking

    if store == "file":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a new file store without it
        monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    send = tracking.log_epoch_record

    def dying(state, **kwargs):
        if state["epoch_log"]["step"] == 1:
            if dies == "after sending":
                send(state, **kwargs)
            raise KeyboardInterrupt("killed")
        send(state, **kwargs)

    monkeypatch.setattr(tracking, "log_epoch_record", dying)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg([*TINY, "trainer.epochs=3"]))
    state = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and state["epoch_log"]["step"] == 1
    client = mlflow.MlflowClient()
    logged = sorted(m.step for m in client.get_metric_history(state["mlflow_run_id"], "loss"))
    assert logged == ([0] if dies == "before sending" else [0, 1])

    monkeypatch.setattr(tracking, "log_epoch_record", send)
    again = train(make_cfg([f"resume={tmp_path / 'run'}"]))
    assert again["mlflow_run_id"] == state["mlflow_run_id"]
    history = {key: client.get_metric_history(state["mlflow_run_id"], key) for key in ("loss", "val_accuracy")}
    for key, entries in history.items():
        assert sorted(m.step for m in entries) == [0, 1, 2], key
        second = next(m for m in entries if m.step == 1)
        assert second.value == pytest.approx(state["epoch_log"]["metrics"][key])  # the checkpointed epoch's


def test_resumed_runs_end_with_the_weights_of_an_uninterrupted_one(make_cfg, tmp_path, monkeypatch, caplog):
    """Same seed, no time budget, 2 epochs of 6 steps. A run killed after its first epoch and
    resumed trains its second epoch on the batches and augmentation draws the uninterrupted
    run had there, and ends with the same weights and optimizer state, bit for bit. (Before,
    a resumed run began the data stream again: the first epoch's order and draws once more.)
    So does a run stopped by Ctrl-C 3 steps into its second epoch: the part-epoch is
    validated and checkpointed but not counted or logged as an epoch, and the resume trains
    its other 3 steps, then logs epoch 2 once. (Before, the resume skipped them.)"""
    import keras

    from bearcat import tracking
    from bearcat import train as train_module

    settings = [*TINY, "augmentation=light", "trainer.max_minutes=null"]
    train(make_cfg(settings, output="whole"))
    whole = last_checkpoint(tmp_path / "whole")
    assert len(whole[0]) > 10 and len(whole[1]) > 10
    send = tracking.log_epoch_record

    def dying(state, **kwargs):
        send(state, **kwargs)
        if state["epoch_log"]["step"] == 0:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(tracking, "log_epoch_record", dying)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(settings, output="killed"))
    monkeypatch.setattr(tracking, "log_epoch_record", send)
    train(make_cfg([f"resume={tmp_path / 'killed'}"], output="killed"))

    callbacks = train_module.epoch_callbacks

    def with_ctrl_c(*args, **kwargs):  # Ctrl-C as the 3rd step of epoch 2 ends, as from a terminal
        press = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: (
            os.kill(os.getpid(), signal.SIGINT) if int(press.model.optimizer.iterations) == 9 else None))
        return [*callbacks(*args, **kwargs), press]

    monkeypatch.setattr(train_module, "epoch_callbacks", with_ctrl_c)
    with sigint_handled_by(signal.default_int_handler):
        stopped = train(make_cfg(settings, output="stopped"))
    state = json.loads((tmp_path / "stopped" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and state["part_steps"] == 3 and state["last"] == "epoch-0002-part"
    assert state["interrupted_at_epoch"] == 2 and not state["training_done"] and state["epoch_log"]["step"] == 0
    assert "stopped by Ctrl-C in epoch 2 of 2 (after 3 of its 6 steps)" in caplog.text
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(stopped["mlflow_run_id"], "loss")] == [0]
    assert client.get_run(stopped["mlflow_run_id"]).data.tags["bearcat.interrupted"] == "Ctrl-C in epoch 2 of 2"
    monkeypatch.setattr(train_module, "epoch_callbacks", callbacks)
    train(make_cfg([f"resume={tmp_path / 'stopped'}"], output="stopped"))
    state = json.loads((tmp_path / "stopped" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and "part_steps" not in state and state["last"] == "epoch-0002"
    assert not (tmp_path / "stopped" / "checkpoints" / "epoch-0002-part").exists()
    assert sorted(m.step for m in client.get_metric_history(stopped["mlflow_run_id"], "loss")) == [0, 1]

    for run in ("killed", "stopped"):
        resumed = last_checkpoint(tmp_path / run)
        for a, b in zip(whole[0] + whole[1], resumed[0] + resumed[1], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=run)


def test_a_part_epoch_longer_than_an_epoch_now_counts_as_done(tmp_path, caplog):
    """Stopped 5 steps into epoch 1, resumed with fewer training images (4 steps an epoch):
    the rest of that epoch would be a fit of -1 steps, which Keras runs for ever. Epoch 1
    counts as done, with a warning, and the resume trains epoch 2 alone."""
    import keras
    import tensorflow as tf
    from omegaconf import OmegaConf

    from bearcat.callbacks import Checkpointer, read_state
    from bearcat.train import fit_unless_done

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    data = tf.data.Dataset.from_tensor_slices((np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32")))
    ckpt = Checkpointer(tmp_path, state={"epoch": 0, "part_steps": 5, "last": "epoch-0001-part"}, steps_per_epoch=4)
    cfg = OmegaConf.create({"trainer": {"epochs": 2, "verbose": 0, "strategy": "default"}, "paths": {"output_dir": "x"}})
    with sigint_handled_by(signal.SIG_IGN):  # Ctrl-C left alone: no StopOnInterrupt needed here
        fit_unless_done(model, lambda step: data.batch(2).repeat(), cfg, [ckpt], ckpt, 0, 4)
    assert int(model.optimizer.iterations) == 4
    state = read_state(tmp_path)
    assert state["epoch"] == 2 and "part_steps" not in state and state["last"] == "epoch-0002" and state["training_done"]
    assert "the part-epoch stopped after 5 steps, but an epoch now has 4" in caplog.text


def test_early_stopping_keeps_counting_across_a_resume(tmp_path):
    """Patience 3: uninterrupted, training stops after epoch 4 (the best was epoch 1; a tie
    is no improvement); stopped after epoch 3 and resumed from its state.json, it also
    stops after epoch 4, not 3 epochs later. Epochs before the model reads anything do not count,
    nor does a part-epoch ended by Ctrl-C (a resume trains it whole); a last, short epoch ended
    by the time budget does."""
    import keras

    from bearcat.callbacks import Checkpointer, EarlyStopping, read_state, restore_last

    scores = [0.5, 0.4, 0.5, 0.45, 0.3, 0.3, 0.3, 0.3]  # val_accuracy of epochs 1-8
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")

    def fit(folder, epochs, state=None, scores=scores, stop_at_step=None, ctrl_c=True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        if state:
            restore_last(model, folder, state)
        ckpt = Checkpointer(folder, "val_accuracy", state=state, steps_per_epoch=4)
        ckpt.stopper = stop = keras.callbacks.LambdaCallback(  # stands in for Ctrl-C's StopOnInterrupt
            on_train_batch_end=lambda batch, logs: (setattr(stop, "pressed", ctrl_c),
                                                    setattr(model, "stop_training", True))
            if int(model.optimizer.iterations) == stop_at_step else None)
        stop.pressed = False
        ended = []
        score = keras.callbacks.LambdaCallback(  # stands in for ValidationMetrics
            on_epoch_end=lambda epoch, logs: (logs.update(val_accuracy=scores[epoch]), ended.append(epoch + 1)))
        model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=int((state or {}).get("epoch", 0)), verbose=0,
                  callbacks=[score, EarlyStopping("val_accuracy", 3, 0.0, ckpt.state), ckpt, stop])
        return ended

    assert fit(tmp_path / "whole", 8) == [1, 2, 3, 4]
    assert fit(tmp_path / "killed", 3) == [1, 2, 3]
    state = read_state(tmp_path / "killed")
    assert state["epoch"] == 3 and state["early_stopping_best"] == 0.5 and state["early_stopping_wait"] == 2
    assert fit(tmp_path / "killed", 8, state) == [4]
    assert read_state(tmp_path / "killed")["early_stopping_wait"] == 3
    # stopped 2 steps into epoch 4 (of 4 steps): that part-epoch's score is not counted
    assert fit(tmp_path / "part", 8, stop_at_step=14) == [1, 2, 3, 4]
    state = read_state(tmp_path / "part")
    assert state["epoch"] == 3 and state["part_steps"] == 2 and state["last"] == "epoch-0004-part"
    assert state["early_stopping_best"] == 0.5 and state["early_stopping_wait"] == 2
    # ended there by the time budget, not Ctrl-C: a last, short epoch, counted as whole ones are
    assert fit(tmp_path / "budget", 8, stop_at_step=14, ctrl_c=False) == [1, 2, 3, 4]
    state = read_state(tmp_path / "budget")
    assert state["epoch"] == 4 and "part_steps" not in state and state["early_stopping_wait"] == 3
    # epochs in which the model reads nothing (accuracy 0, as CTC at its start) are not
    # counted: the count starts at epoch 5, the best; afterwards a 0 counts like any other
    assert fit(tmp_path / "slow", 12, scores=[0, 0, 0, 0, 0.2, 0.1, 0, 0.2, 0.1, 0.1]) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_synthetic_generation_is_cached_and_reproducible(tmp_path):
    from bearcat.data.sources import synthetic

    args = dict(charset="AB12", min_length=2, max_length=3, image_width=80, image_height=30, train_size=6,
                val_size=2, test_size=2, seed=7)
    a = synthetic(**args, cache_dir=str(tmp_path / "a"))
    b = synthetic(**args, cache_dir=str(tmp_path / "b"))
    assert [label for _, label in a.train] == [label for _, label in b.train]
    assert all(Path(p).read_bytes() == Path(q).read_bytes() for (p, _), (q, _) in zip(a.train, b.train))
    assert all(2 <= len(label) <= 3 and set(label) <= set("AB12") for label in a.labels())
    stamp = {p: Path(p).stat().st_mtime_ns for p, _ in a.train}
    again = synthetic(**args, cache_dir=str(tmp_path / "a"))  # reused, not redrawn
    assert {p: Path(p).stat().st_mtime_ns for p, _ in again.train} == stamp

    # the cache moved (or reached by another path): still reused, its files found where they are now
    (tmp_path / "a").rename(tmp_path / "moved")
    moved = synthetic(**args, cache_dir=str(tmp_path / "moved"))
    assert [p for p, _ in moved.train] == [p.replace(str(tmp_path / "a"), str(tmp_path / "moved")) for p in stamp]
    assert [Path(p).stat().st_mtime_ns for p, _ in moved.train] == list(stamp.values())
    # a marker written before markers held <split>/<name> (the whole path, as spelt then)
    marker = next((tmp_path / "moved").rglob("train.6.done"))
    marker.write_text(json.dumps([f"elsewhere/cache/{marker.parent.name}/train/{Path(p).name}" for p in stamp]))
    assert synthetic(**args, cache_dir=str(tmp_path / "moved")).train == moved.train


def test_generated_images_are_preprocessed_as_they_are_drawn(tmp_path):
    """A source that draws its images preprocesses them while they are in memory and writes
    the array cache training reads: the arrays equal decoding the saved files, in worker
    processes (400 images: parallel_map's threshold) and in-process alike."""
    from bearcat.data.pipeline import cache_file, load_split
    from bearcat.data.preprocess import PreprocessConfig
    from bearcat.data.sources import synthetic

    pre = PreprocessConfig(height=20, width=48, gamma=1.5)
    args = dict(charset="AbC12", min_length=2, max_length=3, image_width=80, image_height=30, val_size=4,
                test_size=0, seed=7, lowercase=True, cache_dir=str(tmp_path / "cache"))
    splits = synthetic(**args, train_size=400, workers=2, preprocess=pre.to_dict())
    assert len(splits.train) == 400 and splits.test == []
    assert all(label == label.lower() for label in splits.labels())  # the cache is keyed by folded labels
    for samples in (splits.train, splits.val):
        stored = load_split(samples, pre, args["cache_dir"])  # read from the cache
        decoded = load_split(samples, pre, None)  # the files, decoded again
        assert cache_file(samples, pre, args["cache_dir"]).is_file()
        assert stored.images.shape == (len(samples), 20, 48, 1) and stored.images.dtype == np.uint8
        assert np.array_equal(stored.images, decoded.images)
        assert stored.labels == decoded.labels and stored.paths == decoded.paths == [p for p, _ in samples]
    # another preprocessing of the same drawn files is not in the cache: decoded as before
    other = PreprocessConfig(height=24, width=48)
    assert not cache_file(splits.val, other, args["cache_dir"]).exists()
    assert load_split(splits.val, other, args["cache_dir"]).images.shape == (4, 24, 48, 1)


def test_a_moved_folder_finds_its_decoded_arrays(tmp_path, swust_copy, monkeypatch):
    """The array cache is keyed by file names, not folders: after the folder is renamed the
    arrays are read, not decoded again, and the split names the files where they are now.
    An unreadable file stays left out (and counted) without being read again."""
    import shutil

    import bearcat.data.pipeline as pipeline
    from bearcat.data.labels import label_from_name
    from bearcat.data.pipeline import load_split
    from bearcat.data.preprocess import PreprocessConfig

    before = tmp_path / "mine"
    before.mkdir()
    for src in sorted(swust_copy.iterdir())[:6]:
        shutil.copy2(src, before / src.name)
    (before / "BAD_x.png").write_bytes(b"not a png")
    pre, cache = PreprocessConfig(height=24, width=64), str(tmp_path / "cache")

    def samples(folder):
        return [(str(p), label_from_name(p, True)) for p in sorted(folder.iterdir())]

    first = load_split(samples(before), pre, cache)
    assert len(first) == 6 and len(first.errors) == 1
    after = before.rename(tmp_path / "moved")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again the files of a moved folder")

    monkeypatch.setattr(pipeline, "parallel_map", no_decoding)
    again = load_split(samples(after), pre, cache)
    assert np.array_equal(again.images, first.images) and again.labels == first.labels
    assert again.paths == [str(after / Path(p).name) for p in first.paths] and len(again.errors) == 1
    assert len(list((tmp_path / "cache" / "arrays").iterdir())) == 1
    # a file changed in place is a new key: decoded, not read stale from the cache
    (after / "BAD_x.png").write_bytes(Path(again.paths[0]).read_bytes())
    monkeypatch.undo()
    assert len(load_split(samples(after), pre, cache)) == 7


def test_a_cold_run_does_not_decode_the_captchas_it_drew(make_cfg, monkeypatch):
    """load_sources hands the run's preprocess settings to the generated source, so load_data
    finds every split in the array cache and decodes no file."""
    import bearcat.data.pipeline as pipeline
    from bearcat.experiment import build_vocab_and_mode, load_data, load_sources

    cfg = make_cfg(["debug=fast", "preprocess.height=24", "preprocess.width=64"])
    splits = load_sources(cfg)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded files the generator had preprocessed")

    monkeypatch.setattr(pipeline, "parallel_map", no_decoding)
    data = load_data(cfg, splits, build_vocab_and_mode(cfg, splits))
    assert {s: len(data.loaded[s]) for s in ("train", "val", "test")} == {"train": 64, "val": 16, "test": 16}
    assert data.loaded["train"].images.shape[1:] == (24, 64, 1)


def test_redrawing_a_captcha_never_rewrites_a_file_in_place(tmp_path):
    """Two sweep jobs on a cold cache draw the same files: the second must not truncate the
    file the first is already reading. A file already drawn is read, not drawn again; one
    drawn again (found damaged) is a new file renamed into place, so an open handle keeps the
    complete old bytes and no temporary file is left behind."""
    from PIL import Image

    from bearcat.data.sources import _generate_one, synthetic_settings

    settings = synthetic_settings("AB12", 2, 3, 80, 30, seed=7)
    (tmp_path / "train").mkdir()
    path = Path(_generate_one((str(tmp_path), "train", 0, settings)))
    size, stamp = path.stat().st_size, path.stat().st_mtime_ns
    with path.open("rb") as reader:  # the first job, reading
        again = Path(_generate_one((str(tmp_path), "train", 0, settings)))  # the second job
        assert again == path and path.stat().st_mtime_ns == stamp  # read, not written
        assert len(reader.read()) == size
    path.write_bytes(path.read_bytes()[:40])  # damaged
    with path.open("rb") as reader:
        assert Path(_generate_one((str(tmp_path), "train", 0, settings))) == path  # drawn again
        assert os.fstat(reader.fileno()).st_ino != path.stat().st_ino  # not written into the open file
        assert len(reader.read()) == 40
    assert path.stat().st_size == size and Image.open(path).size == (80, 30)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [path.name]


def test_best_checkpoint_ties_go_to_the_later_epoch(tmp_path):
    state = checkpoint_epochs(tmp_path, "val_accuracy", [0.5, 1.0, 0.9, 1.0])
    assert state["best"] == 1.0 and state["best_epoch"] == 4 and state["epoch"] == 4
    assert (tmp_path / "best.keras").is_file() and [p.name for p in tmp_path.glob("epoch-*")] == ["epoch-0004"]


def test_precise_batchnorm_in_chunks_averages_the_chunks():
    """Chunked re-estimation (for large models): the first BatchNorm's moving mean is the
    mean over all sampled images, as in one pass, and its variance the mean of the
    chunks' variances."""
    import keras
    import numpy as np

    from bearcat.callbacks import PreciseBatchNorm

    inputs = keras.Input((2, 2, 1))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    images = np.random.default_rng(0).normal(3.0, 2.0, (8, 2, 2, 1)).astype(np.float32)
    chunked = PreciseBatchNorm(images, sample=8, chunk=4)
    chunked.set_model(model)
    chunked.on_epoch_end(0)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), [chunked.batch.mean()], rtol=1e-5)
    per_chunk = [chunked.batch[:4].var(), chunked.batch[4:].var()]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), [np.mean(per_chunk)], rtol=1e-4)
    assert bn.momentum == 0.99  # restored afterwards


def test_precise_batchnorm_runs_only_what_feeds_the_batchnorm_layers():
    """The re-estimate runs the model only up to its last BatchNorm layer (a recurrent head,
    run eagerly, cost most of the time) and gives the same statistics as running the whole
    model; a BatchNorm inside a nested model falls back to the whole model."""
    import keras
    import numpy as np

    from bearcat.callbacks import PreciseBatchNorm

    def model_with_head():
        inputs = keras.Input((4, 6, 1))
        x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.Reshape((6, 12))(keras.layers.Permute((2, 1, 3))(x))
        x = keras.layers.GRU(4, return_sequences=True, name="gru")(x)
        return keras.Model(inputs, keras.layers.Dense(5, name="out")(x))

    images = np.random.default_rng(1).normal(100.0, 30.0, (16, 4, 6, 1)).astype(np.float32)
    model = model_with_head()
    reference = model_with_head()
    reference.set_weights(model.get_weights())
    cb = PreciseBatchNorm(images, sample=16, chunk=8)
    cb.set_model(model)
    cb.on_epoch_end(0)
    assert cb.feed is not model and "gru" not in [layer.name for layer in cb.feed.layers]
    bn_ref = reference.get_layer("bn")
    for k, start in enumerate((0, 8)):  # the same averaging through the whole model
        bn_ref.momentum = k / (k + 1)
        reference(cb.batch[start:start + 8], training=True)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(getattr(model.get_layer("bn"), name)),
                                   keras.ops.convert_to_numpy(getattr(bn_ref, name)), rtol=1e-5)

    inner_in = keras.Input((4, 6, 1))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="inner_bn")(inner_in), name="inner")
    outer_in = keras.Input((4, 6, 1))
    outer = keras.Model(outer_in, keras.layers.Flatten()(inner(outer_in)))
    nested = PreciseBatchNorm(images, sample=16)
    nested.set_model(outer)
    nested.on_epoch_end(0)
    assert nested.feed is outer
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inner.get_layer("inner_bn").moving_mean),
                               [nested.batch.mean()], rtol=1e-5)


def test_mixed_bfloat16_trains_in_bfloat16_and_saves_a_float32_model(make_cfg, tmp_path):
    """trainer.precision=mixed_bfloat16: the checkpoint computes in bfloat16 with a float32
    output layer; the bundle (tested, exported, served) is float32 with the same weights and
    reads the test images as the checkpoint does; the global policy is left as it was."""
    import keras
    import numpy as np

    from bearcat.bundle import load_keras
    from bearcat.data.pipeline import load_split
    from bearcat.experiment import load_sources, preprocess_config

    cfg = make_cfg([*TINY, "trainer.epochs=3", "trainer.precision=mixed_bfloat16"])
    metrics = train(cfg)
    assert keras.config.dtype_policy().name == "float32"
    out = tmp_path / "run"
    trained, saved = load_keras(out / "checkpoints" / "best.keras"), load_keras(out / "model" / "model.keras")
    compute = {layer.name: layer.dtype_policy.compute_dtype for layer in trained.layers}
    assert compute["ctc_probs"] == "float32" and compute["ctc_proj"] == "bfloat16"
    assert {layer.dtype_policy.compute_dtype for layer in saved.layers} == {"float32"}
    for a, b in zip(trained.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(a, b)
    images = load_split(load_sources(cfg).test, preprocess_config(cfg), None).images.astype(np.float32)
    p_bf16, p_f32 = trained.predict(images, verbose=0), saved.predict(images, verbose=0)
    assert p_bf16.dtype == p_f32.dtype == np.float32
    assert np.abs(p_bf16 - p_f32).max() < 0.1  # bfloat16 keeps about 3 significant digits
    assert run_of(metrics).data.tags["bearcat.precision"] == "mixed_bfloat16"
    with pytest.raises(ValueError, match="trainer.precision=float16: choose one of auto, float32, mixed_bfloat16"):
        train(make_cfg([*TINY, "trainer.precision=float16"], output="bad"))


def test_precision_auto_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    from bearcat import experiment

    monkeypatch.setattr(experiment, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert experiment.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(experiment, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert experiment.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(experiment, "cpu_flags", lambda: {"avx2", "avx512f"})  # emulated there: slower
    assert experiment.resolve_precision("auto") == "float32"
    assert experiment.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert experiment.resolve_precision(None) == "float32"
