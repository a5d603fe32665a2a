"""`pip install .` (a wheel, not the editable install of a checkout) carries the config tree,
installs the `bearcat-*` commands and trains from any folder."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}: rc {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def test_a_wheel_holds_the_config_tree_and_trains_outside_the_checkout(tmp_path, empty_store):
    src = tmp_path / "src"  # built from a copy: a build in the checkout would leave build/ there
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("bearcat", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(tmp_path / "wheel")])
    wheel = next((tmp_path / "wheel").glob("bearcat-*.whl"))

    held = set(zipfile.ZipFile(wheel).namelist())
    configs = {"bearcat/conf/" + p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    code = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bearcat").rglob("*") if p.suffix in (".py", ".html")}
    assert len(configs) > 40 and configs <= held, sorted(configs - held)
    assert code <= held, sorted(code - held)

    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)])
    elsewhere = tmp_path / "elsewhere"  # neither the checkout nor its conf/ is in reach
    (elsewhere / "outputs").mkdir(parents=True)
    shutil.copyfile(empty_store, elsewhere / "outputs" / "mlflow.db")  # the default store, made faster
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(site)}
    found = run([sys.executable, "-c", "import bearcat; print(bearcat.__file__); print(bearcat.CONFIG_DIR)"],
                cwd=elsewhere, env=env).stdout.split()
    assert found == [str(site / "bearcat" / "__init__.py"), str(site / "bearcat" / "conf")]

    commands = sorted(p.name for p in (site / "bin").glob("bearcat-*"))
    assert commands == [f"bearcat-{n}" for n in sorted(
        ["train", "evaluate", "export", "predict", "serve", "label", "prepare", "soup", "curve", "compare"])]
    # each command runs as `python -m bearcat.<name>` does: its --help, the key meant for a misspelt key
    shown = run([str(site / "bin" / "bearcat-predict"), "--help"], cwd=elsewhere, env=env).stdout
    assert shown.startswith("# Read captchas offline") and f"{site / 'bearcat' / 'conf'}/<group>/" in shown
    done = subprocess.run([str(site / "bin" / "bearcat-evaluate"), "run_idd=x"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "run_idd: no such setting; did you mean run_id=x?" in done.stderr
    run([str(site / "bin" / "bearcat-train"), "debug=fast", "dataset.train_size=32", "dataset.val_size=8",
         "dataset.test_size=8", "trainer.epochs=1", "trainer.bn_calibration_images=0", "trainer.max_minutes=null",
         "hydra.run.dir=outputs/run"], cwd=elsewhere, env=env)
    meta = json.loads((elsewhere / "outputs" / "run" / "model" / "bundle.json").read_text())
    assert meta["mode"]["name"] == "ctc"
    assert (elsewhere / "outputs" / "cache").is_dir()
    client = mlflow.MlflowClient(f"sqlite:///{elsewhere}/outputs/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [meta["mlflow_run_id"]] and "test_accuracy" in runs[0].data.metrics
