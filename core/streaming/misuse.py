"""Hints for a stream monitor used in the other flavour's code: the async API asked of a sync monitor (or
the reverse) raises a `TypeError` that says which monitor to use, instead of an `AttributeError`.

Mixed into the local monitors (`monitor.StreamMonitor`, `monitor.AsyncStreamMonitor`) and the remote ones
(`backends.remote_stream`), after their own bases: a monitor's own methods always come first."""

from __future__ import annotations

from typing import Any

SYNC_IN_ASYNC = (
    "guard.stream() returns a sync stream monitor (feed, finish, wrap; `with`); in async code use "
    "`async with guard.astream(prompt) as monitor:` and `await monitor.afeed(delta)`"
)
ASYNC_IN_SYNC = (
    "guard.astream() returns an async stream monitor: use `async with guard.astream(prompt) as monitor:` "
    "and `await monitor.afeed(delta)`, or guard.stream() for a sync monitor (`with`, feed, finish)"
)


class SyncOnly:
    """A sync monitor: its async twins raise the hint."""

    def afeed(self, delta: str) -> Any:
        raise TypeError(SYNC_IN_ASYNC)

    def afinish(self) -> Any:
        raise TypeError(SYNC_IN_ASYNC)

    def awrap(self, deltas: Any) -> Any:
        raise TypeError(SYNC_IN_ASYNC)

    def __aenter__(self) -> Any:
        _close(self)  # it may be open already (the prompt screened): nothing of it is used
        raise TypeError(SYNC_IN_ASYNC)

    def __aexit__(self, *exc: object) -> Any:  # pragma: no cover - __aenter__ raised
        raise TypeError(SYNC_IN_ASYNC)


class AsyncOnly:
    """An async monitor: its sync twins raise the hint."""

    def __enter__(self) -> Any:
        _close(self)
        raise TypeError(ASYNC_IN_SYNC)

    def __exit__(self, *exc: object) -> Any:  # pragma: no cover - __enter__ raised
        raise TypeError(ASYNC_IN_SYNC)

    def feed(self, delta: str) -> Any:
        raise TypeError(ASYNC_IN_SYNC)

    def finish(self) -> Any:
        raise TypeError(ASYNC_IN_SYNC)

    def wrap(self, deltas: Any) -> Any:
        raise TypeError(ASYNC_IN_SYNC)


def _close(monitor: object) -> None:
    close = getattr(monitor, "close", None)
    if close is not None:
        close()
