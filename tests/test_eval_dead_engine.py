"""`qwenguard eval --remote` against an engine that never gives a verdict (red-team finding): rows without a
verdict are not scored as correct, the metrics are not available when no row was judged, the table counts
the errors (in its title), and the command exits 2 unless ``--allow-errors`` says errors are acceptable."""

from __future__ import annotations

import json

from engines import every_third_garbled, recording_engine
from qwenguard.core.cli import app
from typer.testing import CliRunner

ROWS = 12


def _eval(url, out, *extra):
    return CliRunner().invoke(
        app, ["eval", "sample", "--remote", url, "--limit", str(ROWS), "--out", str(out), "--no-progress", *extra]
    )


def _dead(body):
    return "I cannot help with that."  # never a Qwen3Guard answer: every row is a guard error


def test_an_engine_that_never_answers_fails_the_run(tmp_path):
    with recording_engine(answer=_dead) as engine:
        res = _eval(engine.url, tmp_path)
    assert res.exit_code == 2, res.output
    assert "100.0%" not in res.output  # no recall, precision or accuracy out of rows never judged
    assert f"{ROWS} rows got no verdict" in res.output and "--allow-errors" in res.output
    report = json.loads((tmp_path / "report.json").read_text())  # the report is still written
    assert report["meta"]["errors"] == ROWS
    for mapping in report["mappings"].values():
        overall = mapping["overall"]
        assert overall["n"] == 0 and mapping["errors"] == ROWS
        assert overall["recall"] is None and overall["precision"] is None and overall["accuracy"] is None
        assert overall["f1"] is None and overall["mcc"] is None
        assert overall["tp"] == overall["fp"] == overall["tn"] == overall["fn"] == 0
    assert "| strict * | – | – |" in (tmp_path / "report.md").read_text()


def test_allow_errors_accepts_them_and_the_table_still_counts_them(tmp_path):
    with recording_engine(answer=_dead) as engine:
        res = _eval(engine.url, tmp_path, "--allow-errors")
    assert res.exit_code == 0, res.output
    assert "100.0%" not in res.output
    assert f"{ROWS} rows · {ROWS} errors (no verdict" in res.output  # the table's title counts them
    row = next(line for line in res.output.splitlines() if line.strip().startswith("strict"))
    assert row.split()[2:6] == ["–"] * 4  # recall, precision, F1, accuracy: not available


def test_some_errors_are_left_out_of_the_metrics_not_scored_as_blocked(tmp_path):
    with recording_engine(answer=every_third_garbled()) as engine:
        res = _eval(engine.url, tmp_path, "--max-in-flight", "1", "--concurrency", "1", "--batch-size", "4")
    assert res.exit_code == 2, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    errors = report["meta"]["errors"]
    assert errors == ROWS // 3
    for mapping in report["mappings"].values():
        o = mapping["overall"]
        assert mapping["errors"] == errors and o["n"] == ROWS - errors == o["tp"] + o["fp"] + o["tn"] + o["fn"]


def test_a_run_without_the_bar_still_says_each_kind_of_guard_error_once_and_errors_are_one_line(tmp_path):
    """A newcomer's first hour (fh46): with ``--no-progress`` (a CI log) the cause of the guard errors was only in
    report.md, and the closing error wrapped at 80 columns although the docs promise one line per error."""
    with recording_engine(answer=_dead) as engine:
        res = _eval(engine.url, tmp_path)
    said = [line for line in res.output.splitlines() if line.startswith("guard error:")]
    assert len(said) == 1 and "VerdictParseError" in said[0], res.output  # one kind, said once
    closing = next(line for line in res.output.splitlines() if "rows got no verdict" in line)
    assert closing.startswith("error:") and closing.endswith("--allow-errors to accept them."), res.output
