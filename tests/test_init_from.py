"""init_from (start from an earlier run's weights, vocabulary may differ) and
trainer.freeze_backbone_epochs."""
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from bearcat.bundle import MODEL_FILE, read_meta
from bearcat.data.labels import Vocabulary
from bearcat.modes import build_mode
from bearcat.train import train
from bearcat.warmstart import FreezeBackbone, head_layer_names, locate_init_bundle, transfer_weights

TINY = ["debug=fast", "trainer.bn_calibration_images=64"]
OTHER_CHARSET = "0123456789abc"  # shares only the digits with the default 0-9A-Z


def weights_by_layer(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("overrides, out, blocks", [([], "ctc_split", 2),  # the default: 2 CTC steps per column
                                                     (["mode.time_upsample=1"], "ctc_probs", 1)])
def test_transfer_keeps_shared_characters_and_rebuilds_the_output_layer(make_cfg, overrides, out, blocks):
    from bearcat.experiment import build_model, mode_options

    cfg = make_cfg([*TINY, *overrides])
    old_vocab, new_vocab = Vocabulary("0123456789ABC"), Vocabulary("Ba9z")
    keras.utils.set_random_seed(1)
    old = build_model(cfg, build_mode("ctc", old_vocab, 6, **mode_options(cfg)))
    keras.utils.set_random_seed(2)
    new = build_model(cfg, build_mode("ctc", new_vocab, 6, **mode_options(cfg)))
    fresh = new.get_layer(out).get_weights()
    report = transfer_weights(new, old, new_vocab.chars, old_vocab.chars)

    assert report["output_layer"] == out and report["output_rebuilt"]
    assert out in report["not_loaded"] and out not in report["loaded"]
    assert {"block0_0_conv", "block0_0_bn", "block3_0_conv", "ctc_proj", "ctc_rnn0"} <= set(report["loaded"])
    for name in report["loaded"]:
        assert same(weights_by_layer(new)[name], weights_by_layer(old)[name]), name
    kernel, bias = new.get_layer(out).get_weights()
    old_kernel, old_bias = old.get_layer(out).get_weights()
    assert kernel.shape[-1] == blocks * 5 and old_kernel.shape[-1] == blocks * 14  # blank + characters, per step
    assert report["output_classes_carried"] == 2  # "B" and "9"; "a" and "z" are new
    for b in range(blocks):  # each step of a column has its own block of classes
        for new_id, old_id in [(0, 0), (1, 12), (3, 10)]:  # blank, "B", "9"
            np.testing.assert_array_equal(kernel[:, b * 5 + new_id], old_kernel[:, b * 14 + old_id])
            assert bias[b * 5 + new_id] == old_bias[b * 14 + old_id]
        for new_id in (2, 4):  # "a", "z": left as freshly initialised
            np.testing.assert_array_equal(kernel[:, b * 5 + new_id], fresh[0][:, b * 5 + new_id])
    assert report["vocabulary_added"] == "az" and set(report["vocabulary_dropped"]) == set("012345678AC")


def test_init_from_a_run_with_another_vocabulary(make_cfg, tmp_path, monkeypatch):
    from bearcat import tracking

    source = train(make_cfg(TINY, output="source"))
    run_id = source["mlflow_run_id"]
    metrics = train(make_cfg([*TINY, f"init_from={run_id}", f"dataset.charset={OTHER_CHARSET}"], output="tuned"))

    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert run.data.tags["bearcat.init_from"] == run_id and run.data.tags["bearcat.init_from_run_id"] == run_id
    assert run.data.params["init_from"] == run_id and run.data.params["init_from_output_rebuilt"] == "True"
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="init_from.json")
    report = json.loads(Path(local).read_text(encoding="utf-8"))
    assert report["source_run_id"] == run_id and report["output_classes_carried"] == 10  # the digits
    assert set(report["not_loaded"]) == {"ctc_split"}  # the output layer (two steps per column)
    assert int(run.data.params["init_from_loaded_layers"]) == len(report["loaded"]) >= 6
    tuned = keras.models.load_model(f"{tmp_path}/tuned/model/{MODEL_FILE}", compile=False)
    assert tuned.get_layer("ctc_split").get_weights()[0].shape[-1] == 2 * (len(OTHER_CHARSET) + 1)

    # with init_from_vocabulary the run reads the earlier bundle twice (vocabulary, weights): fetched once
    fetches = []
    fetch = tracking.download_artifacts
    monkeypatch.setattr(tracking, "download_artifacts", lambda *args: fetches.append(args) or fetch(*args))
    kept = train(make_cfg([*TINY, f"init_from={run_id}", "init_from_vocabulary=true"], output="kept"))
    assert len(fetches) == 1 and read_meta(tmp_path / "kept" / "model")["vocabulary"] == \
        read_meta(tmp_path / "source" / "model")["vocabulary"]
    assert mlflow.get_run(kept["mlflow_run_id"]).data.params["init_from_output_rebuilt"] == "False"


def test_init_from_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from=.*not an MLflow run id"):
        locate_init_bundle(str(tmp_path / "missing"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="init_from=.*holds no model bundle"):
        locate_init_bundle(str(tmp_path), str(tmp_path))


def test_frozen_backbone_stays_unchanged(trained_run, make_cfg, tmp_path):
    """A whole run inside the frozen epochs leaves every backbone weight as loaded (that the
    backbone trains once unfrozen: test_resume_inside_the_frozen_epochs_freezes_again)."""
    source_dir = trained_run["output_dir"] / "model"
    source = weights_by_layer(keras.models.load_model(source_dir / MODEL_FILE, compile=False))

    one = train(make_cfg([*TINY, f"init_from={source_dir}", "trainer.freeze_backbone_epochs=1"], output="frozen"))
    frozen = keras.models.load_model(f"{tmp_path}/frozen/model/{MODEL_FILE}", compile=False)
    head = head_layer_names(frozen)
    assert {"ctc_split", "ctc_probs", "ctc_proj", "ctc_rnn0"} <= head and "block0_0_conv" not in head
    after = weights_by_layer(frozen)
    backbone = [name for name in after if name not in head]
    assert len(backbone) == 8  # 4 x (conv, batch norm)
    for name in backbone:  # kernels and BatchNorm statistics alike
        assert same(after[name], source[name]), f"{name} changed while frozen"
    assert not same(after["ctc_proj"], source["ctc_proj"]) and not same(after["ctc_split"], source["ctc_split"])
    assert mlflow.get_run(one["mlflow_run_id"]).data.params["trainer.freeze_backbone_epochs"] == "1"


def test_resume_inside_the_frozen_epochs_freezes_again(make_cfg, tmp_path):
    """Checkpoint written while frozen -> restored into a fresh model -> frozen again; the
    optimizer state (one slot per weight, frozen or not) fits both ways."""
    from bearcat.callbacks import Checkpointer, read_state, restore_last
    from bearcat.experiment import build_model, mode_options

    cfg = make_cfg(TINY)
    mode = build_mode("ctc", Vocabulary("0123456789"), 4, **mode_options(cfg))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (32, cfg.preprocess.height, cfg.preprocess.width, 1)).astype("float32")
    targets = mode.encode(["".join(rng.choice(list("0123456789"), 4)) for _ in range(32)])

    def fresh():
        keras.utils.set_random_seed(0)
        model = build_model(cfg, mode)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=mode.loss())
        return model

    model = fresh()
    freeze = FreezeBackbone(model, 2)
    freeze.start(0)
    start = weights_by_layer(model)
    model.fit(images, targets, batch_size=16, epochs=1, verbose=0,
              callbacks=[freeze, Checkpointer(tmp_path / "ckpt", "loss")])
    state = read_state(tmp_path / "ckpt")
    assert state["epoch"] == 1

    resumed = fresh()
    restore_last(resumed, tmp_path / "ckpt", state)  # the optimizer was built on every weight: counts match
    again = FreezeBackbone(resumed, 2)
    again.start(state["epoch"])
    assert again.active and all(not layer.trainable for layer in again.backbone)
    restored = weights_by_layer(resumed)
    seen = {}
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.update({epoch: weights_by_layer(resumed)}))
    resumed.fit(images, targets, batch_size=16, initial_epoch=1, epochs=3, verbose=0, callbacks=[again, record])
    backbone = [name for name in restored if name not in head_layer_names(resumed)]
    assert len(backbone) == 8 and not again.active and all(layer.trainable for layer in again.backbone)
    for name in backbone:
        assert same(restored[name], start[name])  # frozen in the first run's epoch too
        assert same(seen[1][name], restored[name]), f"{name} moved in the resumed frozen epoch"
        assert not same(seen[2][name], restored[name]), f"{name} did not train once unfrozen"
    assert not same(seen[1]["ctc_split"], restored["ctc_split"])  # the head trained all along


PRETRAIN_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"  # experiment=pretrain_generated's 36 classes


def test_init_from_vocabulary_keeps_the_earlier_characters_and_adds_new_ones(make_cfg):
    from bearcat.data.sources import Splits
    from bearcat.experiment import build_vocab_and_mode

    splits = Splits([("a.png", "b9Q")], [("b.png", "9b")], [("c.png", "Qb")])
    cfg = make_cfg(["dataset=folder", "dataset.root=x"])
    assert build_vocab_and_mode(cfg, splits).vocab.chars == list("9Qb")  # the labels' characters only
    kept = build_vocab_and_mode(cfg, splits, list("0123456789ab")).vocab.chars
    assert kept == list("0123456789abQ")  # the earlier model's, in its order, then what the labels add
    splits.charset = "bQ9x"  # a configured charset (dataset.charset) wins
    assert build_vocab_and_mode(cfg, splits, list("0123456789ab")).vocab.chars == list("bQ9x")


def test_finetune_preset_builds_the_pretrained_model(make_cfg):
    """experiment=finetune's model is pretrain_generated's, layer for layer; the plain defaults'
    is not (grey input, another input height, two CTC steps per column): README "Few labels"."""
    from bearcat.experiment import build_model, mode_options

    vocab = Vocabulary(PRETRAIN_CHARS)

    def model(overrides):
        cfg = make_cfg(overrides)
        return build_model(cfg, build_mode("ctc", vocab, 8, **mode_options(cfg)))

    pretrained = model(["experiment=pretrain_generated"])
    tuned = transfer_weights(model(["experiment=finetune", "dataset.root=x"]), pretrained, vocab.chars, vocab.chars)
    assert tuned["not_loaded"] == {} and not tuned["output_rebuilt"]
    assert {"block0_0_conv", "ctc_proj", "ctc_rnn0", "ctc_probs"} <= set(tuned["loaded"])
    plain = transfer_weights(model(["dataset=folder", "dataset.root=x"]), pretrained, vocab.chars, vocab.chars)
    assert plain["output_rebuilt"] and plain["output_layer"] == "ctc_split"
    assert plain["not_loaded"] == {"ctc_split": "no layer of this name in the earlier model (its output layer: "
                                                "ctc_probs)",
                                   # grey input against the pretrained colour: the first convolution differs
                                   "block0_0_conv": "shape mismatch: (3, 3, 3, 32) -> (3, 3, 1, 32)"}


def test_finetune_from_a_pretrain_generated_run(make_cfg, swust_copy, tmp_path, caplog):
    """The README's loop: pretrain_generated, then experiment=finetune on a labelled folder
    loads every layer, and keeps every character of the pretrained model although the 48
    labels lack "7"; a fine-tune with the plain defaults names what did not load and why."""
    from bearcat.experiment import build_model, mode_options
    from bearcat.warmstart import earlier_vocabulary, warm_start

    train(make_cfg([*TINY, "experiment=pretrain_generated"], output="pretrain"))
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    for path in sorted(swust_copy.iterdir())[:48]:
        (labelled / path.name).write_bytes(path.read_bytes())
    with caplog.at_level("WARNING", logger="bearcat.warmstart"):
        tuned = train(make_cfg([*TINY, "experiment=finetune", f"dataset.root={labelled}",
                                f"init_from={tmp_path / 'pretrain'}"], output="tuned"))
    assert "init_from=" not in caplog.text  # nothing to warn of
    report = json.loads((tmp_path / "tuned" / "init_from.json").read_text(encoding="utf-8"))
    assert report["not_loaded"] == {} and not report["output_rebuilt"] and report["source_mode"] == "ctc"
    assert "preprocess.height" not in report["settings_differ"] and "mode.time_upsample" not in report["settings_differ"]
    params = mlflow.get_run(tuned["mlflow_run_id"]).data.params
    assert params["trainer.freeze_backbone_epochs"] == "2" and params["init_from_not_loaded_layers"] == "0"
    assert sorted(p.name for p in labelled.iterdir()) == sorted(p.name for p in swust_copy.iterdir())[:48]
    assert "7" not in "".join(p.name.split("_")[0] for p in labelled.iterdir())
    assert read_meta(tmp_path / "tuned" / "model")["vocabulary"] == list(PRETRAIN_CHARS)  # "7" included
    # a resume builds the same vocabulary from the run folder, even with the pretrained bundle gone
    (tmp_path / "pretrain").rename(tmp_path / "pretrain_moved")
    resumed = make_cfg(["experiment=finetune", f"dataset.root={labelled}", f"init_from={tmp_path / 'pretrain'}",
                        f"resume={tmp_path / 'tuned'}"], output="tuned")
    assert earlier_vocabulary(resumed, tmp_path / "tuned", str(tmp_path / "fetched")) == list(PRETRAIN_CHARS)
    (tmp_path / "pretrain_moved").rename(tmp_path / "pretrain")

    cfg = make_cfg(["dataset=folder", f"dataset.root={labelled}"])  # the plain defaults
    vocab = Vocabulary(PRETRAIN_CHARS)
    plain = build_model(cfg, build_mode("ctc", vocab, 8, **mode_options(cfg)))
    settings = {"preprocess": dict(cfg.preprocess), "mode": dict(cfg.mode)}
    with caplog.at_level("WARNING", logger="bearcat.warmstart"):
        report = warm_start(plain, vocab.chars, str(tmp_path / "pretrain"), str(tmp_path), settings)
    assert report["settings_differ"]["preprocess.height"] == [32, 36]
    assert report["settings_differ"]["mode.time_upsample"] == [1, 2]
    assert report["output_rebuilt"] and "ctc_split" in report["not_loaded"]
    assert "output layer starts from scratch although the vocabulary is the same" in caplog.text
    assert "images prepared otherwise" in caplog.text and "preprocess.height 32 -> 36" in caplog.text
    # the pretrained model reads colour, the plain defaults grey: its first convolution cannot load
    assert "block0_0_conv" in report["not_loaded"] and "preprocess.channels 3 -> 1" in caplog.text


def test_freezing_without_init_from_is_refused(make_cfg):
    with pytest.raises(ValueError, match=r"trainer.freeze_backbone_epochs=2 would freeze .* set init_from="):
        train(make_cfg(["experiment=finetune", "dataset.root=nowhere"]))
