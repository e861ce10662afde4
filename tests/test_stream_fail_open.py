"""Failing open is per check, not for the rest of the stream: the attack is a payload that makes one check
fail (a burst that pushes the guard past its deadline, a verdict it cannot parse) just before the harmful
part, under an operator's ``Policy(on_error="allow")``.

Before, the first failed check switched the stream's guard off: the Gen-window engine, the Stream-model
engine and a failed prompt check all released the rest of the answer unchecked, the unsafe clause with it.
Now the failed check's text passes flagged (``guard_error`` / ``timeout`` in ``monitor.flags``) and every
later text is judged as before; a Stream-model session that failed hands the stream to the Gen windows.
The judge is a keyword judge, so a character of the clause out is unambiguous.
"""

from __future__ import annotations

import threading
import time

import pytest
from faults import FailingStream, ScriptedBackend
from qwenguard.core import Guard, GuardUnavailable, GuardViolation, Policy, Stage
from qwenguard.core.errors import GuardTimeout
from stream_checkpoints import safe_tokens_stream, tiny_tokenizer_dir  # noqa: F401

PROMPT = "Tell me about France."
SAFE = "The capital of France is Paris. It has many museums and old bridges. "
CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
ANSWER = SAFE + CLAUSE + " Then wait for it to cool down before you go."
FAIL_OPEN = Policy(on_error="allow")
UNSAFE = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
OK = "Safety: Safe\nCategories: None\nRefusal: No"


class FlakyKeywordJudge(ScriptedBackend):
    """Unsafe when the text shown names "ammonium"; its first ``fail_first`` calls fail (or, with
    ``slow_first``, outlast the deadline) instead of answering."""

    def __init__(self, fail_first: int = 1, *, slow_first: float = 0.0) -> None:
        super().__init__(lambda conv: UNSAFE if "ammonium" in conv[-1]["content"] else OK)
        self.fail_first, self.slow_first = fail_first, slow_first
        self.lock = threading.Lock()
        self.failed = 0

    def _failing(self) -> bool:
        with self.lock:
            if self.failed < self.fail_first:
                self.failed += 1
                return True
            return False

    def classify(self, conversations, *, timeout=None):
        if self._failing():
            if self.slow_first:
                time.sleep(self.slow_first)
                raise GuardTimeout(f"no answer within {timeout} s")
            raise RuntimeError("verdict could not be parsed")
        return super().classify(conversations, timeout=timeout)

    async def aclassify(self, conversations, *, timeout=None):
        if self._failing():
            if self.slow_first:
                import asyncio

                await asyncio.sleep(self.slow_first)
                raise GuardTimeout(f"no answer within {timeout} s")
            raise RuntimeError("verdict could not be parsed")
        return await super().aclassify(conversations, timeout=timeout)


def _tokens(text: str) -> list[str]:
    """Word-sized deltas, as a model streams them."""
    out, word = [], ""
    for ch in text:
        if ch == " " and word:
            out.append(word)
            word = ""
        word += ch
    return [*out, word] if word else out


def _clause_chars_out(released: str) -> int:
    """Characters of the unsafe clause the consumer got."""
    start = ANSWER.index(CLAUSE)
    return max(0, min(len(released), start + len(CLAUSE)) - start)


def _run(guard, **options) -> tuple[str, object, BaseException | None]:
    monitor = guard.stream(PROMPT, **options)
    released, stop = "", None
    try:
        for delta in _tokens(ANSWER):
            released += monitor.feed(delta)
            time.sleep(0.002)
        released += monitor.finish()
    except (GuardViolation, GuardUnavailable) as exc:
        stop = exc
    finally:
        monitor.close()
    return released, monitor, stop


async def _arun(guard, **options) -> tuple[str, object, BaseException | None]:
    import asyncio

    released, stop = "", None
    monitor = guard.astream(PROMPT, **options)
    try:
        async with monitor:
            for delta in _tokens(ANSWER):
                released += await monitor.afeed(delta)
                await asyncio.sleep(0.002)
            released += await monitor.afinish()
    except (GuardViolation, GuardUnavailable) as exc:
        stop = exc
    return released, monitor, stop


def _assert_stopped_after_failing_open(released, monitor, stop) -> None:
    assert isinstance(stop, GuardViolation), f"not stopped; released {released!r}"
    assert _clause_chars_out(released) == 0, released
    assert ANSWER.startswith(released)
    errors = [d for d in monitor.flags if d.reason in ("guard_error", "timeout")]
    assert errors and all(d.allowed for d in errors), monitor.flags  # the failed check is on record
    assert monitor.decision.stage == Stage.STREAM and not monitor.decision.allowed


# -- the Gen-window engine ----------------------------------------------------------------------------
@pytest.mark.parametrize("slow", [0.0, 0.3], ids=["error", "timeout"])
def test_one_failed_window_check_does_not_release_the_rest_unchecked(slow):
    guard = Guard(FlakyKeywordJudge(slow_first=slow), FAIL_OPEN.with_stage(Stage.STREAM, timeout_s=0.1))
    _assert_stopped_after_failing_open(*_run(guard, screen_prompt=False))


@pytest.mark.parametrize("slow", [0.0, 0.3], ids=["error", "timeout"])
async def test_async_one_failed_window_check_does_not_release_the_rest_unchecked(slow):
    guard = Guard(FlakyKeywordJudge(slow_first=slow), FAIL_OPEN.with_stage(Stage.STREAM, timeout_s=0.1))
    _assert_stopped_after_failing_open(*await _arun(guard, screen_prompt=False))


def test_the_failed_windows_text_goes_out_flagged_and_later_safe_text_follows():
    guard = Guard(FlakyKeywordJudge(), FAIL_OPEN)
    monitor = guard.stream(PROMPT, screen_prompt=False)
    out = "".join(monitor.feed(d) for d in _tokens(SAFE * 3)) + monitor.finish()
    assert out == SAFE * 3
    [failed] = [d for d in monitor.flags if d.reason == "guard_error"]
    assert failed.allowed and failed.offset == 0 and "verdict could not be parsed" in failed.error
    assert monitor.decision is failed


def test_every_check_failing_still_fails_closed_by_default():
    guard = Guard(FlakyKeywordJudge(fail_first=10**6), Policy())
    released, monitor, stop = _run(guard, screen_prompt=False)
    assert isinstance(stop, GuardUnavailable) and released == ""


# -- a prompt check failed open -------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel_input"])
def test_a_failed_prompt_check_does_not_switch_the_answers_guard_off(parallel):
    guard = Guard(FlakyKeywordJudge(), FAIL_OPEN)
    released, monitor, stop = _run(guard, parallel_input=parallel)
    assert monitor.prompt_decision.reason == "guard_error" and monitor.prompt_decision.allowed
    assert isinstance(stop, GuardViolation) and _clause_chars_out(released) == 0, released


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel_input"])
async def test_async_a_failed_prompt_check_does_not_switch_the_answers_guard_off(parallel):
    guard = Guard(FlakyKeywordJudge(), FAIL_OPEN)
    released, monitor, stop = await _arun(guard, parallel_input=parallel)
    assert monitor.prompt_decision.reason == "guard_error" and monitor.prompt_decision.allowed
    assert isinstance(stop, GuardViolation) and _clause_chars_out(released) == 0, released


# -- the Stream-model engine: a failed session hands the stream to the Gen windows ---------------------
# ``holdback=0`` with a Stream model releases each delta once scored; the Gen windows that take over keep
# that contract ("released once judged"): with their own ``holdback=0`` meaning (release at once, look for a
# late violation) the whole clause went out before any verdict (a red-team finding, as were the callbacks).
HOLDBACKS = pytest.mark.parametrize("holdback", [None, 0], ids=["holdback-default", "holdback-0"])


@HOLDBACKS
@pytest.mark.parametrize("where", ["open", "feed"])
def test_a_failed_stream_model_session_hands_the_rest_to_gen_windows(safe_tokens_stream, where, holdback):  # noqa: F811
    guard = Guard(FlakyKeywordJudge(fail_first=0), FAIL_OPEN, stream_backend=FailingStream(safe_tokens_stream, where))
    released, monitor, stop = _run(guard, screen_prompt=False, holdback=holdback)
    assert isinstance(stop, GuardViolation) and _clause_chars_out(released) == 0, released
    failed = [d for d in [monitor.prompt_decision, *monitor.flags] if d is not None and d.reason == "guard_error"]
    assert failed and all(d.allowed for d in failed)


@HOLDBACKS
@pytest.mark.parametrize("where", ["open", "feed"])
async def test_async_a_failed_stream_model_session_hands_the_rest_to_gen_windows(
    safe_tokens_stream,  # noqa: F811
    where,
    holdback,
):
    guard = Guard(FlakyKeywordJudge(fail_first=0), FAIL_OPEN, stream_backend=FailingStream(safe_tokens_stream, where))
    released, monitor, stop = await _arun(guard, screen_prompt=False, holdback=holdback)
    assert isinstance(stop, GuardViolation) and _clause_chars_out(released) == 0, released


def test_gen_windows_chosen_with_holdback_0_still_release_at_once():
    """Without a Stream model, ``holdback=0`` keeps its documented meaning for Gen windows."""
    guard = Guard(FlakyKeywordJudge(fail_first=0), FAIL_OPEN)
    monitor = guard.stream(PROMPT, screen_prompt=False, holdback=0)
    assert monitor.feed("The capital of France ") == "The capital of France "
    monitor.close()


def test_a_stream_model_session_failing_at_finish_does_not_release_its_held_text(safe_tokens_stream):  # noqa: F811
    guard = Guard(
        FlakyKeywordJudge(fail_first=0), FAIL_OPEN, stream_backend=FailingStream(safe_tokens_stream, "finish")
    )
    monitor = guard.stream(PROMPT, holdback=10_000, screen_prompt=False)  # everything is still held at the end
    held = "".join(monitor.feed(d) for d in _tokens(ANSWER))
    assert held == ""
    with pytest.raises(GuardViolation):
        monitor.finish()
    assert _clause_chars_out(monitor.released) == 0, monitor.released


class _CancelledIntoTimeout(ScriptedBackend):
    """A backend whose check, cancelled at the deadline, ends with its own GuardTimeout (as a backend with its
    own deadline does when both fire together)."""

    async def aclassify(self, conversations, *, timeout=None):
        import asyncio

        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise GuardTimeout(f"no answer within {timeout} s") from None
        return []


async def test_window_checks_abandoned_in_flight_do_not_flood_the_log():
    """A stream closed while its window checks were in flight (a client gone) left each check's error
    unretrieved, and asyncio logged "Task exception was never retrieved" with a traceback for every one
    (421 in two minutes through `qwenguard serve` under load)."""
    import asyncio

    from unread_errors import unread_errors

    guard = Guard(_CancelledIntoTimeout(lambda conv: OK), FAIL_OPEN.with_stage(Stage.STREAM, timeout_s=5))
    async with unread_errors() as unread:
        for _ in range(3):
            monitor = guard.astream(PROMPT, screen_prompt=False)
            await monitor.afeed("The capital of France is Paris. It has many museums. ")
            await asyncio.sleep(0.05)  # the window check is in flight
            await monitor.aclose()
        await asyncio.sleep(0.1)
    assert unread == []
