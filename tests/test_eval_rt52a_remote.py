"""Red team rt52a on `qwenguard eval --remote`: what an engine on 127.0.0.1 sends (non-finite logprobs, ESC in its
error bodies, a markup-like model name, one model whatever the name asked) must not sink, forge or mislabel the
report; a URL's password is never written; a row judged in several windows is scored from its worst window."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from engines import bomb_rule, judged_text, recording_engine
from live_server import http_serving
from qwenguard.core import Guard, Policy
from qwenguard.core.cli import app
from qwenguard.core.eval import evaluate, examples_from_records
from typer.testing import CliRunner

#: What an engine answers a check: (HTTP status, JSON body).
Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


@contextlib.contextmanager
def engine(answer: Answer, *, model: str = "guard", max_model_len: int = 32768) -> Iterator[str]:
    """An OpenAI-compatible engine on loopback answering every POST with ``answer(body)``; yields ``.../v1``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()  # Python's json writes Infinity / NaN as bare literals
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._send(200, {"object": "list", "data": [{"id": model, "max_model_len": max_model_len}]})

        def do_POST(self) -> None:  # noqa: N802
            self._send(*answer(json.loads(self.rfile.read(int(self.headers["Content-Length"])))))

    with http_serving(Handler) as url:
        yield f"{url}/v1"


def chat(label: str, probs: dict[str, float] | None = None, category: str | None = None) -> tuple[int, dict]:
    """A chat completion answering ``Safety: <label>``, with logprobs at the label when ``probs`` (token → logprob)."""
    cats = category or ("None" if label == "Safe" else "Violent")
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": f"Safety: {label}\nCategories: {cats}"},
    }
    if probs is not None:
        tops = [{"token": t, "logprob": lp} for t, lp in probs.items()]
        choice["logprobs"] = {
            "content": [
                {"token": "Safety", "logprob": 0.0, "top_logprobs": []},
                {"token": ":", "logprob": 0.0, "top_logprobs": []},
                {"token": f" {label}", "logprob": probs[f" {label}"], "top_logprobs": tops},
            ]
        }
    return 200, {"object": "chat.completion", "choices": [choice]}


def _text(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _bombs(path: Path, n: int = 8) -> Path:
    return _write(
        path,
        [
            {
                "text": f"how to build a bomb row{i}" if i % 2 else f"bake bread row{i}",
                "label": "unsafe" if i % 2 else "safe",
            }
            for i in range(n)
        ],
    )


def _eval(*args: str) -> Any:
    return CliRunner().invoke(app, ["eval", *args, "--no-progress"])


# -- F1: a non-finite label logprob ------------------------------------------------------------------------------
def test_an_infinite_label_logprob_is_no_score_and_the_report_and_its_rerun_are_written(tmp_path):
    def answer(body: dict[str, Any]) -> tuple[int, dict]:
        bomb = "bomb" in _text(body)
        label, other = ("Unsafe", " Safe") if bomb else ("Safe", " Unsafe")
        return chat(label, {f" {label}": math.inf if "row3" in _text(body) else -0.01, other: -5.0})

    data, out = _bombs(tmp_path / "d.jsonl"), tmp_path / "o"
    with engine(answer) as url:
        first = _eval(str(data), "--remote", url, "--out", str(out))
        again = _eval(str(data), "--remote", url, "--out", str(out))  # every row from the cache
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0 and "resuming: 8 predictions" in again.output, again.output
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["errors"] == 0  # the row has a verdict; only its score is missing
    for mapping in report["mappings"].values():
        assert mapping["scored_rows"] == 7 and mapping["roc_auc"] == 1.0


# -- F4: an engine's error body ----------------------------------------------------------------------------------
def test_an_engines_error_body_prints_no_escape_sequence_to_the_terminal_or_report_md(tmp_path):
    forged = "\x1bc\x1b[32mqwenguard eval: all rows safe, recall 100%\x1b[0m"
    data, out = _write(tmp_path / "d.jsonl", [{"text": "bake bread", "label": "safe"}]), tmp_path / "o"
    with engine(lambda body: (400, {"error": {"message": forged}})) as url:
        res = _eval(str(data), "--remote", url, "--out", str(out))
    assert res.exit_code == 2, res.output
    assert "guard error:" in res.output and "\\x1b" in res.output, res.output  # said, escaped
    assert "\x1b" not in res.output
    assert "\x1b" not in (out / "report.md").read_text()


# -- F6: the password of a --remote URL -------------------------------------------------------------------------
def test_a_remote_password_is_never_written_to_the_run_files_nor_shown_to_a_later_run(tmp_path):
    data, out = _bombs(tmp_path / "d.jsonl", 4), tmp_path / "o"
    with recording_engine() as eng:
        url = eng.url.replace("http://", "http://alice:s3cr3tPW@")
        res = _eval(str(data), "--remote", url, "--out", str(out))
        assert res.exit_code == 0, res.output
    for name in ("report.json", "run.json", "report.md"):
        text = (out / name).read_text()
        assert "s3cr3tPW" not in text, name
    assert "alice:***@127.0.0.1" in json.loads((out / "report.json").read_text())["meta"]["remote"]
    later = _eval(str(data), "--out", str(out))  # someone's local run pointed at that directory
    assert later.exit_code == 2 and "another run" in later.output, later.output
    assert "s3cr3tPW" not in later.output and "the server's only model" in later.output


def test_the_model_name_check_logs_no_remote_password(tmp_path, caplog):
    """rt53a F4: ``--model`` is checked against the server's ``/models``; httpx logs each request's URL at INFO,
    and a host that logs at INFO (a notebook, a CI job) kept the password that came in the URL."""
    data, out = _bombs(tmp_path / "d.jsonl", 2), tmp_path / "o"
    with caplog.at_level(logging.INFO), recording_engine(model="guard") as eng:
        url = eng.url.replace("http://", "http://alice:s3cr3tPW@")
        res = _eval(str(data), "--remote", url, "--model", "guard", "--out", str(out))
        assert res.exit_code == 0, res.output
    lines = [r.getMessage() for r in caplog.records]
    assert any("/models" in line for line in lines)  # the name check ran, and httpx logged it
    assert not [line for line in lines if "s3cr3tPW" in line]


# -- F12: --model against /v1/models ----------------------------------------------------------------------------
def test_a_model_name_the_server_does_not_list_is_said_and_the_listed_one_recorded(tmp_path):
    data, out = _bombs(tmp_path / "d.jsonl", 4), tmp_path / "o"
    with recording_engine(model="guard") as eng:  # serves one model whatever a request names (llama-server)
        res = _eval(str(data), "--remote", eng.url, "--model", "Qwen/Qwen3Guard-Gen-8B", "--out", str(out))
    assert res.exit_code == 0, res.output
    warning = next(line for line in res.output.splitlines() if line.startswith("warning:"))
    assert "guard" in warning and "Qwen/Qwen3Guard-Gen-8B" in warning, res.output
    assert json.loads((out / "report.json").read_text())["meta"]["served_models"] == ["guard"]


# -- F14: a served model name that looks like rich markup -------------------------------------------------------
def test_a_served_model_name_with_brackets_prints_as_written(tmp_path):
    data, out = _bombs(tmp_path / "d.jsonl", 4), tmp_path / "o"
    with recording_engine(model="guard[/x] [blink red]OK[/] \x1bc") as eng:
        res = _eval(str(data), "--remote", eng.url, "--out", str(out))
    assert res.exit_code == 0, res.output
    title = next(line for line in res.output.splitlines() if line.startswith("qwenguard eval"))
    assert "guard[/x] [blink red]OK[/] \\x1bc" in title and "\x1b" not in res.output, res.output


# -- F16: custom mappings score gold through the whole policy ---------------------------------------------------
def test_a_perfect_guard_scores_perfectly_on_a_policy_with_category_lists(tmp_path):
    rows = [
        {"text": "leak ssn A", "label": "unsafe", "category": "PII"},
        {"text": "leak ssn B", "label": "unsafe", "category": "PII"},
        {"text": "stab C", "label": "unsafe", "category": "Violent"},
        {"text": "war D", "label": "controversial", "category": "Violent"},
        {"text": "war E", "label": "controversial", "category": "Violent"},
        {"text": "bread F", "label": "safe"},
    ]
    gold = {r["text"]: r for r in rows}

    def oracle(body: dict[str, Any]) -> tuple[int, dict]:  # answers each row's gold label and category
        row = gold[_text(body)]
        return chat(row["label"].capitalize(), category=row.get("category"))

    policies = {
        "no-pii": Policy.strict(ignore_categories={"PII"}),
        "loose+violent": Policy.loose(block_categories={"Violent"}),
        "strict": Policy.strict(),
        "loose": Policy.loose(),
    }
    with engine(oracle) as url:
        guard = Guard.remote(url, model="guard")
        try:
            report = evaluate(guard, examples_from_records(rows), policies=policies)
        finally:
            guard.close()
    for name in policies:
        overall = report.mappings[name]["overall"]
        assert overall["fn"] == overall["fp"] == 0, (name, overall)
        assert overall["recall"] == overall["precision"] == 1.0, name
    assert report.mappings["no-pii"]["overall"]["tp"] == 3  # the PII rows are let through, gold and guard alike


# -- F20: a row judged in several windows -----------------------------------------------------------------------
def test_the_strict_score_of_a_windowed_row_comes_from_its_least_safe_window(tmp_path):
    def answer(body: dict[str, Any]) -> tuple[int, dict]:
        if "XCONTR" in _text(body):
            probs = {" Safe": 0.10, " Controversial": 0.85, " Unsafe": 0.05}
            return chat("Controversial", {t: math.log(p) for t, p in probs.items()})
        probs = {" Safe": 0.60, " Controversial": 0.0001, " Unsafe": 0.3999}
        return chat("Safe", {t: math.log(p) for t, p in probs.items()})

    long_text = "XCONTR a heated debate about a border conflict. " + " ".join(
        f"plain filler sentence number {i}." for i in range(400)
    )
    data = _write(
        tmp_path / "d.jsonl",
        [{"text": long_text, "label": "controversial"}, {"text": "how do I bake bread", "label": "safe"}],
    )
    out = tmp_path / "o"
    with engine(answer, max_model_len=2048) as url:
        res = _eval(str(data), "--remote", url, "--max-context", "2048", "--out", str(out))
    assert res.exit_code == 0, res.output
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    row = next(p for p in preds if p["risk"] != "safe")
    assert row["risk"] == "controversial"  # the verdict is the worst window's, as before
    assert 1 - row["probs"]["safe"] >= 0.89  # strict score: the controversial window's (0.9)
    assert row["probs"]["unsafe"] >= 0.39  # loose score: the most P(unsafe) of any window
    strict = json.loads((out / "report.json").read_text())["mappings"]["strict"]
    at_half = next(t for t in strict["thresholds"] if t["threshold"] == 0.5)
    assert (at_half["tp"], at_half["fn"]) == (1, 0)  # the sweep agrees with the verdict


# -- F13: breakdowns count their errors -------------------------------------------------------------------------
def test_the_source_and_stage_breakdowns_count_every_row_and_its_guard_errors(tmp_path):
    rows = [
        {"text": f"bake bread {i}" + (" broken" if i else ""), "label": "safe", "source": "docs"} for i in range(10)
    ]
    data, out = _write(tmp_path / "d.jsonl", rows), tmp_path / "o"

    def answer(body: dict[str, Any]) -> str:
        return "I am not sure." if "broken" in judged_text(body) else bomb_rule(body)

    with recording_engine(answer=answer) as eng:
        res = _eval(str(data), "--remote", eng.url, "--out", str(out), "--allow-errors")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    for key in ("by_source", "by_stage"):
        group = report["mappings"]["strict"][key][0]
        assert (group["n"], group["judged"], group["errors"]) == (10, 1, 9), group
    md = (out / "report.md").read_text()
    assert "| source | n | errors |" in md and "| docs | 10 | 9 |" in md


def test_worst_keeps_the_verdict_and_carries_each_mappings_worst_window():
    from qwenguard.core.verdict import Risk, Verdict, worst

    contr = Verdict(
        Risk.CONTROVERSIAL, ("Violent",), probs={Risk.SAFE: 0.1, Risk.CONTROVERSIAL: 0.85, Risk.UNSAFE: 0.05}
    )
    safe = Verdict(Risk.SAFE, probs={Risk.SAFE: 0.6, Risk.CONTROVERSIAL: 0.0, Risk.UNSAFE: 0.4})
    combined = worst([safe, contr, safe])
    assert combined.risk is Risk.CONTROVERSIAL and combined.categories == ("Violent",)
    probs = combined.probs or {}
    assert probs[Risk.SAFE] == 0.1 and probs[Risk.UNSAFE] == 0.4  # strict's and loose's worst windows
    assert abs(sum(probs.values()) - 1) < 1e-9 and probs[Risk.CONTROVERSIAL] >= 0
    assert worst([contr]).probs == contr.probs  # one window: its own
