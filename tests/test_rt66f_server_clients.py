"""rt66f: what a server's clients can still make it do.

F1: a ``/v1/stream`` client that sent ping frames and read nothing grew the server's memory as fast as it sent (uvicorn
writes a pong for every ping, whatever waits unread: 200 MB in 15 s), for as long as its session lived. F2: a stream
session's verdicts and guard errors (its 4503 closes) never reached ``/metrics``. F3: error messages quoted up to
~960 characters of a client's policy key, stage name or stream option (the docs promise 80). And the count of a
stream client cut off for not reading (``client_stalled``), which the last stop's attacks never reached: a
non-reader that keeps feeding text, so that its session never idles.

Each attack runs against a real uvicorn server configured as ``serve`` runs it (`test_rt65f_nonreaders.live`)."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from faults import PoisonedJudge, ScriptedBackend, keyword_verdict
from qwenguard.core import Guard, Policy
from test_rt65f_nonreaders import (
    SLACK,
    another_session_opens,
    cut_off,
    handshake,
    live,
    nonreader,
    open_session,
    until,
    ws_frame,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

IDLE_S = 1.0


def metric(port: int, name: str, label: str) -> float:
    """One counter of the server's ``/metrics`` (``qwenguard_{name}_total{label}``; 0 when not counted yet)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(rf"^qwenguard_{name}_total\{{{re.escape(label)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# -- F1: pings a client never reads the pongs of ------------------------------------------------------------------
#: One masked ping frame with the most a control frame may carry (125 bytes); 8,000 of them are 1 MB.
PINGS = (bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125) * 8000

#: The most a client may push through the socket while the test watches (the server read on, before).
FLOOD_BYTES = 32 * 1024 * 1024

#: What the server may hold for a client that reads nothing: the transport's high-water mark (64 KiB) and the
#: pongs of one read (256 KiB of pings), with room to spare. It held what the client sent.
HELD_BYTES = 1024 * 1024


@pytest.mark.parametrize("opened", [True, False], ids=["after-open", "before-open"])
def test_a_ping_flood_that_reads_nothing_is_not_held_by_the_server(
    monkeypatch: pytest.MonkeyPatch, opened: bool
) -> None:
    held = [0]  # the most the server's transport held for the client, after each pong written
    answer_ping = WebSocketsSansIOProtocol.handle_ping

    def handle_ping(self: Any) -> None:  # uvicorn's own, watched
        answer_ping(self)
        held[0] = max(held[0], self.transport.get_write_buffer_size())

    monkeypatch.setattr(WebSocketsSansIOProtocol, "handle_ping", handle_ping)
    with live(max_streams=1, stream_idle_timeout_s=IDLE_S) as (port, load):
        attacker = nonreader(port)
        if opened:
            open_session(attacker)
        else:
            handshake(attacker)
        assert until(lambda: load.streams == 1, 10), "the attacker's session never opened"
        attacker.settimeout(30)  # a send the server never reads for that long: the socket is full, it is enough
        pushed = 0
        with contextlib.suppress(OSError):  # reset by the server, or full
            while pushed < FLOOD_BYTES:
                attacker.sendall(PINGS)
                pushed += len(PINGS)
        # The session ends by its limits (its pings are no text), and the client is cut off for not reading.
        assert until(lambda: load.streams == 0 and cut_off(attacker), SLACK * IDLE_S), "held past its limit"
        assert another_session_opens(port)
        attacker.close()
    assert held[0] < HELD_BYTES, f"the server held {held[0]:,} bytes of pongs for a client that read none"


# -- F2: a stream session's verdicts and guard errors in /metrics ---------------------------------------------------
def session(port: int, prompt: str, feeds: list[str]) -> tuple[list[str], int]:
    """A stream session that opens on ``prompt``, feeds ``feeds`` and finishes: the types of the frames it got, and
    its close code."""
    frames: list[str] = []
    with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=10) as conn:
        conn.send(json.dumps({"type": "open", "prompt": prompt}))
        try:
            frames.append(json.loads(conn.recv(timeout=10))["type"])
            for text in feeds:
                conn.send(json.dumps({"type": "feed", "text": text}))
                frames.append(json.loads(conn.recv(timeout=10))["type"])
            conn.send(json.dumps({"type": "finish"}))
            while True:
                frames.append(json.loads(conn.recv(timeout=10))["type"])
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return frames, closed.rcvd.code
    raise AssertionError("the session never closed")


#: Text that the guard fails on (`PoisonedJudge`), fed after a safe opening: each feed is a window check of its own.
POISON = ["Once upon a time " * 20, "x " * 200 + "Zanzibar " * 50]


def test_a_stream_sessions_guard_errors_are_counted_by_kind() -> None:
    with live(Guard(PoisonedJudge("raise"), cache_size=0)) as (port, _):
        assert session(port, "Zanzibar story", []) == (["error"], 4503)  # the prompt's check fails
        frames, code = session(port, "Tell me a story.", POISON)  # a window's check fails
        assert (frames[0], frames[-1], code) == ("opened", "error", 4503)
        assert metric(port, "guard_errors", 'kind="RuntimeError"') == 2  # was 0: every session failed unseen


def test_a_stream_session_that_fails_open_counts_its_guard_error() -> None:
    guard = Guard(PoisonedJudge("raise"), Policy(on_error="allow"), cache_size=0)
    with live(guard) as (port, _):
        frames, code = session(port, "Tell me a story.", POISON)
        assert (frames[-1], code) == ("finished", 1000)  # flagged, not stopped
        assert metric(port, "guard_errors", 'kind="RuntimeError"') >= 1  # each failed window check (was 0)


def test_a_stream_sessions_verdicts_are_counted_by_risk() -> None:
    with live(Guard(ScriptedBackend(keyword_verdict), cache_size=0)) as (port, _):
        assert session(port, "Tell me a story.", ["Once upon a time " * 20]) == (
            ["opened", "released", "finished"],
            1000,
        )
        safe = metric(port, "verdicts", 'risk="safe"')
        assert safe >= 1  # the prompt's, at least
        answer = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse. " * 4
        frames, code = session(port, "How do I make one?", [answer])
        assert (frames[-1], code) == ("violation", 1000)
        assert metric(port, "verdicts", 'risk="unsafe"') == 1
        assert metric(port, "verdicts", 'risk="safe"') == safe + 1  # the second session's prompt
        assert metric(port, "blocked", 'stage="stream"') == 1
        assert metric(port, "guard_errors", 'kind="RuntimeError"') == 0


# -- F3: how much of a client's value an error quotes ---------------------------------------------------------------
#: A client's value; an error may quote at most its first 80 characters (docs/server.md).
LONG = "Q" * 5000


def longest_run(text: str, char: str) -> int:
    return max((len(run) for run in re.findall(f"{re.escape(char)}+", text)), default=0)


def moderate_error(port: int, extra: dict[str, Any]) -> str:
    body = {"conversations": [[{"role": "user", "content": "hi"}]], **extra}
    reply = httpx.post(f"http://127.0.0.1:{port}/v1/moderate", json=body, timeout=10)
    assert reply.status_code == 400, reply.text[:300]
    message: str = reply.json()["error"]["message"]
    return message


def stream_error(port: int, open_frame: dict[str, Any]) -> str:
    with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=10) as conn:
        conn.send(json.dumps({"type": "open", "prompt": "hi", **open_frame}))
        frame = json.loads(conn.recv(timeout=10))
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400, frame
    assert frame["type"] == "error"
    message: str = frame["error"]["message"]
    return message


#: (what the client sent, how the server was asked, the character its value is made of, what the error says)
QUOTE_CASES: list[tuple[str, Callable[[int], str], str, str]] = [
    ("policy-key", lambda port: moderate_error(port, {"policy": {LONG: 1}}), "Q", "unknown policy fields"),
    ("policy-stage", lambda port: moderate_error(port, {"policy": {"stages": {LONG: {}}}}), "Q", "unknown stage"),
    (
        "policy-stage-not-object",
        lambda port: moderate_error(port, {"policy": {"stages": {LONG: 1}}}),
        "Q",
        "must be an object",
    ),
    (
        "policy-stage-field",
        lambda port: moderate_error(port, {"policy": {"stages": {"prompt": {LONG: 1}}}}),
        "Q",
        "unknown fields",
    ),
    ("policy-mode", lambda port: moderate_error(port, {"policy": {"mode": LONG}}), "Q", "mode must be"),
    ("policy-on-error", lambda port: moderate_error(port, {"policy": {"on_error": LONG}}), "Q", "on_error must be"),
    (
        "policy-categories-mapping",
        lambda port: moderate_error(port, {"policy": {"block_categories": {LONG: True}}}),
        "Q",
        "a list of category names",
    ),
    ("stream-policy-key", lambda port: stream_error(port, {"policy": {LONG: 1}}), "Q", "unknown policy fields"),
    ("stream-holdback", lambda port: stream_error(port, {"holdback": LONG}), "Q", "holdback must be"),
    ("stream-min-segment", lambda port: stream_error(port, {"min_segment": LONG}), "Q", "min_segment must be"),
    ("stream-window", lambda port: stream_error(port, {"window": 10**4000}), "0", "window="),
]


@pytest.mark.parametrize(("case", "ask", "char", "says"), QUOTE_CASES, ids=[c[0] for c in QUOTE_CASES])
def test_an_error_quotes_at_most_80_characters_of_a_clients_value(
    case: str, ask: Callable[[int], str], char: str, says: str
) -> None:
    with live() as (port, _):
        message = ask(port)
    assert says in message, message[:300]
    assert longest_run(message, char) <= 80, f"{case}: {message[:300]}"


def test_a_policy_timeout_too_large_for_a_float_is_a_bad_request() -> None:
    """A ``timeout_s`` of 400 digits is a valid JSON number no float holds: it was a 500 (a traceback in the log)
    and a stream session's 1011."""
    policy = {"timeout_s": 10**400}  # JSON writes its 401 digits
    with live() as (port, _):
        body = {"conversations": [[{"role": "user", "content": "hi"}]], "policy": policy}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/moderate", json=body, timeout=10)
        assert reply.status_code == 400, reply.text[:300]
        assert reply.json()["error"]["message"].startswith("invalid policy: ")
        with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=10) as conn:
            conn.send(json.dumps({"type": "open", "prompt": "hi", "policy": policy}))
            frame = json.loads(conn.recv(timeout=10))
            with pytest.raises(ConnectionClosed) as closed:
                conn.recv(timeout=10)
    assert frame["type"] == "error" and frame["error"]["type"] == "invalid_request_error", frame
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


# -- client_stalled: a stream client that keeps feeding and never reads ----------------------------------------------
#: 2,000 characters of CJK text: each released back as 12 KB of escapes, which fill what the client leaves unread in
#: a few feeds (with 400 a feed, a loaded machine took longer than the session's limit to fill them: rt67a F3).
CJK_FEED = ws_frame({"type": "feed", "text": "\u4e2d" * 2000})


@pytest.mark.parametrize(
    ("limits", "limit_s"),
    [
        ({"stream_idle_timeout_s": 2.0}, 2.0),
        ({"stream_idle_timeout_s": None, "stream_max_session_s": 3.0}, 3.0),
    ],
    ids=["idle-timeout", "max-session"],
)
def test_a_feeding_stream_client_that_never_reads_is_counted_stalled(limits: dict[str, Any], limit_s: float) -> None:
    """Text keeps coming (a feed every 20 ms), so the session never idles: its frames back fill the socket, a send
    waits past the session's time, and the client is cut off, counted as ``client_stalled``."""
    with live(max_streams=1, **limits) as (port, load):
        attacker = nonreader(port)
        open_session(attacker)
        stop = threading.Event()

        def feed() -> None:
            with contextlib.suppress(OSError):
                for _ in range(90):  # 180,000 characters: within --max-chars
                    if stop.is_set():
                        return
                    attacker.sendall(CJK_FEED)
                    time.sleep(0.02)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        assert until(lambda: load.streams == 1, 10), "the attacker's session never opened"
        try:
            assert until(lambda: load.streams == 0 and cut_off(attacker), SLACK * limit_s), "held past its limit"
        finally:
            stop.set()
            feeder.join(timeout=10)
        assert metric(port, "rejected", 'reason="client_stalled"') == 1
        attacker.close()
