"""What both framework integrations share."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

from qwenguard.core import Guard

__all__ = ["Bounded", "IDENTIFIER", "require_guard"]

#: An id or label a provider class sends that is no text a model reads as words (up to 64 letters, digits, ``_.:-``):
#: a tool call's id, a content block's type.
IDENTIFIER = re.compile(r"[\w.:-]{1,64}")

K = TypeVar("K")
V = TypeVar("V")


def require_guard(guard: object) -> Guard:
    """``guard`` itself, or a clear `TypeError` when it is not a `qwenguard.core.Guard`."""
    if not isinstance(guard, Guard):
        raise TypeError(
            f"guard must be a qwenguard.core.Guard (e.g. Guard.from_pretrained('demo')), got {type(guard).__name__}"
        )
    return guard


class Bounded(Generic[K, V]):
    """A map that forgets its oldest entries past ``maxsize``: per-event state of a handler shared by every
    request, whose end event may never come (a stream nobody reads to the end, a cancelled request). Read with
    `get` only: another request may evict an entry between a membership test and an index."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._data.get(key, default)

    def pop(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            return self._data.pop(key, default)

    def keys(self) -> list[K]:
        """The keys now, oldest first (a copy: entries may go while the caller reads it)."""
        with self._lock:
            return list(self._data)
