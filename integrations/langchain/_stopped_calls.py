"""`StoppedCalls`: a model or tool call the guard stopped stays stopped when a middleware outside it retries it.

``ModelRetryMiddleware`` or ``ToolRetryMiddleware`` listed before `GuardMiddleware` wraps it: with
``exit_behavior="error"`` it takes the guard's `GuardViolation` for a failure and calls the guarded step
again with the same request. The model would be asked again (a jailbreak gets more tries at an answer the
guard misses); a tool whose result was blocked would run again, its side effects repeated (an e-mail sent
three times). The guard remembers the requests it stopped (weakly, a bounded number) and gives the same
request the same stop at once, without calling the model or the tool. ``ModelFallbackMiddleware`` calls it
again with ``request.override(model=backup)``: a new request, for the same agent step (the same state), and the
backup's answer was taken for the step the guard stopped (rt61d F2). A model call's stop is kept for its step too
(`watching`'s ``step``): any model asked again in that step gets the same stop.

A guard that could not answer on a tool's result (`GuardUnavailable`, `GuardTimeout`, the policy failing closed) is
not a stop a retry must get again: the guard may answer now. But the tool had run, and a retry ran it again, once per
attempt (rt66e F1). The result is kept for the request (`keep_result`): its retry judges that result again
(`result_of`), the tool not run.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qwenguard.core import GuardViolation

from .._common import Bounded

__all__ = ["StoppedCalls"]

#: Stops remembered per middleware; the oldest go first (a retry comes right after its stop).
DEFAULT_SIZE = 1024

#: Unjudged tool results held per middleware (`keep_result`): each holds the tool's whole result.
RESULT_SIZE = 64

#: Stopped steps remembered per middleware (each holds its state object: a few).
STEP_SIZE = 32


class StoppedCalls:
    """The requests a guard stopped, by identity: ``with stopped.watching(request): ...``."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._stops: Bounded[int, tuple[weakref.ref[object], GuardViolation]] = Bounded(size)
        # The agent steps a model call was stopped in, by their state object (``request.state``: ``override``'s
        # copies share it; every node run reads a new one). Held, not weakly (a dict cannot be): a few, so that an
        # id is not reused while it is here; a later step has another state and is judged as any.
        self._steps: Bounded[int, tuple[object, GuardViolation]] = Bounded(STEP_SIZE)
        # The results the guard could not judge, by their request (its retry judges the result again): a few, the
        # requests of an outage, each dropped when its retry ends (`forget_result`).
        self._results: Bounded[int, tuple[weakref.ref[object], object]] = Bounded(RESULT_SIZE)

    def earlier(self, request: object) -> GuardViolation | None:
        """The stop this very request got before, if any (a dead entry under a reused id is not it)."""
        entry = self._stops.get(id(request))
        return entry[1] if entry is not None and entry[0]() is request else None

    def remember(self, request: object, stop: GuardViolation) -> None:
        self._stops[id(request)] = (weakref.ref(request), stop)

    def keep_result(self, request: object, result: object) -> None:
        """The tool ran for ``request`` and the guard could not judge its ``result``: a retry judges it again."""
        self._results[id(request)] = (weakref.ref(request), result)

    def result_of(self, request: object) -> object | None:
        """The result kept for this very request (`keep_result`), if any."""
        entry = self._results.get(id(request))
        return entry[1] if entry is not None and entry[0]() is request else None

    def forget_result(self, request: object) -> None:
        if self.result_of(request) is not None:
            self._results.pop(id(request))

    def retried(self, request: object) -> bool:
        """Was this very request stopped here before, or its result left unjudged? (A retry around the middleware.)"""
        return self.earlier(request) is not None or self.result_of(request) is not None

    @contextmanager
    def watching(self, request: object, step: Any = None) -> Iterator[None]:
        """Run a guarded step for ``request``: a request stopped before gets that stop again at once; a
        `GuardViolation` raised now is remembered. (`GuardUnavailable` is not: a guard that could not answer
        may answer on a retry.) ``step``: the agent step a model call answers (its state): a stop is kept for
        every model call of that step, whatever model a middleware outside puts in; not for a tool
        call (the calls of one step run side by side, each judged apart)."""
        stop = self.earlier(request)
        if stop is None and step is not None and (entry := self._steps.get(id(step))) is not None:
            stop = entry[1] if entry[0] is step else None
        if stop is not None:
            raise stop
        try:
            yield
        except GuardViolation as violation:
            self.remember(request, violation)
            if step is not None:
                self._steps[id(step)] = (step, violation)
            raise
