"""Run a LangGraph graph to its end in every stream mode named, sync or async, and keep what each stream item
showed, as text: the tests of what a graph writes past the guard assert on it in characters."""

from __future__ import annotations

import asyncio
from typing import Any

from qwenguard.core import GuardViolation


def streamed(
    graph: Any, inputs: Any, config: Any, mode: str, modes: list[str], stops: type[Exception] = GuardViolation
) -> tuple[list[str], Exception | None]:
    """Every item of the ``modes`` streams as its repr, and the error of type ``stops`` the run ended with (``None``
    if none; by default the guard's stop); ``mode`` is ``"sync"`` (``graph.stream``) or anything else
    (``graph.astream`` on a new event loop)."""
    seen: list[str] = []

    async def drain() -> None:
        async for item in graph.astream(inputs, config, stream_mode=modes):
            seen.append(repr(item))

    try:
        if mode == "sync":
            seen.extend(repr(item) for item in graph.stream(inputs, config, stream_mode=modes))
        else:
            asyncio.run(drain())
    except stops as error:
        return seen, error
    return seen, None
