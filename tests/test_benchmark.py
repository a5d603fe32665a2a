"""The benchmark runner's process isolation: a run the kernel kills is reported by name
with its signal, and the runs around it still land in the report."""
import json
import sys

from bearcat.benchmark import run_isolated

COLUMNS = [("name", "name", "s"), ("accuracy", "test_accuracy", ".2f")]


def test_killed_run_is_reported_and_the_others_kept(tmp_path, capsys):
    def child_argv(name, report):
        if name == "killed":  # as the out-of-memory killer would end it
            code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        else:
            code = (f"import json, pathlib; pathlib.Path({str(report)!r}).write_text("
                    f"json.dumps([{{'name': {name!r}, 'test_accuracy': 0.5}}]))")
        return [sys.executable, "-c", code]

    rows = run_isolated(["first", "killed", "last"], child_argv, tmp_path, COLUMNS, "name")

    assert [r["name"] for r in rows] == ["first", "killed", "last"]
    assert rows[0]["test_accuracy"] == 0.5 and rows[2]["test_accuracy"] == 0.5
    assert "killed by signal 9" in rows[1]["error"]
    report = next(p for p in tmp_path.glob("*-report.json"))
    assert json.loads(report.read_text()) == rows
    assert "| last | 0.50 |" in capsys.readouterr().out
