"""rt70d: what a ``/v1/stream`` client is told when the guard fails or the text is too large.

F1: docs/security.md promises that a backend exception's message stays on the server and clients get its type, as
`/v1/moderate` does; a stream session sent ``Decision.to_dict()`` whole (the guard model's raw output, an upstream
engine's address and error body), and an upstream's HTTP 413 came back to the client quoting that upstream's address
and reply, on `/v1/moderate` and in the stream's error frame. F2: a session whose opening prompt is past the guard's
window bound closed 4400 ``invalid_request_error`` (docs/server.md: 1009), and `Guard.remote(stream=True)` raised a
bare ``ValueError`` where a local stream raises `InputTooLarge`.

Each server is real (uvicorn on 127.0.0.1, started once for the module); the guards are the demo model through
transformers, or `Guard.remote` in front of a scripted engine answering over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_server import QuietHandler, demo_guard, http_serving, serving
from qwenguard.core import Guard, InputTooLarge, Policy
from qwenguard.core.backends.stream_session import decision_from_dict
from test_server_hostile import frames_until_close, ws_url
from websockets.sync.client import connect

#: What an upstream engine's error reply holds: nothing of it may reach the server's own clients.
SECRET = "upstream auth failed for tenant acme-prod on gpu-node-7.internal (key sk-live-SECRET)"
#: The demo model's answer to this prompt is no verdict (`test_server_error_types`): a guard error.
BROKEN = "x" * 400 + "How can I make a bomb at home?"
#: A prompt of 200 forged turns: more guard windows than the demo's ``max_windows`` (256) allows.
FORGED = "".join(f"USER: question {i}?\nASSISTANT: answer {i}.\n" for i in range(200))
TIMEOUT = 120


def _engine(status: int) -> type[QuietHandler]:
    """An OpenAI-compatible engine that lists the model "demo" and refuses every completion with ``status``."""

    class Engine(QuietHandler):
        def do_GET(self) -> None:
            self._answer(200, {"object": "list", "data": [{"id": "demo", "object": "model"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self._answer(status, {"error": {"message": SECRET, "type": "invalid_request_error"}})

        def _answer(self, code: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Engine


@pytest.fixture(scope="module")
def demo_server() -> Iterator[str]:
    """The demo guard served under an operator policy that fails open."""
    guard = demo_guard(cache_size=0, policy=Policy(on_error="allow"))
    try:
        with serving(guard) as url:
            yield url
    finally:
        guard.close()


def _gateway(status: int) -> Iterator[str]:
    """A server whose guard is `Guard.remote` in front of an engine refusing every check with ``status`` (the
    gateway of docs/scaling.md), under an operator policy that fails open; a small ``max_chars`` of its own."""
    with http_serving(_engine(status)) as engine:
        guard = Guard.remote(
            engine + "/v1", model="demo", max_context=4096, max_retries=0, cache_size=0, policy=Policy(on_error="allow")
        )
        try:
            with serving(guard, model_name="demo", max_chars=1000) as url:
                yield url
        finally:
            guard.close()


@pytest.fixture(scope="module")
def refusing_gateway() -> Iterator[str]:
    yield from _gateway(400)


@pytest.fixture(scope="module")
def too_large_gateway() -> Iterator[str]:
    yield from _gateway(413)


def _session(url: str, *frames: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Send ``frames`` on a new session; every frame the server sent until it closed, and its close code."""
    with connect(ws_url(url), open_timeout=10) as conn:
        for frame in frames:
            conn.send(json.dumps(frame))
        return frames_until_close(conn, timeout=TIMEOUT)


def _decisions(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every decision the frames carry: the prompt's, a fail-open's, a violation's, the flags."""
    out = []
    for frame in frames:
        out += [d for d in (frame.get("prompt_decision"), frame.get("decision")) if d]
        out += frame.get("flags") or []
    return out


# -- F1: a guard error's message stays on the server ---------------------------------------------------------------
def test_a_stream_client_gets_the_guard_models_error_by_its_type_only(demo_server):
    """The demo's answer to the prompt is no verdict: its raw output was in the ``opened`` frame."""
    frames, code = _session(
        demo_server,
        {"type": "open", "prompt": BROKEN},
        {"type": "feed", "text": "The capital of France is Paris. "},
        {"type": "finish"},
    )
    assert code == 1000, frames
    decisions = _decisions(frames)
    failed = [d for d in decisions if d["reason"] == "guard_error"]
    assert failed and failed[0]["stage"] == "prompt", frames
    assert all(d["error"] in (None, "VerdictParseError") for d in decisions), decisions
    assert "raw output" not in json.dumps(frames) and "Safety:" not in json.dumps(frames)
    # The remote stream client reads it as it reads /v1/moderate's: the type, and the reason.
    read = decision_from_dict(failed[0])
    assert (read.allowed, read.reason, read.error) == (True, "guard_error", "VerdictParseError")


def test_an_upstream_engines_address_and_error_body_stay_on_the_gateway(refusing_gateway):
    frames, code = _session(
        refusing_gateway,
        {"type": "open", "prompt": "Hello"},
        {"type": "feed", "text": "The capital of France is Paris. "},
        {"type": "finish"},
    )
    assert code == 1000, frames
    failed = [d for d in _decisions(frames) if d["reason"] == "guard_error"]
    assert failed and all(d["error"] == "RemoteHTTPError" for d in failed), frames
    shown = json.dumps(frames)
    assert "sk-live-SECRET" not in shown and "gpu-node-7" not in shown and "127.0.0.1" not in shown, shown
    # /v1/moderate already said it so (rt52f F7): the stream now says the same.
    moderated = httpx.post(
        refusing_gateway + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "Hello"}]]}, timeout=60
    )
    assert moderated.json()["results"][0]["decision"]["error"] == failed[0]["error"]


def test_an_upstreams_413_is_answered_without_its_address_or_reply(too_large_gateway, caplog):
    with caplog.at_level(logging.WARNING, logger="qwenguard.server"):
        reply = httpx.post(
            too_large_gateway + "/v1/moderate",
            json={"conversations": [[{"role": "user", "content": "Hello"}]]},
            timeout=60,
        )
        frames, code = _session(too_large_gateway, {"type": "open", "prompt": "Hello"})
    assert reply.status_code == 413 and reply.json()["error"]["type"] == "request_too_large", reply.text
    assert code == 1009 and frames[-1]["type"] == "error", frames
    assert frames[-1]["error"]["type"] == "request_too_large", frames
    for said in (reply.json()["error"]["message"], frames[-1]["error"]["message"]):
        assert "too large" in said and "split the text" in said, said
        assert "gpu-node-7" not in said and "sk-live-SECRET" not in said and "127.0.0.1" not in said, said
    # The operator still reads the upstream's own words, in the server's log.
    assert any("gpu-node-7" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_the_servers_own_size_limit_still_names_its_option(too_large_gateway):
    """Control: a text past the server's own ``--max-chars`` is refused with the option to raise."""
    reply = httpx.post(
        too_large_gateway + "/v1/moderate",
        json={"conversations": [[{"role": "user", "content": "a" * 2000}]]},
        timeout=60,
    )
    assert reply.status_code == 413 and "--max-chars" in reply.json()["error"]["message"], reply.text


# -- F2: a prompt past the window bound is too large, at open too ---------------------------------------------------
def test_a_stream_prompt_past_the_window_bound_closes_1009(demo_server):
    frames, code = _session(demo_server, {"type": "open", "prompt": FORGED})
    assert code == 1009 and frames[-1]["error"]["type"] == "request_too_large", frames
    assert "max_windows" in frames[-1]["error"]["message"]  # the server's own limit, said as it is


def test_the_remote_stream_client_raises_input_too_large_for_it_whatever_on_error_says(demo_server):
    remote = Guard.remote(demo_server + "/v1", model="demo", stream=True, cache_size=0, policy=Policy(on_error="allow"))
    try:
        monitor = remote.stream(FORGED)
        with pytest.raises(InputTooLarge, match="max_windows"):
            monitor.open()
        with pytest.raises(InputTooLarge):  # every later call raises it again, as a local monitor's does
            monitor.feed("Hello.")
        assert monitor.decision is None and not monitor.flags and monitor.local is None  # nothing decided it
        monitor.close()
    finally:
        remote.close()


async def test_the_async_remote_stream_client_raises_input_too_large_too(demo_server):
    remote = Guard.remote(demo_server + "/v1", model="demo", stream=True, cache_size=0, policy=Policy(on_error="allow"))
    try:
        with pytest.raises(InputTooLarge, match="max_windows"):
            async with remote.astream(FORGED) as monitor:
                await monitor.afeed("Hello.")
    finally:
        await remote.aclose()


def test_a_remote_feed_past_the_servers_max_chars_raises_input_too_large(demo_server):
    """Past the session's ``--max-chars`` the server closes 1009 before any model work; the client raised a guard
    error (`GuardUnavailable`), which an ``on_error="allow"`` client would let through unjudged by that server."""
    remote = Guard.remote(demo_server + "/v1", model="demo", stream=True, cache_size=0)
    try:
        with remote.stream("Hello", screen_prompt=False) as monitor:
            with pytest.raises(InputTooLarge, match="--max-chars"):
                monitor.feed("a" * 200_001)
            with pytest.raises(InputTooLarge):
                monitor.finish()
    finally:
        remote.close()
