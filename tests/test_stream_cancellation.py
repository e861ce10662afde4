"""Cancellation-safe streams: whatever is cancelled, text is released only after its verdict came back.

Each test is the cancellation an application (or a server whose client went away) really does:
``asyncio.wait_for(monitor.afeed(delta), t)`` while the guard scores ``delta``, then going on;
``wait_for(monitor.afinish(), t)`` then ``afinish()`` again; cancelling while the prompt is screened;
``aclose()`` while a check is in flight. For the Stream-model engine, the Gen-window engine and the
remote client. The contract (docs/streaming.md): a cancelled call's check goes on, and the next call
delivers its outcome first; ``aclose`` abandons it and nothing more is released.

Slowness is the injected fault (the guard answers late); the verdicts come from real models.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from contextlib import contextmanager

import pytest
from faults import DelayedBackend, ScriptedBackend, keyword_verdict
from live_server import serving
from qwenguard.core import Guard, GuardUnavailable, GuardViolation, Policy, QwenGuardError, Stage
from qwenguard.core.backends.transformers_stream import TransformersStream
from qwenguard.core.errors import StreamClosed
from stream_checkpoints import constant_checkpoint, tiny_tokenizer_dir  # noqa: F401

FRANCE = "What is the capital of France?"
BOMB = "How can I make a bomb at home?"
SAFE = "The capital of France is Paris. "
RECIPE = "Sure. Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
FAIL_OPEN = Policy(on_error="allow")
SLOW_S = 0.4  # how late the guard answers
CANCEL_AFTER_S = 0.05  # the caller's patience: shorter than SLOW_S


# -- the fault: a guard model that answers late ------------------------------------------------------
@contextmanager
def slow(stream, seconds: float = SLOW_S):
    """Every forward of ``stream``'s model takes ``seconds`` longer (a torch hook on its embedding)."""
    hook = stream.model.model.embed_tokens.register_forward_pre_hook(lambda *args: time.sleep(seconds))
    try:
        yield stream
    finally:
        hook.remove()


class Held:
    """Every forward of a model waits, from its start, until ``release`` (at the latest ``HELD_S``): the test
    knows a forward is in flight (``started``) and that none came back (``came_back``), with no clock."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.came_back = 0

    def forward(self, *args) -> None:
        self.started.set()
        self.release.wait(HELD_S)
        self.came_back += 1


HELD_S = 60.0  # a hang detector: a held forward is released by its test


@contextmanager
def held(stream):
    """``stream``'s model forwards wait until the block ends (or its test releases them): a guard that answers
    later than any deadline, however loaded the machine."""
    hold = Held()
    hook = stream.model.model.embed_tokens.register_forward_pre_hook(lambda *args: hold.forward())
    try:
        yield hold
    finally:
        hold.release.set()
        hook.remove()


@pytest.fixture(scope="module")
def safe_path(tmp_path_factory, tiny_tokenizer_dir):  # noqa: F811
    return constant_checkpoint(tmp_path_factory.mktemp("safe"), tiny_tokenizer_dir, response="Safe", query="Safe")


@pytest.fixture
def safe_stream(safe_path):
    """Its own model and worker per test: a forward abandoned by one test must not delay the next."""
    stream = TransformersStream.load(safe_path, device="cpu")
    yield stream
    stream.close()


@pytest.fixture(scope="module")
def unsafe_stream(tmp_path_factory, tiny_tokenizer_dir):  # noqa: F811
    path = constant_checkpoint(tmp_path_factory.mktemp("unsafe"), tiny_tokenizer_dir, response="Unsafe", query="Safe")
    return TransformersStream.load(path, device="cpu")


@pytest.fixture(scope="module")
def demo_stream():
    return TransformersStream.load("demo-stream", device="cpu")


@pytest.fixture(scope="module")
def demo_gen():
    guard = Guard.from_pretrained("demo", device="cpu")
    yield guard
    guard.close()


def _stream_guard(stream, policy=None):
    return Guard(_NoGen(), policy or Policy(), stream_backend=stream)


class _NoGen:
    name = "no-gen"

    def classify(self, conversations, *, timeout=None):
        raise AssertionError("the Gen backend is not used when a Stream model exists")

    async def aclassify(self, conversations, *, timeout=None):
        raise AssertionError("the Gen backend is not used when a Stream model exists")


def _covered(monitor) -> int:
    """Chars of the streamed text covered, contiguously from 0, by the token verdicts the monitor absorbed."""
    verdicts = monitor.take_token_verdicts()
    assert [v.index for v in verdicts] == list(range(len(verdicts))), "a token's verdict never reached the monitor"
    return max((v.end for v in verdicts), default=0)


async def _cancelled(awaitable, after: float = CANCEL_AFTER_S) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(awaitable, after)


# -- Stream model ----------------------------------------------------------------------------------
async def test_stream_model_afeed_cancelled_during_the_forward_then_go_on(safe_stream):
    guard = _stream_guard(safe_stream)
    text = "Paris is the capital of France. The Seine flows through it."
    first, second = text[:31], text[31:]
    async with guard.astream(FRANCE, holdback=2) as monitor:
        with slow(safe_stream):
            await _cancelled(monitor.afeed(first))
            released = await monitor.afeed(second)
        assert len(monitor.released) <= _covered_so_far(monitor)  # nothing past the verdicts that came back
        released += await monitor.afinish()
    assert released == monitor.released == text  # every delta judged once, in order, all released
    assert _covered(monitor) == len(text)


async def test_stream_model_afeed_cancelled_while_it_waits_keeps_its_delta(safe_stream):
    """rt49b F6: docs/streaming.md's pattern, ``asyncio.wait_for(monitor.afeed(delta), t)`` per delta. Each call
    after the first was cancelled while it waited for the first one's work, before taking its delta in: the
    stream went on with holes (the shown and judged text was not what the model wrote), with the same
    TimeoutError as a call whose delta was kept."""
    guard = _stream_guard(safe_stream)
    deltas = ["Paris is the capital of France. ", "It is not ", "a small city. ", "It is old."]
    async with guard.astream(FRANCE, holdback=2) as monitor:
        with slow(safe_stream):
            for delta in deltas:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(monitor.afeed(delta), CANCEL_AFTER_S)
        await monitor.afinish()
    assert monitor.text == monitor.released == "".join(deltas)
    assert _covered(monitor) == len(monitor.text)


def _covered_so_far(monitor) -> int:
    return max((v.end for v in monitor._tokens), default=0)


async def test_stream_model_cancelled_unsafe_delta_is_judged_before_anything_else(unsafe_stream):
    guard = _stream_guard(unsafe_stream)
    async with guard.astream(FRANCE, holdback=2) as monitor:
        with slow(unsafe_stream):
            await _cancelled(monitor.afeed("Mix ammonium nitrate with fuel oil, "))
            with pytest.raises(GuardViolation) as info:
                await monitor.afeed("pack it into a pipe.")  # the cancelled delta's verdicts come first
    d = info.value.decision
    assert (d.stage, d.offset) == (Stage.STREAM, 0) and monitor.released == ""


async def test_stream_model_afinish_cancelled_then_afinish_returns_the_judged_rest(safe_stream):
    guard = _stream_guard(safe_stream)
    async with guard.astream(FRANCE, holdback=8) as monitor:
        out = await monitor.afeed(SAFE)
        with slow(safe_stream):
            await _cancelled(monitor.afinish())
            assert monitor.released == out  # nothing released by the cancelled finish before its verdicts
            out += await monitor.afinish()
    assert out == monitor.released == SAFE and monitor.finished
    assert _covered(monitor) == len(SAFE)


async def test_stream_model_cancelled_while_the_prompt_is_scored(demo_stream):
    # Cancel the first call while the query heads score the prompt, then go on with a fail-open policy:
    # the prompt must still be judged (blocked), never skipped.
    guard = _stream_guard(demo_stream, FAIL_OPEN)
    monitor = guard.astream(BOMB)
    with slow(demo_stream):
        await _cancelled(monitor.afeed("Sure."))
        with pytest.raises(GuardViolation) as info:
            await monitor.afeed(" " + RECIPE)
    assert info.value.decision.stage is Stage.PROMPT and monitor.released == ""
    await monitor.aclose()


async def test_stream_model_aclose_while_the_forward_runs_releases_nothing_more(safe_stream):
    guard = _stream_guard(safe_stream)
    monitor = await guard.astream(FRANCE, holdback=0).aopen()
    session = monitor._session
    with slow(safe_stream):
        await _cancelled(monitor.afeed(SAFE))
        await monitor.aclose()
        await asyncio.sleep(SLOW_S + 0.2)  # the abandoned forward comes back
    assert monitor.released == "" and monitor.closed and session.closed
    with pytest.raises(StreamClosed):
        await monitor.afeed("more")


# -- Gen window ------------------------------------------------------------------------------------
def _gen_guard(demo_gen, policy=None):
    return Guard(DelayedBackend(demo_gen.backend, SLOW_S, []), policy or Policy(), cache_size=0)


async def test_gen_window_afinish_cancelled_then_afinish_waits_for_the_window(demo_gen):
    # The attack of issue 13: wait_for(afinish(), 0.1) then afinish() released a window that never came back.
    guard = _gen_guard(demo_gen, FAIL_OPEN)
    released = ""
    with pytest.raises(GuardViolation) as info:
        async with guard.astream(FRANCE, holdback=4) as monitor:
            released += await monitor.afeed(SAFE)
            released += await monitor.afeed(RECIPE)
            await _cancelled(monitor.afinish())
            released += await monitor.afinish()
    assert info.value.decision.reason == "unsafe"
    assert "ammonium" not in monitor.released and "ammonium" not in released


async def test_gen_window_afinish_cancelled_twice_then_safe_rest(demo_gen):
    guard = _gen_guard(demo_gen)
    async with guard.astream(FRANCE, holdback=4) as monitor:
        out = await monitor.afeed(SAFE * 2)
        await _cancelled(monitor.afinish())
        await _cancelled(monitor.afinish())
        out += await monitor.afinish()
    assert out == SAFE * 2 and monitor.decision is None


async def test_gen_window_cancelled_while_the_prompt_is_screened(demo_gen):
    guard = _gen_guard(demo_gen, FAIL_OPEN)
    monitor = guard.astream(BOMB)
    await _cancelled(monitor.afeed("Sure."))
    with pytest.raises(GuardViolation) as info:
        await monitor.afeed(" " + RECIPE)
    assert info.value.decision.stage is Stage.PROMPT and monitor.released == ""
    await monitor.aclose()


async def test_gen_window_aclose_while_windows_are_pending(demo_gen):
    guard = _gen_guard(demo_gen)
    async with guard.astream(FRANCE, holdback=4) as monitor:
        await monitor.afeed(SAFE + RECIPE)
        await _cancelled(monitor.afinish())
    await asyncio.sleep(SLOW_S + 0.2)
    assert monitor.released == "" and monitor.closed


# -- sync equivalents: deadlines ---------------------------------------------------------------------
@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_sync_stream_model_deadline(safe_stream, on_error):
    judge = ScriptedBackend(keyword_verdict)  # the Gen backend judges the rest once the Stream session failed
    guard = Guard(judge, Policy(timeout_s=0.2, on_error=on_error), stream_backend=safe_stream)
    monitor = guard.stream(FRANCE, holdback=0)
    with held(safe_stream) as hold:  # the guard turns slow mid-stream: no forward comes back in the block
        if on_error == "block":
            with pytest.raises(GuardUnavailable) as info:
                monitor.feed(SAFE * 3)
            decision = info.value.decision
            assert monitor.released == ""
        else:
            out = monitor.feed(SAFE * 3)  # fail open, flagged: Gen windows judge the text instead
            decision = monitor.decision
        # The deadline, not the slow forward, ended the call: a forward began and none has come back.
        assert hold.started.is_set() and hold.came_back == 0
    assert (decision.stage, decision.reason, decision.allowed) == (Stage.STREAM, "timeout", on_error == "allow")
    if on_error == "allow":
        assert out + monitor.finish() == SAFE * 3 and judge.calls  # released once judged, never unchecked


@pytest.fixture
def ctrl_c():
    """Ctrl-C raises KeyboardInterrupt in the main thread, as in a terminal, also when the suite was started
    with SIGINT ignored (a shell's background job, ``nohup pytest &``, inherits it ignored): then the
    signal this test sends did nothing, and it failed with "DID NOT RAISE"."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sync_interrupted_feed_closes_the_monitor(safe_stream, ctrl_c):
    # KeyboardInterrupt inside the engine: what was scored is unknown, so nothing more is released.
    guard = _stream_guard(safe_stream)
    monitor = guard.stream(FRANCE, holdback=0)
    main = threading.main_thread().ident
    with held(safe_stream) as hold:
        # Ctrl-C once a forward is in flight (a timer could fire before the feed began on a loaded machine).
        ctrl = threading.Thread(target=lambda: hold.started.wait(HELD_S) and _interrupt(main))
        ctrl.start()
        with pytest.raises(KeyboardInterrupt):
            monitor.feed(SAFE * 3)
        ctrl.join()
        assert hold.came_back == 0  # interrupted inside the engine, not after its forward
    assert monitor.closed and monitor.released == ""
    with pytest.raises(StreamClosed):
        monitor.feed("more")


def _interrupt(thread_id: int) -> None:
    signal.pthread_kill(thread_id, signal.SIGINT)  # Ctrl-C: a real signal, delivered to the main thread


# -- remote client -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_server():
    """A real server whose Stream model answers every forward late."""
    server_guard = Guard.from_pretrained("demo", stream_model="demo-stream", device="cpu")
    with slow(server_guard.stream_backend), serving(server_guard) as url:
        yield url, server_guard.backend.name
    server_guard.close()


def _remote(slow_server, policy=FAIL_OPEN):
    url, model = slow_server
    return Guard.remote(url + "/v1", model=model, stream=True, policy=policy)


async def test_remote_afeed_cancelled_then_go_on_keeps_the_exchange_in_order(slow_server):
    text = SAFE * 3
    async with _remote(slow_server).astream(FRANCE, holdback=2) as monitor:
        released = await monitor.afeed(text[:10])
        await _cancelled(monitor.afeed(text[10:40]))
        released += await monitor.afeed(text[40:])
        released += await monitor.afinish()
    # Before: the next call read the cancelled call's reply, finish got a "released" frame, and the
    # fail-open policy then released everything unchecked as a guard error.
    assert monitor.decision is None, monitor.decision
    assert released == monitor.released == text


async def test_remote_cancelled_unsafe_delta_still_stops_the_stream(slow_server):
    released = ""
    with pytest.raises(GuardViolation):
        async with _remote(slow_server).astream(FRANCE, holdback=4) as monitor:
            released += await monitor.afeed(SAFE)
            await _cancelled(monitor.afeed(RECIPE))
            released += await monitor.afeed(" " + SAFE)
            released += await monitor.afinish()
    assert "ammonium" not in released and "ammonium" not in monitor.released


async def test_remote_afinish_cancelled_then_afinish(slow_server):
    async with _remote(slow_server).astream(FRANCE, holdback=8) as monitor:
        out = await monitor.afeed(SAFE)
        await _cancelled(monitor.afinish())
        out += await monitor.afinish()
    assert out == SAFE == monitor.released and monitor.decision is None and monitor.finished


async def test_remote_aclose_while_the_exchange_is_in_flight(slow_server):
    monitor = await _remote(slow_server).astream(FRANCE, holdback=0).aopen()
    await _cancelled(monitor.afeed(SAFE))
    await monitor.aclose()
    await asyncio.sleep(SLOW_S + 0.2)
    assert monitor.released == "" and monitor.closed and monitor.decision is None
    with pytest.raises(StreamClosed):
        await monitor.afeed("more")


# -- the session API itself (rt52b F2) ----------------------------------------------------------------
@pytest.mark.parametrize("call", ["afeed_text", "afinish"])
async def test_a_session_call_cancelled_while_its_text_is_tokenized_leaves_the_session_unusable(demo_stream, call):
    """A cancel that lands while the text goes into the re-tokenizer (a worker thread): the thread still took the
    text in, and its tokens were never scored; the next calls answered safe. The docs promise an unusable session."""
    session = demo_stream.open_session(FRANCE)
    await session.afeed_text(SAFE)
    push = session._push_text if call == "afeed_text" else session._flush

    def slow_push(*args):
        time.sleep(0.3)  # the fault: tokenizing takes a while
        return push(*args)

    if call == "afeed_text":
        session._push_text = slow_push
        task = asyncio.ensure_future(session.afeed_text(RECIPE))
    else:
        await session.afeed_text(RECIPE)
        session._flush = slow_push
        task = asyncio.ensure_future(session.afinish())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.4)  # the worker thread has pushed the text by now
    with pytest.raises(QwenGuardError, match="unusable"):
        await session.afeed_text(SAFE)
    session.close()
