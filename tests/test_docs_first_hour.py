"""What the demo page promises is what a newcomer sees: each ``print(...)  # output`` comment of its code
block is what that print writes, and the load time it states holds on a small shared machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_MD = ROOT / "docs" / "demo.md"


def _first_python_block(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index("```python\n") + len("```python\n")
    return text[start : text.index("```", start)]


def test_the_demo_blocks_output_comments_are_what_it_prints(tmp_path: Path) -> None:
    code = _first_python_block(DEMO_MD)
    expected = [m.group(1).strip() for m in re.finditer(r"^print\(.*\)\s+#\s*(.+)$", code, flags=re.M)]
    assert expected, "no commented prints found"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = iter(p.stdout.splitlines())
    for comment in expected:  # in order, each the start of a line the block prints
        assert any(line.startswith(comment) for line in lines), (comment, p.stdout)


def test_the_demo_page_does_not_promise_a_one_second_load() -> None:
    code = _first_python_block(DEMO_MD)
    assert "~1 s" not in code and "a few seconds" in code, code.splitlines()[2]
