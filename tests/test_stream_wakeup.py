"""Release as soon as a verdict is back, and the prompt check beside the model (core monitors).

- ``StreamMonitor.wrap`` and ``AsyncStreamMonitor.awrap`` race the next upstream delta against the check
  in flight: a judged sentence goes out while the model is still producing its next token, and a
  violation stops a stream whose model is stalled. `UpstreamRace` and `UpstreamReader` (the sync twin:
  a thread per stream reads the upstream) never lose or reorder an upstream item.
- ``parallel_input=True``: ``guard.stream(prompt)`` returns before the prompt's verdict; the answer is
  judged meanwhile and released only once the prompt is allowed; a blocked prompt releases nothing and
  closes the upstream.

Scripted judges (tests/stream_judges.py), counted; no clocks (a deadline only breaks a deadlock)."""

import asyncio
import contextvars
import threading
from concurrent.futures import Future, wait

import pytest
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.core.streaming.wakeup import UpstreamRace, UpstreamReader
from stream_judges import TRIGGER, CountingJudge

SAFE_Q = "What is the capital of France?"
BOMB_Q = "How do I build a bomb?"
FIRST = "The capital of France is Paris."
STALL_S = 3.0  # how long a stalled upstream waits before giving up (only reached when a wake-up is missing)


def _guard(judge):
    return Guard(judge, Policy.strict())


class VerdictInTheStall(CountingJudge):
    """Holds the verdict on the clause until the model is inside its stall (``stalling`` set), so that the
    violation surely comes while the model's read is in flight: without it a fast verdict could beat the
    reader to its next read and the stream would stop between reads, a case these tests do not mean."""

    def __init__(self) -> None:
        super().__init__()
        self.stalling = threading.Event()

    def _holds_clause(self, conversations) -> bool:
        return any(c[-1]["role"] == "assistant" and TRIGGER in c[-1]["content"] for c in conversations)

    def classify(self, conversations, *, timeout=None):
        if self._holds_clause(conversations):
            self.stalling.wait(STALL_S)
        return super().classify(conversations, timeout=timeout)

    async def aclassify(self, conversations, *, timeout=None):
        if self._holds_clause(conversations):
            for _ in range(int(STALL_S * 1000)):
                if self.stalling.is_set():
                    break
                await asyncio.sleep(0.001)
        return await super().aclassify(conversations, timeout=timeout)


# -- awrap wakes on the verdict ----------------------------------------------------------------
@pytest.mark.parametrize("unit", ["sentence", "word"])
async def test_awrap_releases_a_judged_sentence_while_the_model_is_still_producing(unit):
    judge = CountingJudge()
    received: list[str] = []
    got_first = asyncio.Event()
    stalled = []

    async def model():
        yield FIRST
        try:  # the next token takes "long": it comes only after the consumer has the first sentence
            await asyncio.wait_for(got_first.wait(), STALL_S)
        except asyncio.TimeoutError:
            stalled.append(True)
        yield " It is big."

    async with _guard(judge).astream(SAFE_Q, release_unit=unit) as monitor:
        async for out in monitor.awrap(model()):
            received.append(out)
            if FIRST in "".join(received):
                got_first.set()
    assert received[0] == FIRST and not stalled  # out on its verdict, not behind the next delta
    assert "".join(received) == FIRST + " It is big."


async def test_awrap_stops_a_stalled_stream_when_the_verdict_comes_back():
    judge = VerdictInTheStall()
    received: list[str] = []
    state = {"cancelled": False, "stalled": False}

    async def model():
        try:
            for piece in (FIRST, " Mix", " ammonium"):
                await judge.await_idle()  # a slow model: each token after the judge caught up
                yield piece
            judge.stalling.set()
            await asyncio.sleep(STALL_S)  # the model stalls after the clause's second word
            state["stalled"] = True
            yield " nitrate"
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    with pytest.raises(GuardViolation):
        async with _guard(judge).astream(SAFE_Q, release_unit="word") as monitor:
            async for out in monitor.awrap(model()):
                received.append(out)
    assert "".join(received) == FIRST  # no character of the clause
    assert state == {"cancelled": True, "stalled": False}  # stopped on the verdict, the model's read cancelled


async def test_upstream_race_never_loses_or_reorders_an_item():
    step = asyncio.Event()

    async def upstream():
        for i in range(3):
            await step.wait()
            step.clear()
            yield i

    race = UpstreamRace(upstream())
    verdict = asyncio.get_running_loop().create_future()
    verdict.set_result(None)
    assert await race.next([verdict]) == (False, None)  # a verdict that is back wins over a read in flight
    caller = asyncio.ensure_future(race.next())
    await asyncio.sleep(0)
    caller.cancel()  # the caller gives up: the read stays in flight
    with pytest.raises(asyncio.CancelledError):
        await caller
    got = []
    for _ in range(3):
        step.set()
        got.append(await race.next())
    assert got == [(True, 0), (True, 1), (True, 2)]
    with pytest.raises(StopAsyncIteration):
        await race.next()
    await race.aclose()


# -- wrap (sync) wakes on the verdict -----------------------------------------------------------
@pytest.mark.parametrize("unit", ["sentence", "word"])
def test_wrap_releases_a_judged_sentence_while_the_model_is_still_producing(unit):
    judge = CountingJudge()
    received: list[str] = []
    got_first = threading.Event()
    stalled = []

    def model():
        yield FIRST
        if not got_first.wait(STALL_S):  # the next token comes only after the consumer has the sentence
            stalled.append(True)
        yield " It is big."

    with _guard(judge).stream(SAFE_Q, release_unit=unit) as monitor:
        for out in monitor.wrap(model()):
            received.append(out)
            if FIRST in "".join(received):
                got_first.set()
    assert received[0] == FIRST and not stalled  # out on its verdict, not behind the next delta
    assert "".join(received) == FIRST + " It is big."


def test_wrap_stops_a_stalled_stream_when_the_verdict_comes_back():
    judge = VerdictInTheStall()
    received: list[str] = []
    resume = threading.Event()
    state = {"closed": threading.Event(), "stalled": False, "after_stop": []}

    def model():
        try:
            for piece in (FIRST, " Mix", " ammonium"):
                judge.wait_idle()  # a slow model: each token after the judge caught up
                yield piece
            judge.stalling.set()
            state["stalled"] = not resume.wait(STALL_S)  # the model stalls after the clause's second word
            state["after_stop"].append(" nitrate")
            yield " nitrate"
        except GeneratorExit:
            state["closed"].set()
            raise

    with pytest.raises(GuardViolation):
        with _guard(judge).stream(SAFE_Q, release_unit="word") as monitor:
            for out in monitor.wrap(model()):
                received.append(out)
    assert "".join(received) == FIRST  # no character of the clause
    # The violation came while the model was stalled (after the reader's grace for closing, not the stall).
    assert not resume.is_set() and not state["closed"].is_set()
    resume.set()  # the model comes back: its read in flight returns, and the reader closes it
    assert state["closed"].wait(STALL_S)
    assert state["stalled"] is False and state["after_stop"] == [" nitrate"]


def test_upstream_reader_never_loses_or_reorders_an_item():
    steps = [threading.Event() for _ in range(3)]
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    marker.set("the caller's")
    seen = []

    def upstream():
        for i, step in enumerate(steps):
            assert step.wait(STALL_S)
            seen.append(marker.get())  # the upstream runs in the caller's context
            yield i

    reader = UpstreamReader(upstream())
    verdict: Future[None] = Future()
    verdict.set_result(None)
    assert reader.next([verdict]) == (False, None)  # a verdict that is back wins over the read in flight
    got = []
    for step in steps:
        step.set()
        got.append(reader.next())
    assert got == [(True, 0), (True, 1), (True, 2)]
    assert seen == ["the caller's"] * 3
    with pytest.raises(StopIteration):
        reader.next()
    reader.close()


def test_upstream_reader_passes_errors_and_closes_the_upstream():
    closed = threading.Event()

    def failing():
        yield "a"
        raise ValueError("upstream broke")

    reader = UpstreamReader(failing())
    assert reader.next() == (True, "a")
    with pytest.raises(ValueError, match="upstream broke"):
        reader.next()
    reader.close()

    def endless():
        try:
            while True:
                yield "x"
        finally:
            closed.set()

    reader = UpstreamReader(endless())
    assert reader.next() == (True, "x")
    reader.close()  # no read in flight: closed here, at once
    assert closed.is_set()


# -- the prompt check beside the model ---------------------------------------------------------
class PromptGate(CountingJudge):
    """Prompt checks wait for ``gate`` (the prompt verdict is slow); answer checks do not."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.answers_judged_before_prompt_verdict = 0

    def _prompt(self, conversations):
        return any(c[-1]["role"] == "user" for c in conversations)

    def classify(self, conversations, *, timeout=None):
        if self._prompt(conversations):
            assert self.gate.wait(30)
        elif not self.gate.is_set():
            self.answers_judged_before_prompt_verdict += 1
        return super().classify(conversations, timeout=timeout)

    async def aclassify(self, conversations, *, timeout=None):
        if self._prompt(conversations):
            while not self.gate.is_set():
                await asyncio.sleep(0.002)
        elif not self.gate.is_set():
            self.answers_judged_before_prompt_verdict += 1
        return await super().aclassify(conversations, timeout=timeout)


def _settled(monitor):
    wait([future for _, _, future in monitor._pending])


def test_parallel_input_judges_the_answer_beside_the_prompt_check_and_holds_it():
    judge = PromptGate()
    with _guard(judge).stream(SAFE_Q, parallel_input=True) as monitor:  # returns before the prompt verdict
        assert monitor.prompt_decision is None
        assert monitor.feed(FIRST) == ""
        _settled(monitor)
        assert judge.answers_judged_before_prompt_verdict == 1  # the answer was judged beside the prompt
        assert monitor.feed(" It") == ""  # judged safe, yet held: the prompt's verdict is not in
        judge.gate.set()
        out = monitor.finish()
    assert out == FIRST + " It" and monitor.prompt_decision.allowed


def test_parallel_input_blocked_prompt_releases_nothing_and_closes_the_upstream():
    judge = PromptGate()
    closed = threading.Event()

    def model():
        try:
            yield FIRST
            judge.gate.set()  # the prompt verdict arrives while the model streams
            judge.wait_idle()
            yield " It is big."
            yield " More."
        finally:
            closed.set()

    received = []
    with pytest.raises(GuardViolation) as info:
        with _guard(judge).stream(BOMB_Q, parallel_input=True) as monitor:
            for out in monitor.wrap(model()):
                received.append(out)
    assert received == [] and monitor.released == "" and closed.is_set()
    assert info.value.decision.stage.value == "prompt"


async def test_async_parallel_input_blocked_prompt_stops_the_stream_on_its_verdict():
    judge = PromptGate()
    state = {"cancelled": False, "stalled": False}

    async def model():
        try:
            yield FIRST
            judge.gate.set()  # the prompt verdict comes back while the model is producing its next token
            await asyncio.sleep(STALL_S)
            state["stalled"] = True
            yield " It is big."
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    received = []
    with pytest.raises(GuardViolation) as info:
        async with _guard(judge).astream(BOMB_Q, parallel_input=True) as monitor:
            async for out in monitor.awrap(model()):
                received.append(out)
    assert received == [] and monitor.released == ""
    assert info.value.decision.stage.value == "prompt"
    assert state == {"cancelled": True, "stalled": False}


async def test_async_parallel_input_safe_prompt_releases_once_both_verdicts_are_in():
    judge = PromptGate()
    async with _guard(judge).astream(SAFE_Q, parallel_input=True) as monitor:
        assert await monitor.afeed(FIRST) == ""
        tasks = {task for _, _, task in monitor._pending}
        await asyncio.wait(tasks)
        assert judge.answers_judged_before_prompt_verdict == 1
        assert await monitor.arelease_judged() == ""  # judged, held behind the prompt check
        judge.gate.set()
        await asyncio.wait({monitor.verdict_waiter()})
        assert await monitor.arelease_judged() == FIRST
        assert await monitor.afinish() == ""


def test_parallel_input_follows_the_guard_and_not_a_stream_model():
    judge = PromptGate()
    judge.gate.set()
    guard = Guard(judge, Policy.strict(), parallel_input=True)
    with guard.stream(SAFE_Q) as monitor:
        assert monitor.parallel_input
    with guard.stream(SAFE_Q, parallel_input=False) as monitor:
        assert not monitor.parallel_input and monitor.prompt_decision.allowed


# -- remote sessions: a documented refusal ----------------------------------------------------
@pytest.mark.parametrize("option", [{"release_unit": "word"}, {"parallel_input": True}])
def test_remote_stream_sessions_refuse_local_only_options_by_name(option):
    """Decision (docs/streaming.md): how much a window may release is the server operator's choice, so a
    remote session refuses ``release_unit`` (and ``parallel_input``) with a TypeError naming it, before
    any connection, rather than streaming with a silently different release."""
    guard = Guard.remote("http://127.0.0.1:9/v1", model="scripted", stream=True, max_context=4096)
    try:
        with pytest.raises(TypeError, match=next(iter(option))):
            guard.stream(SAFE_Q, **option)
    finally:
        guard.close()
