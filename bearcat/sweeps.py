"""The MLflow side of sweeps (`python -m bearcat.train -m ...`, `hparams_search=optuna`).

One parent run per sweep, one child run per job. The parent is created by a Hydra
callback (`MlflowSweepCallback`, listed in conf/hydra/default.yaml) in the process that
starts the sweep, and found by each job through its tag `bearcat.sweep_id` (the sweep's
output folder), so it works whether the jobs run in the same process (basic launcher),
in worker processes (joblib) or on other machines (submitit, with a shared tracking
server). When the sweep ends the parent gets a summary table of every job (overrides,
status, metrics) as `sweep_summary.csv` / `sweep_summary.md` and the best value of
`optimized_metric`. A sweep over the number of training images also gets learning
curves: one per group of jobs that share their other overrides (a captcha design, an
optimizer, ...). Like tracking.py, this is the only other module that talks to MLflow.
"""
from __future__ import annotations

import atexit
import csv
import logging
import math
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bearcat.benchmark import table

log = logging.getLogger(__name__)

SWEEP_ID = "bearcat.sweep_id"      # tag on the parent and every child: the sweep's output folder
ROLE = "bearcat.sweep_role"        # "parent" on the parent run
JOB_NUM = "bearcat.job_num"        # tag on a child: Hydra's job number in the sweep
OVERRIDES = "bearcat.overrides"    # tag on a child: the job's own overrides, space separated
SUMMARY_METRICS = ("test_accuracy", "test_char_accuracy", "test_cer", "best_val_accuracy", "test_map", "best_val_map",
                   "test_click_success", "data_train_images")
# overrides that may differ between the jobs of a learning curve: the training images and the seed
CURVE_KEYS = ("dataset.train_limit", "dataset.train_size", "trainer.seed")


def job_context() -> dict[str, str] | None:
    """{"sweep_id", "job_num", "overrides"} when called inside a Hydra multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return {"sweep_id": sweep_id(hc.sweep.dir), "job_num": str(hc.job.num),
            "overrides": " ".join(hc.overrides.task)}


def sweep_id(sweep_dir: str) -> str:
    return str(Path(str(sweep_dir)).resolve())


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def find_parent(experiment_id: str, sweep: str) -> str | None:
    """The run id of the parent run of sweep `sweep` (None if no callback created one)."""
    runs = _client().search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.`{SWEEP_ID}` = {_quoted(sweep)} and tags.`{ROLE}` = 'parent'"))
    return runs[0].info.run_id if runs else None


def child_run_options(experiment_id: str) -> dict[str, Any]:
    """Extra `tracking.start_run` arguments of a training job: inside a sweep, the parent
    run id and the tags sweep id, job number and overrides; outside one, nothing."""
    ctx = job_context()
    if ctx is None:
        return {"tags": {}, "parent_run_id": None}
    parent = find_parent(experiment_id, ctx["sweep_id"])
    if parent is None:
        log.warning("sweep %s has no MLflow parent run (hydra.callbacks.mlflow_sweep removed?): "
                    "the job is logged as a run of its own", ctx["sweep_id"])
    return {"tags": {SWEEP_ID: ctx["sweep_id"], JOB_NUM: ctx["job_num"], OVERRIDES: ctx["overrides"]},
            "parent_run_id": parent}


def summarize(parent_id: str, metric: str, direction: str, out_dir: Path) -> dict[str, Any]:
    """Write the children's table into out_dir, attach it to the parent, log the best value
    of `metric` on the parent; for a learning curve also its table and `curve_*` metrics
    (step = training images). Returns {"rows", "best", "curve"}."""
    client = _client()
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = {_quoted(parent_id)}",
                                  max_results=10000)
    rows = []
    for run in children:
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get(SWEEP_ID) != parent.data.tags.get(SWEEP_ID):
            continue  # e.g. an evaluate run nested under the parent by hand
        row = {"job": int(tags.get(JOB_NUM, -1)), "run_id": run.info.run_id, "status": run.info.status,
               "overrides": tags.get(OVERRIDES, ""), metric: metrics.get(metric)}
        row.update({k: metrics.get(k) for k in SUMMARY_METRICS if k != metric and k in metrics})
        rows.append(row)
    rows.sort(key=lambda r: r["job"])
    scored = [r for r in rows if r[metric] is not None and r["status"] == "FINISHED"]
    pick = max if direction == "maximize" else min
    best = pick(scored, key=lambda r: r[metric]) if scored else None
    if best is not None:
        against_best(rows, best)

    columns = list(dict.fromkeys(k for r in rows for k in r)) or ["job", "run_id", "status", "overrides", metric]
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "sweep_summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    marked = [{**r, "job": f"{r['job']} (best)"} if r is best else r for r in rows]
    floats = {c for r in rows for c in columns if isinstance(r.get(c), float)}
    md = table(marked, [(c, c, ".4f" if c in floats else "") for c in columns])
    (out_dir / "sweep_summary.md").write_text(md + "\n", encoding="utf-8")

    for name in ("sweep_summary.csv", "sweep_summary.md"):
        client.log_artifact(parent_id, str(out_dir / name))
    curve = learning_curve(rows, metric)
    if curve:
        log_curve(parent_id, curve, out_dir, write_curve(curve, out_dir))
    client.log_metric(parent_id, "jobs", len(rows))
    client.log_metric(parent_id, "jobs_finished", sum(r["status"] == "FINISHED" for r in rows))
    if best is not None:
        client.log_metric(parent_id, metric if metric.startswith("best_") else f"best_{metric}", float(best[metric]))
        for key, value in (("best_run_id", best["run_id"]), ("best_job", best["job"]),
                           ("best_overrides", best["overrides"])):
            client.set_tag(parent_id, f"bearcat.{key}", str(value))
    return {"rows": rows, "best": best, "curve": curve}


def against_best(rows: list[dict], best: dict) -> None:
    """Each finished job's test readings paired with the best job's (bearcat.compare): its
    `vs_best_difference` (test accuracy minus the best job's) and `vs_best_p` (exact McNemar:
    could chance give a gap this size?). Only for jobs that read the same test images and
    logged their readings (runs before 2026-12-06 did not). Another design drawn with the same
    dataset.seed draws the same texts under the same file names: its job is paired with the
    best text by text, as bearcat.compare pairs them."""
    import tempfile

    from bearcat.compare import TESTED, compare_readings, download_readings, read_predictions

    with tempfile.TemporaryDirectory() as scratch:
        def readings(run_id: str) -> dict | None:
            path = download_readings(run_id, Path(scratch), (TESTED,))
            try:
                return read_predictions(run_id, path) if path is not None else None
            except (OSError, ValueError):  # unreadable readings: no comparison for that job, and the
                return None  # summary still gets written

        own = readings(best["run_id"])
        for row in rows:
            if own is None or row is best or row["status"] != "FINISHED":
                continue
            other = readings(row["run_id"])
            if other is None:
                continue
            try:
                paired = compare_readings(own, other)
            except ValueError:  # no image in common, or one labelled two ways: another test set
                continue
            if paired["only_in_a"] or paired["only_in_b"]:  # a part of the test set: no whole-test gap
                continue
            row["vs_best_difference"], row["vs_best_p"] = paired["difference"], paired["mcnemar_p"]


def download_summary(parent_id: str, dst: Path) -> Path:
    """The sweep_summary.csv of a sweep's parent run, downloaded into dst (a sweep run on
    other machines against a shared tracking server, its folder not here)."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="sweep_summary.csv",
                                                        dst_path=str(dst)))
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise FileNotFoundError(f"sweeps: MLflow run {parent_id} has no sweep_summary.csv in "
                                f"{mlflow.get_tracking_uri()} (a sweep's parent run has one): {e}") from None


def log_curve(run_id: str, curve: list[dict], out_dir: Path, written: list[str]) -> None:
    """Attach a learning curve's files (`write_curve`) to an MLflow run and log its `curve_*`
    metrics with the training images as step: MLflow's chart of such a metric against its
    step draws the curve."""
    client = _client()
    for name in written:
        client.log_artifact(run_id, str(out_dir / name))
    suffix = curve_metric_names(curve)
    logged: dict[str, set] = {}  # a sweep summarized again (Optuna's goes on after a failed job) adds no duplicates
    for point in curve:
        for key, value in point["mean"].items():
            name = f"curve_{key}{suffix[point['group']]}"
            if name not in logged:
                logged[name] = {(m.step, m.value) for m in client.get_metric_history(run_id, name)}
            if (point["train_images"], value) not in logged[name]:
                client.log_metric(run_id, name, value, step=point["train_images"])


def _setting(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _seed(overrides: str) -> str:
    """The job's trainer.seed override, "default" without one."""
    return next((o.split("=", 1)[1] for o in overrides.split() if _setting(o) == "trainer.seed"), "default")


def _values(jobs: list[dict], names: list[str]) -> dict[str, list[float]]:
    """{metric: its values over these jobs}, the metrics no job has left out."""
    values = {m: [r[m] for r in jobs if r.get(m) is not None] for m in names}
    return {m: v for m, v in values.items() if v}


def _means(values: dict[str, list[float]]) -> dict[str, float]:
    return {m: sum(v) / len(v) for m, v in values.items()}


def learning_curve(rows: list[dict], metric: str) -> list[dict]:
    """The finished jobs' metrics against their number of training images (dataset.train_limit
    or train_size), one curve per group of jobs that share every other override: a design, an
    optimizer, ... Each point is one size of one group, the mean over its jobs (seeds); its
    "group" names the overrides that set the group apart ("all" when there is one group), its
    "seeds" the means of each trainer.seed's jobs (the seeds' own curves).
    [] when no group has two sizes: the sweep is no learning curve."""
    done = [r for r in rows if r["status"] == "FINISHED" and r.get("data_train_images") is not None]
    groups: dict[tuple, list[dict]] = {}
    keys: dict[frozenset, tuple] = {}  # the same overrides in another order (another sweep's) are the same group
    for r in done:  # in job order, so the first group's colour is the first job's
        own = tuple(o for o in r["overrides"].split() if _setting(o) not in CURVE_KEYS)
        groups.setdefault(keys.setdefault(frozenset(own), own), []).append(r)
    sizes = {key: sorted({int(r["data_train_images"]) for r in jobs}) for key, jobs in groups.items()}
    if not any(len(measured) > 1 for measured in sizes.values()):
        return []
    shared = set.intersection(*(set(key) for key in groups))
    names = [m for m in dict.fromkeys((metric, *SUMMARY_METRICS)) if m != "data_train_images"]
    curve = []
    for key, jobs in groups.items():
        label = " ".join(o for o in key if o not in shared) or "all"
        for size in sizes[key]:
            group = [r for r in jobs if int(r["data_train_images"]) == size]
            values = _values(group, names)
            by_seed: dict[str, list[dict]] = {}
            for r in group:
                by_seed.setdefault(_seed(r["overrides"]), []).append(r)
            curve.append({"group": label, "train_images": size, "jobs": len(group), "mean": _means(values),
                          "min": {m: min(v) for m, v in values.items()}, "max": {m: max(v) for m, v in values.items()},
                          "seeds": {seed: _means(_values(own, names)) for seed, own in by_seed.items()}})
    return curve


def by_group(curve: list[dict]) -> dict[str, list[dict]]:
    """{group: its points}, the groups in the curve's (the jobs') order."""
    grouped: dict[str, list[dict]] = {}
    for point in curve:
        grouped.setdefault(point["group"], []).append(point)
    return grouped


def curve_metric_names(curve: list[dict]) -> dict[str, str]:
    """{group: suffix of its `curve_*` metrics}: "" for a single curve, else "/" and the group
    in the characters MLflow allows in a metric name (an override's leading "+" dropped, "="
    as ":"), or "/group_<k>" should two groups read alike that way."""
    groups = list(by_group(curve))
    if len(groups) == 1:
        return {groups[0]: ""}
    safe = {g: "/" + re.sub(r"[^\w.\- :/]", "_", " ".join(o.lstrip("+~") for o in g.split()).replace("=", ":"))[:200]
            for g in groups}
    if len(set(safe.values())) < len(groups):
        safe = {g: f"/group_{k + 1}" for k, g in enumerate(groups)}
    return safe


COMPARE_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def images_to_reach(points: list[tuple[int, float]], level: float) -> float | None:
    """Training images a curve of (size, score) points needs to reach `level`, interpolated on
    the log scale (curves are near straight there) between the first size at or above it and
    the size before. None when the curve never reaches it, or already does at its first size
    (how many fewer would do was not measured)."""
    below = None
    for size, value in points:
        if value >= level:
            if below is None:
                return None
            (low, low_value), (high, high_value) = below, (size, value)
            return math.exp(math.log(low) + (level - low_value) / (high_value - low_value)
                            * (math.log(high) - math.log(low)))
        below = (size, value)
    return None


def seed_curves(points: list[dict], score: str) -> dict[str, list[tuple[int, float]]]:
    """{seed: its own (size, score) curve} of one group's points: the seeds measured at two
    sizes or more."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for point in points:
        for seed, means in point.get("seeds", {}).items():
            if score in means:
                curves.setdefault(seed, []).append((point["train_images"], means[score]))
    return {seed: own for seed, own in curves.items() if len(own) > 1}


def images_bounds(points: list[tuple[int, float]], level: float) -> tuple[float, float]:
    """(lowest, highest) training images a curve may need for `level`: the interpolated figure
    twice; (0, first size) when its first size reaches it already; (last size, inf) when it
    never does."""
    found = images_to_reach(points, level)
    if found is not None:
        return found, found
    if points[0][1] >= level:
        return 0.0, float(points[0][0])
    return float(points[-1][0]), math.inf


def _bound_text(bound: tuple[float, float]) -> str:
    """One seed's figure: the number, "≤ first size" or "> last size"."""
    low, high = bound
    return f"≤{high:,.0f}" if low == 0 else f">{low:,.0f}" if high == math.inf else f"{low:,.0f}"


def _span(bounds: list[tuple[float, float]]) -> str:
    """"[lowest to highest]" of the seeds' figures (`images_bounds`): the seed that may need
    the fewest images and the one that may need the most."""
    return f"[{_bound_text(min(bounds))} to {_bound_text(max(bounds, key=lambda b: (b[1], b[0])))}]"


def images_needed_table(curve: list[dict], score: str) -> list[str]:
    """Markdown: for each level in COMPARE_LEVELS that every group's curve crosses between two
    measured sizes, the training images each group needs (`images_to_reach`) and, with several
    groups, its ratio to the first group's: how much stronger one design is than another, in
    images. A group with two seeds or more also gets the range over its seeds' own curves, and
    a design against the first one the levels where the two ranges do not overlap: where the
    gap is more than the seeds'. Groups with a single size (a failed job, say) are left out,
    and named."""
    grouped = by_group(curve)
    points = {g: [(p["train_images"], p["mean"][score]) for p in own if score in p["mean"]]
              for g, own in grouped.items()}
    every = list(points)
    groups = [g for g in every if len(points[g]) > 1]
    notes = [f"Left out, measured at one size: {', '.join(f'`{g}`' for g in every if g not in groups)}."
             ] if len(groups) < len(every) else []
    if not groups:
        return [f"No group has {score} at two sizes or more.", *notes]
    seeds = {g: seed_curves(grouped[g], score) for g in groups}
    seeds = {g: own for g, own in seeds.items() if len(own) > 1}
    rows, spreads = [], {}
    for level in COMPARE_LEVELS:
        needed = {g: images_to_reach(points[g], level) for g in groups}
        if any(n is None for n in needed.values()):
            continue
        spreads[level] = {g: [images_bounds(own, level) for own in seeds[g].values()] for g in seeds}
        cells = {g: f"{needed[g]:,.0f}" + (f" {_span(spreads[level][g])}" if g in seeds else "") for g in groups}
        row = {"level": level, groups[0]: cells[groups[0]]}
        row.update({g: f"{cells[g]} ({needed[g] / needed[groups[0]]:.2f}x)" for g in groups[1:]})
        rows.append(row)
    if not rows:
        return [f"No level of {', '.join(map(str, COMPARE_LEVELS))} is crossed by every group's {score} "
                "between two measured sizes: add sizes to say how many images a level takes.", *notes]
    against = f"; in brackets: against `{groups[0]}`" if len(groups) > 1 else ""
    counts = {len(own) for own in seeds.values()}
    spread = ("; in square brackets: lowest to highest over the seeds' own curves, "
              + (f"{counts.pop()} seeds" + (" each" if len(seeds) > 1 else "") if len(counts) == 1 else
                 ", ".join(f"`{g}` {len(own)} seeds" for g, own in seeds.items()))) if seeds else ""
    lines = [f"Training images to reach each {score} (between measured sizes: interpolated on the log scale"
             f"{against}{spread}):", "",
             table(rows, [("level", "level", "g"), *(("training images" if g == "all" else g, g, "") for g in groups)])]
    for g in (g for g in groups[1:] if groups[0] in seeds and g in seeds):
        lines += ["", _beyond_seeds(spreads, groups[0], g)]
    return [*lines, *notes]


def _beyond_seeds(spreads: dict[float, dict[str, list[tuple[float, float]]]], first: str, other: str) -> str:
    """The levels at which design `other` needs more, or fewer, images than `first` whatever
    the seeds (the two ranges apart), and those at which the ranges overlap."""
    def apart(level: float, more: bool) -> bool:
        above, below = (other, first) if more else (first, other)
        return min(b[0] for b in spreads[level][above]) > max(b[1] for b in spreads[level][below])

    said = []
    for words, levels in (("more images at", [lv for lv in spreads if apart(lv, True)]),
                          ("fewer images at", [lv for lv in spreads if apart(lv, False)]),
                          ("the seeds' ranges overlap at", [lv for lv in spreads
                                                            if not apart(lv, True) and not apart(lv, False)])):
        if levels:
            said.append(f"{words} {', '.join(map(str, levels))}")
    return (f"`{other}` against `{first}`, beyond the seeds' spread (no seed of one inside the other's range): "
            + "; ".join(said) + ".")


def _seed_list(point: dict) -> str:
    """The trainer.seed values of a point's jobs, in job order ("default": no override)."""
    return " ".join(point.get("seeds", {}))


def mixed_seeds(grouped: dict[str, list[dict]]) -> list[str]:
    """Markdown lines naming each group whose sizes were measured with different seeds (as
    when sweeps run apart are joined): its mean curve then mixes seeds, and a gap between two
    sizes may be partly the seeds'."""
    lines = []
    for group, points in grouped.items():
        if len({frozenset(p.get("seeds", ())) for p in points}) > 1:
            sizes = "; ".join(f"{p['train_images']}: {_seed_list(p)}" for p in points)
            lines.append(f"Seeds differ between the sizes of `{group}` ({sizes}): its mean curve mixes seeds; "
                         "run the missing seeds to compare like with like.")
    return [""] + lines if lines else []


def write_curve(curve: list[dict], out_dir: Path) -> list[str]:
    """learning_curve.csv (one row per group and size: mean, min and max over its jobs),
    learning_curve.md (the means; for each group the first size whose mean reaches a few
    levels; the images each level takes, `images_needed_table`) and learning_curve.png (test
    accuracy, or a detector's test mAP, against the size: one line per group)."""
    names = list(dict.fromkeys(m for point in curve for m in point["mean"]))
    grouped = by_group(curve)
    groups = list(grouped)
    with open(out_dir / "learning_curve.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "train_images", "jobs", "seeds",
                         *(f"{m}_{s}" for m in names for s in ("mean", "min", "max"))])
        for p in curve:
            writer.writerow([p["group"], p["train_images"], p["jobs"], _seed_list(p),
                             *(p[s].get(m, "") for m in names for s in ("mean", "min", "max"))])
    points = [{"group": p["group"], "train_images": p["train_images"], "jobs": p["jobs"], "seeds": _seed_list(p),
               **p["mean"]} for p in curve]
    seeded = any(set(p.get("seeds", ())) - {"default"} for p in curve)
    columns = [("training images", "train_images", "d"), ("jobs", "jobs", "d"),
               *([("seeds", "seeds", "")] if seeded else []), *((m, m, ".4f") for m in names)]
    lines = [table(points, ([("group", "group", "")] if len(groups) > 1 else []) + columns)]
    lines += mixed_seeds(grouped)
    score = next((m for m in ("test_accuracy", "test_map") if m in names), None)
    if score:  # how many images a level takes: the captcha's strength against this model
        lines.append("")
        for group, own in grouped.items():
            lead = f"- {group}: " if len(groups) > 1 else "- "
            for level in (0.5, 0.9, 0.95, 0.99):
                first = next((p["train_images"] for p in own if p["mean"].get(score, -1.0) >= level), None)
                lines.append(f"{lead}{score} {level}: " + (f"reached with {first} training images" if first else
                                                              f"not reached with {own[-1]['train_images']}"))
        lines += ["", *images_needed_table(curve, score)]
    (out_dir / "learning_curve.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    written = ["learning_curve.csv", "learning_curve.md"]
    charted = [p for p in curve if score in p["mean"]] if score else []
    if len({p["train_images"] for p in charted}) > 1:
        from bearcat.gallery import curve_chart

        series = []
        for group, points_of_group in grouped.items():
            own = [p for p in points_of_group if score in p["mean"]]
            series.append({"label": group, "sizes": [p["train_images"] for p in own],
                           "means": [p["mean"][score] for p in own], "lows": [p["min"][score] for p in own],
                           "highs": [p["max"][score] for p in own]})
        curve_chart([one for one in series if one["sizes"]],
                    f"{score}: mean of each size's jobs (bar: lowest to highest)", out_dir / "learning_curve.png")
        written.append("learning_curve.png")
    return written


class MlflowSweepCallback(Callback):
    """Hydra callback: an MLflow parent run around every multirun of the listed tasks.

    tasks: the `task_name`s it acts on (train; evaluate runs nest under their training run).
    direction: maximize | minimize: how the best job's `optimized_metric` is picked.
    """

    def __init__(self, tasks=("train",), direction: str = "maximize"):
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.callbacks.mlflow_sweep.direction={direction!r}: use maximize or minimize")
        self.tasks = tuple(tasks)
        self.direction = direction
        self.parent_id: str | None = None

    def _wanted(self, config: DictConfig) -> bool:
        return config.get("task_name") in self.tasks and "mlflow" in config

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._wanted(config):
            return
        from bearcat import tracking

        experiment_id = tracking.setup(config.mlflow)
        sweep = sweep_id(config.hydra.sweep.dir)
        arguments = " ".join(config.hydra.overrides.task)
        run = _client().create_run(experiment_id, run_name=config.get("run_name") or f"sweep-{Path(sweep).name}",
                                   tags={SWEEP_ID: sweep, ROLE: "parent", "bearcat.sweep_overrides": arguments,
                                         "bearcat.sweeper": str(config.hydra.sweeper.get("_target_", "")),
                                         "bearcat.launcher": str(config.hydra.launcher.get("_target_", ""))})
        self.parent_id = run.info.run_id
        _client().log_param(self.parent_id, "optimized_metric", config.optimized_metric)
        log.info("sweep %s: MLflow parent run %s", sweep, self.parent_id)
        atexit.register(self._end_if_running, config, sweep)

    def _end_if_running(self, config: DictConfig, sweep: str) -> None:
        """At exit: a parent run still RUNNING was ended neither by on_multirun_end nor by a
        failed job (Ctrl-C raises past Hydra's job handling, as does an error of the sweep's
        own): KILLED after a Ctrl-C, else FAILED, with the summary of the jobs so far."""
        from bearcat import overrides

        try:
            parent = _client().get_run(self.parent_id)
            if parent.info.status == "RUNNING":
                if overrides.interrupted and "submitit" not in str(config.hydra.launcher.get("_target_", "")):
                    self._end_killed_jobs(parent.info.experiment_id)
                self._finish(config, sweep, self.parent_id, "KILLED" if overrides.interrupted else "FAILED")
        except Exception as err:  # at exit there is no one left to raise to
            log.warning("sweep %s: could not end its MLflow parent run %s: %s", sweep, self.parent_id, err)

    def _end_killed_jobs(self, experiment_id: str) -> None:
        """After a Ctrl-C, end KILLED the job runs still RUNNING: joblib's workers
        (hydra/launcher=parallel) die with the sweep before their runs can end themselves.
        Not for a cluster's jobs (submitit), which may still be running."""
        client = _client()
        for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}' "
                                                       "and attributes.status = 'RUNNING'"):
            client.set_terminated(run.info.run_id, "KILLED")

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        # A failed job ends a basic or joblib sweep before on_multirun_end: record what there
        # is now (on_multirun_end rewrites it when the sweep carries on, as Optuna's does).
        if job_return.status != JobStatus.FAILED or not self._wanted(config):
            return
        ctx = job_context()
        if ctx is None:
            return
        from bearcat import tracking

        parent = find_parent(tracking.setup(config.mlflow), ctx["sweep_id"])
        if parent:
            self._finish(config, ctx["sweep_id"], parent, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_id is None:
            return
        self._finish(config, sweep_id(config.hydra.sweep.dir), self.parent_id, None)

    def _finish(self, config: DictConfig, sweep: str, parent: str, status: str | None) -> None:
        result = summarize(parent, config.optimized_metric, self.direction, Path(sweep))
        if status is None:
            status = "FINISHED" if any(r["status"] == "FINISHED" for r in result["rows"]) else "FAILED"
        _client().set_terminated(parent, status)
        best = result["best"]
        log.info("sweep summary: %d jobs; best %s = %s (%s)", len(result["rows"]), config.optimized_metric,
                 best and best[config.optimized_metric], best and best["overrides"])
        if result["curve"]:
            log.info("learning curves of %d group(s): %s", len({p["group"] for p in result["curve"]}),
                     Path(sweep) / "learning_curve.md")
