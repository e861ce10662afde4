"""Locks a forked child gets anew (gunicorn ``--preload``, multiprocessing's "fork" start method).

A thread of the parent may hold a lock at the moment of the fork; the child has a copy of it, held, and no
thread that would ever release it: its first call would wait forever. `fork_safe_lock` makes a lock that the
child replaces with a fresh one. (What a lock guards is the owner's to make sense of in the child: remote
clients start their own loop thread there, `OpenAIGen._start`.)
"""

from __future__ import annotations

import os
import threading
import weakref

__all__ = ["fork_safe_lock"]

#: Each owner and the names of its locks to renew in a child.
_OWNERS: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()


def fork_safe_lock(owner: object, name: str) -> threading.Lock:
    """A new lock, to be stored as ``owner.<name>``; a forked child finds a fresh one there."""
    _OWNERS.setdefault(owner, set()).add(name)
    return threading.Lock()


def _renew_in_child() -> None:
    for owner, names in list(_OWNERS.items()):
        for name in names:
            setattr(owner, name, threading.Lock())


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_renew_in_child)
