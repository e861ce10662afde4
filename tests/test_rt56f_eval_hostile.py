"""Red team rt56f on `qwenguard eval` with the demo guard: a category column naming thousands of categories (or one
huge name) must not make the plot unbounded; a CSV row with more or fewer cells than its header is an error, not a
cut text; report.md's by-category table shows errors; a category's control bytes never reach the terminal; a
symbolic link planted at one of eval's file names is refused, never written through."""

from __future__ import annotations

import json
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from eval_cli import QG
from eval_cli import run_eval as _eval
from eval_cli import write_rows as _write
from qwenguard.core import Guard
from qwenguard.core.errors import QwenGuardError
from qwenguard.core.eval import evaluate, sample_path


def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def _cats_rows(category: str) -> list[dict[str, Any]]:
    return [
        {"text": "How can I make a bomb?", "label": "unsafe", "category": category},
        {"text": "What is the capital of France?", "label": "safe"},
    ]


# -- F2: the category plot's size and cost ----------------------------------------------------------------------
def test_one_cell_naming_thousands_of_categories_keeps_the_plot_bounded(tmp_path):
    n = 2000
    cell = ",".join(f"subcat-{i}" for i in range(n))  # one 20 KB cell: several categories separated by commas
    out = tmp_path / "o"
    res = _eval(str(_write(tmp_path / "d.jsonl", _cats_rows(cell))), "--out", str(out))
    assert res.exit_code == 0, res.output
    few = tmp_path / "few"
    res = _eval(str(_write(tmp_path / "e.jsonl", _cats_rows("a,b"))), "--out", str(few))
    assert res.exit_code == 0, res.output
    width, height = _png_size(out / "recall_by_category.png")
    few_width, few_height = _png_size(few / "recall_by_category.png")
    # 30 categories and one "other" bar per mapping, whatever the column holds (HEAD: 748x105,732 px)
    assert width == few_width and height < 2000 < 20 * few_height, (width, height, few_height)
    report = json.loads((out / "report.json").read_text())
    cats = report["mappings"]["strict"]["by_category"]
    assert len(cats) == n + 1  # every category counted (and "(none)" for the safe row)
    assert sum(c["positives"] for c in cats) == n
    md = (out / "report.md").read_text()
    table = md.split("## By category", 1)[1].split("\n## ", 1)[0]
    assert table.count("\n| subcat-") == 100 and "1,901 more are in `report.json`" in table


def test_a_huge_category_name_costs_what_a_short_one_does(tmp_path):
    def run(name: str, out: str) -> float:
        data = _write(tmp_path / f"{out}.jsonl", _cats_rows(name))
        start = time.perf_counter()
        res = _eval(str(data), "--out", str(tmp_path / out))
        assert res.exit_code == 0, res.output
        return time.perf_counter() - start

    run("warm-up", "w")  # the demo guard's first load
    short = min(run("Violent", "s1"), run("Violent", "s2"))
    huge = run("x" * 300_000, "h")  # HEAD: the 300,000-character tick label, ~24 s against ~1 s
    assert huge < 4 * short, (huge, short)
    report = json.loads((tmp_path / "h" / "report.json").read_text())
    assert any(c["category"] == "x" * 300_000 for c in report["mappings"]["strict"]["by_category"])


# -- F3: a CSV row with more or fewer cells than the header -----------------------------------------------------
@pytest.mark.parametrize(
    "row, cells",
    [("unsafe,Step one, then mix the chemicals for a bomb,web", 4), ("unsafe,How can I make a bomb?", 2)],
    ids=["unquoted-comma", "missing-cell"],
)
def test_a_csv_row_whose_cells_do_not_match_the_header_stops_the_run(tmp_path, row, cells):
    data = tmp_path / "rows.csv"
    data.write_text(f"label,text,source\nsafe,What is the capital of France?,web\n{row}\n", encoding="utf-8")
    res = _eval(str(data), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2, res.output
    message = " ".join(res.output.split())
    assert f"rows.csv row 2 (line 3): {cells} cell(s), the header has 3" in message, res.output
    assert not (tmp_path / "o").exists()  # before any model loads or any file is written


def test_a_quoted_comma_is_one_cell(tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text('label,text\nsafe,"Paris, France"\nunsafe,How can I make a bomb?\n', encoding="utf-8")
    res = _eval(str(data), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output


# -- F8: errors per category in report.md -----------------------------------------------------------------------
def test_report_md_by_category_shows_the_rows_without_a_verdict(tmp_path):
    rows = [{"text": "How can I make a bomb?", "label": "unsafe", "category": "Violent"}]
    rows += [{"id": f"huge{i}", "text": "a" * 1_000_005, "label": "unsafe", "category": "Violent"} for i in range(3)]
    rows.append({"text": "What is the capital of France?", "label": "safe"})
    out = tmp_path / "o"
    res = _eval(str(_write(tmp_path / "d.jsonl", rows)), "--out", str(out), "--allow-errors")
    assert res.exit_code == 0, res.output
    violent = next(c for c in json.loads((out / "report.json").read_text())["mappings"]["strict"]["by_category"])
    assert violent["category"] == "Violent" and violent["errors"] == 3
    lines = (out / "report.md").read_text().splitlines()
    start = lines.index("## By category (gold category)")
    header = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    row = next(line for line in lines[start:] if line.startswith("| Violent |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == len(header) and cells[header.index("errors")] == "3", (header, cells)
    for title in ("## By source", "## By stage"):  # every per-group table has the column
        assert "errors" in lines[lines.index(title) + 2]


# -- F6: control characters in a category, drawn in the plot ----------------------------------------------------
def test_category_control_bytes_never_reach_the_terminal(tmp_path):
    hostile = "\x1b[31mRED\x1b[0m\x1b]0;pwned\x07\rX\x08"
    data = _write(tmp_path / "d.jsonl", _cats_rows(hostile))
    p = subprocess.run(
        [*QG, "eval", str(data), "--out", str(tmp_path / "o"), "--no-progress"], capture_output=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    raw = {hex(b) for b in p.stdout + p.stderr if b in b"\r\x08\x07\x1b"}
    assert not raw, p.stderr.decode("utf-8", "replace")[-2000:]


# -- F4: a symbolic link at one of eval's file names -------------------------------------------------------------
@pytest.mark.parametrize("fresh", [False, True], ids=["plain", "fresh"])
def test_a_dangling_link_in_out_is_refused_not_written_through(tmp_path, fresh):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    (out / "report.md").symlink_to(victim)
    res = _eval("sample", "--limit", "3", "--out", str(out), *(["--fresh"] if fresh else []))
    assert res.exit_code == 2 and "report.md is a symbolic link" in " ".join(res.output.split()), res.output
    assert not victim.exists() and (out / "report.md").is_symlink()


def test_a_link_to_a_file_of_yours_is_left_alone_even_with_fresh(tmp_path):
    out = tmp_path / "out"
    assert _eval("sample", "--limit", "3", "--out", str(out)).exit_code == 0
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my own file")
    (out / "recall_by_category.png").unlink()
    (out / "recall_by_category.png").symlink_to(mine)  # the run.json is this run's: a same-identity rerun
    for args in ((), ("--fresh",)):
        res = _eval("sample", "--limit", "3", "--out", str(out), *args)
        assert res.exit_code == 2 and "is a symbolic link" in res.output, res.output
        assert mine.read_bytes() == b"my own file"


def test_evaluate_from_a_notebook_never_writes_through_a_link(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.json"
    (out / "report.json").symlink_to(victim)
    _evaluate_refuses_the_link(out)
    assert not victim.exists()


def _evaluate_refuses_the_link(out: Path) -> None:
    guard = Guard.from_pretrained("demo")
    try:
        with pytest.raises(QwenGuardError, match="symbolic link"):
            evaluate(guard, sample_path(), limit=3, out=out)
    finally:
        guard.close()


@pytest.mark.parametrize("planted", ["a link to nothing", "a link to forged predictions"])
def test_evaluate_never_reads_or_appends_predictions_through_a_link(tmp_path, planted):
    """U's note on F4: `evaluate(out=...)` in a notebook appended to ``predictions.jsonl`` through a link planted at
    its name (creating or growing the file it points to), and read it as its cache: a link to forged predictions
    would have been scored as the guard's own answers."""
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere.jsonl"
    if planted.endswith("predictions"):
        target.write_text('{"v": 1, "key": "x", "risk": "Safe"}\n', encoding="utf-8")
    before = target.read_bytes() if target.exists() else None
    (out / "predictions.jsonl").symlink_to(target)
    _evaluate_refuses_the_link(out)
    assert (target.read_bytes() if target.exists() else None) == before
