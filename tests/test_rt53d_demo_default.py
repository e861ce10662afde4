"""rt53d F11: the demo guard (a test fixture, not a safety model) is never loaded or served by default without
a word.

`Guard.from_pretrained()` with no model logs a warning (once); ``qwenguard serve`` on a non-loopback ``--host``
without ``--model`` refuses to start, before anything loads; ``--model demo`` there still serves it, saying so;
on loopback the first hour's ``qwenguard serve`` keeps serving the demo. Before: all of them silent.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest
from qwenguard.core import Guard
from qwenguard.core import guard as guard_module
from qwenguard.core.cli import app
from typer.testing import CliRunner

SERVE = [sys.executable, "-m", "qwenguard.core.cli", "serve"]
KEY = "k" * 32


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_serving(monkeypatch):
    from qwenguard.core import server

    seen: dict = {}
    monkeypatch.setattr(server, "serve", lambda guard, **kw: seen.update(kw, model=guard.backend.name))
    return seen


def test_from_pretrained_without_a_model_warns_once_that_it_is_the_demo(monkeypatch, caplog):
    monkeypatch.setattr(guard_module, "_implicit_demo_warned", False, raising=False)
    with caplog.at_level(logging.WARNING, logger="qwenguard"):
        for _ in range(2):
            Guard.from_pretrained(device="cpu").close()
    said = [r for r in caplog.records if "demo guard" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, [r.getMessage() for r in caplog.records]
    assert "not a safety model" in said[0].getMessage()


def test_from_pretrained_demo_named_explicitly_says_nothing(monkeypatch, caplog):
    monkeypatch.setattr(guard_module, "_implicit_demo_warned", False, raising=False)
    with caplog.at_level(logging.WARNING, logger="qwenguard"):
        Guard.from_pretrained("demo", device="cpu").close()
    assert not [r for r in caplog.records if "demo guard" in r.getMessage()]


def test_serve_on_a_public_interface_without_model_refuses_before_loading():
    proc = subprocess.run(
        [*SERVE, "--host", "0.0.0.0", "--port", str(_port()), "--api-key", KEY, "--device", "cpu"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --host 0.0.0.0 without --model"), lines
    assert "not a safety model" in lines[0] and "--model demo" in lines[0], lines


def test_serve_on_a_public_interface_with_model_demo_serves_it_saying_so(no_serving):
    result = CliRunner().invoke(
        app,
        ["serve", "--host", "0.0.0.0", "--port", str(_port()), "--api-key", KEY, "--model", "demo", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert no_serving["model"] == "demo" and no_serving["host"] == "0.0.0.0"
    assert "warning: serving the demo guard, a test fixture and not a safety model" in result.output


def test_serve_on_loopback_without_model_still_serves_the_demo(no_serving):
    result = CliRunner().invoke(app, ["serve", "--port", str(_port()), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert no_serving["model"] == "demo"
    assert "not a safety model" not in result.output
