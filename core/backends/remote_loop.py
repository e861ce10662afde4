"""One private event loop thread per remote client, so its sync and async callers share one connection pool.

An ``httpx.AsyncClient`` belongs to the event loop that first used it. A client used from many loops
(``asyncio.run`` per request, one loop per worker thread, sync callers) would otherwise need a pool per
loop, each holding connections that nobody closes. Here all I/O runs on the client's own loop: sync
callers wait on a `concurrent.futures.Future`, async callers await it (cancelling the caller cancels
the request, which closes its connection), and the deadline of every call is enforced on that loop,
where cancelling a request really stops it (a blocked sync socket read cannot be interrupted).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from .after_fork import fork_safe_lock

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread; `submit` runs a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._closed = False
        self._lock = fork_safe_lock(self, "_lock")
        self._pid = os.getpid()

    @property
    def inherited(self) -> bool:
        """Whether this process is a fork of the one that started the thread: it has no such thread here
        (a coroutine submitted would never run), only a copy of the loop's state."""
        return os.getpid() != self._pid

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coro`` on the loop. Cancelling the returned future cancels the coroutine."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, cleanup: Callable[[], Awaitable[None]] | None = None, timeout: float = 5.0) -> None:
        """Run ``cleanup`` on the loop, cancel what still runs, stop the loop and join its thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.inherited:
            return  # the thread and its connections are the parent's: nothing of them runs here
        if threading.current_thread() is self._thread:  # pragma: no cover - a close from inside a request
            self.loop.call_soon(self.loop.stop)
            return

        async def shutdown() -> None:
            if cleanup is not None:
                try:
                    await cleanup()
                except Exception:  # noqa: BLE001 - closing must not fail
                    pass
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout)
            except Exception:  # noqa: BLE001 - a stuck cleanup must not keep the thread alive
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
