#!/usr/bin/env python
"""Cold start: seconds from launching `python -m bearcat.predict model=BUNDLE images=IMAGE`
(or with `--prompt`, `python -m bearcat.click model=BUNDLE image=IMAGE prompt=TEXT`) to its
exit (one reading), in several Python environments, runs interleaved.

    python scripts/bench_startup.py --bundle outputs/exports/<run id> --image captcha.png \
        --env full=.venv/bin/python --env light=/opt/light/bin/python [--env before=.venv/bin/python@/tmp/old] \
        [--runs 5] [--runtime onnx] [--prompt 天地人]

`--runtime ""` leaves `runtime=` out: each version's default (for `bearcat.click` before
2026-12-06, which took no runtime=, that was Keras).

`--env NAME=PYTHON` runs that interpreter's installed Bearcat; `NAME=PYTHON@SOURCE` runs the
source tree SOURCE with it (PYTHONPATH), e.g. a `git worktree` of an earlier commit. Prints
each run, then the median of each environment, its ratio to the first, and whether
TensorFlow was imported (`python -X importtime` of one more run).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time


def command(python: str, bundle: str, image: str, runtime: str, workdir: str, prompt: str | None) -> list[str]:
    chosen = [f"runtime={runtime}"] if runtime else []
    if prompt:  # the click command takes no Hydra arguments
        return [python, "-m", "bearcat.click", f"model={bundle}", f"image={image}", f"prompt={prompt}", *chosen]
    return [python, "-m", "bearcat.predict", f"model={bundle}", f"images={image}", *chosen,
            f"hydra.run.dir={workdir}/hydra"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="an export bundle folder")
    parser.add_argument("--image", required=True, help="one image file")
    parser.add_argument("--env", action="append", required=True, help="NAME=PYTHON or NAME=PYTHON@SOURCE")
    parser.add_argument("--runs", type=int, default=5, help="runs of each environment")
    parser.add_argument("--runtime", default="onnx", help='"" leaves runtime= out (the command\'s default)')
    parser.add_argument("--prompt", default=None, help="time bearcat.click with this prompt instead of predict")
    args = parser.parse_args()

    envs = []
    for spec in args.env:
        name, _, rest = spec.partition("=")
        python, _, source = rest.partition("@")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("PYTHONPATH", None)
        if source:
            env["PYTHONPATH"] = os.path.abspath(source)
        envs.append((name, os.path.abspath(python), env))
    bundle, image = os.path.abspath(args.bundle), os.path.abspath(args.image)
    times: dict[str, list[float]] = {name: [] for name, _, _ in envs}
    with tempfile.TemporaryDirectory() as workdir:  # not a checkout: each runs the Bearcat it is given
        for run in range(args.runs):
            for name, python, env in envs:
                start = time.perf_counter()
                done = subprocess.run(command(python, bundle, image, args.runtime, workdir, args.prompt), env=env, cwd=workdir,
                                      capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
                times[name].append(seconds)
                print(f"run {run + 1} {name}: {seconds:.2f} s  {done.stdout.strip()}", flush=True)
        first = statistics.median(times[envs[0][0]])
        print("| environment | median s | ratio to " + envs[0][0] + " | imports TensorFlow |")
        print("|---|---:|---:|---|")
        for name, python, env in envs:
            probe = subprocess.run([python, "-X", "importtime", *command(python, bundle, image, args.runtime,
                                                                         workdir, args.prompt)[1:]],
                                   env=env, cwd=workdir, capture_output=True, text=True)
            imported = any(line.split("|")[-1].strip() == "tensorflow" for line in probe.stderr.splitlines())
            median = statistics.median(times[name])
            print(f"| {name} | {median:.2f} | {median / first:.2f} | {'yes' if imported else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
