"""Running `Item`s through a Guard (one batch, sync and async) and naming what blocked.

Shared by the callback handlers, the agent middleware and the runnables so that all of them decide
the same way: every item of one step goes to the guard as one batch (`Guard.check_many`), and the
first blocking decision, in message order, is the one reported.
"""

from __future__ import annotations

from collections.abc import Sequence

from qwenguard.core import Decision, Guard, enforce

from .._common import require_guard
from ._messages import Item

__all__ = ["screen", "ascreen", "first_blocked", "raise_first", "blocked_pairs", "require_guard", "METADATA_KEY"]

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
