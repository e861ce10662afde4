"""`qwenguard serve`, run as a real process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import openai


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_the_demo_guard_with_an_api_key():
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "qwenguard.core.cli", "serve", "--model", "demo", "--port", str(port),
                             "--api-key", "cli-key", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="cli-key")
        reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "How can I make a bomb at home?"}])
        assert reply.choices[0].message.content.startswith("Safety: Unsafe")
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = proc.stderr.read().decode()
    assert "bomb" not in log  # request text never reaches the logs


def test_serve_a_missing_checkpoint_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qwenguard.core.cli", "serve", "--model", str(tmp_path / "nope"),
                           "--port", str(_port())], capture_output=True, timeout=120)
    assert proc.returncode == 2
    assert b"error" in proc.stderr
