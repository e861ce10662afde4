"""A plain ``pip install .`` runs the ``qwenguard`` command: everything the command and ``import
qwenguard.core`` load comes from the core dependencies pyproject.toml declares (and what those
declare in turn), never from a package an extra or another project happened to install.

The command runs in a subprocess in which any other installed package fails to import, as it would
in a fresh virtual environment with only the core dependencies (a second venv is too slow for CI).
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; CI's interpreter has it
from packaging.requirements import Requirement  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _core_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(r) for r in project["dependencies"]]


def _closure(requirements: list[Requirement]) -> set[str]:
    """The distributions a core-only install holds: the core dependencies and, transitively, theirs."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement (or another platform's)
        name = _norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        todo.extend(Requirement(r) for r in dist.requires or [])
    return seen


def _allowed_modules() -> list[str]:
    dists = _closure(_core_requirements())
    allowed = {"qwenguard"}
    for module, owners in md.packages_distributions().items():
        if any(_norm(owner) in dists for owner in owners):
            allowed.add(module)
    return sorted(allowed)


# Runs in the subprocess: a finder that refuses every third-party top-level module not in ALLOWED.
_BLOCKER = """
import sys
ALLOWED = set({allowed!r})

class CoreOnly:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in ALLOWED or top in sys.stdlib_module_names or top.startswith("_"):
            return None
        raise ModuleNotFoundError(f"No module named {{name!r}} (not a core dependency)", name=name)

sys.meta_path.insert(0, CoreOnly())
"""


def _run_core_only(code: str) -> subprocess.CompletedProcess[str]:
    prelude = _BLOCKER.format(allowed=_allowed_modules())
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120, cwd=ROOT / "tests"
    )


def test_core_dependencies_are_installed_here() -> None:
    for req in _core_requirements():
        md.distribution(req.name)  # the check below is only as good as this environment's metadata


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["serve", "--help"], ["eval", "--help"]])
def test_the_command_runs_with_only_the_core_dependencies(args: list[str]) -> None:
    code = f"import sys; sys.argv = ['qwenguard', *{args!r}]\nfrom qwenguard.core.cli import main\nmain()\n"
    p = _run_core_only(code)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Usage" in p.stdout, p.stdout


def test_the_core_package_imports_with_only_the_core_dependencies() -> None:
    p = _run_core_only("import qwenguard.core\nfrom qwenguard.core import Guard, Policy, enforce\nprint('ok')\n")
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_command_error_prints_one_line_with_its_own_hint_with_only_the_core_dependencies(
    json_flag: list[str],
) -> None:
    """rt68f F1: the error line is printed by a helper the eval package held, which needs numpy: in a core-only or
    ``.[remote]`` install every error (here: no torch for the local demo guard) crashed inside its handler, printed
    an 80-line traceback naming the ``.[eval]`` extra, and exited 1, the code for "blocked"."""
    code = (
        f"import sys; sys.argv = ['qwenguard', 'check', *{json_flag!r}, 'hi']\n"
        "from qwenguard.core.cli import main\nmain()\n"
    )
    p = _run_core_only(code)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "[local]" in p.stderr and "[eval]" not in p.stderr, p.stderr[-2000:]
    if json_flag:
        assert '"error"' in p.stdout, p.stdout
