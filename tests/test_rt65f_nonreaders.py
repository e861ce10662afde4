"""rt65f: a client that stops reading what the server sends it keeps no slot.

F1: a ``/v1/stream`` client that fed text through a 4 KB receive buffer and never read the frames sent back kept
its session and stream slot past ``--stream-idle-timeout`` and ``--stream-max-session`` for as long as its socket
stayed open (the session waited in a send): every other client got 503. F2: pipelined requests whose answers a
client never read held ``--max-concurrency`` slots past ``--timeout`` (the next answer's start waited for the
socket to drain): every other client got 503. Amplifier: a 404 quoted a 1 MB ``model`` whole (2.5 MB of U+0085).

Each attack runs against a real uvicorn server configured as ``serve`` runs it (`server_config`) on loopback, with
small limits; the attacker's socket has a 4 KB receive buffer and is never read. Its slot must come back within a
few times the operator's limit, its connection cut off, and another client be served. The server's sockets have a
small send buffer (`SERVER_SEND_BUFFER`), so that a few hundred KB fill what a client leaves unread: on loopback
the kernel grows it to 4 MB, and the red team sent 5 MB for the same stall."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from faults import ScriptedBackend, keyword_verdict
from qwenguard.core import Guard
from qwenguard.core.server import create_app, server_config
from test_rt56d_server_hangups import SLOW_S, SlowJudge
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

#: How many times the operator's limit a held slot may take to come back (the attack's own sending included).
SLACK = 8


def quoted_start(value: str) -> str:
    """How an error message that quotes ``value`` starts it (repr'd, up to its closing quote)."""
    return repr(value[:40])[:-1]


#: Where the attacker connects from (the other clients from 127.0.0.1).
ATTACKER = "127.0.0.2"

#: The send buffer of the server's sockets (set on the listening socket, which accepted sockets inherit).
SERVER_SEND_BUFFER = 32 * 1024


@contextlib.contextmanager
def live(guard: Guard | None = None, **options: Any) -> Iterator[tuple[int, Any]]:
    """`create_app` with ``guard`` (a keyword judge) and ``options``, served as ``serve`` serves it; (port, its
    `Load`)."""
    app = create_app(guard or Guard(ScriptedBackend(keyword_verdict)), **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SERVER_SEND_BUFFER)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = server_config(app, port=port, limits=app.state.service.limits, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    try:
        yield port, app.state.load
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def until(condition: Callable[[], bool], limit: float) -> bool:
    """Whether ``condition()`` came to hold within ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def nonreader(port: int) -> socket.socket:
    """A connection from `ATTACKER` with a 4 KB receive buffer, which the test never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((ATTACKER, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def send_behind(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send ``data`` in the background, for as long as the server reads it (or until it cuts the socket off)."""

    def run() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


#: Linux's TCP state of a socket the peer reset (``tcp_states.h``).
TCP_CLOSE = 7


def cut_off(sock: socket.socket) -> bool:
    """Whether the server reset the connection (read without reading the socket, which would drain it)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_CLOSE


# -- F1: a stream session's frames --------------------------------------------------------------------------------
def ws_frame(message: dict[str, Any]) -> bytes:
    """One masked client text frame."""
    payload, mask = json.dumps(message).encode(), os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 65536:
        head = bytes([0x81, 0x80 | 126]) + struct.pack(">H", size)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack(">Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def open_session(sock: socket.socket) -> None:
    """The WebSocket handshake on ``sock`` (read: it precedes the attack) and the session's ``open`` frame."""
    handshake(sock)
    sock.sendall(ws_frame({"type": "open", "prompt": "Tell me a story."}))


def handshake(sock: socket.socket) -> None:
    """The ``/v1/stream`` WebSocket handshake on ``sock``, its answer read, no frame."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head


#: Feeds whose released frames fill the buffers: 190,000 quotes, each released escaped (two bytes): 380 KB sent back.
FEEDS = ws_frame({"type": "feed", "text": '"' * 500}) * 380


def another_session_opens(port: int) -> bool:
    with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=10) as conn:
        conn.send(json.dumps({"type": "open", "prompt": "What is the capital of France?"}))
        return json.loads(conn.recv(timeout=10))["type"] == "opened"


@pytest.mark.parametrize(
    ("limits", "limit_s"),
    [
        ({"stream_idle_timeout_s": 1.0}, 1.0),
        ({"stream_idle_timeout_s": None, "stream_max_session_s": 3.0}, 3.0),
    ],
    ids=["idle-timeout", "max-session"],
)
def test_a_stream_client_that_stops_reading_loses_its_session_and_slot(limits: dict[str, Any], limit_s: float) -> None:
    # A goodbye that fits the buffers is followed by a cut-off a head deadline later: 2 s, not the default 10, leaves
    # the allowance (SLACK x the limit) a margin load cannot eat (limit + 10 s of 24 s failed 1 of 22 runs under load).
    with live(max_streams=1, head_timeout_s=2, **limits) as (port, load):
        attacker = nonreader(port)
        open_session(attacker)
        send_behind(attacker, FEEDS)
        assert until(lambda: load.streams == 1, 10), "the attacker's session never opened"
        # The server answers every feed until the attacker's buffers are full, then waits on a send, which its
        # limit bounds: the session ends, its slot comes back, and the attacker is cut off.
        assert until(lambda: load.streams == 0 and cut_off(attacker), SLACK * limit_s), "held past its limit"
        assert another_session_opens(port)
        attacker.close()


def test_a_session_sending_empty_feeds_back_to_back_is_idle() -> None:
    """Empty feeds carry no text: a session of nothing else is idle, however fast they come (they came faster
    than it answered them, one was always kept ahead, and only an empty queue was checked for the limits)."""
    idle_s, feeds = 1.0, 150_000
    with live(stream_idle_timeout_s=idle_s) as (port, _):
        with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=10) as conn:
            conn.send(json.dumps({"type": "open", "prompt": "Tell me a story."}))
            assert json.loads(conn.recv(timeout=10))["type"] == "opened"

            def flood() -> None:
                with contextlib.suppress(Exception):  # the server closes the session meanwhile
                    for _ in range(feeds):
                        conn.send('{"type": "feed", "text": ""}')

            sender = threading.Thread(target=flood, daemon=True)
            sender.start()
            frames: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frames.append(json.loads(conn.recv(timeout=SLACK * idle_s)))
        sender.join(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
    assert frames[-1]["type"] == "error" and "no text fed" in frames[-1]["error"]["message"]
    # closed while the feeds still came: answered far fewer than were sent
    assert len(frames) < feeds // 2


# -- F2: pipelined answers -----------------------------------------------------------------------------------------
#: One ``/v1/moderate`` request of 256 conversations (10 KB), answered with 53 KB.
_BATCH = json.dumps({"conversations": [[{"role": "user", "content": f"hi {i}"}] for i in range(256)]}).encode()
PIPELINED = (
    b"POST /v1/moderate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    % len(_BATCH)
    + _BATCH
) * 40


def test_pipelined_answers_a_client_never_reads_hold_no_slot_past_the_timeout() -> None:
    timeout_s = 1.0
    with live(max_concurrency=1, request_timeout_s=timeout_s) as (port, load):
        attacker = nonreader(port)
        send_behind(attacker, PIPELINED)
        assert until(lambda: load.in_flight == 1, 10), "the attacker's requests were never served"
        # Its answers go out until its buffers are full; the next one's start then waits on the socket, in the
        # slot: the request's deadline bounds that wait, the slot comes back and the attacker is cut off.
        assert until(lambda: cut_off(attacker) and load.in_flight == 0, SLACK * timeout_s), "a slot held in a send"
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/moderate",
            json={"conversations": [[{"role": "user", "content": "What is the capital of France?"}]]},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["results"][0]["risk"] == "safe"
        attacker.close()


def test_a_pipelining_client_that_hangs_up_stops_the_check_served_ahead() -> None:
    """uvicorn told only the newest request it had read that the client left: the one being served, ahead of a
    pipelined one, was judged to its end for nobody, in its slot (the watch of rt56d F2 never heard of it)."""
    judge = SlowJudge()
    slow = json.dumps({"conversations": [[{"role": "user", "content": "SLOW"}]]}).encode()
    quick = json.dumps({"conversations": [[{"role": "user", "content": "hi"}]]}).encode()
    head = b"POST /v1/moderate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    with live(Guard(judge, cache_size=0)) as (port, load):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(head % len(slow) + slow + head % len(quick) + quick)
        assert until(lambda: judge.started == 1, SLOW_S), "the first request's check never started"
        client.close()
        assert until(lambda: judge.cancelled + judge.done == 1, 3 * SLOW_S)
        assert (judge.cancelled, judge.done) == (1, 0), "judged to its end for a client that left"
        assert until(lambda: load.in_flight == 0, SLOW_S)


# -- the amplifier: errors quoting a client's value ----------------------------------------------------------------
def _error_message(reply: httpx.Response) -> str:
    message: str = reply.json()["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("path", "body", "status", "quotes"),
    [
        # the 404 quoted the model whole: a 1 MB request, a 2.5 MB answer
        (
            "/v1/chat/completions",
            {"model": "\x85" * 400_000, "messages": [{"role": "user", "content": "hi"}]},
            404,
            quoted_start("\x85" * 400_000),
        ),
        # a field the server does not judge is named in the 422
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi", "B" * 400_000: 1}]},
            422,
            quoted_start("B" * 400_000),
        ),
        # a policy's value, quoted by the core's policy reader
        (
            "/v1/moderate",
            {"conversations": [[{"role": "user", "content": "hi"}]], "policy": {"mode": "\x85" * 400_000}},
            400,
            "mode must be 'strict' or 'loose'",
        ),
    ],
    ids=["model-404", "unjudged-field-422", "policy-400"],
)
def test_an_error_quotes_a_few_characters_of_a_clients_value(
    path: str, body: dict[str, Any], status: int, quotes: str
) -> None:
    with live() as (port, _):
        raw = json.dumps(body, ensure_ascii=False).encode()
        reply = httpx.post(
            f"http://127.0.0.1:{port}{path}", content=raw, headers={"content-type": "application/json"}, timeout=30
        )
    assert reply.status_code == status, reply.text[:300]
    message = _error_message(reply)
    assert quotes in message
    assert len(reply.content) < 10_000, f"a {len(raw):,}-byte request answered with {len(reply.content):,} bytes"


def test_a_stream_error_quotes_a_few_characters_of_a_frames_type() -> None:
    with live() as (port, _), connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=10) as conn:
        conn.send(json.dumps({"type": "open", "prompt": "hi"}))
        assert json.loads(conn.recv(timeout=10))["type"] == "opened"
        conn.send(json.dumps({"type": "\x85" * 200_000}, ensure_ascii=False))
        error = conn.recv(timeout=10)
    assert json.loads(error)["error"]["code"] == 4400
    assert quoted_start("\x85" * 400_000) in json.loads(error)["error"]["message"]
    assert len(error) < 10_000
