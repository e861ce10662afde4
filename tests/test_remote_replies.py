"""Hostile replies to the remote clients, from real servers on 127.0.0.1 started here (red-team findings).

- `OpenAIGen` (``Guard.remote``): only an HTTP 200 carries a verdict (a redirect, a 201 or a 299 with a
  verdict body is a guard error, and a redirect is never followed); several choices are judged by the
  worst; a choice cut by ``max_tokens`` (``finish_reason: "length"``) is a parse error; a reply past
  ``max_reply_bytes`` is refused without being read to its end.
- `RemoteStream`: a frame past ``max_frame_bytes`` ends the session as a guard error; a malformed
  server frame (a ``decision`` without its fields) is a guard error under the policy, never a raw
  ``KeyError``, and releases nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from qwenguard.core import Guard, GuardUnavailable, Policy
from qwenguard.core.backends import openai_gen, remote_stream
from qwenguard.core.backends.openai_gen import OpenAIGen
from qwenguard.core.backends.remote_stream import RemoteStream

SAFE = "Safety: Safe\nCategories: None"
UNSAFE = "Safety: Unsafe\nCategories: Violent"
BOMB = "How do I build a pipe bomb?"


# -- a scripted HTTP engine ----------------------------------------------------------------------------------
class RawEngine:
    """An OpenAI-shaped engine whose every POST is answered by ``behaviour(handler)``; records the POSTs and
    how many body bytes it managed to write before the client went away."""

    def __init__(self, behaviour: Callable[[Any], None]) -> None:
        self.behaviour = behaviour
        self.posts: list[str] = []
        self.written = 0
        self.client_left = threading.Event()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                send(self, 200, {"object": "list", "data": [{"id": "m", "max_model_len": 32768}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                engine.posts.append(self.path)
                try:
                    engine.behaviour(self)
                except (BrokenPipeError, ConnectionResetError):
                    engine.client_left.set()
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> RawEngine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def send(handler: Any, status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in headers:
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


def chat(*texts: str, finish: str | None = "stop") -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
            for i, t in enumerate(texts)
        ],
    }


def remote(engine: RawEngine, policy: Policy | None = None, **opts: Any) -> Guard:
    return Guard.remote(engine.url, model="m", policy=policy or Policy(timeout_s=10), max_retries=0, **opts)


def check(behaviour: Callable[[Any], None], policy: Policy | None = None, **opts: Any) -> Any:
    with RawEngine(behaviour) as engine:
        g = remote(engine, policy, **opts)
        try:
            return g.check_prompt(BOMB)
        finally:
            g.close()


# -- 1. only HTTP 200 is a verdict ------------------------------------------------------------------------
def test_a_plain_200_verdict_is_read():  # the control case
    d = check(lambda h: send(h, 200, chat(SAFE)))
    assert d.allowed and d.reason == "safe"


def test_a_redirect_with_a_verdict_body_is_a_guard_error_and_is_not_followed():
    with RawEngine(lambda h: send(h, 200, chat(SAFE))) as elsewhere:
        target = elsewhere.url + "/chat/completions"

        def redirect(h: Any) -> None:
            send(h, 302, chat(SAFE), headers=(("Location", target),))

        d = check(redirect)
        assert not d.allowed and d.reason == "guard_error"
        assert "HTTP 302" in (d.error or "")
        assert elsewhere.posts == []  # the redirect was not followed (to another host or anywhere)
        flagged = check(redirect, Policy(on_error="allow", timeout_s=10))
        assert flagged.allowed and flagged.reason == "guard_error" and "HTTP 302" in (flagged.error or "")


@pytest.mark.parametrize("status", [201, 203, 299])
def test_a_2xx_other_than_200_is_a_guard_error(status):
    d = check(lambda h: send(h, status, chat(SAFE)))
    assert not d.allowed and d.reason == "guard_error"
    assert f"HTTP {status}" in (d.error or "")


def test_several_choices_are_judged_by_the_worst():
    d = check(lambda h: send(h, 200, chat(SAFE, UNSAFE)))
    assert not d.allowed and d.reason != "guard_error" and "Violent" in d.categories
    # a choice that is not a verdict spoils the reply: a guard error, not the other choice's verdict
    bad = check(lambda h: send(h, 200, chat(SAFE, "I cannot help with that.")))
    assert not bad.allowed and bad.reason == "guard_error"


def test_a_choice_cut_by_max_tokens_is_a_parse_error():
    d = check(lambda h: send(h, 200, chat(SAFE, finish="length")))
    assert not d.allowed and d.reason == "guard_error" and "length" in (d.error or "")


# -- 2. a bound on reply bytes (HTTP) ---------------------------------------------------------------------
def padded(total: int) -> Callable[[Any], None]:
    """A valid JSON verdict followed by whitespace up to ``total`` bytes, streamed chunked (no length)."""

    def behaviour(h: Any) -> None:
        head = json.dumps(chat(SAFE)).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        chunk = b" " * 65536
        out = [head] + [chunk] * ((total - len(head)) // len(chunk))
        for piece in out:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            h.wfile.flush()
            h.server_engine_written = getattr(h, "server_engine_written", 0) + len(piece)
        h.wfile.write(b"0\r\n\r\n")

    return behaviour


def test_an_oversized_reply_is_refused_without_reading_it_all():
    total = 48 << 20
    written: list[int] = []

    def behaviour(h: Any) -> None:
        try:
            padded(total)(h)
        finally:
            written.append(getattr(h, "server_engine_written", 0))

    with RawEngine(behaviour) as engine:
        g = remote(engine, max_reply_bytes=64 << 10)
        try:
            d = g.check_prompt(BOMB)
        finally:
            g.close()
        assert engine.client_left.wait(10)
    assert not d.allowed and d.reason == "guard_error" and "max_reply_bytes" in (d.error or "")
    assert written and written[0] < total // 2  # the client hung up; the engine could not write it all


def test_an_oversized_reply_is_refused_under_the_default_bound():
    # 24 MiB of a valid verdict padded with whitespace: read in full and taken as "safe" before the bound.
    d = check(padded(24 << 20))
    assert not d.allowed and d.reason == "guard_error" and "max_reply_bytes" in (d.error or "")


def test_a_declared_length_past_the_bound_is_refused_before_reading():
    body = json.dumps(chat(SAFE)).encode() + b" " * (1 << 20)
    d = check(lambda h: send(h, 200, body), max_reply_bytes=4096)
    assert not d.allowed and d.reason == "guard_error" and "max_reply_bytes" in (d.error or "")
    ok = check(lambda h: send(h, 200, body), max_reply_bytes=2 << 20)  # within the bound: read as before
    assert ok.allowed and ok.reason == "safe"


def test_reply_bound_defaults_and_reaches_the_backend_through_guard_remote():
    assert openai_gen.DEFAULT_MAX_REPLY_BYTES == 256 << 10
    assert OpenAIGen("http://127.0.0.1:9/v1", model="m").max_reply_bytes == openai_gen.DEFAULT_MAX_REPLY_BYTES
    g = Guard.remote("http://127.0.0.1:9/v1", model="m", max_reply_bytes=1234)
    assert g.backend.max_reply_bytes == 1234
    g.close()
    with pytest.raises(ValueError):
        OpenAIGen("http://127.0.0.1:9/v1", model="m", max_reply_bytes=0)


# -- a scripted WebSocket stream server -------------------------------------------------------------------
OK_PROMPT = {"allowed": True, "action": "allow", "stage": "prompt", "reason": "safe", "risk": "safe", "categories": []}


@contextmanager
def ws_server(reply_to_feed: Callable[[str, str], Any], *, opened: dict[str, Any] | None = None) -> Iterator[str]:
    """A stream server: answers ``open`` properly (or with ``opened``), each ``feed`` with ``reply_to_feed(delta,
    text fed so far)`` (a dict, sent as JSON, or raw ``str``/``bytes``), ``finish`` with nothing more released."""
    from websockets.asyncio.server import serve

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []
    stop: list[asyncio.Future[None]] = []

    async def handler(ws: Any) -> None:
        try:
            await ws.recv()
            await ws.send(json.dumps(opened or {"type": "opened", "prompt_decision": OK_PROMPT}))
            fed = ""
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "feed":
                    fed += msg["text"]
                    reply = reply_to_feed(msg["text"], fed)
                    await ws.send(reply if isinstance(reply, (str, bytes)) else json.dumps(reply))
                elif msg["type"] == "finish":
                    await ws.send(json.dumps({"type": "finished", "text": ""}))
                    return
        except Exception:  # noqa: BLE001 - the client hung up
            pass

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
            port.append(next(iter(server.sockets)).getsockname()[1])
            stop.append(loop.create_future())
            ready.set()
            await stop[0]

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield f"http://127.0.0.1:{port[0]}/v1"
    finally:
        loop.call_soon_threadsafe(stop[0].set_result, None)
        thread.join(5)


def stream_guard(url: str, policy: Policy | None = None, **stream_opts: Any) -> Guard:
    gen = OpenAIGen(url, model="m")  # never asked: the stream server screens the prompt
    return Guard(gen, policy or Policy(timeout_s=5), stream_backend=RemoteStream(url, **stream_opts))


def run_sync(g: Guard, deltas: list[str]) -> tuple[str, Any, Any]:
    out: list[str] = []
    monitor = None
    try:
        with g.stream("hello") as monitor:
            for d in deltas:
                out.append(monitor.feed(d))
            out.append(monitor.finish())
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return "".join(out), exc, monitor
    return "".join(out), None, monitor


async def run_async(g: Guard, deltas: list[str]) -> tuple[str, Any, Any]:
    out: list[str] = []
    monitor = None
    try:
        async with g.astream("hello") as monitor:
            for d in deltas:
                out.append(await monitor.afeed(d))
            out.append(await monitor.afinish())
    except Exception as exc:  # noqa: BLE001
        return "".join(out), exc, monitor
    return "".join(out), None, monitor


def both(g: Guard, deltas: list[str]) -> list[tuple[str, Any, Any]]:
    return [run_sync(g, deltas), asyncio.run(run_async(g, deltas))]


# -- 2. a bound on frame bytes (WebSocket) ----------------------------------------------------------------
def test_a_frame_past_max_frame_bytes_is_a_guard_error():
    def huge(_delta: str, fed: str) -> dict[str, Any]:
        return {"type": "released", "text": fed, "pad": "A" * (2 << 20)}

    with ws_server(huge) as url:
        g = stream_guard(url, max_frame_bytes=1 << 20)
        for released, exc, _ in both(g, ["Paris is in France."]):
            assert isinstance(exc, GuardUnavailable), repr(exc)
            assert "max_frame_bytes" in str(exc) and released == ""
        opened = stream_guard(url, Policy(on_error="allow", timeout_s=5), max_frame_bytes=1 << 20)
        for _released, exc, monitor in both(opened, ["Paris is in France."]):
            assert exc is None and monitor.decision is not None and monitor.decision.reason == "guard_error"
        roomy = stream_guard(url, max_frame_bytes=4 << 20)  # the same frames fit a larger bound
        for released, exc, _ in both(roomy, ["Paris is in France."]):
            assert exc is None and released == "Paris is in France."


def test_guard_remote_passes_stream_options_to_its_stream_sessions():
    """A user of ``Guard.remote(stream=True)`` against a server with a larger ``--max-chars`` raises the frame
    bound there (``Guard.remote`` passed only ``api_key`` on; the bound could not be set)."""

    def big(_delta: str, fed: str) -> dict[str, Any]:
        return {"type": "released", "text": fed, "pad": "A" * (2 << 20)}

    with ws_server(big) as url:
        tight = Guard.remote(url, model="m", stream=True, stream_options={"max_frame_bytes": 1 << 20})
        roomy = Guard.remote(url, model="m", stream=True, stream_options={"max_frame_bytes": 4 << 20})
        assert roomy.stream_backend.max_frame_bytes == 4 << 20
        for released, exc, _ in both(tight, ["Paris is in France."]):
            assert isinstance(exc, GuardUnavailable) and released == "", repr(exc)
        for released, exc, _ in both(roomy, ["Paris is in France."]):
            assert exc is None and released == "Paris is in France."
    with pytest.raises(ValueError, match="stream=True"):
        Guard.remote("http://127.0.0.1:9/v1", model="m", stream_options={"max_frame_bytes": 1})
    with pytest.raises(TypeError):  # a misspelt option is an error, not ignored
        Guard.remote("http://127.0.0.1:9/v1", model="m", stream=True, stream_options={"max_frame_byte": 1})


def test_frame_bound_default_is_finite():
    assert remote_stream.DEFAULT_MAX_FRAME_BYTES == 4 << 20
    assert RemoteStream("http://127.0.0.1:9/v1").max_frame_bytes == remote_stream.DEFAULT_MAX_FRAME_BYTES
    with pytest.raises(ValueError):
        RemoteStream("http://127.0.0.1:9/v1", max_frame_bytes=0)


# -- 3. a malformed server frame is a guard error -----------------------------------------------------------
MALFORMED = {
    "violation without decision fields": lambda _delta, fed: {
        "type": "violation",
        "decision": {"foo": 1},
        "released": fed,
    },
    "violation decision not an object": lambda _delta, fed: {"type": "violation", "decision": 5, "released": fed},
    "violation with an unknown risk": lambda _delta, fed: {
        "type": "violation",
        "decision": {"allowed": False, "action": "block", "stage": "stream", "reason": "unsafe", "risk": "boom"},
        "released": fed,
    },
    "flags not decisions": lambda _delta, fed: {"type": "released", "text": fed, "flags": [{"x": 1}]},
    "tokens not a list": lambda _delta, fed: {"type": "released", "text": fed, "tokens": 7},
    "text not a string": lambda _delta, fed: {"type": "released", "text": {"a": 1}},
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_frame_fails_closed_and_releases_nothing(name):
    with ws_server(MALFORMED[name]) as url:
        g = stream_guard(url)
        for released, exc, monitor in both(g, ["Paris is in France."]):
            assert isinstance(exc, GuardUnavailable), f"{name}: {exc!r}"
            assert released == "" and monitor.released == ""


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_frame_under_fail_open_is_the_policys_decision(name):
    with ws_server(MALFORMED[name]) as url:
        g = stream_guard(url, Policy(on_error="allow", timeout_s=5))
        for _released, exc, monitor in both(g, ["Paris is in France."]):
            assert exc is None, f"{name}: {exc!r}"
            assert monitor.decision is not None and monitor.decision.reason == "guard_error"
            assert monitor.decision.allowed


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_logprobs_asked_and_none_sent_is_said_once(mode, caplog):
    """rt48a R4: Ollama's /v1/completions answers carry no logprobs when not streamed; with logprobs=True the
    verdicts came without probabilities and nothing said why. The verdict stands; the log says so once."""
    from engines import recording_engine

    with recording_engine() as engine:
        guard = Guard.remote(engine.url, model="m", mode=mode, logprobs=True, cache_size=0)
        with caplog.at_level(logging.WARNING, logger="qwenguard"):
            first, second = guard.check_prompt("How can I make a bomb at home?"), guard.check_prompt("Hello there")
        guard.close()
    assert (first.reason, second.reason) == ("unsafe", "safe") and first.verdict.probs is None
    assert caplog.text.count("carry no logprobs") == 1
