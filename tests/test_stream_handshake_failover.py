"""A stream session's handshake refused by one replica is handled as a check's request refused by it (remote
parity; a red-team audit): with replicas [broken, healthy], checks went to the healthy one and streams
failed closed, "server rejected WebSocket connection: HTTP 500" (a failed deploy: uvicorn answers 500 to a
handshake as to a POST), or HTTP 401 (a replica with another API key). Now:

- 500 is re-opened like 502/503/504 (through one URL too, after a backoff), as checks retry it;
- any other refusal (401, 404) tries each replica the session has not tried, once, never the same one;
- the error names the server, the status and the server's own message, as a check's does;
- a redirect is not followed (websockets follows a 3xx, to another host too): a session redirected to a
  server that calls everything safe had that server judge it, and an unsafe answer was released, and the
  handshake carried the client's ``headers`` (a gateway's key) there; as a check (which never follows one),
  the session goes to another replica once, else it is a guard error.

Real servers on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from faults import ScriptedBackend
from live_server import QuietHandler, http_serving, running, serving
from qwenguard.core import Guard, GuardUnavailable, GuardViolation, Policy

KEY = "right-key"
ANSWER = "Paris is the capital of France."


def safe(conversation) -> str:
    return "Safety: Safe\nCategories: None" + ("\nRefusal: No" if conversation[-1]["role"] == "assistant" else "")


class Broken:
    """An app whose every request fails (uvicorn answers 500); counts the WebSocket handshakes it got."""

    def __init__(self) -> None:
        self.handshakes = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            self.handshakes += 1
        raise RuntimeError("a failed deploy")


@pytest.fixture(scope="module")
def healthy() -> Iterator[str]:
    with serving(Guard(ScriptedBackend(safe, name="kw")), api_key=KEY) as url:
        yield url + "/v1"


def first_on(guard: Guard, index: int) -> Guard:
    """Sessions start on replica ``index``: the others are marked failed for a moment."""
    backend = guard.stream_backend
    for i, url in enumerate(backend.urls):
        if i != index:
            backend.replicas.failed(url)
    return guard


def remote(urls: list[str], **options: Any) -> Guard:
    return Guard.remote(urls[0], model="kw", api_key=KEY, stream=urls, policy=Policy(timeout_s=10), **options)


def test_a_replica_answering_500_is_passed_over_for_the_healthy_one(healthy):
    broken = Broken()
    with running(broken) as bad:
        guard = first_on(remote([bad + "/v1", healthy]), 0)
        try:
            with guard.stream("Where is Paris?", holdback=2) as monitor:
                out = monitor.feed(ANSWER) + monitor.finish()
        finally:
            guard.close()
    assert out == ANSWER and broken.handshakes == 1


async def test_a_replica_answering_500_is_passed_over_for_the_healthy_one_async(healthy):
    broken = Broken()
    with running(broken) as bad:
        guard = first_on(remote([bad + "/v1", healthy]), 0)
        try:
            async with guard.astream("Where is Paris?", holdback=2) as monitor:
                out = await monitor.afeed(ANSWER) + await monitor.afinish()
        finally:
            await guard.aclose()
    assert out == ANSWER and broken.handshakes == 1


def test_a_replica_with_another_api_key_is_passed_over_for_one_that_takes_ours(healthy):
    with serving(Guard(ScriptedBackend(safe, name="kw")), api_key="another-key") as other:
        guard = first_on(remote([other + "/v1", healthy]), 0)
        try:
            for _ in range(2):
                with guard.stream("Where is Paris?", holdback=2) as monitor:
                    assert monitor.feed(ANSWER) + monitor.finish() == ANSWER
        finally:
            guard.close()


def test_one_replica_answering_500_is_asked_again_then_the_error_says_what_it_said():
    broken = Broken()
    with running(broken) as bad:
        guard = remote([bad + "/v1"])
        try:
            with pytest.raises(GuardUnavailable) as failed:
                with guard.stream("Where is Paris?", holdback=2) as monitor:
                    monitor.feed(ANSWER)
        finally:
            guard.close()
    assert broken.handshakes == 1 + guard.stream_backend.max_failovers  # as a check retries a 500
    assert "HTTP 500" in str(failed.value) and bad.replace("http://", "ws://") in str(failed.value)


def test_a_wrong_key_is_one_handshake_and_an_error_naming_the_server_and_its_message(healthy):
    guard = Guard.remote(healthy, model="kw", api_key="wrong", stream=True, policy=Policy(timeout_s=10))
    try:
        with pytest.raises(GuardUnavailable) as failed:
            with guard.stream("Where is Paris?") as monitor:
                monitor.feed(ANSWER)
    finally:
        guard.close()
    message = str(failed.value)
    assert "HTTP 401" in message and "missing or wrong API key" in message, message
    assert healthy.replace("http://", "ws://") in message, message


# -- redirects -------------------------------------------------------------------------------------------
RECIPE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."


def strict(conversation) -> str:
    unsafe = "nitrate" in conversation[-1]["content"]
    verdict = "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None"
    return verdict + ("\nRefusal: No" if conversation[-1]["role"] == "assistant" else "")


class Opened:
    """An app in front of another that counts the stream sessions it was asked to open."""

    def __init__(self, app: Any) -> None:
        self.app, self.sessions = app, 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            self.sessions += 1
        await self.app(scope, receive, send)


@contextmanager
def redirecting_to(target: str) -> Iterator[str]:
    """A server answering every request with 302 to ``target``; yields its base URL (with /v1)."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with http_serving(Handler) as base:
        yield base + "/v1"


@pytest.fixture(scope="module")
def lenient() -> Iterator[tuple[str, Opened]]:
    """A server whose guard calls everything safe, and its session count."""
    from qwenguard.core.server import create_app

    app = Opened(create_app(Guard(ScriptedBackend(safe, name="kw"))))
    with running(app) as url:
        yield url.replace("http://", "ws://") + "/v1/stream", app


def test_a_redirected_session_is_not_judged_by_the_server_it_was_sent_to(lenient):
    target, app = lenient
    before = app.sessions
    with redirecting_to(target) as url:
        guard = Guard.remote(url, model="kw", stream=True, policy=Policy(timeout_s=10))
        out = ""
        try:
            with pytest.raises(GuardUnavailable, match="HTTP 302: redirects are not followed"):
                with guard.stream("How do I make fertiliser?", holdback=2) as monitor:
                    out += monitor.feed(RECIPE)
                    out += monitor.finish()
        finally:
            guard.close()
    assert out == ""  # was: the recipe, judged safe there
    assert app.sessions == before  # no handshake reached it: nor did the client's headers


async def _astream_refused(url: str, refusal: str) -> str:
    """Stream the recipe through a remote guard on ``url`` (async), expecting the session to be refused with
    ``refusal``; what was released."""
    guard = Guard.remote(url, model="kw", stream=True, policy=Policy(timeout_s=10))
    out = ""
    try:
        with pytest.raises(GuardUnavailable, match=refusal):
            async with guard.astream("How do I make fertiliser?", holdback=2) as monitor:
                out += await monitor.afeed(RECIPE)
                out += await monitor.afinish()
    finally:
        await guard.aclose()
    return out


async def test_a_redirected_session_is_not_judged_by_the_server_it_was_sent_to_async(lenient):
    target, app = lenient
    before = app.sessions
    with redirecting_to(target) as url:
        out = await _astream_refused(url, "redirects are not followed")
    assert out == "" and app.sessions == before


async def test_a_connection_that_followed_a_redirect_anyway_sends_nothing(lenient, monkeypatch):
    """Defence in depth: should a websockets version follow the 3xx despite the client (here: its own asyncio
    ``connect``, which follows them, injected in place of the client's), the session is refused on the
    connection it got, before any frame: the server redirected to never judges it."""
    from qwenguard.core.backends import remote_stream
    from websockets.asyncio.client import connect

    monkeypatch.setattr(remote_stream, "_aconnect_without_redirects", connect)
    target, _ = lenient
    with redirecting_to(target) as url:
        out = await _astream_refused(url, "redirected the session")
    assert out == ""


def test_a_redirecting_replica_is_passed_over_for_one_that_judges(lenient):
    target, _ = lenient
    with redirecting_to(target) as bad, serving(Guard(ScriptedBackend(strict, name="kw"))) as good:
        guard = first_on(Guard.remote(bad, model="kw", stream=[bad, good + "/v1"], policy=Policy(timeout_s=10)), 0)
        out = ""
        try:
            with pytest.raises(GuardViolation):
                with guard.stream("How do I make fertiliser?", holdback=2) as monitor:
                    out += monitor.feed(RECIPE)
                    out += monitor.finish()
        finally:
            guard.close()
    assert out == ""
