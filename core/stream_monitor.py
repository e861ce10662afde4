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
import re
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Any

from .conversations import prompt_conversation
from .debounce import DEFAULT_WINDOW, Debounce, Flag
from .errors import GuardTimeout, GuardUnavailable, GuardViolation, QwenGuardError, StreamClosed
from .policy import Action, Decision
from .prompts import Message, normalize_messages
from .verdict import Risk, Stage, Verdict

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

#: Guard tokens held back after the last released one. >= window - 1 keeps flagged spans unreleased.
DEFAULT_HOLDBACK = 8
#: Gen-window fallback: longest segment (chars) between two checks when no sentence ends.
DEFAULT_CHECK_EVERY = 256
#: Gen-window fallback: shortest segment (chars) a sentence end may close.
DEFAULT_MIN_SEGMENT = 40
#: Gen-window fallback: chars of earlier text shown with each new segment.
DEFAULT_CONTEXT = 384
#: Per-token verdicts kept for `take_token_verdicts` (bounded: old ones drop off).
DEFAULT_KEEP_TOKEN_VERDICTS = 2048

# A sentence ends at terminal punctuation (and closing quotes/brackets) followed by whitespace, or
# at a newline. The whitespace must have arrived: "3.14" and "e.g." mid-stream are not ends.
_SENTENCE_END = re.compile(r"[.!?;。！？；…]+[\"'”’)\]]*(?=\s)|\n")

_OPEN, _FINISHED, _CLOSED, _VIOLATED, _FAILED = "open", "finished", "closed", "violated", "failed"

_window_pool: ThreadPoolExecutor | None = None
_window_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Shared workers for background window checks (the Gen backend batches concurrent calls)."""
    global _window_pool
    with _window_pool_lock:
        if _window_pool is None:
            _window_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="qwenguard-window")
        return _window_pool


def _as_messages(prompt: str | Sequence[Message]) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return prompt_conversation(prompt)
    if prompt is None:
        raise TypeError("prompt is None; pass the user's prompt or the conversation")
    return normalize_messages(prompt)


def _check_delta(delta: object) -> str:
    if type(delta) is not str:
        if isinstance(delta, str):
            return str(delta)
        raise TypeError(f"delta must be str, got {type(delta).__name__}")
    if not delta.isascii():
        try:
            delta.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: same documented replacement as checks
            delta = delta.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return delta


# ================================================================================================
# Shared logic: state, release bookkeeping, decisions. No I/O here.
# ================================================================================================
class _MonitorCore:
    def __init__(
        self,
        guard: Any,
        prompt: str | Sequence[Message],
        *,
        holdback: int | None = None,
        window: int = DEFAULT_WINDOW,
        screen_prompt: bool = True,
        check_every: int = DEFAULT_CHECK_EVERY,
        min_segment: int = DEFAULT_MIN_SEGMENT,
        context: int = DEFAULT_CONTEXT,
        keep_token_verdicts: int = DEFAULT_KEEP_TOKEN_VERDICTS,
    ) -> None:
        holdback = DEFAULT_HOLDBACK if holdback is None else holdback
        if not isinstance(holdback, int) or isinstance(holdback, bool) or holdback < 0:
            raise ValueError(f"holdback must be a non-negative integer, got {holdback!r}")
        for name, value in (("check_every", check_every), ("min_segment", min_segment), ("context", context)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "context" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.guard = guard
        self.policy = guard.policy
        self.messages = _as_messages(prompt)
        self.holdback = holdback
        self.screen_prompt = bool(screen_prompt)
        self._debounce = Debounce(window)
        self.window = self._debounce.window
        self.stream_backend = guard.stream_backend
        self.enabled = self.policy.enabled(Stage.STREAM)
        if self.stream_backend is not None and self.messages[-1]["role"] != "user":
            raise ValueError("a streamed answer follows a user turn: the conversation's last message must be the user's")
        #: The violation (or fail-open guard error) that ended checking, else None.
        self.decision: Decision | None = None
        #: The prompt's Decision (None when the prompt was not screened).
        self.prompt_decision: Decision | None = None
        #: Allowed-but-flagged stream decisions (loose controversial, ignored categories).
        self.flags: list[Decision] = []
        self._state = _OPEN
        self._degraded = False  # fail-open after a guard error: the rest passes unchecked
        self._released_parts: list[str] = []
        self._released_len = 0
        self._buffer = ""  # fed, not yet released; starts at char offset _released_len
        # Token engine: (index, start) of the most recent scored tokens.
        self._recent: deque[tuple[int, int]] = deque(maxlen=max(self.holdback, self.window) + 1)
        self._scored = 0
        self._scored_end = 0
        self._tokens: deque[Any] = deque(maxlen=keep_token_verdicts)
        self._window_opts = (check_every, min_segment, context)
        self._session: Any = None

    # -- public read-only view ------------------------------------------------------------------
    @property
    def released(self) -> str:
        """All text released so far."""
        if len(self._released_parts) > 1:
            self._released_parts = ["".join(self._released_parts)]
        return self._released_parts[0] if self._released_parts else ""

    @property
    def text(self) -> str:
        """All text fed so far."""
        return self.released + self._buffer

    @property
    def held(self) -> str:
        """Text fed but not released yet."""
        return self._buffer

    @property
    def finished(self) -> bool:
        return self._state == _FINISHED

    @property
    def closed(self) -> bool:
        return self._state in (_CLOSED, _FINISHED, _VIOLATED, _FAILED)

    def take_token_verdicts(self) -> list[Any]:
        """The per-token verdicts scored since the last call (Stream model only; bounded buffer)."""
        out = list(self._tokens)
        self._tokens.clear()
        return out

    # -- state ----------------------------------------------------------------------------------
    def _check_feedable(self) -> None:
        state = self._state
        if state == _OPEN:
            return
        if state == _VIOLATED and self.decision is not None:
            raise GuardViolation(self.decision)
        if state == _FAILED and self.decision is not None:
            raise GuardUnavailable(f"the stream guard failed and the policy fails closed: {self.decision.error}", self.decision)
        if state == _FINISHED:
            raise StreamClosed("this stream monitor is finished; open a new one with guard.stream(...)")
        raise StreamClosed("this stream monitor is closed")

    def _release_to(self, boundary: int) -> str:
        cut = boundary - self._released_len
        if cut <= 0:
            return ""
        out = self._buffer[:cut]
        self._buffer = self._buffer[cut:]
        self._released_len += len(out)
        self._released_parts.append(out)
        return out

    def _release_all(self) -> str:
        return self._release_to(self._released_len + len(self._buffer))

    # -- decisions ------------------------------------------------------------------------------
    def _emit(self, decision: Decision) -> None:
        emit = getattr(self.guard, "_emit", None)
        if emit is not None:
            emit(decision)

    def _settle_prompt(self, verdict: Verdict | None, error: BaseException | None) -> None:
        """Gate the stream on the prompt (Stream query heads' verdict, or a guard error)."""
        if error is not None:
            decision = self.policy.decide_error(Stage.PROMPT, error, timeout=isinstance(error, GuardTimeout))
        elif not self.policy.enabled(Stage.PROMPT):
            decision = Decision(True, Action.ALLOW, Stage.PROMPT, "disabled")
        else:
            decision = self.policy.decide(verdict, Stage.PROMPT)  # type: ignore[arg-type]
        self._emit(decision)
        self._gate(decision)

    def _gate(self, decision: Decision) -> None:
        self.prompt_decision = decision
        if decision.allowed:
            if decision.reason in ("guard_error", "timeout"):
                self._degrade(decision)  # fail open: no guard for this stream
            return
        self._close_engine()
        if decision.reason in ("guard_error", "timeout"):
            self._state = _FAILED
            self.decision = decision
            cls = GuardTimeout if decision.reason == "timeout" else GuardUnavailable
            raise cls(f"guard could not answer and the policy fails closed: {decision.error}", decision)
        self._state = _VIOLATED
        self.decision = decision
        raise GuardViolation(decision)

    def _violation(self, decision: Decision) -> GuardViolation:
        self._state = _VIOLATED
        self.decision = decision
        self._emit(decision)
        self._close_engine()
        return GuardViolation(decision)

    def _fail(self, error: BaseException, *, release: bool = True) -> str:
        """A guard error mid-stream: fail closed (raise) or fail open (release the rest unchecked)."""
        if isinstance(error, (GuardViolation, StreamClosed)):
            raise error
        decision = self.policy.decide_error(Stage.STREAM, error, timeout=isinstance(error, GuardTimeout))
        self._emit(decision)
        if not decision.allowed:
            self._state = _FAILED
            self.decision = decision
            self._close_engine()
            cls = GuardTimeout if decision.reason == "timeout" else GuardUnavailable
            raise cls(f"the stream guard failed and the policy fails closed: {decision.error}", decision) from error
        self._degrade(decision)
        return self._release_all() if release else ""

    def _degrade(self, decision: Decision) -> None:
        self.decision = decision
        self._degraded = True
        self._close_engine()

    def _decide_flag(self, verdict: Verdict, offset: int) -> str | None:
        """Policy on a flagged span; raises GuardViolation when it blocks."""
        decision = replace(self.policy.decide(verdict, Stage.STREAM), offset=offset)
        if not decision.allowed:
            raise self._violation(decision)
        self.flags.append(decision)
        self._emit(decision)
        return None

    def _emit_final(self) -> None:
        if self.decision is None and not self.flags:
            model = getattr(self.stream_backend or self.guard.backend, "name", None)
            self._emit(Decision(True, Action.ALLOW, Stage.STREAM, "safe", Verdict(Risk.SAFE, model=model)))

    # -- token engine (Stream model) -------------------------------------------------------------
    def _absorb_tokens(self, verdicts: Sequence[Any]) -> str:
        """Debounce each token in order; release what holdback allows. Raises on a blocking flag."""
        if not verdicts:
            return ""
        recent = self._recent
        push = self._debounce.push
        for v in verdicts:
            recent.append((v.index, v.start))
            flag = push(v.risk)
            if flag is not None:
                self._on_token_flag(flag, v)
        self._tokens.extend(verdicts)
        last = verdicts[-1]
        self._scored = last.index + 1
        self._scored_end = last.end
        if self.holdback == 0:
            return self._release_to(self._scored_end)
        if self._scored < self.holdback:
            return ""
        return self._release_to(recent[-self.holdback][1])

    def _on_token_flag(self, flag: Flag, v: Any) -> None:
        offset = next((start for index, start in self._recent if index == flag.start), v.start)
        verdict = Verdict(
            flag.risk,
            (v.category,) if v.category else (),
            None,
            f"stream tokens {flag.start}..{flag.index}: {flag.risk.value}",
            0.0,
            getattr(self.stream_backend, "name", None),
            v.probs,
        )
        self._decide_flag(verdict, offset)

    def _close_engine(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except Exception:  # noqa: BLE001 - closing must not mask the outcome
                pass
        pending = getattr(self, "_pending", None)  # Gen-window checks in flight (futures or tasks)
        while pending:
            pending.popleft()[2].cancel()

    def close(self) -> None:
        """Stop: free the session, cancel pending checks. Unreleased text stays unreleased."""
        if self._state == _OPEN:
            self._state = _CLOSED
        self._close_engine()


# ================================================================================================
# Gen-window fallback: segments, windows, in-order results. Shared by both monitors.
# ================================================================================================
class _Windows:
    """Cuts the text into segments and builds the bounded window each segment is checked in."""

    def __init__(self, core: _MonitorCore) -> None:
        self.core = core
        self.check_every, self.min_segment, self.context = core._window_opts
        self.unsubmitted = ""  # text after `submitted`
        self.submitted = 0  # chars handed to checks
        self.confirmed = 0  # chars whose windows all came back safe (contiguous from 0)
        self.tail = ""  # the last `context` chars before `submitted`
        self.timeout = core.policy.timeout_for(Stage.STREAM)

    def add(self, delta: str) -> list[tuple[int, int, list[dict[str, str]]]]:
        """Append text; return the (start, end, conversation) checks that are due now."""
        self.unsubmitted += delta
        due = []
        while (cut := self._cut()) > 0:
            due.append(self._take(cut))
        return due

    def rest(self) -> list[tuple[int, int, list[dict[str, str]]]]:
        """The final segment at finish (whitespace-only text needs no check)."""
        if not self.unsubmitted:
            return []
        if not self.unsubmitted.strip():
            self.submitted += len(self.unsubmitted)
            self.unsubmitted = ""
            return []
        return [self._take(len(self.unsubmitted))]

    def _cut(self) -> int:
        text = self.unsubmitted
        if len(text) < self.min_segment:
            return 0
        limit = min(len(text), self.check_every)
        end = 0
        for m in _SENTENCE_END.finditer(text, 0, limit + 1):
            if m.end() >= self.min_segment:
                end = m.end()
        if end:
            return end
        if len(text) < self.check_every:
            return 0
        space = text.rfind(" ", self.min_segment, self.check_every)
        return space if space > 0 else self.check_every

    def _take(self, cut: int) -> tuple[int, int, list[dict[str, str]]]:
        segment, self.unsubmitted = self.unsubmitted[:cut], self.unsubmitted[cut:]
        start = self.submitted
        self.submitted += cut
        window = self.tail + segment
        self.tail = window[-self.context :] if self.context else ""
        conversation = [*self.core.messages, {"role": "assistant", "content": window}]
        return start, start + cut, conversation

    def settle(self, start: int, end: int, outcome: Any) -> None:
        """One window's result, in order: advance `confirmed`, or flag / fail via the core."""
        core = self.core
        if isinstance(outcome, Verdict):
            if not outcome.is_safe:
                core._decide_flag(outcome, start)
            self.confirmed = end
        else:
            error = outcome if isinstance(outcome, BaseException) else QwenGuardError(str(outcome))
            core._fail(error, release=False)  # raises when failing closed; else the caller releases all

    def release(self) -> str:
        core = self.core
        if core.holdback == 0:
            return core._release_all()
        return core._release_to(self.confirmed)


def _window_check(backend: Any, conversation: list[dict[str, str]], timeout: float | None) -> Any:
    try:
        return backend.classify([conversation], timeout=timeout)[0]
    except Exception as exc:  # noqa: BLE001 - any backend failure is the policy's on_error
        return exc


async def _awindow_check(backend: Any, conversation: list[dict[str, str]], timeout: float | None) -> Any:
    try:
        if timeout is not None:
            return (await asyncio.wait_for(backend.aclassify([conversation], timeout=timeout), timeout))[0]
        return (await backend.aclassify([conversation], timeout=timeout))[0]
    except asyncio.TimeoutError:
        return GuardTimeout(f"stream window check took longer than {timeout}s")
    except Exception as exc:  # noqa: BLE001
        return exc


# ================================================================================================
# The sync monitor
# ================================================================================================
class StreamMonitor(_MonitorCore):
    """Moderates one streamed answer; `feed` returns what is safe to release. See the module docs.

    Opened by `Guard.stream`: the prompt is screened at once (a blocked prompt raises there).
    """

    def __init__(self, guard: Any, prompt: str | Sequence[Message], **options: Any) -> None:
        super().__init__(guard, prompt, **options)
        self._windows: _Windows | None = None
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
            self._windows = _Windows(self)

    # -- feeding --------------------------------------------------------------------------------
    def feed(self, delta: str) -> str:
        """Add the next piece of the answer; return the text that may be released now.

        Raises `GuardViolation` (stage stream, offset set) when the guard blocks the answer."""
        delta = _check_delta(delta)
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
        self._state = _FINISHED
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
            fut = _pool().submit(_window_check, self.guard.backend, conversation, windows.timeout)
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
class AsyncStreamMonitor(_MonitorCore):
    """Async twin of `StreamMonitor`: ``async with guard.astream(prompt) as m: await m.afeed(delta)``.

    The prompt is screened when the monitor is entered (or on the first `afeed`). Stream-model
    forwards run in a worker thread so the event loop never blocks on torch.
    """

    def __init__(self, guard: Any, prompt: str | Sequence[Message], **options: Any) -> None:
        super().__init__(guard, prompt, **options)
        self._windows: _Windows | None = None
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
            self._windows = _Windows(self)
        return self

    async def afeed(self, delta: str) -> str:
        """Async twin of `StreamMonitor.feed`."""
        delta = _check_delta(delta)
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
        self._state = _FINISHED
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
                if aclose is not None and self._state != _FINISHED:
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
            task = asyncio.ensure_future(_awindow_check(self.guard.backend, conversation, windows.timeout))
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
