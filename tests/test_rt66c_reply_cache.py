"""Replies after an error status, and replies a response-caching gateway stores (red team rt66c), against raw socket
engines on 127.0.0.1.

F1: after a non-200 reply the connection was kept alive: the client said so only after reading the error's body, but
httpx closes a response as its last chunk is read, so the connection was back in the pool by then. A proxy that
answered 503 and then forwarded the engine's late 200 on that connection gave the next check (a bomb) its "Safe".
An error status now never keeps its connection. F2: a caching gateway (LiteLLM's cache, nginx ``proxy_cache``)
answers a repeated request body with its stored reply, whose id names the first request: with an engine naming its
replies every repeat was 72 requests and a guard error (let through by a fail-open policy); with other engines each
cost 3-4 requests, and three repeated prompts turned copy detection off for good. One body has one verdict: the
reply to an earlier request of the same body is this one's answer. Sync and async.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from typing import Any

import pytest
from qwenguard.core import Guard, Policy
from test_rt64e_late_reply import BOMB, HELLO, SAFE, UNSAFE, RawEngine, http_200, text_of, wire
from test_rt65i_reply_rules import PoolingBalancer

#: When the engine answers the bomb truthfully, and when the answer a proxy gave up on (503) comes (seconds).
HONEST_AFTER, LATE_AFTER = 1.0, 0.3
UNAVAILABLE = b'{"error":{"message":"upstream timed out","type":"overloaded"}}'
HTTP_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    % len(UNAVAILABLE)
    + UNAVAILABLE
)


def guard_at(url: str, **opts: Any) -> Guard:
    policy = opts.pop("policy", Policy(timeout_s=10))
    return Guard.remote(url, model="Qwen3Guard-Gen-4B", max_context=8192, policy=policy, cache_size=0, **opts)


def unique_id() -> str:
    return uuid.uuid4().hex  # SGLang's way: an id of its own per reply, naming no request


# -- F1: an error status keeps no connection --------------------------------------------------------------------------


class LateAfter503(RawEngine):
    """A proxy in front of an engine with unique ids: the first ask of a greeting is answered 503 (its upstream timed
    out), and the engine's own 200 for it is forwarded ``LATE_AFTER`` later on the same connection (``late``); a bomb
    is answered truthfully after ``HONEST_AFTER``."""

    def __init__(self, *, late: bool = True) -> None:
        super().__init__(True)
        self.late = late
        self.failed: set[str] = set()

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        text = text_of(request)
        if "bomb" in text:
            time.sleep(HONEST_AFTER)
            conn.sendall(wire(UNSAFE, unique_id()))
            return
        if text.startswith("hello") and text not in self.failed:
            self.failed.add(text)
            conn.sendall(HTTP_503)
            if self.late:
                threading.Timer(LATE_AFTER, self._write, (conn, wire(SAFE, unique_id()))).start()
            return
        conn.sendall(wire(SAFE, unique_id()))

    @staticmethod
    def _write(conn: socket.socket, data: bytes) -> None:
        try:
            conn.sendall(data)
        except OSError:  # the client closed that connection
            pass


#: With ids seen before the error (a warm-up check), and with the error as the engine's first reply.
WARM_UP = pytest.mark.parametrize("warm_up", [True, False], ids=["ids seen first", "error first"])


@WARM_UP
def test_a_late_answer_behind_an_error_status_is_not_the_next_checks_verdict(warm_up: bool) -> None:
    engine = LateAfter503()
    guard = guard_at(engine.url, backoff_s=0.01)
    try:
        if warm_up:
            assert guard.check_prompt(HELLO).reason == "safe"
        greeting = guard.check_prompt("hello, what is the capital of Spain")  # 503, then asked again
        harmful = guard.check_prompt(BOMB)  # sent before the 503's late 200 lands
        connections = engine.connections
    finally:
        guard.close()
        engine.close()
    assert greeting.allowed and greeting.reason == "safe"
    # Judged by the engine's own answer to it, never by the late "Safe" written behind the 503.
    assert not harmful.allowed and harmful.reason == "unsafe", harmful  # before: allowed "safe"
    assert harmful.verdict is not None and "Violent" in harmful.verdict.categories
    assert connections == 2  # the 503's connection closed; before: one, kept alive


@WARM_UP
def test_a_late_answer_behind_an_error_status_is_not_the_next_checks_verdict_async(warm_up: bool) -> None:
    async def main(guard: Guard) -> tuple[Any, Any]:
        if warm_up:
            assert (await guard.acheck_prompt(HELLO)).reason == "safe"
        greeting = await guard.acheck_prompt("hello, what is the capital of Spain")
        return greeting, await guard.acheck_prompt(BOMB)

    engine = LateAfter503()
    guard = guard_at(engine.url, backoff_s=0.01)
    try:
        greeting, harmful = asyncio.run(main(guard))
        connections = engine.connections
    finally:
        guard.close()
        engine.close()
    assert greeting.allowed and greeting.reason == "safe"
    assert not harmful.allowed and harmful.reason == "unsafe", harmful
    assert harmful.verdict is not None and "Violent" in harmful.verdict.categories
    assert connections == 2


def test_each_error_status_closes_its_connection() -> None:
    # docs/remote.md: after an error status the next request opens a new connection.
    engine = LateAfter503(late=False)
    guard = guard_at(engine.url, backoff_s=0.01)
    try:
        reasons = [guard.check_prompt(f"hello {n}").reason for n in ("one", "two", "three")]
        connections = engine.connections
    finally:
        guard.close()
        engine.close()
    assert reasons == ["safe"] * 3
    assert len(engine.seen) == 6  # each text: a 503, then its answer
    assert connections == 4  # each 503's connection closed; before: one for all six replies


# -- F2: a response-caching gateway ---------------------------------------------------------------------------------


class CachingGateway(RawEngine):
    """A gateway caching replies by request body in front of an engine that names its replies by X-Request-Id (vLLM,
    ``naming``) or gives each an id of its own: a repeated body is answered with the stored reply, byte for byte, its
    id as first written. A greeting's reply (``copies``) is written again ``LATE_AFTER`` later on its connection (a
    proxy's retry); a bomb is answered truthfully after ``HONEST_AFTER``."""

    def __init__(self, *, naming: bool, copies: bool = False) -> None:
        super().__init__(True)
        self.naming = naming
        self.copies = copies
        self.cache: dict[str, bytes] = {}
        self.hits = 0

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        key = json.dumps(request, sort_keys=True)
        if key in self.cache:
            self.hits += 1
            conn.sendall(self.cache[key])
            return
        text = text_of(request)
        ident = f"chatcmpl-{here['asked']}" if self.naming else f"chatcmpl-{unique_id()}"
        body = {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": "Qwen3Guard-Gen-4B"}
        content = UNSAFE if "bomb" in text else SAFE
        body["choices"] = [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
        data = http_200(json.dumps(body).encode())
        if "bomb" in text and self.copies:
            time.sleep(HONEST_AFTER)
        self.cache[key] = data
        conn.sendall(data)
        if self.copies and text.startswith("hello"):
            time.sleep(LATE_AFTER)
            conn.sendall(data)


#: The texts a user sends, each twice (a guard with no verdict cache of its own, or two processes).
ASKED_TWICE = [BOMB, BOMB, HELLO, HELLO]
NAMING = pytest.mark.parametrize("naming", [True, False], ids=["engine names replies", "ids of its own"])
ON_ERROR = pytest.mark.parametrize("on_error", ["block", "allow"])


@NAMING
@ON_ERROR
def test_a_caching_gateways_stored_reply_is_the_repeated_checks_answer(naming: bool, on_error: str) -> None:
    gateway = CachingGateway(naming=naming)
    guard = guard_at(gateway.url, backoff_s=0.01, policy=Policy(timeout_s=10, on_error=on_error))
    decisions, requests = [], []
    try:
        for text in ASKED_TWICE:
            before = len(gateway.seen)
            decisions.append(guard.check_prompt(text))
            requests.append(len(gateway.seen) - before)
    finally:
        guard.close()
        gateway.close()
    # Before, naming: the repeats were guard errors after 72 requests each (the bomb allowed under on_error="allow");
    # ids of their own: 3-4 requests a repeat.
    assert [(d.allowed, d.reason) for d in decisions] == [(False, "unsafe")] * 2 + [(True, "safe")] * 2
    assert requests == [1, 1, 1, 1]
    assert gateway.hits == 2


@NAMING
def test_a_caching_gateways_stored_reply_is_the_repeated_checks_answer_async(naming: bool) -> None:
    async def main(guard: Guard) -> list[tuple[Any, int]]:
        out = []
        for text in ASKED_TWICE:
            before = len(gateway.seen)
            out.append((await guard.acheck_prompt(text), len(gateway.seen) - before))
        return out

    gateway = CachingGateway(naming=naming)
    guard = guard_at(gateway.url, backoff_s=0.01, policy=Policy(timeout_s=10, on_error="allow"))
    try:
        results = asyncio.run(main(guard))
    finally:
        guard.close()
        gateway.close()
    assert [(d.allowed, d.reason) for d, _ in results] == [(False, "unsafe")] * 2 + [(True, "safe")] * 2
    assert [n for _, n in results] == [1, 1, 1, 1]


def test_repeated_prompts_behind_a_caching_gateway_leave_copy_detection_on() -> None:
    """A user repeating three prompts behind the cache made the client take ids to repeat, and from then on a late
    copy handed on by a pooling balancer was an answer: the greeting's "Safe" for the bomb."""
    gateway = CachingGateway(naming=False, copies=True)
    balancer = PoolingBalancer(gateway)
    guard = guard_at(balancer.url, keep_alive=False, backoff_s=0.01)
    requests = []
    try:
        for n in range(3):
            for _ in range(2):
                before = len(balancer.seen)
                assert guard.check_prompt(f"what is the capital of country {n}").reason == "safe"
                requests.append(len(balancer.seen) - before)
        assert guard.check_prompt("hello, " + HELLO).reason == "safe"  # its copy lands on the balancer's connection
        harmful = guard.check_prompt(BOMB)  # forwarded there before the copy lands
    finally:
        guard.close()
        balancer.close()
        gateway.close()
    assert not harmful.allowed and harmful.reason == "unsafe", harmful  # before: allowed "safe"
    assert harmful.verdict is not None and "Violent" in harmful.verdict.categories
    assert requests == [1] * 6  # before: 3 for each repeat


# -- rt66m F1: a stored reply naming a request whose answer was never read, or asked thousands of requests ago -------


class SlowFirstGateway(CachingGateway):
    """`CachingGateway` (naming) whose engine answers the first ask of a "slow" text after the client gave up on it
    (``SLOW_FOR``): the gateway still stores that answer (``stored`` is set), naming the request that timed out."""

    def __init__(self) -> None:
        super().__init__(naming=True)
        self.stored = threading.Event()
        self.slow = True

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        if self.slow and "slow" in text_of(request):
            self.slow = False
            time.sleep(SLOW_FOR)
            try:
                super().answer(conn, request, here)  # stored first, then written to a connection the client closed
            finally:
                self.stored.set()
            return
        super().answer(conn, request, here)


#: The client's deadline for a check, and how long the engine takes over a slow text's first ask (seconds).
DEADLINE, SLOW_FOR = 1, 1.5
SLOW_BOMB = "slow: " + BOMB


def test_a_stored_reply_to_an_ask_that_timed_out_is_the_repeats_answer() -> None:
    """rt66m F1: a request's body was noted only once its 200 was read; the gateway's stored reply to a first ask the
    client gave up on named a request it did not know: every repeat was 72 requests and a guard error (allowed)."""
    gateway = SlowFirstGateway()
    guard = guard_at(gateway.url, backoff_s=0.0, policy=Policy(timeout_s=DEADLINE, on_error="allow"))
    try:
        first = guard.check_prompt(SLOW_BOMB)
        assert gateway.stored.wait(10)
        before = len(gateway.seen)
        repeat = guard.check_prompt(SLOW_BOMB)
        requests = len(gateway.seen) - before
    finally:
        guard.close()
        gateway.close()
    assert first.reason == "timeout"
    assert (repeat.allowed, repeat.reason) == (False, "unsafe"), repeat  # before: allowed "guard_error"
    assert repeat.verdict is not None and "Violent" in repeat.verdict.categories
    assert requests == 1 and gateway.hits == 1  # before: 72


def test_a_stored_reply_to_an_ask_that_timed_out_is_the_repeats_answer_async() -> None:
    async def main(guard: Guard) -> tuple[Any, Any, int]:
        first = await guard.acheck_prompt(SLOW_BOMB)
        assert await asyncio.to_thread(gateway.stored.wait, 10)
        before = len(gateway.seen)
        repeat = await guard.acheck_prompt(SLOW_BOMB)
        return first, repeat, len(gateway.seen) - before

    gateway = SlowFirstGateway()
    guard = guard_at(gateway.url, backoff_s=0.0, policy=Policy(timeout_s=DEADLINE, on_error="allow"))
    try:
        first, repeat, requests = asyncio.run(main(guard))
    finally:
        guard.close()
        gateway.close()
    assert first.reason == "timeout"
    assert (repeat.allowed, repeat.reason) == (False, "unsafe"), repeat
    assert repeat.verdict is not None and "Violent" in repeat.verdict.categories
    assert requests == 1 and gateway.hits == 1


#: The client's verdict cache and its memory of reply ids, driven down from 4,096 each (4,100 checks take ~10 s);
#: the bodies it remembers kept at 8x, as they are (`transport._BODIES_KEPT`).
KEPT = 64
OTHERS = KEPT + 16


@pytest.fixture
def small_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwenguard.core.backends import transport

    monkeypatch.setattr(transport, "_IDS_KEPT", KEPT)
    monkeypatch.setattr(transport, "_BODIES_KEPT", 8 * KEPT, raising=False)


@pytest.mark.usefixtures("small_memory")
def test_a_stored_reply_is_the_answer_after_more_other_checks_than_ids_kept() -> None:
    """rt66m F1: bodies were remembered by request, the last 4,096; a text the client's verdict cache forgot (4,096
    other texts) was forgotten there too, and the gateway's stored reply was refused: 72 requests and a guard error
    on every repeat (the bomb allowed under on_error="allow")."""
    gateway = CachingGateway(naming=True)
    guard = Guard.remote(
        gateway.url,
        model="Qwen3Guard-Gen-4B",
        max_context=8192,
        backoff_s=0.0,
        cache_size=KEPT,
        policy=Policy(timeout_s=10, on_error="allow"),
    )
    try:
        assert guard.check_prompt(BOMB).reason == "unsafe"
        assert [guard.check_prompt(f"question number {n}").reason for n in range(OTHERS)] == ["safe"] * OTHERS
        before = len(gateway.seen)
        repeat = guard.check_prompt(BOMB)
        requests = len(gateway.seen) - before
    finally:
        guard.close()
        gateway.close()
    assert (repeat.allowed, repeat.reason) == (False, "unsafe"), repeat  # before: allowed "guard_error"
    assert repeat.verdict is not None and "Violent" in repeat.verdict.categories
    assert requests == 1 and gateway.hits == 1  # before: 72 and 144


@pytest.mark.usefixtures("small_memory")
def test_a_stored_reply_is_the_answer_after_more_other_checks_than_ids_kept_async() -> None:
    async def main(guard: Guard) -> tuple[Any, int]:
        assert (await guard.acheck_prompt(BOMB)).reason == "unsafe"
        at_once = asyncio.Semaphore(8)

        async def other(n: int) -> str:
            async with at_once:
                return (await guard.acheck_prompt(f"question number {n}")).reason

        assert await asyncio.gather(*(other(n) for n in range(OTHERS))) == ["safe"] * OTHERS
        before = len(gateway.seen)
        repeat = await guard.acheck_prompt(BOMB)
        return repeat, len(gateway.seen) - before

    gateway = CachingGateway(naming=True)
    guard = Guard.remote(
        gateway.url,
        model="Qwen3Guard-Gen-4B",
        max_context=8192,
        backoff_s=0.0,
        cache_size=KEPT,
        policy=Policy(timeout_s=10, on_error="allow"),
    )
    try:
        repeat, requests = asyncio.run(main(guard))
    finally:
        guard.close()
        gateway.close()
    assert (repeat.allowed, repeat.reason) == (False, "unsafe"), repeat
    assert repeat.verdict is not None and "Violent" in repeat.verdict.categories
    assert requests == 1 and gateway.hits == 1


def test_a_text_repeated_often_keeps_the_name_its_stored_reply_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each repeat is a request of its own, and its name is noted too: the name the stored reply shows (the first
    request's) is moved to the newest as it is read, never pushed out by the repeats' own names."""
    from qwenguard.core.backends import transport

    monkeypatch.setattr(transport, "_NAMES_KEPT", 2, raising=False)
    gateway = CachingGateway(naming=True)
    guard = guard_at(gateway.url, backoff_s=0.0, policy=Policy(timeout_s=10, on_error="allow"))
    try:
        decisions = [guard.check_prompt(BOMB) for _ in range(6)]
        requests = len(gateway.seen)
    finally:
        guard.close()
        gateway.close()
    assert [(d.allowed, d.reason) for d in decisions] == [(False, "unsafe")] * 6
    assert requests == 6 and gateway.hits == 5
