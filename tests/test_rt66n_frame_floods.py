"""rt66n: WebSocket frames that cost the server's event loop and write nothing back.

F1: a ``/v1/stream`` client that sent a burst of unsolicited pongs, or of empty continuation frames of a message that
never ends, held the server's event loop: uvicorn parses all that one read holds (256 KB: 43,000 frames), these frames
make the server write nothing (so the pause for a client that does not read never comes), and a socket kept full took
every turn of the loop: /health took 40-57 s beside one such client. The continuation frames grew memory too: each is
kept in a list, and the message's size limit counts payload only. F2: the reset timer that follows a stream session's
close (`abort_connection_later`) raised under uvloop on a socket closed by then: a traceback in the log for every
session that ended normally.

Each attack runs against a real uvicorn server configured as ``serve`` runs it (`test_rt65f_nonreaders.live`), on
uvloop where it is installed (uvicorn's ``loop="auto"``), as ``serve`` runs it."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from qwenguard.core.server.connections import MESSAGE_FRAGMENTS
from test_rt65f_nonreaders import another_session_opens, live, open_session, send_behind, until
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

#: Masked client frames, empty (6 bytes): a pong no ping asked for, a continuation that does not end its message.
PONG = bytes([0x8A, 0x80]) + b"\0\0\0\0"
EMPTY_FRAGMENT = bytes([0x00, 0x80]) + b"\0\0\0\0"
PING = bytes([0x89, 0x80]) + b"\0\0\0\0"
#: A continuation of one byte that does not end its message (7 bytes).
BYTE_FRAGMENT = bytes([0x00, 0x81]) + b"\0\0\0\0" + b"x"
#: A text message's first fragment (one byte), which never gets its last.
MESSAGE_START = bytes([0x01, 0x81]) + b"\0\0\0\0" + b"x"

#: What an attacker sends in one burst: ~2 MB (about 2 s of the server's loop, before).
BURSTS = {
    "unsolicited-pongs": PONG * 350_000,
    "empty-fragments": MESSAGE_START + EMPTY_FRAGMENT * 350_000,
    "one-byte-fragments": MESSAGE_START + BYTE_FRAGMENT * 300_000,
}

#: How many times its latency alone /health may take beside a flood (both measured in one run, interleaved). It was
#: hundreds of times (seconds against milliseconds).
RATIO = 10.0

#: Rounds of (/health alone, a flood, /health beside it), and /health requests in each half of a round.
ROUNDS = 3
SAMPLES = 5


def health_latency(client: httpx.Client) -> float:
    start = time.perf_counter()
    assert client.get("/health").status_code == 200
    return time.perf_counter() - start


def ended(sock: socket.socket) -> bool:
    """Whether the server ended the connection: what it sent read to its end (EOF or a reset) within 10 s."""
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: the server closed with the flood unread
    return True


def compare(alone: list[float], flooded: list[float]) -> str | None:
    """``None`` when /health beside the flood took at most `RATIO` times as long in all as alone, else both totals
    (a total, not a median: a flood holds the loop for some requests, seconds each, and leaves others alone)."""
    if sum(flooded) <= RATIO * sum(alone):
        return None
    return f"/health took {sum(flooded) * 1000:.0f} ms in all beside the flood, {sum(alone) * 1000:.0f} ms alone"


@pytest.mark.parametrize("kind", list(BURSTS))
def test_a_burst_of_frames_that_do_nothing_ends_the_connection_and_holds_no_loop(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    kept = [0]  # the most fragments the server kept of one message
    keep_fragment = WebSocketsSansIOProtocol.handle_cont

    def handle_cont(self: Any, event: Any) -> None:  # uvicorn's own, watched
        keep_fragment(self, event)
        kept[0] = max(kept[0], len(self.frames))

    monkeypatch.setattr(WebSocketsSansIOProtocol, "handle_cont", handle_cont)
    alone: list[float] = []
    flooded: list[float] = []
    with live(max_streams=1) as (port, load), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        for _ in range(ROUNDS):
            alone += [health_latency(client) for _ in range(SAMPLES)]
            attacker = socket.create_connection(("127.0.0.1", port))
            open_session(attacker)
            assert until(lambda: load.streams == 1, 10), "the attacker's session never opened"
            sending = send_behind(attacker, BURSTS[kind])
            flooded += [health_latency(client) for _ in range(SAMPLES)]
            assert ended(attacker), "the flooding connection was kept"
            sending.join(30)
            attacker.close()
            assert until(lambda: load.streams == 0, 10), "the flooding session kept its slot"
        assert another_session_opens(port)
    assert kept[0] <= MESSAGE_FRAGMENTS, f"the server kept {kept[0]:,} fragments of a message that never ended"
    assert (held := compare(alone, flooded)) is None, held


def test_a_ping_flood_from_a_client_that_reads_is_answered_and_keeps_its_session() -> None:
    """Pings are answered (the client reads its pongs, so the pause for a client that does not read never comes):
    the connection lives on, every ping answered, its session kept. How long /health waits beside it is a timing,
    not asserted here: with the server in a thread of this process it swung 4x-45x
    with the machine's load (the burst tests above assert the per-turn bound by ratio)."""
    alone: list[float] = []
    flooded: list[float] = []
    _ping_flood(alone, flooded, 350_000)  # 2 MB
    assert len(flooded) == len(alone) > 0


def _ping_flood(alone: list[float], flooded: list[float], pings: int) -> None:
    with live() as (port, load), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        attacker = socket.create_connection(("127.0.0.1", port))
        open_session(attacker)
        assert until(lambda: load.streams == 1, 10), "the attacker's session never opened"
        received = [0]

        def read() -> None:
            with contextlib.suppress(OSError):
                while data := attacker.recv(1 << 20):
                    received[0] += len(data)
                    time.sleep(0.01)  # read in batches: a thread woken per pong would hold the server's GIL

        threading.Thread(target=read, daemon=True).start()
        try:
            for _ in range(ROUNDS):
                answered = received[0] + 2 * pings  # an empty pong is 2 bytes
                alone += [health_latency(client) for _ in range(SAMPLES)]
                send_behind(attacker, PING * pings)
                flooded += [health_latency(client) for _ in range(SAMPLES)]
                # the next round's /health alone once every ping is answered
                assert until(lambda answered=answered: received[0] >= answered, 60), "the pings were not answered"
                assert load.streams == 1, "a client whose pings were answered lost its session"
        finally:
            attacker.close()


# -- what ordinary clients do -------------------------------------------------------------------------------------
def test_a_message_in_a_few_fragments_and_pongs_between_messages_are_served() -> None:
    with live() as (port, _), connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=10) as conn:
        opening = json.dumps({"type": "open", "prompt": "Tell me a story."})
        conn.send(iter([opening[:10], opening[10:20], "", opening[20:]]))  # four fragments, one empty
        assert json.loads(conn.recv(timeout=10))["type"] == "opened"
        for _ in range(40):  # a client's heartbeat pongs (no ping asked for them), more than the bound in all
            conn.pong(b"alive")
            conn.send(json.dumps({"type": "feed", "text": "Once upon a time. "}))
            assert json.loads(conn.recv(timeout=10))["type"] == "released"
        conn.send(json.dumps({"type": "finish"}))
        frames = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                frames.append(json.loads(conn.recv(timeout=10))["type"])
        assert frames[-1] == "finished"
        assert conn.close_code == 1000


# -- F2: the reset timer after a session's close ------------------------------------------------------------------
def test_sessions_that_end_normally_log_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("uvloop")  # uvicorn's loop="auto" runs on it; its closed sockets raise ValueError
    with caplog.at_level(logging.WARNING), live(head_timeout_s=1.0) as (port, _):
        for prompt, last in (("Tell me a story.", "finished"), ("Mix ammonium nitrate", "violation")):
            with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=10) as conn:
                conn.send(json.dumps({"type": "open", "prompt": prompt}))
                first = json.loads(conn.recv(timeout=10))["type"]
                if first == "opened":
                    conn.send(json.dumps({"type": "finish"}))
                    first = json.loads(conn.recv(timeout=10))["type"]
                assert first == last
        time.sleep(2.5)  # the reset timers (the head timeout after each close) run
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, "\n".join(caplog.text.splitlines()[:20])
