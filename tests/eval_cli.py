"""The `qwenguard eval` command for tests: datasets written as JSONL, the command run in-process or as a process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from qwenguard.core.cli import app
from typer.testing import CliRunner

#: The command as a process (`subprocess.run(QG + [...])`).
QG = [sys.executable, "-m", "qwenguard.core.cli"]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_eval(*args: str) -> Any:
    return CliRunner().invoke(app, ["eval", *args, "--no-progress"])
