"""A deadline for blocking socket sends: one shared thread shuts a socket down when a send on it outlives
its deadline, so the blocked call returns at once with an error.

Why: a sync WebSocket ``send`` blocks while the peer does not read and the socket buffers are full, with
no timeout of its own. A server that sends its replies ahead of time and stops reading (a hostile or
broken replica) could hold a sync stream call past any deadline, one small frame after another. Arming
the watchdog costs a lock and a dict entry per send; the thread sleeps until the earliest deadline of
the sends in progress (usually none).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["send_deadline", "shutdown_socket"]


def shutdown_socket(sock: Any) -> None:
    """Shut a socket down: any call blocked on it returns at once with an error."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


class _Watchdog:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """A fresh state (also in a forked child: the parent's lock may have been held at the fork)."""
        self._cv = threading.Condition()
        self._armed: dict[int, tuple[float, Any]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, sock: Any, at: float) -> int:
        with self._cv:
            self._start()
            key = next(self._ids)
            earliest = min((a for a, _ in self._armed.values()), default=None)
            self._armed[key] = (at, sock)
            if earliest is None or at < earliest:
                self._cv.notify()
            return key

    def disarm(self, key: int) -> None:
        with self._cv:
            self._armed.pop(key, None)  # the thread finds out when it wakes; no need to wake it

    def _start(self) -> None:
        # Started on first use (and in a forked child, whose state `_reset` cleared).
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="qwenguard-send-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._cv:
            while True:
                if not self._armed:
                    self._cv.wait()
                    continue
                key, (at, sock) = min(self._armed.items(), key=lambda item: item[1][0])
                left = at - time.monotonic()
                if left > 0:
                    self._cv.wait(left)
                    continue
                del self._armed[key]
                shutdown_socket(sock)


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_WATCHDOG._reset)


@contextlib.contextmanager
def send_deadline(sock: Any, at: float | None) -> Iterator[None]:
    """Within the block, a send blocked on ``sock`` past ``at`` (``time.monotonic()``) is cut off by shutting
    the socket down. ``None``: no deadline."""
    if at is None:
        yield
        return
    key = _WATCHDOG.arm(sock, at)
    try:
        yield
    finally:
        _WATCHDOG.disarm(key)
