"""How the streaming paths end the asyncio tasks they start.

Two rules, one place:

- `mark_read`: a task whose caller went away (a client that disconnected, a race it lost) may end in an error
  nobody awaits; asyncio would log "Task exception was never retrieved" when it is collected, a line a client
  can repeat at will in the operator's log. Added as a done callback it marks the error read; whoever awaits
  the task still gets it.
- `landed`: after cancelling a task, wait until it has finished, even when this wait is cancelled in turn (a
  consumer dropping the stream just as the guard stopped it). The task is often a step of an async generator;
  until the step has finished, the generator is "already running" and cannot be closed: closing it raised
  ``RuntimeError`` in place of the consumer's ``CancelledError`` and left the closing to garbage collection.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["mark_read", "landed"]


def mark_read(task: asyncio.Future[Any]) -> None:
    """Mark ``task``'s error read (a done callback); a cancelled task has none."""
    if not task.cancelled():
        task.exception()


async def landed(task: asyncio.Future[Any]) -> None:
    """Wait for ``task`` (already cancelled, or ending) to finish. A cancel of this wait cancels ``task`` again and
    is raised once ``task`` has finished."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
            task.cancel()
    if cancelled:
        raise asyncio.CancelledError
