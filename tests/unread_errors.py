"""The errors nobody read, as the running event loop reports them: for the tests of abandoned runs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any


@contextlib.asynccontextmanager
async def unread_errors() -> AsyncIterator[list[str]]:
    """The loop's reports ("Task exception was never retrieved"...) while the block ran and its leftovers were
    collected, each with its error and task. Earlier tests' garbage is collected first: openai's async HTTP client
    closes itself from ``__del__`` with a task on whatever loop is running, and one left by a test whose loop is
    closed failed here with "Event loop is closed" (the intermittent CI failure of notes 53-55, not this code's)."""
    gc.collect()
    for _ in range(3):
        await asyncio.sleep(0)
    unread: list[str] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unread.append(_described(context)))
    try:
        yield unread
        for _ in range(5):  # tasks end, and are collected, a few loop turns later
            await asyncio.sleep(0.01)
            gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)


def _described(context: dict[str, Any]) -> str:
    task = context.get("task") or context.get("future")
    return f"{context.get('message')}: {context.get('exception')!r} in {task!r}"
