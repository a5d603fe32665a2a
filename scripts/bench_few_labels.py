"""Benchmark: how many labels does a real captcha set need? Fine-tuning the
`experiment=pretrain_generated` model against training from scratch, on the same 100 /
200 / 400 labelled images of ../shared/datasets/swust_cas_20191218.

    python scripts/bench_few_labels.py                       # pretrains first if needed
    python scripts/bench_few_labels.py --pretrained outputs/bench/few_labels/pretrain/model
    python scripts/bench_few_labels.py --sizes 100 --minutes 1   # quick check
    python scripts/bench_few_labels.py --epochs 40 --skip-scratch  # fixed epochs, not minutes
    python scripts/bench_few_labels.py --pseudo 0.9 [--pseudo-rounds 2]   # + pseudo-labels (below)
    python scripts/bench_few_labels.py --review-train   # train on the reviewed labels too (below)
    python scripts/bench_few_labels.py --soup-seeds 7 1   # + fine-tunes with other seeds, averaged (below)

Split (fixed seed, never changes with the size): 400 test images, 50 validation images
(used only to pick the checkpoint), and training images taken from the start of the
rest, so the 100 images are among the 200, which are among the 400. Labels are folded
to lower case (case-insensitive scoring). The split is copied into --out; the shared
folder is only read.

--pseudo T adds a run per size that also uses unlabelled images, as a user with a folder of
unlabelled captchas of the same site would: the rest of the set (neither test, val nor
the labelled images) is copied without its labels, the fine-tuned model reads it with
`bearcat.labelling.LabelQueue.accept_confident(T)` (what `python -m bearcat.label
accept_above=T` does), and a second fine-tune from that model trains on the labelled
images plus those readings (`dataset.extra_train`, which leaves out any reading whose image
is also in the split). With --pseudo-rounds R, round r reads the rest again with round
r-1's model and fine-tunes from it. The readings' precision against the true labels is
printed; those labels are never used for training.

--reviewed CSV (default: scripts/data/<set>_reviewed.csv when it exists) also scores every
run against test labels checked by eye: columns file, label, reviewed; a file not listed
keeps its label. The set's own labels stay the primary figure (`test_accuracy`); the
reviewed one is `test_accuracy_reviewed`. With --review-train the training images it lists
are also trained under their reviewed labels, as after the README's suspects review (the
labelled images a fine-tuned model confidently reads otherwise, checked again by a person).
How the list was made: docs/benchmarks.md "Wrong labels".

--soup-seeds S... also fine-tunes with each of those trainer.seed values (runs fine-tune-sS-<size>)
and averages them with the plain fine-tune into one model (`python -m bearcat.soup`, run
soup-<size>), scored on the same test split (char accuracy is not computed for it).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOALS = {100: 0.90, 200: 0.95, 400: 0.98}


def make_split(data: Path, out: Path, size: int, test: int, val: int, seed: int,
               relabel: dict[str, str] | None = None) -> tuple[Path, list[Path]]:
    """out/n<size>/{train,val,test}/ holding copies of the chosen files; the files left over
    (the unlabelled pool of --pseudo). A training image named in `relabel` is copied under
    its reviewed label (--review-train)."""
    from bearcat.data.labels import is_image_file

    files = sorted(p for p in data.iterdir() if is_image_file(p))
    random.Random(seed).shuffle(files)
    parts = {"test": files[:test], "val": files[test:test + val], "train": files[test + val:test + val + size]}
    if len(parts["train"]) < size:
        sys.exit(f"{data}: only {len(parts['train'])} images left for training, {size} asked")
    root = out / f"n{size}"
    for split, chosen in parts.items():
        folder = root / split
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for path in chosen:
            name = path.name
            if split == "train" and name in (relabel or {}):
                name = f"{relabel[name]}_{name.split('_', 1)[1]}"
            shutil.copy2(path, folder / name)
    return root, files[test + val + size:]


def pseudo_label(model: Path, pool: list[Path], out: Path, threshold: float) -> tuple[Path, dict]:
    """`pool` copied without labels and read by `model`: the folder of every reading at
    least `threshold` confident (for `dataset.extra_train`), and figures about it."""
    from bearcat.bundle import Predictor
    from bearcat.data.labels import file_md5, label_from_name
    from bearcat.labelling import LabelQueue

    unlabelled = out / "unlabelled"
    shutil.rmtree(unlabelled, ignore_errors=True)
    unlabelled.mkdir(parents=True)
    truth = {}
    for i, path in enumerate(pool):
        shutil.copy2(path, unlabelled / f"{i:05d}{path.suffix}")  # the label is not in the copy's name
        truth[file_md5(path)] = label_from_name(path, lowercase=True)
    readings = out / "readings"
    shutil.rmtree(readings, ignore_errors=True)
    start = time.monotonic()
    saved = LabelQueue(unlabelled, readings, Predictor(model)).accept_confident(threshold)
    seconds = time.monotonic() - start
    right = sum(label_from_name(p) == truth[p.stem.split("_", 1)[1]] for p in saved)
    return readings, {"unlabelled": len(pool), "pseudo": len(saved), "pseudo_precision": right / max(1, len(saved)),
                      "pseudo_seconds": seconds}


def read_reviewed(path: Path | None) -> dict[str, str]:
    """{file name: reviewed label} of the rows whose label was corrected."""
    if path is None:
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {r["file"]: r["reviewed"].lower() for r in csv.DictReader(f) if r["reviewed"] != r["label"]}


def score_reviewed(model: Path, test_dir: Path, reviewed: dict[str, str]) -> dict:
    """The model's exact-match accuracy on the test split against the set's labels and
    against the reviewed ones, from one reading of each image."""
    from bearcat.bundle import Predictor
    from bearcat.data.labels import label_from_name

    files = sorted(test_dir.iterdir())
    readings = [r["result"].lower() for r in Predictor(model).predict(files)]  # scored case-insensitively
    given = [label_from_name(f, lowercase=True) for f in files]
    checked = [reviewed.get(f.name, g) for f, g in zip(files, given)]
    return {"test_accuracy_given": sum(map(str.__eq__, readings, given)) / len(files),
            "test_accuracy_reviewed": sum(map(str.__eq__, readings, checked)) / len(files),
            "labels_corrected": sum(g != c for g, c in zip(given, checked))}


def soup_row(out: Path, size: int, seeds: list[int], test_dir: Path, reviewed: dict[str, str]) -> dict:
    """`python -m bearcat.soup` of the size's fine-tune and its --soup-seeds runs, scored on
    the test split."""
    from bearcat.overrides import compose_config
    from bearcat.soup import soup

    runs = out / "runs"
    models = [runs / f"fine-tune-{size}" / "model", *(runs / f"fine-tune-s{s}-{size}" / "model" for s in seeds)]
    target = runs / f"soup-{size}"
    shutil.rmtree(target, ignore_errors=True)  # this script's own output, remade each time
    cfg = compose_config("soup", [f"models=[{','.join(map(str, models))}]", f"out={target}", f"check={test_dir}"])
    start = time.monotonic()
    summary = soup(cfg)
    row = {"run": "soup", "images": size, "epochs": None, "test_accuracy": summary["soup_accuracy"],
           "test_char_accuracy": None, "seconds": time.monotonic() - start, "goal": GOALS.get(size),
           "models": [str(m) for m in models], "model_accuracy": summary["model_accuracy"]}
    if reviewed:
        row |= score_reviewed(target, test_dir, reviewed)
    return row


def run_train(overrides: list[str]) -> tuple[dict, float]:
    import keras

    from bearcat.benchmark import compose_train
    from bearcat.train import train

    keras.backend.clear_session()
    cfg = compose_train(overrides)
    start = time.monotonic()
    metrics = train(cfg)
    return metrics, time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "swust_cas_20191218"))
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "few_labels"))
    ap.add_argument("--pretrained", default=None, help="bundle folder or MLflow run id of a pretrain_generated run "
                                                       "(default: <out>/pretrain/model, trained first if missing)")
    ap.add_argument("--pretrain-minutes", type=float, default=12.0, help="training budget of that pretraining")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget of each fine-tune / scratch run")
    ap.add_argument("--epochs", type=int, default=None,
                    help="train each run for this many epochs instead of --minutes (load-independent)")
    ap.add_argument("--freeze-epochs", type=int, default=2, help="trainer.freeze_backbone_epochs of the fine-tunes")
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-scratch", action="store_true")
    ap.add_argument("--pseudo", type=float, default=None, metavar="T",
                    help="also run fine-tune + pseudo-labels of the unlabelled rest read with confidence >= T")
    ap.add_argument("--pseudo-rounds", type=int, default=1,
                    help="rounds of --pseudo; round r reads the rest with the model of round r-1")
    ap.add_argument("--reviewed", default=None, help="CSV of test labels checked by eye (file,label,reviewed); "
                                                     "default scripts/data/<set>_reviewed.csv if present; 'none' = off")
    ap.add_argument("--review-train", action="store_true",
                    help="train on the reviewed labels of the training images listed in --reviewed")
    ap.add_argument("--soup-seeds", type=int, nargs="*", default=[],
                    help="also fine-tune with these trainer.seed values and average them with the fine-tune")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for the fine-tunes and scratch runs")
    args = ap.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out}/mlflow.db")
    common = [f"paths.cache_dir={out}/cache", f"mlflow.artifact_root={out}/artifacts",
              "mlflow.experiment_name=few_labels", "trainer.verbose=0"]
    pretrained = args.pretrained or str(out / "pretrain" / "model")
    default_reviewed = ROOT / "scripts" / "data" / f"{Path(args.data).name}_reviewed.csv"
    reviewed_csv = (None if args.reviewed == "none" else Path(args.reviewed) if args.reviewed else
                    default_reviewed if default_reviewed.is_file() else None)
    reviewed = read_reviewed(reviewed_csv)
    if args.review_train and not reviewed:
        sys.exit("--review-train needs a --reviewed CSV with corrected labels")
    results = []
    if not args.pretrained and not (Path(pretrained) / "bundle.json").is_file():
        metrics, seconds = run_train([*common, "experiment=pretrain_generated", f"paths.output_dir={out}/pretrain",
                                      f"trainer.max_minutes={args.pretrain_minutes}"])
        results.append({"run": "pretrain_generated", "images": None, "test_accuracy": metrics["test_accuracy"],
                        "seconds": seconds})
        print(f"pretrain_generated: test accuracy (generated) {metrics['test_accuracy']:.4f} in {seconds:.0f} s",
              flush=True)

    budget = ([f"trainer.epochs={args.epochs}", "trainer.max_minutes=null"] if args.epochs else
              ["trainer.epochs=500", f"trainer.max_minutes={args.minutes}"])
    # Every run is the README's fine-tune (experiment=finetune); scratch runs start from nothing
    # and the pseudo-label rounds from a fine-tuned model, so neither freezes the backbone.
    tune = ["experiment=finetune", *budget, *args.extra]
    for size in args.sizes:
        root, pool = make_split(Path(args.data), out / "data", size, args.test, args.val, args.seed,
                                reviewed if args.review_train else None)
        kinds = [("fine-tune", [f"init_from={pretrained}", f"trainer.freeze_backbone_epochs={args.freeze_epochs}"])]
        kinds += [(f"fine-tune-s{seed}", [*kinds[0][1], f"trainer.seed={seed}"]) for seed in args.soup_seeds]
        if not args.skip_scratch:
            kinds.append(("scratch", ["init_from=null", "trainer.freeze_backbone_epochs=0"]))
        if args.pseudo is not None:  # each round: the previous run reads the unlabelled rest
            rounds = [f"pseudo{r}" if r > 1 else "pseudo" for r in range(1, args.pseudo_rounds + 1)]
            kinds += [(kind, [f"init_from={out}/runs/{reader}-{size}/model", "trainer.freeze_backbone_epochs=0"])
                      for kind, reader in zip(rounds, ["fine-tune", *rounds])]
        for kind, extra in kinds:
            more = {}
            if kind.startswith("pseudo"):
                reader = Path(extra[0].split("=", 1)[1])
                readings, more = pseudo_label(reader, pool, out / "data" / f"n{size}-{kind}", args.pseudo)
                extra = [*extra, f"dataset.extra_train=[{readings}]"]
                print(json.dumps({"size": size, "round": kind, **more}), flush=True)
            metrics, seconds = run_train([*common, *tune, f"dataset.root={root}", *extra,
                                          f"run_name=few_labels-{kind}-{size}",
                                          f"paths.output_dir={out}/runs/{kind}-{size}"])
            epochs = json.loads((out / "runs" / f"{kind}-{size}" / "checkpoints" / "state.json").read_text())["epoch"]
            row = {"run": kind, "images": size, "epochs": epochs, "test_accuracy": metrics["test_accuracy"],
                   "test_char_accuracy": metrics["test_char_accuracy"], "seconds": seconds,
                   "goal": GOALS.get(size), "mlflow_run_id": metrics["mlflow_run_id"], **more}
            if reviewed_csv:
                row |= score_reviewed(out / "runs" / f"{kind}-{size}" / "model", root / "test", reviewed)
            results.append(row)
            print(json.dumps(row), flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=1))
        if args.soup_seeds:
            results.append(soup_row(out, size, args.soup_seeds, root / "test", reviewed))
            print(json.dumps(results[-1]), flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=1))

    from bearcat.metrics import wilson_interval

    print(f"\n{'run':<14} {'images':>6} {'epochs':>6} {'test acc':>9} {'95% interval':>13} {'reviewed':>9} "
          f"{'char acc':>9} {'goal':>5} {'seconds':>8}  pseudo-labels")
    for r in results:
        if r["images"] is None:
            continue
        low, high = wilson_interval(round(r["test_accuracy"] * args.test), args.test)  # the fixed test split's size
        pseudo = (f"  {r['pseudo']} of {r['unlabelled']}, precision {r['pseudo_precision']:.4f}, "
                  f"read in {r['pseudo_seconds']:.0f} s" if "pseudo" in r else "")
        checked = f"{r['test_accuracy_reviewed']:>9.4f}" if "test_accuracy_reviewed" in r else f"{'-':>9}"
        chars = f"{r['test_char_accuracy']:>9.4f}" if r.get("test_char_accuracy") is not None else f"{'-':>9}"
        print(f"{r['run']:<14} {r['images']:>6} {r['epochs'] or '-':>6} {r['test_accuracy']:>9.4f} "
              f"{low:>6.4f}-{high:.4f} {checked} {chars} {r['goal'] or '':>5} {r['seconds']:>8.0f}{pseudo}")


if __name__ == "__main__":
    main()
