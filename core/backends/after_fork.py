"""Locks a forked child gets anew (gunicorn ``--preload``, multiprocessing's "fork" start method).

A thread of the parent may hold a lock at the moment of the fork; the child has a copy of it, held, and no
thread that would ever release it: its first call would wait forever. `fork_safe_lock` makes a lock that the
child replaces with a fresh one. (What a lock guards is the owner's to make sense of in the child: remote
clients start their own loop thread there, `OpenAIGen._start`.) A thread pool copied into a child has no
workers but believes it has idle ones, and never runs what it is given: `ForkSafePool` makes its pool anew there.
"""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

__all__ = ["fork_safe_lock", "ForkSafePool"]

#: Each owner and the names of its locks to renew in a child.
_OWNERS: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()


def fork_safe_lock(owner: object, name: str) -> threading.Lock:
    """A new lock, to be stored as ``owner.<name>``; a forked child finds a fresh one there."""
    _OWNERS.setdefault(owner, set()).add(name)
    return threading.Lock()


class ForkSafePool:
    """A thread pool made on first use (`get`), and anew in a forked child."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self.max_workers, self.thread_name_prefix = max_workers, thread_name_prefix
        self._pool: ThreadPoolExecutor | None = None
        self._lock = fork_safe_lock(self, "_lock")
        _POOLS.add(self)

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix=self.thread_name_prefix)
            return self._pool


_POOLS: weakref.WeakSet[ForkSafePool] = weakref.WeakSet()


def _renew_in_child() -> None:
    for owner, names in list(_OWNERS.items()):
        for name in names:
            setattr(owner, name, threading.Lock())
    for pool in list(_POOLS):
        pool._pool = None  # the parent's workers are not in this process


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_renew_in_child)
