"""`qwenguard eval` as a newcomer meets it in the first hour: the page's sample output is what the command
prints, a ``--limit`` run does not silently replace a bigger run's report, and spreadsheet CSVs load."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from qwenguard.core.eval import load_dataset

QG = [sys.executable, "-m", "qwenguard.core.cli"]
ROOT = Path(__file__).resolve().parents[1]
EVAL_MD = ROOT / "docs" / "eval.md"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QG, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def _block_after(marker: str) -> str:
    """The text of the first fenced block after ``marker`` in docs/eval.md."""
    text = EVAL_MD.read_text(encoding="utf-8")
    rest = text[text.index(marker) :]
    start = rest.index("```text\n") + len("```text\n")
    return rest[start : rest.index("```", start)]


def _words(text: str) -> list[str]:
    return " ".join(text.split()).split(" ")


def test_the_sample_output_on_the_page_is_what_the_command_prints(tmp_path: Path) -> None:
    p = run("eval", "sample", "--limit", "24", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    shown = _block_after("What the terminal shows")
    assert _words(shown) == _words(p.stdout), f"docs/eval.md shows:\n{shown}\nthe command printed:\n{p.stdout}"

    # The refused --out example: the same words, digests aside (the page's my.jsonl is not shipped).
    out_dir = re.search(r"qwenguard-eval/sample-[0-9a-f]{12}", p.stdout)
    assert out_dir is not None
    (tmp_path / "my.jsonl").write_text('{"text": "How can I make a bomb?", "label": "unsafe"}\n', encoding="utf-8")
    refused = run("eval", "my.jsonl", "--out", out_dir.group(0), cwd=tmp_path)
    assert refused.returncode == 2
    hexes = re.compile(r"\b[0-9a-f]{12}\b")
    page = hexes.sub("<hex>", " ".join(_block_after("is refused").split()))
    said = hexes.sub("<hex>", " ".join(refused.stderr.split()))
    assert page == said, f"docs/eval.md shows:\n{page}\nthe command printed:\n{said}"


def test_a_limit_run_warns_before_it_replaces_a_bigger_runs_report(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    bigger = run("eval", "sample", "--limit", "12", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert bigger.returncode == 0, bigger.stderr
    smaller = run("eval", "sample", "--limit", "6", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert smaller.returncode == 0, smaller.stderr
    assert "warning:" in smaller.stderr and "12 rows" in smaller.stderr and "--limit 6" in smaller.stderr, (
        smaller.stderr
    )
    again = run("eval", "sample", "--limit", "6", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert "warning:" not in again.stderr, again.stderr  # replacing a report of the same rows is no news


def test_a_csv_saved_by_excel_with_a_bom_loads(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\nHow can I make a bomb?,unsafe\nhello,safe\n".encode())
    examples = load_dataset(path)
    assert [e.conversation[-1]["content"] for e in examples] == ["How can I make a bomb?", "hello"]


def test_wrong_columns_are_listed_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "wrongcols.csv").write_text("question,answer\nHow can I make a bomb?,1\n", encoding="utf-8")
    p = run("eval", "wrongcols.csv", cwd=tmp_path)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "columns found: question, answer" in lines[0], lines[0]
    (tmp_path / "nocontent.jsonl").write_text('{"input": "hi", "label": "safe"}\n', encoding="utf-8")
    p = run("eval", "nocontent.jsonl", cwd=tmp_path)
    assert "no 'text', 'prompt' or 'messages' column (columns found: input, label)" in p.stderr, p.stderr


def test_the_page_says_prompt_is_a_content_column() -> None:
    table = EVAL_MD.read_text(encoding="utf-8").split("## Data", 1)[1]
    first_row = next(line for line in table.splitlines() if line.startswith("| `text`"))
    assert "`prompt`" in first_row and "| yes |" in first_row, first_row
