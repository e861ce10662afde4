"""A small thread-safe LRU cache of verdicts, keyed by model + stage + a digest of the conversation.

Bounded twice: by entries (``maxsize``) and by bytes (``max_bytes``, what the entries hold: key and
verdict, the verdict's raw text included, and the verdicts beneath it). Keys hold a 16-byte BLAKE2b digest of the
conversation, not the conversation itself, so a cached 1 MB document costs a few hundred bytes, not 1 MB.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence

from .backends.after_fork import fork_safe_lock
from .policy import require_count
from .verdict import Verdict

__all__ = ["VerdictCache", "cache_key", "DEFAULT_CACHE_SIZE", "DEFAULT_CACHE_BYTES"]

DEFAULT_CACHE_SIZE = 4096
#: 16 MiB. A typical entry (digest key, two-line verdict) is ~1 KB, so the entry bound binds first;
#: the byte bound stops verdicts with long raw texts (a windowed document joins one answer per window).
DEFAULT_CACHE_BYTES = 16 * 1024 * 1024

# What an entry costs beyond the strings counted one by one: the OrderedDict slot, the key tuple,
# the Verdict object and its probabilities.
_ENTRY_OVERHEAD = 600
# What each verdict beneath it (`Verdict.beneath`) costs beyond its strings: its object and its probabilities.
_BENEATH_OVERHEAD = 400


def cache_key(model: str, stage: str, conversation: Sequence[Mapping[str, str]]) -> Hashable:
    """A hashable key for one check: ``(model, stage, digest)``. Roles and contents are length-prefixed
    before hashing, so no two different conversations feed the hash the same bytes."""
    h = hashlib.blake2b(digest_size=16)
    for m in conversation:
        for part in (m["role"], m["content"]):
            data = part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return (model, stage, h.digest())


def _strings_bytes(verdict: Verdict) -> int:
    return sys.getsizeof(verdict.raw) + sum(sys.getsizeof(c) for c in verdict.categories)


def _entry_bytes(key: Hashable, verdict: Verdict) -> int:
    """What an entry holds: its key, the verdict and those beneath it (`Verdict.beneath`: of a text judged in
    windows, the answers of the windows below its risk, joined again: up to as much raw text as its own)."""
    size = _ENTRY_OVERHEAD + _strings_bytes(verdict)
    below = verdict.beneath
    while below is not None:
        size += _BENEATH_OVERHEAD + _strings_bytes(below)
        below = below.beneath
    parts = key if isinstance(key, tuple) else (key,)
    return size + sum(sys.getsizeof(p) for p in parts)


class VerdictCache:
    """LRU map of verdicts. ``maxsize=0`` disables it. ``hits``/``misses`` are counted for figures;
    ``nbytes`` is what the entries hold, never more than ``max_bytes``. After `close` it holds nothing."""

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE, *, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        # Named as the Guard's options: a Guard passes cache_size and cache_bytes here.
        require_count("cache_size", maxsize, 0)
        require_count("cache_bytes", max_bytes, 0)
        self.maxsize = maxsize if max_bytes > 0 else 0
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._data: OrderedDict[Hashable, tuple[Verdict, int]] = OrderedDict()
        self._lock = fork_safe_lock(self, "_lock")  # a forked child (gunicorn --preload) gets a fresh one
        self.hits = 0
        self.misses = 0
        self.closed = False

    def get(self, key: Hashable) -> Verdict | None:
        if self.maxsize <= 0 or self.closed:
            return None
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, verdict: Verdict) -> None:
        if self.maxsize <= 0:
            return
        size = _entry_bytes(key, verdict)
        if size > self.max_bytes:
            return  # larger than the whole cache: not worth evicting everything else for
        with self._lock:
            if self.closed:
                return  # a check in flight at close: its verdict must not outlive the guard's close
            old = self._data.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._data[key] = (verdict, size)
            self.nbytes += size
            while len(self._data) > self.maxsize or self.nbytes > self.max_bytes:
                _, (_, dropped) = self._data.popitem(last=False)
                self.nbytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.nbytes = 0

    def close(self) -> None:
        """Drop every entry; from now on `get` finds nothing and `put` stores nothing (a check that was in
        flight when its guard closed cannot put its verdict back, for a server holding the guard to answer)."""
        with self._lock:
            self.closed = True
            self._data.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._data)
