"""Learning curves: `dataset.train_limit` trains on nested subsets of the training images, and a
sweep over it gets a curve (table, `curve_*` metrics with step = training images) in its parent."""
from __future__ import annotations

import csv
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from test_sweeps import run_sweep, runs_of

REAL = SHARED / "swust_cas_20200226"


def splits_with(make_cfg, *overrides):
    from bearcat.experiment import load_sources

    return load_sources(make_cfg(["dataset=folder", f"dataset.root={REAL}", *overrides]))


def test_train_limit_picks_nested_subsets_and_leaves_val_and_test_alone(make_cfg):
    full = splits_with(make_cfg)
    small = splits_with(make_cfg, "dataset.train_limit=50")
    larger = splits_with(make_cfg, "dataset.train_limit=200")
    assert len(small.train) == 50 and len(larger.train) == 200
    assert set(small.train) < set(larger.train) < set(full.train)  # nested: a larger limit adds images
    assert (small.val, small.test) == (full.val, full.test)
    order = {sample: i for i, sample in enumerate(full.train)}
    assert [order[s] for s in larger.train] == sorted(order[s] for s in larger.train)  # the source's order kept
    assert set(splits_with(make_cfg, "dataset.train_limit=50", "trainer.seed=7").train) != set(small.train)
    assert splits_with(make_cfg, f"dataset.train_limit={len(full.train)}").train == full.train


def test_train_limit_applies_to_detection_datasets_too(make_cfg, tmp_path):
    from bearcat.experiment import load_sources
    from test_slider import draw

    draw(tmp_path / "slider", 30)
    full = load_sources(make_cfg(["experiment=slider", f"dataset.root={tmp_path / 'slider'}"]))
    limited = load_sources(make_cfg(["experiment=slider", f"dataset.root={tmp_path / 'slider'}",
                                     "dataset.train_limit=5"]))
    assert len(limited.train) == 5 and {r.path for r in limited.train} < {r.path for r in full.train}
    assert limited.categories == full.categories == ["gap"] and limited.test == full.test


def test_a_run_of_a_learning_curve_is_evaluated_on_its_test_split_and_its_own_training_images(make_cfg, tmp_path):
    """A run trained with dataset.train_limit (every job of a learning curve) is scored by
    `evaluate`: on its test split (this failed for want of a trainer.seed, and would have asked
    for the training images it no longer draws), and with split=train on the very images it
    trained on, picked by its own seed."""
    import csv

    from bearcat.evaluate import evaluate
    from bearcat.experiment import load_sources
    from bearcat.train import train

    cfg = make_cfg(["debug=fast", "dataset.train_limit=24", "trainer.seed=7"])
    train(cfg)
    run_dir = tmp_path / "run"
    scored = {}
    for split in ("test", "train"):
        metrics = evaluate(make_cfg([f"checkpoint={run_dir}", f"split={split}", "latency_images=1"],
                                    config_name="evaluate", output=f"eval_{split}"))
        with open(tmp_path / f"eval_{split}" / "analysis" / "predictions.csv", newline="") as f:
            scored[split] = [row["file"] for row in csv.DictReader(f)]
        assert metrics["test_images"] == len(scored[split])
    trained = load_sources(cfg)  # the 24 images the run trained on, as training picked them
    assert len(scored["test"]) == cfg.dataset.test_size
    assert scored["train"] == [path for path, _ in trained.train] and len(scored["train"]) == 24


@pytest.mark.parametrize("limit", ["0", "100000", "0.5", "many"])
def test_a_train_limit_out_of_range_names_the_key(make_cfg, limit):
    images = len(splits_with(make_cfg).train)
    with pytest.raises(ValueError, match=rf"dataset.train_limit={limit}: give a whole number from 1 to {images},"):
        splits_with(make_cfg, f"dataset.train_limit={limit}")


@pytest.fixture
def logged_sweep(tmp_path, tmp_store):
    """sweep(name, [(overrides, training images, test accuracy), ...]): a parent run with one
    finished child per job in a fresh MLflow store, then `summarize`d into tmp_path/name;
    (client, parent run id, summary)."""
    from bearcat.sweeps import JOB_NUM, OVERRIDES, SWEEP_ID, summarize

    mlflow.set_tracking_uri(tmp_store)  # summarize's client too (a sweep test may have set another)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("curve")

    def sweep(name, jobs):
        parent = client.create_run(experiment, tags={SWEEP_ID: name}).info.run_id
        for num, (overrides, images, accuracy) in enumerate(jobs):
            child = client.create_run(experiment, tags={SWEEP_ID: name, JOB_NUM: str(num), OVERRIDES: overrides,
                                                        "mlflow.parentRunId": parent}).info.run_id
            for key, value in (("data_train_images", images), ("test_accuracy", accuracy),
                               ("best_val_accuracy", accuracy + 0.01)):
                client.log_metric(child, key, value)
            client.set_terminated(child)
        return client, parent, summarize(parent, "best_val_accuracy", "maximize", tmp_path / name)

    return sweep


def test_a_summary_of_jobs_differing_in_size_and_seed_is_a_learning_curve(tmp_path, logged_sweep):
    """Two seeds at two sizes: one point per size, the mean of its seeds; `curve_*` metrics
    on the parent with the size as step; a sweep that varies anything else gets no curve."""
    from bearcat.gallery import CHART_MARGINS, CHART_PAD, CHART_SIZE, CURVE_COLOURS
    from bearcat.sweeps import summarize

    client, parent, result = logged_sweep("curve", [
        ("dataset.train_limit=100 trainer.seed=1 experiment=swust", 100, 0.40),
        ("dataset.train_limit=100 trainer.seed=2 experiment=swust", 100, 0.60),
        ("dataset.train_limit=400 trainer.seed=1 experiment=swust", 400, 0.92),
        ("dataset.train_limit=400 trainer.seed=2 experiment=swust", 400, 0.96)])
    assert [(p["train_images"], p["jobs"]) for p in result["curve"]] == [(100, 2), (400, 2)]
    history = client.get_metric_history(parent, "curve_test_accuracy")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(100, 0.5), (400, 0.94)]
    # summarized again (Optuna's sweeper does so after a failed job): no point logged twice
    summarize(parent, "best_val_accuracy", "maximize", tmp_path / "curve")
    assert len(client.get_metric_history(parent, "curve_test_accuracy")) == 2
    with open(tmp_path / "curve" / "learning_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["group"], r["train_images"], r["seeds"], r["test_accuracy_min"], r["test_accuracy_max"])
            for r in rows] == [("all", "100", "1 2", "0.4", "0.6"), ("all", "400", "1 2", "0.92", "0.96")]
    text = (tmp_path / "curve" / "learning_curve.md").read_text()
    assert text.startswith("| training images | jobs | seeds | best_val_accuracy | test_accuracy |")
    assert "Seeds differ" not in text  # both sizes measured with seeds 1 and 2
    assert "- test_accuracy 0.5: reached with 100 training images" in text
    assert "- test_accuracy 0.9: reached with 400 training images" in text
    assert "- test_accuracy 0.95: not reached with 400" in text
    # the mean's figures, and the range over the two seeds' own curves (seed 2 reads 0.6 at 100 already)
    assert "| level | training images |\n|---|---|\n| 0.6 | 137 [≤100 to 170] |" in text
    assert "| 0.9 | 353 [317 to 379] |\n" in text
    assert {a.path for a in client.list_artifacts(parent)} >= {"learning_curve.csv", "learning_curve.md",
                                                               "learning_curve.png"}
    # the chart: the curve's colour spans the bars' caps (0.40 to 0.96, on an axis from 0.4 to
    # 1.0) from the first size to the last (caps 6 px either side)
    chart = np.asarray(Image.open(tmp_path / "curve" / "learning_curve.png").convert("RGB"))
    assert chart.shape == (CHART_SIZE[1], CHART_SIZE[0], 3)
    ys, xs = np.nonzero((chart == CURVE_COLOURS[0]).all(axis=2))
    left, right, top, bottom = CHART_MARGINS
    plot = CHART_SIZE[1] - top - bottom - 2 * CHART_PAD
    assert ys.min() == pytest.approx(top + CHART_PAD + 0.04 / 0.6 * plot, abs=2)
    assert ys.max() == pytest.approx(top + CHART_PAD + 0.60 / 0.6 * plot, abs=2)
    assert xs.min() == pytest.approx(left + CHART_PAD - 6, abs=2)
    assert xs.max() == pytest.approx(CHART_SIZE[0] - right - CHART_PAD + 6, abs=2)

    # each optimizer has one size: no curve to draw
    client, other, result = logged_sweep("optimizers", [("optimizer=adam dataset.train_limit=100", 100, 0.5),
                                                        ("optimizer=sgd dataset.train_limit=400", 400, 0.9)])
    assert result["curve"] == [] and not list((tmp_path / "optimizers").glob("learning_curve.*"))
    assert client.get_metric_history(other, "curve_test_accuracy") == []


def test_two_designs_get_a_curve_each_named_by_what_sets_them_apart(tmp_path, logged_sweep):
    """A sweep over two captcha designs and the number of training images: one curve per
    design, never averaged across them; the overrides every job shares are left out of the
    names; a design measured at one size is one point."""
    from bearcat.gallery import CHART_MARGINS, CHART_PAD, CHART_SIZE, CURVE_COLOURS

    plain, noisy, once = "+dataset.style.noise_lines=0", "+dataset.style.noise_lines=8", "+dataset.style.noise_lines=20"
    jobs = [(f"experiment=swust {design} dataset.train_limit={size} trainer.seed={seed}", size, accuracy)
            for design, size, seed, accuracy in [(plain, 100, 1, 0.60), (plain, 100, 2, 0.70), (plain, 400, 1, 0.98),
                                                 (noisy, 100, 1, 0.10), (noisy, 400, 1, 0.50), (noisy, 1600, 1, 0.92),
                                                 (once, 400, 1, 0.20)]]
    client, parent, result = logged_sweep("designs", jobs)
    assert [(p["group"], p["train_images"], p["jobs"], round(p["mean"]["test_accuracy"], 6)) for p in result["curve"]] == [
        (plain, 100, 2, 0.65), (plain, 400, 1, 0.98), (noisy, 100, 1, 0.1), (noisy, 400, 1, 0.5),
        (noisy, 1600, 1, 0.92), (once, 400, 1, 0.2)]
    for design, points in ((plain, [(100, 0.65), (400, 0.98)]), (noisy, [(100, 0.1), (400, 0.5), (1600, 0.92)]),
                           (once, [(400, 0.2)])):
        history = client.get_metric_history(parent, "curve_test_accuracy/" + design[1:].replace("=", ":"))
        assert sorted((m.step, round(m.value, 6)) for m in history) == points
    assert client.get_metric_history(parent, "curve_test_accuracy") == []  # only the per-design names
    with open(tmp_path / "designs" / "learning_curve.csv", newline="") as f:
        assert [(r["group"], r["train_images"]) for r in csv.DictReader(f)] == [
            (plain, "100"), (plain, "400"), (noisy, "100"), (noisy, "400"), (noisy, "1600"), (once, "400")]
    text = (tmp_path / "designs" / "learning_curve.md").read_text()
    assert text.startswith("| group | training images | jobs |")
    assert f"- {plain}: test_accuracy 0.95: reached with 400 training images" in text
    assert f"- {noisy}: test_accuracy 0.9: reached with 1600 training images" in text
    assert f"- {noisy}: test_accuracy 0.95: not reached with 1600" in text
    assert f"- {once}: test_accuracy 0.5: not reached with 400" in text
    assert "| level | +dataset.style.noise_lines=0 | +dataset.style.noise_lines=8 |" in text  # once: one size
    assert "| 0.9 | 286 | 1,498 (5.24x) |" in text and "Left out, measured at one size: `" + once + "`." in text
    # the chart: each design in its own colour, at its own heights, and a legend naming them
    chart = np.asarray(Image.open(tmp_path / "designs" / "learning_curve.png").convert("RGB"))
    left, right, top, bottom = CHART_MARGINS
    plot_w, plot_h = CHART_SIZE[0] - left - right - 2 * CHART_PAD, CHART_SIZE[1] - top - bottom - 2 * CHART_PAD
    assert chart.shape == (CHART_SIZE[1] + 3 * 16 + 6, CHART_SIZE[0], 3)  # a legend row per design below
    plot, legend = chart[:CHART_SIZE[1]], chart[CHART_SIZE[1]:]
    # values from 0.10 to 0.98: an axis from 0 to 1
    for colour, (high, low), last_x in ((CURVE_COLOURS[0], (0.98, 0.60), 0.5), (CURVE_COLOURS[1], (0.92, 0.10), 1.0),
                                        (CURVE_COLOURS[2], (0.20, 0.20), 0.5)):
        ys, xs = np.nonzero((plot == colour).all(axis=2))
        assert ys.min() == pytest.approx(top + CHART_PAD + (1 - high) * plot_h, abs=5)
        assert ys.max() == pytest.approx(top + CHART_PAD + (1 - low) * plot_h, abs=5)
        assert xs.max() == pytest.approx(left + CHART_PAD + last_x * plot_w, abs=5)
    for colour in CURVE_COLOURS[:3]:
        assert (legend == colour).all(axis=2).sum() >= 12 * 8  # a swatch of each


def test_a_train_limit_sweep_logs_its_learning_curve(tmp_path):
    client, sweep_dir = run_sweep(tmp_path, "dataset.train_limit=16,32")
    runs = runs_of(client)
    parent = next(r for r in runs if r.data.tags.get("bearcat.sweep_role") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.metrics["data_train_images"] for c in children) == [16, 32]
    history = client.get_metric_history(parent.info.run_id, "curve_test_accuracy")
    by_size = {int(c.data.metrics["data_train_images"]): c.data.metrics["test_accuracy"] for c in children}
    assert sorted((m.step, m.value) for m in history) == sorted(by_size.items())
    with open(sweep_dir / "learning_curve.csv", newline="") as f:
        assert [int(r["train_images"]) for r in csv.DictReader(f)] == [16, 32]
    assert len(list((tmp_path / "cache" / "synthetic").iterdir())) == 1  # one drawing serves every size


def test_images_to_reach_a_level_are_interpolated_on_the_log_scale():
    from bearcat.sweeps import images_to_reach

    curve = [(100, 0.2), (400, 0.6), (1600, 0.9)]
    assert images_to_reach(curve, 0.4) == pytest.approx(200)  # half way between 100 and 400 on the log scale
    assert images_to_reach(curve, 0.9) == pytest.approx(1600)
    assert images_to_reach(curve, 0.95) is None  # never reached
    assert images_to_reach(curve, 0.1) is None  # reached at the first size: how many fewer would do is unknown
    assert images_to_reach([(100, 0.2), (400, 0.7), (1600, 0.6)], 0.65) == pytest.approx(100 * 4 ** 0.9)  # first crossing


def test_the_chart_zooms_to_close_scores_so_a_narrow_spread_shows(tmp_path):
    """Scores between 0.86 and 0.90 get an axis from 0.85 to 0.91, where a spread of 0.0105
    over three seeds is a capped bar of about 50 px (3 px on a 0-1 axis, under the marker);
    a size's label stays inside the image, and a long group name is shortened in the middle."""
    from PIL import ImageDraw

    from bearcat.gallery import CHART_MARGINS, CHART_PAD, CHART_SIZE, CURVE_COLOURS, _font, curve_chart, fitted, \
        value_axis

    assert value_axis([0.86, 0.875, 0.8985]) == (0.85, 0.91, 0.01)  # widened to 0.05, then to whole steps
    assert value_axis([0.4, 0.96]) == (0.4, 1.0, 0.1)
    assert value_axis([0.1, 0.98]) == (0.0, 1.0, 0.2)  # 0.1 steps would be 9 intervals
    assert value_axis([0.2]) == (0.17, 0.23, 0.01) and value_axis([1.0, 1.0]) == (0.95, 1.0, 0.01)

    long = "+dataset.style.noise_lines=20 " + "x" * 200 + " trainer.batch_size=64"
    curve_chart([{"label": "plain", "sizes": [2000, 32000], "means": [0.875, 0.8938], "lows": [0.86, 0.888],
                  "highs": [0.89, 0.8985]},
                 {"label": long, "sizes": [2000, 32000], "means": [0.87, 0.87], "lows": [0.87, 0.87],
                  "highs": [0.87, 0.87]}], "test", tmp_path / "chart.png")
    chart = np.asarray(Image.open(tmp_path / "chart.png").convert("RGB"))
    left, right, top, bottom = CHART_MARGINS
    width, height = CHART_SIZE
    plot_h = height - top - bottom - 2 * CHART_PAD

    def y(value):
        return top + CHART_PAD + (0.91 - value) / 0.06 * plot_h

    last_x = width - right - CHART_PAD  # the last size
    beside = chart[:height, last_x + 5]  # right of the markers (3 px), left of the caps' ends (6 px)
    rows = np.nonzero((beside == CURVE_COLOURS[0]).all(axis=1))[0]
    assert rows.min() == pytest.approx(y(0.8985), abs=2) and rows.max() == pytest.approx(y(0.888), abs=2)
    assert rows.max() - rows.min() > 40
    assert not (beside == CURVE_COLOURS[1]).all(axis=1).any()  # no spread, no bar
    labels = chart[height - bottom + 4:height - bottom + 22]
    dark = np.nonzero((labels < 100).all(axis=2).any(axis=0))[0]
    last_label = dark[dark > last_x - 40]  # "32000": centred under its point, wholly inside the image
    assert (last_label.min() + last_label.max()) / 2 == pytest.approx(last_x, abs=3) and dark.max() <= width - 2

    draw, font = ImageDraw.Draw(Image.new("RGB", (10, 10))), _font(12)
    short = fitted(draw, long, font, 400)
    assert draw.textlength(short, font=font) <= 400 and "…" in short
    assert short.startswith("+dataset.style.noise_lines=20 x") and short.endswith("x trainer.batch_size=64")
    assert fitted(draw, "plain", font, 400) == "plain"
    legend = chart[height:]
    assert legend.shape[0] == 2 * 16 + 6 and (legend == CURVE_COLOURS[1]).all(axis=2).sum() >= 12 * 8


def table_lines(curve):
    """images_needed_table's test_accuracy markdown, one line per item."""
    from bearcat.sweeps import images_needed_table

    return "\n".join(images_needed_table(curve, "test_accuracy")).splitlines()


def test_the_images_each_design_needs_for_a_level_and_their_ratio():
    def points(group, values):
        return [{"group": group, "train_images": size, "mean": {"test_accuracy": value}} for size, value in values]

    curve = points("font=a", [(100, 0.2), (400, 0.6), (1600, 0.9)]) + points(
        "font=b", [(100, 0.1), (400, 0.3), (1600, 0.7), (6400, 0.95)])
    lines = table_lines(curve)
    assert lines[2:4] == ["| level | font=a | font=b |", "|---|---|---|"]
    assert lines[4:] == ["| 0.5 | 283 | 800 (2.83x) |", "| 0.6 | 400 | 1,131 (2.83x) |",
                         "| 0.7 | 635 | 1,600 (2.52x) |", "| 0.8 | 1,008 | 2,786 (2.76x) |",
                         "| 0.9 | 1,600 | 4,850 (3.03x) |"]  # 0.95 and 0.99: design a never gets there
    # a design measured at one size is left out, and named
    with_c = table_lines(curve + points("font=c", [(400, 0.5)]))
    assert with_c[:-1] == lines and with_c[-1] == "Left out, measured at one size: `font=c`."
    # one curve: the images it needs, no ratio
    assert table_lines(points("all", [(100, 0.2), (400, 0.6)]))[2:] == [
        "| level | training images |", "|---|---|", "| 0.5 | 283 |", "| 0.6 | 400 |"]
    # curves that cross no level between two measured sizes
    apart = table_lines(points("font=a", [(100, 0.2), (400, 0.3)]) + points("font=b", [(100, 0.6), (400, 0.7)]))
    assert apart == ["No level of 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99 is crossed by every group's test_accuracy "
                     "between two measured sizes: add sizes to say how many images a level takes."]


def test_the_seeds_spread_says_whether_a_gap_between_designs_is_more_than_the_seeds():
    """Two seeds per design: each figure gets the range over the seeds' own curves (an end a
    seed's curve does not pin down as ≤ first size or > last size), and a line names the
    levels where the designs' ranges do not overlap. Figures worked out by hand."""
    def design(group, seeds):
        sizes = sorted({size for own in seeds.values() for size, _ in own})
        return [{"group": group, "train_images": size,
                 "mean": {"test_accuracy": sum(dict(own)[size] for own in seeds.values()) / len(seeds)},
                 "seeds": {seed: {"test_accuracy": dict(own)[size]} for seed, own in seeds.items()}}
                for size in sizes]

    plain = design("font=a", {"1": [(100, 0.2), (400, 0.6)], "2": [(100, 0.4), (400, 0.8)]})
    noisy = design("font=b", {"1": [(100, 0.1), (400, 0.3), (1600, 0.7)], "2": [(100, 0.1), (400, 0.5), (1600, 0.9)]})
    lines = table_lines(plain + noisy)
    assert lines[0].endswith("in square brackets: lowest to highest over the seeds' own curves, 2 seeds each):")
    assert lines[4:7] == ["| 0.5 | 200 [141 to 283] | 566 [400 to 800] (2.83x) |",
                          "| 0.6 | 283 [200 to 400] | 800 [566 to 1,131] (2.83x) |",
                          "| 0.7 | 400 [283 to >400] | 1,131 [800 to 1,600] (2.83x) |"]  # seed 1 of a: 0.6 at most
    assert lines[7:] == ["", "`font=b` against `font=a`, beyond the seeds' spread (no seed of one inside the other's "
                             "range): more images at 0.5, 0.6; the seeds' ranges overlap at 0.7."]
    swapped = table_lines(noisy + plain)
    assert swapped[-1].endswith("range): fewer images at 0.5, 0.6; the seeds' ranges overlap at 0.7.")
    # one design, its seeds' range; a seed at its level already at the first size reads ≤ that size
    alone = design("all", {"1": [(100, 0.5), (400, 0.9)], "2": [(100, 0.3), (400, 0.7)]})
    assert table_lines(alone)[4:] == ["| 0.5 | 141 [≤100 to 200] |", "| 0.6 | 200 [141 to 283] |",
                                      "| 0.7 | 283 [200 to 400] |", "| 0.8 | 400 [283 to >400] |"]
    # a design with one seed gets no range, and no line against the others
    single = design("font=c", {"1": [(100, 0.2), (400, 0.6), (1600, 0.9)]})
    mixed = table_lines(plain + single)
    assert mixed[0].endswith("over the seeds' own curves, 2 seeds):")
    assert mixed[4] == "| 0.5 | 200 [141 to 283] | 283 (1.41x) |" and not any("against" in l for l in mixed[5:])


def test_sweeps_run_apart_join_into_one_curve(tmp_path, logged_sweep):
    """`python -m bearcat.curve` joins the summaries of two sweeps: a third size and a second
    seed run later are the same curve (their overrides in another order), with the seeds'
    spread, also logged as an MLflow run; a sweep may be given by its parent run id; a folder
    without a summary, an unknown run, a file that is no summary, or jobs at one size are
    refused by name."""
    from bearcat.curve import join_curves

    _, first_parent, _ = logged_sweep("first", [("font=a dataset.train_limit=100 trainer.seed=1", 100, 0.2),
                                                ("font=a dataset.train_limit=400 trainer.seed=1", 400, 0.6)])
    logged_sweep("later", [("trainer.seed=1 dataset.train_limit=1600 font=a", 1600, 0.9),
                           ("trainer.seed=2 dataset.train_limit=100 font=a", 100, 0.4),
                           ("trainer.seed=2 dataset.train_limit=400 font=a", 400, 0.8)])
    out = tmp_path / "joint"
    done = subprocess.run([sys.executable, "-m", "bearcat.curve", f"sweeps=[{tmp_path / 'first'},{tmp_path / 'later'}]",
                           f"out={out}", f"hydra.run.dir={tmp_path / 'run'}",
                           f"mlflow.artifact_root={tmp_path / 'artifacts'}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "learning curve of 5 job(s) from 2 sweep(s)" in done.stdout
    # the joint curve is an MLflow run of its own (MLFLOW_TRACKING_URI: this test's store)
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`bearcat.task` = 'curve'")
    assert [r.info.run_name for r in runs] == ["curve-joint"] and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["bearcat.curve_sweeps"] == f"{tmp_path / 'first'} {tmp_path / 'later'}"
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {
        "learning_curve.csv", "learning_curve.md", "learning_curve.png"}
    history = client.get_metric_history(runs[0].info.run_id, "curve_test_accuracy")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(100, 0.3), (400, 0.7), (1600, 0.9)]
    with open(out / "learning_curve.csv", newline="") as f:
        assert [(r["group"], r["train_images"], r["jobs"], r["seeds"], r["test_accuracy_min"], r["test_accuracy_max"])
                for r in csv.DictReader(f)] == [("all", "100", "2", "1 2", "0.2", "0.4"),
                                                ("all", "400", "2", "1 2", "0.6", "0.8"),
                                                ("all", "1600", "1", "1", "0.9", "0.9")]
    text = (out / "learning_curve.md").read_text()
    # seed 2 was not run at 1600: the mean curve mixes seeds, and the file says so
    assert ("Seeds differ between the sizes of `all` (100: 1 2; 400: 1 2; 1600: 1): its mean curve mixes seeds; "
            "run the missing seeds to compare like with like.") in text
    # 0.5: the mean (100: 0.3, 400: 0.7) at 200; seed 1 at 283, seed 2 at 141 (worked out by hand)
    assert "| 0.5 | 200 [141 to 283] |" in text and "2 seeds):" in text
    assert (out / "learning_curve.png").stat().st_size > 1000
    # one folder given bare: that sweep's curve again
    alone = subprocess.run([sys.executable, "-m", "bearcat.curve", f"sweeps={tmp_path / 'first'}",
                            f"out={tmp_path / 'again'}", f"hydra.run.dir={tmp_path / 'run'}", "log_to_mlflow=false"],
                           capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    assert len(client.search_runs([runs[0].info.experiment_id], filter_string="tags.`bearcat.task` = 'curve'")) == 1
    with open(tmp_path / "again" / "learning_curve.csv", newline="") as f:
        assert [r["train_images"] for r in csv.DictReader(f)] == ["100", "400"]

    # a sweep given by its MLflow parent run id (run elsewhere): its summary comes from the parent's artifacts
    by_id = join_curves([first_parent, str(tmp_path / "later")], tmp_path / "by_id")
    assert [(p["train_images"], p["jobs"]) for p in by_id["curve"]] == [(100, 2), (400, 2), (1600, 1)]
    assert (tmp_path / "by_id" / "learning_curve.md").read_text() == text
    with pytest.raises(FileNotFoundError, match=f"MLflow run {'0' * 32} has no sweep_summary.csv"):
        join_curves(["0" * 32], tmp_path / "x")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "sweep_summary.csv")):
        join_curves([str(tmp_path / "first"), str(tmp_path / "nowhere")], tmp_path / "x")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "sweep_summary.csv").write_text("job,status\n0,FINISHED\n")
    with pytest.raises(ValueError, match=f"{tmp_path / 'odd' / 'sweep_summary.csv'} is no sweep summary"):
        join_curves([str(tmp_path / "odd")], tmp_path / "x")
    logged_sweep("flat", [("font=a dataset.train_limit=100", 100, 0.2), ("font=b dataset.train_limit=400", 400, 0.6)])
    with pytest.raises(ValueError, match="no group of finished jobs was measured at two sizes"):
        join_curves([str(tmp_path / "flat")], tmp_path / "y")
    assert not (tmp_path / "y").exists()
