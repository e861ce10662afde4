"""A call without a deadline against an engine that takes requests and answers none (red team rt64e F2), on
127.0.0.1.

At most ``max_concurrency`` requests are in flight; a check's wait for one of those slots was outside the attempt's
bound (``connect_timeout_s + read_timeout_s``), so with ``Policy(timeout_s=None)`` the n-th check waited about
n / max_concurrency times that bound (160 checks at once with the defaults: ~5 min each). The wait now counts
against the attempt's bound: however many checks queue, each ends (blocked, ``reason="timeout"``) within about one
bound. Sync and async; times are compared as ratios of the bound, never in seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qwenguard.core import Guard, Policy

CONNECT_S, READ_S = 0.5, 0.5
BOUND = CONNECT_S + READ_S  # what one attempt may take
SLOTS = 2
#: How many attempt bounds the slowest check may take, at most: one attempt, and what threads and planning add on a
#: loaded machine (2.9 seen under load); the fault it catches took 10 with 40 checks.
MOST_BOUNDS = 5.0


class SilentEngine:
    """Accepts every connection, reads nothing, answers nothing (a hung engine, a proxy holding requests)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.held: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@contextmanager
def silent_guard() -> Iterator[Guard]:
    engine = SilentEngine()
    guard = Guard.remote(
        engine.url,
        model="Qwen3Guard-Gen-4B",
        max_context=8192,
        policy=Policy(timeout_s=None),  # no deadline: blocked on errors, waiting as long as the client lets it
        connect_timeout_s=CONNECT_S,
        read_timeout_s=READ_S,
        max_concurrency=SLOTS,
        cache_size=0,
    )
    try:
        yield guard
    finally:
        guard.close()
        engine.close()


def slowest_in_bounds(n: int) -> float:
    """``n`` checks at once from threads: the slowest one's time, in attempt bounds; each must be blocked."""
    with silent_guard() as guard:

        def one(i: int) -> tuple[float, Any]:
            start = time.monotonic()
            decision = guard.check_prompt(f"message {i}")
            return time.monotonic() - start, decision

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            results = list(pool.map(one, range(n)))
    for _, decision in results:
        assert not decision.allowed and decision.reason == "timeout", decision
    return max(t for t, _ in results) / BOUND


def test_a_check_without_a_deadline_waits_for_a_slot_within_the_attempts_bound() -> None:
    fewer, more = slowest_in_bounds(20), slowest_in_bounds(40)
    # Before: ~n / SLOTS read timeouts, 5 and 10 bounds; the wait grew with the queue.
    assert more < MOST_BOUNDS, (fewer, more)
    assert more < fewer * 1.75, (fewer, more)  # the fault: twice (the wait grew with the queue)


async def aslowest_in_bounds(n: int) -> float:
    with silent_guard() as guard:

        async def one(i: int) -> tuple[float, Any]:
            start = time.monotonic()
            decision = await guard.acheck_prompt(f"message {i}")
            return time.monotonic() - start, decision

        results = await asyncio.gather(*(one(i) for i in range(n)))
    for _, decision in results:
        assert not decision.allowed and decision.reason == "timeout", decision
    return max(t for t, _ in results) / BOUND


def test_a_check_without_a_deadline_waits_for_a_slot_within_the_attempts_bound_async() -> None:
    fewer, more = asyncio.run(aslowest_in_bounds(20)), asyncio.run(aslowest_in_bounds(40))
    assert more < MOST_BOUNDS, (fewer, more)
    assert more < fewer * 1.75, (fewer, more)  # the fault: twice (the wait grew with the queue)


def test_checks_queued_behind_a_busy_healthy_engine_are_all_judged() -> None:
    """rt64l F2, a regression of the first fix: bounding a queued call's wait itself timed out checks waiting behind
    an engine that answered every request, and ``on_error="allow"`` let them through unjudged (35% of a burst of
    harmful checks). A queued call now gives up only when no request in flight was answered for a whole bound."""
    from test_rt64e_late_reply import UNSAFE, RawEngine, reply

    class Busy(RawEngine):
        """Answers every request, one after another on each connection, in SERVICE_S."""

        def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
            time.sleep(SERVICE_S)
            conn.sendall(reply(UNSAFE, True))

    SERVICE_S, checks = 0.05, 60  # 60 x 0.05 s / 2 slots = 1.5 s of engine work: three attempt bounds of queue
    engine = Busy(True)
    guard = Guard.remote(
        engine.url,
        model="Qwen3Guard-Gen-4B",
        max_context=8192,
        policy=Policy(timeout_s=None, on_error="allow"),
        connect_timeout_s=CONNECT_S,
        read_timeout_s=READ_S,
        max_concurrency=SLOTS,
        cache_size=0,
    )

    async def burst() -> list[Any]:
        return await asyncio.gather(*(guard.acheck_prompt(f"request {i}: a pipe bomb") for i in range(checks)))

    try:
        decisions = asyncio.run(burst())
    finally:
        guard.close()
        engine.close()
    assert [(d.allowed, d.reason) for d in decisions] == [(False, "unsafe")] * checks


def test_a_reply_too_large_to_read_counts_as_the_engine_answering() -> None:
    """rt64q F1: only replies read whole counted as progress, so an answer over ``max_reply_bytes`` left a gap in
    which a call queued with no deadline gave up behind a healthy engine (``on_error="allow"``: let through
    unjudged). Every answer counts, read whole or not."""
    from test_rt64e_late_reply import RawEngine, http_200, reply, text_of

    connect_s, read_s, answer_s = 0.5, 2.0, 1.4  # an attempt's bound 2.5 s: two answers in a row outlast it

    class SlowWithOneHugeReply(RawEngine):
        def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
            time.sleep(answer_s)
            if "huge" in text_of(request):
                conn.sendall(http_200(b'{"id": "chatcmpl-huge", "choices": [], "pad": "' + b"x" * 300_000 + b'"}'))
            else:
                conn.sendall(reply("Safety: Unsafe\nCategories: Violent", True))

    engine = SlowWithOneHugeReply(True)
    guard = Guard.remote(
        engine.url,
        model="Qwen3Guard-Gen-4B",
        max_context=8192,
        policy=Policy(timeout_s=None, on_error="allow"),
        connect_timeout_s=connect_s,
        read_timeout_s=read_s,
        max_concurrency=1,
        max_retries=0,
        cache_size=0,
    )

    async def run() -> Any:
        # In line for the one slot: a check, then three whose answers are too large to read, then the last, which
        # waits through a whole bound of answers that were not counted before.
        ahead = []
        for text in ("a pipe bomb, first", "a huge reply", "huge reply 2", "huge reply 3"):
            ahead.append(asyncio.ensure_future(guard.acheck_prompt(text)))
            await asyncio.sleep(0.02)
        last = await guard.acheck_prompt("a pipe bomb, last in line")
        await asyncio.gather(*ahead)
        return last

    try:
        last = asyncio.run(run())
    finally:
        guard.close()
        engine.close()
    assert (last.allowed, last.reason) == (False, "unsafe"), last
