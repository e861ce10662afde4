"""`StreamMonitor` / `AsyncStreamMonitor`: moderate a streamed answer while it streams, with hold-back.

::

    with guard.stream(prompt, holdback=8) as monitor:      # raises GuardViolation if the prompt is blocked
        for delta in llm_stream:
            send(monitor.feed(delta))                      # text safe to release now
        send(monitor.finish())                             # the rest

    async with guard.astream(prompt) as monitor:
        send(await monitor.afeed(delta)); send(await monitor.afinish())

Two engines behind one contract:

- **Stream model** (``guard.stream_backend``, e.g. `TransformersStream`): the prompt is judged by the
  query heads; every assistant token is scored by the response heads (O(1) per token); the official
  debounce (`Debounce`: two consecutive non-safe tokens) turns token verdicts into a flag, which the
  guard's `Policy` turns into a decision for ``Stage.STREAM`` (strict/loose, ignore and block lists) on
  every category of the run so far; a run it allows is flagged and judged again where it takes on another
  category or turns unsafe.
  ``holdback=N`` releases text only once it and N further guard tokens have been scored; with
  ``N >= window - 1`` (the default) nothing at or after the start of a flagged span has been released
  when `GuardViolation` is raised. ``N=0`` releases at once (lowest latency, the flagged tokens may
  already be out).
- **Gen window** (no stream backend: e.g. vLLM serving Qwen3Guard-Gen): checks run in the background,
  pipelined with generation (`GenWindows`), each showing the Gen model a new segment as an assistant
  response together with up to ``context`` characters before it (text longer than ``check_every`` is
  cut: a window is bounded, never the whole prefix). ``release_unit="sentence"`` (default): a segment
  ends at a sentence end and is checked as soon as it ends (a short one at once when no check is in
  flight, else joined to the next); ``"opening"``: the same, but the answer's opening words are judged as
  soon as two complete words have arrived and go out but the last one, so the first text does not wait
  for the first sentence to end; ``"word"``: when no check is in flight all text received so far is judged,
  and judged text goes out but its last word. With ``holdback > 0`` text is released only once
  its window came back safe; ``holdback=0`` releases at once and raises on a later `feed`/`finish` when
  a window comes back unsafe.

When judged text goes out: `feed`/`finish` return what the verdicts back so far allow (a caller feeding
by hand gets it with the next delta, or from `release_judged` once `verdict_waiter()` is done); `wrap` and
`awrap` race the next upstream read against the check in flight and yield judged text as soon as its
verdict is back (`UpstreamReader`: the sync upstream read on a thread of its own; `UpstreamRace`; ``wakeup.py``).
``parallel_input=True`` (Gen window; default: the guard's ``parallel_input``): the prompt is checked in
the background while the caller starts its model; the answer is fed and judged meanwhile and released
only after the prompt's verdict; a blocked prompt raises from the next call, with nothing released.

The violation's `Decision` has ``stage=Stage.STREAM``, the category, and ``offset``: the character
offset in the streamed text where the flagged span starts (the first token of the debounce run, or
the start of the flagged segment). Guard errors follow ``Policy.on_error`` for the stream stage: fail
closed raises `GuardUnavailable` and releases nothing more; fail open lets the failed check's text
through with a flagged ``guard_error``/``timeout`` decision (in ``monitor.flags``; the first also in
``monitor.decision``) and judges later text as before: one failed check does not switch the guard off.
A Stream-model session that failed hands the rest of the stream, from the release point, to Gen windows
on the guard's Gen backend; a prompt check that failed open still lets the answer be judged.

Every prompt and delta passes through `clean_text` first; what is released is the cleaned text that was
judged. Every call waits at most the policy's ``timeout_for`` (prompt stage to open, stream stage per
call); past it the guard error path above applies. Cancelling an async call cancels the wait, not the
check: the next call completes it first (`CancelSafeLane`); ``aclose`` abandons it. A sync call
interrupted inside the engine (KeyboardInterrupt) closes the monitor. The whole contract, with examples:
docs/streaming.md.

One monitor is one stream, used from one task or thread at a time. A delta after `finish`/`close`
raises `StreamClosed`; after a violation every call raises the same `GuardViolation` again.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ..errors import GuardTimeout
from ..formats.prompts import Message
from ..verdict import Stage
from .cancel_safe import CancelSafeLane
from .gen_windows import WINDOW_GRACE_S, build_tables, tables_built, window_pool
from .misuse import AsyncOnly, SyncOnly
from .monitor_core import (
    DEFAULT_CHECK_EVERY,
    DEFAULT_CONTEXT,
    DEFAULT_HOLDBACK,
    DEFAULT_MIN_SEGMENT,
    DEFAULT_RELEASE_UNIT,
    FINISHED,
    OPEN,
    MonitorCore,
    check_delta,
    deadline,
)
from .task_ends import mark_read
from .wakeup import UpstreamRace, UpstreamReader, verdict_waiters

__all__ = [
    "StreamMonitor",
    "AsyncStreamMonitor",
    "open_monitor",
    "open_async_monitor",
    "DEFAULT_HOLDBACK",
    "DEFAULT_CHECK_EVERY",
    "DEFAULT_MIN_SEGMENT",
    "DEFAULT_CONTEXT",
    "DEFAULT_RELEASE_UNIT",
]


# ================================================================================================
# The sync monitor
# ================================================================================================
class StreamMonitor(MonitorCore, SyncOnly):
    """Moderates one streamed answer; `feed` returns what is safe to release. See the module docs.

    Opened by `Guard.stream`: the prompt is screened at once (a blocked prompt raises there).
    """

    def __init__(self, guard: Any, prompt: str | Sequence[Message], **options: Any) -> None:
        super().__init__(guard, prompt, **options)
        self._pending: deque[tuple[int, int, Future[Any]]] = deque()
        self._windows_judged: dict[Future[Any], list[dict[str, str]]] = {}  # each pending check's window
        self._open()

    def _open(self) -> None:
        backend = self.stream_backend
        if backend is not None:
            if not (self.enabled or self.screen_prompt):
                return
            try:
                self._session = backend.open_session(
                    self.messages, **deadline(backend.open_session, self.policy, Stage.PROMPT)
                )
            except Exception as exc:  # noqa: BLE001
                self._settle_prompt(None, exc)  # raises when the policy fails closed
                self._judge_in_windows()  # failed open: the answer is judged all the same
                return
            if self.screen_prompt:
                self._settle_prompt(self._session.prompt_verdict, None)
                if getattr(self._session, "prompt_cut", False):
                    # The Stream model saw only the prompt's end: its start is judged too, never dropped.
                    self._gate(self.guard.check(self.messages, Stage.PROMPT))
            if not self.enabled:
                self._close_engine()
            return
        if self.parallel_input:
            # The caller starts its model now; what it streams is judged meanwhile, released after the verdict.
            context = contextvars.copy_context()
            self._prompt_check = window_pool().submit(context.run, self.guard.check, self.messages, Stage.PROMPT)
        elif self.screen_prompt:
            self._gate(self.guard.check(self.messages, Stage.PROMPT))
        self._judge_in_windows()

    def _settle_prompt_check(self, *, wait: bool) -> None:
        """Gate on the parallel prompt check once it is back (``wait``: block until it is; one still queued behind
        other streams' checks is judged on this thread instead, as a window is: `_harvest`)."""
        check = self._prompt_check
        if check is None or not (wait or check.done()):
            return
        try:
            result = self.guard.check(self.messages, Stage.PROMPT) if check.cancel() else check.result()
        except Exception as exc:  # noqa: BLE001 - a failed check ends the stream as the sequential one would
            result = exc
        except BaseException:
            self._abandon()  # an interrupted wait: the verdict is unknown, nothing more is released
            raise
        self._gate_prompt_check(result)

    # -- feeding --------------------------------------------------------------------------------
    def feed(self, delta: str) -> str:
        """Add the next piece of the answer; return the text that may be released now.

        Raises `GuardViolation` (stage stream, offset set) when the guard blocks the answer."""
        delta = check_delta(delta)
        self._check_feedable()
        delta = self._crlf_joined(delta)
        if not delta:
            return ""
        self._append(delta)
        self._settle_prompt_check(wait=False)
        if self._prompt_held:
            if self._windows is not None:
                self._feed_windows(delta)  # judged beside the prompt check; released after its verdict
            return ""
        if not self.enabled:
            return self._release_all()
        if self._windows is not None:
            return self._feed_windows(delta)
        try:
            verdicts = self._session.feed_text(delta, **deadline(self._session.feed_text, self.policy, Stage.STREAM))
        except Exception as exc:  # noqa: BLE001
            self._fail_tokens(exc)  # raises when failing closed; else Gen windows judge from here
            return self._feed_windows("")
        except BaseException:
            self._abandon()
            raise
        return self._absorb_tokens(verdicts)

    def finish(self) -> str:
        """The answer is complete: score what is left and return the rest of the text."""
        self._check_feedable()
        held = self.end_cr()
        out = self.feed(held) if held else ""  # a CR held at the last delta's end: a lone one
        self._settle_prompt_check(wait=True)
        if self.enabled:
            if self._windows is None:
                try:
                    verdicts = self._session.finish(**deadline(self._session.finish, self.policy, Stage.STREAM))
                except Exception as exc:  # noqa: BLE001
                    self._fail_tokens(exc)  # raises when failing closed; else Gen windows judge the rest
                except BaseException:
                    self._abandon()
                    raise
                else:
                    out += self._absorb_tokens(verdicts)
            if self._windows is not None:
                out += self._finish_windows()
        out += self._release_all()
        self._state = FINISHED
        self._close_engine()
        self._emit_final()
        return out

    def verdict_waiter(self) -> Future[Any] | None:
        """The check in flight whose verdict may let held text out (the parallel prompt check, else the
        oldest window check), or None. Wait for it, then call `release_judged` (see ``wakeup.py``)."""
        if self._state != OPEN:
            return None
        if self._prompt_check is not None:
            return self._prompt_check  # type: ignore[no-any-return]
        return self._pending[0][2] if self._pending else None

    def release_judged(self) -> str:
        """Text whose verdicts came back since the last call, without new text ("" when there is none).

        `feed` does this too; this is for a caller that wakes when a verdict is back (`verdict_waiter`,
        `wakeup.UpstreamReader`) instead of on the next delta."""
        self._check_feedable()
        self._settle_prompt_check(wait=False)
        if self._prompt_held:
            return ""
        if not self.enabled:
            return self._release_all()  # held only behind the prompt check
        return "" if self._windows is None else self._feed_windows("")

    def wrap(self, deltas: Iterable[str]) -> Iterator[str]:
        """Yield the releasable text of ``deltas``, then the rest at the end (non-empty pieces only).

        Judged text is yielded as soon as its verdict is back, not on the next delta: while a check runs
        beside the stream (a Gen guard's windows, ``parallel_input``), ``deltas`` is read on a thread of its
        own (`wakeup.UpstreamReader`). A violation raises from the iterator, which closes the upstream."""
        reader = UpstreamReader(deltas, name="qwenguard-stream-upstream")
        try:
            for fresh, delta in reader.race(lambda: verdict_waiters(self)):
                if out := self.feed(delta) if fresh else self.release_judged():  # type: ignore[arg-type]
                    yield out
        finally:
            reader.close()
        if out := self.finish():
            yield out

    # -- Gen-window engine ----------------------------------------------------------------------
    def _submit(self, checks: list[tuple[int, int, list[dict[str, str]]]]) -> None:
        windows = self._windows
        assert windows is not None
        for start, end, conversation in checks:
            fut = window_pool().submit(self._window_judge.check, conversation, windows.timeout)
            self._pending.append((start, end, fut))
            self._windows_judged[fut] = conversation

    def _harvest(self, *, wait: bool, most: int | None = None) -> None:
        """Settle the checks that are back, in order (``wait``: wait for them; ``most``: at most so many)."""
        windows = self._windows
        assert windows is not None
        settled = 0
        while self._pending and (wait or self._pending[0][2].done()) and (most is None or settled < most):
            settled += 1
            start, end, fut = self._pending[0]
            conversation = self._windows_judged[fut]
            if fut.cancel():
                # Still queued behind other streams' checks (the pool is the process's, shared by every guard): this
                # thread judges it rather than wait, and its deadline starts now. A slow guard's streams filling
                # the pool made an idle guard's windows time out (rt52b F3: released unjudged under "allow").
                outcome = self._window_judge.check(conversation, windows.timeout)
            else:
                try:
                    outcome = fut.result(timeout=None if windows.timeout is None else windows.timeout + WINDOW_GRACE_S)
                except FutureTimeout:
                    outcome = GuardTimeout(f"stream window check took longer than {windows.timeout}s")
            self._pending.popleft()
            del self._windows_judged[fut]
            windows.settle(start, end, outcome)

    def _feed_windows(self, delta: str) -> str:
        windows = self._windows
        assert windows is not None
        try:
            self._harvest(wait=False)  # first: a check that came back frees the engine to judge this delta
            self._submit(windows.add(delta))
        except BaseException:
            self._interrupted()
            raise
        return "" if self._prompt_held else windows.release()

    def _finish_windows(self) -> str:
        windows = self._windows
        assert windows is not None
        try:
            self._submit(windows.rest())
            while self._pending:
                self._harvest(wait=True, most=1)
                self._submit(windows.rest())  # the next segments as checks come back (a stream's cap)
        except BaseException:
            self._interrupted()
            raise
        return windows.release()

    def _interrupted(self) -> None:
        """The Gen-window engine stopped mid-call (a violation, a fail-closed error, or an interrupt such as
        KeyboardInterrupt): unless a decision ended the stream already, which text the windows hold is
        unknown, so the monitor closes and releases nothing more (as the token engine does)."""
        if self._state == OPEN:
            self._abandon()

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> StreamMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ================================================================================================
# The async monitor
# ================================================================================================
class AsyncStreamMonitor(MonitorCore, AsyncOnly):
    """Async twin of `StreamMonitor`: ``async with guard.astream(prompt) as m: await m.afeed(delta)``.

    The prompt is screened when the monitor is entered (or on the first `afeed`). Model and tokenizer
    work never runs on the event loop. Calls run one at a time through a `CancelSafeLane`: cancelling
    `afeed`/`afinish` (``asyncio.wait_for``, a client that went away) cancels the wait, not the check;
    the next call completes the check first, so no text is ever released before its verdict came back.
    """

    def __init__(self, guard: Any, prompt: str | Sequence[Message], **options: Any) -> None:
        super().__init__(guard, prompt, **options)
        self._pending: deque[tuple[int, int, asyncio.Task[Any]]] = deque()
        self._opened = False
        self._lane = CancelSafeLane()

    async def aopen(self) -> AsyncStreamMonitor:
        """Screen the prompt and open the engine (idempotent; `__aenter__` calls it)."""
        if not self._opened:
            await self._lane.run("open", self._open_work)
        return self

    async def _open_work(self) -> str:
        if self._opened:
            return ""
        self._opened = True
        if not tables_built():
            # The first stream of a process built the Unicode tables on the event loop as it read its first delta
            # (0.75-0.86 s held, rt69h F3): built here, on a worker thread, before any text.
            await asyncio.to_thread(build_tables)
        backend = self.stream_backend
        if backend is not None:
            if not (self.enabled or self.screen_prompt):
                return ""
            try:
                opener = getattr(backend, "aopen_session", None)
                if opener is not None:
                    session = await opener(self.messages, **deadline(opener, self.policy, Stage.PROMPT))
                else:
                    session = await asyncio.to_thread(backend.open_session, self.messages)
            except Exception as exc:  # noqa: BLE001
                self._settle_prompt(None, exc)  # raises when the policy fails closed
                self._judge_in_windows()  # failed open: the answer is judged all the same
                return ""
            if self._state != OPEN:  # closed while the prompt was scored
                session.close()
                return ""
            self._session = session
            if self.screen_prompt:
                self._settle_prompt(session.prompt_verdict, None)
                if getattr(session, "prompt_cut", False):
                    # The Stream model saw only the prompt's end: its start is judged too, never dropped.
                    decision = await self.guard.acheck(self.messages, Stage.PROMPT)
                    if self._state != OPEN:
                        return ""
                    self._gate(decision)
            if not self.enabled:
                self._close_engine()
            return ""
        if self.parallel_input:
            # The caller starts its model now; what it streams is judged meanwhile, released after the verdict.
            self._prompt_check = asyncio.ensure_future(self.guard.acheck(self.messages, Stage.PROMPT))
            self._prompt_check.add_done_callback(mark_read)  # a stream abandoned before its verdict never reads it
        elif self.screen_prompt:
            decision = await self.guard.acheck(self.messages, Stage.PROMPT)
            if self._state != OPEN:
                return ""
            self._gate(decision)
        self._judge_in_windows()
        return ""

    async def _settle_prompt_check(self, *, wait: bool) -> None:
        """Gate on the parallel prompt check once it is back (``wait``: until it is)."""
        check = self._prompt_check
        if check is None or not (wait or check.done()):
            return
        await asyncio.wait({check})  # the lane shields this work: a cancelled caller leaves it running
        if self._prompt_check is not check:  # closed meanwhile
            return
        self._gate_prompt_check(check.exception() or check.result())

    async def afeed(self, delta: str) -> str:
        """Async twin of `StreamMonitor.feed`."""
        delta = check_delta(delta)
        return await self._lane.run("feed", lambda: self._feed_work(delta))

    async def _feed_work(self, delta: str) -> str:
        await self._open_work()
        self._check_feedable()
        delta = self._crlf_joined(delta)
        if not delta:
            return ""
        self._append(delta)
        if self._prompt_check is not None:  # most streams: no coroutine per delta
            await self._settle_prompt_check(wait=False)
        if self._prompt_held:
            if self._windows is not None:
                self._feed_windows(delta)  # judged beside the prompt check; released after its verdict
            return ""
        if not self.enabled:
            return self._release_all()
        if self._windows is not None:
            return self._feed_windows(delta)
        session = self._session
        try:
            feeder = getattr(session, "afeed_text", None)
            if feeder is not None:
                verdicts = await feeder(delta, **deadline(feeder, self.policy, Stage.STREAM))
            else:
                verdicts = await asyncio.to_thread(session.feed_text, delta)
        except Exception as exc:  # noqa: BLE001
            if self._state != OPEN:
                return ""
            self._fail_tokens(exc)  # raises when failing closed; else Gen windows judge from here
            return self._feed_windows("")
        if self._state != OPEN:  # closed while the forward ran: nothing more is released
            return ""
        return self._absorb_tokens(verdicts)

    async def afinish(self) -> str:
        """Async twin of `StreamMonitor.finish`. After a cancelled `afinish`, returns what that one released."""
        return await self._lane.run("finish", self._finish_work)

    async def _finish_work(self) -> str:
        await self._open_work()
        self._check_feedable()
        held = self.end_cr()
        early = await self._feed_work(held) if held else ""  # a CR held at the last delta's end: a lone one
        await self._settle_prompt_check(wait=True)
        if self._state != OPEN:
            return ""
        out = early
        if self.enabled:
            if self._windows is None:
                session = self._session
                try:
                    finisher = getattr(session, "afinish", None)
                    if finisher is not None:
                        verdicts = await finisher(**deadline(finisher, self.policy, Stage.STREAM))
                    else:
                        verdicts = await asyncio.to_thread(session.finish)
                except Exception as exc:  # noqa: BLE001
                    if self._state != OPEN:
                        return ""
                    self._fail_tokens(exc)  # raises when failing closed; else Gen windows judge the rest
                else:
                    if self._state != OPEN:
                        return ""
                    out += self._absorb_tokens(verdicts)
            if self._windows is not None:
                out += await self._finish_windows()
        if self._state != OPEN:
            return ""
        out += self._release_all()
        self._state = FINISHED
        self._close_engine()
        self._emit_final()
        return out

    def verdict_waiter(self) -> asyncio.Future[Any] | None:
        """The check in flight whose verdict may let held text out (the parallel prompt check, else the
        oldest window check), or None. Await it, then call `arelease_judged` (see ``wakeup.py``)."""
        if self._state != OPEN:
            return None
        if self._prompt_check is not None:
            return self._prompt_check  # type: ignore[no-any-return]
        return self._pending[0][2] if self._pending else None

    async def arelease_judged(self) -> str:
        """Async twin of `StreamMonitor.release_judged`: what the verdicts back so far let out, without new text."""
        return await self._lane.run("feed", self._release_work)

    async def _release_work(self) -> str:
        await self._open_work()
        self._check_feedable()
        await self._settle_prompt_check(wait=False)
        if self._prompt_held:
            return ""
        if not self.enabled:
            return self._release_all()  # held only behind the prompt check
        return "" if self._windows is None else self._feed_windows("")

    async def awrap(self, deltas: AsyncIterable[str] | Iterable[str]) -> AsyncIterator[str]:
        """Async twin of `StreamMonitor.wrap`; judged text is yielded as soon as its verdict is back, not
        on the next delta (`UpstreamRace`)."""
        if isinstance(deltas, AsyncIterable):
            upstream = deltas.__aiter__()
            race = UpstreamRace(upstream)
            try:
                while True:
                    try:
                        fresh, delta = await race.next(verdict_waiters(self))
                    except StopAsyncIteration:
                        break
                    out = await self.afeed(delta) if fresh else await self.arelease_judged()  # type: ignore[arg-type]
                    if out:
                        yield out
            finally:
                await race.aclose(upstream=self._state != FINISHED)
        else:
            for delta in deltas:
                if out := await self.afeed(delta):
                    yield out
        if out := await self.afinish():
            yield out

    # -- Gen-window engine ----------------------------------------------------------------------
    def _submit(self, checks: list[tuple[int, int, list[dict[str, str]]]]) -> None:
        windows = self._windows
        assert windows is not None
        for start, end, conversation in checks:
            task = asyncio.ensure_future(self._window_judge.acheck(conversation, windows.timeout))
            task.add_done_callback(mark_read)  # read by `_harvest_done` unless the stream is abandoned first
            self._pending.append((start, end, task))

    def _harvest_done(self) -> None:
        windows = self._windows
        assert windows is not None
        while self._pending and self._pending[0][2].done():
            start, end, task = self._pending.popleft()
            windows.settle(start, end, task.result())

    def _feed_windows(self, delta: str) -> str:
        windows = self._windows
        assert windows is not None
        self._harvest_done()  # first: a check that came back frees the engine to judge this delta
        self._submit(windows.add(delta))
        return "" if self._prompt_held else windows.release()

    async def _finish_windows(self) -> str:
        windows = self._windows
        assert windows is not None
        self._submit(windows.rest())
        while self._pending:
            start, end, task = self._pending[0]
            await asyncio.wait({task})  # a window leaves `_pending` only once its result is settled
            if self._state != OPEN or task.cancelled():  # closed meanwhile (close cancels pending windows)
                return ""
            self._pending.popleft()
            windows.settle(start, end, task.result())
            self._submit(windows.rest())  # the next segments as checks come back (a stream's cap)
        return windows.release()

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop: nothing more is released; a check still in flight is abandoned (cancelled, its result ignored)."""
        super().close()
        self._lane.abandon()

    async def aclose(self) -> None:
        """Async twin of `close`."""
        self.close()

    async def __aenter__(self) -> AsyncStreamMonitor:
        return await self.aopen()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ================================================================================================
# Entry points used by Guard.stream / Guard.astream
# ================================================================================================
def open_monitor(guard: Any, prompt: str | Sequence[Message], **options: Any) -> Any:
    """A `StreamMonitor` for ``guard`` (a remote stream backend brings its own monitor)."""
    remote = getattr(guard.stream_backend, "open_remote_monitor", None)
    if remote is not None:
        return remote(guard, prompt, **options)
    return StreamMonitor(guard, prompt, **options)


def open_async_monitor(guard: Any, prompt: str | Sequence[Message], **options: Any) -> Any:
    """An `AsyncStreamMonitor` for ``guard``; enter it with ``async with``."""
    remote = getattr(guard.stream_backend, "open_remote_async_monitor", None)
    if remote is not None:
        return remote(guard, prompt, **options)
    return AsyncStreamMonitor(guard, prompt, **options)
