"""The threads that plan Gen checks (tokenize and cut windows), shortest first, one always kept for short work.

Planning a check is CPU work that grows with its text: about a second per few hundred thousand characters
on a small CPU. It ran on the caller's thread (sync) or in asyncio's shared default pool (async), first come
first served: a few clients sending near-``max_chars`` documents kept every planning thread busy, and a short
check queued behind them missed its deadline before the engine's "short work first" could see it (under
``on_error="allow"``: its text passed unjudged, a red-team finding). Here a waiting check is taken smallest
first, long checks (costing more than `SHORT_CHARS` characters of prose to plan: `planning_size`) never hold more
than ``workers - 1`` threads, and a check whose caller stopped waiting before it started is never planned at all.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

#: Size (`planning_size`: characters of prose) above which a check counts as long: a few windows' worth, planned in
#: milliseconds below it.
SHORT_CHARS = 16_000
#: What a character outside ASCII costs to plan, in characters of English prose. Measured on the demo guard's
#: tokenizer (15,900 characters, new text each time; prose 0.65 us a character): Cyrillic or Arabic words
#: 3.3-3.7 us (5-6x), Chinese or Japanese 3.4-4.4 us (6-7x), Devanagari 4.7 us, emoji 5.6 us (9x), random accented
#: Latin 7.5 us (11x); the first such text a process plans pays more (Chinese 277-553 ms against prose's 20 ms).
NON_ASCII_WEIGHT = 8
#: Planning threads: one per core, 2 to 8 (tokenizing releases the GIL; more would only share the cores).
DEFAULT_WORKERS = max(2, min(8, os.cpu_count() or 2))


class ShortFirstPool:
    """Worker threads taking the smallest waiting job first; long jobs leave one thread free for short ones."""

    def __init__(self, workers: int = DEFAULT_WORKERS, name: str = "qwenguard-plan") -> None:
        if workers < 2:
            raise ValueError("a short-first pool needs at least 2 workers (one is kept for short work)")
        self.workers = workers
        self.name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, Future[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._long_running = 0

    def submit(self, size: int, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on a worker; ``size`` (what it costs to plan, in characters of prose: `planning_size`)
        orders the waiting jobs. Cancelling the future before a worker took it drops the job."""
        future: Future[Any] = Future()
        with self._cond:
            heapq.heappush(self._heap, (size, next(self._seq), future, fn, args))
            if len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
        return future

    def _take(self) -> tuple[bool, Future[Any], Callable[..., Any], tuple[Any, ...]] | None:
        """The next job a free worker may run (under the lock), or None: nothing waits, or only long jobs
        while the long ones already hold all threads but one."""
        while self._heap:
            size, _, future, fn, args = self._heap[0]
            long = size > SHORT_CHARS
            if long and self._long_running >= self.workers - 1:
                return None  # everything waiting is long (the heap's smallest is): keep this thread for short work
            heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue  # its caller stopped waiting: never started
            self._long_running += long
            return long, future, fn, args
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                while (job := self._take()) is None:
                    self._cond.wait()
            self._run(*job)
            del job  # a finished job's function (a bound method) must not keep its backend and model alive

    def _run(self, long: bool, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through its future
            future.set_exception(exc)
        finally:
            if long:
                with self._cond:
                    self._long_running -= 1
                    self._cond.notify_all()


_POOL: ShortFirstPool | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """A forked child has none of the parent's threads (and maybe a lock held by one): it starts a pool anew."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_forget_pool)


def planning_pool() -> ShortFirstPool:
    """The process's planning pool (shared by every local Gen backend: they share the same cores)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ShortFirstPool()
        return _POOL


def planning_size(conversations: Any) -> int:
    """A planning job's size: the characters of content in ``conversations``, each outside ASCII counted
    `NON_ASCII_WEIGHT` times, so that a check costing what a long one costs to plan counts as long.

    Counted by characters alone, 15,900 Chinese characters were a short check, planned 6 to 27 times as long as
    prose of that length: a few such checks took every planning thread, the one kept for short checks too, and a
    short check waited 1,215 ms for its planning instead of 3 (red team rt64h F2). Linear and without a tokenizer:
    it runs on the caller's thread, before the job is queued."""
    size = 0
    for conv in conversations:
        for message in conv:
            content = message.get("content")
            if isinstance(content, str):
                non_ascii = 0 if content.isascii() else len(content) - len(content.encode("ascii", "ignore"))
                size += len(content) + (NON_ASCII_WEIGHT - 1) * non_ascii
    return size
