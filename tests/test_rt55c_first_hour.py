"""A newcomer's first hour against the README's promises (rt55c F2, F4, F5): a hub that takes the connection and
never answers (or trickles its answer) fails the load within the stated bound, whatever requests huggingface_hub
sends; ``qwenguard check --json`` prints a JSON object for a usage error too; a remote-only install that passes
``tokenizer=`` is told to install transformers, not torch and the ``local`` extra."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "Qwen/Qwen3Guard-Gen-0.6B"
#: The bound the test configures (`hub.HUB_ANSWER_TIMEOUT_S`): small, so that the requests huggingface_hub
#: sends on its own (one with a 3 s timeout in 2.4) cannot hide inside it; every timing is a ratio to it.
BOUND_S = 2.0


def _serve(mode: str) -> Iterator[str]:
    """HF_ENDPOINT for a listener that accepts every connection and then never answers ("silent") or answers
    one byte at a time, never finishing its headers ("trickle": each byte resets a per-read timeout)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        conn.recv(4096)
        head = b"HTTP/1.1 200 OK\r\nX-Pad: "
        for i in range(100_000):
            if stop.wait(0.1):
                return
            try:
                conn.sendall(head[i : i + 1] if i < len(head) else b"a")
            except OSError:
                return

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if mode == "trickle":
                threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.close()
    for conn in held:
        conn.close()


@pytest.fixture(params=["silent", "trickle"])
def stalled_hub(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _serve(request.param)


LOAD_TWICE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from qwenguard.core.backends import hub
    from qwenguard.core.errors import ModelNotFound
    hub.HUB_ANSWER_TIMEOUT_S = float(sys.argv[1])
    hf_home = Path(sys.argv[2])
    out = []
    for _ in range(2):  # the second load is bounded too: nothing the first one left behind holds it
        start = time.monotonic()
        try:
            hub.resolve_checkpoint("Qwen/Qwen3Guard-Gen-0.6B", kind="Qwen3Guard-Gen", demo_names={})
            error = None
        except ModelNotFound as exc:
            error = str(exc)
        out.append({"took": time.monotonic() - start, "error": error})
    # What a failed look-up left in the cache, then a later load once the checkpoint is there.
    left = sorted(str(p.relative_to(hf_home)) for p in hf_home.rglob("*") if "models--" in str(p))
    snapshot = hf_home / "hub" / "models--Qwen--Qwen3Guard-Gen-0.6B" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    later = str(hub.resolve_checkpoint("Qwen/Qwen3Guard-Gen-0.6B", kind="Qwen3Guard-Gen", demo_names={}))
    print(json.dumps({"loads": out, "left": left, "later": later, "snapshot": str(snapshot)}))
    """
)


def test_a_stalled_hub_fails_the_load_within_the_bound(stalled_hub: str, tmp_path: Path) -> None:
    # A fresh process with HF_ENDPOINT set before huggingface_hub is imported (it reads the variable then), and
    # an empty cache: the first load of a hub id, as a newcomer's first `Guard.from_pretrained` makes it.
    hf_home = tmp_path / "hf"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=stalled_hub, HF_HOME=str(hf_home))
    cmd = [sys.executable, "-c", LOAD_TWICE, str(BOUND_S), str(hf_home)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=15 * BOUND_S + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the loads were still waiting on the stalled hub after {15 * BOUND_S + 30:g} s")
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    for load in report["loads"]:
        assert load["error"] is not None and f"did not answer within {BOUND_S:g} s" in load["error"], load
        assert stalled_hub in load["error"] and "\n" not in load["error"], load
        # It waited for the hub (not a failure of another kind), and not past the bound: the whole look-up,
        # whatever requests huggingface_hub sent first, each with its own per-read timeout.
        assert 0.9 * BOUND_S <= load["took"] < 1.25 * BOUND_S, (load["took"], BOUND_S)
    assert report["left"] == [], report  # nothing half-written for the id in the cache
    assert report["later"] == report["snapshot"], report


def test_json_usage_errors_are_one_json_object_on_stdout() -> None:
    # A script gate: `out=$(qwenguard check --json ...)` then parse $out, whatever went wrong.
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    qg = [sys.executable, "-m", "qwenguard.core.cli"]
    cases = {
        "missing TEXT": ["check", "--json"],
        "unknown option": ["check", "--json", "--polcy", "loose", "hi"],
        "extra argument": ["check", "--json", "hi", "there"],
        "option without its value": ["check", "hi", "--json", "--policy"],
        "unknown command": ["--json", "chek", "hi"],
    }
    for name, argv in cases.items():
        p = subprocess.run([*qg, *argv], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2, (name, p.returncode, p.stdout, p.stderr)
        lines = p.stdout.splitlines()
        assert len(lines) == 1, (name, p.stdout, p.stderr)
        error = json.loads(lines[0])["error"]
        assert error["type"] and error["message"], (name, error)
        assert "Error" in p.stderr, (name, p.stderr)  # Typer's own message is kept
    # Without --json (or with it only as TEXT, after `--`), stdout stays empty: a usage error is stderr only.
    for argv in (["check", "hi", "there"], ["check", "--", "--json", "extra"]):
        p = subprocess.run([*qg, *argv], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2 and p.stdout == "" and "extra argument" in p.stderr, (argv, p.stdout, p.stderr)


BLOCK_TRANSFORMERS = textwrap.dedent(
    """
    import importlib.abc, sys
    class NoTransformers(importlib.abc.MetaPathFinder):  # a machine with the remote extra only
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("transformers", "torch"):
                raise ModuleNotFoundError(f"No module named {name!r}")
    sys.meta_path.insert(0, NoTransformers())
    """
)


def test_a_remote_only_install_is_told_to_install_transformers_alone() -> None:
    code = BLOCK_TRANSFORMERS + textwrap.dedent(
        """
        from qwenguard.core import Guard
        try:
            Guard.remote("http://127.0.0.1:9/v1", model="m", tokenizer="Qwen/Qwen3Guard-Gen-0.6B", mode="completion")
        except ImportError as e:
            print(type(e).__name__, e)
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = p.stdout.strip()
    assert out.startswith("MissingDependency transformers is not installed"), (out, p.stderr[-2000:])
    assert "torch" not in out and ".[local]" not in out, out
    requirement = re.search(r'pip install "([^"]+)"', out)
    assert requirement is not None, out
    # The range the local extra pins, so that the two installs agree.
    local = re.search(r"^local = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert local is not None and f'"{requirement.group(1)}"' in local.group(1), (requirement.group(1), local)
