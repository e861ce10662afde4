"""rt56d: a client that hangs up while the server works for it stops that work and frees its slot at once.

F1: a ``/v1/stream`` client that hung up while its ``open`` frame's prompt was checked kept its stream slot
(a second session from its address refused 429) until the check ran to its end, for nobody. F2: an HTTP
client (``/v1/moderate``, ``/v1/chat/completions`` with and without ``stream``) that hung up mid-check left
the check running in its ``max_concurrency`` slot: another client got 503 meanwhile.

Each attack runs against a real uvicorn server (`guarded`) and a judge that is slow only for text holding
``SLOW``, and counts the slow checks that ran to their end and those cancelled. Times are compared with the
slow check's own length: the slot must come back well before that check would have ended."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from faults import ScriptedBackend
from qwenguard.core import Guard
from qwenguard.core.server import create_app, server_config
from qwenguard.core.server.limits import LARGE_BODY_BYTES
from stream_judges import _answer
from test_server_hostile import guarded, ws_url
from websockets.sync.client import connect

#: How long a slow check takes: far longer than any step of a test that passes.
SLOW_S = 4.0


class SlowJudge(ScriptedBackend):
    """The stream judges' verdicts; a check of text holding ``SLOW`` takes `SLOW_S`. Counts slow checks
    started, run to their end and cancelled."""

    def __init__(self) -> None:
        super().__init__(_answer)
        self._lock = threading.Lock()
        self.started = self.done = self.cancelled = 0

    async def aclassify(self, conversations, *, timeout=None):
        if not any("SLOW" in str(m.get("content")) for c in conversations for m in c):
            return await super().aclassify(conversations, timeout=timeout)
        with self._lock:
            self.started += 1
        try:
            await asyncio.sleep(SLOW_S)
        except asyncio.CancelledError:
            with self._lock:
                self.cancelled += 1
            raise
        with self._lock:
            self.done += 1
        return [self._one(c) for c in conversations]


def wait_for(condition: Any, limit: float = SLOW_S * 3) -> float:
    """Seconds until ``condition()`` held (``limit``: a deadlock breaker; the caller compares the time)."""
    start = time.monotonic()
    while not condition() and time.monotonic() - start < limit:
        time.sleep(0.01)
    return time.monotonic() - start


def admitted_after(url: str) -> float | None:
    """Seconds until this address may open a session again (``max_streams_per_client=1``); ``None`` when
    that took half a slow check or more."""
    start = time.monotonic()
    while time.monotonic() - start < SLOW_S / 2:
        try:
            with connect(url, open_timeout=5):
                pass
        except websockets.exceptions.InvalidStatus:
            time.sleep(0.02)
            continue
        return time.monotonic() - start
    return None


# -- F1: /v1/stream ------------------------------------------------------------------------------
def open_and_hang_up(url: str, judge: SlowJudge) -> None:
    """Open a session with a slow prompt and hang up once its check has started."""
    with connect(url) as conn:
        conn.send(json.dumps({"type": "open", "prompt": "SLOW: what is the capital of France?"}))
        wait_for(lambda: judge.started == 1)


def test_hangup_during_open_prompt_check_frees_slot_and_stops_the_check() -> None:
    judge = SlowJudge()
    with guarded(Guard(judge), model_name="guard", max_streams_per_client=1) as base:
        url = ws_url(base)
        open_and_hang_up(url, judge)
        freed = admitted_after(url)
        wait_for(lambda: judge.cancelled + judge.done >= 1)
    assert freed is not None, f"the stream slot stayed held for half a slow check ({SLOW_S / 2} s) or more"
    assert (judge.done, judge.cancelled) == (0, 1), "the prompt check ran on for a client that left"


def test_session_after_hangup_mid_open_still_judges_its_prompt() -> None:
    """The watch on the open stops nothing a present client waits for: its prompt is judged, a bomb blocked."""
    judge = SlowJudge()
    with guarded(Guard(judge), model_name="guard", max_streams_per_client=1) as base:
        url = ws_url(base)
        open_and_hang_up(url, judge)
        wait_for(lambda: judge.cancelled == 1)
        with connect(url) as conn:
            conn.send(json.dumps({"type": "open", "prompt": "How do I build a bomb?"}))
            frame = json.loads(conn.recv(timeout=10))
        assert frame["type"] == "violation" and frame["prompt_decision"]["action"] == "block"
        with connect(url) as conn:
            conn.send(json.dumps({"type": "open", "prompt": "Hello"}))
            assert json.loads(conn.recv(timeout=10))["type"] == "opened"
            conn.send(json.dumps({"type": "feed", "text": "Paris is the capital of France. "}))
            assert json.loads(conn.recv(timeout=10))["type"] == "released"
            conn.send(json.dumps({"type": "finish"}))
            assert json.loads(conn.recv(timeout=10))["type"] == "finished"


# -- F2: HTTP routes -----------------------------------------------------------------------------

ROUTES = {
    "moderate": ("/v1/moderate", {"conversations": [[{"role": "user", "content": "SLOW: the capital of France?"}]]}),
    "chat": (
        "/v1/chat/completions",
        {"model": "guard", "messages": [{"role": "user", "content": "SLOW: the capital of Spain?"}]},
    ),
    "chat_stream": (
        "/v1/chat/completions",
        {"model": "guard", "stream": True, "messages": [{"role": "user", "content": "SLOW: the capital of Italy?"}]},
    ),
}


def post_raw(base: str, path: str, body: dict[str, Any]) -> socket.socket:
    """POST ``body`` on a raw socket (the caller hangs up by closing it)."""
    host, port = base.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock = socket.create_connection((host, int(port)))
    sock.sendall(head.encode() + data)
    return sock


def send_and_hang_up(base: str, path: str, body: dict[str, Any], judge: SlowJudge) -> float:
    """POST ``body`` on a raw socket, close it once its slow check has started; the time of the close."""
    sock = post_raw(base, path, body)
    wait_for(lambda: judge.started == 1)
    sock.close()
    return time.monotonic()


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_http_hangup_mid_check_cancels_it_and_frees_the_slot(route: str) -> None:
    judge = SlowJudge()
    path, body = ROUTES[route]
    with guarded(Guard(judge), model_name="guard", max_concurrency=1) as base:
        send_and_hang_up(base, path, body, judge)
        # Another client's quick check: 503 while the abandoned check holds the one slot.
        statuses = []

        def admitted() -> bool:
            reply = httpx.post(
                base + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "Hello"}]]}, timeout=10
            )
            statuses.append(reply.status_code)
            return reply.status_code == 200

        wait_for(admitted, SLOW_S / 2)
        wait_for(lambda: judge.cancelled + judge.done >= 1)
    assert statuses[-1] == 200, f"the slot stayed held for half a slow check: {statuses[:3]}...{statuses[-1]}"
    assert (judge.done, judge.cancelled) == (0, 1), "the check ran on for a client that left"


def test_http_hangup_mid_check_frees_the_clients_turn() -> None:
    """The turn a hung-up request held goes to the same client's next request at once (one request a client)."""
    judge = SlowJudge()
    path, body = ROUTES["moderate"]
    with guarded(Guard(judge), model_name="guard", max_requests_per_client=1) as base:
        send_and_hang_up(base, path, body, judge)
        reply = httpx.post(base + path, json={"conversations": [[{"role": "user", "content": "Hello"}]]}, timeout=10)
        wait_for(lambda: judge.cancelled + judge.done >= 1)
    assert reply.status_code == 200
    assert (judge.done, judge.cancelled) == (0, 1)


def test_present_clients_get_whole_answers_on_one_connection() -> None:
    """The watch never cuts or stops a request whose client stays: plain and streamed answers come whole,
    one after another on one kept-alive connection, the slow check included."""
    judge = SlowJudge()
    with guarded(Guard(judge), model_name="guard", max_concurrency=1) as base, httpx.Client(timeout=20) as client:
        moderate = client.post(base + "/v1/moderate", json=ROUTES["moderate"][1])
        chat = client.post(base + "/v1/chat/completions", json=ROUTES["chat"][1])
        stream = client.post(base + "/v1/chat/completions", json=ROUTES["chat_stream"][1])
        again = client.post(base + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "Hi"}]]})
    assert moderate.status_code == chat.status_code == stream.status_code == again.status_code == 200
    assert moderate.json()["results"][0]["risk"] == "safe"
    assert chat.json()["choices"][0]["message"]["content"]
    assert stream.text.rstrip().endswith("data: [DONE]")
    assert (judge.done, judge.cancelled) == (3, 0)


@contextmanager
def serving(app: Any) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """``app`` served as `guarded` serves it; (its URL, the server's event loop)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = server_config(app, port=port, limits=app.state.service.limits, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve(sockets=[sock])

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 10)
    assert server.started, "test server did not start"
    try:
        yield f"http://127.0.0.1:{port}", loops[0]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_hangup_while_a_large_open_frame_waits_for_its_parse_turn_frees_the_slot() -> None:
    """The open frame's parse is watched too: a large one waiting for its parse turn (another client's large
    body holds it) leaves the line and frees the slot when its client hangs up, not when the turn comes."""
    app = create_app(Guard(SlowJudge()), model_name="guard", max_streams_per_client=1)
    parsing = app.state.service.parsing
    held, release = threading.Event(), threading.Event()

    async def hold() -> None:  # another client's large body, parsing for as long as the test needs
        async with parsing.turn("192.0.2.1"):
            held.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    large_open = json.dumps({"type": "open", "prompt": "Hello there. " * (LARGE_BODY_BYTES // 10)})
    with serving(app) as (base, loop):
        url = ws_url(base)
        holding = asyncio.run_coroutine_threadsafe(hold(), loop)
        try:
            assert held.wait(10)
            with connect(url) as conn:
                conn.send(large_open)
                wait_for(lambda: parsing._lines.held("127.0.0.1") == 1)  # in the line, waiting behind the hold
            freed = admitted_after(url)
            still_held = not release.is_set()
        finally:
            release.set()
            holding.result(10)
        with connect(url) as conn:
            conn.send(large_open)
            assert json.loads(conn.recv(timeout=10))["type"] == "opened"
    assert freed is not None and still_held, "the slot stayed held until the parse turn came"
    assert parsing._lines.held("127.0.0.1") == parsing._lines.waiting("127.0.0.1") == 0


def test_http_hangup_while_a_large_body_waits_for_its_parse_turn_frees_the_slot() -> None:
    """A large body waiting for its parse turn holds a ``max_concurrency`` slot: its client hanging up frees it."""
    app = create_app(Guard(SlowJudge()), model_name="guard", max_concurrency=1)
    parsing = app.state.service.parsing
    held, release = threading.Event(), threading.Event()

    async def hold() -> None:
        async with parsing.turn("192.0.2.1"):
            held.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    large = {"conversations": [[{"role": "user", "content": "Hello there. " * (LARGE_BODY_BYTES // 10)}]]}
    with serving(app) as (base, loop):
        holding = asyncio.run_coroutine_threadsafe(hold(), loop)
        try:
            assert held.wait(10)
            host, port = base.removeprefix("http://").split(":")
            data = json.dumps(large).encode()
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(
                    f"POST /v1/moderate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                wait_for(lambda: parsing._lines.held("127.0.0.1") == 1)
            reply = httpx.post(base + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "Hi"}]]})
            still_held = not release.is_set()
        finally:
            release.set()
            holding.result(10)
    assert reply.status_code == 200 and still_held, "the slot stayed held until the parse turn came"
    assert parsing._lines.held("127.0.0.1") == parsing._lines.waiting("127.0.0.1") == 0


def test_requests_given_up_waiting_or_served_are_never_judged_for_nobody() -> None:
    """One request a client: a request that waits for the client's turn and is given up leaves the line
    unjudged; the one being served, given up, has its check stopped; the client's next request is served."""
    judge = SlowJudge()
    app = create_app(Guard(judge, cache_size=0), model_name="guard", max_requests_per_client=1)
    turns = app.state.load.work_turns
    with serving(app) as (base, _):
        served = post_raw(base, *ROUTES["moderate"])
        wait_for(lambda: judge.started == 1)
        waiting = post_raw(base, "/v1/moderate", {"conversations": [[{"role": "user", "content": "SLOW too"}]]})
        wait_for(lambda: turns.waiting("127.0.0.1") == 1)
        waiting.close()
        wait_for(lambda: turns.waiting("127.0.0.1") == 0)
        served.close()
        wait_for(lambda: judge.cancelled + judge.done >= 1)
        retry = httpx.post(base + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "Hi"}]]})
    assert retry.status_code == 200
    assert (judge.started, judge.done, judge.cancelled) == (1, 0, 1)
