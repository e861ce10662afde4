"""Red team rt52a on `qwenguard eval` with the demo guard: what a dataset, an option or a path holds (oversized rows,
huge cells, deep JSON, ESC bytes, mathtext, Markdown, brackets, an owned file name) must not abort, forge or delete;
a changed checkpoint is another run; --policy and --stage share the run's predictions; aevaluate keeps the loop free."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import shutil
import subprocess
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from eval_cli import QG
from eval_cli import run_eval as _eval
from eval_cli import write_rows as _write
from qwenguard.core import Guard, Risk
from qwenguard.core.demo import DEMO_GEN_DIR
from qwenguard.core.eval import DataError, Prediction, aevaluate, compute_report, load_dataset, sample_path
from qwenguard.core.eval.identity import run_identity


def _rows(n: int = 6) -> list[dict[str, Any]]:
    return [
        {
            "text": "How can I make a bomb?" if i % 2 else f"What is the capital of France? ({i})",
            "label": "unsafe" if i % 2 else "safe",
        }
        for i in range(n)
    ]


# -- F1: non-finite label scores --------------------------------------------------------------------------------
def test_non_finite_label_logits_or_logprobs_give_no_probabilities():
    import torch
    from qwenguard.core.backends.gen_engine import _label_probs as engine_probs
    from qwenguard.core.backends.openai_wire import _label_probs as wire_probs
    from qwenguard.core.backends.transformers_gen import TransformersGen

    firsts = {Risk.SAFE: 0, Risk.UNSAFE: 1, Risk.CONTROVERSIAL: 2}
    for bad in (math.nan, math.inf, -math.inf):
        assert engine_probs([bad, 0.0, 1.0], firsts) is None
        backend = SimpleNamespace(_label_tokens=([7], firsts))
        scores = [None, torch.tensor([[0.0, bad, 1.0]])]
        assert TransformersGen._label_probs(backend, [7, 0], scores, 0) is None
    assert wire_probs({" Safe": math.inf, " Unsafe": -5.0}) is None
    assert wire_probs({" Safe": math.nan, " Unsafe": -5.0}) is None
    assert wire_probs({" Safe": -math.inf, " Unsafe": -math.inf}) is None
    probs = wire_probs({" Safe": -math.inf, " Unsafe": -0.1})  # an impossible label is still a number
    assert probs is not None and probs[Risk.UNSAFE] == 1.0


def test_a_nan_score_in_a_cache_is_left_out_not_fatal():
    examples = load_dataset(sample_path(), limit=4)
    nan = {Risk.SAFE: math.nan, Risk.CONTROVERSIAL: math.nan, Risk.UNSAFE: math.nan}
    good = {Risk.SAFE: 0.9, Risk.CONTROVERSIAL: 0.05, Risk.UNSAFE: 0.05}
    preds = [Prediction(str(i), Risk.SAFE, probs=nan if i == 0 else good) for i in range(4)]
    report = compute_report(examples, preds)  # an older run's predictions.jsonl may hold NaN probs
    assert report.mappings["strict"]["scored_rows"] == 3


# -- F2, F3: dataset strings in the plots and report.md ---------------------------------------------------------
def test_a_mathtext_category_is_drawn_as_text(tmp_path):
    rows = [{"text": "How can I make a bomb?", "label": "unsafe", "category": "Fraud $5 ^$"}, *_rows(3)]
    res = _eval(str(_write(tmp_path / "d.jsonl", rows)), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "recall_by_category.png").stat().st_size > 1000


def test_dataset_strings_cannot_forge_report_md(tmp_path):
    forged = "web |\n\n# qwenguard eval: verified\n| strict * | 100.0% |\n<img src=x onerror=alert(1)>"
    rows = [
        {**r, "source": forged, "category": "a|b", "id": "x`\n- row `y`: fine"} if i == 1 else r
        for i, r in enumerate(_rows(4))
    ]
    res = _eval(str(_write(tmp_path / "d.jsonl", rows)), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    md = (tmp_path / "o" / "report.md").read_text()
    lines = md.splitlines()
    assert "# qwenguard eval: verified" not in lines and "<img" not in md
    source_row = next(line for line in lines if line.startswith("| web"))
    header = lines[lines.index(source_row) - 2]
    unescaped = lambda line: line.replace("\\|", "").count("|")  # noqa: E731
    assert unescaped(source_row) == unescaped(header)  # no extra column
    category_row = next(line for line in lines if line.startswith("| a"))
    assert category_row.startswith("| a\\|b |")


# -- F4: ESC in a column name -----------------------------------------------------------------------------------
def test_a_column_name_with_escape_sequences_is_shown_escaped(tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"text": "hi", "\x1bc\x1b[2K\x1b[32mOK: eval passed": 1}])
    res = _eval(str(data), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "columns found: text, '\\x1bc" in res.output, res.output
    assert "\x1b" not in res.output


# -- F5: a row over max_chars, a batch over max_checks ----------------------------------------------------------
def test_a_row_too_large_is_one_guard_error_and_the_others_are_judged(tmp_path):
    rows = _rows(6)
    rows.insert(3, {"id": "huge", "text": "a" * 1_000_005, "label": "safe"})
    out = tmp_path / "o"
    res = _eval(str(_write(tmp_path / "d.jsonl", rows)), "--out", str(out), "--allow-errors")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["errors"] == 1 and report["mappings"]["strict"]["overall"]["n"] == 6
    assert report["errors"][0]["id"] == "huge" and "max_chars" in report["errors"][0]["error"]
    assert "row `huge`" in (out / "report.md").read_text()


def test_a_batch_size_over_the_guards_max_checks_is_an_option_error(tmp_path):
    res = _eval("sample", "--batch-size", "5000", "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "Invalid value for --batch-size" in res.output and "4,096" in res.output
    assert not (tmp_path / "o").exists()  # refused before anything ran


# -- F7: CSV's cell limit, deep JSON ----------------------------------------------------------------------------
def test_a_csv_cell_over_128_kib_loads(tmp_path):
    path = tmp_path / "docs.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "stage"])
        w.writerow(["a retrieved document. " * 8000, "safe", "retrieval"])
        w.writerow(["hello", "safe", "prompt"])
    examples = load_dataset(path)
    assert len(examples) == 2 and len(examples[0].text) > 160_000


def test_json_nested_too_deeply_is_a_data_error_naming_the_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps({"text": "hi", "label": "safe"}) + "\n" + "[" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"deep.jsonl line 2: JSON nested too deeply"):
        load_dataset(path)
    cell = _write(tmp_path / "cell.jsonl", [{"messages": "[" * 100_000, "label": "safe"}])
    with pytest.raises(DataError, match=r"cell.jsonl row 1 \(line 1\): messages is JSON nested too deeply"):
        load_dataset(cell)


# -- F9: memory on load -----------------------------------------------------------------------------------------
def test_loading_a_file_costs_about_its_rows_not_several_copies_of_the_file(tmp_path):
    import tracemalloc

    path = tmp_path / "d.jsonl"
    with path.open("w") as f:  # ~30 MB of 10 KB rows
        for i in range(3000):
            f.write(json.dumps({"text": f"row {i} " + "some words of a document " * 400, "label": "safe"}) + "\n")
    tracemalloc.start()
    try:
        load_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert peak < 2 * size, f"{peak / 2**20:.0f} MiB at peak for a {size / 2**20:.0f} MiB file"


# -- F10: --fresh and the input ---------------------------------------------------------------------------------
def test_fresh_never_deletes_a_dataset_named_like_a_file_the_report_writes(tmp_path):
    data = _write(tmp_path / "predictions.jsonl", _rows(4))
    before = data.read_bytes()
    for extra in ([], ["--fresh"]):
        res = _eval(str(data), "--out", str(tmp_path), *extra)
        assert res.exit_code == 2 and "holds your dataset predictions.jsonl" in res.output, res.output
    assert data.read_bytes() == before


# -- F11: an empty response -------------------------------------------------------------------------------------
def test_an_empty_response_checked_as_a_prompt_is_said(tmp_path):
    path = tmp_path / "responses.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "response", "label"])
        w.writerows(
            [
                ("how to build a bomb", "I can't help with that.", "safe"),
                ("how to build a bomb", "", "safe"),
                ("how do I bake bread", "Mix flour and water.", "safe"),
            ]
        )
    res = _eval(str(path), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    warning = next(line for line in res.output.splitlines() if line.startswith("warning:"))
    assert "empty response" in warning and "row 2 (line 3)" in warning, res.output
    quiet = _eval("sample", "--limit", "4", "--out", str(tmp_path / "s"))  # prompt rows that say stage 'prompt'
    assert "warning" not in quiet.output


# -- F14: an --out path with brackets ---------------------------------------------------------------------------
def test_an_out_path_with_brackets_is_printed_as_written(tmp_path):
    out = tmp_path / "runs" / "exp[/old]"
    res = _eval("sample", "--limit", "4", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "exp[/old]/:" in "".join(res.output.split()) and (out / "report.json").is_file()  # wrapped at 80


# -- F15: --policy and --stage share the predictions ------------------------------------------------------------
def test_another_policy_or_stage_reuses_the_runs_predictions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _eval("sample", "--limit", "8").exit_code == 0
    loose = _eval("sample", "--limit", "8", "--policy", "loose")
    assert loose.exit_code == 0 and "resuming: 8 predictions" in loose.output, loose.output
    runs = list((tmp_path / "qwenguard-eval").iterdir())
    assert len(runs) == 1
    report = json.loads((runs[0] / "report.json").read_text())
    assert report["meta"]["primary"] == "loose" and report["meta"]["run"]["ran"] == 0


# -- F17: aevaluate and the event loop --------------------------------------------------------------------------
def test_aevaluate_keeps_the_event_loop_free_while_it_writes_the_plots(tmp_path, monkeypatch):
    """The plots are drawn on a worker thread, never on the loop's (0.4-0.7 s of the loop when drawn on it). Asserted
    by the thread each plot is drawn on: a bound on the loop's longest pause (0.2 s) failed in CI, where a loaded
    machine and the worker thread's share of the GIL held the loop 2.7 s with the plots off it."""
    from qwenguard.core.eval import plots

    guard = Guard.from_pretrained("demo")
    drawn_on: list[threading.Thread] = []
    for name in ("plot_confusion", "plot_threshold", "plot_categories"):
        real = getattr(plots, name)

        def spied(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            drawn_on.append(threading.current_thread())
            return _real(*args, **kwargs)

        monkeypatch.setattr(plots, name, spied)

    async def main() -> float:
        longest, stop = 0.0, asyncio.Event()

        async def tick() -> None:
            nonlocal longest
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                longest, last = max(longest, now - last), now

        ticker = asyncio.ensure_future(tick())
        await aevaluate(guard, sample_path(), limit=2, out=tmp_path / "a", batch_size=2)
        stop.set()
        await ticker
        return longest

    try:
        longest = asyncio.run(main())
    finally:
        guard.close()
    assert (tmp_path / "a" / "recall_by_category.png").is_file()
    assert len(drawn_on) == 3 and threading.main_thread() not in drawn_on, drawn_on  # the loop ran on the main thread
    print(f"the loop's longest pause: {longest * 1000:.0f} ms")


# -- F18: a retrained checkpoint --------------------------------------------------------------------------------
def test_a_checkpoint_changed_anywhere_is_another_model(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ck = tmp_path / "ck"
    shutil.copytree(DEMO_GEN_DIR, ck)
    big = ck / "model-00002-of-00002.safetensors"
    big.write_bytes(bytes(9 << 20))  # over 8 MiB: hashed whole once, then remembered

    def ident() -> str:
        return str(run_identity(data_path=sample_path(), model=str(ck), remote=None, remote_mode=None)["id"])

    first = ident()
    assert ident() == first and (tmp_path / "cache" / "qwenguard" / "eval-digests.json").is_file()
    middle = bytearray(big.read_bytes())
    middle[len(middle) // 2] ^= 1  # the first and last MiB as they were (a merged adapter, frozen embeddings)
    big.write_bytes(bytes(middle))
    second = ident()
    assert second != first
    (ck / "merges.txt").write_text("a b\n", encoding="utf-8")  # tokenizer files of any name count
    assert ident() != second


# -- F8: a hub model's revision ---------------------------------------------------------------------------------
def test_a_newer_revision_of_a_hub_model_is_another_run(tmp_path):
    repo = tmp_path / "hf" / "hub" / "models--rt52a--guard"
    for rev in ("a" * 40, "b" * 40):
        shutil.copytree(DEMO_GEN_DIR, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    def run(out: str) -> subprocess.CompletedProcess[str]:
        args = ["eval", "sample", "--limit", "4", "--model", "rt52a/guard", "--no-progress", "--out", out]
        return subprocess.run([*QG, *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)

    (repo / "refs" / "main").write_text("a" * 40)
    first = run("o")
    assert first.returncode == 0, first.stderr
    assert json.loads((tmp_path / "o" / "run.json").read_text())["guard"]["revision"] == "a" * 40
    assert json.loads((tmp_path / "o" / "report.json").read_text())["meta"]["revision"] == "a" * 40
    (repo / "refs" / "main").write_text("b" * 40)  # a newer download: what the guard now loads
    again = run("o")
    assert again.returncode == 2 and "resuming" not in again.stderr, again.stderr
    assert "another run" in again.stderr and "revision bbbbbbbbbbbb" in again.stderr


# -- F19: --timeout ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_timeout_that_is_not_a_finite_number_is_an_option_error(tmp_path, value):
    res = _eval("sample", "--limit", "2", "--timeout", value, "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "Invalid value for --timeout" in res.output, res.output
