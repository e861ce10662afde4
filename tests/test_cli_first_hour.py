"""The ``qwenguard`` command as a newcomer meets it in the first hour (a real subprocess each): a busy
port, a Stream checkpoint passed as the Gen model, flags that look like they take a value, output
that says what happened."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_contract import one_error_line

QG = [sys.executable, "-m", "qwenguard.core.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QG, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


# -- serve ---------------------------------------------------------------------------------------


def test_serve_on_a_busy_port_is_one_line_and_exit_2_before_the_model_loads() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        p = run("serve", "--port", str(port))
        took = time.monotonic() - started
    line = one_error_line(p)
    assert line == f"error: port {port} on 127.0.0.1 is in use; pass --port", line
    assert "serving" not in p.stderr and took < 20  # no banner, no model load


def _free_port(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_serve_on_ipv6_loopback_prints_a_bracketed_url() -> None:
    try:
        port = _free_port(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    proc = subprocess.Popen(
        [*QG, "serve", "--host", "::1", "--port", str(port)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    banner = ""
    try:
        assert proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "serving" not in banner:
            if sel.select(timeout=1):
                line = proc.stderr.readline()
                if not line:
                    break
                banner += line
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert f"on http://[::1]:{port}/v1 " in banner, banner


# -- Gen and Stream checkpoints ------------------------------------------------------------------


def test_check_with_the_stream_checkpoint_as_the_model_says_to_pass_it_as_stream_model() -> None:
    line = one_error_line(run("check", "--model", "demo-stream", "hi"))
    assert "Qwen3Guard-Stream checkpoint" in line and "--stream-model" in line, line


def test_a_directory_without_config_json_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "emptydir"
    empty.mkdir()
    line = one_error_line(run("check", "--model", str(empty), "hi"))
    assert "has no config.json" in line and "not downloadable" not in line, line


# -- check: flags and output ---------------------------------------------------------------------


def test_json_and_debug_are_plain_flags_in_help() -> None:
    check_help = run("check", "--help").stdout
    root_help = run("--help").stdout
    assert "--json" in check_help and "--debug" in root_help
    for text in (check_help, root_help):
        for line in text.splitlines():
            if "--json" in line or "--debug" in line:
                assert "BOOLEAN" not in line and "<bool>" not in line.lower(), line


def test_no_flag_of_any_command_reads_as_taking_a_value_in_help() -> None:
    """``--help`` itself, on the root and on every command, and every other flag: no type column."""
    flags = {
        "": ("--help", "--debug"),
        "check": ("--help", "--json"),
        "serve": ("--help", "--allow-unauthenticated"),
        "eval": ("--help", "--fresh", "--allow-errors"),
    }
    for command, names in flags.items():
        text = run(*([command] if command else []), "--help").stdout
        for name in names:
            lines = [line for line in text.splitlines() if f"{name} " in line]
            assert lines, (command, name)
            for line in lines:
                assert "BOOLEAN" not in line and "<bool>" not in line.lower(), (command, line)


def test_human_output_says_no_categories_with_a_dash() -> None:
    p = run("check", "What is the capital of France?")
    assert p.returncode == 0, p.stderr
    assert "categories=-" in p.stdout and "None" not in p.stdout, p.stdout


def test_empty_input_is_said_to_be_empty() -> None:
    p = subprocess.run([*QG, "check", "-"], input="   \n", capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "empty" in p.stdout.lower(), p.stdout
    as_json = subprocess.run([*QG, "check", "--json", "-"], input="", capture_output=True, text=True, timeout=300)
    assert json.loads(as_json.stdout)["reason"] == "empty"


# -- eval ----------------------------------------------------------------------------------------


def test_eval_help_shows_no_misleading_zero_default() -> None:
    text = run("eval", "--help").stdout
    assert "default: 1 local, 4 remote" in " ".join(text.replace("│", " ").split())
    assert "[default: 0]" not in text, text


def test_eval_without_matplotlib_fails_before_loading_the_model(tmp_path: Path) -> None:
    prelude = "import sys; sys.modules['matplotlib'] = None\nfrom qwenguard.core.cli import main; main()"
    started = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", prelude, "eval", "sample", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ},
    )
    line = one_error_line(p)
    assert "matplotlib is not installed" in line and '".[eval]"' in line, line
    assert not (tmp_path / "qwenguard-eval").exists() and time.monotonic() - started < 20
