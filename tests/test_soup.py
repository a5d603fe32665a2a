"""bearcat.soup: two fine-tunes of one model averaged into one bundle that reads like any
other, scored against its parts on labelled images; models that cannot be averaged are
refused by name."""
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from bearcat.bundle import Predictor, load_keras, resolve_model
from bearcat.evaluate import evaluate
from bearcat.soup import soup
from bearcat.train import train
from tests.conftest import CONF

TINY = ["debug=fast", "dataset.train_size=96", "trainer.epochs=1"]


def soup_cfg(models, out, check=None):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="soup", overrides=[f"models=[{','.join(map(str, models))}]", f"out={out}",
                                                      f"check={check}" if check else "check=null"])


def labelled_folder(tmp_path) -> Path:
    """Captchas like the tiny runs' (other seed), copied under LABEL_n.png names."""
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=TINY)
    made = instantiate(cfg.dataset, train_size=4, val_size=4, test_size=24, seed=99,
                       cache_dir=str(tmp_path / "check_cache"))
    folder = tmp_path / "check"
    folder.mkdir()
    for i, (path, label) in enumerate(made.test):
        shutil.copy2(path, folder / f"{label}_{i}{Path(path).suffix}")
    return folder


def test_two_fine_tunes_average_into_a_bundle_that_reads(make_cfg, trained_run, tmp_path):
    base = trained_run["output_dir"] / "model"
    runs = [tmp_path / f"seed{s}" for s in (1, 2)]
    ids = [train(make_cfg([*TINY, f"init_from={base}", f"trainer.seed={seed}"], output=run.name))["mlflow_run_id"]
           for seed, run in zip((1, 2), runs)]
    check = labelled_folder(tmp_path)
    models = [ids[0], runs[1]]  # an MLflow run id and a run folder
    summary = soup(soup_cfg(models, tmp_path / "soup", check))

    parts = [load_keras(run / "model" / "model.keras").get_weights() for run in runs]
    mixed = load_keras(tmp_path / "soup" / "model.keras").get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(*parts))  # two different models
    for a, b, m in zip(*parts, mixed):
        np.testing.assert_allclose(m, (a + b) / 2, rtol=1e-6, atol=1e-7)
    meta = json.loads((tmp_path / "soup" / "bundle.json").read_text())
    assert meta["soup_of"] == [str(m) for m in models]
    assert meta["vocabulary"] == json.loads((runs[0] / "model" / "bundle.json").read_text())["vocabulary"]

    # the scores it logs are what each bundle reads on the labelled folder
    files = sorted(check.iterdir())
    labels = [f.name.split("_")[0] for f in files]

    def accuracy(folder):
        return np.mean([r["result"] == label for r, label in zip(Predictor(folder).predict(files), labels)])

    assert summary["check_images"] == len(files) == 24
    assert summary["model_accuracy"] == pytest.approx([accuracy(r / "model") for r in runs])
    assert summary["soup_accuracy"] == pytest.approx(accuracy(tmp_path / "soup"))

    # its MLflow run holds those scores and the bundle; the run id names the soup like a folder
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.info.run_name == "soup" and run.data.tags["bearcat.task"] == "soup"
    assert run.data.metrics["check_accuracy"] == pytest.approx(summary["soup_accuracy"])
    assert [run.data.metrics[f"check_accuracy_model_{i}"] for i in (0, 1)] == pytest.approx(summary["model_accuracy"])
    assert run.data.params["models"] == str([str(m) for m in models])
    assert meta["mlflow_run_id"] == summary["mlflow_run_id"]
    fetched = resolve_model(summary["mlflow_run_id"], str(tmp_path / "fetched"))
    assert fetched != tmp_path / "soup" and json.loads((fetched / "bundle.json").read_text()) == meta
    assert accuracy(fetched) == pytest.approx(summary["soup_accuracy"])

    # with its first model's training config, `evaluate run_id=<soup>` scores it on that run's
    # test split: the same as the soup's folder with that config beside it
    by_id = evaluate(make_cfg([f"run_id={summary['mlflow_run_id']}", "latency_images=2"], "evaluate", "eval1"))
    shutil.copy2(runs[0] / "config.yaml", tmp_path / "config.yaml")
    by_folder = evaluate(make_cfg([f"checkpoint={tmp_path / 'soup'}", "latency_images=2"], "evaluate", "eval2"))
    assert by_id["test_images"] == by_folder["test_images"] > 0
    assert by_id["test_accuracy"] == by_folder["test_accuracy"]
    # a soup of bare bundles has no training config: evaluate asks for the data by name
    bare = tmp_path / "bare" / "model"  # nothing beside it
    shutil.copytree(runs[1] / "model", bare)
    plain = soup(soup_cfg([bare, ids[0]], tmp_path / "soup2"))
    assert "config.yaml" not in {a.path for a in mlflow.MlflowClient().list_artifacts(plain["mlflow_run_id"])}
    with pytest.raises(ValueError, match="no dataset: pass dataset="):
        evaluate(make_cfg([f"run_id={plain['mlflow_run_id']}"], "evaluate", "eval3"))


def test_models_that_cannot_be_averaged_are_named(trained_run, tmp_path):
    base = trained_run["output_dir"] / "model"
    other = tmp_path / "other"
    shutil.copytree(base, other)
    meta = json.loads((other / "bundle.json").read_text())
    meta["vocabulary"] = meta["vocabulary"][:-1] + ["#"]
    (other / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"models: {other} has another vocabulary than {base}"):
        soup(soup_cfg([base, other], tmp_path / "out"))
    with pytest.raises(ValueError, match="at least two models"):
        soup(soup_cfg([base], tmp_path / "out"))
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):  # models=A, not a list
        one = compose(config_name="soup", overrides=[f"models={base}", f"out={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match=f"models=\\['{base}'\\]: name at least two"):
        soup(one)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"out={used}: the folder is not empty"):
        soup(soup_cfg([base, base], used))
    assert (used / "keep.txt").read_text() == "mine"
    boxes = tmp_path / "boxes"
    shutil.copytree(base, boxes)
    meta = json.loads((boxes / "bundle.json").read_text())
    meta["mode"]["name"] = "efficientdet"
    (boxes / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"models: {boxes} is a click-captcha"):
        soup(soup_cfg([base, boxes], tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="models=.*nowhere"):
        soup(soup_cfg([base, tmp_path / "nowhere"], tmp_path / "out"))
    # one model named twice, as its run folder and as its bundle: it would count double
    with pytest.raises(ValueError, match=f"models: {trained_run['output_dir']} and {base} hold the same weights"):
        soup(soup_cfg([trained_run["output_dir"], base], tmp_path / "out"))
    assert not (tmp_path / "out").exists()
