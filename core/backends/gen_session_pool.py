"""`GenSessionPool`: a few `GenSession`s of one text, so that checks of it can run at once and still
pay only for what is new.

A `GenSession` serves one check at a time. A stream judged by checks that overlap (the stream monitors'
windows, the LangChain ``"pipelined"`` callback engine) takes an idle session from its pool or opens
another while under ``size``. The sessions share a sibling list
(`gen_engine.SessionState`): a session that starts, or falls behind, continues from a copy of the longest
prefix another one holds, so the user's request and the text judged so far are read once per stream, not
once per session.

``wait=True`` (default): until the first check is back no cache holds the request, so a check that
arrives meanwhile waits for it (bounded by its timeout) instead of reading everything again, and a check
that finds every session busy waits for one instead of running in full. On a machine whose forwards are
bound by arithmetic (a CPU) overlapping full checks finish no sooner than waiting ones and cost several
times the tokens (the callback engine over a 130-word answer on the demo: 9,400 tokens without waiting,
3,450 with, in the same time); ``wait=False`` runs them in full.

Memory: each session holds its last prompt's keys and values with room for twice the prompt
(``gen_engine``), about 112 KiB a token for Qwen3Guard-Gen-0.6B in bfloat16; all sessions of a backend
together hold at most its ``max_session_tokens`` positions (past it, checks run without a kept cache).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

from .base import Outcome
from .gen_engine import SessionState
from .gen_session import GenSession

__all__ = ["GenSessionPool", "SESSIONS_PER_STREAM"]

#: Sessions one stream's overlapping checks hold at most (the monitors' windows, the LangChain
#: ``"pipelined"`` engine): each keeps its own cache of the guard prompt, so memory per stream grows with
#: it; a check due while all are busy waits for one.
SESSIONS_PER_STREAM = 2


class GenSessionPool:
    """Up to ``size`` `GenSession`s of one text on ``backend`` (a `TransformersGen` with the engine).

    `classify` / `aclassify` answer like ``backend.classify([conversation])[0]`` (raising `GuardTimeout`
    past ``timeout``), through an idle session or a new one while under ``size``. When all are busy:
    with ``wait=True`` the first session given back (a full check if none is within the timeout), else
    a full check. ``wait=True`` also holds every check until the first is back (module docstring)."""

    def __init__(self, backend: Any, size: int, *, wait: bool = True) -> None:
        if size < 1:
            raise ValueError("a session pool holds at least one session")
        self.backend = backend
        self.size = size
        self.wait = wait
        self.sessions: list[GenSession] = []  # every session opened (closed together)
        self.siblings: list[SessionState] = []  # their engine states, shared with the engine
        self.full_checks = 0  # checks that ran without a session (observable, for tests and figures)
        self._idle: list[GenSession] = []
        self._changed = threading.Condition()  # a session given back, the first check back, or closed
        self._warm = False  # the first check is back
        self._closed = False
        self._achanged: asyncio.Event | None = None  # the async twin (a pool is used sync or async)

    @property
    def steps(self) -> int:
        """Checks answered through the sessions' caches."""
        return sum(session.steps for session in self.sessions)

    def _try_take(self) -> tuple[GenSession | None, bool, bool]:
        """(a session or None; whether it is the pool's first; whether to wait and ask again). Holds the lock."""
        if self._closed:
            return None, False, False
        if self._idle:
            return self._idle.pop(), False, False
        if self.wait and self.sessions and not self._warm:
            return None, False, True
        if len(self.sessions) < self.size:
            session = GenSession(self.backend, self.siblings)
            self.sessions.append(session)
            return session, len(self.sessions) == 1, False
        return None, False, self.wait

    def _take(self, timeout: float | None) -> tuple[GenSession | None, bool]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                session, first, wait = self._try_take()
                left = None if deadline is None else deadline - time.monotonic()
                if not wait or (left is not None and left <= 0):
                    break
                self._changed.wait(left)
            if session is None:
                self.full_checks += 1
            return session, first

    async def _atake(self, timeout: float | None) -> tuple[GenSession | None, bool]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._changed:
                session, first, wait = self._try_take()
            left = None if deadline is None else deadline - time.monotonic()
            if not wait or (left is not None and left <= 0):
                break
            if self._achanged is None:
                self._achanged = asyncio.Event()
            self._achanged.clear()  # no await since the check above: a give-back cannot be missed
            try:
                await asyncio.wait_for(self._achanged.wait(), left)
            except asyncio.TimeoutError:
                pass
        if session is None:
            self.full_checks += 1
        return session, first

    def _give_back(self, session: GenSession, first: bool) -> None:
        with self._changed:
            if not self._closed:
                self._idle.append(session)
            if first:
                self._warm = True
            self._changed.notify_all()
        if self._achanged is not None:
            self._achanged.set()

    def classify(self, conversation: Sequence[dict[str, str]], *, timeout: float | None = None) -> Outcome:
        started = time.monotonic()
        session, first = self._take(timeout)
        timeout = _left(timeout, started)
        if session is None:
            return cast(Outcome, self.backend.classify([conversation], timeout=timeout)[0])
        try:
            return session.classify(conversation, timeout=timeout)
        finally:
            self._give_back(session, first)

    async def aclassify(self, conversation: Sequence[dict[str, str]], *, timeout: float | None = None) -> Outcome:
        started = time.monotonic()
        session, first = await self._atake(timeout)
        timeout = _left(timeout, started)
        if session is None:
            return cast(Outcome, (await self.backend.aclassify([conversation], timeout=timeout))[0])
        try:
            return await session.aclassify(conversation, timeout=timeout)
        finally:
            self._give_back(session, first)

    def close(self) -> None:
        """Free every session's cache; later checks are full checks. Nothing waits for a closed pool."""
        with self._changed:
            self._closed = True
            sessions, self._idle = list(self.sessions), []
            self._changed.notify_all()
        if self._achanged is not None:
            self._achanged.set()
        for session in sessions:
            session.close()


def _left(timeout: float | None, started: float) -> float | None:
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
