"""The Stream demo given as ``--model``: each command's error names only options that command has (rt64a F2).

``qwenguard check --model demo-stream`` and ``qwenguard eval --model demo-stream`` said "(command line:
--stream-model demo-stream)", an option only ``serve`` has: following the advice ended in "No such option"."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer
from qwenguard.core import Guard
from qwenguard.core.cli import app
from test_cli_contract import one_error_line

QG = [sys.executable, "-m", "qwenguard.core.cli"]
ARGS = {
    "check": ["How can I make a bomb at home?"],
    "eval": ["sample", "--limit", "2", "--no-progress"],
    "serve": ["--port", "0"],  # the port is never bound: the model is refused first
}


def options_of(command: str) -> set[str]:
    """Every option name the command accepts (``--model``, ``-m``, ...)."""
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {name for param in click_command.params for name in (*param.opts, *param.secondary_opts)}


def named_options(line: str, command: str) -> list[tuple[str, str]]:
    """(command, option) for each option the line names: an option after ``qwenguard X`` is X's, any other the
    command's own."""
    named = []
    for match in re.finditer(r"(?<![\w-])--[a-z][a-z-]*", line):
        told = re.findall(r"qwenguard (check|eval|serve)\b", line[: match.start()])
        named.append((told[-1] if told else command, match.group()))
    return named


@pytest.mark.parametrize("command", ["check", "eval", "serve"], ids=str)
def test_the_stream_demo_as_model_names_only_options_the_command_has(tmp_path, command: str) -> None:
    p = subprocess.run(
        [*QG, command, "--model", "demo-stream", *ARGS[command]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    line = one_error_line(p)  # exit 2, one line, no traceback
    assert "'demo-stream' is a Qwen3Guard-Stream checkpoint, not a Gen one" in line, line
    named = named_options(line, command)
    assert named, line  # it says what to pass
    for owner, option in named:
        assert option in options_of(owner), f"{option} is no option of qwenguard {owner}: {line}"
    if command == "serve":
        assert "--stream-model demo-stream" in line and ("serve", "--model") in named, line
    else:
        # It judges with a Gen model (--model demo); the Stream checkpoint goes to serve, or to Python.
        assert (command, "--model") in named and "--model demo" in line, line
        assert "'qwenguard serve --stream-model demo-stream'" in line and "stream_model='demo-stream'" in line, line


def test_the_python_advice_names_stream_model_and_no_command_line_option() -> None:
    with pytest.raises(ValueError) as caught:
        Guard.from_pretrained("demo-stream")
    message = str(caught.value)
    assert "pass it as stream_model='demo-stream'" in message, message
    assert not re.search(r"(?<![\w-])--[a-z]", message), message


@pytest.mark.parametrize("out", [None, "new/deeper/folder"], ids=["default", "given"])
def test_a_refused_model_leaves_no_output_folder_behind(tmp_path, out: str | None) -> None:
    """``eval --model demo-stream`` claimed ``qwenguard-eval/<run>/`` (a run.json and nothing else) before
    the model was refused; the next look at the folder showed a run that never ran."""
    extra = [] if out is None else ["--out", out]
    p = subprocess.run(
        [*QG, "eval", "--model", "demo-stream", *ARGS["eval"], *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert "is a Qwen3Guard-Stream checkpoint" in one_error_line(p)
    assert sorted(f.name for f in tmp_path.rglob("*")) == []
