"""The input check beside the model (``parallel_input``): what waits for its verdict.

The model starts while its input is checked. Its answer may be judged meanwhile, but nothing of it goes out
before the input's verdict; a blocked input stops the model's stream (sync: at its next chunk; async: at
once, the read in flight is cancelled) and is what is reported, even when the answer failed too.
Used by `GuardRunnable` and `GuardedChatModel`.

A runnable that is more than a model (an agent, a chain with tools) runs with a callback handler that stops it at
its next step once the verdict blocks, and holds every tool until the verdict is in (`stopping`):
a sync ``invoke`` cannot be cancelled, and an agent's tools act on the world before its answer is returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler, BaseCallbackManager
from qwenguard.core import Guard
from qwenguard.core.streaming.parallel import PendingCheck

from ._logs import quiet_guard_stops
from ._messages import Item
from ._screening import ascreen, raise_first, screen

__all__ = [
    "start_input",
    "astart_input",
    "answer_beside",
    "aanswer_beside",
    "input_first",
    "ainput_first",
    "until_blocked",
    "auntil_blocked",
    "after_verdict",
    "aafter_verdict",
    "stopping",
]

T = TypeVar("T")


def start_input(guard: Guard, items: Sequence[Item], *, parallel: bool) -> PendingCheck | None:
    """Screen ``items`` (the model's input) now, raising when blocked; or, with ``parallel``, start their
    check beside the model and return it."""
    if parallel and items:
        return PendingCheck.start(lambda: screen(guard, items))
    raise_first(items, screen(guard, items))
    return None


async def astart_input(guard: Guard, items: Sequence[Item], *, parallel: bool) -> PendingCheck | None:
    """Async twin of `start_input` (the check beside the model is a task on the running loop; a sync tool called on
    the loop's thread before its verdict judges the input itself)."""
    if parallel and items:
        return PendingCheck.start_async(ascreen(guard, items), on_loop=lambda: screen(guard, items))
    raise_first(items, await ascreen(guard, items))
    return None


class _InputBlockStop(BaseCallbackHandler):
    """Raises the input's block at the run's next step (a chain, model or retriever starting, a token) once the
    verdict is back: a look, never a wait (it runs inline, on an event loop's thread too). Free once passed."""

    raise_error = True  # LangChain re-raises a handler's error: the step does not run
    run_inline = True

    def __init__(self, pending: PendingCheck) -> None:
        self.pending = pending

    def _step(self, *args: Any, **kwargs: Any) -> None:
        if not self.pending.passed and self.pending.done():
            self.pending.wait()  # done: returns at once, or raises the block

    on_chain_start = on_chat_model_start = on_llm_start = on_retriever_start = on_llm_new_token = _step
    on_tool_start = _step


class _ToolWait(BaseCallbackHandler):
    """Holds a tool until the input's verdict is in (raises it when it blocks): nothing acts on a prompt the guard
    has not allowed. For sync dispatch: a sync run's tool, or a sync tool called from async code (its thread is the
    loop's: the input is judged there, `PendingCheck.start_async`). Async dispatch runs inline handlers first, so
    `_AsyncToolWait` has awaited the verdict before this one runs (off the loop) and finds it in. Tool events only."""

    raise_error = True
    run_inline = False
    ignore_llm = ignore_chain = ignore_retriever = ignore_chat_model = ignore_custom_event = ignore_retry = True

    def __init__(self, pending: PendingCheck) -> None:
        self.pending = pending

    def on_tool_start(self, *args: Any, **kwargs: Any) -> None:
        if not self.pending.passed:
            self.pending.wait()


class _AsyncToolWait(AsyncCallbackHandler):
    """`_ToolWait` for an async run's tool: awaits the verdict on the loop. (A sync handler there would be run on
    the loop's default executor and hold one of its threads per waiting tool: enough concurrent runs filled it,
    and every ``asyncio.to_thread`` in the process, the guard's own off-loop work too, queued behind them.) Acts
    only on a check that is a task of the running loop; `_ToolWait`, after it, covers any other."""

    raise_error = True
    run_inline = True
    ignore_llm = ignore_chain = ignore_retriever = ignore_chat_model = ignore_custom_event = ignore_retry = True

    def __init__(self, pending: PendingCheck) -> None:
        self.pending = pending

    async def on_tool_start(self, *args: Any, **kwargs: Any) -> None:
        if not self.pending.passed and self.pending.on_running_loop():
            await self.pending.wait_async()


M = TypeVar("M", bound=BaseCallbackManager)


def stopping(callbacks: M, pending: PendingCheck | None) -> M:
    """``callbacks`` (the runnable's child manager) with `_InputBlockStop` and the tool waits for every run under it,
    when a check is pending. (LangChain's log line for the stop they raise is moved to DEBUG, as for the guard's
    handlers.) For sync and async runs alike."""
    if pending is not None:
        # The async wait only for an async run's check (in a sync run LangChain would make two event loops per
        # tool call to run it, for nothing: rt52e F8).
        waits = (_AsyncToolWait(pending), _ToolWait(pending)) if pending.on_running_loop() else (_ToolWait(pending),)
        for handler in (_InputBlockStop(pending), *waits):
            quiet_guard_stops(type(handler).__name__)
            callbacks.add_handler(handler, inherit=True)
    return callbacks


def answer_beside(call: Callable[[], T], pending: PendingCheck | None) -> T:
    """``call()`` (the model's whole answer) with the input's check ``pending`` beside it (``None``: the input
    was judged before): returned only once the input is allowed; a blocked input is what is raised."""
    try:
        answer = call()
    except Exception as error:
        if pending is not None:
            input_first(pending, error)
        raise
    if pending is not None:
        pending.wait()  # the answer is never returned, nor judged, before the input is allowed
    return answer


async def aanswer_beside(call: Awaitable[T], pending: PendingCheck | None) -> T:
    """Async twin of `answer_beside`: a blocking verdict cancels the call at once."""
    try:
        return await (call if pending is None else pending.guard(call))
    except Exception as error:
        if pending is not None:
            await ainput_first(pending, error)
        raise


def input_first(pending: PendingCheck, error: Exception) -> None:
    """``error`` ended the answer while the input verdict was pending: a blocked input is what is reported."""
    if pending.passed:
        return
    try:
        pending.wait()
    except Exception as blocked:
        if blocked is not error:
            raise blocked from None


async def ainput_first(pending: PendingCheck, error: Exception) -> None:
    """Async twin of `input_first`."""
    if pending.passed:
        return
    try:
        await pending.wait_async()
    except Exception as blocked:
        if blocked is not error:
            raise blocked from None


def until_blocked(upstream: Iterator[Any], pending: PendingCheck) -> Iterator[Any]:
    """The runnable's chunks; once the input verdict is back blocking, the next read raises (and closes it)."""
    try:
        for chunk in upstream:
            if not pending.passed and pending.done():
                pending.wait()
            yield chunk
    finally:
        close = getattr(upstream, "close", None)
        if close is not None:
            close()


async def auntil_blocked(upstream: AsyncIterator[Any], pending: PendingCheck) -> AsyncIterator[Any]:
    """Async twin: each read races the pending verdict, so a blocking one cancels the read in flight."""
    reader = upstream.__aiter__()
    try:
        while True:
            try:
                if pending.passed:
                    chunk = await reader.__anext__()
                else:
                    chunk = await pending.guard(reader.__anext__(), wait=False)
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        aclose = getattr(reader, "aclose", None)
        if aclose is not None:
            await aclose()


def after_verdict(output: Iterator[Any], pending: PendingCheck) -> Iterator[Any]:
    """Pass ``output`` on only once the input is allowed (an empty answer still waits for it)."""
    try:
        for chunk in output:
            if not pending.passed:
                pending.wait()
            yield chunk
        if not pending.passed:
            pending.wait()
    except Exception as error:
        input_first(pending, error)
        raise
    finally:
        close = getattr(output, "close", None)
        if close is not None:
            close()


async def aafter_verdict(output: AsyncIterator[Any], pending: PendingCheck) -> AsyncIterator[Any]:
    """Async twin of `after_verdict`."""
    try:
        async for chunk in output:
            if not pending.passed:
                await pending.wait_async()
            yield chunk
        if not pending.passed:
            await pending.wait_async()
    except Exception as error:
        await ainput_first(pending, error)
        raise
    finally:
        aclose = getattr(output, "aclose", None)
        if aclose is not None:
            await aclose()
        if not pending.done():
            pending.cancel()  # the consumer stopped reading before the verdict: nobody needs it
