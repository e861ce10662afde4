"""Running `Item`s through a Guard (one batch, sync and async) and naming what blocked.

Shared by the callback handlers, the agent middleware and the runnables so that all of them decide
the same way: every item of one step goes to the guard as one batch (`Guard.check_many`), and the
first blocking decision, in message order, is the one reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage
from qwenguard.core import Decision, Guard, enforce

from .._common import require_guard
from ._messages import Item

__all__ = [
    "screen",
    "ascreen",
    "first_blocked",
    "raise_first",
    "blocked_pairs",
    "require_guard",
    "METADATA_KEY",
    "built_off_loop",
]

T = TypeVar("T")

#: Messages and characters an async call reads on the event loop at most to build its checks; a larger input is
#: read on a worker thread (a client's 10,000-turn history held the loop 0.3-1.7 s, rt51b F7).
OFF_LOOP_SIZE = 20_000

#: Key under which a Decision is attached to message / document metadata.
METADATA_KEY = "qwenguard"


def screen(guard: Guard, items: Sequence[Item]) -> list[Decision]:
    """One Decision per item, in order, from one batched guard call."""
    return guard.check_many([item.pair for item in items]) if items else []


async def ascreen(guard: Guard, items: Sequence[Item]) -> list[Decision]:
    """Async twin of `screen`."""
    return await guard.acheck_many([item.pair for item in items]) if items else []


def blocked_pairs(items: Sequence[Item], decisions: Sequence[Decision]) -> list[tuple[Item, Decision]]:
    return [(item, d) for item, d in zip(items, decisions) if not d.allowed]


def first_blocked(items: Sequence[Item], decisions: Sequence[Decision]) -> tuple[Item, Decision] | None:
    pairs = blocked_pairs(items, decisions)
    return pairs[0] if pairs else None


def raise_first(items: Sequence[Item], decisions: Sequence[Decision]) -> None:
    """Enforce the first blocking decision, in message order (raises `GuardViolation`); nothing if none."""
    found = first_blocked(items, decisions)
    if found is not None:
        enforce(found[1])


def _size(value: Any, budget: int) -> int:
    """Messages, items and characters in ``value``, counted until past ``budget``."""
    total, stack = 0, [value]
    while stack and total <= budget:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, BaseMessage):
            total += 1
            stack.append(item.content)
        elif isinstance(item, dict):
            total += 1
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            total += 1
            stack.extend(item)
        else:
            total += 1
    return total


async def built_off_loop(make: Callable[[], T], value: Any) -> T:
    """``make()`` (an async call's checks built from ``value``): on a worker thread when ``value`` is large, so that
    reading a long history never holds the event loop; on the loop otherwise (a thread hop costs more there)."""
    if _size(value, OFF_LOOP_SIZE) > OFF_LOOP_SIZE:
        return await asyncio.to_thread(make)
    return make()
