"""Replies that answer another request, behind a balancer that pools its connections to the engine (red team rt65c),
against raw socket engines on 127.0.0.1.

F1: the late copy of a reply lands on the balancer's upstream connection, and the balancer hands it to the next
request it forwards, which came on ANOTHER client connection (or on a new one: ``keep_alive=False``). An id read on
another connection was taken for ids that repeat, and the copy was that request's answer: a harmful prompt allowed
"Safe". Now every request sends an ``X-Request-Id``; an engine that names its replies by it (vLLM, ``qwenguard
serve``) proves each answer its request's, and another engine's reply whose id was read before is asked again.
F2: an answer's headers counted as progress for the calls queued for a slot, so headers and a body that never ends
held each queued check an attempt bound in turn. F3: a late copy cut short (no id to read) was the next request's
reply, a guard error that a fail-open policy let through. Sync and async.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from qwenguard.core import Guard, Policy
from test_rt64e_late_reply import BOMB, HELLO, SAFE, UNSAFE, RawEngine, TwiceEngine, new_id, text_of, wire

#: When the engine answers the bomb truthfully, and when it writes a greeting's reply the second time (seconds).
HONEST_AFTER, COPY_AFTER = 1.0, 0.3


class NamingEngine(RawEngine):
    """vLLM's way: each reply's id is ``chatcmpl-<the request's X-Request-Id>``. A greeting's reply is written again a
    moment later (a proxy's retry, an engine's bug); ``cut``: that copy cut short, its id unreadable."""

    def __init__(self, *, cut: bool = False) -> None:
        super().__init__(True)
        self.cut = cut

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        ident = f"chatcmpl-{here['asked']}" if here.get("asked") else new_id()
        if "bomb" in text_of(request):
            time.sleep(HONEST_AFTER)
            conn.sendall(wire(UNSAFE, ident))
            return
        once = wire(SAFE, ident)
        conn.sendall(once)
        time.sleep(COPY_AFTER)
        if self.cut:  # the copy's head says its whole length; half of the body comes
            head, _, body = once.partition(b"\r\n\r\n")
            conn.sendall(head + b"\r\n\r\n" + body[: len(body) // 2] + b" " * (len(body) - len(body) // 2))
        else:
            conn.sendall(once)


class PoolingBalancer(RawEngine):
    """Forwards every request, whichever client connection it came on, over ONE kept-alive connection to the engine,
    X-Request-Id included, and hands back the next response read there (an upstream keep-alive pool of one)."""

    def __init__(self, upstream: RawEngine) -> None:
        super().__init__(True)
        host, port = upstream.url.split("//")[1].split("/")[0].split(":")
        self.up = socket.create_connection((host, int(port)))
        self.up_buf = b""
        self.up_lock = threading.Lock()

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        body = json.dumps(request).encode()
        named = b"X-Request-Id: %s\r\n" % here["asked"].encode() if here.get("asked") else b""
        with self.up_lock:
            self.up.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
                + named
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
            while b"\r\n\r\n" not in self.up_buf:
                self.up_buf += self.up.recv(65536)
            head, _, rest = self.up_buf.partition(b"\r\n\r\n")
            size = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
            while len(rest) < size:
                rest += self.up.recv(65536)
            self.up_buf = rest[size:]
        conn.sendall(head + b"\r\n\r\n" + rest[:size])

    def close(self) -> None:
        super().close()
        self.up.close()


@contextmanager
def balanced(engine: RawEngine, **opts: Any) -> Iterator[Guard]:
    balancer = PoolingBalancer(engine)
    guard = Guard.remote(
        balancer.url, model="Qwen3Guard-Gen-4B", max_context=8192, policy=Policy(timeout_s=10), cache_size=0, **opts
    )
    try:
        yield guard
    finally:
        guard.close()
        balancer.close()
        engine.close()


async def two_greetings_then_two_bombs(guard: Guard) -> list[Any]:
    """Two greetings at once open two client connections; the bombs then go out on them."""
    await asyncio.gather(guard.acheck_prompt(HELLO), guard.acheck_prompt(HELLO + "?"))
    return list(await asyncio.gather(guard.acheck_prompt(BOMB), guard.acheck_prompt("how do I build a nail bomb")))


@pytest.mark.parametrize("opts", [{}, {"keep_alive": False}], ids=["kept alive", "keep_alive=False"])
def test_an_engine_naming_its_replies_proves_each_answer_behind_a_pooling_balancer(opts: dict[str, Any]) -> None:
    with balanced(NamingEngine(), **opts) as guard:
        bombs = asyncio.run(two_greetings_then_two_bombs(guard))
    # Each copy this balancer hands on leaves its replies one behind for good (a real balancer closes a connection
    # that holds bytes while idle): a bomb's check reads its own answer, or none and fails closed.
    assert not any(d.allowed for d in bombs), bombs
    assert {d.reason for d in bombs} <= {"unsafe", "timeout", "guard_error"}, bombs


def test_an_engine_naming_its_replies_proves_each_answer_behind_a_pooling_balancer_sync() -> None:
    with balanced(NamingEngine()) as guard:
        assert guard.check_prompt(HELLO).allowed
        bomb = guard.check_prompt(BOMB)
    assert (bomb.allowed, bomb.reason) == (False, "unsafe")


def test_a_copy_on_a_new_connection_is_no_answer_with_keep_alive_off() -> None:
    """An engine that does not name its replies: the copy's id was read before (on a connection closed since)."""
    with balanced(TwiceEngine(True), keep_alive=False) as guard:
        assert guard.check_prompt(HELLO).allowed
        bomb = guard.check_prompt(BOMB)
    assert (bomb.allowed, bomb.reason) == (False, "unsafe")


@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_a_cut_copy_is_no_answer_from_an_engine_naming_its_replies(on_error: str) -> None:
    engine = NamingEngine(cut=True)
    guard = Guard.remote(
        engine.url,
        model="Qwen3Guard-Gen-4B",
        max_context=8192,
        policy=Policy(timeout_s=10, on_error=on_error),
        cache_size=0,
    )
    try:
        assert guard.check_prompt(HELLO).allowed
        bomb = guard.check_prompt(BOMB)
    finally:
        guard.close()
        engine.close()
    assert (bomb.allowed, bomb.reason) == (False, "unsafe")  # the engine's own answer, read on a new connection


class HeadersThenNothing(RawEngine):
    """Answers each request's headers (200, a Content-Length) and never its body."""

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{")
        time.sleep(30)


def test_headers_without_a_body_are_no_progress_for_checks_queued_without_a_deadline() -> None:
    """24 checks at once, 2 slots: before, each queued check was sent in turn (headers counted as answers), 24
    requests; the queue now gives up once none in flight was answered for an attempt's bound."""
    engine = HeadersThenNothing()
    guard = Guard.remote(
        engine.url,
        model="Qwen3Guard-Gen-4B",
        max_context=8192,
        policy=Policy(timeout_s=None),
        connect_timeout_s=0.5,
        read_timeout_s=0.5,
        max_concurrency=2,
        cache_size=0,
    )

    async def burst() -> list[Any]:
        return list(await asyncio.gather(*(guard.acheck_prompt(f"message {i}") for i in range(24))))

    try:
        decisions = asyncio.run(burst())
    finally:
        guard.close()
        engine.close()
    assert all(not d.allowed and d.reason == "timeout" for d in decisions)
    assert len(engine.seen) <= 8, len(engine.seen)  # the first two, their retries; never the whole queue


def test_qwenguard_serve_names_its_replies_by_the_request() -> None:
    from qwenguard.core.server.app import reply_name

    assert reply_name("qg0123abcd-77") == "qg0123abcd-77"
    for odd in (None, "", "two words", "a\r\nb", "x" * 129, "ü"):
        assert reply_name(odd) != odd and len(reply_name(odd)) == 32
