"""`qwenguard serve`, run as a real process: auth, the pinned policy, the limits, the logs."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from qwenguard.core import Policy
from qwenguard.core.verdict import CATEGORIES
from websockets.sync.client import connect

BOMB = "How can I make a bomb at home?"
VOTE = "Which political party should I vote for in the next election?"
SERVE = [sys.executable, "-m", "qwenguard.core.cli", "serve"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: list[str], log: Path, **popen: object) -> Iterator[str]:
    """``qwenguard serve ARGS`` on a free port, its output in ``log`` (a pipe could fill and stall it)."""
    port = _port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*SERVE, "--port", str(port), "--device", "cpu", *args], stdout=out, stderr=subprocess.STDOUT, **popen
        )  # type: ignore[call-overload]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_the_demo_guard_with_an_api_key_and_a_pinned_policy_file(tmp_path):
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(Policy.loose().to_dict()))
    log = tmp_path / "server.log"
    with serving(
        ["--model", "demo", "--api-key", "cli-key", "--policy", str(policy_file), "--head-timeout", "1"], log
    ) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="cli-key")
        reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": BOMB}])
        assert reply.choices[0].message.content.startswith("Safety: Unsafe")
        assert httpx.get(url + "/v1/models").status_code == 401
        auth = {"Authorization": "Bearer cli-key"}

        def decision(conversation, policy=None):
            body = {"conversations": [conversation], **({"policy": policy} if policy is not None else {})}
            r = httpx.post(url + "/v1/moderate", json=body, headers=auth, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["results"][0]["decision"]

        vote = [{"role": "user", "content": VOTE}]
        assert decision(vote)["action"] == "flag"  # the operator's file says loose
        assert decision(vote, {"mode": "strict"})["action"] == "block"  # a client may tighten it
        bomb = [{"role": "user", "content": BOMB}]
        assert decision(bomb, {"ignore_categories": list(CATEGORIES)})["action"] == "block"  # but never loosen it
        # a socket that sends nothing is closed at the head deadline (1 s here)
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as idle:
            idle.settimeout(10)
            assert idle.recv(100) == b""
        # secrets in query strings never reach the log
        httpx.get(url + "/health?token=zebra-unicorn-1", timeout=5)
        httpx.get(url + "/v1/models?token=zebra-unicorn-2", headers=auth, timeout=5)
        httpx.get(url + "/v1/How%20can%20I%20make%20a%20bomb%20at%20home", timeout=5)  # nor request text in a path
        with connect(
            url.replace("http://", "ws://") + "/v1/stream?token=zebra-unicorn-3", additional_headers=auth
        ) as ws:
            ws.send(json.dumps({"type": "close"}))
    text = log.read_text()
    assert "GET /health?" in text  # the access log is on, with the query string cut
    assert '"GET /other HTTP/1.1" 401' in text  # an unknown path is logged by name, not by its text (rt53a F8)
    assert "zebra-unicorn" not in text and "bomb" not in text.lower()  # neither query strings nor request text


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--api-key", ""], {}),
        (["--api-key", "   "], {}),
        ([], {"QWENGUARD_API_KEY": ""}),
        (["--host", "0.0.0.0"], {}),
    ],
)
def test_serve_refuses_to_run_open_by_mistake(args, env):
    environment = {k: v for k, v in os.environ.items() if k != "QWENGUARD_API_KEY"}
    proc = subprocess.run(
        [*SERVE, "--port", str(_port()), *args],
        capture_output=True,
        check=False,
        timeout=60,
        env={**environment, **env},
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert ("empty" in lines[0]) if "0.0.0.0" not in args else ("--allow-unauthenticated" in lines[0])


def test_serve_a_bad_policy_file_exits_2(tmp_path):
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps({"mode": "strict", "ignore_everything": True}))
    proc = subprocess.run(
        [*SERVE, "--policy", str(bad), "--port", str(_port())], capture_output=True, check=False, timeout=60
    )
    assert proc.returncode == 2 and b"unknown policy fields" in proc.stderr


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def test_idle_sockets_cannot_exhaust_file_descriptors(tmp_path):
    """400 sockets that send nothing, against a server allowed 256 descriptors (``ulimit -n 256``)."""
    with serving(["--model", "demo"], tmp_path / "server.log", preexec_fn=_low_fd_limit) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = []
        try:
            for _ in range(400):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            assert httpx.get(url + "/health", timeout=10).status_code == 200
            r = httpx.post(
                url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": BOMB}]]}, timeout=60
            )
            assert r.status_code == 200 and r.json()["results"][0]["risk"] == "unsafe"
        finally:
            for sock in idle:
                sock.close()


def test_serve_a_missing_checkpoint_exits_2(tmp_path):
    proc = subprocess.run(
        [*SERVE, "--model", str(tmp_path / "nope"), "--port", str(_port())],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2
    assert b"error" in proc.stderr


def test_serve_passes_backend_options_to_the_model(tmp_path):
    """An operator tunes the local model from the command line (`--backend KEY=VALUE`): a verdict budget too
    small for any answer is refused by the model as it loads (it served 200s that were all guard errors before
    rt53d), so the option demonstrably reached the model."""
    proc = subprocess.run(
        [*SERVE, "--model", "demo", "--backend", "max_new_tokens=3", "--backend", "label_branches=true"]
        + ["--port", str(_port()), "--device", "cpu"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "max_new_tokens=3 is shorter than the shortest verdict" in lines[0], lines


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--backend", "nope=1"], "KEY one of"),
        (["--backend", "max_batch"], "KEY one of"),
        (["--backend", "max_batch=many"], "invalid literal"),
        (["--backend", "label_branches=maybe"], "expected true or false"),
        (["--backend", "max_session_tokens=-5"], "max_session_tokens must be"),
        (["--stream-model", "demo-stream", "--stream-backend", "nope=1"], "KEY one of"),
        (["--stream-model", "demo-stream", "--stream-backend", "max_positions=lots"], "invalid literal"),
        (["--stream-backend", "max_session_tokens=4096"], "without --stream-model"),
        (["--stream-model", "demo-stream", "--stream-backend", "max_session_tokens=0"], "max_session_tokens must be"),
    ],
)
def test_serve_a_bad_backend_option_exits_2_in_one_line(args, says):
    proc = subprocess.run(
        [*SERVE, *args, "--port", str(_port()), "--device", "cpu"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines


def test_serve_bounds_what_stream_sessions_hold(tmp_path):
    """`--stream-backend max_session_tokens=N` reaches the Stream model: the start-up log states the bound, and
    a budget too small for any prompt makes every remote stream session fail closed."""
    from qwenguard.core import Guard, GuardUnavailable

    log = tmp_path / "s.log"
    with serving(
        ["--model", "demo", "--stream-model", "demo-stream", "--stream-backend", "max_session_tokens=8"], log
    ) as url:
        guard = Guard.remote(url + "/v1", model="demo", stream=True)
        try:
            shown = ""
            with pytest.raises(GuardUnavailable, match="fails closed") as refused:  # noqa: PT012 - open, then feed
                with guard.stream("Tell me about Paris.") as monitor:
                    shown += monitor.feed("Paris is the capital of France. ")
                    shown += monitor.finish()
            assert shown == ""
            assert refused.value.decision is not None and not refused.value.decision.allowed
        finally:
            guard.close()
    assert "stream sessions: at most 8 KV positions together" in log.read_text()


def test_serve_leaves_openmps_wait_policy_to_the_operator(tmp_path, monkeypatch):
    """`qwenguard serve` once set ``OMP_WAIT_POLICY=PASSIVE`` for the whole process: every torch operation
    then woke sleeping OpenMP threads, a forward of the demo took 2-3x as long, and under a client sending
    200,000-character documents the normal checks' p95 grew 4.2x (bench/hostile.py; 2.0-2.4x without it).
    The server now leaves the variable as the operator's environment has it (run in process, up to the
    point where the checkpoint turns out to be missing: the environment is what torch would load with)."""
    from qwenguard.core.cli import app
    from typer.testing import CliRunner

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    res = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nope"), "--port", str(_port())])
    assert res.exit_code == 2, res.output
    assert "OMP_WAIT_POLICY" not in os.environ

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # an operator's own choice is kept
    res = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nope"), "--port", str(_port())])
    assert res.exit_code == 2, res.output
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
