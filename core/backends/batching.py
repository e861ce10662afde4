"""Micro-batching: concurrent checks coalesce into one padded forward.

One worker thread owns the model. Callers (threads or asyncio tasks) submit items and get a
`concurrent.futures.Future`; the worker takes the first waiting request, gathers more for up to
``max_wait_s`` or until ``max_batch`` items, runs them as one batch and hands each caller its slice.
Sync callers block on ``future.result(timeout)``; async callers await ``asyncio.wrap_future``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from ..errors import GuardTimeout, GuardUnavailable

__all__ = ["MicroBatcher", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_WAIT_S"]

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_WAIT_S = 0.004

_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Runs ``run_batch(items) -> results`` on a worker thread, coalescing concurrent submissions."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        name: str = "qwenguard-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[object] = queue.Queue()
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.batches_run = 0  # observable, for tests and figures

    def _ensure_worker(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                    self._thread.start()

    def submit(self, items: Sequence[T]) -> Future[list[R]]:
        if self._closed:
            raise GuardUnavailable("the guard backend is closed")
        future: Future[list[R]] = Future()
        if not items:
            future.set_result([])
            return future
        self._ensure_worker()
        self._queue.put((list(items), future))
        return future

    def run(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Submit and wait (sync). Raises `GuardTimeout` past ``timeout`` seconds."""
        future = self.submit(items)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise GuardTimeout(f"guard did not answer within {timeout} s") from None

    async def arun(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Submit and await (async). Raises `GuardTimeout` past ``timeout`` seconds."""
        future = self.submit(items)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise GuardTimeout(f"guard did not answer within {timeout} s") from None

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            pending = [first]
            size = len(first[0])  # type: ignore[index]
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)
                    break
                pending.append(nxt)
                size += len(nxt[0])  # type: ignore[index]
            self._run(pending)

    def _run(self, pending: list[object]) -> None:
        live = [(items, fut) for items, fut in pending if fut.set_running_or_notify_cancel()]  # type: ignore[misc]
        if not live:
            return
        flat = [item for items, _ in live for item in items]
        try:
            results = self._run_batch(flat)
            if len(results) != len(flat):
                raise RuntimeError(f"batch returned {len(results)} results for {len(flat)} items")
        except BaseException as exc:  # noqa: BLE001 - every caller must hear about the failure
            for _, fut in live:
                fut.set_exception(exc)
            return
        finally:
            self.batches_run += 1
        start = 0
        for items, fut in live:
            fut.set_result(results[start : start + len(items)])
            start += len(items)

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=5)
