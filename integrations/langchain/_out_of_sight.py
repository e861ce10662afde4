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

The caller's config is the ambient one, and the one given to the held model's own call over it (`call_config`;
`calling_with` for a stream): a model called directly (``guarded.invoke(x, config={"configurable": ...})``) sets no
ambient config, and its ``configurable`` fields were dropped for the model it wraps (rt52d F2).

Tracing turned on by the environment (``LANGSMITH_TRACING=true``) or by ``tracing_v2_enabled()`` is off out of
sight: langchain-core adds the tracer to every callback manager it configures, the empty one too, so the wrapped
run went to LangSmith as a trace of its own, the answer the guard blocked with it (rt52d F6). What the guard let
through is traced as the wrapper's own run. So is every handler a configure hook adds (langchain-core's
``register_configure_hook``: ``collect_runs()``'s run collector, ``get_usage_metadata_callback()``'s counter, a
third-party tracer set in a context variable): each is unset out of sight, and hears the wrapper's run only (before,
they recorded the real model's run with the blocked answer, and the usage counter counted each call twice: rt53a F2,
F9). A hook whose handler an environment variable creates (``register_configure_hook(var, ..., handle_class,
env_var)``, none in langchain-core) is process-wide and cannot be unset for one call: it still hears the real run.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.tracers.context import tracing_v2_callback_var
from qwenguard.core.streaming.task_ends import mark_read

try:  # every context variable langchain-core's CallbackManager.configure reads a handler from (a private list)
    from langchain_core.tracers.context import _configure_hooks
except ImportError:  # pragma: no cover - a langchain-core without configure hooks
    _configure_hooks = []

T = TypeVar("T")

#: What a model call keeps of the caller's config: what it is configured with, not who listens to it.
_PASSED_ON = ("configurable", "metadata", "recursion_limit", "max_concurrency")


#: The config the held model's own call was given (`calling_with`), beside the ambient one.
_CALL_CONFIG: contextvars.ContextVar[RunnableConfig | None] = contextvars.ContextVar(
    "qwenguard_call_config", default=None
)


def config_without_callbacks(**ours: Any) -> RunnableConfig:
    """The caller's config (``configurable`` fields, metadata, limits: the ambient one, the call's own over it)
    with ``ours`` (callbacks, tags) instead of its callbacks, tags and run identity."""
    parent: dict[str, Any] = {**(var_child_runnable_config.get() or {}), **(_CALL_CONFIG.get() or {})}
    config: dict[str, Any] = {k: parent[k] for k in _PASSED_ON if parent.get(k) is not None}
    config.update(ours)
    return config  # type: ignore[return-value]


@contextmanager
def call_config(config: RunnableConfig | None) -> Iterator[None]:
    """Around a held model's ``invoke`` / ``ainvoke``: `config_without_callbacks` reads ``config`` (what the call
    was given) over the ambient one."""
    token = _CALL_CONFIG.set(config)
    try:
        yield
    finally:
        _CALL_CONFIG.reset(token)


def calling_with(config: RunnableConfig | None) -> contextvars.Context:
    """`call_config` for a stream: a context to run each of its steps in (`run_in`), since a consumer may advance
    it from another context (a task per step)."""
    context = contextvars.copy_context()
    context.run(_CALL_CONFIG.set, config)
    return context


def _tool_output_writer() -> contextvars.ContextVar[Any] | None:
    """LangGraph's writer of a running tool's partial output (``stream_mode="tools"``), where it has one: set
    by the stream's handler when a tool's run starts."""
    try:
        from langgraph.pregel._tools import _tool_call_writer
    except ImportError:  # a LangGraph without the "tools" stream mode
        return None
    return _tool_call_writer


def _tracing_enabled() -> contextvars.ContextVar[Any] | None:
    """LangSmith's switch of tracing for the current context (what ``tracing_context(enabled=...)`` sets): it
    overrides the environment's ``LANGSMITH_TRACING``."""
    try:
        from langsmith import run_helpers
    except ImportError:  # no LangSmith: no tracer to switch off
        return None
    var = getattr(run_helpers, "_TRACING_ENABLED", None)
    return var if isinstance(var, contextvars.ContextVar) else None


#: What is unset out of sight (each variable with the value it gets there): the caller's config, the config of the
#: held call, LangGraph's tool output writer, a tracer set by ``tracing_v2_enabled()``, and tracing itself.
_UNHEARD: tuple[tuple[contextvars.ContextVar[Any], Any], ...] = tuple(
    (var, value)
    for var, value in (
        (var_child_runnable_config, None),
        (_CALL_CONFIG, None),
        (_tool_output_writer(), None),
        (tracing_v2_callback_var, None),
        (_tracing_enabled(), False),
    )
    if var is not None
)


def _hooked() -> list[contextvars.ContextVar[Any]]:
    """The configure hooks' variables set in this context (read at each call: a hook may be registered at any
    time, ``get_usage_metadata_callback()`` registers one each time it is entered)."""
    return [hook[0] for hook in list(_configure_hooks) if hook[0].get() is not None]


def _context() -> contextvars.Context:
    context = contextvars.copy_context()
    for var, value in _UNHEARD:
        context.run(var.set, value)
    for hooked in _hooked():
        context.run(hooked.set, None)
    return context


def run_in(context: contextvars.Context, make: Callable[[], Iterator[T]]) -> Iterator[T]:
    """``make()`` (a generator) with every step run in ``context``."""
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


async def arun_in(context: contextvars.Context, make: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
    """``make()`` (an async generator) with every step run in ``context``, as a task created there."""
    iterator = context.run(make)
    try:
        while True:
            try:
                item = await _started(context, iterator.__anext__)
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await _started(context, aclose)


def _started(context: contextvars.Context, make: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
    """``make()`` as a task created in ``context``. Its error is marked read: a consumer cancelled just as the step
    failed (a stream dropped as its input check raised) never awaits it, and asyncio logged "Task exception was never
    retrieved", a line per request."""
    task = context.run(lambda: asyncio.ensure_future(make()))
    task.add_done_callback(mark_read)
    return task


def call(make: Callable[[], T]) -> T:
    """``make()`` out of sight (a model's ``invoke``)."""
    return _context().run(make)


def acall(make: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
    """``make()`` (a coroutine: a model's ``ainvoke``) as a task out of sight; await it or cancel it."""
    return _context().run(lambda: asyncio.ensure_future(make()))


def stream(make: Callable[[], Iterator[T]]) -> Iterator[T]:
    """``make()`` (a model's ``stream``), every step of it out of sight: a generator runs its body when it is
    advanced, in the context of whoever advances it."""
    return run_in(_context(), make)


def astream(make: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
    """Async twin of `stream` (a model's ``astream``): each step runs as a task created out of sight."""
    return arun_in(_context(), make)
