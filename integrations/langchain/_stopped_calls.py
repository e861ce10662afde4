"""`StoppedCalls`: a model or tool call the guard stopped stays stopped when a middleware outside it retries it.

``ModelRetryMiddleware`` or ``ToolRetryMiddleware`` listed before `GuardMiddleware` wraps it: with
``exit_behavior="error"`` it takes the guard's `GuardViolation` for a failure and calls the guarded step
again with the same request. The model would be asked again (a jailbreak gets more tries at an answer the
guard misses); a tool whose result was blocked would run again, its side effects repeated (an e-mail sent
three times). The guard remembers the requests it stopped (weakly, a bounded number) and gives the same
request the same stop at once, without calling the model or the tool. A new request (a fallback model put
in by ``override``) is judged as any.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from qwenguard.core import GuardViolation

from .._common import Bounded

__all__ = ["StoppedCalls"]

#: Stops remembered per middleware; the oldest go first (a retry comes right after its stop).
DEFAULT_SIZE = 1024


class StoppedCalls:
    """The requests a guard stopped, by identity: ``with stopped.watching(request): ...``."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._stops: Bounded[int, tuple[weakref.ref[object], GuardViolation]] = Bounded(size)

    def earlier(self, request: object) -> GuardViolation | None:
        """The stop this very request got before, if any (a dead entry under a reused id is not it)."""
        entry = self._stops.get(id(request))
        return entry[1] if entry is not None and entry[0]() is request else None

    def remember(self, request: object, stop: GuardViolation) -> None:
        self._stops[id(request)] = (weakref.ref(request), stop)

    @contextmanager
    def watching(self, request: object) -> Iterator[None]:
        """Run a guarded step for ``request``: a request stopped before gets that stop again at once; a
        `GuardViolation` raised now is remembered. (`GuardUnavailable` is not: a guard that could not answer
        may answer on a retry.)"""
        stop = self.earlier(request)
        if stop is not None:
            raise stop
        try:
            yield
        except GuardViolation as violation:
            self.remember(request, violation)
            raise
