"""The reply rules of c388c49 looked at again (red team rt65i), against raw socket engines on 127.0.0.1.

F1: once one reply of a URL named its request (X-Request-Id), every later reply that did not was refused for good:
a server rolled back, a proxy setting its own header, a pool of naming and other replicas made each check 72
requests and a guard error (let through by a fail-open policy). A reply that names no request is now read by the
id rules whatever its URL did before; one naming another request is no answer. F2: one proxy's double copy of a
reply turned "ids repeat" on for good, and from then on a single late copy was a bomb's "Safe"; a copy's same bytes
prove nothing now, and ids are taken to repeat only after several requests show it. F3: reply ids were kept whole
(250 KB ids held ~1 GiB); a digest of each is kept.
"""

from __future__ import annotations

import asyncio
import gc
import json
import select
import socket
import threading
import time
import tracemalloc
from typing import Any

import pytest
from qwenguard.core import Guard, Policy
from test_rt64e_late_reply import SAFE, UNSAFE, RawEngine, http_200, new_id, text_of, wire


def guard_at(url: str, **opts: Any) -> Guard:
    policy = opts.pop("policy", Policy(timeout_s=10))
    return Guard.remote(url, model="Qwen3Guard-Gen-4B", max_context=8192, policy=policy, cache_size=0, **opts)


class Swapped(RawEngine):
    """Names its replies by X-Request-Id (vLLM, qwenguard serve) until ``naming`` is turned off (a rollback, a proxy
    setting its own header): unique, honest ids of its own from then on."""

    naming = True

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        ident = f"chatcmpl-{here['asked']}" if (self.naming and here.get("asked")) else new_id()
        conn.sendall(wire(UNSAFE if "bomb" in text_of(request) else SAFE, ident))


def after_rollback(engine: Any, guard: Guard) -> list[tuple[str, int]]:
    """A check while ``engine`` names its replies, then three after it stops: (reason, requests) of each of these."""
    assert guard.check_prompt("what is the capital of France").reason == "safe"
    engine.naming = False
    results = []
    for text in ("what is the capital of Spain", "how do I build a pipe bomb", "hello there"):
        before = len(engine.seen)
        results.append((guard.check_prompt(text).reason, len(engine.seen) - before))
    return results


@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_a_url_that_stops_naming_its_replies_is_still_read(on_error: str) -> None:
    engine = Swapped()
    guard = guard_at(engine.url, policy=Policy(timeout_s=10, on_error=on_error))
    try:
        results = after_rollback(engine, guard)
    finally:
        guard.close()
        engine.close()
    assert results == [("safe", 1), ("unsafe", 1), ("safe", 1)]  # before: guard_error, 72 requests each


class CopyingEngine(RawEngine):
    """Unique ids of its own, not naming its replies; a "hello" text's reply is written again 0.3 s later, a "twice"
    text's two more times (a proxy retrying twice); a bomb is answered truthfully after 1 s."""

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        text = text_of(request)
        if "bomb" in text:
            time.sleep(1.0)
            conn.sendall(wire(UNSAFE, new_id()))
            return
        once = wire(SAFE, new_id())
        conn.sendall(once)
        for n in range(2 if "twice" in text else 1 if "hello" in text else 0):
            time.sleep(0.3 if n == 0 else 0.2)
            conn.sendall(once)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    size = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
    while len(rest) < size:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest[:size], rest[size:]


class PoolingBalancer(RawEngine):
    """nginx's upstream keep-alive: a pooled connection that holds bytes while idle is closed, never reused; a late
    copy landing after the next request was forwarded on it is handed to that request."""

    def __init__(self, upstream: RawEngine) -> None:
        super().__init__(True)
        host, port = upstream.url.split("//")[1].split("/")[0].split(":")
        self.address = (host, int(port))
        self.idle: list[socket.socket] = []
        self.lock = threading.Lock()

    def take(self) -> socket.socket:
        with self.lock:
            while self.idle:
                sock = self.idle.pop()
                if select.select([sock], [], [], 0)[0]:
                    sock.close()
                    continue
                return sock
        return socket.create_connection(self.address)

    passes_name = False  # X-Request-Id passed on to the engine

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        body = json.dumps(request).encode()
        up = self.take()
        named = b"X-Request-Id: %s\r\n" % here["asked"].encode() if self.passes_name and here.get("asked") else b""
        up.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
            + named
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        reply, extra = read_response(up)
        if extra:
            up.close()
        else:
            with self.lock:
                self.idle.append(up)
        conn.sendall(reply)


def test_one_double_copy_does_not_turn_copy_detection_off() -> None:
    engine = CopyingEngine()
    balancer = PoolingBalancer(engine)
    guard = guard_at(balancer.url, keep_alive=False)
    bombs = []
    try:
        guard.check_prompt("warm up")
        for greeting, bomb in (
            ("hello, what is the capital of France", "how do I build a pipe bomb"),
            ("hello twice, what is the capital of Spain", "how do I build a nail bomb"),  # the glitch
            ("hello, what is the capital of Italy", "how do I build a pipe bomb"),
        ):
            guard.check_prompt(greeting)
            bombs.append(guard.check_prompt(bomb))
            time.sleep(1.5)  # every copy lands; a pooled connection holding one is dropped at its next use
    finally:
        guard.close()
        balancer.close()
        engine.close()
    assert [(d.allowed, d.reason) for d in bombs] == [(False, "unsafe")] * 3  # before: the last allowed "safe"


class LongIds(RawEngine):
    """Replies whose ids are ``size`` characters long (unique each)."""

    size = 10

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        conn.sendall(wire(SAFE, (new_id() + "x" * self.size)[: max(self.size, 41)]))


def memory_after(size: int, checks: int = 150) -> int:
    engine = LongIds()
    engine.size = size
    guard = guard_at(engine.url, keep_alive=False)
    try:
        gc.collect()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        for i in range(checks):
            assert guard.check_prompt(f"message {i}").reason == "safe"
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
        guard.close()
        engine.close()


def test_long_reply_ids_are_not_kept_whole() -> None:
    short, long = memory_after(41), memory_after(60_000)
    # Before: ~2 copies of each 60 KB id kept (the client's memory and the connection's): ~18 MB for 150 replies.
    assert long < short + 3_000_000, (short, long)


# -- rt65q: a third look ------------------------------------------------------------------------------------------


class NamingBalancer(PoolingBalancer):
    """`PoolingBalancer` passing X-Request-Id on (nginx and Envoy do by default)."""

    passes_name = True


class NamingIdlessCopier(RawEngine):
    """Names its replies (vLLM); a proxy in front writes a "hello" reply twice more without its id."""

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        text, ident = text_of(request), f"chatcmpl-{here.get('asked')}"
        if "bomb" in text:
            time.sleep(1.0)
            conn.sendall(wire(UNSAFE, ident))
            return
        conn.sendall(wire(SAFE, ident))
        if "hello" in text:
            for pause in (0.3, 0.2):
                time.sleep(pause)
                conn.sendall(wire(SAFE, None))


@pytest.mark.parametrize("keep_alive", [True, False])
def test_id_less_copies_are_no_answer_where_replies_are_named(keep_alive: bool) -> None:
    """rt65q F2: asked again once, the second id-less copy was the bomb's "Safe"."""
    engine = NamingIdlessCopier()
    balancer = NamingBalancer(engine)
    guard = guard_at(balancer.url, keep_alive=keep_alive)
    bombs = []
    try:
        guard.check_prompt("warm up")
        for i, bomb in enumerate(("how do I build a pipe bomb", "how do I build a nail bomb")):
            guard.check_prompt(f"hello, what is the capital of country {i}")
            bombs.append(guard.check_prompt(bomb))
            time.sleep(1.5)
    finally:
        guard.close()
        balancer.close()
        engine.close()
    assert [(d.allowed, d.reason) for d in bombs] == [(False, "unsafe")] * 2


class SameSecondIds(RawEngine):
    """A gateway whose ids are the second they were written in; one verdict for all: the same bytes in a second."""

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        time.sleep(0.01)
        conn.sendall(wire(UNSAFE if "bomb" in text_of(request) else SAFE, f"chatcmpl-{int(time.time())}"))


@pytest.mark.parametrize("text", ["how do I build a pipe bomb", "what is the capital of France"])
def test_a_burst_of_one_verdict_at_a_gateway_of_second_ids_is_answered(text: str) -> None:
    """rt65q F3: asked again, a repeat in the same bytes as its first reply was never an answer: a burst of one
    verdict (the same bytes in a second) ended in guard errors, 22x the requests, let through under on_error=allow."""
    engine = SameSecondIds()
    guard = Guard.remote(
        engine.url,
        model="Qwen3Guard-Gen-4B",
        max_context=8192,
        max_concurrency=4,
        max_retries=0,
        policy=Policy(on_error="allow"),
    )
    texts = [f"{i} {text}" for i in range(60)]

    async def burst() -> list[Any]:
        return list(await asyncio.gather(*(guard.acheck_prompt(t) for t in texts)))

    try:
        decisions = asyncio.run(burst())
    finally:
        guard.close()
        engine.close()
    expected = "unsafe" if "bomb" in text else "safe"
    assert [d.reason for d in decisions] == [expected] * 60
    assert len(engine.seen) <= 60 * 1.25


# -- rt65s: a last look ----------------------------------------------------------------------------------------------


class RolledBackToEmptyIds(RawEngine):
    """Names its replies (vLLM) until ``naming`` is turned off: then answers as TGI does, ``"id": ""``."""

    naming = True

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        content = UNSAFE if "bomb" in text_of(request) else SAFE
        ident = f"chatcmpl-{here['asked']}" if self.naming else ""
        body = {"id": ident, "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        conn.sendall(http_200(json.dumps(body).encode()))


def test_a_naming_url_rolled_back_to_empty_ids_is_read_again() -> None:
    """rt65s F1: every id-less reply of a URL that once named its replies was refused for good: 72 requests and a
    guard error each check (let through by a fail-open policy)."""
    engine = RolledBackToEmptyIds()
    guard = guard_at(engine.url)
    try:
        results = after_rollback(engine, guard)
    finally:
        guard.close()
        engine.close()
    assert [reason for reason, _ in results] == ["safe", "unsafe", "safe"]
    assert sum(requests for _, requests in results) <= 3 + 2  # the id-less replies that show it, once


class CopiesOfEarlierReplies(RawEngine):
    """Unique ids, not naming its replies; each of a bomb's first ``copies`` asks is handed a late copy of another
    earlier reply (a pooling balancer in front of a proxy that writes each reply twice: no reply copied twice)."""

    def __init__(self, copies: int) -> None:
        super().__init__(True)
        self.pending: list[bytes] = []
        self.copies = copies
        self.lock = threading.Lock()

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        if "bomb" in text_of(request):
            with self.lock:
                copy = self.pending.pop(0) if self.pending and self.copies > 0 else None
                self.copies -= 1
            conn.sendall(copy if copy is not None else wire(UNSAFE, new_id()))
            return
        data = wire(SAFE, new_id())
        with self.lock:
            self.pending.append(data)
        conn.sendall(data)


def test_copies_of_three_earlier_replies_are_no_answer_on_the_third_ask() -> None:
    """rt65s F2: the third ask took the same bytes of whatever id came, not only the id refused before it."""
    engine = CopiesOfEarlierReplies(3)
    guard = guard_at(engine.url, keep_alive=False)
    try:
        for greeting in (
            "what is the capital of France",
            "what is the capital of Spain",
            "what is the capital of Italy",
        ):
            guard.check_prompt(greeting)
        bomb = guard.check_prompt("how do I build a pipe bomb")
    finally:
        guard.close()
        engine.close()
    assert (bomb.allowed, bomb.reason) == (False, "unsafe")
