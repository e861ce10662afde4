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
  guard's `Policy` turns into a decision for ``Stage.STREAM`` (strict/loose, ignore and block lists).
  ``holdback=N`` releases text only once it and N further guard tokens have been scored; with
  ``N >= window - 1`` (the default) nothing at or after the start of a flagged span has been released
  when `GuardViolation` is raised. ``N=0`` releases at once (lowest latency, the flagged tokens may
  already be out).
- **Gen window** (no stream backend: e.g. vLLM serving Qwen3Guard-Gen): the text is cut at sentence
  ends (or every ``check_every`` characters) and each new segment is checked in the background by the
  Gen model as an assistant response, together with up to ``context`` characters before it. Cost per
  check is bounded by the window, never the whole prefix. With ``holdback > 0`` text is released only
  once the window covering it came back safe; ``holdback=0`` releases at once and raises on a later
  `feed`/`finish` when a window comes back unsafe.

The violation's `Decision` has ``stage=Stage.STREAM``, the category, and ``offset``: the character
offset in the streamed text where the flagged span starts (the first token of the debounce run, or
the start of the flagged segment). Guard errors follow ``Policy.on_error`` for the stream stage: fail
closed raises `GuardUnavailable` and releases nothing more; fail open records a flagged
``guard_error`` decision in ``monitor.decision`` and releases the rest unchecked.

One monitor is one stream, used from one task or thread at a time. A delta after `finish`/`close`
raises `StreamClosed`; after a violation every call raises the same `GuardViolation` again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ..errors import GuardTimeout
from ..formats.prompts import Message
from ..verdict import Stage
from .gen_windows import GenWindows, awindow_check, window_check, window_pool
from .monitor_core import (
    DEFAULT_CHECK_EVERY,
    DEFAULT_CONTEXT,
    DEFAULT_HOLDBACK,
    DEFAULT_MIN_SEGMENT,
    FINISHED,
    MonitorCore,
    check_delta,
)

__all__ = [
    "StreamMonitor",
    "AsyncStreamMonitor",
    "open_monitor",
    "open_async_monitor",
    "DEFAULT_HOLDBACK",
    "DEFAULT_CHECK_EVERY",
    "DEFAULT_MIN_SEGMENT",
    "DEFAULT_CONTEXT",
]


# ================================================================================================
# The sync monitor
# ================================================================================================
class StreamMonitor(MonitorCore):
    """Moderates one streamed answer; `feed` returns what is safe to release. See the module docs.

    Opened by `Guard.stream`: the prompt is screened at once (a blocked prompt raises there).
    """

    def __init__(self, guard: Any, prompt: str | Sequence[Message], **options: Any) -> None:
        super().__init__(guard, prompt, **options)
        self._windows: GenWindows | None = None
        self._pending: deque[tuple[int, int, Future[Any]]] = deque()
        self._open()

    def _open(self) -> None:
        backend = self.stream_backend
        if backend is not None:
            if not (self.enabled or self.screen_prompt):
                return
            try:
                self._session = backend.open_session(self.messages)
            except Exception as exc:  # noqa: BLE001
                self._settle_prompt(None, exc)
                return
            if self.screen_prompt:
                self._settle_prompt(self._session.prompt_verdict, None)
            if not self.enabled:
                self._close_engine()
            return
        if self.screen_prompt:
            self._gate(self.guard.check(self.messages, Stage.PROMPT))
        if self.enabled and not self._degraded:
            self._windows = GenWindows(self)

    # -- feeding --------------------------------------------------------------------------------
    def feed(self, delta: str) -> str:
        """Add the next piece of the answer; return the text that may be released now.

        Raises `GuardViolation` (stage stream, offset set) when the guard blocks the answer."""
        delta = check_delta(delta)
        self._check_feedable()
        if not delta:
            return ""
        self._buffer += delta
        if self._degraded or not self.enabled:
            return self._release_all()
        if self._windows is not None:
            return self._feed_windows(delta)
        try:
            verdicts = self._session.feed_text(delta)
        except Exception as exc:  # noqa: BLE001
            return self._fail(exc)
        return self._absorb_tokens(verdicts)

    def finish(self) -> str:
        """The answer is complete: score what is left and return the rest of the text."""
        self._check_feedable()
        out = ""
        if not (self._degraded or not self.enabled):
            if self._windows is not None:
                out = self._finish_windows()
            else:
                try:
                    verdicts = self._session.finish()
                except Exception as exc:  # noqa: BLE001
                    out = self._fail(exc)
                else:
                    out = self._absorb_tokens(verdicts)
        out += self._release_all()
        self._state = FINISHED
        self._close_engine()
        self._emit_final()
        return out

    def wrap(self, deltas: Iterable[str]) -> Iterator[str]:
        """Yield the releasable text of ``deltas``, then the rest at the end (non-empty pieces only).

        A violation raises from the iterator, which closes the upstream generator."""
        upstream = iter(deltas)
        try:
            for delta in upstream:
                if out := self.feed(delta):
                    yield out
            if out := self.finish():
                yield out
        finally:
            close = getattr(upstream, "close", None)
            if close is not None:
                close()

    # -- Gen-window engine ----------------------------------------------------------------------
    def _submit(self, checks: list[tuple[int, int, list[dict[str, str]]]]) -> None:
        windows = self._windows
        assert windows is not None
        for start, end, conversation in checks:
            fut = window_pool().submit(window_check, self.guard.backend, conversation, windows.timeout)
            self._pending.append((start, end, fut))

    def _harvest(self, *, wait: bool) -> None:
        windows = self._windows
        assert windows is not None
        while self._pending and (wait or self._pending[0][2].done()):
            start, end, fut = self._pending[0]
            try:
                outcome = fut.result(timeout=None if windows.timeout is None else windows.timeout + 1.0)
            except FutureTimeout:
                outcome = GuardTimeout(f"stream window check took longer than {windows.timeout}s")
            self._pending.popleft()
            windows.settle(start, end, outcome)
            if self._degraded:
                return

    def _feed_windows(self, delta: str) -> str:
        windows = self._windows
        assert windows is not None
        self._submit(windows.add(delta))
        self._harvest(wait=False)
        return self._release_all() if self._degraded else windows.release()

    def _finish_windows(self) -> str:
        windows = self._windows
        assert windows is not None
        self._submit(windows.rest())
        self._harvest(wait=True)
        return self._release_all() if self._degraded else windows.release()

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> StreamMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ================================================================================================
# The async monitor
# ================================================================================================
class AsyncStreamMonitor(MonitorCore):
    """Async twin of `StreamMonitor`: ``async with guard.astream(prompt) as m: await m.afeed(delta)``.

    The prompt is screened when the monitor is entered (or on the first `afeed`). Stream-model
    forwards run in a worker thread so the event loop never blocks on torch.
    """

    def __init__(self, guard: Any, prompt: str | Sequence[Message], **options: Any) -> None:
        super().__init__(guard, prompt, **options)
        self._windows: GenWindows | None = None
        self._pending: deque[tuple[int, int, asyncio.Task[Any]]] = deque()
        self._opened = False

    async def aopen(self) -> AsyncStreamMonitor:
        """Screen the prompt and open the engine (idempotent; `__aenter__` calls it)."""
        if self._opened:
            return self
        self._opened = True
        backend = self.stream_backend
        if backend is not None:
            if not (self.enabled or self.screen_prompt):
                return self
            try:
                opener = getattr(backend, "aopen_session", None)
                if opener is not None:
                    self._session = await opener(self.messages)
                else:
                    self._session = await asyncio.to_thread(backend.open_session, self.messages)
            except Exception as exc:  # noqa: BLE001
                self._settle_prompt(None, exc)
                return self
            if self.screen_prompt:
                self._settle_prompt(self._session.prompt_verdict, None)
            if not self.enabled:
                self._close_engine()
            return self
        if self.screen_prompt:
            self._gate(await self.guard.acheck(self.messages, Stage.PROMPT))
        if self.enabled and not self._degraded:
            self._windows = GenWindows(self)
        return self

    async def afeed(self, delta: str) -> str:
        """Async twin of `StreamMonitor.feed`."""
        delta = check_delta(delta)
        if not self._opened:
            await self.aopen()
        self._check_feedable()
        if not delta:
            return ""
        self._buffer += delta
        if self._degraded or not self.enabled:
            return self._release_all()
        if self._windows is not None:
            return self._feed_windows(delta)
        session = self._session
        try:
            feeder = getattr(session, "afeed_text", None)
            verdicts = await (feeder(delta) if feeder is not None else asyncio.to_thread(session.feed_text, delta))
        except Exception as exc:  # noqa: BLE001
            return self._fail(exc)
        self._check_feedable()  # closed while the forward ran
        return self._absorb_tokens(verdicts)

    async def afinish(self) -> str:
        """Async twin of `StreamMonitor.finish`."""
        if not self._opened:
            await self.aopen()
        self._check_feedable()
        out = ""
        if not (self._degraded or not self.enabled):
            if self._windows is not None:
                out = await self._finish_windows()
            else:
                session = self._session
                try:
                    finisher = getattr(session, "afinish", None)
                    verdicts = await (finisher() if finisher is not None else asyncio.to_thread(session.finish))
                except Exception as exc:  # noqa: BLE001
                    out = self._fail(exc)
                else:
                    out = self._absorb_tokens(verdicts)
        out += self._release_all()
        self._state = FINISHED
        self._close_engine()
        self._emit_final()
        return out

    async def awrap(self, deltas: AsyncIterable[str] | Iterable[str]) -> AsyncIterator[str]:
        """Async twin of `StreamMonitor.wrap`."""
        if isinstance(deltas, AsyncIterable):
            upstream = deltas.__aiter__()
            try:
                async for delta in upstream:
                    if out := await self.afeed(delta):
                        yield out
            finally:
                aclose = getattr(upstream, "aclose", None)
                if aclose is not None and self._state != FINISHED:
                    await aclose()
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
            task = asyncio.ensure_future(awindow_check(self.guard.backend, conversation, windows.timeout))
            self._pending.append((start, end, task))

    def _harvest_done(self) -> None:
        windows = self._windows
        assert windows is not None
        while self._pending and self._pending[0][2].done():
            start, end, task = self._pending.popleft()
            windows.settle(start, end, task.result())
            if self._degraded:
                return

    def _feed_windows(self, delta: str) -> str:
        windows = self._windows
        assert windows is not None
        self._submit(windows.add(delta))
        self._harvest_done()
        return self._release_all() if self._degraded else windows.release()

    async def _finish_windows(self) -> str:
        windows = self._windows
        assert windows is not None
        self._submit(windows.rest())
        while self._pending and not self._degraded:
            start, end, task = self._pending.popleft()
            windows.settle(start, end, await task)
        return self._release_all() if self._degraded else windows.release()

    # -- lifecycle ------------------------------------------------------------------------------
    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncStreamMonitor:
        return await self.aopen()

    async def __aexit__(self, *exc: object) -> None:
        self.close()


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

