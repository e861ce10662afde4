"""A missing extra's hint is the README's install path (a clone, ``pip install -e ".[extra]"``: qwenguard
is not on the package registry), and the ``local`` hint says to install torch first (an unpinned torch
pulls a multi-GB CUDA build)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_the_local_guard_without_torch_says_torch_first_then_the_clone_install() -> None:
    p = _run(
        "import sys; sys.modules['torch'] = None\n"
        "from qwenguard.core import Guard\n"
        "try:\n    Guard.from_pretrained('demo')\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = p.stdout.strip()
    assert out.startswith("MissingDependency torch is not installed"), p.stdout + p.stderr
    assert "qwenguard[local]'" not in out and 'pip install -e ".[local]"' in out, out
    assert out.index("torch first") < out.index('pip install -e ".[local]"'), out


def test_the_command_without_torch_prints_the_same_hint_in_one_line() -> None:
    p = _run("import sys; sys.modules['torch'] = None\nfrom qwenguard.core.cli import main; main()", "check", "hi")
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert 'pip install -e ".[local]"' in lines[0] and "torch first" in lines[0], lines[0]


def test_an_extra_hint_names_the_clone_install() -> None:
    p = _run(
        "import sys; sys.modules['llama_index'] = sys.modules['llama_index.core'] = None\n"
        "try:\n    import qwenguard.integrations.llamaindex\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = p.stdout.strip()
    assert out.endswith('pip install -e ".[llamaindex]" in your qwenguard clone'), out


def test_the_integration_pages_install_from_a_clone() -> None:
    for page in ("docs/langchain.md", "docs/llamaindex.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        assert "pip install 'qwenguard[" not in text, page
        assert 'pip install -e ".[' in text and "torch" in text.split("\n\n", 2)[1], page
