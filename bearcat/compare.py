"""Two readers of the same images, compared: `python -m bearcat.compare a=RUN b=RUN`.

Is model B better than model A on this test set, or is the gap chance? Every training run
writes its test split's readings to `predictions/test_predictions.csv` and every evaluation
(`python -m bearcat.evaluate`, any data, runtime or decoder) to `analysis/predictions.csv`;
given two (their output folders, the CSV files, or their MLflow run ids), this matches the
images by file, counts those only one of the two reads right, and gives B's accuracy minus
A's with its 95% interval and the exact McNemar p-value (bearcat/metrics.py). Paired, so far
sharper than comparing two accuracies' own intervals: the images both read alike cancel out.
"""
from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bearcat import CONFIG_DIR, overrides
from bearcat.atomic import write_json
from bearcat.bundle import is_run_id
from bearcat.checks import not_found
from bearcat.metrics import mcnemar_p, paired_difference, wilson_interval

log = logging.getLogger("bearcat.compare")
EVALUATED = "analysis/predictions.csv"  # an evaluation's readings (bearcat/analysis.py)
NO_READINGS = " (a detector has readings only when it clicks prompts: a slider's gap detector has none)"
TESTED = "predictions/test_predictions.csv"  # a training run's, of its test split (bearcat/train.py)
PREDICTIONS = (EVALUATED, TESTED)
SHOWN = 20  # disagreements listed in compare.md (compare.json has them all)
SIGNIFICANT = 0.05


def predictions_file(key: str, source: str, scratch: Path) -> Path:
    """The readings of an evaluation or a training run (its test split) given as its output
    folder, the CSV itself, or its MLflow run id (downloaded into scratch)."""
    path = Path(source)
    if path.is_file():
        return path
    wanted = " or ".join(PREDICTIONS)
    if path.is_dir():
        found = next((path / name for name in PREDICTIONS if (path / name).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{key}={source}: no {wanted} in this folder; give the output folder of an "
                                    "evaluation or a training run, its CSV of readings, or its MLflow run id"
                                    + NO_READINGS)
        return found
    if is_run_id(source):
        found = download_readings(source, scratch)
        if found is None:
            from bearcat import tracking

            raise FileNotFoundError(f"{key}={source}: no MLflow run with {wanted} in {tracking.current_uri()} "
                                    "(evaluate runs have the first; training runs logged before 2026-12-06 have "
                                    f"neither){NO_READINGS}")
        return found
    raise FileNotFoundError(not_found(key, source, also=", and not an MLflow run id"))


def download_readings(run_id: str, scratch: Path, names: tuple[str, ...] = PREDICTIONS) -> Path | None:
    """The first of `names` among the MLflow run's artifacts, downloaded into scratch; None
    when it has none of them (or there is no such run)."""
    from bearcat import tracking

    for name in names:
        try:
            return tracking.download_artifacts(run_id, name, str(Path(scratch) / run_id))
        except Exception:  # MLflow raises several types for an unknown run or artifact
            continue
    return None


def read_predictions(key: str, path: Path) -> dict[str, tuple[str, str]]:
    """{file: (label, reading)} of a predictions.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"file", "label", "prediction"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{key}: {path} is no predictions file (no column {', '.join(sorted(missing))})")
        rows = {}
        for row in reader:
            if row["file"] in rows:
                raise ValueError(f"{key}: {path} lists {row['file']} twice")
            rows[row["file"]] = (row["label"], row["prediction"])
    if not rows:
        raise ValueError(f"{key}: {path} holds no readings")
    return rows


def compare_readings(a: dict[str, tuple[str, str]], b: dict[str, tuple[str, str]]) -> dict:
    """The paired comparison of two readers' readings on the files both read: matched by path,
    or by file name when no path is shared (the same data read from another folder or cache,
    or packed with action=pack) and the names are unique on both sides."""
    from bearcat.data.pack import packed_names

    common, matched_by, read = [f for f in a if f in b], "path", {"a": a, "b": b}
    if not common:
        packed = packed_names([*a, *b])  # an image of packed data goes by the name it was packed under
        by_name = [{packed.get(f, Path(f).name): reading for f, reading in side.items()} for side in (a, b)]
        if all(len(named) == len(side) for named, side in zip(by_name, (a, b))):
            a, b = by_name
            common, matched_by = [f for f in a if f in b], "file name"
    if not common:  # which data each side read: usually two folders, or two splits of one
        sides = "; ".join(f"{k} read {len(side)} images ({next(iter(side))}, ...)" for k, side in read.items())
        raise ValueError(f"a and b share no image file ({sides}): compare readings of the same data (the same "
                         "dataset settings and split; evaluate both models on it)")
    for f in common:
        if a[f][0] != b[f][0]:
            raise ValueError(f"{f}: labelled {a[f][0]!r} in a but {b[f][0]!r} in b (one folded the case? read both "
                             "with the same dataset.lowercase)")
    right_a = {f for f in common if a[f][1] == a[f][0]}
    right_b = {f for f in common if b[f][1] == b[f][0]}
    only_a, only_b = len(right_a - right_b), len(right_b - right_a)
    n = len(common)
    difference, low, high = paired_difference(only_a, only_b, n)
    p = mcnemar_p(only_a, only_b)

    def accuracy(right: set) -> dict:
        ci_low, ci_high = wilson_interval(len(right), n)
        return {"accuracy": len(right) / n, "ci_low": ci_low, "ci_high": ci_high}

    return {"images": n, "matched_by": matched_by, "only_in_a": len(a) - n, "only_in_b": len(b) - n,
            "a": accuracy(right_a), "b": accuracy(right_b),
            "both_right": len(right_a & right_b), "neither_right": n - len(right_a | right_b),
            "only_a_right": only_a, "only_b_right": only_b,
            "difference": difference, "difference_ci_low": low, "difference_ci_high": high, "mcnemar_p": p,
            "verdict": verdict(only_a, only_b, p),
            "disagreements": [{"file": f, "label": a[f][0], "a": a[f][1], "b": b[f][1]}
                              for f in common if f in right_a ^ right_b]}


def verdict(only_a: int, only_b: int, p: float) -> str:
    """One sentence a reader can act on."""
    if only_a == only_b:
        return f"no difference: each reads {only_a} image(s) the other misses"
    better, worse = ("b", "a") if only_b > only_a else ("a", "b")
    if p < SIGNIFICANT:
        return f"{better} reads better than {worse} (McNemar p = {p:.3g} < {SIGNIFICANT})"
    return (f"{better} is ahead, but by no more than chance could give at this test size (McNemar p = {p:.3g}); "
            "test on more images to tell")


def comparison_markdown(result: dict, sources: dict[str, str]) -> str:
    lines = ["| | a | b |", "|---|---|---|", f"| readings of | `{sources['a']}` | `{sources['b']}` |"]
    lines.append("| exact match (95% interval) | " + " | ".join(
        f"{result[k]['accuracy']:.4f} ({result[k]['ci_low']:.4f}-{result[k]['ci_high']:.4f})" for k in "ab") + " |")
    lines.append(f"| right where the other is wrong | {result['only_a_right']} | {result['only_b_right']} |")
    lines += ["", f"{result['images']} images read by both: {result['both_right']} right in both, "
                  f"{result['neither_right']} in neither."]
    if result["matched_by"] == "file name":  # generated captchas: one text drawn two ways
        lines.append("Matched by file name (no path in common): the same images in other folders or packed, or, "
                     "for two generated designs with the same dataset.seed, each text drawn by both.")
    if result["only_in_a"] or result["only_in_b"]:
        lines.append(f"Left out, read by one only: {result['only_in_a']} of a's, {result['only_in_b']} of b's.")
    lines += ["", f"b - a: {result['difference']:+.4f} (95% interval {result['difference_ci_low']:+.4f} to "
                  f"{result['difference_ci_high']:+.4f}); exact McNemar p = {result['mcnemar_p']:.3g}.",
              "", f"Verdict: {result['verdict']}."]
    shown = result["disagreements"][:SHOWN]
    if shown:
        lines += ["", f"Images one reads right and the other wrong ({len(shown)} of {len(result['disagreements'])}):",
                  "", "| file | label | a | b |", "|---|---|---|---|"]
        lines += [f"| {Path(d['file']).name} | {d['label']} | {d['a']} | {d['b']} |" for d in shown]
    return "\n".join(lines) + "\n"


def compare(a: str, b: str, out: Path, mlflow_cfg=None) -> dict:
    """Compare the readings of a and b (run or evaluation folders, CSV files or MLflow run ids,
    looked up in the `mlflow` config's store); compare.json and compare.md into out."""
    sources = {"a": str(a), "b": str(b)}
    if any(is_run_id(s) for s in sources.values()) and mlflow_cfg is not None:
        import mlflow

        from bearcat import tracking

        mlflow.set_tracking_uri(tracking.tracking_uri(mlflow_cfg.tracking_uri))
    with tempfile.TemporaryDirectory() as scratch:
        readings = {k: read_predictions(k, predictions_file(k, s, Path(scratch))) for k, s in sources.items()}
    result = compare_readings(readings["a"], readings["b"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", {"sources": sources, **result}, indent=1)
    text = comparison_markdown(result, sources)
    (out / "compare.md").write_text(text, encoding="utf-8")
    print(text, flush=True)
    log.info("comparison written: %s, %s", out / "compare.md", out / "compare.json")
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="compare")
@overrides.plain_errors
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    out = Path(cfg.out) if cfg.get("out") else Path(HydraConfig.get().runtime.output_dir)
    compare(str(cfg.a), str(cfg.b), out, cfg.mlflow)


cli = overrides.command(main, "compare")  # `--help`, the key meant for a misspelt key, a line for Ctrl-C


if __name__ == "__main__":
    cli()
