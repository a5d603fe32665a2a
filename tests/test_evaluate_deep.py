"""Deeper evaluation: confusions, confidence histogram, accuracy above the threshold,
latency, failures gallery and Grad-CAM, logged to MLflow."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bearcat.analysis import (alignment, by_length, confidence_report, confusions, failure_kind, failure_kinds,
                              label_suspects, per_symbol, write_predictions, write_report, write_suspects)
from bearcat.evaluate import evaluate
from conftest import CONF


def last_feature_map_layer(model=None) -> str:
    """cnn_small's last block ends in a pool (its layers are named block<i>_...)."""
    pools = OmegaConf.load(f"{CONF}/backbone/cnn_small.yaml").pools
    last = len(pools) - 1
    return f"block{last}_pool" if tuple(pools[last]) != (1, 1) else f"block{last}_0_relu"


def test_alignment_and_confusions():
    assert alignment("ab12", "ab1Z") == [("a", "a"), ("b", "b"), ("1", "1"), ("2", "Z")]
    assert alignment("ab12", "b12") == [("a", ""), ("b", "b"), ("1", "1"), ("2", "2")]
    assert alignment("ab", "abc") == [("a", "a"), ("b", "b"), ("", "c")]
    pairs = confusions(["ab12", "ab12", "o0o0", "xy"], ["ab1Z", "b12", "0000", "xy"])
    assert pairs[0] == {"truth": "o", "read": "0", "count": 2}
    assert {"truth": "2", "read": "Z", "count": 1} in pairs and {"truth": "a", "read": "", "count": 1} in pairs
    assert sum(p["count"] for p in pairs) == 4


def test_per_character_recall_and_accuracy_by_length():
    truths, preds = ["O0A", "0OAB", "AB", "OOAB0"], ["00A", "0OAB", "A", "OOAB0"]
    rows = {r["truth"]: r for r in per_symbol(truths, preds)}
    assert rows["O"] == {"truth": "O", "count": 4, "right": 3, "recall": 0.75, "read_as": "0"}
    assert rows["B"] == {"truth": "B", "count": 3, "right": 2, "recall": 0.6667, "read_as": ""}  # missed once
    assert rows["0"]["recall"] == 1.0 and rows["0"]["read_as"] is None and rows["A"]["count"] == 4
    assert [r["truth"] for r in per_symbol(truths, preds)][:2] == ["B", "O"]  # hardest first
    assert per_symbol(["ab"], ["abc"]) == [{"truth": "a", "count": 1, "right": 1, "recall": 1.0, "read_as": None},
                                           {"truth": "b", "count": 1, "right": 1, "recall": 1.0, "read_as": None}]
    assert by_length(truths, preds) == [{"length": 2, "count": 1, "accuracy": 0.0},
                                        {"length": 3, "count": 1, "accuracy": 0.0},
                                        {"length": 4, "count": 1, "accuracy": 1.0},
                                        {"length": 5, "count": 1, "accuracy": 1.0}]
    # classification: whole class names are the units, never their letters
    classes = per_symbol(["star", "star", "ring"], ["ring", "star", "ring"], text=False)
    assert classes[0] == {"truth": "star", "count": 2, "right": 1, "recall": 0.5, "read_as": "ring"}
    assert confusions(["star"], ["ring"], text=False) == [{"truth": "star", "read": "ring", "count": 1}]


def test_report_tables_by_mode_kind_and_predictions_csv(tmp_path):
    results = [{"result": r, "confidence": c} for r, c in [("学习", 0.9), ("AB", 0.4), ("ABC", 0.8)]]
    metrics, files = write_report(tmp_path / "text", ["学习", "AB", "ABD"], results, 0.7)
    assert {f.name for f in files} == {"confusions.json", "per_character.json", "by_length.json",
                                       "failure_kinds.json", "confidence_histogram.json",
                                       "confidence_histogram.png", "answer_thresholds.json", "answer_thresholds.md"}
    # two of three right, the wrong one at 0.8: 95% right only above it, at 0.9 (a third answered)
    assert metrics["answered_at_95"] == pytest.approx(1 / 3) and metrics["threshold_at_95"] == 0.9
    assert metrics["accuracy_length_2"] == 1.0 and metrics["accuracy_length_3"] == 0.0
    assert metrics["failures_substituted"] == 1
    per_char = json.loads((tmp_path / "text" / "per_character.json").read_text(encoding="utf-8"))
    assert {"truth": "学", "count": 1, "right": 1, "recall": 1.0, "read_as": None} in per_char
    metrics, files = write_report(tmp_path / "classes", ["star", "ring"], results[:2], 0.7, text=False)
    assert {f.name for f in files} == {"confusions.json", "per_class.json", "confidence_histogram.json",
                                       "confidence_histogram.png", "answer_thresholds.json", "answer_thresholds.md"}
    assert not any(k.startswith(("failures_", "accuracy_length_")) for k in metrics)
    csv_path = write_predictions(tmp_path / "p.csv", ["a/学习_1.png", "b.png", "c.png"], ["学习", "AB", "ABD"],
                                 results)
    assert csv_path.read_text(encoding="utf-8").splitlines() == [
        "file,label,prediction,confidence,right", "a/学习_1.png,学习,学习,0.9,1", "b.png,AB,AB,0.4,1",
        "c.png,ABD,ABC,0.8,0"]


def test_failure_kinds():
    assert failure_kind("ab12", "ab12") is None
    assert failure_kind("ab12", "ab1Z") == "substituted"
    assert failure_kind("aab1", "ab1") == "missed_doubled"  # CTC: two equal neighbours read as one
    assert failure_kind("abb", "ab") == "missed_doubled"
    assert failure_kind("ab12", "a12") == "missed"
    assert failure_kind("ab", "abc") == "extra"
    assert failure_kind("ab12", "xb1") == "mixed"  # one substituted, one missed: not only missed
    assert failure_kinds(["ab", "aa", "ab", "ab"], ["ab", "a", "b", "ax"]) == {
        "substituted": 1, "missed_doubled": 1, "missed": 1, "extra": 0, "mixed": 0}


def test_label_suspects_are_confident_failures_copied_for_review(tmp_path):
    from PIL import Image

    source = tmp_path / "mine"
    source.mkdir()
    paths = []
    for name in ("ab_1.png", "cd_2.png", "ef_3.png", "gh_4.png"):
        Image.new("L", (20, 10), 200).save(source / name)
        paths.append(str(source / name))
    before = {p: (source / p).read_bytes() for p in ("ab_1.png", "cd_2.png")}
    results = [{"result": r, "confidence": c} for r, c in [("ab", 0.99), ("cb", 0.97), ("ex", 0.5), ("gk", 0.999)]]
    truths = ["ab", "cd", "ef", "gh"]
    suspects = label_suspects(truths, results, 0.95)
    assert [(truths[i], results[i]["result"]) for i in suspects] == [("gh", "gk"), ("cd", "cb")]  # most confident first
    images = np.zeros((4, 10, 20, 1), np.uint8)
    written = write_suspects(tmp_path / "analysis", suspects, paths, truths, results, images)
    rows = (tmp_path / "analysis" / "label_suspects.csv").read_text().splitlines()
    assert rows == ["file,label,prediction,confidence", f"{paths[3]},gh,gk,0.999", f"{paths[1]},cd,cb,0.97"]
    assert [w.name for w in written] == ["label_suspects.csv", "label_suspects.png"]
    assert sorted(p.name for p in (tmp_path / "analysis" / "label_suspects").iterdir()) == ["cd_2.png", "gh_4.png"]
    assert sorted(p.name for p in source.iterdir()) == ["ab_1.png", "cd_2.png", "ef_3.png", "gh_4.png"]
    assert all((source / p).read_bytes() == b for p, b in before.items())
    assert write_suspects(tmp_path / "none", [], paths, truths, results, images) == [
        tmp_path / "none" / "label_suspects.csv"]


def test_confidence_report_counts_right_and_wrong_per_bin():
    truths = ["a", "b", "c", "d", "e"]
    results = [{"result": r, "confidence": c} for r, c in
               [("a", 0.95), ("b", 0.91), ("x", 0.85), ("d", 0.35), ("y", 0.05)]]
    report = confidence_report(truths, results, threshold=0.8)
    assert sum(report["right"]) == 3 and sum(report["wrong"]) == 2
    assert report["right"][9] == 2 and report["wrong"][8] == 1 and report["right"][3] == 1 and report["wrong"][0] == 1
    assert report["confident_fraction"] == pytest.approx(3 / 5)
    assert report["confident_accuracy"] == pytest.approx(2 / 3)
    assert report["unsure_accuracy"] == pytest.approx(1 / 2)


def test_evaluating_generated_data_draws_only_the_scored_split(tmp_path):
    from bearcat.evaluate import evaluation_config
    from bearcat.experiment import load_sources

    def cfg_for(split):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose(config_name="evaluate", overrides=[
                "checkpoint=unused", "dataset=synthetic", "dataset.train_size=5000", "dataset.val_size=8",
                "dataset.test_size=12", f"split={split}", f"paths.cache_dir={tmp_path / 'cache'}"])

    meta = {"preprocess": {"height": 32, "width": 96, "channels": 1}}
    cfg = evaluation_config(cfg_for("test"), None, meta)
    assert (cfg.dataset.train_size, cfg.dataset.val_size, cfg.dataset.test_size) == (0, 0, 12)
    splits = load_sources(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (0, 0, 12)
    drawn = [p for p in (tmp_path / "cache").rglob("*.png")]
    assert len(drawn) == 12 and all(p.parent.name == "test" for p in drawn)
    everything = evaluation_config(cfg_for("all"), None, meta)
    assert (everything.dataset.train_size, everything.dataset.val_size) == (5000, 8)
    with pytest.raises(ValueError, match="split=tset: choose train, val, test or all"):
        evaluation_config(cfg_for("tset"), None, meta)
    from bearcat.evaluate import evaluate

    with pytest.raises(ValueError, match="split=tset: choose"):  # before the model (here none) is read
        evaluate(cfg_for("tset"))


def test_answer_thresholds_say_what_answering_only_confident_readings_costs():
    """Ten readings, one wrong at confidence 0.95: per threshold the share answered, their
    accuracy, captchas per solved and wrong answers per solved (by hand); per target the
    lowest threshold whose answers reach it, never splitting readings of equal confidence."""
    from bearcat.analysis import answer_thresholds, answer_thresholds_markdown

    confidences = [0.99, 0.98, 0.97, 0.96, 0.9, 0.8, 0.7, 0.6, 0.5, 0.95]
    results = [{"result": "ab" if k < 9 else "ax", "confidence": c} for k, c in enumerate(confidences)]
    found = answer_thresholds(["ab"] * 10, results, thresholds=(0.5, 0.9, 0.99), targets=(0.8, 0.95))
    assert found["thresholds"] == [
        {"threshold": 0.5, "answered": 1.0, "accuracy": 0.9, "captchas_per_solved": pytest.approx(1 / 0.9),
         "wrong_per_solved": pytest.approx(1 / 9)},
        {"threshold": 0.9, "answered": 0.6, "accuracy": pytest.approx(5 / 6), "captchas_per_solved": pytest.approx(2.0),
         "wrong_per_solved": pytest.approx(0.2)},
        {"threshold": 0.99, "answered": 0.1, "accuracy": 1.0, "captchas_per_solved": pytest.approx(10.0),
         "wrong_per_solved": 0.0}]
    # 0.8: all ten read 0.9 right; 0.95: only the four above the wrong one (five with it read 0.8)
    assert found["targets"] == [
        {"accuracy": 0.8, "threshold": 0.5, "answered": 1.0, "accuracy_reached": 0.9},
        {"accuracy": 0.95, "threshold": 0.96, "answered": 0.4, "accuracy_reached": 1.0}]
    # a right and a wrong reading equally sure: both answered or neither
    tied = answer_thresholds(["a", "a", "a"], [{"result": "a", "confidence": 0.9}, {"result": "a", "confidence": 0.8},
                                               {"result": "b", "confidence": 0.8}], targets=(0.99,))
    assert tied["targets"] == [{"accuracy": 0.99, "threshold": 0.9, "answered": pytest.approx(1 / 3),
                                "accuracy_reached": 1.0}]
    never = answer_thresholds(["a"], [{"result": "b", "confidence": 0.99}], targets=(0.95,))
    assert never["targets"][0]["threshold"] is None and never["thresholds"][0]["captchas_per_solved"] is None
    text = answer_thresholds_markdown(found)
    assert "| 0.9 | 60.0 | 83.33 | 2.00 | 0.200 |" in text
    assert "- right 95% of the time: answer at confidence 0.9600 or more, 40.0% of the images" in text


def test_evaluate_logs_deep_metrics_and_gradcam(trained_run, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            f"run_id={trained_run['run_id']}", "gradcam=true", "gradcam_images=4", "latency_images=5",
            "suspect_confidence=0",  # a barely trained model: list every failure
            "answer_threshold=0.42",  # a confidence of one's own, added to the answer thresholds
            f"paths.output_dir={tmp_path / 'eval'}", f"paths.cache_dir={trained_run['root'] / 'cache'}"])
    with caplog.at_level(logging.INFO, logger="bearcat"):
        metrics = evaluate(cfg)
    assert (f"evaluation written to {tmp_path / 'eval'} (metrics.json, analysis/, predictions/), MLflow run "
            f"{metrics['mlflow_run_id']} nested under {trained_run['run_id']}") in caplog.messages
    for key in ("test_accuracy", "test_char_accuracy", "test_cer", "test_accuracy_confident", "test_confident_fraction",
                "test_latency_ms_p50", "test_latency_ms_p95", "test_failures"):
        assert key in metrics, key
    test_size = OmegaConf.load(f"{CONF}/debug/fast.yaml").dataset.test_size
    assert metrics["test_images"] == test_size
    assert metrics["test_failures"] == round((1 - metrics["test_accuracy"]) * test_size)
    assert 0 < metrics["test_latency_ms_p50"] <= metrics["test_latency_ms_p95"]
    out = tmp_path / "eval"
    answering = json.loads((out / "analysis" / "answer_thresholds.json").read_text())
    assert answering["images"] == test_size and [r["threshold"] for r in answering["thresholds"]] == [
        0.42, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert [metrics[f"test_answered_at_{k}"] for k in (95, 99)] == [t["answered"] for t in answering["targets"]]
    assert (out / "analysis" / "answer_thresholds.md").read_text().startswith("Answering only readings")
    histogram = json.loads((out / "analysis" / "confidence_histogram.json").read_text())
    assert sum(histogram["right"]) + sum(histogram["wrong"]) == test_size
    pairs = json.loads((out / "analysis" / "confusions.json").read_text())
    assert all(p["truth"] != p["read"] and p["count"] >= 1 for p in pairs)
    kinds = json.loads((out / "analysis" / "failure_kinds.json").read_text())
    assert sum(kinds.values()) == metrics["test_failures"]
    assert all(metrics[f"test_failures_{k}"] == v for k, v in kinds.items())
    explained = json.loads((out / "gradcam" / "gradcam.json").read_text())
    assert (explained["layer"], explained["method"], explained["images"]) == (last_feature_map_layer(), "hirescam", 4)
    readings = explained["readings"]
    assert len(readings) == 4
    wrong = [r["result"] != r["label"] for r in readings]
    assert wrong == sorted(wrong, reverse=True) and sum(wrong) == min(4, metrics["test_failures"])  # failures first
    for r in readings:  # one map per character the decoder read, in its order
        assert "".join(c["char"] for c in r["characters"]) == r["result"]
        assert all(c["centre_x"] is None or 0 <= c["centre_x"] <= 96 for c in r["characters"])
        assert all(0 < c["probability"] <= 1 for c in r["characters"])
    assert metrics["test_label_suspects"] == metrics["test_failures"]
    rows = (out / "analysis" / "label_suspects.csv").read_text().splitlines()
    assert rows[0] == "file,label,prediction,confidence" and len(rows) == 1 + metrics["test_failures"]
    assert len(list((out / "analysis" / "label_suspects").iterdir())) == metrics["test_failures"]
    rows = (out / "analysis" / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + test_size and sum(int(r.rsplit(",", 1)[1]) for r in rows[1:]) == (
        test_size - metrics["test_failures"])
    lengths = json.loads((out / "analysis" / "by_length.json").read_text())
    assert sum(r["count"] for r in lengths) == test_size
    assert all(metrics[f"test_accuracy_length_{r['length']}"] == r["accuracy"] for r in lengths)
    per_char = json.loads((out / "analysis" / "per_character.json").read_text())
    labels = [r.split(",")[1] for r in rows[1:]]
    assert sum(r["count"] for r in per_char) == sum(map(len, labels))

    client = mlflow.tracking.MlflowClient(trained_run["tracking_uri"])
    logged = {a.path for folder in ("analysis", "gradcam", "predictions")
              for a in client.list_artifacts(metrics["mlflow_run_id"], folder)}
    assert {"analysis/confusions.json", "analysis/failure_kinds.json", "analysis/confidence_histogram.png",
            "analysis/per_character.json", "analysis/by_length.json", "analysis/predictions.csv",
            "gradcam/gradcam.png"} <= logged
    assert ("predictions/failures_gallery.png" in logged) == (metrics["test_failures"] > 0)
    # the output folder mirrors the run's artifact paths
    files = [a.path for folder in ("analysis", "gradcam", "predictions")
             for a in client.list_artifacts(metrics["mlflow_run_id"], folder) if not a.is_dir]
    assert files and all((out / path).is_file() for path in files)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == trained_run["run_id"]
    assert "test_latency_ms_p50" in run.data.metrics


def test_gradcam_heatmaps_for_a_chosen_layer(trained_run):
    import keras

    from bearcat.gradcam import conv_layer, explain

    model = keras.models.load_model(trained_run["output_dir"] / "model" / "model.keras", compile=False)
    h, w, c = model.input_shape[1:]
    images = np.random.default_rng(0).integers(0, 256, (3, h, w, c)).astype(np.uint8)
    for method in ("hirescam", "gradcam"):
        found = explain(model, images, "block2_0_relu", method, merge_repeats=True)
        assert found.layer == "block2_0_relu" and found.maps.shape == (3, h, w)
        assert found.maps.min() >= 0 and found.maps.max() <= 1
        assert len(found.characters) == 3 and all(m.shape == (h, w) for chars in found.characters for _, m in chars)
    assert conv_layer(model).name == last_feature_map_layer(model)
    with pytest.raises(ValueError, match="gradcam_layer=nope: no such layer"):
        conv_layer(model, "nope")
    with pytest.raises(ValueError, match="gradcam_method=cam: choose one of hirescam, gradcam"):
        explain(model, images, method="cam")


@pytest.mark.parametrize("override, message", [("gradcam_method=cam", "gradcam_method=cam: choose one of"),
                                               ("gradcam_images=0", "gradcam_images=0: the number of test images")])
def test_bad_heat_map_settings_are_refused_by_name(trained_run, tmp_path, monkeypatch, override, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            f"run_id={trained_run['run_id']}", "gradcam=true", override, f"paths.output_dir={tmp_path / 'eval'}"])
    with pytest.raises(ValueError, match=message):
        evaluate(cfg)
    assert not (tmp_path / "eval" / "analysis").exists()  # refused before any work


@pytest.mark.parametrize("override, message", [
    ("batch_size=abc", "batch_size=abc: images per prediction batch, at least 1"),
    ("latency_images=-1", "latency_images=-1: a whole number, 0 or more"),
    ("gallery_size=many", "gallery_size=many: a whole number, 0 or more"),
    ("low_confidence=70", "low_confidence=70: a number from 0 to 1$"),
    ("suspect_confidence=-0.5", "suspect_confidence=-0.5: a number from 0 to 1$"),
    # was a float() traceback after the whole evaluation
    ("answer_threshold=abc", "answer_threshold=abc: a number from 0 to 1, or null"),
    ("split=wrong", "split=wrong: choose train, val, test or all"),
    ("dataset=folder dataset.root=NOWHERE", "dataset.root=.*nowhere: no such folder"),
])
def test_bad_evaluation_settings_are_refused_before_the_model_is_looked_for(tmp_path, override, message):
    """The model named is not there: each setting is named first, so nothing was loaded."""
    given = [f"model={tmp_path / 'no_model'}", f"paths.output_dir={tmp_path / 'eval'}"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        bad = compose(config_name="evaluate",
                      overrides=[*given, *override.replace("NOWHERE", str(tmp_path / "nowhere")).split()])
        good = compose(config_name="evaluate", overrides=given)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        evaluate(bad)
    with pytest.raises(FileNotFoundError, match="model=.*no_model: no such file or folder"):  # the defaults pass
        evaluate(good)


def test_character_positions_follow_the_decoder():
    from bearcat.gradcam import character_positions

    path = [0, 3, 3, 0, 3, 5, 5, 0]
    assert character_positions(path, merge_repeats=True) == [[1, 2], [4], [5, 6]]  # CTC: "LL" needs the blank
    assert character_positions(path, merge_repeats=False) == [[1], [2], [4], [5], [6]]  # a position each
    assert character_positions([0, 0, 0], merge_repeats=True) == []


def strip_reader():
    """A model whose output position k sees only image columns 8k..8k+7 and reads class 1
    at each of its 4 positions: the truth a per-character map must show."""
    import keras
    from keras import layers

    image = keras.Input((8, 32, 1))
    scaled = layers.Rescaling(1 / 255)(image)
    features = layers.Conv2D(4, 1, activation="relu", kernel_initializer="ones", bias_initializer="ones",
                             name="features")(scaled)
    strips = layers.Reshape((4, 4))(layers.AveragePooling2D((8, 8))(features))  # (positions, channels)
    weights = np.zeros((4, 3), np.float32)
    weights[:, 1] = 0.1  # every channel speaks for class 1
    probs = layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.Constant(weights),
                         bias_initializer=keras.initializers.Constant([0.0, 5.0, 0.0]))(strips)
    return keras.Model(image, probs)


def test_each_character_map_covers_the_columns_its_position_reads():
    from bearcat.gradcam import centre_x, explain

    model = strip_reader()
    images = np.random.default_rng(0).integers(1, 256, (2, 8, 32, 1)).astype(np.uint8)
    found = explain(model, images, "features", method="hirescam", merge_repeats=False)
    for chars, chances in zip(found.characters, found.probabilities):
        assert [cid for cid, _ in chars] == [1, 1, 1, 1]
        # each position: softmax of logits 5 + 0.1 * (mean feature) against two of about 0: over 0.98
        assert len(chances) == 4 and all(0.98 < p < 1 for p in chances)
        for k, (_, heat) in enumerate(chars):
            inside = heat[:, 8 * k:8 * k + 8].sum()
            assert heat.sum() > 0 and inside / heat.sum() > 0.99, (k, inside, heat.sum())
            assert 8 * k <= centre_x(heat) <= 8 * k + 8
    # classic Grad-CAM weights each channel by its mean gradient and so paints every column
    spread = explain(model, images, "features", method="gradcam").characters[0][0][1]
    assert spread[:, :8].sum() / spread.sum() < 0.5
    # CTC merges the run "1111" into one character, read from all four strips
    merged = explain(model, images, "features", method="hirescam", merge_repeats=True)
    assert all(len(chars) == 1 for chars in merged.characters)
    assert all((heat.sum(axis=0) > 0).mean() > 0.5 for chars in merged.characters for _, heat in chars)


def test_a_reading_other_than_the_greedy_one_is_explained_by_its_own_alignment():
    """A beam search may read "11" where the greedy path reads "1": the maps then follow the
    reading's most probable alignment, two characters split by a blank, each covering only
    the strips of the positions that wrote it."""
    from bearcat.gradcam import explain
    from bearcat.modes.ctc import best_path

    model = strip_reader()
    images = np.random.default_rng(1).integers(1, 256, (2, 8, 32, 1)).astype(np.uint8)
    found = explain(model, images, "features", method="hirescam", merge_repeats=True, readings=[[1, 1], [1]])
    assert len(found.characters[1]) == 1  # the greedy reading, as without readings
    first, second = found.characters[0]
    assert first[0] == second[0] == 1
    path = best_path(model.predict(images[:1], verbose=0)[0], [1, 1]).tolist()
    assert path.count(0) == 1 and path[0] == path[-1] == 1
    gap = path.index(0)
    for heat, strips in ((first[1], range(gap)), (second[1], range(gap + 1, 4))):
        inside = sum(heat[:, 8 * k:8 * k + 8].sum() for k in strips)
        assert heat.sum() > 0 and inside / heat.sum() > 0.99
    assert 0 < found.probabilities[0][0] < 1 and len(found.probabilities[0]) == 2


def test_labels_the_model_cannot_produce_are_scored_as_failures(trained_run, swust_copy, tmp_path, monkeypatch):
    """The generated-captcha model reads 0-9A-Z; swust's labels are lower case. Every image
    is scored, those whose label holds a letter as failures (counted), none left out: leaving
    them out made a model that lacks a character look better than it reads the set."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            f"run_id={trained_run['run_id']}", "dataset=folder", f"dataset.root={swust_copy}", "split=all",
            "latency_images=2", f"paths.output_dir={tmp_path / 'eval'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    labels = [p.name.split("_")[0] for p in sorted(swust_copy.iterdir())]
    beyond = sum(any(c.islower() for c in label) for label in labels)
    assert 0 < beyond < len(labels)  # some labels are digits only
    metrics = evaluate(cfg)
    assert metrics["test_images"] == len(labels) == 120
    assert metrics["test_unreachable_labels"] == beyond
    assert metrics["test_accuracy"] <= (len(labels) - beyond) / len(labels)
    rows = (tmp_path / "eval" / "analysis" / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + len(labels)


def test_two_evaluations_are_compared_image_by_image(trained_run, tmp_path, monkeypatch):
    """`python -m bearcat.compare`: an evaluation against copies of its readings with some
    wrong ones set right: the counts, b - a with its interval, the exact McNemar p (by hand:
    3 to 0 is 2/8, 7 to 0 is 2/128) and the verdict; readings given as an MLflow run id, a
    folder and a CSV, of an evaluation or of a training run (its test split, read as its
    evaluation reads it); refused by name: a run without readings, another label for an
    image, no image in common, a missing folder."""
    import csv
    import subprocess
    import sys

    from bearcat.compare import compare

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            f"run_id={trained_run['run_id']}", "latency_images=1", f"paths.output_dir={tmp_path / 'eval'}",
            f"paths.cache_dir={trained_run['root'] / 'cache'}"])
    metrics = evaluate(cfg)
    readings = tmp_path / "eval" / "analysis" / "predictions.csv"
    with open(readings, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    wrong = [k for k, r in enumerate(rows) if r["prediction"] != r["label"]]
    assert len(wrong) >= 7  # a barely trained model

    def variant(name: str, fixed: int, change=None):
        """A folder holding a copy of the readings with the first `fixed` wrong ones set right."""
        copy = [dict(r) for r in rows]
        for k in wrong[:fixed]:
            copy[k]["prediction"], copy[k]["right"] = copy[k]["label"], "1"
        if change:
            change(copy)
        path = tmp_path / name / "analysis" / "predictions.csv"
        path.parent.mkdir(parents=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(copy)
        return tmp_path / name

    done = subprocess.run([sys.executable, "-m", "bearcat.compare", f"a={metrics['mlflow_run_id']}",
                           f"b={variant('b3', 3)}", f"out={tmp_path / 'cmp'}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    n = len(rows)
    assert result["images"] == n and result["a"]["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert result["b"]["accuracy"] == pytest.approx(metrics["test_accuracy"] + 3 / n)
    assert (result["only_a_right"], result["only_b_right"], result["neither_right"]) == (0, 3, len(wrong) - 3)
    assert result["difference"] == pytest.approx(3 / n) and result["mcnemar_p"] == 0.25
    assert result["difference_ci_low"] < 0 < result["difference_ci_high"]  # 3 images could be chance
    assert [d["file"] for d in result["disagreements"]] == [rows[k]["file"] for k in wrong[:3]]
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Verdict: b is ahead, but by no more than chance could give" in text and "McNemar p = 0.25" in text
    assert text in done.stdout

    better = compare(str(readings), str(variant("b7", 7)), tmp_path / "cmp7")  # a CSV and a folder
    assert better["mcnemar_p"] == 2 / 128 and better["verdict"].startswith("b reads better than a")
    assert better["difference_ci_low"] > 0
    same = compare(str(readings), str(tmp_path / "eval"), tmp_path / "same")
    assert (same["only_a_right"], same["only_b_right"], same["mcnemar_p"]) == (0, 0, 1.0)

    # a training run's own readings of its test split (its run id, or its folder): the evaluation's
    trained = compare(trained_run["run_id"], str(tmp_path / "eval"), tmp_path / "trained")
    assert (trained["images"], trained["only_a_right"], trained["only_b_right"]) == (n, 0, 0)
    assert trained["a"] == trained["b"]
    assert compare(str(trained_run["output_dir"]), str(readings), tmp_path / "trained_dir")["images"] == n
    with pytest.raises(FileNotFoundError, match="no MLflow run with analysis/predictions.csv or predictions/test"):
        compare("0" * 32, str(readings), tmp_path / "x")
    relabelled = variant("relabelled", 0, lambda copy: copy[0].update(label=copy[0]["label"] + "X"))
    with pytest.raises(ValueError, match=f"{rows[0]['file']}: labelled"):
        compare(str(readings), str(relabelled), tmp_path / "x")
    # the same images in another folder (another cache): matched by file name
    moved = variant("moved", 3, lambda copy: [r.update(file="other/" + Path(r["file"]).name) for r in copy])
    moved_result = compare(str(readings), str(moved), tmp_path / "moved")
    assert (moved_result["matched_by"], moved_result["only_b_right"]) == ("file name", 3)
    assert "Matched by file name" in (tmp_path / "moved" / "compare.md").read_text()
    assert result["matched_by"] == "path"
    elsewhere = variant("elsewhere", 0, lambda copy: [r.update(file="other/x" + Path(r["file"]).name) for r in copy])
    with pytest.raises(ValueError) as no_common:
        compare(str(readings), str(elsewhere), tmp_path / "x")
    assert str(no_common.value) == (  # what each side read, so the user sees the two data sets
        f"a and b share no image file (a read {n} images ({rows[0]['file']}, ...); b read {n} images "
        f"(other/x{Path(rows[0]['file']).name}, ...)): compare readings of the same data (the same dataset settings "
        "and split; evaluate both models on it)")
    with pytest.raises(FileNotFoundError, match="b=.*nowhere: no such file or folder"):
        compare(str(readings), str(tmp_path / "nowhere"), tmp_path / "x")
