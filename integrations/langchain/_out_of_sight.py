"""Running a model out of sight of the caller's callbacks, whatever wraps it.

A held model (`GuardedChatModel`, the middleware's model call) runs the real model with no callbacks, so its
raw stream reaches no handler, tracer or ``astream_events`` consumer. Passing an empty callback manager is not
enough once the model is a `RunnableBinding` (``bind_tools``, ``with_structured_output``, ``bind``,
``with_retry``): the binding merges its config with the *ambient* one (langchain-core's context variable
``var_child_runnable_config``, the caller's run config), and merging callback managers adds the caller's
handlers back. So the model runs in a context where that variable is unset, with the caller's config passed
on explicitly less its callbacks (`config_without_callbacks`). A held tool (`_held_tool.py`) runs the same way,
and with LangGraph's writer of a running tool's partial output unset: the stream's handler sets it when it hears
the run start, which the guard tells it before the tool runs.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

T = TypeVar("T")

#: What a model call keeps of the caller's config: what it is configured with, not who listens to it.
_PASSED_ON = ("configurable", "metadata", "recursion_limit", "max_concurrency")


def config_without_callbacks(**ours: Any) -> RunnableConfig:
    """The caller's config (``configurable`` fields, metadata, limits) with ``ours`` (callbacks, tags) instead
    of its callbacks, tags and run identity."""
    parent: dict[str, Any] = dict(var_child_runnable_config.get() or {})
    config: dict[str, Any] = {k: parent[k] for k in _PASSED_ON if parent.get(k) is not None}
    config.update(ours)
    return config  # type: ignore[return-value]


def _tool_output_writer() -> contextvars.ContextVar[Any] | None:
    """LangGraph's writer of a running tool's partial output (``stream_mode="tools"``), where it has one: set
    by the stream's handler when a tool's run starts."""
    try:
        from langgraph.pregel._tools import _tool_call_writer
    except ImportError:  # a LangGraph without the "tools" stream mode
        return None
    return _tool_call_writer


_HEARD: tuple[contextvars.ContextVar[Any], ...] = tuple(
    var for var in (var_child_runnable_config, _tool_output_writer()) if var is not None
)


def _context() -> contextvars.Context:
    context = contextvars.copy_context()
    for var in _HEARD:
        context.run(var.set, None)
    return context


def call(make: Callable[[], T]) -> T:
    """``make()`` out of sight (a model's ``invoke``)."""
    return _context().run(make)


def acall(make: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
    """``make()`` (a coroutine: a model's ``ainvoke``) as a task out of sight; await it or cancel it."""
    return _context().run(lambda: asyncio.ensure_future(make()))


def stream(make: Callable[[], Iterator[T]]) -> Iterator[T]:
    """``make()`` (a model's ``stream``), every step of it out of sight: a generator runs its body when it is
    advanced, in the context of whoever advances it."""
    context = _context()
    iterator = context.run(make)
    try:
        while True:
            try:
                item = context.run(next, iterator)
            except StopIteration:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            context.run(close)


async def astream(make: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
    """Async twin of `stream` (a model's ``astream``): each step runs as a task created out of sight."""
    context = _context()
    iterator = context.run(make)
    try:
        while True:
            try:
                item = await context.run(lambda: asyncio.ensure_future(iterator.__anext__()))
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await context.run(lambda: asyncio.ensure_future(aclose()))
