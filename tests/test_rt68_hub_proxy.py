"""rt68f F2: behind a proxy (a network whose only way out is ``HTTPS_PROXY``), a hub id was refused as unreachable
before huggingface_hub, which goes through the proxy, was let try: the reachability probe connected directly to the
hub's host, whose name such a network does not resolve. Now the probe is skipped where the environment names a
proxy for the hub, and the look-up goes out through it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

LOAD = textwrap.dedent(
    """
    import json
    from qwenguard.core.backends import hub
    from qwenguard.core.errors import ModelNotFound
    hub.HUB_ANSWER_TIMEOUT_S = 10.0
    try:
        hub.resolve_checkpoint("Qwen/Qwen3Guard-Gen-0.6B", kind="Qwen3Guard-Gen", demo_names={})
        error = None
    except ModelNotFound as exc:
        error = str(exc)
    print(json.dumps({"error": error}))
    """
)


@pytest.fixture
def recording_proxy() -> Iterator[tuple[str, list[str]]]:
    """An HTTP proxy on 127.0.0.1 that records each request line and answers 502 (it reaches nothing)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    seen: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    head = conn.recv(4096).decode("latin-1")
                    seen.append(head.split("\r\n", 1)[0])
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    server.close()


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_a_hub_id_behind_a_proxy_is_looked_up_through_it(
    recording_proxy: tuple[str, list[str]], tmp_path: Path, variable: str
) -> None:
    proxy, seen = recording_proxy
    dropped = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY", "no_proxy")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.lower().endswith("_proxy")}
    # A hub host no resolver knows: only the proxy can reach it, as on a proxy-only network.
    env.update({"HF_ENDPOINT": "https://hub.qwenguard-test.invalid", "HF_HOME": str(tmp_path / "hf"), variable: proxy})
    p = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr[-3000:]
    error = json.loads(p.stdout.strip().splitlines()[-1])["error"]
    assert error is not None and "cannot reach" not in error, error  # not refused before trying
    assert any("hub.qwenguard-test.invalid" in line for line in seen), seen  # it went out through the proxy


def test_a_host_the_proxy_is_bypassed_for_is_still_probed_directly(
    recording_proxy: tuple[str, list[str]], tmp_path: Path
) -> None:
    """NO_PROXY naming the hub: the direct probe still answers at once for an unresolvable host."""
    proxy, seen = recording_proxy
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}
    env.update(
        {
            "HF_ENDPOINT": "https://hub.qwenguard-test.invalid",
            "HF_HOME": str(tmp_path / "hf"),
            "HTTPS_PROXY": proxy,
            "NO_PROXY": ".invalid",
        }
    )
    p = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr[-3000:]
    error = json.loads(p.stdout.strip().splitlines()[-1])["error"]
    assert error is not None and "cannot reach https://hub.qwenguard-test.invalid:443" in error, error
    assert seen == [], seen
