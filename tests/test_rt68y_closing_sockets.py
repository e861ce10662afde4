"""rt68b: sockets the server is done with, which one address kept to take every socket of ``--max-connections``.

F1: a connection closed with an answer still unsent (the client's ``Connection: close``, uvicorn's keep-alive timeout,
a refusal, a shutdown) was kept for as long as a client that never reads kept it open: uvicorn closes by waiting to
flush, nothing reset it, and the budget never took a closing socket back. One address filled the budget so, with
nothing in flight and /ready true, and every other client got 503; a draining replica waited its whole bound. Now
such a socket is reset a head deadline after its close, and it is the first the budget takes back. F2: an ended stream
session kept its socket a head deadline for the client's answer to its close, and the budget never took a WebSocket
back: now it has `CLOSE_LINGER_S`, and the budget takes it first. F3: the open paths (/health, /ready, /openapi.json)
hold no turn and no slot, and their answers waited in their sends for the request deadline: thousands pipelined and
never read held every socket. Now they are bounded as refusals are, one that starts while earlier answers still wait
unsent ends its connection, and the budget takes back a pipelining socket of the address that holds the most. Also:
an answer's send deadline runs from when its body was in, as the work's does (a37ba9f ran it from the request's
start).

Against a real uvicorn server configured as ``serve`` runs it, with a small send buffer (`SERVER_SEND_BUFFER`) so that
a few tens of KB fill what a client leaves unread; the attacker connects from `ATTACKER` with a 4 KB receive buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from faults import ScriptedBackend, keyword_verdict
from qwenguard.core import Guard
from qwenguard.core.server import connections, create_app, server_config
from qwenguard.core.server.gate import OPEN_PATHS_PIPELINED
from qwenguard.core.server.shutdown import DrainingServer
from qwenguard.core.server.stream_protocol import CLOSE_LINGER_S
from test_rt56d_server_hangups import SLOW_S, SlowJudge
from test_rt65f_nonreaders import (
    ATTACKER,
    SERVER_SEND_BUFFER,
    SLACK,
    TCP_CLOSE,
    cut_off,
    handshake,
    nonreader,
    send_behind,
    until,
    ws_frame,
)
from test_rt67b_pipelining import request, status_of_one_request


@contextlib.contextmanager
def served(
    guard: Guard | None = None, server_class: type[uvicorn.Server] = uvicorn.Server, **options: Any
) -> Iterator[tuple[int, Any, uvicorn.Server, threading.Thread]]:
    """`test_rt65f_nonreaders.live`, yielding the server and its thread too: (port, `Load`, server, thread). ``loop``:
    uvicorn's event loop (``"asyncio"``, or ``"auto"``: uvloop where installed)."""
    shutdown_s = options.pop("timeout_graceful_shutdown", None)
    loop = options.pop("loop", "auto")
    app = create_app(guard or Guard(ScriptedBackend(keyword_verdict)), **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SERVER_SEND_BUFFER)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = server_config(
        app,
        port=port,
        limits=app.state.service.limits,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=shutdown_s,
        loop=loop,
    )
    server = DrainingServer(config, load=app.state.load) if server_class is DrainingServer else server_class(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    try:
        yield port, app.state.load, server, thread
    finally:
        server.should_exit = server.force_exit = True
        thread.join(timeout=10)
        sock.close()


def attacker_sockets(server: uvicorn.Server) -> int:
    """How many of the server's connections (its budget's count) are the attacker's."""
    return sum(1 for c in list(server.server_state.connections) if (getattr(c, "client", None) or ("",))[0] == ATTACKER)


def judged(backend: ScriptedBackend) -> int:
    """How many conversations ``backend`` was asked to judge."""
    return sum(len(call) for call in backend.calls)


def settled(backend: ScriptedBackend, load: Any, least: int, quiet_s: float = 0.5) -> bool:
    """Whether, within 10 s, ``backend`` judged at least ``least`` conversations and then nothing more was judged or in
    flight for ``quiet_s`` (how many of a non-reader's pipelined requests are read depends on the buffers)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = judged(backend)
        if seen >= least and load.in_flight == 0:
            time.sleep(quiet_s)
            if judged(backend) == seen and load.in_flight == 0:
                return True
        time.sleep(0.02)
    return False


def moderate(conversations: int, headers: str = "") -> bytes:
    """A /v1/moderate request whose answer is about 215 bytes a conversation (200: 43 KB)."""
    convs = [[{"role": "user", "content": f"hello there number {i}"}] for i in range(conversations)]
    return request("/v1/moderate", {"conversations": convs}, headers)


# -- F1: a connection closed with its answer unsent ----------------------------------------------------------------
@pytest.mark.parametrize("closing", ["client-connection-close", "keep-alive-timeout"])
def test_answers_closed_unread_do_not_hold_the_connection_budget(closing: str) -> None:
    budget = 8
    last = "Connection: close\r\n" if closing == "client-connection-close" else ""
    with served(
        model_name="guard",
        max_concurrency=8,
        max_requests_per_client=2,
        max_connections=budget,
        request_timeout_s=30,
        head_timeout_s=1,
        keep_alive_s=1,
    ) as (port, load, server, _):
        attackers = []
        for _ in range(budget // 2 + 2):  # two at a time: within the address's turns, never a refusal
            for _ in range(2):
                with contextlib.suppress(OSError):  # a connect the budget refuses
                    attacker = nonreader(port)
                    attacker.sendall(moderate(200) * 2 + moderate(200, last))  # 129 KB of answers, never read
                    attackers.append(attacker)
            time.sleep(0.5)
        assert until(lambda: status_of_one_request(port) == 200, 5), "no other client was ever served"
        statuses = [status_of_one_request(port) for _ in range(5)]
        # Each is reset a head deadline after its close: well within the request deadline that bounds its sends.
        assert until(lambda: attacker_sockets(server) == 0, 1 * SLACK), attacker_sockets(server)
        reset = sum(cut_off(a) for a in attackers)
        assert until(lambda: load.in_flight == 0, 5)  # the other client's last request winding down
        for attacker in attackers:
            attacker.close()
    assert statuses == [200] * len(statuses), statuses
    assert reset == len(attackers), f"{reset} of {len(attackers)} attacker sockets reset"


def test_a_refusal_that_fits_the_buffers_is_cut_off_when_never_read() -> None:
    judge = SlowJudge()
    with served(
        Guard(judge), model_name="guard", max_concurrency=1, request_timeout_s=30, head_timeout_s=1, keep_alive_s=30
    ) as (port, load, server, _):
        attacker = nonreader(port)
        attacker.sendall(moderate(200) * 2)  # the kernel's buffers full, the rest of the second answer in uvicorn's
        # The attacker's work done (nothing in flight before the server had read its requests proved nothing: on a busy
        # machine the victim then raced them for the one slot).
        assert settled(judge, load, 200) and attacker_sockets(server) == 1
        victim = threading.Thread(target=lambda: slow_request(port), daemon=True)  # holds the one slot
        victim.start()
        assert until(lambda: load.in_flight == 1, 10)
        attacker.sendall(moderate(1))  # refused 503 (Connection: close): it fits behind the unread answers
        # Cut off a head deadline after the refusal's close (the request deadline is 30 s, the keep-alive 30 s).
        assert until(lambda: cut_off(attacker), 1 * SLACK), "the refused non-reader was never cut off"
        assert until(lambda: attacker_sockets(server) == 0, 1 * SLACK)
        attacker.close()
        victim.join(SLOW_S * 3)


def slow_request(port: int) -> None:
    """Another client's request that holds a slot `SLOW_S` (`SlowJudge`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=SLOW_S * 3) as sock:
        sock.settimeout(SLOW_S * 3)
        sock.sendall(request("/v1/moderate", {"conversations": [[{"role": "user", "content": "SLOW question"}]]}))
        with contextlib.suppress(OSError):
            sock.recv(64)


def test_a_draining_replica_does_not_wait_its_bound_for_an_answer_nobody_reads() -> None:
    bound = 60
    backend = ScriptedBackend(keyword_verdict)
    with served(
        Guard(backend),
        model_name="guard",
        server_class=DrainingServer,
        timeout_graceful_shutdown=bound,
        request_timeout_s=bound,
        head_timeout_s=1,
        keep_alive_s=bound,
    ) as (port, load, server, thread):
        attacker = nonreader(port)
        attacker.sendall(moderate(200) * 2)  # answered whole into the buffers, kept alive: the shutdown closes it
        assert settled(backend, load, 200) and attacker_sockets(server) == 1
        server.handle_exit(15, None)  # SIGTERM
        assert until(lambda: not thread.is_alive(), 1 * SLACK), "shutdown waited for a client that never reads"
        assert cut_off(attacker)
        attacker.close()


# -- rt68m: what the budget takes back ------------------------------------------------------------------------------
@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_a_client_reading_a_closed_answer_at_its_pace_keeps_it_beside_an_address_at_the_budget(loop: str) -> None:
    # rt68m F1: urllib and HTTP/1.0 clients send Connection: close, so the server closes as it answers. The budget
    # took such a socket first, as ended, while the client was still reading it: an address holding the rest of the
    # budget in idle sockets, opening one more now and then, reset every honest answer part way (0 of 10 complete).
    budget, conversations = 8, 1000  # an answer of 215 KB, far more than the buffers hold
    with served(
        model_name="guard",
        max_conversations=conversations,
        max_connections=budget,
        head_timeout_s=10,
        keep_alive_s=10,
        loop=loop,
    ) as (port, _load, server, _):
        attackers = [nonreader(port) for _ in range(budget - 1)]
        assert until(lambda: attacker_sockets(server) == budget - 1, 5)
        honest = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        honest.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        honest.connect(("127.0.0.1", port))
        honest.sendall(moderate(conversations, "Connection: close\r\n"))
        assert until(lambda: closed_by_server(server) == 1, 10), "the answer was never complete"
        honest.settimeout(10)
        received = b""
        with contextlib.suppress(OSError):  # a reset: the answer is cut short
            while data := honest.recv(4096):  # a client that reads at its pace, a newcomer between its reads
                received += data
                attackers.append(nonreader(port))
                time.sleep(0.01)
        honest.close()
        # The newcomers took the attacker's own sockets: all but a budget's worth are ended.
        assert until(lambda: sum(map(ended_by_server, attackers)) >= len(attackers) - budget, 5)
        for attacker in attackers:
            attacker.close()
    assert results_in(received) == conversations, f"{len(received)} bytes received: {received[:60]!r}"


#: The TCP state of a socket whose peer closed it (``TCP_INFO``'s first byte; 7, `TCP_CLOSE`: reset).
TCP_CLOSE_WAIT = 8


def ended_by_server(sock: socket.socket) -> bool:
    """Whether the server closed or reset ``sock`` (read without reading the socket)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in (TCP_CLOSE, TCP_CLOSE_WAIT)


def closed_by_server(server: uvicorn.Server) -> int:
    """How many of the server's connections it has closed (their sockets kept to flush what is left)."""
    return sum(1 for c in list(server.server_state.connections) if getattr(c.transport, "closed_at", None) is not None)


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
def test_a_burst_of_connections_past_the_budget_is_held_to_it(loop: str) -> None:
    # rt68m F2: the asyncio loop accepts a burst in one turn, every connection made before any is lost. The first
    # newcomer closed an idle socket, and each later one took that same socket again, as ended, and let itself in:
    # bursts of 60 reached 67, 126, 185, 244 connections at a budget of 8, until the server ran out of descriptors.
    budget, burst = 8, 60
    with served(model_name="guard", max_connections=budget, head_timeout_s=10, keep_alive_s=10, loop=loop) as (
        port,
        _load,
        server,
        _,
    ):
        held = [nonreader(port) for _ in range(budget)]
        assert until(lambda: attacker_sockets(server) == budget, 5)
        counts = []
        for _ in range(3):
            held += [nonreader(port) for _ in range(burst)]
            # Accepted after the burst: by its answer, every connection of the burst was made.
            assert status_of_one_request(port) == 200
            counts.append(attacker_sockets(server))
        for sock in held:
            sock.close()
    assert max(counts) <= budget, f"attacker sockets open after each burst of {burst}: {counts}"


def test_connections_lost_cleanly_leave_no_reset_to_come() -> None:
    # rt68m F3: uvicorn closes the transport again as a connection is lost cleanly, after which the wrapper's close
    # scheduled a reset nothing cancelled: 1,196 live timers, each holding its connection, after 1,200 connections.
    with served(model_name="guard", head_timeout_s=10, keep_alive_s=10, loop="asyncio") as (port, _load, server, _):
        for close in [True, False] * 100:  # the server's close, and the client's on a kept-alive connection
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n%s\r\n" % (b"Connection: close\r\n" * close))
                assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")  # all of it: a clean close, no reset
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert until(lambda: len(server.server_state.connections) == 1, 5)
        loop = next(iter(server.server_state.connections)).loop
        pending = asyncio.run_coroutine_threadsafe(resets_pending(), loop).result(5)
        kept.close()
    assert pending == 0, f"{pending} resets pending after 200 connections lost"


async def resets_pending() -> int:
    """How many resets (`connections._reset`) the running asyncio loop has scheduled and not cancelled."""
    scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    return sum(1 for handle in scheduled if not handle.cancelled() and handle._callback is connections._reset)


# -- F2: ended stream sessions ---------------------------------------------------------------------------------
def test_ended_stream_sessions_do_not_hold_the_connection_budget() -> None:
    budget = 16
    head_s = 10.0  # far longer than the close's linger: the budget, not the head deadline, must make room
    with served(model_name="guard", max_connections=budget, max_streams_per_client=2, head_timeout_s=head_s) as (
        port,
        _load,
        server,
        _,
    ):
        held: list[socket.socket] = []
        stop = threading.Event()

        def attack() -> None:
            while not stop.is_set():
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.bind((ATTACKER, 0))
                sock.settimeout(3)
                try:
                    sock.connect(("127.0.0.1", port))
                    handshake(sock)
                    sock.sendall(ws_frame({"type": "close"}))  # a normal end: the server closes 1000, never answered
                    held.append(sock)
                except (OSError, AssertionError):
                    sock.close()
                    time.sleep(0.05)

        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        try:
            assert until(lambda: len(held) >= 2 * budget, 30), "the attack never got going"
            assert until(lambda: status_of_one_request(port) == 200, 5), "no other client was ever served"
            statuses = [status_of_one_request(port) for _ in range(5)]
            # An ended session's socket waits `CLOSE_LINGER_S` for the client's answer, not the head deadline.
            first = held[0]
            assert until(lambda: cut_off(first), CLOSE_LINGER_S * SLACK)
        finally:
            stop.set()
            attacker.join(10)
            for sock in held:
                sock.close()
        assert until(lambda: attacker_sockets(server) == 0, 5)
    assert statuses == [200] * len(statuses), statuses


# -- F3: the open paths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/health", "/ready", "/openapi.json"])
def test_open_paths_pipelined_unread_do_not_hold_the_connection_budget(path: str) -> None:
    sockets = 12
    with served(
        model_name="guard",
        api_key="s3cret-key",  # the open paths need none: the attacker sends none
        max_concurrency=8,
        max_requests_per_client=2,
        max_connections=sockets,
        request_timeout_s=30,
        head_timeout_s=2,
    ) as (port, load, server, _):
        attackers = []
        for _ in range(sockets):
            attacker = nonreader(port)
            attackers.append(attacker)
            send_behind(attacker, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 3000)
        assert until(lambda: status_of_keyed_request(port) == 200, 2 * SLACK), "no other client was ever served"
        statuses = [status_of_keyed_request(port) for _ in range(5)]
        # Well within the request deadline (30 s) that bounded their sends before.
        assert until(lambda: attacker_sockets(server) == 0, 2 * SLACK), attacker_sockets(server)
        assert until(lambda: load.in_flight == 0, 5)  # the other client's last request winding down
        for attacker in attackers:
            attacker.close()
    assert statuses == [200] * len(statuses), statuses


def test_a_connection_is_served_a_few_pipelined_health_checks() -> None:
    # One socket, the budget far from full: no eviction; the request deadline (60 s) bounded it before.
    with served(model_name="guard", request_timeout_s=60, head_timeout_s=1) as (port, _load, server, _):
        attacker = nonreader(port)
        send_behind(attacker, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 3000)
        assert until(lambda: attacker_sockets(server) == 0, 1 * SLACK), "a pipelining client kept its socket"
        attacker.settimeout(10)
        received = b""
        with contextlib.suppress(OSError):
            while data := attacker.recv(65536):
                received += data
        attacker.close()
        assert status_of_one_request(port) == 200
    answers = re.findall(rb"HTTP/1\.1 (\d+) ", received)
    assert answers == [b"200"] * (OPEN_PATHS_PIPELINED + 1), answers
    assert received.count(b"connection: close") == 1, "the last answer says the connection ends"


def test_an_open_path_answer_to_a_client_that_does_not_read_ends_its_connection() -> None:
    # /openapi.json is 15 KB: a few fill the buffers, and the next one, behind them, ends the connection.
    with served(model_name="guard", request_timeout_s=60, head_timeout_s=1) as (port, _load, server, _):
        attacker = nonreader(port)
        send_behind(attacker, b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 3000)
        assert until(lambda: cut_off(attacker), 1 * SLACK), "a non-reader of /openapi.json kept its socket"
        assert until(lambda: attacker_sockets(server) == 0, 1 * SLACK)
        attacker.close()
        assert status_of_one_request(port) == 200


def status_of_keyed_request(port: int) -> int | None:
    """`status_of_one_request` with the API key."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.settimeout(3)
            headers = "Authorization: Bearer s3cret-key\r\n"
            sock.sendall(request("/v1/moderate", {"conversations": [[{"role": "user", "content": "hello"}]]}, headers))
            line = sock.recv(64).split(b"\r\n")[0]
    except OSError:
        return None
    parts = line.split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


# -- an answer's send deadline ---------------------------------------------------------------------------------
def test_an_answers_send_deadline_runs_from_when_its_body_was_in() -> None:
    # A client that pipelines a second request behind a large answer, sends the second's body late (within its
    # deadline) and reads both answers later still, within the request deadline counted from that body.
    timeout = 6.0
    with served(model_name="guard", max_conversations=1000, request_timeout_s=timeout, head_timeout_s=timeout) as (
        port,
        _load,
        _server,
        _,
    ):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        large = moderate(1000)  # a 215 KB answer: the server's buffer holds what the client has not read
        second = moderate(1)
        split = second.index(b"\r\n\r\n") + 4
        sock.sendall(large + second[:split])
        time.sleep(timeout * 2 / 3)  # the second body comes late, within its deadline
        sock.sendall(second[split:])
        time.sleep(timeout * 2 / 3)  # its answer waits behind the first, within the request's deadline from then
        sock.settimeout(10)
        received = b""
        with contextlib.suppress(OSError):
            while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b"}]}"):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        sock.close()
    answers = [results_in(part) for part in received.split(b"HTTP/1.1 200 OK\r\n")[1:]]
    assert answers == [1000, 1], f"{len(received)} bytes received: {received[:100]!r}"


def results_in(answer: bytes) -> int | None:
    """How many results a /v1/moderate answer (head and body) holds; ``None`` when it was cut off."""
    try:
        return len(json.loads(answer.partition(b"\r\n\r\n")[2])["results"])
    except ValueError:
        return None
