"""Starting a run from an earlier one (`init_from=RUN_ID` or a bundle path) and freezing
the backbone for the first epochs (`trainer.freeze_backbone_epochs`).

Weights are matched by layer name: a layer is loaded when every one of its weights has
the same shape in both models, and left as initialised otherwise. The output layer (one
unit per class) is rebuilt when the vocabulary differs: the units of the blank and of
every character both vocabularies share are copied from the earlier model, the others
keep their fresh initialisation. What was loaded and what was not is returned as a
report, which train.py logs to MLflow (params, tags and `init_from.json`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import keras

from bearcat.bundle import locate_init_bundle

log = logging.getLogger(__name__)

def earlier_vocabulary(cfg, out_dir: Path, workdir: str) -> list[str] | None:
    """The init_from model's vocabulary when init_from_vocabulary=true, else None. Kept in
    the run folder, so a resumed run builds the same output layer even if the earlier
    bundle has gone meanwhile. A run id's bundle is fetched into `workdir`."""
    import json

    from bearcat.atomic import write_json
    from bearcat.bundle import read_meta

    if not (cfg.get("init_from") and cfg.get("init_from_vocabulary")):
        return None
    saved = Path(out_dir) / "init_from_vocabulary.json"
    if cfg.get("resume") and saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))["chars"]
    chars = list(read_meta(locate_init_bundle(cfg.init_from, workdir)[0])["vocabulary"])
    write_json(saved, {"chars": chars, "init_from": str(cfg.init_from)}, indent=1)
    return chars


def output_layer(model):
    """The last layer with weights: the one that writes the per-class scores (the CTC head
    with mode.time_upsample_at=output follows it with a weightless reshape and softmax)."""
    return next(layer for layer in reversed(model.layers) if layer.weights)


def _remap_output(target_layer, source_layer, target_chars: list[str], source_chars: list[str]) -> int:
    """Copy the output units of the blank/id 0 and of shared characters; returns how many.
    A layer that writes several time steps per column holds one block of classes per step."""
    new = [w.copy() for w in target_layer.get_weights()]
    old = source_layer.get_weights()
    if len(new) != len(old) or any(n.shape[:-1] != o.shape[:-1] for n, o in zip(new, old)):
        return 0  # a different layer under the same name: nothing fits
    target_classes, source_classes = len(target_chars) + 1, len(source_chars) + 1
    blocks = new[0].shape[-1] // target_classes
    if new[0].shape[-1] != blocks * target_classes or old[0].shape[-1] != blocks * source_classes:
        return 0  # a different number of steps per column
    source_index = {c: i + 1 for i, c in enumerate(source_chars)}
    pairs = [(0, 0)] + [(i + 1, source_index[c]) for i, c in enumerate(target_chars) if c in source_index]
    for n, o in zip(new, old):
        for b in range(blocks):
            for t, s in pairs:
                n[..., b * target_classes + t] = o[..., b * source_classes + s]
    target_layer.set_weights(new)
    return len(pairs) - 1


def transfer_weights(model, source, target_chars: list[str], source_chars: list[str]) -> dict:
    """Load `source`'s weights into `model` layer by layer (by name, where shapes fit)."""
    out_name = output_layer(model).name
    report = {"loaded": [], "not_loaded": {}, "output_layer": out_name}
    by_name = {layer.name: layer for layer in source.layers}
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        other = by_name.get(layer.name)
        if other is None:
            report["not_loaded"][layer.name] = "no layer of this name in the earlier model"
            if layer.name == out_name:  # e.g. ctc_split (two CTC steps per column) against ctc_probs
                report["output_rebuilt"] = True
                report["not_loaded"][layer.name] += f" (its output layer: {output_layer(source).name})"
            continue
        theirs = other.get_weights()
        same_shapes = len(theirs) == len(weights) and all(a.shape == b.shape for a, b in zip(weights, theirs))
        if layer.name == out_name and not (same_shapes and list(target_chars) == list(source_chars)):
            kept = _remap_output(layer, other, target_chars, source_chars)
            report["output_rebuilt"] = True
            report["output_classes_carried"] = kept
            report["not_loaded"][layer.name] = (f"output layer rebuilt for the new vocabulary ({len(target_chars)} "
                                                f"characters; {kept} shared with the earlier model kept their units)")
        elif same_shapes:
            layer.set_weights(theirs)
            report["loaded"].append(layer.name)
        else:
            report["not_loaded"][layer.name] = ("shape mismatch: " + ", ".join(
                f"{tuple(b.shape)} -> {tuple(a.shape)}" for a, b in zip(weights, theirs)) if len(theirs) == len(weights)
                else f"{len(theirs)} weights -> {len(weights)}")
    report.setdefault("output_rebuilt", False)
    report["vocabulary_added"] = "".join(c for c in target_chars if c not in set(source_chars))
    report["vocabulary_dropped"] = "".join(c for c in source_chars if c not in set(target_chars))
    return report


def settings_differ(earlier: dict, this: dict) -> dict:
    """{"preprocess.height": [32, 36], ...}: the preprocess and mode settings the earlier
    run's bundle records that this run sets otherwise."""
    return {f"{group}.{key}": [value, this[group][key]]
            for group in ("preprocess", "mode") for key, value in earlier.get(group, {}).items()
            if key in this.get(group, {}) and this[group][key] != value}


def warm_start(model, vocab_chars: list[str], init_from: str, workdir: str, settings: dict | None = None) -> dict:
    """Load the earlier run's weights into `model`; the report says what was loaded.
    `settings` ({"preprocess": ..., "mode": ...} of this run) are compared with the earlier
    run's, so a layer that does not fit can be traced to the setting that changed it."""
    from bearcat.bundle import MODEL_FILE, load_keras, read_meta

    folder, run_id = locate_init_bundle(init_from, workdir)
    meta = read_meta(folder)
    source = load_keras(Path(folder) / MODEL_FILE)
    report = transfer_weights(model, source, list(vocab_chars), list(meta["vocabulary"]))
    report.update(source=str(init_from), source_run_id=run_id, source_mode=meta["mode"]["name"],
                  settings_differ=settings_differ(meta, settings or {}))
    if not report["loaded"]:
        raise ValueError(f"init_from={init_from}: no layer of the earlier model fits this one "
                         f"(different backbone or preprocess size?)")
    log.info("init_from=%s: loaded %d layers, not loaded %d: %s", init_from, len(report["loaded"]),
             len(report["not_loaded"]), report["not_loaded"])
    problems = []  # what a fine-tune loses to settings that differ from the earlier run's
    misfits = [name for name in report["not_loaded"] if name != report["output_layer"]]
    if misfits:
        problems.append(f"{len(misfits)} layers besides the output start from scratch ({', '.join(misfits)})")
    if report["output_rebuilt"] and list(vocab_chars) == list(meta["vocabulary"]):
        problems.append("the output layer starts from scratch although the vocabulary is the same")
    if any(key.startswith("preprocess.") for key in report["settings_differ"]):
        problems.append("the loaded layers see images prepared otherwise than they learnt them")
    if problems:
        changed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in report["settings_differ"].items()) or "none found"
        log.warning("init_from=%s: %s. Settings that differ from the earlier run: %s. Set them as the earlier run "
                    "had them (experiment=finetune does, for a pretrain_generated model)", init_from,
                    "; ".join(problems), changed)
    return report


# ------------------------------------------------------------------------------ freezing

def head_layer_names(model) -> set[str]:
    """Layers of the mode's head: the output layer and everything between it and the
    backbone's feature map (named with the mode's prefix, e.g. ctc_*)."""
    out = output_layer(model).name
    prefix = out.rsplit("_", 1)[0] + "_"
    return {out} | {layer.name for layer in model.layers if layer.name.startswith(prefix)}


class FreezeBackbone(keras.callbacks.Callback):
    """Keep every backbone layer frozen for the first `epochs` epochs, then train all.

    Call `start(initial_epoch)` after compiling (and after a resume restored the optimizer)
    and before `fit`: the optimizer is built on all the weights first, so its state keeps
    one slot per weight whether frozen or not (checkpoints and resume stay consistent).
    Frozen BatchNorm layers run in inference mode, so PreciseBatchNorm leaves their
    statistics alone too. The train step is retraced when the backbone is unfrozen.
    """

    def __init__(self, model, epochs: int):
        super().__init__()
        self.frozen_model = model
        self.epochs = int(epochs or 0)
        head = head_layer_names(model)
        self.backbone = [layer for layer in model.layers if layer.name not in head and layer.weights]
        self.active = False

    def _set(self, trainable: bool) -> None:
        for layer in self.backbone:
            layer.trainable = trainable
        self.active = not trainable

    def start(self, initial_epoch: int) -> None:
        if self.epochs <= initial_epoch:
            return
        optimizer = self.frozen_model.optimizer
        if not optimizer.built:
            optimizer.build(self.frozen_model.trainable_variables)
        self._set(False)
        log.info("backbone frozen (%d layers) until epoch %d", len(self.backbone), self.epochs)

    def on_epoch_begin(self, epoch, logs=None):
        if self.active and epoch >= self.epochs:
            self._set(True)
            self.model.make_train_function(force=True)  # the traced step captured the frozen set
            log.info("epoch %d: backbone unfrozen", epoch + 1)


def log_warm_start(report: dict, out_dir: Path) -> None:
    """MLflow: counts as params, the source as tags, the full report as init_from.json."""
    import json

    from bearcat import tracking

    path = Path(out_dir) / "init_from.json"
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    tracking.log_artifact(path)
    tracking.log_params({"init_from_loaded_layers": len(report["loaded"]),
                         "init_from_not_loaded_layers": len(report["not_loaded"]),
                         "init_from_output_rebuilt": report["output_rebuilt"]})
    tracking.set_tags({"bearcat.init_from": report["source"],
                       "bearcat.init_from_run_id": str(report.get("source_run_id"))})
