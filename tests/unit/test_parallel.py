"""`PendingCheck` / `run_guarded`: the verdict gates the call; a blocked verdict cancels it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from qwenguard.core import Action, Decision, GuardUnavailable, GuardViolation, Risk, Stage, Verdict
from qwenguard.core.streaming.parallel import PendingCheck, run_guarded

ALLOW = Decision(True, Action.ALLOW, Stage.PROMPT, "safe", Verdict(Risk.SAFE))
BLOCK = Decision(False, Action.BLOCK, Stage.PROMPT, "unsafe", Verdict(Risk.UNSAFE, ("Violent",)))
ERROR = Decision(False, Action.BLOCK, Stage.PROMPT, "guard_error", None, error="down")


def _later(value, delay_s: float):
    def check():
        time.sleep(delay_s)
        return value

    return check


async def _alater(value, delay_s: float):
    await asyncio.sleep(delay_s)
    return value


def test_wait_returns_allowed_decisions_and_marks_passed():
    pending = PendingCheck.start(_later([ALLOW, ALLOW], 0.01))
    assert pending.wait() == [ALLOW, ALLOW] and pending.passed and pending.done()


def test_wait_raises_the_first_blocking_decision_in_order():
    pending = PendingCheck.start(_later([ALLOW, BLOCK, ERROR], 0.01))
    with pytest.raises(GuardViolation) as info:
        pending.wait()
    assert info.value.decision is BLOCK and not pending.passed
    with pytest.raises(GuardUnavailable):  # guard errors fail closed too
        PendingCheck.start(_later(ERROR, 0)).wait()


def test_check_runs_with_the_callers_context_variables():
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")
    seen = []
    PendingCheck.start(lambda: seen.append(var.get()) or ALLOW).wait()
    assert seen == ["caller"]


async def test_blocked_verdict_cancels_the_call_at_once():
    cancelled = asyncio.Event()

    async def slow_call():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "answer"

    started = time.perf_counter()
    with pytest.raises(GuardViolation):
        await run_guarded(_alater(BLOCK, 0.05), slow_call())
    assert cancelled.is_set() and time.perf_counter() - started < 5


async def test_allowed_call_result_is_returned_only_after_the_verdict():
    order = []

    async def check():
        await asyncio.sleep(0.05)
        order.append("verdict")
        return ALLOW

    async def call():
        order.append("call done")
        return "answer"

    assert await run_guarded(check(), call()) == "answer"
    assert order == ["call done", "verdict"]


async def test_call_error_is_raised_and_wait_false_does_not_wait():
    async def failing():
        raise ConnectionError("LLM down")

    pending = PendingCheck.start_async(_alater(ALLOW, 0.2))
    with pytest.raises(ConnectionError):
        await pending.guard(failing())
    assert not pending.done()  # the check keeps running for whoever needs it next
    assert await pending.guard(_alater("opened", 0), wait=False) == "opened" and not pending.done()
    assert await pending.wait_async() is ALLOW


async def test_task_based_check_can_be_waited_from_another_thread_but_not_the_loop():
    pending = PendingCheck.start_async(_alater(BLOCK, 0.05))
    with pytest.raises(RuntimeError):
        pending.wait()  # on the loop's own thread it would deadlock
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_raises(pending.wait)))
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.01)
    assert errors == [GuardViolation]


def _raises(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return type(exc)
    return None
