"""`GenSession`: incremental Gen checks of one growing conversation on a local `TransformersGen`.

A streamed answer judged chunk by chunk is the same guard prompt again and again, a little longer each
time. A session keeps the keys and values of its last prompt (`gen_engine.SessionState`); the next
check rolls them back to the longest common token prefix with the new prompt and runs only the rest:
the new text, the closing instructions and the verdict. The cost of a check is then flat in the length
of the answer, where a full check re-reads the instructions and the whole answer every time.

Same outcomes as ``backend.classify([conversation])``: the conversation is planned into the same
windows (`formats.windows`), the same verdicts are parsed and combined; only the first window is decoded
through the session's cache (a long text's later windows and forged-turn windows run as ordinary rows
of the same batch). Steps go through the backend's micro-batcher like any check: one worker thread owns
the model, and session steps share forwards with other checks and other sessions.

One session per conversation, used by one caller at a time (sync calls are serialised by a lock, async
ones by an asyncio lock). A call that times out withdraws its step and starts the next one from a fresh
cache. A backend without the engine (``engine=False``, or a model it cannot run) answers every call
with a full ``classify``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, cast

from ..errors import GuardTimeout
from .base import Outcome
from .gen_engine import SessionState, SessionStep

__all__ = ["GenSession"]


class GenSession:
    """Incremental checks of one growing conversation on ``backend`` (a `TransformersGen`).

    >>> session = GenSession(guard.backend)                                          # doctest: +SKIP
    >>> session.classify([{"role": "user", "content": q}, {"role": "assistant", "content": "So far"}])  # doctest: +SKIP
    Verdict(risk=<Risk.SAFE: 'safe'>, ...)
    """

    def __init__(self, backend: Any, siblings: list[SessionState] | None = None) -> None:
        self.backend = backend
        # Sessions over one text (a stream's windows) share a list: a fresh one starts from the others' caches.
        self._siblings = siblings
        self._state = SessionState(siblings)
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._closed = False
        self.steps = 0  # checks answered through the session's cache (observable, for tests and figures)

    @property
    def incremental(self) -> bool:
        """Whether checks reuse the cache (the backend has the decode engine)."""
        return getattr(self.backend, "engine", None) is not None and not self._closed

    def _items(self, flat: list[list[int]]) -> list[Any]:
        if not flat or not self.incremental:
            return list(flat)
        self.steps += 1
        return [SessionStep(self._state, flat[0]), *flat[1:]]

    def _lost(self, future: Future[Any] | None) -> None:
        """A step whose outcome is unknown: withdraw it; the next check starts from a fresh cache."""
        if future is not None:
            future.cancel()
        self._replace_state()

    def _replace_state(self, *, shared: bool = True) -> None:
        """A fresh state (listed with the siblings when ``shared``); the old one leaves the list."""
        old, self._state = self._state, SessionState(self._siblings if shared else None)
        if self._siblings is not None:
            try:
                self._siblings.remove(old)
            except ValueError:
                pass

    def classify(self, conversation: Sequence[dict[str, str]], *, timeout: float | None = None) -> Outcome:
        """The verdict on ``conversation`` (or its `QwenGuardError`), as ``backend.classify`` gives it.

        Raises `GuardTimeout` past ``timeout`` seconds, like ``classify``."""
        if not self.incremental:
            return cast(Outcome, self.backend.classify([conversation], timeout=timeout)[0])
        from .transformers_gen import _time_left

        backend = self.backend
        with self._lock:
            start = time.perf_counter()
            deadline = None if timeout is None else time.monotonic() + timeout
            flat, spans = backend._plan_waiting([conversation], deadline, timeout)
            future = None
            try:
                future = backend._batcher.submit(self._items(flat))
                outputs = future.result(_time_left(deadline, timeout))
            except BaseException as exc:
                self._lost(future)
                if isinstance(exc, (GuardTimeout, TimeoutError)):
                    raise GuardTimeout(f"guard did not answer within {timeout} s") from None
                raise
            return cast(Outcome, backend._assemble(spans, outputs, (time.perf_counter() - start) * 1000)[0])

    async def aclassify(self, conversation: Sequence[dict[str, str]], *, timeout: float | None = None) -> Outcome:
        """Async twin of `classify`: planning (tokenizing) in a worker thread, the model in the batcher."""
        if not self.incremental:
            return cast(Outcome, (await self.backend.aclassify([conversation], timeout=timeout))[0])
        from .transformers_gen import _time_left

        backend = self.backend
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            start = time.perf_counter()
            deadline = None if timeout is None else time.monotonic() + timeout
            future = None
            try:
                flat, spans = await backend._aplan_waiting([conversation], deadline, timeout)
                future = backend._batcher.submit(self._items(flat))
                outputs = await asyncio.wait_for(asyncio.wrap_future(future), _time_left(deadline, timeout))
            except BaseException as exc:  # a timeout, a failed forward, or this task cancelled
                self._lost(future)
                if isinstance(exc, (asyncio.TimeoutError, GuardTimeout)):
                    raise GuardTimeout(f"guard did not answer within {timeout} s") from None
                raise
            return cast(Outcome, backend._assemble(spans, outputs, (time.perf_counter() - start) * 1000)[0])

    def close(self) -> None:
        """Free the cache; later calls run full checks. Never waits: a step in flight finishes on its own."""
        self._closed = True
        self._replace_state(shared=False)  # a closed session lends its cache to no one
