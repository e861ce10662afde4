"""A stream server that refuses a session's handshake with ``Retry-After`` (busy: every session slot taken)
is not asked again before it said, as `OpenAIGen` does for HTTP checks. The stream client used its own
backoff instead: it re-opened at once, then after 0.2 and 0.4 s, four handshakes in about 0.6 s against a
server that had asked for one second, and failed closed while the server would have served it. A
``Retry-After`` longer than the call may wait ends the call at once, the server's refusal its answer. (A
draining server says ``0``: tests/test_scaleout.py.)

A real ``qwenguard serve`` app on 127.0.0.1 with one session slot, held by another client's session.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from faults import ScriptedBackend
from live_server import serving
from qwenguard.core import Guard, GuardUnavailable, Policy
from websockets.sync.client import connect

PROMPT = "Tell me about the weather."
ANSWER = "The weather is mild today, with a light breeze from the west."


def safe(conversation) -> str:
    return "Safety: Safe\nCategories: None" + ("\nRefusal: No" if conversation[-1]["role"] == "assistant" else "")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The server's own refusal, not a script: one stream session at a time (``Retry-After: 1`` when busy)."""
    with serving(Guard(ScriptedBackend(safe, name="kw")), max_streams=1) as url:
        yield url


def refused(url: str) -> int:
    """How many stream handshakes the server refused as busy so far (its metrics)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    found = re.search(r'qwenguard_rejected_total\{reason="overload"\} ([0-9.]+)', text)
    return int(float(found.group(1))) if found else 0


@contextmanager
def slot_taken(url: str, for_s: float) -> Iterator[None]:
    """Another client's session holds the only slot for ``for_s`` seconds (then it leaves)."""
    with connect(url.replace("http://", "ws://") + "/v1/stream") as conn:
        conn.send(json.dumps({"type": "open", "prompt": PROMPT}))
        assert json.loads(conn.recv(timeout=10))["type"] == "opened"
        timer = threading.Timer(for_s, conn.close)
        timer.start()
        try:
            yield
        finally:
            timer.join()


def client(url: str, timeout_s: float) -> Guard:
    return Guard.remote("http://127.0.0.1:9/v1", model="kw", stream=[url + "/v1"], policy=Policy(timeout_s=timeout_s))


def test_a_busy_stream_server_is_asked_again_when_it_said_sync(server):
    """The other client leaves 0.3 s after ours was refused; ours comes back after the second the server asked
    for, is served, and the server refused it once. (Before: refused again at once and at 0.2 and 0.4 s.)"""
    before = refused(server)
    guard = client(server, timeout_s=10)
    try:
        with slot_taken(server, for_s=0.3):
            start = time.perf_counter()
            with guard.stream(PROMPT, holdback=2) as monitor:
                out = monitor.feed(ANSWER) + monitor.finish()
            took = time.perf_counter() - start
    finally:
        guard.close()
    assert refused(server) - before == 1, "the client asked again before the server's Retry-After"
    assert out == ANSWER and took >= 1.0


async def test_a_busy_stream_server_is_asked_again_when_it_said_async(server):
    before = await asyncio.to_thread(refused, server)
    guard = client(server, timeout_s=10)
    try:
        with slot_taken(server, for_s=0.3):
            async with guard.astream(PROMPT, holdback=2) as monitor:
                out = await monitor.afeed(ANSWER) + await monitor.afinish()
    finally:
        await guard.aclose()
    assert await asyncio.to_thread(refused, server) - before == 1
    assert out == ANSWER


def test_a_retry_after_longer_than_the_call_may_wait_is_the_answer_at_once(server):
    """A call with 0.8 s left meets ``Retry-After: 1``: it does not re-open at all (before: three more
    handshakes in its 0.8 s), and fails closed as the policy says, with the server's refusal."""
    before = refused(server)
    guard = client(server, timeout_s=0.8)
    try:
        with slot_taken(server, for_s=1.5):
            with pytest.raises(GuardUnavailable) as failed:
                with guard.stream(PROMPT, holdback=2) as monitor:
                    monitor.feed(ANSWER)
    finally:
        guard.close()
    assert refused(server) - before == 1
    assert "503" in str(failed.value), failed.value


def test_a_retry_after_date_past_what_python_holds_is_a_guard_error_not_a_crash(monkeypatch):
    """A hostile server refuses the handshake with ``Retry-After: Mon, 1 Jan 20200000000 00:00:00 GMT``: the
    stream raised a bare ``OverflowError`` from the date arithmetic, past the policy (under on_error="allow"
    too). The hint is ignored now: the client's own backoff, then the policy decides."""
    from live_server import QuietHandler, http_serving

    class Hostile(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Retry-After", "Mon, 1 Jan 20200000000 00:00:00 GMT")
            self.send_header("Content-Length", "0")
            self.end_headers()

    with http_serving(Hostile) as base:
        for on_error, expected in (("block", GuardUnavailable), ("allow", None)):
            guard = Guard.remote(
                "http://127.0.0.1:9/v1",
                model="kw",
                stream=[base + "/v1"],
                policy=Policy(timeout_s=5, on_error=on_error),
            )
            try:
                if expected is not None:
                    with pytest.raises(expected):
                        with guard.stream(PROMPT, holdback=2) as monitor:
                            monitor.feed(ANSWER)
                else:
                    with guard.stream(PROMPT, holdback=2) as monitor:  # the session never opened: flagged
                        assert monitor.prompt_decision.reason == "guard_error", monitor.prompt_decision
                        monitor.feed(ANSWER)
            finally:
                guard.close()
