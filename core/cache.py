"""A small thread-safe LRU cache of verdicts, keyed by model + stage + conversation."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from .verdict import Verdict

__all__ = ["VerdictCache", "cache_key"]


def cache_key(model: str, stage: str, conversation: Sequence[dict[str, str]]) -> Hashable:
    """A hashable key for one check. Plain tuples, not JSON: this runs once per streamed chunk, and
    hashing the strings costs a fraction of serialising them."""
    return (model, stage, tuple((m["role"], m["content"]) for m in conversation))


class VerdictCache:
    """LRU map of verdicts. ``maxsize=0`` disables it. ``hits``/``misses`` are counted for figures."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Verdict] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Verdict | None:
        if self.maxsize <= 0:
            return None
        with self._lock:
            verdict = self._data.get(key)
            if verdict is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return verdict

    def put(self, key: Hashable, verdict: Verdict) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._data[key] = verdict
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
