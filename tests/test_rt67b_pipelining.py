"""rt67b: HTTP/1.1 pipelining against the server's per-socket limits.

F1: one address opened every socket of ``--max-connections`` and pipelined hundreds of requests on each, never
reading: past its turns each request was answered 429 on the same kept-alive socket, and once the socket's buffers
were full a 429 waited in its send until the request deadline. Such a socket holds no turn, waits for no head and
sends no body, so no limit counted it and the budget never took it back: another address got 503 "too many
connections" for as long as the attacker kept them. Now a refusal closes its connection and a client that has not
taken it within the head deadline is cut off. F2: the 64 KB head cap added up every head pipelined since the last
answer: nine requests with an 8 KB header each, sent in one write, got 431 and none was answered.

Against a real uvicorn server configured as ``serve`` runs it (`test_rt65f_nonreaders.live`: a small send buffer,
so that a few tens of KB fill what a client leaves unread); the attacker's sockets have a 4 KB receive buffer."""

from __future__ import annotations

import json
import re
import socket
import time

from test_rt65f_nonreaders import live, nonreader, send_behind, until


def request(path: str, payload: dict, headers: str = "") -> bytes:
    body = json.dumps(payload).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + headers + "\r\n").encode() + body


def status_of_one_request(port: int) -> int | None:
    """The status another client (127.0.0.1) gets for a ``/v1/moderate``; ``None``: no answer at all."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.settimeout(3)
            sock.sendall(request("/v1/moderate", {"conversations": [[{"role": "user", "content": "hello"}]]}))
            line = sock.recv(64).split(b"\r\n")[0]
    except OSError:
        return None
    found = re.match(rb"HTTP/1\.1 (\d+)", line)
    return int(found.group(1)) if found else None


def test_pipelining_non_reader_cannot_hold_the_connection_budget() -> None:
    sockets = 12
    with live(
        model_name="guard",
        max_concurrency=8,
        max_requests_per_client=2,
        max_connections=sockets,
        request_timeout_s=12,
        head_timeout_s=2,
    ) as (port, load):
        attackers = []
        for i in range(sockets):
            attacker = nonreader(port)
            attackers.append(attacker)
            burst = b"".join(
                request(
                    "/v1/chat/completions",
                    {"model": "guard", "stream": True, "messages": [{"role": "user", "content": f"hi {i} {j}"}]},
                )
                for j in range(300)
            )
            send_behind(attacker, burst)
        assert until(lambda: load.in_flight >= 2, 10), "the attacker's requests were never served"
        # Its sockets past its turns are given back once their refusal is out (or cut off at the head deadline):
        # right as they all came in, the budget is full.
        assert until(lambda: status_of_one_request(port) == 200, 3 * 2), "no other client was ever served"
        statuses = []
        for _ in range(12):  # past the head deadline, well short of the request deadline
            statuses.append(status_of_one_request(port))
            time.sleep(0.5)
        for attacker in attackers:
            attacker.close()
    assert statuses == [200] * len(statuses), statuses


def test_pipelined_heads_are_capped_each_alone() -> None:
    count = 9
    with live(model_name="guard") as (port, _):
        one = request(
            "/v1/moderate", {"conversations": [[{"role": "user", "content": "hello"}]]}, f"X-Trace: {'t' * 8000}\r\n"
        )
        assert len(one) * count > 64 * 1024 > len(one)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(one * count)
            received = b""
            while received.count(b"HTTP/1.1 ") < count:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
    assert re.findall(rb"HTTP/1\.1 (\d+)", received) == [b"200"] * count
