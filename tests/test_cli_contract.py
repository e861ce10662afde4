"""The CLI's contract as a newcomer meets it: exit 0 allowed, 1 blocked, 2 every error, one line each
(a JSON object with --json), tracebacks only with --debug, and a fast one-line failure offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

QG = [sys.executable, "-m", "qwenguard.core.cli"]


def run(*args: str, env: dict[str, str] | None = None, prelude: str = "") -> subprocess.CompletedProcess[str]:
    cmd = QG if not prelude else [sys.executable, "-c", prelude + "\nfrom qwenguard.core.cli import main; main()"]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=full_env)


def one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in p.stderr
    return lines[0]


def test_a_device_this_torch_does_not_have_is_exit_2_in_one_line() -> None:
    line = one_error_line(run("check", "--device", "cuda", "hi"))
    assert "device 'cuda' is not available" in line


def test_json_errors_are_one_json_object_on_stdout() -> None:
    p = run("check", "--json", "--device", "cuda", "hi")
    one_error_line(p)
    out = json.loads(p.stdout)
    assert out["error"]["type"] == "ValueError" and "cuda" in out["error"]["message"]


def test_debug_prints_the_traceback() -> None:
    p = run("--debug", "check", "--device", "cuda", "hi")
    assert p.returncode == 2 and "Traceback" in p.stderr


def test_a_missing_extra_prints_its_install_hint_verbatim() -> None:
    # The server extra "uninstalled": importing fastapi fails as it would without qwenguard[server].
    p = run("serve", prelude="import sys; sys.modules['fastapi'] = None")
    line = one_error_line(p)
    assert 'pip install -e ".[server]" in your qwenguard clone' in line


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_hub_id_offline_fails_at_once_in_one_line(tmp_path) -> None:
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": ""}
    p = run("check", "--model", "Qwen/Qwen3Guard-Gen-0.6B", "hi", env=env)
    line = one_error_line(p)
    assert "cannot reach http://127.0.0.1" in line and "Retrying" not in p.stderr


def test_hf_hub_offline_is_named_in_the_error(tmp_path) -> None:
    p = run(
        "check",
        "--json",
        "--model",
        "Qwen/Qwen3Guard-Gen-0.6B",
        "hi",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )
    one_error_line(p)
    assert json.loads(p.stdout)["error"]["type"] == "ModelNotFound"
    assert "HF_HUB_OFFLINE is set" in p.stderr


BROKEN_MODEL = (
    "from qwenguard.core.backends.transformers_gen import TransformersGen\n"
    "def broken(self, conversations, *, timeout=None):\n"
    "    raise RuntimeError('the model broke')\n"
    "TransformersGen.classify = broken\n"
)


def test_a_guard_that_cannot_answer_is_exit_2_not_blocked() -> None:
    """Exit 1 means "blocked by a verdict"; a guard error is an error (2), though the decision fails closed."""
    plain = run("check", "What is the capital of France?", prelude=BROKEN_MODEL)
    assert plain.returncode == 2, (plain.returncode, plain.stdout, plain.stderr)
    assert "guard error" in plain.stderr and "the model broke" in plain.stderr
    as_json = run("check", "--json", "What is the capital of France?", prelude=BROKEN_MODEL)
    assert as_json.returncode == 2, (as_json.returncode, as_json.stdout, as_json.stderr)
    decision = json.loads(as_json.stdout)
    assert decision["allowed"] is False and decision["reason"] == "guard_error"
