"""Recognition modes: every mode x cnn_small trains one tiny epoch and logs test_accuracy to
MLflow (and exports to 8-bit TFLite); each mode's labels, decoding and confidence rule;
num_classes on generated tiles and on one sub-folder per class."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from bearcat.bundle import Predictor
from bearcat.data.labels import Vocabulary
from bearcat.data.tiles import SHAPES, tiles
from bearcat.evaluate import evaluate
from bearcat.experiment import build_model, mode_options
from bearcat.metrics import wilson_interval
from bearcat.modes import build_mode
from bearcat.modes.ordinary import interval_confidence
from bearcat.train import run_metric_names, train

VOCAB = Vocabulary("ABC")


def int8_reads(make_cfg, run_dir: Path, images: list[Path]) -> list[dict]:
    """The run exported as `tflite_int8` (its parity check passed), read back through it."""
    from bearcat.export import export
    from bearcat.runtime import load_predictor

    out = run_dir.parent / "int8"
    summary = export(make_cfg([f"checkpoint={run_dir}", "format=tflite_int8", f"output_dir={out}"],
                              config_name="export", output="export"))
    assert summary["parity"]["tflite_int8"]["agreement"] >= 0.9
    return load_predictor(out, "tflite_int8").predict(images)


def logged_metrics(metrics) -> dict:
    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    return run.data.metrics


@pytest.mark.parametrize("mode", ["ctc", "ctc_tiny", "ordinary"])
def test_text_mode_trains_one_epoch_and_logs(make_cfg, mode, caplog):
    cfg = make_cfg(["debug=fast", f"mode={mode}", "backbone=cnn_small"])
    with caplog.at_level(logging.INFO, logger="bearcat.train"):
        metrics = train(cfg)
    sizes = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("images: train"))
    assert re.fullmatch(r"images: train \d+, val \d+, test \d+; vocabulary \d+ characters; max length \d+", sizes)
    logged = logged_metrics(metrics)
    for key in ("loss", "val_loss", "val_accuracy", "test_accuracy", "test_char_accuracy", "test_cer"):
        assert key in logged, key
    assert 0.0 <= logged["test_accuracy"] <= 1.0
    assert logged["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    # the 95% interval of the right readings among the test images: wide for a handful of them
    tested = int(cfg.dataset.test_size)
    right = round(logged["test_accuracy"] * tested)
    assert (logged["test_accuracy_ci_low"], logged["test_accuracy_ci_high"]) == pytest.approx(
        wilson_interval(right, tested))
    assert logged["test_accuracy_ci_high"] - logged["test_accuracy_ci_low"] > 0.15
    # every test image's reading, for bearcat.compare: as many right as the accuracy says
    rows = (Path(cfg.paths.output_dir) / "predictions" / "test_predictions.csv").read_text().splitlines()
    assert rows[0] == "file,label,prediction,confidence,right" and len(rows) == 1 + tested
    assert sum(int(r.rsplit(",", 1)[1]) for r in rows[1:]) == right
    # what optimized_metric is checked against before training is what the run returned
    assert run_metric_names(cfg) == sorted(set(metrics) - {"mlflow_run_id"})
    # the bundle serves the mode it was trained with
    predictor = Predictor(Path(cfg.paths.output_dir) / "model")
    assert predictor.mode.name == mode
    image = next((Path(cfg.paths.cache_dir) / "synthetic").glob("*/test/*.png"))
    (out,) = predictor.predict([image])
    assert set(out) == {"result", "confidence", "time_ms"} and 0.0 <= out["confidence"] <= 1.0
    assert set(out["result"]) <= set(predictor.mode.vocab.chars)
    # every text mode exports to 8-bit TFLite and reads through it
    (small,) = int8_reads(make_cfg, Path(cfg.paths.output_dir), [image])
    assert set(small) == set(out) and set(small["result"]) <= set(predictor.mode.vocab.chars)


def test_num_classes_on_tiles_logs_top1_and_top5(make_cfg, caplog):
    cfg = make_cfg(["debug=fast", "mode=num_classes", "dataset=tiles", "backbone=cnn_small"])
    with caplog.at_level(logging.INFO, logger="bearcat.train"):
        metrics = train(cfg)
    sizes = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("images: train"))
    assert sizes.endswith(f"; {len(SHAPES)} classes")  # classes, not "characters" of a "max length"
    logged = logged_metrics(metrics)
    assert run_metric_names(cfg) == sorted(set(metrics) - {"mlflow_run_id"})  # no test_cer to optimize here
    assert {"test_accuracy", "test_top5_accuracy", "val_accuracy"} <= set(logged)
    assert "test_char_accuracy" not in logged  # not a text mode
    assert 0.0 <= logged["test_accuracy"] <= logged["test_top5_accuracy"] <= 1.0
    # evaluate from the run id scores the same bundle on the same test split the same way
    eval_cfg = make_cfg([f"run_id={metrics['mlflow_run_id']}", "gradcam=true", "gradcam_images=3"],
                        config_name="evaluate", output="eval")
    ev = evaluate(eval_cfg)
    # a class has no characters: one heat map per image, of its top class
    explained = json.loads((Path(eval_cfg.paths.output_dir) / "gradcam" / "gradcam.json").read_text())
    assert [r["characters"] for r in explained["readings"]] == [[], [], []]
    assert all(r["result"] in SHAPES for r in explained["readings"])
    assert (Path(eval_cfg.paths.output_dir) / "gradcam" / "gradcam.png").is_file()
    for key in ("test_accuracy", "test_top5_accuracy"):
        assert ev[key] == pytest.approx(logged[key], abs=1e-6), key
    # per-class recall over whole class names; no character-level tables for classes
    analysis = Path(eval_cfg.paths.output_dir) / "analysis"
    per_class = json.loads((analysis / "per_class.json").read_text())
    assert {r["truth"] for r in per_class} <= set(SHAPES) and sum(r["count"] for r in per_class) == ev["test_images"]
    assert sum(r["right"] for r in per_class) == round(ev["test_accuracy"] * ev["test_images"])
    assert not (analysis / "by_length.json").exists() and not (analysis / "per_character.json").exists()
    # the classifier exports to 8-bit TFLite too, and answers with its classes and top-5
    image = next((Path(cfg.paths.cache_dir) / "tiles").glob("*/test/*.png"))
    (small,) = int8_reads(make_cfg, Path(cfg.paths.output_dir), [image])
    assert small["result"] in SHAPES and len(small["top5"]) == 5


@pytest.mark.slow
def test_num_classes_learns_the_tiles(make_cfg):
    """A few short epochs on four shapes: well above the 25% of guessing."""
    metrics = train(make_cfg([
        "mode=num_classes", "dataset=tiles", "dataset.classes=[circle,square,triangle,star]",
        "dataset.train_size=400", "dataset.val_size=40", "dataset.test_size=80", "dataset.noise=0.2",
        "preprocess.height=32", "preprocess.width=32", "trainer.epochs=6", "trainer.batch_size=16",
        "trainer.verbose=0", "optimizer.learning_rate=0.003"]))
    assert metrics["test_accuracy"] >= 0.6
    assert metrics["test_top5_accuracy"] == 1.0  # only four classes


def test_num_classes_warns_when_val_or_test_labels_never_appear_in_training(caplog):
    """Text captchas given to num_classes (each label its own class) train to 0 without a word
    otherwise; tiles whose classes all appear in training, and angles, are left alone."""
    import logging

    from bearcat.data.sources import Splits
    from bearcat.experiment import warn_unseen_classes

    def warnings_for(splits, **options):
        mode = build_mode("num_classes", Vocabulary(sorted(set(splits.labels()))), 1, **options)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bearcat.experiment"):
            warn_unseen_classes(splits, mode)
        return [r.getMessage() for r in caplog.records]

    text = Splits([(f"t{i}.png", f"a{i:03d}") for i in range(20)], [("v.png", "a000"), ("w.png", "zz1")],
                  [(f"s{i}.png", f"b{i:03d}") for i in range(4)])
    found = warnings_for(text)
    assert len(found) == 2
    assert found[0].startswith("mode=num_classes: 1 of 2 val labels never appear among the 20 training images' "
                               "labels (25 classes in all)") and "at most 50.0% of them" in found[0]
    assert "4 of 4 test labels" in found[1] and "at most 0.0%" in found[1] and "mode=ctc" in found[1]
    tiles_like = Splits([("a.png", "ring"), ("b.png", "star")] * 5, [("c.png", "star")], [("d.png", "ring")])
    assert warnings_for(tiles_like) == []
    angles = Splits([("a.png", "0"), ("b.png", "90")], [("c.png", "180")], [("d.png", "270")])
    assert warnings_for(angles, angle=True) == []


def test_num_classes_from_class_folders(make_cfg, tmp_path):
    made = tiles(30, 0, 0, seed=1, cache_dir=str(tmp_path / "gen"), classes=["ring", "cross", "arrow"])
    root = tmp_path / "grid"
    for path, label in made.train:
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, root / label / f"tile{Path(path).stem.split('_')[1]}.png")  # no label in the name
    before = sorted(p.name for p in root.rglob("*"))
    cfg = make_cfg(["debug=fast", "mode=num_classes", "dataset=folder", f"dataset.root={root}",
                    "dataset.class_folders=true", "dataset.val_ratio=0.2", "dataset.test_ratio=0.2"])
    metrics = train(cfg)
    assert "test_top5_accuracy" in logged_metrics(metrics)
    bundle = json.loads((Path(cfg.paths.output_dir) / "model" / "bundle.json").read_text())
    assert bundle["vocabulary"] == ["arrow", "cross", "ring"] and bundle["mode"]["name"] == "num_classes"
    assert sorted(p.name for p in root.rglob("*")) == before  # the user's folder is untouched


def test_tiles_are_cached_and_deterministic(tmp_path):
    first = tiles(6, 2, 2, seed=3, cache_dir=str(tmp_path), classes=["circle", "star"])
    stamp = {p: Path(p).stat().st_mtime_ns for p, _ in first.train}
    again = tiles(6, 2, 2, seed=3, cache_dir=str(tmp_path), classes=["star", "circle"])
    assert again.train == first.train and {p: Path(p).stat().st_mtime_ns for p, _ in again.train} == stamp
    assert {label for _, label in first.train + first.val + first.test} <= {"circle", "star"}
    with pytest.raises(ValueError, match="dataset.classes: unknown shapes \\['blob'\\]"):
        tiles(2, 1, 1, seed=3, cache_dir=str(tmp_path), classes=["circle", "blob"])


# ------------------------------------------------------------------ labels and decoding

@pytest.mark.parametrize("name", ["ctc", "ctc_tiny", "ordinary", "num_classes"])
def test_mode_keyword_defaults_are_the_yaml_defaults(make_cfg, name):
    """build_mode(name, ...) without options builds what `mode=name` does: the classes'
    keyword defaults and conf/mode/*.yaml do not drift apart."""
    assert build_mode(name, VOCAB, 6).options == mode_options(make_cfg([f"mode={name}"]))


def test_ordinary_pads_with_blank_and_decoding_drops_it(make_cfg):
    mode = build_mode("ordinary", VOCAB, 4, **mode_options(make_cfg(["mode=ordinary"])))
    np.testing.assert_array_equal(mode.encode(["AB", "CABC"]), [[1, 2, 0, 0], [3, 1, 2, 3]])
    probs = np.full((1, 4, 4), 0.02, np.float32)
    for pos, cls in enumerate([1, 0, 3, 0]):  # A, blank, C, blank -> "AC"
        probs[0, pos, cls] = 0.94
    (out,) = mode.decode(probs)
    assert out["result"] == "AC"
    assert out["confidence"] == pytest.approx(0.94)  # all positions equally sure: std 0
    assert mode.check_label("ABCAB")[0] == "label longer than the model can emit"
    # a space outside the vocabulary is named visibly, not as a blank
    assert mode.check_label("A Bx") == ("characters outside the vocabulary", "' x'")
    assert mode.check_label("ABx") == ("characters outside the vocabulary", "x")


def test_ordinary_confidence_rule():
    top = np.array([[0.9, 0.9, 0.9, 0.5], [1.0, 1.0, 1.0, 1.0], [0.1, 0.9, 0.1, 0.9]])
    expected = [0.8 - 2.58 * np.std([0.9, 0.9, 0.9, 0.5]) / 2, 1.0, 0.0]  # the last clips at 0
    np.testing.assert_allclose(interval_confidence(top), expected, rtol=1e-6)


def test_ordinary_label_smoothing_is_in_the_loss(make_cfg):
    probs = np.zeros((1, 2, 4), np.float32)
    probs[0, :, 1] = 1.0
    target = np.array([[1, 1]])
    losses = {}
    for smoothing in (0.0, 0.2):
        mode = build_mode("ordinary", VOCAB, 2, **mode_options(make_cfg(
            ["mode=ordinary", f"mode.label_smoothing={smoothing}"])))
        losses[smoothing] = float(keras.ops.convert_to_numpy(keras.ops.mean(mode.loss()(target, probs))))
    assert losses[0.0] == pytest.approx(0.0, abs=1e-5) and losses[0.2] > 1.0  # smoothed targets punish certainty


def test_ctc_tiny_decodes_like_ctc_without_a_recurrent_layer(make_cfg):
    tiny = build_mode("ctc_tiny", VOCAB, 6, **mode_options(make_cfg(["mode=ctc_tiny"])))
    probs = np.full((1, 16, 4), 0.01, np.float32)
    path = [1, 1, 0, 1, 2, 2, 0, 0, 3] + [0] * 7  # "AA-ABB--C" -> "AABC"
    for t, cls in enumerate(path):
        probs[0, t, cls] = 0.97
    (sure,) = tiny.decode(probs)
    probs[0, 5, 2] = 0.6  # one unsure step lowers the text's probability
    (out,) = tiny.decode(probs)
    assert out["result"] == sure["result"] == "AABC"
    assert out["confidence"] < sure["confidence"] and sure["confidence"] > 0.5

    rnns = {}
    for name in ("ctc", "ctc_tiny"):
        cfg = make_cfg([f"mode={name}", *(["mode.time_upsample_at=output"] if name == "ctc_tiny" else [])])
        model = build_model(cfg, build_mode(name, Vocabulary("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 6,
                                            **mode_options(cfg)))
        rnns[name] = sum(isinstance(layer, keras.layers.Bidirectional) for layer in model.layers)
        if name == "ctc_tiny":  # columns average-pooled by a whole factor to at least 16 steps, x time_upsample (2)
            columns = model.get_layer("ctc_tiny_columns").output.shape[1]
            assert model.output.shape[1] == 2 * (columns // max(1, columns // 16)) >= 32
            bias = model.get_layer("ctc_tiny_split").bias.numpy()  # each column's second step starts as a blank
            assert bias[37] == 3.0 and bias[0] == 0.0
        keras.backend.clear_session()
    assert rnns == {"ctc": 1, "ctc_tiny": 0}
    # The default makes the second step of each column before the last convolution instead.
    cfg = make_cfg(["mode=ctc_tiny"])
    model = build_model(cfg, build_mode("ctc_tiny", VOCAB, 6, **mode_options(cfg)))
    steps = model.get_layer("ctc_tiny_upsample").input.shape[1]
    assert model.output.shape[1] == 2 * steps >= 32 and not any("split" in layer.name for layer in model.layers)


def test_ctc_tiny_time_upsample_at_conv_repeats_the_steps_before_the_last_convolution():
    """time_upsample_at=conv: the steps are repeated time_upsample times before the last
    convolution, so the output has that many steps per step with no split layer; it learns
    to spell doubled characters on a toy task; with no convolution to do it, a clear error."""
    keras.utils.set_random_seed(0)
    mode = build_mode("ctc_tiny", VOCAB, 2, time_steps=5, units=16, conv_layers=2, time_upsample=2,
                      time_upsample_at="conv")
    inputs = keras.Input((1, 5, 3))
    model = keras.Model(inputs, mode.build_head(inputs))
    assert model.output.shape[1] == model.get_layer("ctc_tiny_conv1").output.shape[1] == 10
    assert model.get_layer("ctc_tiny_conv0").output.shape[1] == 5
    assert not any("split" in layer.name for layer in model.layers)
    labels = ["AA", "B", "AB", "CC"]
    x = np.zeros((4, 1, 5, 3), np.float32)
    for i, label in enumerate(labels):
        for j, ch in enumerate(label):
            x[i, 0, 2 + j, "ABC".index(ch)] = 1.0  # neighbouring columns
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=mode.loss())
    model.fit(x, mode.encode(labels), epochs=150, batch_size=4, verbose=0)
    assert [p["result"] for p in mode.decode(model.predict(x, verbose=0))] == labels
    with pytest.raises(ValueError, match="time_upsample_at=conv needs mode.conv_layers >= 1"):
        build_mode("ctc_tiny", VOCAB, 2, time_steps=5, conv_layers=0, time_upsample=2, time_upsample_at="conv")
    with pytest.raises(ValueError, match="mode.time_upsample_at=rnn: choose output or conv"):
        build_mode("ctc_tiny", VOCAB, 2, time_steps=5, time_upsample_at="rnn")


def test_ctc_tiny_rejects_too_few_time_steps(make_cfg):
    with pytest.raises(ValueError, match="mode.time_steps=10: CTC needs at least 2 x max_length \\+ 1 = 13"):
        build_mode("ctc_tiny", VOCAB, 6, **mode_options(make_cfg(["mode=ctc_tiny", "mode.time_steps=10"])))


def test_num_classes_classes_and_top5():
    mode = build_mode("num_classes", Vocabulary(["circle", "star", "ring", "arrow", "cross", "moon"]), 1)
    assert mode.encode(["star", "circle"]).tolist() == [2, 1]
    assert mode.check_label("hexagon") == ("class not in the model's classes", "hexagon")
    probs = np.array([[0.0, 0.05, 0.5, 0.2, 0.12, 0.08, 0.05]], np.float32)
    (out,) = mode.decode(probs)
    assert out["result"] == "star" and out["confidence"] == pytest.approx(0.5)
    assert out["top5"][:3] == ["star", "ring", "arrow"] and len(out["top5"]) == 5
    assert out["top5_probs"][:3] == pytest.approx([0.5, 0.2, 0.12])
