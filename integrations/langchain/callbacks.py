"""`GuardCallbackHandler` / `AsyncGuardCallbackHandler`: the drop-in guard for any chain, model or agent.

Pass it in the *config* of the outermost call::

    agent.stream(inputs, config={"callbacks": [GuardCallbackHandler(guard)]}, stream_mode="messages")

Why there, and why these settings (shared/research/langchain.md §1): a callback can only observe or
abort, and it aborts only with ``raise_error=True``. ``run_inline=True`` makes the async manager await
it *before* LangGraph's own streaming handler, which LangGraph appends after the config's handlers;
a handler attached to the model (``ChatX(callbacks=[...])``) runs after LangGraph's and leaks the
chunk. Use the sync handler with sync calls (``invoke``/``stream``) and the async handler with async
calls: an async handler driven by a sync call is run later in another loop and LangChain swallows its
exceptions, so it could not stop anything.

What is screened, and when (each raises `GuardViolation`, or `GuardUnavailable` when the guard could
not answer and the policy fails closed):

- ``on_chat_model_start`` / ``on_llm_start`` — before the model runs: new user turns as prompts, new
  tool messages as untrusted content (system messages are the application's own and are skipped).
- ``on_llm_new_token`` (classic streaming, LangGraph ``stream_mode="messages"``) and
  ``on_stream_event`` (``stream_events(version="v3")``) — each text chunk is judged before it is
  yielded (see ``_streaming.py``): the consumer never receives the chunk where a violation starts.
- ``on_llm_end`` — the whole answer when nothing streamed, and every tool call the answer asks for.
- ``on_tool_start`` — the tool call (name + arguments) before the tool runs; ``on_tool_end`` — its
  result (the tool has run; the result is stopped before anything reads it).
- ``on_retriever_end`` — retrieved documents (a callback cannot drop documents: use
  `GuardDocumentCompressor` / `GuardedRetriever` to filter instead of abort).

One handler serves any number of concurrent runs: state is keyed by ``run_id`` and dropped when the
run ends or fails.

Parallel input screening (``parallel_input=True``, or a `Guard` built with ``parallel_input=True``):
``on_chat_model_start`` starts the input check in the background and returns, so the model call
starts at once. The first hook where output would leave — ``on_llm_new_token``, ``on_stream_event``,
``on_llm_end`` — waits for the verdict and raises if the input is blocked: no token reaches the
consumer, and raising in the first token callback also stops the model's stream (the provider
stops generating when the stream is closed). ``on_tool_start`` waits for every input check still
pending on this handler, so a tool running beside the model (``RunnableParallel``) cannot run on a
blocked input either. A non-streaming call cannot be interrupted from a callback: its answer is
discarded when the input is blocked.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from qwenguard.core import Decision, Guard, Stage, enforce
from qwenguard.core.formats.conversations import tool_call_conversation, untrusted_conversation
from qwenguard.core.streaming.parallel import PendingCheck

from ._messages import (
    DEFAULT_HISTORY_TURNS,
    Item,
    guard_history,
    message_text,
    output_items,
    pending_inputs,
    prompt_items,
)
from ._screening import ascreen, first_blocked, require_guard, screen
from ._streaming import DEFAULT_WINDOW_CHARS, Engine, GateScreen, MonitorScreen, open_screen

__all__ = ["GuardCallbackHandler", "AsyncGuardCallbackHandler"]

#: How many tool-call contexts to remember between ``on_llm_end`` and ``on_tool_start``.
_MAX_TOOL_CONTEXTS = 1024


class _Run:
    """What one model/tool/retriever run needs between its events."""

    __slots__ = ("context", "screen", "streamed", "tool", "query", "pending")

    def __init__(self, context: list[dict[str, str]] | None = None) -> None:
        self.context = context or []
        self.pending: PendingCheck | None = None  # the input verdict, with parallel_input
        self.screen: GateScreen | MonitorScreen | None = None
        self.streamed = False
        self.tool: str | None = None
        self.query: str | None = None


class _GuardHandlerLogic:
    """The decisions, written once; the sync and async handlers only differ in how they call the guard."""

    raise_error: bool = True
    run_inline: bool = True

    def __init__(
        self,
        guard: Guard,
        *,
        check_input: bool = True,
        check_output: bool = True,
        check_stream: bool = True,
        check_tool_calls: bool = True,
        check_tool_results: bool = True,
        check_retrieval: bool = True,
        history_turns: int = DEFAULT_HISTORY_TURNS,
        window_chars: int = DEFAULT_WINDOW_CHARS,
        min_chars: int = 1,
        stream_engine: Engine = "gate",
        monitor_options: dict[str, Any] | None = None,
        parallel_input: bool | None = None,
    ) -> None:
        if stream_engine not in ("gate", "monitor"):
            raise ValueError(f"stream_engine must be 'gate' or 'monitor', got {stream_engine!r}")
        self.guard = require_guard(guard)
        # None: follow the guard (Guard(..., parallel_input=True) turns it on everywhere).
        self.parallel_input = guard.parallel_input if parallel_input is None else bool(parallel_input)
        self.stream_engine: Engine = stream_engine
        # A callback cannot hold text back: release at once, and flag on the first unsafe token.
        self.monitor_options = {"holdback": 0, "window": 1, **(monitor_options or {})}
        self.check_input = check_input
        self.check_output = check_output
        self.check_stream = check_stream
        self.check_tool_calls = check_tool_calls
        self.check_tool_results = check_tool_results
        self.check_retrieval = check_retrieval
        self.history_turns = history_turns
        self.window_chars = window_chars
        self.min_chars = min_chars
        self._runs: dict[UUID, _Run] = {}
        self._tool_contexts: OrderedDict[str, list[dict[str, str]]] = OrderedDict()
        self._lock = threading.Lock()

    # -- per-run state --------------------------------------------------------------------------
    def _run(self, run_id: UUID) -> _Run:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                run = self._runs[run_id] = _Run()
            return run

    def _drop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is not None:
            if run.screen is not None:
                run.screen.close()
            if run.pending is not None and not run.pending.done():
                run.pending.cancel()
        return run

    @contextmanager
    def _dropped_on_error(self, run_id: UUID) -> Iterator[None]:
        """A start hook that raises gets no matching end/error event: forget the run here."""
        try:
            yield
        except BaseException:
            self._drop(run_id)
            raise

    @property
    def active_runs(self) -> int:
        """Runs with state held right now (0 once every run has ended or failed)."""
        return len(self._runs)

    def _remember_tool_context(self, items: Sequence[Item], context: list[dict[str, str]]) -> None:
        with self._lock:
            for item in items:
                call_id = (item.tool_call or {}).get("id")
                if call_id:
                    self._tool_contexts[call_id] = context
                    self._tool_contexts.move_to_end(call_id)
            while len(self._tool_contexts) > _MAX_TOOL_CONTEXTS:
                self._tool_contexts.popitem(last=False)

    def _tool_context(self, call_id: str | None) -> list[dict[str, str]]:
        with self._lock:
            return self._tool_contexts.pop(call_id, []) if call_id else []

    # -- parallel input screening ---------------------------------------------------------------
    def _pending(self, run_id: UUID) -> PendingCheck | None:
        """The input verdict this run still has to wait for (None once it passed)."""
        run = self._runs.get(run_id)
        if run is None or run.pending is None:
            return None
        if run.pending.passed:
            run.pending = None
            return None
        return run.pending

    def _pending_all(self) -> list[PendingCheck]:
        with self._lock:
            return [r.pending for r in self._runs.values() if r.pending is not None and not r.pending.passed]

    def _wait_input(self, run_id: UUID) -> None:
        pending = self._pending(run_id)
        if pending is not None:
            pending.wait()

    async def _await_input(self, run_id: UUID) -> None:
        pending = self._pending(run_id)
        if pending is not None:
            await pending.wait_async()

    # Here, not on the handler classes: the async handler answers sync dispatches with the sync hooks.
    def _start_input(self, items: list[Item], run_id: UUID) -> None:
        if self.parallel_input and items:
            guard = self.guard
            self._run(run_id).pending = PendingCheck.start(lambda: screen(guard, items))
            return
        with self._dropped_on_error(run_id):
            self._raise_first(items, screen(self.guard, items))

    async def _astart_input(self, items: list[Item], run_id: UUID) -> None:
        if self.parallel_input and items:
            self._run(run_id).pending = PendingCheck.start_async(ascreen(self.guard, items))
            return
        with self._dropped_on_error(run_id):
            self._raise_first(items, await ascreen(self.guard, items))

    # -- what to check (pure) -------------------------------------------------------------------
    def _chat_start_items(self, messages: list[list[BaseMessage]], run_id: UUID) -> list[Item]:
        items: list[Item] = []
        for batch in messages:
            for item in pending_inputs(batch, self.history_turns):
                if (item.stage is Stage.PROMPT and self.check_input) or (
                    item.stage is Stage.TOOL_RESULT and self.check_tool_results
                ):
                    items.append(item)
        self._run(run_id).context = guard_history(messages[0], self.history_turns) if messages else []
        return items

    def _llm_start_items(self, prompts: list[str], run_id: UUID) -> list[Item]:
        self._run(run_id).context = [{"role": "user", "content": prompts[0]}] if prompts else []
        return prompt_items(prompts) if self.check_input else []

    def _screen(self, run_id: UUID, *, asynchronous: bool) -> GateScreen | MonitorScreen | None:
        if not self.check_stream:
            return None
        run = self._run(run_id)
        run.streamed = True
        if run.screen is None:
            run.screen = open_screen(
                self.guard, run.context, self.stream_engine, asynchronous=asynchronous,
                window_chars=self.window_chars, min_chars=self.min_chars, monitor_options=self.monitor_options,
            )
        return run.screen

    def _end_items(self, response: LLMResult, run_id: UUID) -> tuple[_Run | None, list[Item]]:
        with self._lock:  # not `_drop`: the screen still has to finish
            run = self._runs.pop(run_id, None)
        context = run.context if run else []
        streamed = bool(run and run.streamed)
        items: list[Item] = []
        for generations in response.generations:
            for generation in generations:
                if isinstance(generation, ChatGeneration):
                    found = output_items(
                        generation.message,
                        context,
                        self.history_turns,
                        text=self.check_output and not streamed,
                        tool_calls=self.check_tool_calls,
                    )
                    self._remember_tool_context([i for i in found if i.stage is Stage.TOOL_CALL], context)
                    items.extend(found)
                elif self.check_output and not streamed and generation.text.strip():
                    items.extend(output_items(_text_message(generation.text), context, text=True, tool_calls=False))
        return run, items

    def _tool_start_item(self, serialized: Mapping[str, Any] | None, input_str: str, run_id: UUID,
                         inputs: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> Item | None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        run = self._run(run_id)
        run.tool = str(name)
        context = self._tool_context(kwargs.get("tool_call_id"))
        if not self.check_tool_calls:
            return None
        args: Mapping[str, Any] | str = inputs if inputs is not None else input_str
        return Item(Stage.TOOL_CALL, tool_call_conversation(run.tool, args, context), label=f"tool call {name}")

    def _tool_end_item(self, output: Any, run_id: UUID) -> Item | None:
        run = self._drop(run_id)
        if not self.check_tool_results:
            return None
        text = message_text(output) if isinstance(output, (BaseMessage, str)) else _plain_text(output)
        if not text or not text.strip():
            return None
        name = run.tool if run and run.tool else "tool"
        return Item(Stage.TOOL_RESULT, untrusted_conversation(text, "tool output"), label=f"tool result of {name}")

    def _retriever_end_items(self, documents: Sequence[Any], run_id: UUID) -> list[Item]:
        self._drop(run_id)
        if not self.check_retrieval:
            return []
        return [
            Item(Stage.RETRIEVAL, untrusted_conversation(doc.page_content, f"document {i}"), label=f"document {i}")
            for i, doc in enumerate(documents)
            if getattr(doc, "page_content", "").strip()
        ]

    @staticmethod
    def _raise_first(items: Sequence[Item], decisions: Sequence[Decision]) -> None:
        found = first_blocked(items, decisions)
        if found is not None:
            enforce(found[1])


def _text_message(text: str) -> BaseMessage:
    from langchain_core.messages import AIMessage

    return AIMessage(content=text)


def _plain_text(output: Any) -> str | None:
    """Tool outputs that are not text (a `Command`, an object) are not judged as text."""
    content = getattr(output, "content", None)
    if isinstance(content, (str, list)):
        return message_text(output)
    return None


def _token_text(token: Any, chunk: Any) -> str:
    message = getattr(chunk, "message", None)
    if message is not None:
        return message_text(message)
    if chunk is not None and isinstance(getattr(chunk, "text", None), str):
        return chunk.text
    return token if isinstance(token, str) else message_text(token)


def _event_text(event: Any) -> tuple[str, bool]:
    """``(text delta, final)`` of a v3 protocol event; ``final`` when a block or message completes
    (its finish event repeats the whole text, so nothing may remain unjudged by then)."""
    if not isinstance(event, Mapping):
        return "", False
    kind = event.get("event")
    if kind == "content-block-delta":
        delta = event.get("delta") or {}
        return (delta.get("text", "") if delta.get("type") == "text-delta" else ""), False
    return "", kind in ("content-block-finish", "message-finish")


class GuardCallbackHandler(_GuardHandlerLogic, BaseCallbackHandler):
    """Screens inputs, streamed tokens, answers, tool calls, tool results and documents; raises on a violation.

    >>> handler = GuardCallbackHandler(Guard.from_pretrained("demo"))                 # doctest: +SKIP
    >>> chain.invoke(inputs, config={"callbacks": [handler]})                        # doctest: +SKIP

    Sync: use with ``invoke``/``stream``/``batch``. With async calls it still works but runs the guard
    on the event loop; prefer `AsyncGuardCallbackHandler` there.

    Args:
        guard: the `qwenguard.core.Guard` (its `Policy` decides what blocks).
        check_input / check_output / check_stream / check_tool_calls / check_tool_results /
            check_retrieval: switch each screen off.
        history_turns: earlier user/assistant turns given to the guard as context.
        stream_engine: ``"gate"`` (default: every streamed chunk is judged before it is yielded; one
            Gen check per chunk over the last ``window_chars`` characters; ``min_chars`` batches tiny
            chunks) or ``"monitor"`` (a StreamMonitor per run, ``monitor_options`` passed to
            ``guard.stream``; cheaper with a Stream model, may raise a chunk late). See ``_streaming.py``.
        parallel_input: start the model while the input is checked; the first token, the answer
            and any tool wait for the verdict (default: the guard's ``parallel_input``).
    """

    raise_error: bool = True
    run_inline: bool = True

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *,
                            run_id: UUID, **kwargs: Any) -> None:
        self._start_input(self._chat_start_items(messages, run_id), run_id)

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        self._start_input(self._llm_start_items(prompts, run_id), run_id)

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        self._wait_input(run_id)
        text = _token_text(token, chunk)
        screen = self._screen(run_id, asynchronous=False)
        if screen is not None and text:
            screen.check(text)

    def on_stream_event(self, event: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._wait_input(run_id)
        text, final = _event_text(event)
        screen = self._screen(run_id, asynchronous=False)
        if screen is not None and (text or final):
            screen.check(text, final=final)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._dropped_on_error(run_id):
            self._wait_input(run_id)
        run, items = self._end_items(response, run_id)
        if run is not None and run.screen is not None:
            try:
                run.screen.check("", final=True)
            finally:
                run.screen.close()
        self._raise_first(items, screen(self.guard, items))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID,
                      inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for pending in self._pending_all():  # no tool runs before the input verdicts are in
            pending.wait()
        item = self._tool_start_item(serialized, input_str, run_id, inputs, kwargs)
        if item is not None:
            with self._dropped_on_error(run_id):
                self._raise_first([item], screen(self.guard, [item]))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        item = self._tool_end_item(output, run_id)
        if item is not None:
            self._raise_first([item], screen(self.guard, [item]))

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)

    def on_retriever_start(self, serialized: dict[str, Any], query: str, *, run_id: UUID, **kwargs: Any) -> None:
        self._run(run_id).query = query

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        items = self._retriever_end_items(documents, run_id)
        self._raise_first(items, screen(self.guard, items))

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)


_HOOKS = frozenset({
    "on_chat_model_start", "on_llm_start", "on_llm_new_token", "on_stream_event", "on_llm_end", "on_llm_error",
    "on_tool_start", "on_tool_end", "on_tool_error", "on_retriever_start", "on_retriever_end", "on_retriever_error",
})


def _dispatched_synchronously() -> bool:
    """Is LangChain's *sync* dispatcher (``handle_event``) asking for a hook?

    It runs an async hook later, in a throwaway event loop, and swallows what it raises (a documented
    asymmetry in langchain_core.callbacks.manager). That happens inside async runs too: a sync tool
    under ``ainvoke``/``astream`` runs ``tool.invoke`` in a worker thread. The async handler answers
    such requests with its sync twin, so a violation still stops the run.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True  # no loop in this thread: only the sync dispatcher can be calling
    frame = sys._getframe(2)  # 0: this function, 1: __getattribute__, 2: whoever looked the hook up
    return frame.f_code.co_name == "handle_event"


class AsyncGuardCallbackHandler(_GuardHandlerLogic, AsyncCallbackHandler):
    """Async twin of `GuardCallbackHandler`, for ``ainvoke``/``astream``/``astream_events``.

    The guard is awaited (the event loop keeps running). Where LangChain dispatches an event through
    its sync path inside an async run (a sync tool under ``ainvoke`` runs in a worker thread), the
    handler switches to the sync checks: an async hook would be run detached and its exception
    swallowed, so it could not stop the tool.
    """

    raise_error: bool = True
    run_inline: bool = True

    def __getattribute__(self, name: str) -> Any:
        if name in _HOOKS and _dispatched_synchronously():
            return getattr(GuardCallbackHandler, name).__get__(self)
        return super().__getattribute__(name)

    async def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *,
                                  run_id: UUID, **kwargs: Any) -> None:
        await self._astart_input(self._chat_start_items(messages, run_id), run_id)

    async def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                           **kwargs: Any) -> None:
        await self._astart_input(self._llm_start_items(prompts, run_id), run_id)

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        await self._await_input(run_id)
        text = _token_text(token, chunk)
        screen = self._screen(run_id, asynchronous=True)
        if screen is not None and text:
            await screen.acheck(text)

    async def on_stream_event(self, event: Any, *, run_id: UUID, **kwargs: Any) -> None:
        await self._await_input(run_id)
        text, final = _event_text(event)
        screen = self._screen(run_id, asynchronous=True)
        if screen is not None and (text or final):
            await screen.acheck(text, final=final)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._dropped_on_error(run_id):
            await self._await_input(run_id)
        run, items = self._end_items(response, run_id)
        if run is not None and run.screen is not None:
            try:
                await run.screen.acheck("", final=True)
            finally:
                run.screen.close()
        self._raise_first(items, await ascreen(self.guard, items))

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)

    async def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID,
                            inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for pending in self._pending_all():  # no tool runs before the input verdicts are in
            await pending.wait_async()
        item = self._tool_start_item(serialized, input_str, run_id, inputs, kwargs)
        if item is not None:
            with self._dropped_on_error(run_id):
                self._raise_first([item], await ascreen(self.guard, [item]))

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        item = self._tool_end_item(output, run_id)
        if item is not None:
            self._raise_first([item], await ascreen(self.guard, [item]))

    async def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)

    async def on_retriever_start(self, serialized: dict[str, Any], query: str, *, run_id: UUID,
                                 **kwargs: Any) -> None:
        self._run(run_id).query = query

    async def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        items = self._retriever_end_items(documents, run_id)
        self._raise_first(items, await ascreen(self.guard, items))

    async def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)
