"""The reading work of an async call, run on a worker thread when what it reads is large (both integrations).

Building a call's checks reads its input and its answer: the messages by role, the answer's parsed readings (a JSON
or YAML answer's escapes decoded, up to 0.2 s for a 200,000-character answer), the actions a component parses out of
it, a tool's output and nodes, a long history (a client's 10,000-turn history held the loop 0.3-1.7 s, rt51b F7). On
the event loop that work holds every other request of the process; `off_loop` runs it on a worker thread
(``asyncio.to_thread``, which runs it in a copy of the caller's context: the context variables a call is judged
under are read there as set) when the values it reads are large, and on the loop otherwise, where a thread hop costs
more than the reading. The sync paths read where they run.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["OFF_LOOP_SIZE", "off_loop", "size"]

T = TypeVar("T")

#: Characters and items an async call reads on the event loop at most to build its checks; past it, the reading runs
#: on a worker thread.
OFF_LOOP_SIZE = 20_000

_SCALARS = frozenset({int, float, bool, type(None)})


def size(value: Any, budget: int) -> int:
    """Characters and items in ``value``, counted until past ``budget`` (a bound check: a huge value stops it early).
    Strings and bytes count their length; every field of a pydantic model (a message, a document, a node, a
    response: an artifact, metadata) and of a dataclass (a LangGraph ``Command``, a ``ModelResponse``) counts: the
    guard reads them too (4,000 documents of 200 metadata entries counted 4,000, and were read on the loop for a
    second, rt55b F4); and the keys and items of mappings and collections; anything else counts one. This runs on the
    loop: the common types are tested first, and the others' kind is remembered per class (a tool's artifact of
    15,000 objects of one class was sized at 1.3 us an object, asking each the same questions)."""
    total, stack = 0, [value]
    while stack and total <= budget:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bytes:
            total += len(item)
            continue
        total += 1
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif kind in _SCALARS:
            continue
        else:
            shape = _SHAPES.get(kind) or _shape(kind)
            if shape is _TEXT:
                total += len(item) - 1
            elif shape is _MODEL:
                stack.extend(getattr(item, "__dict__", {}).values())
            elif shape is _MAPPING:
                stack.extend(item.keys())
                stack.extend(item.values())
            elif shape is _COLLECTION:
                stack.extend(item)
            elif shape is _DATACLASS:
                stack.extend(getattr(item, f.name, None) for f in dataclasses.fields(item))
    return total


# How `size` walks an object of a class other than the common ones (remembered per class, up to `_MAX_SHAPES`).
_TEXT, _MODEL, _MAPPING, _COLLECTION, _DATACLASS, _OPAQUE = "text", "model", "mapping", "collection", "dataclass", "one"
_SHAPES: dict[type, str] = {}
_MAX_SHAPES = 1_000


def _shape(kind: type) -> str:
    if issubclass(kind, (str, bytes, bytearray)):
        shape = _TEXT
    elif issubclass(kind, BaseModel):
        shape = _MODEL
    elif issubclass(kind, Mapping):
        shape = _MAPPING
    elif issubclass(kind, (list, tuple, set, frozenset)):
        shape = _COLLECTION
    elif dataclasses.is_dataclass(kind) and not issubclass(kind, type):
        shape = _DATACLASS
    else:
        shape = _OPAQUE
    if len(_SHAPES) < _MAX_SHAPES:  # classes made at run time are not kept without bound
        _SHAPES[kind] = shape
    return shape


async def off_loop(make: Callable[[], T], *values: Any) -> T:
    """``make()``, which reads ``values``: on a worker thread when they are large (`OFF_LOOP_SIZE`), else here."""
    if size(values, OFF_LOOP_SIZE) > OFF_LOOP_SIZE:
        return await asyncio.to_thread(make)
    return make()
