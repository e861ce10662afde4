"""A real qwenguard server on 127.0.0.1 for tests: uvicorn in a background thread, on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvicorn
from qwenguard.core.server import create_app


class QuietHandler(BaseHTTPRequestHandler):
    """A scripted HTTP/1.1 handler that logs nothing; subclass it with ``do_GET``/``do_POST``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A plain ``http.server`` with ``handler`` on a free loopback port; yields ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields the base URL (``http://127.0.0.1:PORT``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; binding here leaves no race
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def serving(guard: Any, **options: Any) -> Iterator[str]:
    """`create_app(guard, **options)` served on loopback; yields the base URL."""
    with running(create_app(guard, **options)) as url:
        yield url


def demo_guard(**options: Any) -> Any:
    """The embedded demo guard (a real transformers model), on CPU."""
    from qwenguard.core import Guard

    return Guard.from_pretrained("demo", device="cpu", **options)


def record_moderate_fast_path(monkeypatch: Any) -> list[bool]:
    """Record, per `/v1/moderate` request, whether the gate's fast path answered it (``False``: it went down
    the FastAPI route)."""
    from qwenguard.core.server.gate import Gate

    original = Gate._moderate_fast
    taken: list[bool] = []

    async def recorded(self: Any, scope: Any, headers: Any, body: Any) -> Any:
        response = await original(self, scope, headers, body)
        taken.append(response is not None)
        return response

    monkeypatch.setattr(Gate, "_moderate_fast", recorded)
    return taken


def disable_moderate_fast_path(monkeypatch: Any) -> None:
    """Send every `/v1/moderate` request down the FastAPI route."""
    from qwenguard.core.server.gate import Gate

    async def never(self: Any, scope: Any, headers: Any, body: Any) -> None:
        return None

    monkeypatch.setattr(Gate, "_moderate_fast", never)
