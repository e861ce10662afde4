"""Planning (tokenizing, cutting windows) serves short checks first and keeps a thread for them.

The attack (a red-team finding): clients sending near-``max_chars`` documents to one guard kept every
planning thread busy (asyncio's shared default pool, first come first served); a victim's short check queued
behind them missed its deadline and, under ``Policy(on_error="allow")``, its unsafe text passed flagged
``timeout`` (3 of 4 stream sessions through ``qwenguard serve`` with 16 such requests in flight). Here the slow
tokenizer is injected (long texts block until released), so the test does not depend on the machine's speed."""

from __future__ import annotations

import asyncio
import threading

import pytest
from qwenguard.core import Guard, Policy
from qwenguard.core.backends.plan_pool import SHORT_CHARS, ShortFirstPool

CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
LONG_DOC = "The harbour has fishing boats and a market. " * (SHORT_CHARS // 40)


def test_a_short_job_runs_while_long_ones_hold_all_other_threads():
    pool = ShortFirstPool(workers=2)
    release, running = threading.Event(), threading.Event()
    started: list[str] = []

    def job(name: str) -> str:
        started.append(name)
        if name.startswith("long"):
            running.set()
            assert release.wait(10)
        return name

    first = pool.submit(SHORT_CHARS + 1, job, "long-1")
    assert running.wait(5)
    waiting = pool.submit(SHORT_CHARS + 1, job, "long-2")  # waits: one thread is kept for short work
    short = pool.submit(10, job, "short")
    assert short.result(5) == "short"
    assert started == ["long-1", "short"] and not first.done() and not waiting.done()
    release.set()
    assert waiting.result(5) == "long-2" and first.result(5) == "long-1"


def test_waiting_jobs_run_shortest_first_and_cancelled_ones_never():
    pool = ShortFirstPool(workers=2)
    gate = threading.Event()
    order: list[int] = []
    blockers = [pool.submit(0, gate.wait, 10) for _ in range(2)]  # both threads busy
    jobs = {size: pool.submit(size, order.append, size) for size in (300, 100, 200)}
    jobs[200].cancel()
    gate.set()
    for size in (300, 100):
        jobs[size].result(5)
    assert all(b.result(5) for b in blockers)
    assert order == [100, 300]  # 200 was cancelled before it started: never run


@pytest.fixture
def slow_tokenizer_guard():
    """The demo guard whose planning of long texts blocks until released (a slow tokenizer)."""
    guard = Guard.from_pretrained("demo", device="cpu", policy=Policy(on_error="allow", timeout_s=1.5), cache_size=0)
    backend = guard.backend
    real_plan = backend._plan
    release = threading.Event()

    def plan(conversations, check=None, budget=None):
        if sum(len(m["content"]) for c in conversations for m in c) > SHORT_CHARS:
            release.wait(20)
        return real_plan(conversations, check, budget)

    backend._plan = plan
    yield guard, release
    release.set()
    guard.close()


def test_async_short_check_is_judged_while_long_documents_hold_the_planners(slow_tokenizer_guard):
    guard, release = slow_tokenizer_guard
    assert not guard.check_prompt(CLAUSE).allowed  # what the demo says of it alone

    async def attack():
        attackers = [asyncio.create_task(guard.acheck_prompt(LONG_DOC)) for _ in range(12)]
        await asyncio.sleep(0.3)  # every planning thread the attackers can get is busy
        try:
            return await guard.acheck_prompt(CLAUSE)
        finally:
            release.set()
            await asyncio.gather(*attackers)

    victim = asyncio.run(attack())
    assert not victim.allowed and victim.reason == "unsafe", victim  # before: allowed, reason "timeout"


def test_sync_short_check_is_judged_while_long_documents_hold_the_planners(slow_tokenizer_guard):
    guard, release = slow_tokenizer_guard
    attackers = [threading.Thread(target=guard.check_prompt, args=(LONG_DOC,)) for _ in range(12)]
    for t in attackers:
        t.start()
    try:
        victim = guard.check_prompt(CLAUSE)
    finally:
        release.set()
        for t in attackers:
            t.join(30)
    assert not victim.allowed and victim.reason == "unsafe", victim


def test_a_forked_child_plans_with_threads_of_its_own():
    """A server forking workers after a check (a preloaded app) gave each child a pool whose threads did not
    exist there: every check would wait for its deadline."""
    import multiprocessing
    import os
    import time

    from qwenguard.core.backends.plan_pool import planning_pool

    pool = planning_pool()
    busy = [pool.submit(1, time.sleep, 0.2) for _ in range(pool.workers)]
    for job in busy:
        job.result(5)  # all the parent's threads are up

    def child(results) -> None:
        results.put(planning_pool().submit(1, os.getpid).result(5))

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=child, args=(results,))
    proc.start()
    proc.join(20)
    assert proc.exitcode == 0 and results.get(timeout=5) == proc.pid
