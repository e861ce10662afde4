"""`qwenguard eval --remote` against guard engines on 127.0.0.1: completion mode, a slow engine with a
bounded queue, errors shown as they happen, and the same report as the local guard (tests/engines.py)."""

from __future__ import annotations

import json
import time

from engines import every_third_garbled, recording_engine
from qwenguard.core.cli import app
from typer.testing import CliRunner

ROWS = 48


def _eval(url, out, *extra):
    return CliRunner().invoke(
        app, ["eval", "sample", "--remote", url, "--limit", str(ROWS), "--out", str(out), "--no-progress", *extra]
    )


def test_completion_mode_sends_the_rendered_prompt(tmp_path):
    with recording_engine() as engine:
        res = _eval(engine.url, tmp_path, "--mode", "completion")
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["meta"]["errors"] == 0 and report["meta"]["remote_mode"] == "completion"
        paths = {s.path for s in engine.posts()}
        assert paths == {"/v1/completions"}
        assert all(s.body["prompt"].startswith("<|im_start|>user\n# Task:") for s in engine.posts())


def test_a_slow_engine_makes_the_run_slower_not_every_row_an_error(tmp_path):
    # An engine that works on 4 requests at a time, 0.25 s each: 48 rows take 3 s at best. Each request
    # has 2 s from when it is sent; rows waiting for a slot do not expire while they wait.
    with recording_engine(capacity=4, delay=lambda body: 0.25) as engine:
        start = time.perf_counter()
        res = _eval(engine.url, tmp_path, "--timeout", "2")
        elapsed = time.perf_counter() - start
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["meta"]["errors"] == 0, res.output
        assert report["meta"]["rows"] == ROWS and elapsed >= ROWS / 4 * 0.25
        most = max(len([s for s in engine.posts() if s.at <= t.at < (s.answered_at or 1e18)]) for t in engine.posts())
        assert most <= 8  # never more requests in flight than --max-in-flight (default 8)


def test_errors_show_in_the_progress_as_they_happen(tmp_path):
    with recording_engine(answer=every_third_garbled()) as engine:
        res = CliRunner().invoke(
            app,
            [
                "eval",
                "sample",
                "--remote",
                engine.url,
                "--limit",
                "12",
                "--out",
                str(tmp_path),
                "--progress",
                "--max-in-flight",
                "1",
                "--batch-size",
                "4",
                "--concurrency",
                "1",
                "--allow-errors",  # without it, rows without a verdict fail the run (tests/test_eval_dead_engine.py)
            ],
        )
        assert res.exit_code == 0, res.output
        assert "4 errors" in res.output
        assert "guard error: VerdictParseError" in res.output and "first line is not" in res.output


def test_replicas_separated_by_commas_share_the_rows(tmp_path):
    """``--remote A,B`` was taken as one URL (a ValueError on the comma-joined host): replicas of one model, as
    `Guard.remote([A, B])` takes them; every row judged, the requests spread over both."""
    with recording_engine() as first, recording_engine() as second:
        res = _eval(f"{first.url}, {second.url}", tmp_path)
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["meta"]["errors"] == 0 and report["meta"]["rows"] == ROWS
        assert first.posts() and second.posts()
        assert len(first.posts()) + len(second.posts()) == ROWS
