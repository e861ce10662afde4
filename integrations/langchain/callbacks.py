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
  tool messages as untrusted content (system messages are the application's own and are skipped). A file that
  langchain-core's traced copy of the messages lost (`_file_traced_away`) is refused with `GuardUnavailable`. On a
  checkpointed thread a prompt it blocked stays in the state (LangGraph saved the input before the run raised) and
  every later model call there reads it: a callback cannot take it out, so each is refused, with a stop that says so
  and names the message to remove (`_told_apart`, rt64g F2).
- ``on_llm_new_token`` (classic streaming, LangGraph ``stream_mode="messages"``) and
  ``on_stream_event`` (``stream_events(version="v3")``; one of the two per run, never both: see
  ``_feed.py``) — the streamed text and each streamed tool call's arguments; a chunk (or finished block)
  that carries text the answer quotes (citations, server tool outputs: `source_text`) has it judged as
  untrusted content before the chunk goes on, in the stream's path. A callback cannot hold
  text back, only stall or stop the stream; the default engine (``"pipelined"``, see ``_streaming.py``)
  judges in the background and stops the stream one judge latency after unsafe words arrived, never
  letting more than ``max_unjudged`` characters out ahead of their verdict; ``stream_engine="gate"``
  judges every chunk before it is yielded, at the price of one guard call in the stream's path per
  chunk. To hold text until it is judged, use `GuardMiddleware` (agents) or `guard_output` (chains).
- ``on_llm_end`` — the whole answer when nothing streamed, what it quotes (`source_text`), and every tool
  call the answer asks for.
- ``on_chain_start`` — what a ``Command(resume=...)`` input answers an ``interrupt()`` with (`resume_values`), as a
  prompt, before anything runs (rt60b F3); the tool calls a ``Command`` input hands the tools (an AI message of its
  ``update``, its ``Send``s), each and all of them joined, before any of them runs (rt72b F1, F2).
- ``on_tool_start`` — the tool call (name + arguments) before the tool runs; a call no model this handler heard produced
  (``on_llm_end``, let through) where the tool runs (the LangGraph thread, else the LangGraph run, else the call it
  belongs to: `_scope`; ids repeat across users, stop 61) is the client's (a ``Command(goto="tools")`` or ``Send``
  input, an edited call): judged whatever ``check_tool_calls`` says, decided no looser than a prompt (rt60b F2).
  ``on_tool_end`` — every
  message its result writes (its ``ToolMessage`` with its artifact, a LangGraph ``Command``'s messages, a
  list of them; their names and worded ids), what a ``Command`` writes to other state keys and its ``Send``
  payloads (the tool has run; the result is stopped before anything reads it); ``on_tool_error`` — the
  error's text and what it carries that a ``handle_tool_errors`` callable may write (its cause and context
  chain, args, notes, public string attributes: `error_texts`); a ``ToolNode`` with ``handle_tool_errors``
  writes the guard's stop in its place. A handoff raised out of the tool (a sub-agent's
  ``Command(graph=Command.PARENT, ...)``: LangGraph's ``ParentCommand``, which it writes to the graph above) is the
  tool's output, read as ``on_tool_end`` reads a returned ``Command`` and stopped in its place; so is an ``interrupt()``
  raised out of the tool: its payload goes to the run's caller and the checkpointer, and is judged as the tool's
  output (`interrupt_text`, as `GuardMiddleware` does; rt60b N1), the guard's stop raised in its place. The message a ``ToolNode`` writes for a failed call is judged too, at
  the ``on_chain_end`` of the run the tool ran in (a callable can build it from anywhere: ``e.response.text``),
  before LangGraph's ``stream_mode="messages"`` emits it and before the model reads it (LangGraph has put a
  node's ``"updates"`` out before its end event: `GuardMiddleware`'s tool wrapper holds those).
- ``on_retriever_end`` — retrieved documents (a callback cannot drop documents: use
  `GuardDocumentCompressor` / `GuardedRetriever` to filter instead of abort).

Beside a `GuardMiddleware` or a `GuardedChatModel` on the same `Guard`, the model call they hold is not
judged again here (its stream and its answer: the same guard judged them before release; see `_note_held`);
its input and its tool calls at ``on_llm_end`` still are (verdicts the guard has cached), and so is every
other run: tool results at ``on_tool_end`` above all, which a hand-built graph streams before the model reads
them.

Its place among a run's handlers: first in the config's list, and first after langchain-core merges two callback
managers through a set (``with_retry``, a binding invoked with a node's config: `_handler_order`, rt61d F3).

A stop is not re-rolled: once a model or tool run is stopped, a retry or fallback of it (the run that starts after it
under the same parent asking the same: ``with_retry``, ``with_fallbacks``, the retry and fallback middlewares) gets the
same stop at its start (`_place`, rt61d F1); a batch sibling, which asks its own input, does not (rt62c F1).

One handler serves any number of concurrent runs: state is keyed by ``run_id`` and dropped when the
run ends or fails, or when the asyncio task it ran in ends without either (a cancelled request reports
no end: `_runs.py`).

Blocked runs are not logged as callback errors: LangChain logs every exception a handler raises at
WARNING ("Error in GuardCallbackHandler.on_llm_new_token callback: GuardViolation(...)") before it
re-raises it to the caller. For the guard's own exceptions that line is noise (the caller gets the
exception), so it is moved to DEBUG on the ``qwenguard.integrations.langchain`` logger; see it with
``logging.getLogger("qwenguard.integrations.langchain").setLevel(logging.DEBUG)`` and a handler.

Parallel input screening (``parallel_input=True``, or a `Guard` built with ``parallel_input=True``):
``on_chat_model_start`` starts the input check in the background and returns, so the model call
starts at once. The first hook where output would leave — ``on_llm_new_token``, ``on_stream_event``,
``on_llm_end`` — waits for the verdict and raises if the input is blocked: no token reaches the
consumer, and raising in the first token callback also stops the model's stream (the provider
stops generating when the stream is closed). ``on_tool_start`` waits for every input check still
pending in its own call (its trace: `_runs.py`), so a tool running beside the model (``RunnableParallel``
under ``ainvoke``) cannot run on a blocked input either, and another request's input check never holds or
stops it. A blocked input refuses the tools and retrievers its failure discards, never a batch item of another
input nor a step after the run that caught it (`BlockedCalls`, rt62c F2, F3). A non-streaming call cannot be
interrupted from a callback: its answer is discarded when the input is blocked.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables.config import var_child_runnable_config
from qwenguard.core import (
    Action,
    Decision,
    Guard,
    GuardUnavailable,
    GuardViolation,
    Policy,
    QwenGuardError,
    Stage,
    enforce,
)
from qwenguard.core.backends.gen_session_pool import SESSIONS_PER_STREAM
from qwenguard.core.backends.stream_session import SESSION_OPTIONS
from qwenguard.core.formats.conversations import (
    answer_calls_conversation,
    prompt_conversation,
    tool_call_conversation,
    untrusted_conversation,
)
from qwenguard.core.formats.json_reading import arguments_parsed
from qwenguard.core.guard import speaking_as
from qwenguard.core.policy import require_count, require_switch
from qwenguard.core.streaming.gate_session import GateSession
from qwenguard.core.streaming.monitor_core import check_stream_options
from qwenguard.core.streaming.parallel import PendingCheck

from .._common import Bounded
from ._answer_tools import answer_tools
from ._feed import StreamFeed
from ._handler_order import HeardFirst
from ._holding import GUARD_PARAM, HELD_CALL, HELD_LLM_TYPE_PREFIX, TOOL_CALLS_PARAM, HeldCall, guard_token
from ._input_memory import (
    MAX_ALLOWED_CHECKS,
    Produced,
    RaisedChecks,
    RaisedToolStops,
    current_scope,
    current_thread,
    without_runs_of_blocked,
)
from ._logs import quiet_guard_stops
from ._messages import (
    AS_ANSWER,
    AS_INPUT,
    DEFAULT_HISTORY_TURNS,
    Item,
    call_history,
    call_key,
    command_rest,
    command_rest_text,
    guard_history,
    input_items,
    message_text,
    opaque_output,
    output_items,
    payload_leaf,
    prompt_items,
    resume_values,
    source_text,
    tool_arguments,
    tool_output_text,
    tool_result_commands,
    tool_result_messages,
    tool_text,
    turn_role,
)
from ._runs import BlockedCalls, RunTable, started_by_agenerate
from ._screening import ascreen, blocked_pairs, built_off_loop, no_looser, raise_first, require_guard, screen
from ._streaming import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_UNJUDGED,
    DEFAULT_WINDOW_CHARS,
    Engine,
    PipelinedScreen,
    Screen,
    ToolCallGate,
    check_engine,
    open_screen,
    open_tool_screen,
)
from ._tool_errors import (
    MAX_ERROR_CHARS,
    TOOL_NODE_HINT,
    bubbled_command,
    control_flow,
    digest,
    error_texts,
    interrupt_text,
    interrupt_values,
    object_text,
    written_messages,
)
from .documents import document_text

__all__ = ["GuardCallbackHandler", "AsyncGuardCallbackHandler"]


class _AnswerCallGate(ToolCallGate):
    """The streamed arguments of a structured output's schema call (`AS_ANSWER`): the answer, asked under the
    response stage while it is on and decided under the stricter of the response and tool-call policies
    (`_screening.no_looser`), as the call is once the run ends."""

    def __init__(self, policy: Policy, name: str, context: Sequence[dict[str, str]], **options: Any) -> None:
        super().__init__(name, context, **options)
        self.policy = policy
        self.stage = Stage.RESPONSE if policy.enabled(Stage.RESPONSE) else Stage.TOOL_CALL

    def settle(self, item: Item, decision: Decision) -> None:
        marked = Item(Stage.TOOL_CALL, item.conversation, extra={AS_ANSWER: True})
        super().settle(item, no_looser(self.policy, marked, decision))


def _answer_screen(
    guard: Guard,
    name: str,
    context: Sequence[dict[str, str]],
    engine: Engine,
    *,
    window_chars: int,
    max_unjudged: int,
    max_in_flight: int,
) -> PipelinedScreen:
    """`open_tool_screen` for a structured output's schema call (`_AnswerCallGate`)."""
    limit = getattr(guard, "max_chars", None)
    gate = _AnswerCallGate(
        guard.policy, name, context, window_chars=window_chars, max_chars=limit if isinstance(limit, int) else None
    )
    if engine == "gate":
        return PipelinedScreen(guard, gate, max_unjudged=0, max_in_flight=1, session=GateSession(guard, gate.stage))
    session = GateSession(guard, gate.stage, sessions=min(max_in_flight, SESSIONS_PER_STREAM))
    return PipelinedScreen(guard, gate, max_unjudged=max_unjudged, max_in_flight=max_in_flight, session=session)


#: How many tool-call contexts to remember between ``on_llm_end`` and ``on_tool_start``.
_MAX_TOOL_CONTEXTS = 1024
#: An `Item`'s ``extra`` key: the `call_key` of a ``Command`` input's call it judges (`_note_judged_calls`).
_CALL_KEY = "command_call_key"
#: How many calls whose input was blocked to remember (no tool or retriever of theirs starts after).
_MAX_BLOCKED_CALLS = 4096
#: How many runs to remember that ran a failed tool, until they end (`_failed_call_items`).
_MAX_FAILED_PARENTS = 1024
_WRONG_FRAMEWORK = (
    "qwenguard: this GuardCallbackHandler is LangChain's (qwenguard.integrations.langchain) and was given to "
    "LlamaIndex: use qwenguard.integrations.llamaindex.GuardCallbackHandler in a LlamaIndex CallbackManager"
)
#: How many stopped runs' places to remember (`_refuse_again`): a retry or fallback comes within its outer call.
_MAX_STOPPED_PLACES = 4096
#: Stops kept per place (a batch inside a step that blocked several of its inputs): the oldest go first.
_STOPS_PER_PLACE = 8

#: A tool run's call on its thread (`current_thread`): the thread, the call's name and id, and the graph node it runs
#: in (`_graph_node`).
_ThreadCall = tuple[str | None, dict[str, Any], str | None]

#: Where a model or tool run stands (`_place`): its parent run, its tool call's id (None for a model), and what it was
#: asked (`_request_digest`: a model's question as text, a tool's input as a digest).
_Place = tuple[UUID, str | None, str | bytes | None]


def _place(kwargs: Mapping[str, Any], call_id: Any = None, request: str | bytes | None = None) -> _Place | None:
    """Where a run stands among its retries and fallbacks: its parent run (a ``RunnableRetry``, a
    ``RunnableWithFallbacks``, the agent node whose middleware retries or falls back), its tool call's id (a tool
    retried by ``ToolRetryMiddleware`` keeps its call's id; the parallel calls beside it have their own) and what it
    was asked (``request``, `_request_digest`: a retry or a fallback asks the same; a batch sibling under the same
    parent asks its own input, and is not a retry: rt62c F1). A top-level ``with_fallbacks`` hands its runnables the
    caller's config, not its run's (no parent_run_id): its run is then the parent the context holds. None for a run
    with no parent (a model invoked on its own)."""
    parent = kwargs.get("parent_run_id") or _context_parent()
    return None if parent is None else (parent, None if call_id is None else str(call_id), request)


def _request_digest(request: Any) -> str | bytes | None:
    """What a model or tool run was asked: a model's question as the model reads it (`_question`: a retry or a
    fallback re-asks it whatever decoration or form the request takes), a tool's input as LangChain writes it (a
    digest). None when it cannot be written out: such runs under one parent are then all taken for one request (a
    retry), as before."""
    if isinstance(request, list) and request and all(isinstance(r, (list, str)) for r in request):
        return _question(request)

    def plain(value: Any) -> Any:
        if isinstance(value, BaseMessage):
            calls = getattr(value, "tool_calls", None)
            return [value.type, value.content, calls, getattr(value, "tool_call_id", None), value.name]
        return repr(value)

    try:
        return digest(json.dumps(request, default=plain, sort_keys=True, ensure_ascii=False))
    except (TypeError, ValueError, RecursionError):
        return None


def _question(request: list[Any]) -> str | None:
    """A model run's question as text: each prompt, or each message list's last user turn (`message_text`: its text
    blocks, a provider's markers such as Anthropic's ``cache_control`` aside), whitespace runs as one space. A
    ``ModelFallbackMiddleware`` strips those markers before its backup, and a chat model's ``with_fallbacks`` to a
    completion model asks the same question as one prompt string ("Human: ..."): either differed as a digest of the
    whole request, and the backup was asked after the guard's stop (rt62g F2). None when there is no user text."""
    texts = [item if isinstance(item, str) else message_text(item) for item in _asked(request)]
    asked = " ".join(" ".join(texts).split())
    return asked or None


def _asked(request: list[Any]) -> list[Any]:
    """What `_question` reads of a model run's request: each prompt string, each message list's last user turn. The
    async hooks size only these before reading them on the loop: the history before them (a tool's artifact of
    15,000 objects in it) is not read here (rt63 CI: sizing it held the loop 20-28 ms per model call)."""
    found: list[Any] = []
    for item in request:
        if isinstance(item, str):
            found.append(item)
            continue
        last = next((m for m in reversed(item) if isinstance(m, BaseMessage) and turn_role(m) == "user"), None)
        if last is not None:
            found.append(last)
    return found


def _same_request(stopped: str | bytes | None, asked: str | bytes | None) -> bool:
    """Is a run asking ``asked`` a retry or fallback of one stopped asking ``stopped``? Yes unless both are known and
    neither holds the other (a prompt string holds the question its chat form asked; a batch sibling asks another)."""
    if stopped is None or asked is None or stopped == asked:
        return True
    if isinstance(stopped, str) and isinstance(asked, str):
        return stopped in asked or asked in stopped
    return False


def _blocking(stop: QwenGuardError) -> Decision | None:
    """The decision of a stop that blocks its input (not a guard that could not answer)."""
    decision = getattr(stop, "decision", None)
    return decision if isinstance(decision, Decision) and not decision.allowed else None


def _context_parent() -> UUID | None:
    """The run whose child config the running code was handed (LangChain's context): a ``RunnableWithFallbacks``
    hands its runnables the caller's config, so their parent run id is the caller's, not the fallbacks run's."""
    callbacks = (var_child_runnable_config.get() or {}).get("callbacks")
    parent = getattr(callbacks, "parent_run_id", None)
    return parent if isinstance(parent, UUID) else None


def _scope(trace: UUID | None) -> str | None:
    """Where what a run produces is bound (`Produced`), and where it is matched: LangGraph's thread, or with none its
    run (`current_scope`); outside a graph run, the call the run belongs to (``trace``: the outermost run this handler
    saw, `RunTable.trace`). Process-wide, a call a model asked for under one user's deterministic id (TGI's ``"0"``,
    Kimi's ``functions.send_email:0``) was the model's own when another client replayed it (stop 61)."""
    scope = current_scope()
    if scope is not None or trace is None:
        return scope
    return json.dumps(["trace", str(trace)])


def _sends(command: Any) -> list[Any]:
    """The ``Send``s of a ``Command``'s ``goto`` (duck-typed: no langgraph import here)."""
    goto = getattr(command, "goto", None)
    return [t for t in (goto if isinstance(goto, (list, tuple)) else [goto]) if type(t).__name__ == "Send"]


def _sent_calls(command: Any) -> list[Mapping[str, Any]]:
    """The tool calls the ``Send``s of a ``Command``'s ``goto`` hand a ``ToolNode``, as it reads its input
    (``ToolNode._parse_input``): a ``tool_call_with_context`` payload's call, a list of calls, or the calls of the last
    AI message of a state's ``messages``."""
    found: list[Mapping[str, Any]] = []
    for send in _sends(command):
        arg = getattr(send, "arg", None)
        if isinstance(arg, Mapping) and arg.get("__type") == "tool_call_with_context":
            call = arg.get("tool_call")
            found += [call] if isinstance(call, Mapping) else []
        elif (
            isinstance(arg, (list, tuple))
            and arg
            and isinstance(arg[-1], Mapping)
            and arg[-1].get("type") == "tool_call"
        ):
            found += [call for call in arg if isinstance(call, Mapping)]
        elif isinstance(arg, Mapping) and isinstance(messages := arg.get("messages"), (list, tuple)):
            last = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
            found += list(last.tool_calls) if last is not None else []
    return found


class _Run:
    """What one model/tool/retriever run needs between its events."""

    __slots__ = (
        "context",
        "feed",
        "tool",
        "query",
        "pending",
        "held",
        "trace",
        "answer_tools",
        "place",
        "call",
        "agent_name",
        "calls_context",
    )

    def __init__(self, context: list[dict[str, str]] | None = None) -> None:
        self.context = context or []
        self.calls_context: list[dict[str, str]] | None = None  # what its calls are read after (`call_history`)
        self.pending: PendingCheck | None = None  # the input verdict, with parallel_input
        self.feed: StreamFeed | None = None  # what its stream fed the guard
        self.held: HeldCall | None = None  # a model call GuardMiddleware holds on this guard
        self.tool: str | None = None
        self.query: str | None = None
        self.trace: UUID | None = None  # the call it belongs to (`RunTable.trace`), set when it starts
        #: A structured-output schema's tool (``with_structured_output``): its call is the answer (`_answer_tools`).
        self.answer_tools: frozenset[str] = frozenset()
        self.place: _Place | None = None  # its `_place`, for the hooks after its start
        self.call: _ThreadCall | None = None  # a tool run's call on its thread (`_blocked_results`)
        #: The name ``create_agent(name=...)`` gives its answers (`_own_agent_name`): the application's.
        self.agent_name: str | None = None

    def close(self) -> None:
        if self.feed is not None:
            for screen in self.feed.screens():
                screen.close()

    def release(self) -> None:
        """Close its screens and cancel its pending input check: the run is gone."""
        self.close()
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()


class HandlerClassGiven(TypeError, AttributeError):
    """The handler class given where a handler goes (``callbacks=[GuardCallbackHandler]``, its ``(guard)`` forgotten).
    An `AttributeError` too, so that ``hasattr`` and ``inspect`` reading the class go on as they do."""


class _HandlerSwitch:
    """An ``ignore_*`` switch LangChain reads on each handler before each event: False on a handler, as LangChain's
    own. On the class the inherited switch was LangChain's property object, truthy: given the class, LangChain skipped
    every event and the model ran unguarded, silently (rt67g F3). Read on the class it raises, and LangChain raises
    it on (the class's ``raise_error``), before the run starts."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, handler: Any, owner: type | None = None) -> bool:
        if handler is None:
            named = getattr(owner, "__name__", "GuardCallbackHandler")
            raise HandlerClassGiven(
                f"qwenguard: the class {named} was given as a callback handler (its {self.name} read): pass a "
                f"handler built on the guard, config={{'callbacks': [{named}(guard)]}}"
            )
        return False


class _GuardHandlerLogic(HeardFirst):
    """The decisions, written once; the sync and async handlers only differ in how they call the guard.

    Hashes to 0 (`HeardFirst`): it stays first among a run's handlers when LangChain merges them through sets."""

    raise_error: bool = True
    run_inline: bool = True
    # Handlers hear every event (LangChain's default); the class itself, given by mistake, raises (`_HandlerSwitch`).
    ignore_llm = _HandlerSwitch()
    ignore_retry = _HandlerSwitch()
    ignore_chain = _HandlerSwitch()
    ignore_agent = _HandlerSwitch()
    ignore_retriever = _HandlerSwitch()
    ignore_chat_model = _HandlerSwitch()
    ignore_custom_event = _HandlerSwitch()

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
        screen_system: bool = False,
        history_turns: int = DEFAULT_HISTORY_TURNS,
        window_chars: int = DEFAULT_WINDOW_CHARS,
        min_chars: int = 1,
        stream_engine: Engine | None = None,
        max_unjudged: int = DEFAULT_MAX_UNJUDGED,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        monitor_options: dict[str, Any] | None = None,
        parallel_input: bool | None = None,
    ) -> None:
        check_engine(stream_engine)
        require_count("max_unjudged", max_unjudged, 0)
        require_count("max_in_flight", max_in_flight, 1)
        # The switches are read by truthiness below: None (a YAML/JSON null, "the default" elsewhere) turned a
        # screen off and "false" turned parallel input on (rt57c F2, F3). Only True or False.
        switches = {
            "check_input": check_input,
            "check_output": check_output,
            "check_stream": check_stream,
            "check_tool_calls": check_tool_calls,
            "check_tool_results": check_tool_results,
            "check_retrieval": check_retrieval,
            "screen_system": screen_system,
        }
        for option, value in switches.items():
            require_switch(option, value)
        require_switch("parallel_input", parallel_input, optional=True)
        self.guard = require_guard(guard)
        # None: follow the guard (Guard(..., parallel_input=True) turns it on everywhere).
        self.parallel_input = guard.parallel_input if parallel_input is None else parallel_input
        if stream_engine is None:  # a Stream model scores tokens in O(1): the monitor is then the cheap one
            stream_engine = "monitor" if guard.stream_backend is not None else "pipelined"
        self.stream_engine: Engine = stream_engine
        self.max_unjudged = max_unjudged
        self.max_in_flight = max_in_flight
        # A callback cannot hold text back: release at once, and flag on the first unsafe token. Should the
        # Stream session fail, Gen windows judge the rest: by word (everything arrived, whenever no check is
        # in flight), so that the callback's wait bound (`max_unjudged`) always has a check to wait for.
        defaults: dict[str, Any] = {"holdback": 0, "window": 1}
        # A remote stream session takes fewer options (`SESSION_OPTIONS`: no release_unit); given one, every
        # streamed answer of a `Guard.remote(..., stream=True)` failed with a TypeError.
        remote = callable(getattr(guard.stream_backend, "open_remote_monitor", None))
        if guard.stream_backend is not None and not remote:
            defaults["release_unit"] = "word"
        if monitor_options is not None:
            # Checked now, not at the first streamed answer: with a Gen guard the default engine never opens a
            # monitor, so an unknown key ({"hold_back": 3}) was ignored for good (rt57c F7).
            check_stream_options(monitor_options)
            unsupported = sorted(set(monitor_options) - set(SESSION_OPTIONS)) if remote else []
            if unsupported:
                raise TypeError(f"remote streams do not support options {unsupported}; known: {list(SESSION_OPTIONS)}")
        self.monitor_options = {**defaults, **(monitor_options or {})}
        self.check_input = check_input
        self.check_output = check_output
        self.check_stream = check_stream
        self.check_tool_calls = check_tool_calls
        self.check_tool_results = check_tool_results
        self.check_retrieval = check_retrieval
        # What the runs' tools wrote and their models answered (`_chat_start_reading`), and the tool calls those
        # answers asked for (`_tool_call_item`: any other call about to run is the client's); each where it was
        # produced (`_scope`), and an answer only once let through.
        self._produced = Produced(bound=True)
        # The blocks its model inputs raised for, each on its thread (`_told_apart`): LangGraph saved the blocked turn
        # there before the run raised, and every later turn of the thread is refused for it.
        self._raised = RaisedChecks()
        # The tool calls whose result it blocked, each on its thread, with the decision: LangGraph leaves the thread
        # at its tools, and a run resumed there (``invoke(None)``) ran the tool again, once per resume (rt66e F3).
        self._blocked_results: RaisedToolStops[Decision] = RaisedToolStops()
        # The graph nodes those tools ran in, by thread (`_went_on`): a model called there is no step past them.
        self._tool_nodes: Bounded[str, frozenset[str]] = Bounded(MAX_ALLOWED_CHECKS)
        self.screen_system = screen_system
        self.history_turns = history_turns
        self.window_chars = window_chars
        self.min_chars = min_chars
        self._runs: RunTable[_Run] = RunTable(_Run, _Run.release)
        self._tool_contexts: Bounded[tuple[UUID, str], list[dict[str, str]]] = Bounded(_MAX_TOOL_CONTEXTS)
        # A Command input's tool calls allowed at its graph's start, by (the call, `call_key`): `_note_judged_calls`.
        self._judged_calls: Bounded[tuple[UUID, str], bool] = Bounded(_MAX_TOOL_CONTEXTS)
        # Where a blocked input's failure went: a branch beside the model (`RunnableParallel`, a gather in a node) goes
        # on after the block, and neither asyncio.gather nor a thread pool cancels it (`BlockedCalls`).
        self._blocks = BlockedCalls(_MAX_BLOCKED_CALLS)
        #: The run name of each ``create_agent`` graph running now (`_own_agent_name`).
        self._agent_graphs: dict[UUID, str] = {}
        # Failed tool calls by the run they ran in, each with digests of its error's texts judged already: that
        # run's end carries the message a ToolNode writes for the call (`_failed_call_items`).
        self._failed_calls: Bounded[UUID, dict[str, frozenset[bytes]]] = Bounded(_MAX_FAILED_PARENTS)
        self._failed_lock = threading.Lock()  # tools of one ToolNode fail in parallel threads
        # Where a model or tool run was stopped (`_place`), with the stop: a retry or a fallback of it is refused.
        # By (parent run, tool call id): what each stopped run there asked, and its stop (`_same_request`).
        self._stopped: Bounded[tuple[UUID, str | None], tuple[tuple[str | bytes | None, Decision], ...]] = Bounded(
            _MAX_STOPPED_PLACES
        )
        # The chain runs a stopped run was in (`_note_stop`), and the runs that are a ``RunnableWithFallbacks``: a
        # retry attempt or a fallback of such a chain is refused at its start (`_refuse_retried_chain`).
        self._stopped_in: Bounded[UUID, Decision] = Bounded(_MAX_STOPPED_PLACES)
        self._fallbacks: Bounded[UUID, bool] = Bounded(_MAX_STOPPED_PLACES)
        # A chain a top-level RunnableWithFallbacks runs has no parent run id: the fallbacks run it runs under.
        self._hosts: Bounded[UUID, UUID] = Bounded(_MAX_STOPPED_PLACES)

    # Both integrations name their handler GuardCallbackHandler: given to LlamaIndex by mistake (an auto-import's
    # slip), this one died on an AttributeError deep in llama-index ("no attribute 'start_trace'", rt61a F2).
    # LlamaIndex's CallbackManager starts a trace and reads which events to skip before any hook: each is refused
    # with the class to use.
    def start_trace(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(_WRONG_FRAMEWORK)

    def end_trace(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(_WRONG_FRAMEWORK)

    @property
    def event_starts_to_ignore(self) -> list[Any]:
        raise TypeError(_WRONG_FRAMEWORK)

    @property
    def event_ends_to_ignore(self) -> list[Any]:
        raise TypeError(_WRONG_FRAMEWORK)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        quiet_guard_stops(cls.__name__)

    # -- per-run state --------------------------------------------------------------------------
    def _run(self, run_id: UUID) -> _Run:
        return self._runs.state(run_id)

    def _begin(self, run_id: UUID, kwargs: Mapping[str, Any], *, owned: bool) -> _Run:
        """A model, tool or retriever run starts: link it to its parent, note the call it belongs to, and
        (``owned``) drop it when its task ends without an end event (`_runs.py`)."""
        self._runs.link(run_id, kwargs.get("parent_run_id"))
        run = self._run(run_id)
        run.trace = self._runs.trace(run_id)
        run.agent_name = self._own_agent_name(run_id, kwargs)
        if owned:
            self._runs.own(run_id)
        else:  # a sync model run: one multi-prompt call's runs go together when one fails (`_runs.py`)
            self._runs.join_batch(run_id, kwargs.get("parent_run_id"), kwargs.get("batch_size"))
        return run

    def _drop(self, run_id: UUID) -> _Run | None:
        return self._runs.drop(run_id)

    def _refuse_events_late(self, run_id: UUID, feed: StreamFeed) -> None:
        """Refuse a run judged from its v3 events where nothing may go out unjudged (``"gate"``, ``max_unjudged=0``).

        LangChain hands each v3 event to the ``stream_events(version="v3")`` consumer *before* ``on_stream_event``
        runs (langchain-core's ``_iter_v2_events``): a model whose ``_stream`` reports no tokens (a custom
        ``BaseChatModel`` that never calls ``run_manager.on_llm_new_token``) is judged one event late, a whole
        answer or a tool call's whole name out before a stop (rt69k F1). Refused at its first event, before it
        carries any content; under ``"pipelined"`` it is the documented limit (`_feed.py`)."""
        if feed.source is not None or not (self.stream_engine == "gate" or self.max_unjudged == 0):
            return
        if len(self._runs.lineage(run_id)) > 1:
            # Inside a graph (an agent) each event reaches this handler before the graph's own consumer, and a cache
            # hit replays a finished answer as events with no tokens: refused, every warm cached answer of a
            # create_agent failed under "gate" (rt69q F2). Only a model's own stream_events is one event late.
            return
        run = self._run(run_id)
        if run.held is not None or not (self.check_stream or self.check_tool_calls):
            return  # a holding middleware judges this stream before it goes out; or nothing of it is screened
        raise GuardUnavailable(
            "the model streamed stream_events(version='v3') events without reporting its tokens "
            "(run_manager.on_llm_new_token): LangChain hands each such event to the consumer before this handler "
            "can judge it, so a stream that must be judged before it goes out (stream_engine='gate', "
            "max_unjudged=0) cannot be kept here. Judge it with GuardMiddleware (create_agent) or guard_output, "
            "or make the model report its tokens"
        )

    def _own_agent_name(self, run_id: UUID, kwargs: Mapping[str, Any]) -> str | None:
        """The name ``create_agent(name=...)`` gave the agent this run is part of, or ``None``. The run's
        ``lc_agent_name`` alone is not the agent's: a caller's ``config["metadata"]`` replaces it, and sets it for an
        unnamed agent (rt69k F2). It is trusted only where the agent's graph, running above this run, has that name
        too (``create_agent`` compiles its graph under it; an unnamed one is ``LangGraph``)."""
        name = (kwargs.get("metadata") or {}).get("lc_agent_name")
        if not isinstance(name, str) or not name:
            return None
        graphs = self._agent_graphs
        return name if any(graphs.get(ancestor) == name for ancestor in self._runs.lineage(run_id)) else None

    @contextmanager
    def _blocking_its_call(self, run_id: UUID) -> Iterator[None]:
        """An input check that stops the run fails its ancestors up to where the failure is caught: remember where
        it went (`BlockedCalls`, `_refuse_blocked`)."""
        try:
            yield
        except QwenGuardError as stop:
            decision = _blocking(stop)
            if decision is not None:
                self._blocks.block(decision, self._runs.lineage(run_id))
            raise

    def _refuse_blocked(self, run_id: UUID, inputs: Any = None) -> None:
        """A tool or retriever that a blocked input's failure discards does not start (raises that decision): one
        beside the blocked model in a call that raised or may raise, not a batch item of another input, nor a later
        step of a run that caught the failure (`BlockedCalls`, rt62c F2, F3). ``inputs``: a tool's (None: a
        retriever's, not compared)."""
        decision = self._blocks.refusing(self._runs.lineage(run_id), inputs)
        if isinstance(decision, Decision):
            self._drop(run_id)
            enforce(decision)

    def _pending_stop(self, owner: UUID, stop: QwenGuardError) -> None:
        """A tool waited for the input check of ``owner`` (a model of its call) and it failed: a block is noted
        where it goes and judged for this tool by `_refuse_blocked`; a guard that could not answer stops the tool."""
        decision = _blocking(stop)
        lineage = self._runs.lineage(owner)
        if decision is None or len(lineage) < 2:  # its run is gone, and where it stood with it: this tool stops
            raise stop
        self._blocks.block(decision, lineage)

    # -- retries and fallbacks (rt61d F1) -----------------------------------------------------------
    # ``model.with_retry()`` (any Exception), ``with_fallbacks``, ``ModelRetryMiddleware``/``ModelFallbackMiddleware``
    # and ``ToolRetryMiddleware`` catch the guard's stop and ask again: a re-roll of the stopped answer (and a tool
    # whose result was stopped run again). The run that comes after a stop in the same place gets the same stop at
    # its start, before the provider is asked or the tool runs. The place is its parent run: a normal agent loop
    # calls each model and tool under a new node run, and a reused handler's next call has new run ids.
    def _note_stop(self, stop: GuardViolation, place: _Place | None) -> None:
        if place is not None:
            where, asked = place[:2], place[2]
            self._stopped[where] = (
                *(self._stopped.get(where) or ())[-(_STOPS_PER_PLACE - 1) :],
                (asked, stop.decision),
            )
            chains = self._runs.lineage(place[0])  # the chains it ran in, nearest first (rt61e F1)
            for host in (self._hosts.get(chains[-1]), _context_parent()):
                if host is not None:
                    chains += self._runs.lineage(host)
            for chain in chains:
                self._stopped_in[chain] = stop.decision

    # A retry or a fallback around a chain (``(prompt | llm).with_retry()``, ``.with_fallbacks([prompt | llm2])``, a
    # fallback that is a chain) runs the model under a new chain run each attempt: its parent is new, and `_place`
    # did not know it (rt61e F1). A chain that starts as a retry attempt (LangChain tags it ``retry:attempt:N``) or
    # as a fallback (a child of a ``RunnableWithFallbacks`` run) under a chain a stopped run was in gets that stop.
    # Other chains under it are not refused: an agent loop goes on after a tool's stopped result that a
    # ``ToolRetryMiddleware`` wrote as a failure.
    def _refuse_retried_chain(self, run_id: UUID, kwargs: Mapping[str, Any]) -> None:
        parent = kwargs.get("parent_run_id")
        host = _context_parent()  # a with_fallbacks hands its runnables the caller's config: the fallbacks run
        if parent is None and host is not None:  # a top-level one's runnables: no parent run id (`_note_stop`)
            self._hosts[run_id] = host
        retried = any(isinstance(tag, str) and tag.startswith("retry:attempt:") for tag in kwargs.get("tags") or ())
        for under in (parent, host):
            if not isinstance(under, UUID):
                continue
            decision = self._stopped_in.get(under)
            if decision is not None and (retried or self._fallbacks.get(under) is not None):
                raise GuardViolation(decision)

    def _note_fallbacks(self, run_id: UUID, serialized: Any, kwargs: Mapping[str, Any]) -> None:
        ids = serialized.get("id") if isinstance(serialized, Mapping) else None
        last = ids[-1] if isinstance(ids, list) and ids else None
        if "RunnableWithFallbacks" in (kwargs.get("name"), last):
            self._fallbacks[run_id] = True

    def _refuse_again(self, place: _Place | None) -> None:
        """A model or tool run about to start where a run was stopped (`_note_stop`): raise that stop."""
        if place is None:
            return
        for asked, decision in self._stopped.get(place[:2]) or ():
            if _same_request(asked, place[2]):
                raise GuardViolation(decision)

    # rt66e F3. A tool's result blocked in ``on_tool_end`` (or its error in ``on_tool_error``) raises out of the tools
    # node: with a checkpointer the thread stays at its tools, the call unanswered, and a run resumed there ran the
    # tool again (its side effect repeated: a comment posted once per resume). A callback cannot answer the call, so
    # the call is refused again before its tool runs, with the way out, until the thread goes on past it.
    def _refuse_rerun(self, serialized: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> _ThreadCall:
        """The call a tool run is about to run, on its thread; raises where this handler blocked its result there
        before (`_rerun_refused`)."""
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        thread, call = current_thread(), {"name": str(name), "id": kwargs.get("tool_call_id")}
        decision = self._blocked_results.answer(call, thread) if len(self._blocked_results) else None
        if decision is not None:
            raise _rerun_refused(decision, call)
        return thread, call, _graph_node(kwargs)

    # A result the guard could not judge (`GuardUnavailable`, `GuardTimeout`: the policy failing closed) raises out
    # of the tools node as a blocked one does, once the tool ran: its call is refused again as well, or each resume
    # during the outage, and the first after it, ran the tool again (rt66l F1). A stop with no decision is kept by none.
    def _note_blocked_result(self, run: _Run | None, stop: QwenGuardError) -> None:
        """``run``'s tool ran and its result (or error) was blocked, or could not be judged: its call is refused
        again on its thread."""
        decision = getattr(stop, "decision", None)
        if run is None or run.call is None or not isinstance(decision, Decision):
            return
        thread, call, node = run.call
        self._blocked_results.keep(call, decision, thread)
        if thread is not None and node is not None:
            self._tool_nodes[thread] = (self._tool_nodes.get(thread) or frozenset()) | {node}

    # rt66l F2, F4. A model start goes on past the refused calls of its own thread key only (`current_thread`: the
    # thread and its graph's namespace, task ids left out): a sub-agent's model (namespace "tools") forgets the stops
    # of the sub-agent's tools, never its parent's, and does forget them (skipped under every tool run, a sub-agent
    # whose provider reuses call ids had its blocked call refused for good). Not a model called inside the tools node
    # of that same namespace, where the thread still waits on the call: a wrap_tool_call middleware's helper model
    # (asked before the tool runs, under no tool run), a plain ``llm.invoke`` inside a tool. That node is told by the
    # run's metadata, LangGraph's ``langgraph_node``, the node the model runs in (its checkpoint namespace's last part,
    # task id left out; the rest of it is the thread key's namespace): a node a blocked tool of the thread ran in
    # (`_tool_nodes`). A model under a tool run of the same thread key (`_Run.call`) is one too, whatever its metadata.
    def _went_on(self, run_id: UUID, thread: str | None, kwargs: Mapping[str, Any]) -> None:
        """A model run on ``thread``, not inside its tools node: the thread went on past its calls (they were
        answered, or removed, or a new turn came), and a later call of the same name and id (a provider reusing
        ids) runs."""
        if thread is None or not len(self._blocked_results):
            return
        node = _graph_node(kwargs)
        if node is not None and node in (self._tool_nodes.get(thread) or ()):
            return  # a model asked in the tools node (a tool middleware's helper, a tool's own model call)
        lineage = self._runs.lineage(run_id)[1:]
        if any(
            (run := self._runs.get(up)) is not None and run.call is not None and run.call[0] == thread for up in lineage
        ):
            return  # a model a tool of the same thread key runs: the thread still waits at that tool
        self._blocked_results.keep_only((), thread)
        self._tool_nodes.pop(thread)

    def _tool_place(self, run_id: UUID) -> _Place | None:
        run = self._runs.get(run_id)
        return run.place if run is not None else None

    def _model_place(self, run_id: UUID, kwargs: Mapping[str, Any]) -> _Place | None:
        """A model run's `_place`, noted at its start (with what it was asked)."""
        run = self._runs.get(run_id)
        return run.place if run is not None and run.place is not None else _place(kwargs)

    # A chain links its children to the call they belong to, and tells where a blocked input's failure went.
    def _chain_started(self, run_id: UUID, inputs: Any, kwargs: Mapping[str, Any]) -> None:
        self._runs.link(run_id, kwargs.get("parent_run_id"))
        if (kwargs.get("metadata") or {}).get("ls_integration") == "langchain_create_agent":
            self._note_agent_graph(run_id, kwargs)
        self._blocks.started(run_id, inputs)

    def _note_agent_graph(self, run_id: UUID, kwargs: Mapping[str, Any]) -> None:
        """A ``create_agent`` graph's own run: the top run marked as the agent's (its nodes carry the mark too)."""
        parent = kwargs.get("parent_run_id")
        if parent is not None and any(ancestor in self._agent_graphs for ancestor in self._runs.lineage(parent)):
            return  # a node of a graph already noted
        name = kwargs.get("name")
        if isinstance(name, str) and name:
            self._agent_graphs[run_id] = name

    def _chain_ended(self, run_id: UUID) -> None:
        self._agent_graphs.pop(run_id, None)
        self._runs.unlink(run_id)
        self._blocks.ended(run_id)  # a failure under it was caught: the runs above it go on (rt62c F3)

    def _chain_failed(self, run_id: UUID) -> None:
        self._agent_graphs.pop(run_id, None)
        self._runs.unlink(run_id)
        self._blocks.failed(run_id)  # kept: a branch under it that goes on after it raised is refused
        self._failed_calls.pop(run_id)  # a failed run writes nothing

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

    # Keyed by the call (trace) and the id: ids repeat across users ("functions.web_search:0", TGI's "0").
    def _remember_tool_context(self, items: Sequence[Item], context: list[dict[str, str]], trace: UUID) -> None:
        for item in items:
            call_id = (item.tool_call or {}).get("id")
            if call_id:
                self._tool_contexts[(trace, str(call_id))] = context

    def _tool_context(self, call_id: str | None, trace: UUID | None) -> list[dict[str, str]]:
        """The conversation the call was asked for in: under its own call (trace); else, for a model and a tool
        called one after the other at the top level (two traces), the one context remembered under this id,
        if it is the only one (never a pick between two users' calls)."""
        if not call_id:
            return []
        context = self._tool_contexts.pop((trace, str(call_id))) if trace is not None else None
        if context is not None:
            return context
        same_id = [key for key in self._tool_contexts.keys() if key[1] == str(call_id)]
        return (self._tool_contexts.pop(same_id[0]) or []) if len(same_id) == 1 else []

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

    def _pending_in(self, trace: UUID | None) -> list[tuple[UUID, PendingCheck]]:
        """The input checks still pending in one call (never another request's), with their runs."""
        return [
            (run_id, r.pending)
            for run_id, r in self._runs.values()
            if r.trace == trace and r.pending is not None and not r.pending.passed
        ]

    def _wait_input(self, run_id: UUID) -> None:
        pending = self._pending(run_id)
        if pending is not None:
            with self._blocking_its_call(run_id):
                pending.wait()

    async def _await_input(self, run_id: UUID) -> None:
        pending = self._pending(run_id)
        if pending is not None:
            with self._blocking_its_call(run_id):
                await pending.wait_async()

    # Here, not on the handler classes: the async handler answers sync dispatches with the sync hooks.
    # ``thread``: a chat model's (`current_thread`), read where the hook runs, for `_told_apart`.
    def _start_input(self, items: list[Item], run_id: UUID, thread: str | None = None) -> None:
        if self.parallel_input and items:
            guard = self.guard
            self._run(run_id).pending = PendingCheck.start(
                lambda: self._told_apart(items, screen(guard, items), thread)
            )
            return
        with self._dropped_on_error(run_id), self._blocking_its_call(run_id):
            raise_first(items, self._told_apart(items, screen(self.guard, items), thread))

    async def _astart_input(self, items: list[Item], run_id: UUID, thread: str | None = None) -> None:
        if self.parallel_input and items:
            guard = self.guard
            self._run(run_id).pending = PendingCheck.start_async(
                self._ajudged_input(items, thread),
                on_loop=lambda: self._told_apart(items, screen(guard, items), thread),
            )
            return
        with self._dropped_on_error(run_id), self._blocking_its_call(run_id):
            raise_first(items, await self._ajudged_input(items, thread))

    async def _ajudged_input(self, items: list[Item], thread: str | None) -> list[Decision]:
        return self._told_apart(items, await ascreen(self.guard, items), thread)

    # rt64g F2. With a checkpointer LangGraph writes a run's input to the thread before any node runs, so a prompt this
    # handler blocked stays in the thread, and every later model call there reads it: each raised again, named as a
    # blocked prompt whatever the new turn asked. `GuardMiddleware` puts its notice in the blocked turn's place (the
    # state is its to write); a callback cannot change what the model reads, and letting the call through would give
    # the model the blocked text. So the thread stays refused, and the stop says why and how to free it.
    def _told_apart(self, items: list[Item], decisions: list[Decision], thread: str | None) -> list[Decision]:
        """``decisions`` on a model's input. On a thread, blocks not raised for there before are remembered
        (`RaisedChecks`); where every block was, `_left_over`'s stop is raised instead of theirs."""
        pairs = blocked_pairs(items, decisions)
        # A guard that could not answer is its own outcome (`GuardUnavailable`): neither remembered nor told apart.
        if thread is None or not pairs or any(d.reason in _UNANSWERED for _, d in pairs):
            return decisions
        blocked = [item for item, _ in without_runs_of_blocked(pairs)]
        left_over = self._raised.left_over(blocked, thread)
        if left_over:
            raise _left_over(pairs[0][1], left_over)
        self._raised.remember(self._raised.fresh(blocked, thread), thread)
        return decisions

    # -- what to check (pure) -------------------------------------------------------------------
    def _note_held(self, run_id: UUID, kwargs: Mapping[str, Any]) -> None:
        """This run is a model call held on this same guard: a `GuardedChatModel` that names this guard in
        its invocation parameters, or the call a `GuardMiddleware` holds (the middleware's scope is set,
        and the run is its wrapper, by the model type it reports). Its stream is judged there, chunk by
        chunk before release, and is not judged again here. A callback on another guard (another policy)
        judges it as any stream, and so does this one for any other model run."""
        params = kwargs.get("invocation_params") or {}
        if params.get(GUARD_PARAM) == guard_token(self.guard):
            self._run(run_id).held = HeldCall(self.guard, bool(params.get(TOOL_CALLS_PARAM)))
            return
        held = HELD_CALL.get()
        if held is None or held.guard is not self.guard:
            return
        if str(params.get("_type", "")).startswith(HELD_LLM_TYPE_PREFIX):
            self._run(run_id).held = held

    def _note_answer_tools(self, run_id: UUID, kwargs: Mapping[str, Any]) -> None:
        """A structured-output run (``with_structured_output``): its schema's call is the answer, judged whatever
        ``check_tool_calls`` says (`_answer_tools`)."""
        self._run(run_id).answer_tools = answer_tools(kwargs.get("options"))

    def _chat_start_items(self, messages: list[list[BaseMessage]], run_id: UUID) -> list[Item]:
        run = self._run(run_id)
        items, run.context, run.calls_context = self._chat_start_reading(messages, _scope(run.trace))
        return items

    def _chat_start_reading(
        self, messages: list[list[BaseMessage]], scope: str | None
    ) -> tuple[list[Item], list[dict[str, str]], list[dict[str, str]]]:
        """The checks of a chat model's input and the context its answer is judged against. Touches no run state:
        the async handler reads a long history on a worker thread, and a run cancelled meanwhile must not come
        back to life when that read ends (a run state leaked per cancelled request, rt51f F4)."""
        # Every message the model reads, not only what follows the last AI turn: a client's own history
        # can hide a user turn behind a fake assistant turn. Unchanged history hits the verdict cache.
        wanted = {
            Stage.PROMPT: self.check_input,
            Stage.RESPONSE: self.check_input,
            Stage.TOOL_CALL: self.check_input and self.check_tool_calls,
            Stage.TOOL_RESULT: self.check_tool_results,
        }
        if (self.check_input or self.check_tool_results) and any(_file_traced_away(m) for b in messages for m in b):
            # The guard could answer; the input could not be read: not ``on_error``'s to let through.
            raise GuardUnavailable(
                "a file block reached the callback handler without its data (langchain-core's traced copy replaces "
                "its 'data' with its empty 'base64', and ChatBedrockConverse sends the 'data'): it cannot be judged "
                "here, so the model is not called. Judge such input with GuardedChatModel, guard_input or "
                "GuardMiddleware, which read the messages the model is given."
            )
        # A tool-role message this handler did not hear a tool write where this run is (`Produced`, in ``scope``) came
        # with the input: a client may have written it, so it is judged whatever ``check_tool_results`` says, under a
        # policy no looser than the prompt stage's (`AS_INPUT`; rt54c F1).
        as_input = self.check_input or self.check_tool_results
        items: list[Item] = []
        for batch in messages:
            batch_items = input_items(
                batch, self.history_turns, screen_system=self.screen_system, budget=self.guard.max_chars
            )
            for item in batch_items:
                if item.extra.get(AS_INPUT) and item.message is not None and self._produced.saw(item.message, scope):
                    del item.extra[AS_INPUT]
            items.extend(
                item for item in batch_items if wanted.get(item.stage) or (item.extra.get(AS_INPUT) and as_input)
            )
        if not messages:
            return items, [], []
        # A call is read after the calls the model asked for since the request too (rt71j F2), its text after text.
        calls = call_history(messages[0], self.history_turns, self.guard.max_chars)
        return items, guard_history(messages[0], self.history_turns), calls

    def _llm_start_items(self, prompts: list[str], run_id: UUID) -> list[Item]:
        self._run(run_id).context = [{"role": "user", "content": prompts[0]}] if prompts else []
        return prompt_items(prompts) if self.check_input else []

    def _feed(self, run_id: UUID, *, asynchronous: bool) -> StreamFeed:
        """The run's stream feed, its screens opened on first use with this run's context."""
        run = self._run(run_id)
        if run.feed is None:
            guard, context, engine, held = self.guard, run.context, self.stream_engine, run.held

            def open_text() -> Screen | None:
                if not self.check_stream or held is not None:
                    return None
                return open_screen(
                    guard,
                    context,
                    engine,
                    asynchronous=asynchronous,
                    window_chars=self.window_chars,
                    min_chars=self.min_chars,
                    max_unjudged=self.max_unjudged,
                    max_in_flight=self.max_in_flight,
                    monitor_options=self.monitor_options,
                )

            def open_tool(name: str) -> Screen | None:
                judged = self.check_tool_calls or name in run.answer_tools
                if not judged or (held is not None and held.tool_calls):
                    return None
                # A structured output's call is the answer: its screen decides it as one (`_answer_screen`).
                opener = _answer_screen if name in run.answer_tools else open_tool_screen
                return opener(
                    guard,
                    name,
                    context,
                    engine,
                    window_chars=self.window_chars,
                    max_unjudged=self.max_unjudged,
                    max_in_flight=self.max_in_flight,
                )

            run.feed = StreamFeed(open_text, open_tool)
        return run.feed

    def _quoted_items(self, run_id: UUID, message: Any) -> list[Item]:
        """What a streamed chunk (or a finished content block, as a message) quotes (`source_text`), judged
        before it goes on: a callback cannot hold it back. Not for a run held on this guard (judged there)."""
        run = self._run(run_id)
        if not (self.check_output and self.check_stream) or run.held is not None:
            return []
        if not isinstance(message, BaseMessage) or not source_text(message, self.guard.max_chars).strip():
            return []  # most chunks: nothing quoted, no history to build
        return output_items(
            message,
            run.context,
            self.history_turns,
            text=False,
            tool_calls=False,
            sources=True,
            budget=self.guard.max_chars,
        )

    def _token_quoted_items(self, run_id: UUID, chunk: Any) -> list[Item]:
        feed = self._run(run_id).feed
        if feed is not None and feed.source != "token":
            return []  # this run is judged from its events
        return self._quoted_items(run_id, getattr(chunk, "message", None))

    def _event_quoted_items(self, run_id: UUID, event: Any) -> list[Item]:
        feed = self._run(run_id).feed
        if feed is None or feed.source != "event" or not isinstance(event, Mapping):
            return []  # this run is judged from its tokens
        block = event.get("content")
        if event.get("event") != "content-block-finish" or not isinstance(block, Mapping):
            return []
        return self._quoted_items(run_id, AIMessage(content=[dict(block)]))

    def _end_items(
        self, response: LLMResult, run_id: UUID
    ) -> tuple[_Run | None, list[Item], tuple[list[BaseMessage], str | None]]:
        """The run, the checks of its answer, and its answers with where they were produced: recorded as the model's
        own (`_record_answers`) once everything judged let them through (a blocked answer's calls, replayed by a
        client, are the client's)."""
        trace = self._runs.trace(run_id)
        scope = _scope(trace)
        run = self._runs.pop(run_id)  # not `_drop`: the screen still has to finish
        context = run.context if run else []
        calls_context = run.calls_context if run else None
        streamed = bool(run and run.feed is not None and run.feed.streamed)
        # Judged as a whole only when nothing judged it as it streamed, here or in a holding middleware.
        whole_text = self.check_output and not streamed and not (run and run.held is not None)
        items: list[Item] = []
        answers: list[BaseMessage] = []
        for generations in response.generations:
            for generation in generations:
                if isinstance(generation, ChatGeneration):
                    answers.append(generation.message)
                    found = output_items(
                        generation.message,
                        context,
                        self.history_turns,
                        text=whole_text,
                        tool_calls=self.check_tool_calls,
                        answers=run.answer_tools if run else (),  # a structured output's call: the answer
                        # What it quotes is never judged as text: judged here, whether it streamed or not.
                        sources=self.check_output and not (run and run.held is not None),
                        budget=self.guard.max_chars,
                        # Its name and worded ids go out with it, and back to the model next turn (rt69d F3).
                        labels=self.check_output and not (run and run.held is not None),
                        own_name=run.agent_name if run else None,
                        calls_context=calls_context,
                    )
                    called = [i for i in found if i.stage is Stage.TOOL_CALL]
                    self._remember_tool_context(called, context if calls_context is None else calls_context, trace)
                    items.extend(found)
                elif whole_text and generation.text.strip():
                    items.extend(output_items(_text_message(generation.text), context, text=True, tool_calls=False))
        return run, items, (answers, scope)

    def _record_answers(self, answers: Sequence[BaseMessage], scope: str | None) -> None:
        """Answers let through, read back as input: the model's own (`Produced`), and so are the tool calls they ask
        for when they run (`_tool_call_item`)."""
        self._produced.record(answers, scope)
        self._produced.record_calls(
            [call for answer in answers for call in getattr(answer, "tool_calls", None) or ()], scope
        )

    def _tool_start_item(
        self,
        serialized: Mapping[str, Any] | None,
        input_str: str,
        run_id: UUID,
        inputs: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> Item | None:
        call = self._tool_started(serialized, input_str, run_id, inputs, kwargs)
        return None if call is None else self._tool_call_item(*call)

    def _interrupt_items(self, values: list[Any], tool: str | None) -> list[Item]:
        """What an ``interrupt()`` raised out of a tool hands the run's caller (`interrupt_values`), judged as the tool's
        output (`interrupt_text`), as `GuardMiddleware` judges it (rt57b F4). A payload not read whole within the
        guard's ``max_chars`` raises its unjudged decision (size alone never gets text through)."""
        if not self.check_tool_results:
            return []
        text, whole = interrupt_text(values, self.guard.max_chars, payload_leaf)
        if not whole:
            why = f"the tool's interrupt carries more than max_chars={self.guard.max_chars:,} characters: not judged whole"
            enforce(self.guard.policy.decide_unjudged(Stage.TOOL_RESULT, why))
        return self._tool_output_items([text], tool, "interrupt")

    # ``Command(resume=...)`` as a run's input answers an ``interrupt()``: the node or tool that asked runs again and
    # acts on the value (an e-mail's body). ``Command(update={"messages": [...]}, goto=...)`` writes messages and can
    # send the run straight to a tool that reads them from the state. Both are the client's input, judged as a prompt
    # before anything runs (rt60b F3, rt60g F1). So is what its ``update`` writes to the state's other keys: a note a
    # ``@dynamic_prompt`` prints into the system prompt (rt63h F1: ``Command(resume=..., update={"user_note": ...})``).
    def _command_input_items(self, inputs: Any) -> list[Item]:
        """The checks of a ``Command`` input: what it answers interrupts with (`resume_values`: a map's values too),
        the text of each message its ``update`` writes (`tool_result_messages`), and what it writes to other keys
        (`command_rest`, read as a resume value is), as the user's turn; a value not read whole within the guard's
        ``max_chars`` raises its unjudged decision. And the tool calls it hands the tools (`_command_call_items`)."""
        if type(inputs).__name__ != "Command":
            return []
        calls = self._command_call_items(inputs) if self.check_input or self.check_tool_calls else []
        return [*self._command_text_items(inputs), *calls] if self.check_input else calls

    def _command_text_items(self, inputs: Any) -> list[Item]:
        items = []
        values = resume_values(inputs)
        if values:
            text, whole = object_text(values, self.guard.max_chars, payload_leaf)  # as an artifact is (rt63d F1)
            if not whole:
                why = f"the resume value carries more than max_chars={self.guard.max_chars:,} characters: not judged whole"
                enforce(self.guard.policy.decide_unjudged(Stage.PROMPT, why))
            if text.strip():
                items.append(Item(Stage.PROMPT, prompt_conversation(text), label="resume value"))
        for _, message in tool_result_messages(inputs):  # a Command's messages, read as LangGraph writes them
            text = message_text(message)
            if text.strip():
                items.append(Item(Stage.PROMPT, prompt_conversation(text), label="command update"))
        written = command_rest(inputs, sends=False)
        if written:
            text, whole = object_text(written, self.guard.max_chars, payload_leaf)
            if not whole:
                why = f"the command's update carries more than max_chars={self.guard.max_chars:,} characters: not judged whole"
                enforce(self.guard.policy.decide_unjudged(Stage.PROMPT, why))
            if text.strip():
                items.append(Item(Stage.PROMPT, prompt_conversation(text), label="command update"))
        return items

    # rt72b F1, F2. A ``Command`` input's calls run in the superstep its ``update`` starts: the model node, whose input
    # check was their only joined reading, ran beside the tools, and lost the race (a clause split over two
    # ``send_email`` calls, or over the answer's text and its call, was mailed); a ``Send`` payload's call was never
    # read with its siblings. Each call, and all of them joined, are judged here, before any node runs: the client's
    # (`AS_INPUT`), after the messages the update writes before them. An allowed call is not judged again when its
    # tool starts (`_judged_calls`).
    def _command_call_items(self, inputs: Any) -> list[Item]:
        """The checks of the tool calls a ``Command`` input hands the tools: each AI message of its ``update`` with its
        calls (each call, and its text with all its calls: `output_items`), and the calls of its ``Send``s (`_sent_calls`)
        each and all joined, with the calls of the update's last AI message that asks for any."""
        messages = [message for _, message in tool_result_messages(inputs)]
        items: list[Item] = []
        asking: list[tuple[str, Mapping[str, Any] | str]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, AIMessage) or not message.tool_calls:
                continue
            found = output_items(
                message, messages[:i], self.history_turns, text=False, sources=False, budget=self.guard.max_chars
            )
            for item in found:  # each call (its name), and all of them with the text (`joined_calls_item`)
                items.append(replace(item, label=f"command update's {item.label if item.tool_call else 'tool calls'}"))
            asking = [(call["name"], tool_arguments(call)) for call in message.tool_calls]
        sent = _sent_calls(inputs)
        if sent:
            history = guard_history(messages, self.history_turns)
            budget = self.guard.max_chars
            for call in sent:
                name = str(call.get("name") or "")
                conversation = tool_call_conversation(name, tool_arguments(call), history, max_chars=budget)
                items.append(Item(Stage.TOOL_CALL, conversation, tool_call=call, label=f"command's sent call {name}"))
            acts = [*asking, *((str(call.get("name") or ""), tool_arguments(call)) for call in sent)]
            joined = answer_calls_conversation(None, acts, history, max_chars=budget)
            if joined is not None:
                items.append(Item(Stage.TOOL_CALL, joined, label="command's sent calls"))
        for item in items:
            item.extra[AS_INPUT] = True
            if item.tool_call is not None:  # built here, off the loop for the async handler: arguments can be long
                item.extra[_CALL_KEY] = call_key(
                    item.tool_call.get("name"), item.tool_call.get("id"), item.tool_call.get("args")
                )
        return items

    def _note_judged_calls(self, items: Sequence[Item], decisions: Sequence[Decision], run_id: UUID) -> None:
        """The calls of a ``Command`` input allowed at the graph's start (`_command_call_items`), by the call the graph
        belongs to (``run_id`` linked: its trace): their tool's start takes them as judged (`_tool_call_item`)."""
        trace = self._runs.trace(run_id)
        for item, decision in zip(items, decisions):
            key = item.extra.get(_CALL_KEY)
            # A plain allow only: a flag (a failed-open check, an ignored category) is told again.
            if isinstance(key, str) and decision.action is Action.ALLOW:
                self._judged_calls[(trace, key)] = True

    def _tool_started(
        self,
        serialized: Mapping[str, Any] | None,
        input_str: str,
        run_id: UUID,
        inputs: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> tuple[str, Mapping[str, Any] | str, list[dict[str, str]], Any, str | None, UUID | None] | None:
        """The run state a tool's start sets (its name; the context its call was asked in, taken), and the call to
        judge (name, arguments as given, context, call id, where it runs: `_scope`, and the call it belongs to), or
        ``None`` when no tool call is judged."""
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        run = self._run(run_id)
        run.tool = str(name)
        call_id = kwargs.get("tool_call_id")
        context = self._tool_context(call_id, run.trace)
        if not (self.check_tool_calls or self.check_input):  # a client's call is judged with either (`_tool_call_item`)
            return None
        return run.tool, inputs if inputs is not None else input_str, context, call_id, _scope(run.trace), run.trace

    # A call no model this handler heard asked for where the tool runs (`_record_answers`, `_scope`) is the client's: a
    # ``Command(goto="tools")`` or a ``Send`` in the run's input, an edited call, a tool the application runs on what
    # it was sent. It is judged whatever ``check_tool_calls`` says (``check_input`` on), under a policy no looser than
    # the prompt stage's (`AS_INPUT`; rt60b F2), as a tool-role message no tool of the run wrote is (rt54c F1).
    def _tool_call_item(
        self,
        name: str,
        args: Mapping[str, Any] | str,
        context: list[dict[str, str]],
        call_id: Any,
        scope: str | None,
        trace: UUID | None = None,
    ) -> Item | None:
        """The check of a tool call, or ``None`` (pure but for the calls remembered: the async handler builds it on a
        worker thread when it is large); ``None`` for a ``Command`` input's call allowed at its graph's start in the
        same call (``trace``: `_note_judged_calls`), once."""
        if trace is not None and len(self._judged_calls):
            key = call_key(name, call_id, args)
            if key is not None and self._judged_calls.pop((trace, key)) is not None:
                return None
        client = not self._produced.asked({"name": name, "id": call_id, "args": args}, scope)
        if not (self.check_tool_calls or (client and self.check_input)):
            return None
        # A string argument that is JSON itself is judged as the tool reads it when it json.loads it (rt58e F5).
        read = arguments_parsed(args) if isinstance(args, Mapping) else args
        return Item(
            Stage.TOOL_CALL,
            # Rendered only until past the guard's bound (the check refuses it then): rt62a F2.
            tool_call_conversation(name, read, context, max_chars=self.guard.max_chars),
            label=f"tool call {name}",
            extra={AS_INPUT: True} if client else {},
        )

    def _tool_end_items(self, output: Any, run_id: UUID) -> list[Item]:
        run = self._drop(run_id)
        return self._tool_end_reading(output, run.tool if run else None, _scope(run.trace if run else None))

    def _tool_end_reading(self, output: Any, tool: str | None, scope: str | None) -> list[Item]:
        """The tool's result: every message it writes to the state (`tool_result_messages`: its `ToolMessage`
        with its artifact, a LangGraph ``Command``'s messages, a list of them), each with its name and ids
        (`tool_output_text`), what each ``Command`` hands the graph besides (`command_rest_text`: other state keys,
        ``Send`` payloads; rt59c F2, F4), or its text. Touches no run state (the async handler reads a large result on
        a worker thread); `Produced` is safe to write from one."""
        written = tool_result_messages(output)
        # What the tool wrote is the application's own when the model reads it back where it ran (`Produced`, in
        # ``scope``): judged there under its stage (and ``check_tool_results``), not as a client's (`AS_INPUT`).
        self._produced.record([message for _, message in written], scope)
        if not self.check_tool_results:
            return []
        budget = self.guard.max_chars
        texts: list[str | None] = [tool_output_text(message, budget, tool=tool, labels=True) for _, message in written]
        texts += [command_rest_text(command, budget) for command in tool_result_commands(output)]
        if not written and not any(texts):
            texts = [message_text(output) if isinstance(output, str) else _plain_text(output)]
        return self._tool_output_items(texts, tool, "tool result")

    def _tool_error_items(self, error: BaseException, run_id: UUID) -> tuple[list[Item], list[str] | None]:
        """A failed tool's error, and its texts (None when it is not judged): its text can quote what the tool
        read (a page it could not parse), and a `ToolNode` with ``handle_tool_errors`` turns it into the tool
        message the model and the consumer read (`error_texts`: what a ``handle_tool_errors`` callable may
        write from it too, read up to the guard's ``max_chars`` and `MAX_ERROR_CHARS`)."""
        run = self._drop(run_id)
        if not self.check_tool_results or control_flow(error):
            return [], None
        texts = error_texts(error, min(self.guard.max_chars, MAX_ERROR_CHARS))
        return self._tool_output_items(["\n".join(texts)], run.tool if run else None, "tool error"), texts

    @contextmanager
    def _noting_failed_call(self, texts: list[str] | None, kwargs: Mapping[str, Any]) -> Iterator[None]:
        """Around judging a tool's error (its ``texts``): remember the failed call for its run's end
        (`_failed_call_items`) with what the ToolNode may write that is judged already: the error's texts,
        or the guard's stop that replaces the error."""
        if texts is None:
            yield
            return
        try:
            yield
        except QwenGuardError as stop:
            self._note_failed_call(error_texts(stop), kwargs)
            raise
        self._note_failed_call(texts, kwargs)

    def _note_failed_call(self, texts: list[str], kwargs: Mapping[str, Any]) -> None:
        parent, call_id = kwargs.get("parent_run_id"), kwargs.get("tool_call_id")
        if parent is None or not call_id:
            return  # a tool run on its own: no node writes a message for it
        judged = frozenset(digest(text) for text in texts)
        with self._failed_lock:
            calls = self._failed_calls.get(parent) or {}
            calls[str(call_id)] = judged
            self._failed_calls[parent] = calls

    def _forget_failed_call(self, kwargs: Mapping[str, Any]) -> None:
        """The call runs again (a retrying tool wrapper): what it writes now is its new result or error."""
        parent, call_id = kwargs.get("parent_run_id"), kwargs.get("tool_call_id")
        if parent is None or not call_id or self._failed_calls.get(parent) is None:
            return
        with self._failed_lock:
            calls = self._failed_calls.get(parent)
            if calls is not None:
                calls.pop(str(call_id), None)

    def _failed_call_items(self, outputs: Any, run_id: UUID, kwargs: Mapping[str, Any]) -> list[Item]:
        """The messages a run that ran failed tools writes for them, as a `ToolNode` writes them (a
        ``handle_tool_errors`` callable may build its text from anywhere): judged at the run's end, which this
        handler hears before LangGraph's messages stream does. Only runs that ran a failed tool are read (a
        dict lookup for every other chain), and a message that is a text the error's check judged already
        (``"Error: " + repr(error)`` with the ``ToolNode``'s hint, its ``str()``, a note) is not judged again.
        Calls its output does not answer go to its parent run."""
        if self._failed_calls.get(run_id) is None:  # every chain but one that ran a failed tool: no lock taken
            return []
        with self._failed_lock:
            calls = self._failed_calls.pop(run_id)
        if not calls:
            return []
        items: list[Item] = []
        answered: set[str] = set()
        for message in written_messages(outputs):
            call_id = str(getattr(message, "tool_call_id", "") or "")
            judged = calls.get(call_id) if getattr(message, "type", None) == "tool" else None
            if judged is None or call_id in answered:
                continue
            answered.add(call_id)
            text = tool_output_text(message, self.guard.max_chars)
            if digest(text) in judged or digest(text.removesuffix(TOOL_NODE_HINT)) in judged:
                continue
            items.extend(self._tool_output_items([text], getattr(message, "name", None), "tool error"))
        rest = {call_id: judged for call_id, judged in calls.items() if call_id not in answered}
        parent = kwargs.get("parent_run_id")
        if rest and parent is not None:
            with self._failed_lock:
                self._failed_calls[parent] = {**(self._failed_calls.get(parent) or {}), **rest}
        return items

    @staticmethod
    def _tool_output_items(texts: Sequence[str | None], tool: str | None, what: str) -> list[Item]:
        name = tool or "tool"
        return [
            Item(Stage.TOOL_RESULT, untrusted_conversation(text, "tool output"), label=f"{what} of {name}")
            for text in texts
            if text and text.strip()
        ]

    def _retriever_end_items(self, documents: Sequence[Any], run_id: UUID) -> list[Item]:
        self._drop(run_id)
        return self._retrieved_items(documents)

    def _retrieved_items(self, documents: Sequence[Any]) -> list[Item]:
        """The checks of retrieved documents (pure: the async handler reads a large page on a worker thread)."""
        if not self.check_retrieval:
            return []
        texts = [document_text(doc, self.guard.max_chars) for doc in documents]  # metadata too: apps print it
        return [
            Item(Stage.RETRIEVAL, untrusted_conversation(text, f"document {i}"), label=f"document {i}")
            for i, text in enumerate(texts)
            if text.strip()
        ]

    def _tool_failed(self, error: BaseException, run_id: UUID, kwargs: Mapping[str, Any]) -> None:
        """The sync ``on_tool_error`` (here: the async handler answers sync dispatches with the sync hooks)."""
        if (handed_up := bubbled_command(error)) is not None:
            # A handoff raised out of the tool (a sub-agent's ``Command.PARENT``): LangGraph writes it to the graph
            # above, so it is the tool's output, read as a returned Command is (rt60 K1). Raised in its place.
            items = self._tool_end_items(handed_up, run_id)
            if items:
                raise_first(items, screen(self.guard, items))
            return
        if (values := interrupt_values(error)) is not None:
            # An interrupt() raised out of the tool: its payload goes to the run's caller (``__interrupt__``, the
            # streams, the checkpoint), the tool's output. Raised in its place: the run stops (rt60b N1).
            run = self._drop(run_id)
            items = self._interrupt_items(values, run.tool if run else None)
            raise_first(items, screen(self.guard, items))
            return
        # Raised in place of the tool's error: a ToolNode that handles errors writes this one, the guard's.
        items, texts = self._tool_error_items(error, run_id)
        with self._noting_failed_call(texts, kwargs):
            if items:
                raise_first(items, screen(self.guard, items))


#: The reasons of a decision the guard did not answer (`enforce` raises `GuardUnavailable` for them).
_UNANSWERED = ("guard_error", "timeout")


def _left_over(decision: Decision, messages: Sequence[BaseMessage]) -> GuardViolation:
    """The stop for a model input whose every block was raised for on an earlier run of its thread (`_told_apart`):
    ``decision``, the first of them, told as the thread's, naming the blocked ``messages`` and how to remove them."""
    ids = [m.id for m in messages if isinstance(m.id, str) and m.id]
    removals = ", ".join(f"RemoveMessage(id={i!r})" for i in ids) or "RemoveMessage(id=...)"
    return GuardViolation(
        decision,
        f"{decision.describe()}: the thread's state still holds what the guard blocked on an earlier run (LangGraph "
        "saved that input before the guard raised), and the model would read it: every model call on this thread is "
        f'refused until it is removed, agent.update_state(config, {{"messages": [{removals}]}}) (RemoveMessage from '
        'langchain_core.messages). GuardMiddleware(guard, exit_behavior="error") replaces it with its notice instead.',
    )


def _graph_node(kwargs: Mapping[str, Any]) -> str | None:
    """The LangGraph node a run runs in, from its metadata (``langgraph_node``), or ``None`` outside a graph."""
    node = (kwargs.get("metadata") or {}).get("langgraph_node")
    return node if isinstance(node, str) else None


def _rerun_refused(decision: Decision, call: Mapping[str, Any]) -> GuardViolation:
    """The stop for a tool call whose result was blocked, or could not be judged (the guard down, or too slow), on an
    earlier run of its thread (`_refuse_rerun`)."""
    unjudged = decision.reason in _UNANSWERED
    what = "could not judge" if unjudged else "blocked"
    after = "Once the guard is back, answer" if unjudged else "Answer"
    return GuardViolation(
        decision,
        f"{decision.describe()}: the guard {what} the result of this tool call ({call['name']!r}, id "
        f"{call['id']!r}) on an earlier run of this thread, and the thread still waits on it (LangGraph keeps the call "
        f"unanswered): the tool is not run again. {after} the call in the thread's state, agent.update_state(config, "
        f'{{"messages": [ToolMessage("...", tool_call_id={call["id"]!r})]}}, as_node="tools") (ToolMessage from '
        'langchain_core.messages). GuardMiddleware(guard, exit_behavior="error") answers it with its notice instead.',
    )


def _text_message(text: str) -> BaseMessage:
    return AIMessage(content=text)


def _file_traced_away(message: BaseMessage) -> bool:
    """Did langchain-core's traced copy of ``message`` (what ``on_chat_model_start`` is given) lose a file the model
    is sent? It turns a v1 ``file`` block with a ``base64`` key into a v0 one whose ``data`` is that ``base64``: beside
    an empty (or null) ``base64``, the file in ``data`` (which ChatBedrockConverse decodes and sends) is gone, and an
    empty ``data`` is left. (No model reads an empty file: nothing honest is refused.)"""
    content = message.content
    return isinstance(content, list) and any(
        isinstance(block, Mapping)
        and block.get("type") == "file"
        and block.get("source_type") == "base64"
        and not block.get("data")
        for block in content
    )


def _plain_text(output: Any) -> str | None:
    """Tool outputs that are not text (an object, a `Command` without tool messages) are not judged as text."""
    content = getattr(output, "content", None)
    if isinstance(content, (str, list)):
        return tool_text(output)
    return None


@speaking_as("AsyncGuardCallbackHandler(guard) (not GuardCallbackHandler) with ainvoke / astream / astream_events")
class GuardCallbackHandler(_GuardHandlerLogic, BaseCallbackHandler):
    """Screens inputs, streamed tokens, answers, tool calls, tool results and documents; raises on a violation.

    >>> handler = GuardCallbackHandler(Guard.from_pretrained("demo"))                 # doctest: +SKIP
    >>> chain.invoke(inputs, config={"callbacks": [handler]})                        # doctest: +SKIP

    Sync: use with ``invoke``/``stream``/``batch``. With async calls it still works but waits for the
    guard on the event loop; prefer `AsyncGuardCallbackHandler` there. A completion model's (``BaseLLM``)
    ``batch`` is one call for all its prompts: one blocked prompt stops them all (a chat model's, one per input).

    Args:
        guard: the `qwenguard.core.Guard` (its `Policy` decides what blocks).
        check_input / check_output / check_stream / check_tool_calls / check_tool_results /
            check_retrieval: switch each screen off (``check_tool_calls=False`` leaves the call of a
            ``with_structured_output`` schema judged: it is the answer; and a call no model this handler heard
            produced: the client's, `_tool_call_item`).
        screen_system: judge a system message that opens a model's input too (the application's prompt,
            left out by default); every later system or developer message is judged anyway.
        history_turns: earlier user/assistant turns given to the guard as context.
        stream_engine: how streamed text and tool-call arguments are judged (see ``_streaming.py``):
            ``"pipelined"`` (default with a Gen guard: checks run beside the stream, at most
            ``max_in_flight`` at once; the stream waits only when more than ``max_unjudged``
            characters are out ahead of their verdict), ``"gate"`` (every chunk judged before it is
            yielded: one guard call in the stream's path per chunk) or ``"monitor"`` (default with a
            Stream model: a StreamMonitor per run, ``monitor_options`` passed to ``guard.stream``).
            Each check reads a window of the answer of at most ``window_chars`` characters (the whole
            answer up to that; then a window that grows and hops, see ``_streaming.py``).
        parallel_input: start the model while the input is checked; the first token, the answer
            and any tool wait for the verdict (default: the guard's ``parallel_input``).
        monitor_options: `guard.stream`'s options for the ``"monitor"`` engine, checked when the handler is built.

    Every switch takes True or False only (``parallel_input`` None too: the guard's); anything else, and an unknown
    or invalid ``monitor_options`` entry, is a ``TypeError``/``ValueError`` naming it, when the handler is built.
    """

    raise_error: bool = True
    run_inline: bool = True

    # Each hook that can stop a model or tool run notes where it stopped (`_note_stop`): no retry or fallback of it
    # is asked after (`_refuse_again`).
    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        place = _place(kwargs, request=_request_digest(messages))
        self._refuse_again(place)
        self._begin(run_id, kwargs, owned=started_by_agenerate()).place = place
        self._note_held(run_id, kwargs)
        self._note_answer_tools(run_id, kwargs)
        thread = current_thread()
        self._went_on(run_id, thread, kwargs)
        try:
            self._start_input(self._chat_start_items(messages, run_id), run_id, thread)
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        place = _place(kwargs, request=_request_digest(prompts))
        self._refuse_again(place)
        self._begin(run_id, kwargs, owned=started_by_agenerate()).place = place
        try:
            self._start_input(self._llm_start_items(prompts, run_id), run_id)
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        place = self._model_place(run_id, kwargs)
        try:
            self._wait_input(run_id)
            with self._dropped_on_error(run_id):
                for judge, delta in self._feed(run_id, asynchronous=False).token_pieces(token, chunk):
                    judge.check(delta)
                quoted = self._token_quoted_items(run_id, chunk)
                raise_first(quoted, screen(self.guard, quoted))
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    def on_stream_event(self, event: Any, *, run_id: UUID, **kwargs: Any) -> None:
        place = self._model_place(run_id, kwargs)
        try:
            self._wait_input(run_id)
            with self._dropped_on_error(run_id):
                feed = self._feed(run_id, asynchronous=False)
                self._refuse_events_late(run_id, feed)
                pieces, finish = feed.event_pieces(event)
                for judge, delta in pieces:
                    judge.check(delta)
                quoted = self._event_quoted_items(run_id, event)
                raise_first(quoted, screen(self.guard, quoted))
                if finish:  # the finish event repeats the block: everything fed is judged before the next one goes out
                    for judge in feed.screens():
                        judge.flush()
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        place = self._model_place(run_id, kwargs)
        try:
            with self._runs.ending(run_id):
                with self._dropped_on_error(run_id):
                    self._wait_input(run_id)
                run, items, answered = self._end_items(response, run_id)
                if run is not None and run.feed is not None:
                    try:
                        for judge in run.feed.screens():
                            judge.finish()
                    finally:
                        run.close()
                raise_first(items, screen(self.guard, items))
                self._record_answers(*answered)  # let through: the model's own
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        place = _place(kwargs, kwargs.get("tool_call_id"), _request_digest(input_str))
        self._refuse_again(place)
        call = self._refuse_rerun(serialized, kwargs)
        run = self._begin(run_id, kwargs, owned=True)
        run.place, run.call = place, call
        self._forget_failed_call(kwargs)
        try:
            with self._dropped_on_error(run_id):
                for owner, pending in self._pending_in(run.trace):  # no tool runs before its call's input verdicts
                    try:
                        pending.wait()
                    except QwenGuardError as stop:
                        self._pending_stop(owner, stop)
            self._refuse_blocked(run_id, input_str if inputs is None else inputs)
            item = self._tool_start_item(serialized, input_str, run_id, inputs, kwargs)
            if item is not None:
                with self._dropped_on_error(run_id):
                    raise_first([item], screen(self.guard, [item]))
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise
        self._blocks.started(run_id, input_str if inputs is None else inputs)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        place, run = self._tool_place(run_id), self._runs.get(run_id)
        items = self._tool_end_items(output, run_id)
        if items:
            try:
                raise_first(items, screen(self.guard, items))
            except GuardViolation as stop:
                self._blocks.failed(run_id)
                self._note_stop(stop, place)
                self._note_blocked_result(run, stop)
                raise
            except QwenGuardError as stop:  # the guard could not judge it: the tool ran all the same
                self._note_blocked_result(run, stop)
                raise
        self._blocks.ended(run_id)  # a blocked input under it that it caught fails nothing above it

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        place, run = self._tool_place(run_id), self._runs.get(run_id)
        self._blocks.failed(run_id)
        try:
            self._tool_failed(error, run_id, kwargs)
        except GuardViolation as stop:
            self._note_stop(stop, place)
            if interrupt_values(error) is None:  # an interrupt's tool runs again on resume, as LangGraph's are
                self._note_blocked_result(run, stop)
            raise
        except QwenGuardError as stop:  # the guard could not judge the error: the tool ran all the same
            if interrupt_values(error) is None:
                self._note_blocked_result(run, stop)
            raise

    def on_retriever_start(self, serialized: dict[str, Any], query: str, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._begin(run_id, kwargs, owned=True)
        run.query = query
        self._refuse_blocked(run_id)

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        items = self._retriever_end_items(documents, run_id)
        raise_first(items, screen(self.guard, items))

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)

    def on_chain_start(self, serialized: dict[str, Any], inputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        items = self._command_input_items(inputs)  # before the run is linked: a stop here gets no end event
        decisions = screen(self.guard, items)
        raise_first(items, decisions)
        self._refuse_retried_chain(run_id, kwargs)
        self._chain_started(run_id, inputs, kwargs)
        self._note_fallbacks(run_id, serialized, kwargs)
        if items:
            self._note_judged_calls(items, decisions, run_id)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        # Raised before LangGraph's messages handler (after this one) streams the node's messages.
        items = self._failed_call_items(outputs, run_id, kwargs)
        self._chain_ended(run_id)
        if items:
            raise_first(items, screen(self.guard, items))

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._chain_failed(run_id)


_HOOKS = frozenset(
    {
        "on_chat_model_start",
        "on_llm_start",
        "on_llm_new_token",
        "on_stream_event",
        "on_llm_end",
        "on_llm_error",
        "on_tool_start",
        "on_tool_end",
        "on_tool_error",
        "on_retriever_start",
        "on_retriever_end",
        "on_retriever_error",
        "on_chain_start",
        "on_chain_end",
        "on_chain_error",
    }
)


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

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        owned = started_by_agenerate()
        asked = _asked(messages)  # one pass over the pointers: only the last user turns are read
        place = _place(kwargs, request=await built_off_loop(lambda: _request_digest(messages), asked))
        self._refuse_again(place)
        run = self._begin(run_id, kwargs, owned=owned)
        run.place = place
        self._note_held(run_id, kwargs)
        self._note_answer_tools(run_id, kwargs)
        scope, thread = _scope(run.trace), current_thread()  # on the loop: its context tells the graph run
        self._went_on(run_id, thread, kwargs)
        try:
            items, context, calls = await built_off_loop(lambda: self._chat_start_reading(messages, scope), messages)
            # On the loop, once read: a cancelled read sets nothing.
            self._run(run_id).context, self._run(run_id).calls_context = context, calls
            await self._astart_input(items, run_id, thread)
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    async def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        owned = started_by_agenerate()
        place = _place(kwargs, request=await built_off_loop(lambda: _request_digest(prompts), prompts))
        self._refuse_again(place)
        self._begin(run_id, kwargs, owned=owned).place = place
        try:
            await self._astart_input(self._llm_start_items(prompts, run_id), run_id)
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        place = self._model_place(run_id, kwargs)
        try:
            await self._await_input(run_id)
            with self._dropped_on_error(run_id):
                for judge, delta in self._feed(run_id, asynchronous=True).token_pieces(token, chunk):
                    await judge.acheck(delta)
                quoted = self._token_quoted_items(run_id, chunk)
                raise_first(quoted, await ascreen(self.guard, quoted))
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    async def on_stream_event(self, event: Any, *, run_id: UUID, **kwargs: Any) -> None:
        place = self._model_place(run_id, kwargs)
        try:
            await self._await_input(run_id)
            with self._dropped_on_error(run_id):
                feed = self._feed(run_id, asynchronous=True)
                self._refuse_events_late(run_id, feed)
                pieces, finish = feed.event_pieces(event)
                for judge, delta in pieces:
                    await judge.acheck(delta)
                quoted = self._event_quoted_items(run_id, event)
                raise_first(quoted, await ascreen(self.guard, quoted))
                if finish:
                    for judge in feed.screens():
                        await judge.aflush()
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        place = self._model_place(run_id, kwargs)
        try:
            with self._dropped_on_error(run_id):
                await self._await_input(run_id)
            # The answer's checks read its text and render its tool calls: off the loop when it is large (rt62a F5).
            run, items, answered = await built_off_loop(lambda: self._end_items(response, run_id), response)
            if run is not None and run.feed is not None:
                try:
                    for judge in run.feed.screens():
                        await judge.afinish()
                finally:
                    run.close()
            raise_first(items, await ascreen(self.guard, items))
            # Let through: the model's own. Fingerprints read the whole answer: off the loop when it is large.
            await built_off_loop(lambda: self._record_answers(*answered), answered[0])
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)

    async def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        asked = await built_off_loop(lambda: _request_digest(input_str), input_str)
        place = _place(kwargs, kwargs.get("tool_call_id"), asked)
        self._refuse_again(place)
        thread_call = self._refuse_rerun(serialized, kwargs)
        run = self._begin(run_id, kwargs, owned=True)
        run.place, run.call = place, thread_call
        self._forget_failed_call(kwargs)
        try:
            with self._dropped_on_error(run_id):
                for owner, pending in self._pending_in(run.trace):  # no tool runs before its call's input verdicts
                    try:
                        await pending.wait_async()
                    except QwenGuardError as stop:
                        self._pending_stop(owner, stop)
            self._refuse_blocked(run_id, input_str if inputs is None else inputs)
            # The run's state on the loop; the call's arguments are read into its check on a worker thread when large
            # (a tool's input is the model's, and can be a client's: rt55b F4).
            call = self._tool_started(serialized, input_str, run_id, inputs, kwargs)
            item = None if call is None else await built_off_loop(lambda: self._tool_call_item(*call), call)
            if item is not None:
                with self._dropped_on_error(run_id):
                    raise_first([item], await ascreen(self.guard, [item]))
        except GuardViolation as stop:
            self._note_stop(stop, place)
            raise
        self._blocks.started(run_id, input_str if inputs is None else inputs)

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        place, run = self._tool_place(run_id), self._runs.get(run_id)
        try:
            await self._atool_output(output, run_id)
        except GuardViolation as stop:
            self._blocks.failed(run_id)
            self._note_stop(stop, place)
            self._note_blocked_result(run, stop)
            raise
        except QwenGuardError as stop:  # the guard could not judge it: the tool ran all the same
            self._note_blocked_result(run, stop)
            raise
        self._blocks.ended(run_id)  # a blocked input under it that it caught fails nothing above it

    async def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        place, run = self._tool_place(run_id), self._runs.get(run_id)
        self._blocks.failed(run_id)
        try:
            await self._atool_failed(error, run_id, kwargs)
        except GuardViolation as stop:
            self._note_stop(stop, place)
            if interrupt_values(error) is None:
                self._note_blocked_result(run, stop)
            raise
        except QwenGuardError as stop:  # the guard could not judge the error: the tool ran all the same
            if interrupt_values(error) is None:
                self._note_blocked_result(run, stop)
            raise

    async def _atool_failed(self, error: BaseException, run_id: UUID, kwargs: Mapping[str, Any]) -> None:
        """The async ``on_tool_error`` (not a hook: see `_atool_output`)."""
        if (handed_up := bubbled_command(error)) is not None:  # a handoff raised out of the tool: its output
            await self._atool_output(handed_up, run_id)
            return
        if (values := interrupt_values(error)) is not None:  # an interrupt() raised out of the tool: its output
            run = self._drop(run_id)
            tool = run.tool if run else None
            items = await built_off_loop(lambda: self._interrupt_items(values, tool), values)
            raise_first(items, await ascreen(self.guard, items))
            return
        items, texts = self._tool_error_items(error, run_id)
        with self._noting_failed_call(texts, kwargs):
            if items:
                raise_first(items, await ascreen(self.guard, items))

    async def _atool_output(self, output: Any, run_id: UUID) -> None:
        """What the tool wrote (its result, or the Command of a handoff raised out of it), judged; raises on a block.
        Not a hook: called by the hooks, which are dispatched by name (`__getattribute__`)."""
        run = self._drop(run_id)
        tool = run.tool if run else None
        scope = _scope(run.trace if run else None)
        # A result of 100,000 content blocks held the loop 0.45 s here (rt55b F4): read on a worker thread.
        if opaque_output(output):  # an artifact of bytes or objects: not sized, read off the loop
            items = await asyncio.to_thread(self._tool_end_reading, output, tool, scope)
        else:
            items = await built_off_loop(lambda: self._tool_end_reading(output, tool, scope), output)
        if items:
            raise_first(items, await ascreen(self.guard, items))

    async def on_retriever_start(self, serialized: dict[str, Any], query: str, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._begin(run_id, kwargs, owned=True)
        run.query = query
        self._refuse_blocked(run_id)

    async def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)
        # 4,000 documents of 200 metadata entries held the loop a second here (rt55b F4): read on a worker thread.
        items = await built_off_loop(lambda: self._retrieved_items(documents), documents)
        raise_first(items, await ascreen(self.guard, items))

    async def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._drop(run_id)

    async def on_chain_start(self, serialized: dict[str, Any], inputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        # Most chains: no Command, nothing read. A resume value is read off the loop when large, and always when it is
        # not a string: an object's fields are not sized before they are read (`_screening.built_off_loop`).
        command = type(inputs).__name__ == "Command"
        resume = getattr(inputs, "resume", None) if command else None
        sends = command and _sends(inputs)
        if not command or (resume is None and getattr(inputs, "update", None) is None and not sends):
            items: list[Item] = []
        elif isinstance(resume, str) and getattr(inputs, "update", None) is None and not sends:
            items = await built_off_loop(lambda: self._command_input_items(inputs), resume)
        else:
            items = await asyncio.to_thread(self._command_input_items, inputs)
        decisions = await ascreen(self.guard, items)
        raise_first(items, decisions)
        self._refuse_retried_chain(run_id, kwargs)
        self._chain_started(run_id, inputs, kwargs)
        self._note_fallbacks(run_id, serialized, kwargs)
        if items:
            self._note_judged_calls(items, decisions, run_id)

    async def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        items = self._failed_call_items(outputs, run_id, kwargs)
        self._chain_ended(run_id)
        if items:
            raise_first(items, await ascreen(self.guard, items))

    async def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._chain_failed(run_id)
