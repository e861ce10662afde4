"""`GuardMiddleware`: Qwen3Guard inside `langchain.agents.create_agent`, where a violation becomes a policy action.

Where it looks (every step is one batched guard call):

- ``before_agent``: the run's input besides its messages, once a run: every other key of the agent's state (a note a
  ``@dynamic_prompt`` prints into the system prompt), judged as the user's turn, read as a tool's ``Command`` writing
  that key is; blocked, the key is cleared and the run ends with the refusal (rt63d F3). A ``Command`` input writes
  keys past it (a resume, ``goto="model"``): ``before_model``, the model call and the tool call judge the keys not
  allowed before too (rt63h F1). The run's context (``context=``, which a tool reads from ``runtime.context`` and a
  ``@dynamic_prompt`` may print) is judged with them, the same way, its ids left out (`_run_context`); blocked, the
  run ends with the refusal, as it is in no state to clear (rt64c F1). Each is judged alone: not joined with the
  others, nor beside the user's messages (rt65g F1, rt65l F1, documented: judged so, ordinary apps were blocked and
  lost their keys, rt65p F3, F4, rt65t F1).
- ``before_model``: what is new since the model's last turn — the user's input (prompt check, with
  the earlier turns as context) and tool results (untrusted content: injected instructions show up
  as Jailbreak). Runs before the model sees them. Every system or developer message in the state is
  input too, judged as a prompt: the agent's own ``system_prompt`` is never in the state.
- ``wrap_model_call``: the model's answer, as the call's outcome — its text (response check; held
  and judged as it streams, see below) and every tool call it asks for (``Tool call: name({...})`` as
  the assistant's action). Before any ``after_model`` hook sees it: hooks run in the reverse order of
  the list, so another middleware's (``HumanInTheLoopMiddleware``'s review, a logger) would otherwise
  come first. A blocked answer never reaches the state, nor its structured response. What a middleware
  inside this one writes beside the answer (another message of the response, a ``Command`` returned in an
  ``ExtendedModelResponse``: its messages and what it writes to other state keys) is judged there too, as untrusted
  text.
- ``after_model``: the same again for an answer that did not come through this middleware's model
  call (a middleware listed before it answered from a cache), or that a middleware listed before it rewrote
  after the call (its text is judged again unless it still says what the call judged: by fingerprint, not
  by id); verdicts already given are cached.
- ``wrap_tool_call``: the tool call again right before ``handler`` (the last line of defence; the
  verdict is cached; a call no guarded model call produced, and let through, on the same thread (with no thread, in
  the same run) is the client's, judged whatever ``check_tool_calls`` says and no looser than a prompt: rt60b F2,
  stop 60 leftover), with the values a ``Command(resume=...)`` gives its ``interrupt()``s, as a
  prompt (rt60b F3), and the tool's result right after it: every message it writes to the state
  (`tool_result_messages`), its artifact, name and worded ids too, what a ``Command`` writes to any other state key
  and its ``Send`` payloads (`command_rest`: blocked, the call's notice is the whole result), a sub-agent's handoff
  raised out of the tool
  (``Command(graph=Command.PARENT)``) too, and the text of an interrupt it raises to the run's caller. The tool runs out of sight of the run's callbacks, which hear
  its end with the judged result, and of the parent's stream: a sub-agent it runs streams to no one and is
  saved in the thread only where it must be resumed (`_held_tool.py`). What the tool runs is judged all the same:
  a handler on this guard hears the tool's children, judges each call a model there asks for before its tool runs
  (with ``check_tool_calls``), and its stop withholds the guarded call's result (`ToolGuards`, rt67d F1); lent
  beside the app's qwenguard handlers unless one judges tool calls on this guard (rt70b F1). A ``return_direct`` tool's result is the run's
  answer: decided under the response stage too, the stricter taken (`_answers_run`, rt65e F2).

What a violation does (``exit_behavior``):

- ``"error"``: raise `GuardViolation` (the run aborts; the middleware writes nothing to the state). With a
  checkpointer LangGraph has already written the run's input to the thread, so a blocked prompt stays there; on
  the thread's next turn it gets the input notice in its place (in the state) and that turn goes on: a block
  already raised for on that thread (`RaisedChecks`, in this process) is not raised again, so one message does not
  refuse every later turn of a shared thread. A new block, the same one on another thread or with no thread, or a
  blocked message still the one to answer, raises. A blocked tool call or result raises out of the tools, leaving the
  thread's answer with a call no tool message answers: the thread's next turn answers it with the notice ``"end"``
  writes (and each call beside it no tool message answers with a notice that its result was lost, rt65l F2), and a
  run resumed at the tools gets that notice in place of the call (`RaisedToolStops`, rt65g F2). A stop is kept by the
  call's name and id (a middleware listed before this one may rewrite its arguments, rt65l F3), and only while the
  thread's last answer waits on the call (rt65l F4). A result the guard could not judge (the policy failing closed)
  is kept the same way once the tool ran, and its retry judges that result again, the tool not run again (rt66e F1);
  so is an async call cancelled beside a stop once its tool was called, with the notice that its result was lost
  (rt66e F2).
- ``"end"``: the flagged message is replaced *in place* (same message id, so the unsafe text and its
  dangling tool calls leave the state) and the agent jumps to the end with ``violation_message``.
- ``"replace"``: the flagged message is replaced in place and the agent goes on: a withheld tool
  result reaches the model as a notice, a replaced answer becomes the final answer. A blocked user
  turn ends the run with ``violation_message`` (there is nothing left to answer).

A tool call blocked in ``wrap_tool_call`` never executes: with ``"error"`` it raises, otherwise the
model receives an error `ToolMessage` (``status="error"``).

Token streaming (``check_stream``, on by default): ``wrap_model_call`` runs the model behind a
hold-back wrapper (``_held_model.py``), so ``stream_mode="messages"`` (and ``stream_events``)
consumers receive only chunks whose text the guard has judged: the core StreamMonitor judges each
sentence (or, with a Stream model, each token) beside the generation and releases it once its verdict
is in. Streamed tool calls are held until the calls are judged. A violation mid-stream stops the
model; what the consumer already has is the judged-safe prefix, and the policy action follows
``exit_behavior`` (the answer becomes ``violation_message``, or `GuardViolation` is raised). Without
anyone streaming (``invoke``), the answer is judged whole inside the model call, before its run ends (so the run's
end tells its handlers only an answer the guard let through).

Parallel input screening is deliberately not done here (``Guard.parallel_input`` is ignored): the
input is judged in ``before_model``, its own graph node, so a blocked turn is redacted from the
state (``"end"``/``"replace"``) and never reaches the model. Overlapping would mean sending the turn
to the model before the verdict and redacting it from the state afterwards, from inside the model
call (whose streamed chunks the hold-back wrapper could keep until then). For overlap in an agent
today, pass ``check_input=False`` here and a ``GuardCallbackHandler(guard, parallel_input=True)`` in
the config: it waits for the verdict at the first token and before any tool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property, lru_cache
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse, hook_config
from langchain.agents.middleware.types import OmitFromSchema
from langchain_core.messages import AIMessage, BaseMessage, RemoveMessage, ToolMessage
from langchain_core.runnables import Runnable
from langgraph.config import get_config
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.runtime import Runtime
from langgraph.types import Command
from qwenguard.core import (
    Action,
    Decision,
    Guard,
    GuardUnavailable,
    GuardViolation,
    InputTooLarge,
    QwenGuardError,
    Risk,
    Stage,
    Verdict,
    enforce,
)
from qwenguard.core.formats.conversations import prompt_conversation, tool_call_conversation, untrusted_conversation
from qwenguard.core.guard import speaking_as
from qwenguard.core.policy import require_switch
from qwenguard.core.streaming.monitor_core import check_stream_options
from typing_extensions import NotRequired, Required  # the forms LangChain's state schemas are written with

from .._common import Bounded, stop_of
from ._answer_tools import strategy_tools
from ._held_model import HeldBackChatModel, StreamLedger, aerror_stop, error_stop
from ._held_request import HeldModelRequest
from ._held_tool import ToolGuards, ToolRun, pending_resumes
from ._holding import HELD_CALL, HeldCall, monitor_options
from ._input_memory import (
    KEYED_BY,
    MAX_ALLOWED_CHECKS,
    AllowedChecks,
    OwnNotices,
    Produced,
    RaisedChecks,
    RaisedToolStops,
    current_scope,
    current_thread,
    judged_content,
    without_runs_of_blocked,
)
from ._json_reading import reading_items
from ._messages import (
    AS_ANSWER,
    AS_INPUT,
    DEFAULT_HISTORY_TURNS,
    Item,
    call_history,
    call_key,
    command_messages,
    command_rest_text,
    guard_history,
    input_items,
    is_update_pairs,
    label_item,
    message_text,
    opaque_output,
    output_items,
    payload_leaf,
    tool_arguments,
    tool_labels,
    tool_output_text,
    tool_result_commands,
    tool_result_messages,
    tool_text,
    worded,
)
from ._run_context import context_text, run_context
from ._screening import METADATA_KEY, ascreen, blocked_pairs, built_off_loop, require_guard, screen
from ._stopped_calls import StoppedCalls
from ._tool_errors import bubbled_command, control_flow, error_texts, interrupt_text, interrupt_values, object_text

__all__ = [
    "GuardMiddleware",
    "ExitBehavior",
    "DEFAULT_VIOLATION_MESSAGE",
    "DEFAULT_INPUT_NOTICE",
    "DEFAULT_TOOL_RESULT_NOTICE",
    "DEFAULT_TOOL_CALL_NOTICE",
]

ExitBehavior = Literal["error", "end", "replace"]
_M = TypeVar("_M", bound=BaseMessage)

#: The assistant's answer when a violation ends the run. ``{categories}`` is filled in.
DEFAULT_VIOLATION_MESSAGE = "I can't help with that: the content was blocked by the safety guard ({categories})."
#: What replaces a blocked user turn in the state.
DEFAULT_INPUT_NOTICE = "[message withheld by the safety guard ({categories})]"
#: What the model sees instead of a blocked tool result.
DEFAULT_TOOL_RESULT_NOTICE = (
    "The output of tool '{tool}' was withheld by the safety guard ({categories}); do not rely on it."
)
#: What the model sees instead of running a blocked tool call.
DEFAULT_TOOL_CALL_NOTICE = "The call to tool '{tool}' was blocked by the safety guard ({categories}) and did not run."
#: What answers a call whose result was lost when the run stopped on a blocked call beside it (``"error"``).
#: A call that ran beside a blocked one and whose result was lost with the raise: it may have acted (a payment, an
#: e-mail), so the model is told not to repeat it unasked (rt65p F2: "call it again if needed" paid twice).
_LOST_RESULT_NOTICE = (
    "The tool '{tool}' may have run, but its result was lost: the run stopped on a blocked tool call beside it. Do "
    "not call it again unless the user asks to."
)
#: How many answers whose text was judged in the model call are remembered until ``after_model``.
_MAX_JUDGED_IDS = 1024
#: What a withheld answer keeps of its ``additional_kwargs``: the provider classes' bookkeeping, no words.
_ANSWER_BOOKKEEPING_KEYS = frozenset(
    {"__openai_role__", "__openai_function_call_ids__", "__gemini_function_call_thought_signatures__"}
)
#: Marks the record of a message other than a `ToolMessage` that a tool wrote and `wrap_tool_call` withheld.
_WRITTEN_BY_TOOL = "written_by_tool"
#: Marks the record of a stop's notice that `_healed` wrote on the thread's next turn: an earlier run's block, which
#: does not end the run it is read in (`_ended_by_tool`). Kept in the checkpoint with the message.
_HEALED = "healed"
#: Marks (in `Item.extra`) a tool's result judged with its name (`tool_labels`): the notice drops the name.
_NAMED = "named"
#: Marks (in `Item.extra`) the check of what a tool's ``Command`` hands the graph besides its messages (`command_rest`):
#: blocked, the call's notice is the whole result.
_WHOLE = "whole_result"
#: Marks (in `Item.extra`) the check of what a ``Command`` beside the model's answer writes besides its messages: the
#: Command (blocked, it is withheld whole).
_COMMAND = "command"
#: Marks (in `Item.extra`) the check of a state key the run's input holds besides its messages: the key's name.
_STATE_KEY = "state_key"
#: Marks (in `Item.extra`) the check of the run's context (`_run_context`): no state key to clear, the run ends.
_RUN_CONTEXT = "run_context"
#: Marks (in `Item.extra`) the check of what a tool's ``Command`` writes besides its messages: the Command, whose
#: state keys are taken as allowed when it is (`_trust_state_writes`).
_STATE_WRITES = "state_writes"
#: State keys not judged as the client's input: its messages (judged as messages), and what the agent framework writes
#: itself, which a client cannot send (``create_agent`` leaves them out of the input schema): ``jump_to`` (a hook's
#: jump, ephemeral) and ``structured_response`` (the agent's parsed answer, judged as its answer). A name with a
#: leading ``_`` is judged as any other: LangGraph gives it no meaning, and a client can send every key the input schema
#: holds (a middleware's private keys, ``PrivateStateAttr``, are out of it: numbers, where they are in the state).
_NOT_INPUT_KEYS = frozenset({"messages", "jump_to", "structured_response"})
#: ``HumanInTheLoopMiddleware``'s state key of a reviewer's edits, by call id (``{"name": ..., "args": ...}``): its
#: ``wrap_tool_call`` runs the edit in place of the call (`_executed_call` judges it there).
_REVIEWER_EDITS = "hitl_edited_tool_calls"


#: The name a withheld earlier answer's tool calls keep (the provider reads the call back without its text).
WITHHELD_CALL = "withheld_tool_call"


def _withheld_call_names(state: AgentState, redacted: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The tool messages answering the calls of withheld answers, without their names: a name that matched its call's
    was not judged on its own (`_messages.sent_labels`), and some provider classes send it (Gemini's
    ``functionResponse.name``)."""
    ids = {
        c["id"]
        for m in redacted
        if isinstance(m, AIMessage)
        for c in (*m.tool_calls, *m.invalid_tool_calls)
        if c.get("id")
    }
    done = {m.id for m in redacted}
    return (
        [
            m.model_copy(update={"name": None})
            for m in state.get("messages") or ()
            if isinstance(m, ToolMessage) and m.name and m.tool_call_id in ids and m.id not in done
        ]
        if ids
        else []
    )


def _same(item: Item, message: BaseMessage) -> bool:
    """Is ``item`` a check of ``message`` (the same message, or a copy of it with its id)?"""
    return item.message is message or (item.message is not None and bool(message.id) and item.message.id == message.id)


def _fill(template: str, decision: Decision, **extra: str) -> str:
    categories = ", ".join(decision.categories) or decision.reason
    try:
        return template.format(categories=categories, reason=decision.reason, **extra)
    except (KeyError, IndexError):  # a user template with other fields: use it as is
        return template


def _screened(message: BaseMessage) -> bool:
    """True for messages this middleware wrote: they are not screened again."""
    meta = getattr(message, "response_metadata", None) or {}
    return isinstance(meta, dict) and isinstance(meta.get(METADATA_KEY), dict)


def _model_answer(messages: Sequence[BaseMessage]) -> tuple[int, list[ToolMessage]] | None:
    """What the model node just added, as ``after_model`` sees it: the index of its answer, the last
    message, or of the answer followed by the tool messages the node added for its tool calls
    (``create_agent``'s structured output with ``ToolStrategy``: "Returning structured response: ...", or
    a parse error to retry on); and those tool messages."""
    index = len(messages) - 1
    while index >= 0 and isinstance(messages[index], ToolMessage):
        index -= 1
    answer = messages[index] if index >= 0 else None
    if not isinstance(answer, AIMessage):
        return None
    trailing = [m for m in messages[index + 1 :] if isinstance(m, ToolMessage)]  # all of them, by the loop
    ids = {call.get("id") for call in answer.tool_calls}
    return (index, trailing) if all(t.tool_call_id in ids for t in trailing) else None


def _with_notices(result: Any, notices: dict[int, BaseMessage]) -> Any:
    """A tool's result with the entries in ``notices`` (by identity: see `tool_result_messages`) replaced, in a
    `ToolMessage`, a ``Command``'s messages or a list of them; the rest of it unchanged."""
    if isinstance(result, (list, tuple)):
        return [_with_notices(part, notices) for part in result]
    if isinstance(result, Command) and any(id(m) in notices for m in command_messages(result.update)):
        return dataclasses.replace(result, update=_update_with_notices(result.update, notices))
    return notices.get(id(result), result)


def _update_with_notices(update: Any, notices: dict[int, BaseMessage]) -> Any:
    """A ``Command``'s ``update`` with its messages in ``notices`` replaced, in the form it came in."""

    def replaced(written: Any) -> Any:
        entries = written if isinstance(written, (list, tuple)) else [written]
        return [notices.get(id(m), m) for m in entries]

    if isinstance(update, Mapping):
        return {**update, "messages": replaced(update["messages"])}
    if is_update_pairs(update):
        return [(key, replaced(value) if key == "messages" else value) for key, value in update]
    if isinstance(update, (list, tuple, BaseMessage)):
        return replaced(update)  # a list-state graph: the update is the messages
    if dataclasses.is_dataclass(update) and not isinstance(update, type):
        return dataclasses.replace(update, messages=replaced(update.messages))  # type: ignore[attr-defined]
    if hasattr(update, "model_copy"):
        return update.model_copy(update={"messages": replaced(update.messages)})
    # An update this guard cannot rewrite: the blocked message must not go on, so neither does the result.
    raise GuardUnavailable(
        f"a tool's Command update ({type(update).__name__}) holds a blocked message the guard cannot replace; "
        "the result is refused"
    )


def _agent_name() -> str | None:
    """The name ``create_agent(name=...)`` gave the running agent (its run's ``lc_agent_name``), or ``None``.

    Known limit (rt69k F2, open): the run's metadata is the caller's config merged over the graph's own, so a
    caller's ``config["metadata"]["lc_agent_name"]`` replaces a named agent's and sets one for an unnamed agent; a
    model node sees no other record of the graph's name. The callback handler checks it against the agent graph's
    run (`GuardCallbackHandler._own_agent_name`)."""
    try:
        metadata = get_config().get("metadata") or {}
    except RuntimeError:  # not inside a runnable
        return None
    name = metadata.get("lc_agent_name")
    return name if isinstance(name, str) and name else None


def _answers_of(response: Any) -> list[AIMessage]:
    """The answers in a model call's response: every AI message of a `ModelResponse` (the model's, and any a
    middleware inside the guard added) but the refusals this middleware wrote."""
    if not isinstance(response, ModelResponse):
        return []
    return [m for m in response.result if isinstance(m, AIMessage) and not _screened(m)]


def _structured_notes(request: Any, response: ModelResponse) -> set[int]:
    """The tool messages (by identity) ``create_agent``'s model node wrote in ``response`` for a ``ToolStrategy``
    answer: each answers a structured-output call of an answer in it and says what the node writes, the strategy's
    ``tool_message_content`` or "Returning structured response: " and the parsed response of that (judged) call."""
    names = strategy_tools(getattr(request, "response_format", None))
    if not names:
        return set()
    calls = {
        c.get("id") for m in response.result if isinstance(m, AIMessage) for c in m.tool_calls if c["name"] in names
    }
    said = {f"Returning structured response: {response.structured_response}"}
    own = getattr(request.response_format, "tool_message_content", None)
    if isinstance(own, str):
        said.add(own)
    return {
        id(m)
        for m in response.result
        if isinstance(m, ToolMessage) and m.tool_call_id in calls and isinstance(m.content, str) and m.content in said
    }


def _inner_commands(handler: Any) -> list[Any] | None:
    """The Commands middleware inside this one returned beside the answer (``ExtendedModelResponse``), where
    ``handler`` is LangChain's composed inner handler: they are kept in the list it closes over
    (``accumulated_commands`` in ``langchain.agents.factory``'s ``compose_two``, private: read by name, and
    tests/langchain/test_lc_rt57b_control_flow.py fails if it moves), filled by the time ``handler`` returns and read
    after this middleware returns. ``None`` where the handler is not such a closure (nothing is inside this one)."""
    code, cells = getattr(handler, "__code__", None), getattr(handler, "__closure__", None)
    if code is None or not cells:
        return None
    for name, cell in zip(code.co_freevars, cells):
        if name == "accumulated_commands":
            try:
                found = cell.cell_contents
            except ValueError:  # an empty cell
                return None
            return found if isinstance(found, list) else None
    return None


async def _read_off_loop(make: Callable[[], Any], value: Any, result: Any = None) -> Any:
    """``make()`` (reading a tool's result, ``value``) off the loop when it is large (`built_off_loop`), or when the
    result carries what cannot be sized before it is read (`opaque_output`: an artifact of objects or bytes): its
    checks' texts are as long as what they read, and fingerprinting them held the loop too."""
    if opaque_output(value if result is None else result):
        return await asyncio.to_thread(make)
    return await built_off_loop(make, value)


def _judged_id(item: Item, message: BaseMessage) -> dict[str, Any]:
    """A tool's message judged with its id (words, `tool_labels`): blocked, its notice goes under a new one."""
    return {"id": None} if item.extra.get(_NAMED) and worded(message.id) else {}


def _written_by_tool(message: BaseMessage) -> bool:
    """A message a tool's result wrote (a handoff's AI or human turn), withheld by `wrap_tool_call`."""
    record = (getattr(message, "response_metadata", None) or {}).get(METADATA_KEY)
    return isinstance(record, dict) and record.get(_WRITTEN_BY_TOOL) is True


def _after_last_ai(messages: Sequence[BaseMessage]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], AIMessage) and not _written_by_tool(messages[i]):
            return i + 1
    return 0


def _edit_key(call_id: Any, action: Any) -> str | None:
    """A fingerprint of the reviewer's edit ``action`` of the call ``call_id`` (`_REVIEWER_EDITS`) as the call it runs
    (`call_key`: no text kept), or ``None`` for one that is no call."""
    if not isinstance(action, Mapping):
        return None
    return call_key(action.get("name"), call_id, action.get("args"))


def _as_healed(notice: BaseMessage) -> BaseMessage:
    """An earlier run's stop's notice (`GuardMiddleware._healed`), its record marked so (`_HEALED`)."""
    record = (notice.response_metadata or {}).get(METADATA_KEY)
    if not isinstance(record, dict):
        return notice  # no block to end a run on (`_lost_result`)
    meta = {**notice.response_metadata, METADATA_KEY: {**record, _HEALED: True}}
    return notice.model_copy(update={"response_metadata": meta})


def _decision_from(record: dict[str, Any]) -> Decision:
    """A Decision rebuilt from its ``to_dict()`` record (only what the refusal text needs)."""
    verdict = None
    if record.get("risk"):
        verdict = Verdict(Risk(record["risk"]), tuple(record.get("categories") or ()))
    return Decision(
        bool(record.get("allowed")),
        Action(record.get("action", "block")),
        Stage(record.get("stage", "tool_result")),
        str(record.get("reason", "unsafe")),
        verdict,
        record.get("error"),
    )


def _with_decision(meta: dict[str, Any] | None, decision: Decision) -> dict[str, Any]:
    return {**(meta or {}), METADATA_KEY: decision.to_dict()}


def _state_messages(request: Any) -> list[BaseMessage]:
    """The messages of a tool call request's state (a dict, or a state object)."""
    state = request.state
    messages = state.get("messages") if isinstance(state, dict) else getattr(state, "messages", None)
    return list(messages or ())


def _asking_answer(messages: Sequence[BaseMessage], call: Mapping[str, Any]) -> int | None:
    """The index of the latest answer in ``messages`` that asks for ``call`` (by its id), or ``None``."""
    ident = call.get("id")
    if not isinstance(ident, str) or not ident:
        return None
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, AIMessage) and any(c.get("id") == ident for c in message.tool_calls):
            return i
    return None


def _read_by_call(request: Any) -> tuple[Any, list[BaseMessage]]:
    """What a tool call's check reads (`built_off_loop` measures it): the call, and its state's messages."""
    return request.tool_call, _state_messages(request)


def _kept_from_input() -> frozenset[str]:
    """The state keys a middleware class keeps out of the agent's input schema (``PrivateStateAttr``,
    ``OmitFromInput``): its own hooks write them, and a client cannot send them (LangGraph drops them from the input).
    ``HumanInTheLoopMiddleware``'s ``hitl_edited_tool_calls`` holds a reviewer's edit, judged as the call it edits;
    ``ToolCallLimitMiddleware``'s counts are numbers. Read from every middleware class loaded (a few dozen)."""
    found: set[str] = set()
    stack: list[type] = [AgentMiddleware]
    seen: set[type] = set()
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.add(cls)
            stack.extend(cls.__subclasses__())
            schema = getattr(cls, "state_schema", None)
            if isinstance(schema, type):
                found |= _schema_kept_from_input(schema)
    return frozenset(found)


@lru_cache(maxsize=256)
def _schema_kept_from_input(schema: type) -> frozenset[str]:
    """The keys of one state schema annotated out of the input (`_kept_from_input`)."""
    try:
        hints = get_type_hints(schema, include_extras=True)
    except Exception:  # noqa: BLE001 - a schema whose hints do not resolve: none known, its keys are judged
        return frozenset()
    kept = set()
    for key, hint in hints.items():
        while get_origin(hint) in (NotRequired, Required):
            hint = get_args(hint)[0]
        if any(isinstance(m, OmitFromSchema) and m.input for m in getattr(hint, "__metadata__", ())):
            kept.add(key)
    return frozenset(kept)


def _state_rest(state: Any) -> list[Any]:
    """The values of the state's keys judged as the client's input (`_NOT_INPUT_KEYS` left out): what reading them
    costs (`built_off_loop` measures it)."""
    return [value for key, value in state.items() if key not in _NOT_INPUT_KEYS] if isinstance(state, Mapping) else []


def _state_read(state: Any, context: Any) -> tuple[Any, ...]:
    """What `GuardMiddleware._state_key_items` reads of ``state`` and the run's ``context``: its keys, the context."""
    return _state_rest(state), context


def _keys_of(item: Item) -> list[Any]:
    """The state key a check of the state reads (`_state_key_items`); none for the run's context."""
    return [item.extra[_STATE_KEY]] if _STATE_KEY in item.extra else []


def _with_healed(update: dict[str, Any] | None, healed: list[BaseMessage] | None) -> dict[str, Any] | None:
    """``before_agent``'s update with the thread's history answered (`GuardMiddleware._healed`) written first: the
    messages the update adds (a refusal) come after it."""
    if healed is None:
        return update
    return {**(update or {}), "messages": [*healed, *((update or {}).get("messages") or ())]}


def _updated(state: Any, update: dict[str, Any] | None) -> Any:
    """``state`` as ``update`` leaves it (`GuardMiddleware._blocked_edits_cleared`): what the hook judges."""
    return {**state, **update} if update else state


def _unanswered_calls(messages: list[BaseMessage]) -> tuple[int | None, list[dict[str, Any]]]:
    """The index of the thread's last answer (`AIMessage`) and its tool calls no tool message after it answers:
    the calls the thread waits on."""
    for at in range(len(messages) - 1, -1, -1):
        answer = messages[at]
        if isinstance(answer, AIMessage):
            answered = {m.tool_call_id for m in messages[at + 1 :] if isinstance(m, ToolMessage)}
            return at, [dict(call) for call in answer.tool_calls if call.get("id") and call["id"] not in answered]
    return None, []


def _tools_step(request: Any, thread: str | None) -> str:
    """The tools step ``request``'s call runs in: its thread, and the answer (`AIMessage`) that asked for it, by its
    id and its calls' ids (each tells steps apart where the other cannot: an answer with no id, reused call ids)."""
    calls: list[Any] = [request.tool_call.get("id")]
    answer_id = None
    for message in reversed(list((getattr(request, "state", None) or {}).get("messages") or ())):
        if isinstance(message, AIMessage) and any(c.get("id") == calls[0] for c in message.tool_calls):
            answer_id, calls = message.id, [c.get("id") for c in message.tool_calls]
            break
    return json.dumps([thread, answer_id, calls], ensure_ascii=False, default=str)


def _same_call(call: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """One call by its name and id (`RaisedToolStops`)."""
    return call.get("id") == other.get("id") and call.get("name") == other.get("name")


def _read_whole(items: list[Item]) -> list[Item]:
    """The checks read whole within the guard's ``max_chars`` (``extra["whole"]``, true where unsaid): the others are
    blocked unread."""
    return [item for item in items if item.extra.get("whole", True)]


#: What the event-loop warning tells a sync agent run inside async code to use (`speaking_as`).
_ASYNC_TWIN = (
    "the agent's async methods: await agent.ainvoke(...) / async for over agent.astream(...) (not invoke / stream):"
    " GuardMiddleware's async hooks run then"
)


class _ToolOnce:
    """The tool handler of one guarded call: the tool runs once for its request. ``result``: what it gave (or the
    result kept for the request where the guard could not judge it: a retry around the middleware is given that,
    the tool not run again, `StoppedCalls.keep_result`); ``started``: whether the tool was called for the request."""

    def __init__(self, handler: Callable[[Any], Any], kept: Any) -> None:
        self._handler = handler
        self.result = kept
        self.retried = self.started = kept is not None

    def __call__(self, request: Any) -> Any:
        if self.result is None:
            self.started = True
            self.result = self._handler(request)
        return self.result


class _AsyncToolOnce:
    """`_ToolOnce` for an async handler."""

    def __init__(self, handler: Callable[[Any], Awaitable[Any]], kept: Any) -> None:
        self._handler = handler
        self.result = kept
        self.retried = self.started = kept is not None

    async def __call__(self, request: Any) -> Any:
        if self.result is None:
            self.started = True
            self.result = await self._handler(request)
        return self.result


class GuardMiddleware(AgentMiddleware):
    """Screens an agent's inputs, answers, tool calls and tool results with a `Guard`.

    >>> from langchain.agents import create_agent                                  # doctest: +SKIP
    >>> agent = create_agent(model, tools, middleware=[GuardMiddleware(guard)])      # doctest: +SKIP

    Args:
        guard: the `qwenguard.core.Guard` to use (its `Policy` decides what blocks).
        exit_behavior: ``"error"``, ``"end"`` (default) or ``"replace"`` (see the module docstring).
        check_input / check_output / check_tool_calls / check_tool_results: switch each screen off
            (``check_tool_calls=False`` leaves a ``ToolStrategy`` schema's call judged: it is the answer; and a call no
            guarded model call produced: the client's, `_call_item`).
        violation_message, input_notice, tool_result_notice, tool_call_notice: texts that replace
            flagged content (``{categories}``, ``{reason}`` and, for tools, ``{tool}`` are filled in).
        history_turns: earlier user/assistant turns given to the guard as context.
        stream_options: passed to the hold-back monitor (``guard.stream``), e.g. ``holdback``.
        release_unit: with a Gen guard, what one stream check may release: ``"sentence"`` (default:
            whole sentences), ``"opening"`` (the answer's opening words as soon as they are judged, then
            whole sentences) or ``"word"`` (judged text but its last word: more checks); the same as
            ``stream_options={"release_unit": ...}``.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        exit_behavior: ExitBehavior = "end",
        check_input: bool = True,
        check_output: bool = True,
        check_tool_calls: bool = True,
        check_tool_results: bool = True,
        check_stream: bool = True,
        stream_options: dict[str, Any] | None = None,
        release_unit: str | None = None,
        violation_message: str = DEFAULT_VIOLATION_MESSAGE,
        input_notice: str = DEFAULT_INPUT_NOTICE,
        tool_result_notice: str = DEFAULT_TOOL_RESULT_NOTICE,
        tool_call_notice: str = DEFAULT_TOOL_CALL_NOTICE,
        history_turns: int = DEFAULT_HISTORY_TURNS,
    ) -> None:
        super().__init__()
        if exit_behavior not in ("error", "end", "replace"):
            raise ValueError(f"exit_behavior must be 'error', 'end' or 'replace', got {exit_behavior!r}")
        self.guard = require_guard(guard)
        # A switch given None or "false" (a config file's null, an environment variable) read as off or on by its
        # truthiness: check_tool_calls=None let the agent's tool calls run unjudged (rt57c F3).
        for name, value in (
            ("check_input", check_input),
            ("check_output", check_output),
            ("check_tool_calls", check_tool_calls),
            ("check_tool_results", check_tool_results),
            ("check_stream", check_stream),
        ):
            require_switch(name, value)
        if stream_options is not None:
            check_stream_options(stream_options)  # refused now, not at the first streamed answer (rt57c F7)
        self.exit_behavior: ExitBehavior = exit_behavior
        self.check_input = check_input
        self.check_output = check_output
        self.check_tool_calls = check_tool_calls
        self.check_tool_results = check_tool_results
        self.check_stream = check_stream
        self.stream_options = {**(stream_options or {}), **monitor_options(release_unit=release_unit)}
        self.violation_message = violation_message
        self.input_notice = input_notice
        self.tool_result_notice = tool_result_notice
        self.tool_call_notice = tool_call_notice
        self.history_turns = history_turns
        self.tools = []
        # Answers whose text the model call judged (held as it streamed, or whole): by id, with a fingerprint of
        # what was judged (`judged_content`). after_model judges only their tool calls while they still say that.
        self._judged: Bounded[str, str] = Bounded(_MAX_JUDGED_IDS)
        self._stopped = StoppedCalls()  # requests stopped here: a retry around this middleware gets the same stop
        # The tools steps one of whose calls raised a stop here (`_tools_step`): the calls LangGraph cancelled beside
        # it are the ones whose result was lost (`_lost_on_cancel`), not those a user cancelled.
        self._stopped_steps: Bounded[str, bool] = Bounded(MAX_ALLOWED_CHECKS)
        # Not judged again among a model's messages: the checks allowed before, and this middleware's own notices.
        self._allowed = AllowedChecks()
        self._own = OwnNotices()  # the notices it wrote, by thread, id and text (never by text alone: rt60d F1)
        # The names of the agent's own tools (the application's, from its model calls' and tool calls' requests): the
        # only names a notice's ``{tool}`` field takes (`_tool_name`).
        self._tool_names: Bounded[str, bool] = Bounded(MAX_ALLOWED_CHECKS)
        # What its tools wrote and its guarded calls answered (`_message_items`), and the tool calls those answers
        # asked for (`_produced_call`: any other call about to run is the client's); each where it was produced, the
        # thread or with none the run (`current_scope`), and only what the guard let through.
        self._produced = Produced(bound=True)
        self._raised = RaisedChecks()  # with "error": blocks raised for, on a thread's earlier turn (`_raise_new`)
        # Tool calls raised for, answered on the thread's next turn (`_healed`).
        self._tool_stops: RaisedToolStops[BaseMessage] = RaisedToolStops()
        # Fingerprints of a reviewer's edits the guard blocked (`_keep_blocked_edit`), by thread: cleared from the
        # state's key of them (`_blocked_edits_cleared`).
        self._blocked_edits: Bounded[str, frozenset[str]] = Bounded(MAX_ALLOWED_CHECKS)

    # -- what to check (pure) -----------------------------------------------------------------
    def _input_items(self, state: AgentState) -> list[Item]:
        # Every message the model is about to read, wherever it sits (a client's own history can hide a
        # user turn behind a fake assistant turn), and whatever metadata it carries (metadata can be
        # forged too). What was screened before hits the verdict cache.
        return self._message_items(list(state.get("messages") or ()))

    # A client's input is more than its messages: any other key of the agent's state schema it sends (a note a
    # ``@dynamic_prompt`` prints into the system prompt, a setting a tool reads from ``runtime.state``) reaches the
    # model and the tools unread by `_input_items` (rt63d F3), where a tool's ``Command`` writing the same key is judged
    # (`_result_items`). Judged once a run, at its start, as the user's turn is, read as that Command's other keys are
    # (`payload_leaf`). The state then holds what earlier turns left too (a tool's write, a key sent before): a value
    # allowed once is not judged again (`AllowedChecks`). The run's context (``context=``) is the client's input too,
    # beside the state (rt64c F1): judged with its keys, wherever they are (`_run_context`).
    def _state_key_items(self, state: AgentState, context: Any = None, *, mid_run: bool = True) -> list[Item]:
        """The checks of the state's keys besides its messages and the framework's own (`_NOT_INPUT_KEYS`), one a key
        that holds text, and of the run's ``context`` (`_context_item`), as the user's turn (the prompt stage), not
        allowed before; ``extra["whole"]``: whether all of it was read within the guard's ``max_chars``. ``mid_run``
        (past ``before_agent``): a middleware's own keys left out too (`_kept_from_input`), which its hooks write as
        the run goes."""
        if not self.check_input:
            return []
        items = [] if (context_item := self._context_item(context)) is None else [context_item]
        if isinstance(state, Mapping):
            skip = _kept_from_input() if mid_run else frozenset()
            items = [*self._state_key_checks(state.items(), skip), *items]
        # Each alone: not joined with the others (rt65g F1) nor beside the user's messages (rt65l F1), left
        # documented. Read so, 7 of 25 harmless key and question pairs, and 4 of 33 harmless key sets, were blocked
        # with the demo guard, and each block cleared every key of the app (rt65p F3, F4; rt65t F1): text no prompt
        # renders, run together.
        return self._allowed.unjudged(items, self.guard)

    def _context_item(self, context: Any) -> Item | None:
        """The check of the run's context (`context_text`: ids left out), or ``None`` where it holds no text."""
        if context is None:
            return None
        text, whole = context_text(context, self.guard.max_chars)
        if not text.strip() and whole:
            return None
        # Its own check on its thread (`KEYED_BY`): a user's message allowed anywhere answers for no context (rt65r F1).
        extra = {_RUN_CONTEXT: True, "whole": whole, KEYED_BY: ["run context", current_thread() or ""]}
        return Item(Stage.PROMPT, prompt_conversation(text), label="run context", extra=extra)

    def _state_key_checks(self, pairs: Iterable[tuple[Any, Any]], skip: frozenset[str] = frozenset()) -> list[Item]:
        """One check a (key, value) pair whose value holds text (`_state_key_items`), or is not read whole; the keys
        in ``skip`` left out."""
        items = []
        for key, value in pairs:
            if key in _NOT_INPUT_KEYS or key in skip or value is None:
                continue
            text, whole = object_text([value], self.guard.max_chars, payload_leaf)
            if text.strip() or not whole:
                # Its own check on its thread (`KEYED_BY`): a tool's write trusted as this key's (`_trust_state_writes`)
                # answers for no client's prompt of the same words, nor for the key on another thread (rt64i F1).
                extra = {_STATE_KEY: key, "whole": whole, KEYED_BY: ["state key", str(key), current_thread() or ""]}
                items.append(Item(Stage.PROMPT, prompt_conversation(text), label="state key", extra=extra))
        return items

    def _trust_state_writes(self, items: list[Item], decisions: list[Decision]) -> None:
        """The state keys a tool's ``Command`` writes (`_STATE_WRITES`), allowed as its output: not judged again as
        the client's when the thread's next run starts with them (`_state_key_items`)."""
        if not self.check_input:
            return  # nothing of the state is judged as input then (`_state_key_items`)
        for item, decision in zip(items, decisions):
            update = getattr(item.extra.get(_STATE_WRITES), "update", None)
            if isinstance(update, Mapping) and self._as_input_too(decision):
                self._allowed.trust(self._state_key_checks(update.items()), self.guard)

    def _as_input_too(self, decision: Decision) -> bool:
        """Is a tool result's allow one the prompt stage makes of the same verdict? The written keys are later read as
        the client's (`_state_key_items`): an allow of a disabled tool-result stage judged nothing, and one of a stage
        that ignores a category is looser than the prompt's (rt64i F1)."""
        if decision.action is not Action.ALLOW or decision.verdict is None:
            return False
        return self.guard.policy.decide(decision.verdict, Stage.PROMPT).action is Action.ALLOW

    def _state_key_decisions(self, items: list[Item]) -> list[Decision]:
        """The guard's decisions on ``items``; a value not read whole is blocked unread (size alone never gets text
        through unjudged)."""
        read = _read_whole(items)
        return self._with_unread(items, screen(self.guard, read) if read else [])

    async def _astate_key_decisions(self, items: list[Item]) -> list[Decision]:
        read = _read_whole(items)
        return self._with_unread(items, await ascreen(self.guard, read) if read else [])

    def _with_unread(self, items: list[Item], judged: list[Decision]) -> list[Decision]:
        found = iter(judged)
        return [next(found) if item.extra["whole"] else self._unread_state_key(item) for item in items]

    def _unread_state_key(self, item: Item) -> Decision:
        limit = self.guard.max_chars
        what = "the run's context" if _RUN_CONTEXT in item.extra else f"the state key {item.extra[_STATE_KEY]!r}"
        why = f"{what} carries more than max_chars={limit:,} characters: not judged whole"
        return self.guard.policy.decide_unjudged(Stage.PROMPT, why)

    def _on_state_keys(self, items: list[Item], decisions: list[Decision]) -> dict[str, Any] | None:
        """The update for blocked state keys: each set to ``None`` (the model and the tools never read it, and the
        thread's next turn does not meet it again), and the run ended with the refusal, as for a blocked user turn.
        With ``"error"``, `GuardViolation` is raised; a block raised for on an earlier turn of the thread (LangGraph
        wrote the input to the checkpoint before this hook ran) is cleared instead, and the turn goes on. A blocked
        run context (`_RUN_CONTEXT`) is in no state to clear: each run that is given it ends (or raises)."""
        self._allowed.remember(items, decisions, self.guard)
        blocked = blocked_pairs(items, decisions)
        if not blocked:
            return None
        cleared: dict[str, Any] = {key: None for item, _ in blocked for key in _keys_of(item)}
        if self.exit_behavior == "error":
            thread = current_thread()
            fresh = [
                (item, d) for item, d in blocked if _RUN_CONTEXT in item.extra or not self._raised.raised(item, thread)
            ]
            if fresh:
                self._raised.remember([item for item, _ in fresh if _keys_of(item)], thread)
                enforce(fresh[0][1])
            return cleared
        return {**cleared, "messages": [self._refusal(blocked[0][1])], "jump_to": "end"}

    # A client's key can reach the state past ``before_agent``: ``Command(resume=..., update={...})`` resumes a thread at
    # the tools node, and ``Command(update={...}, goto="model")`` runs the model in the run's first step (rt63h F1, a
    # ``@dynamic_prompt`` printed the note into the system prompt unjudged). So the keys are judged wherever the model
    # or a tool is about to read them too (``before_model``, the model call, the tool call), with what is new there;
    # a value allowed before is not judged again (`AllowedChecks`).
    def _split(self, keys: list[Item], judged: list[Decision]) -> tuple[list[Decision], list[Decision]]:
        """The decisions of one batch of the state's keys (those read whole first) and other checks, apart: the
        keys' (one not read whole blocked unread), and the others'."""
        read = len(_read_whole(keys))
        return self._with_unread(keys, judged[:read]), judged[read:]

    def _on_model_input(
        self,
        state: AgentState,
        keys: list[Item],
        key_decisions: list[Decision],
        items: list[Item],
        decisions: list[Decision],
    ) -> dict[str, Any] | None:
        """``before_model``'s update: blocked state keys cleared and the run ended with the refusal (`_on_state_keys`),
        with what the messages' verdicts do (`_on_input`); one refusal when both end the run."""
        cleared = self._on_state_keys(keys, key_decisions) if keys else None
        update = self._on_input(state, items, decisions)
        if cleared is None or update is None:
            return cleared if update is None else update
        if "jump_to" in update or "jump_to" not in cleared:
            return {**cleared, **update}  # the messages' refusal ends the run (or neither ends it: "error")
        return {**cleared, "messages": [*update.get("messages", ()), *cleared["messages"]]}

    def _key_stopped(self, request: ModelRequest, keys: list[Item], key_decisions: list[Decision]) -> Any:
        """The model call's outcome when a state key it is given is blocked (`_on_state_keys`): the refusal, the
        model not called; ``"error"``: raised (a key raised for before on the thread: the call goes on without it,
        ``request`` with it cleared). ``None`` when no key is blocked. The key is not cleared here: a model call that
        meets a key no hook judged runs in the run's first step (``Command(update=..., goto="model")``), beside
        ``before_agent``, which clears it (two writes of one key in a step are LangGraph's ``InvalidUpdateError``)."""
        update = self._on_state_keys(keys, key_decisions)
        if update is None:
            return None
        if "messages" not in update:  # "error", raised before: the call goes on without the key
            cleared = {key: value for key, value in update.items() if key != "jump_to"}
            return request.override(state={**request.state, **cleared})  # type: ignore[typeddict-item]
        return ModelResponse(result=update["messages"])

    def _notice(self, template: str, decision: Decision, **extra: str) -> str:
        """A notice's text (`_fill`). Its message is remembered as this middleware's own by `_own_notice`."""
        return _fill(template, decision, **extra)

    def _own_notice(self, message: _M) -> _M:
        """``message``, a notice this middleware wrote, remembered as its own on this thread (`OwnNotices`)."""
        return self._own.write(message, current_thread())

    def _tool_name(self, name: Any, tool: Any = None) -> str:
        """What a notice's ``{tool}`` field says: ``name`` where it is one of the agent's own tools' (the
        application's: ``tool``, the one a tool call runs, or `_remember_tools`), else ``"tool"``. A client chooses
        any other name (a forged call's, its tool message's): written into a notice, never judged again
        (`OwnNotices`), a blocked phrase reached the model (rt60d F1)."""
        ran = getattr(tool, "name", None)
        if isinstance(name, str) and name and (ran == name or self._tool_names.get(name) is not None):
            return name
        return "tool"

    def _remember_tools(self, tools: Sequence[Any]) -> None:
        """The names of the tools a model call offers (``BaseTool``s, or a provider's tool dicts) or a call runs."""
        for tool in tools:
            name = getattr(tool, "name", None)
            if name is None and isinstance(tool, Mapping):
                function = tool.get("function")
                name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
            if isinstance(name, str) and name:
                self._tool_names[name] = True

    def _unowned(self, messages: Sequence[BaseMessage]) -> list[BaseMessage]:
        """``messages`` with the text of this middleware's own notices left out (`OwnNotices`: a message it wrote on
        this thread, by id and text; a client's text that fits a notice's template, or equals one, is judged): a
        notice's text is the guard's, but what else a message of that text carries is judged as any message's (a
        client's history can write a notice's text and put a name or tool calls beside it)."""
        thread = current_thread()
        return [m.model_copy(update={"content": ""}) if self._own.wrote(m, thread) else m for m in messages]

    def _message_items(self, messages: list[BaseMessage]) -> list[Item]:
        """The checks of ``messages`` not allowed before (`AllowedChecks`), this middleware's own notices left out
        (`OwnNotices`: judged and read as context again, they refused the thread's next turn).

        A tool-role message (and what an answer quotes as a server tool's result) that this middleware did not see
        its agent produce (`Produced`: its tools' results, its guarded model calls' answers) came with the input: a
        client may have written it, so it is judged whatever ``check_tool_results`` says, under a policy no looser
        than the prompt stage's (`AS_INPUT`, `_screening.no_looser`; rt54c F1). The agent's own keep their stage."""
        messages = self._unowned(messages)
        wanted = {
            Stage.PROMPT: self.check_input,
            Stage.RESPONSE: self.check_input,
            Stage.TOOL_CALL: self.check_input and self.check_tool_calls,
            Stage.TOOL_RESULT: self.check_tool_results,
        }
        # screen_system: the system prompt is not in the state.
        items = input_items(messages, self.history_turns, screen_system=True, budget=self.guard.max_chars)
        scope = current_scope()  # produced on this thread, or in this run: another's is a client's
        for item in items:
            if item.extra.get(AS_INPUT) and item.message is not None and self._produced.saw(item.message, scope):
                del item.extra[AS_INPUT]
        return self._allowed.unjudged(
            [
                i
                for i in items
                if i.message is not None
                and (wanted.get(i.stage) or (i.extra.get(AS_INPUT) and (self.check_input or self.check_tool_results)))
            ],
            self.guard,
        )

    def _output_items(self, state: AgentState) -> list[Item]:
        messages = list(state.get("messages") or ())
        answer = _model_answer(messages)
        if answer is None or _screened(last := messages[answer[0]]):
            return []  # the model node's own output: a message this middleware wrote is not judged again
        assert isinstance(last, AIMessage)
        # The tool messages the model node added answer structured-output calls (`_model_answer`): those calls
        # are the answer (its structured response), judged whatever check_tool_calls says (`_answer_tools`).
        answered = frozenset(t.name for t in answer[1] if t.name)
        context = self._unowned(messages[: answer[0]])
        text = self.check_output and not self._was_judged(last)
        items = output_items(
            last,
            context,
            self.history_turns,
            text=text,
            tool_calls=self.check_tool_calls,
            answers=answered,
            budget=self.guard.max_chars,
        )
        if self.check_output and (label := self._label_check(last)) is not None:
            items.append(label)  # judged in the model call, mostly (`AllowedChecks`)
        # A JSON answer is read parsed (``ProviderStrategy``'s structured response): its decoded strings too.
        return items + reading_items(last, context, self.history_turns) if text else items

    def _was_judged(self, message: AIMessage) -> bool:
        """Was this answer's text judged in the model call, and does it still say what was judged? A middleware
        listed before this one may rewrite the answer after the guarded call returned it and keep its id (a
        footer, a translation: ``model_copy``). (Asked once, by after_model.)"""
        if not message.id:
            return False
        judged = self._judged.pop(message.id)
        return judged is not None and judged == judged_content(message, self.guard.max_chars)

    def _remember_judged(self, answer: BaseMessage) -> None:
        if isinstance(answer, AIMessage) and answer.id:
            self._judged[answer.id] = judged_content(answer, self.guard.max_chars)

    # -- what a violation does (pure) -----------------------------------------------------------
    def _refusal(self, decision: Decision, replaces: BaseMessage | None = None) -> AIMessage:
        kwargs: dict[str, Any] = {"id": replaces.id} if replaces is not None and replaces.id else {}
        return self._own_notice(
            AIMessage(
                content=self._notice(self.violation_message, decision),
                response_metadata={METADATA_KEY: decision.to_dict()},
                **kwargs,
            )
        )

    def _redact_input(self, item: Item, decision: Decision) -> BaseMessage:
        message = item.message
        assert message is not None
        if isinstance(message, ToolMessage):
            # A name judged and blocked (`label_item`: ChatMistralAI and ChatGoogleGenerativeAI send it; a tool's
            # result judged with its name, `_result_items`) goes, and is not written into the notice either.
            by_name = item.stage is Stage.PROMPT or bool(item.extra.get(_NAMED))
            # Nor any name but the agent's own tool's (`_tool_name`): a client's, written into the notice, was
            # never judged again (rt60d F1).
            named = "tool" if by_name else self._tool_name(message.name)
            return self._own_notice(
                message.model_copy(
                    update={
                        "content": self._notice(self.tool_result_notice, decision, tool=named),
                        "status": "error",
                        "artifact": None,  # judged with the content (`tool_output_text`): withheld with it
                        "response_metadata": _with_decision(message.response_metadata, decision),
                        **({} if named == message.name else {"name": None}),
                        **_judged_id(item, message),
                    }
                )
            )
        update: dict[str, Any] = {
            "content": self._notice(self.input_notice, decision),
            "response_metadata": _with_decision(message.response_metadata, decision),
            "name": None,  # sent with the message, and judged with it (`sent_labels`)
            **_judged_id(item, message),
        }
        # What an earlier answer carried beside its content goes with it: a provider class may send it back
        # (the Responses API's reasoning and tool output items).
        # Of an answer, only a provider's bookkeeping stays: any other key is judged as its text (`beside_text`),
        # and a withheld answer's `parsed`, `prefix` or a key of a provider's own kept the words that made it unsafe
        # in the state and in the next request (rt49f F6).
        if isinstance(message, AIMessage):
            kept = {k: v for k, v in message.additional_kwargs.items() if k in _ANSWER_BOOKKEEPING_KEYS}
            # Nor the provider's id of the stored answer: ChatOpenAI(use_previous_response_id=True) sent it as
            # previous_response_id with only the messages after it, so the provider went on from its own copy of
            # the withheld answer and the notice was never sent (rt50d F7).
            meta = {k: v for k, v in message.response_metadata.items() if k != "id"}
            update["response_metadata"] = _with_decision(meta, decision)
        else:
            kept = {k: v for k, v in message.additional_kwargs.items() if k != "name"}
        update["additional_kwargs"] = kept
        if isinstance(message, AIMessage):
            # Its calls stay, for the tool messages that answer them (a provider refuses a result without its call),
            # but withheld: no name or arguments the model would read back (`_withheld_call_names` for the results).
            update["tool_calls"] = [{**c, "name": WITHHELD_CALL, "args": {}} for c in message.tool_calls]
            update["invalid_tool_calls"] = [
                {**c, "name": WITHHELD_CALL, "args": "{}", "error": None} for c in message.invalid_tool_calls
            ]
        return self._own_notice(message.model_copy(update=update))

    def _members(self, item: Item) -> list[tuple[Item, BaseMessage]]:
        """The messages a blocked ``item`` withholds, each with the check to redact it by: the message, or, for
        consecutive user turns read as one (`_messages._UserRun`), every turn of the run that has text (rt54e E5:
        redacted at its last turn only, the run's earlier turns stayed in the state, were joined again on every later
        turn and refused it). With ``"error"``, of a run raised for on an earlier turn, the turns of that run
        on this thread (`RaisedChecks.run_turns`): the thread's new question is answered."""
        run: Sequence[BaseMessage] = item.extra.get("run") or ()
        if not run:
            assert item.message is not None
            return [(item, item.message)]
        if self.exit_behavior == "error":
            run = self._raised.run_turns(run, current_thread()) or run
        texts = [(m, tool_text(m) if isinstance(m, ToolMessage) else message_text(m)) for m in run]
        return [
            (
                dataclasses.replace(
                    item, message=m, stage=Stage.TOOL_RESULT if isinstance(m, ToolMessage) else item.stage
                ),
                m,
            )
            for m, text in texts
            if text.strip()
        ]

    def _redactions(self, item: Item, decision: Decision) -> list[BaseMessage]:
        """The notices that replace what a blocked ``item`` withholds (`_members`)."""
        return [self._redact_input(member, decision) for member, _ in self._members(item)]

    # The thread's next turn comes after the last answer too: a stop raised inside a tool on an earlier run (it
    # raises whatever ``exit_behavior`` says) is answered there by its notice (`_healed`). Ended on it, every later
    # question of the thread got the old refusal, the model not asked (rt68c F1): that notice is marked (`_HEALED`)
    # and does not end the run. Told apart by what it is, not by a user's turn after it: a middleware listed before
    # this one may add a human message after the tools step (an attachment, a reminder), and the block of the tools
    # step just run then no longer ended the run (rt68l F1).
    def _ended_by_tool(self, state: AgentState) -> dict[str, Any] | None:
        """With ``"end"``: a tool call or result that `wrap_tool_call` blocked in this tools step ends the run here
        (not an earlier run's stop's notice, `_healed`)."""
        if self.exit_behavior != "end":
            return None
        messages = list(state.get("messages") or ())
        for message in messages[_after_last_ai(messages) :]:
            record = (getattr(message, "response_metadata", None) or {}).get(METADATA_KEY)
            tool_output = isinstance(message, ToolMessage) or _written_by_tool(message)
            if tool_output and isinstance(record, dict) and not record.get("allowed", True) and not record.get(_HEALED):
                return {"messages": [self._refusal(_decision_from(record))], "jump_to": "end"}
        return None

    def _raise_new(self, state: AgentState, blocked: list[tuple[Item, Decision]], thread: str | None) -> None:
        """With ``"error"``: raise for the first block not raised before on ``thread`` (`current_thread`), or when
        what the model would answer (the last message) is blocked. A block raised on an earlier turn of the thread
        (LangGraph wrote the input to the checkpoint before this hook ran) gets its notice in the state instead, and
        the turn goes on."""
        fresh = [
            (item, d)
            for item, d in blocked
            if not self._raised.raised(item, thread) and not self._earlier_run(item, thread)
        ]
        messages = list(state.get("messages") or ())
        last = messages[-1] if messages else None
        answered = [(item, d) for item, d in blocked if last is not None and _same(item, last)]
        stop = fresh or answered
        if stop:
            self._raised.remember([item for item, _ in fresh], thread)
            enforce(stop[0][1])

    def _earlier_run(self, item: Item, thread: str | None) -> bool:
        """Is ``item`` a check of consecutive user turns whose block was raised for on an earlier turn of the thread
        (`RaisedChecks.earlier_run`), moved to that run's last turn (`_on_input`)?"""
        return item.message is not None and self._raised.earlier_run(item, thread) is item.message

    def _on_input(self, state: AgentState, items: list[Item], decisions: list[Decision]) -> dict[str, Any] | None:
        blocked = without_runs_of_blocked(blocked_pairs(items, decisions))
        if not blocked:
            return self._ended_by_tool(state)
        if self.exit_behavior == "error":
            # A run raised for before, which the thread's next question has joined: its own last turn gets the notice
            # (not the new question), and the turn goes on; the run is judged again with the notice in place.
            thread = current_thread()
            blocked = [
                (dataclasses.replace(item, message=earlier), d)
                if (earlier := self._raised.earlier_run(item, thread)) is not None
                else (item, d)
                for item, d in blocked
            ]
            self._raise_new(state, blocked, thread)
        updates: list[BaseMessage] = [m for item, d in blocked for m in self._redactions(item, d)]
        updates += _withheld_call_names(state, updates)
        if self.exit_behavior == "error":
            return {"messages": updates}  # blocks raised on an earlier turn: the notices, and this turn goes on
        user_blocked = [d for item, d in blocked if item.stage is Stage.PROMPT]
        if self.exit_behavior == "end" or user_blocked:
            first = user_blocked[0] if user_blocked else blocked[0][1]
            return {"messages": [*updates, self._refusal(first)], "jump_to": "end"}
        return {"messages": updates}  # "replace": the model goes on with the notices

    def _on_output(self, state: AgentState, items: list[Item], decisions: list[Decision]) -> dict[str, Any] | None:
        self._allowed.remember(items, decisions, self.guard)
        blocked = blocked_pairs(items, decisions)
        if not blocked:
            self._record_answer(state)  # let through: the agent's own when read back
            return None
        decision = blocked[0][1]
        if self.exit_behavior == "error":
            enforce(decision)
        messages = list(state["messages"])
        found = _model_answer(messages)
        assert found is not None  # the items came from it (`_output_items`)
        index, trailing = found
        answer = messages[index]
        # Same id: add_messages replaces the unsafe answer (and its tool calls) instead of appending; the
        # tool messages the model node added for them (a structured response's) are removed.
        update: dict[str, Any] = {
            "messages": [self._refusal(decision, replaces=answer), *(RemoveMessage(id=t.id) for t in trailing if t.id)]
        }
        structured = state.get("structured_response") is not None
        if structured:
            update["structured_response"] = None  # the parsed answer is what the app reads: it goes too
        if self.exit_behavior == "end" or structured or trailing:
            # "replace" too: with the structured response gone, create_agent would ask the model again.
            update["jump_to"] = "end"
        return update  # "replace", no tool calls left: the agent finishes with the refusal

    # -- node hooks ---------------------------------------------------------------------------
    @hook_config(can_jump_to=["end"])
    @speaking_as(_ASYNC_TWIN)
    def before_agent(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        cleared = self._blocked_edits_cleared(state)
        items = self._state_key_items(_updated(state, cleared), run_context(runtime), mid_run=False)
        update = self._on_state_keys(items, self._state_key_decisions(items)) if items else None
        return _with_healed(self._with_cleared(cleared, update), self._healed(state))

    @hook_config(can_jump_to=["end"])
    async def abefore_agent(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        context = run_context(runtime)
        cleared = await built_off_loop(lambda: self._blocked_edits_cleared(state), state.get(_REVIEWER_EDITS))
        read = _updated(state, cleared)
        items = await built_off_loop(
            lambda: self._state_key_items(read, context, mid_run=False), _state_read(read, context)
        )
        update = self._on_state_keys(items, await self._astate_key_decisions(items)) if items else None
        messages = state.get("messages") or ()
        return _with_healed(
            self._with_cleared(cleared, update), await built_off_loop(lambda: self._healed(state), messages)
        )

    @hook_config(can_jump_to=["end"])
    @speaking_as(_ASYNC_TWIN)
    def before_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        cleared = self._blocked_edits_cleared(state)
        keys, items = self._state_key_items(_updated(state, cleared), run_context(runtime)), self._input_items(state)
        key_decisions, decisions = self._split(keys, screen(self.guard, [*_read_whole(keys), *items]))
        self._allowed.remember(items, decisions, self.guard)
        return self._with_cleared(cleared, self._on_model_input(state, keys, key_decisions, items, decisions))

    # The async hooks read messages (into checks, fingerprints, notices) on a worker thread once they are large
    # (`built_off_loop`), in the order the sync hooks do: on the loop, one user message of 200,000 empty content
    # blocks held it 0.6-3.6 s, read about 15 times a model turn before any limit applied (rt55b F1). What they
    # remember is in maps a sync agent's threads share too (`Bounded`: locked).
    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        messages = state.get("messages") or ()
        context = run_context(runtime)
        cleared = await built_off_loop(lambda: self._blocked_edits_cleared(state), state.get(_REVIEWER_EDITS))
        read = _updated(state, cleared)
        keys = await built_off_loop(lambda: self._state_key_items(read, context), _state_read(read, context))
        items = await built_off_loop(lambda: self._input_items(state), messages)
        key_decisions, decisions = self._split(keys, await ascreen(self.guard, [*_read_whole(keys), *items]))
        self._allowed.remember(items, decisions, self.guard)
        update = await built_off_loop(
            lambda: self._on_model_input(state, keys, key_decisions, items, decisions), messages
        )
        return self._with_cleared(cleared, update)

    @hook_config(can_jump_to=["end"])
    @speaking_as(_ASYNC_TWIN)
    def after_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        items = self._allowed.unjudged(self._output_items(state), self.guard)  # judged in the model call, mostly
        return self._on_output(state, items, screen(self.guard, items) if items else [])

    @hook_config(can_jump_to=["end"])
    async def aafter_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        messages = state.get("messages") or ()
        items = await built_off_loop(lambda: self._allowed.unjudged(self._output_items(state), self.guard), messages)
        decisions = await ascreen(self.guard, items) if items else []
        return await built_off_loop(lambda: self._on_output(state, items, decisions), messages)  # records: reads it

    def _record_answer(self, state: AgentState) -> None:
        """An answer that did not come through this middleware's model call (a middleware listed before it answered)
        is judged here as the agent's (`_output_items`): its own when read back (`Produced`), once let through (a
        blocked one is replaced). Only the answer: the tool messages after it in the state may be another
        middleware's, written from a human's words (``HumanInTheLoopMiddleware``'s "respond" and "reject" messages:
        taken as the agent's own, a client's text kept the tool-result stage, rt54e E10). What the model call itself
        returned, its ``ToolStrategy`` messages too, is recorded in the call (`_record_response`)."""
        messages = list(state.get("messages") or ())
        found = _model_answer(messages)
        if found is not None:
            self._produced.record([messages[found[0]]], current_scope())

    def _record_response(self, response: Any) -> None:
        """What the guarded model call returned (`_answers_of`, and the tool messages ``create_agent``'s model node
        adds for a ``ToolStrategy``'s calls, in the same `ModelResponse`) is the agent's own (`Produced`), and so are
        the tool calls its answers ask for. Recorded as the call's outcome, once judged: a blocked answer never
        reaches the state (the refusal in its place is no answer, `_answers_of`), and its calls, replayed by a
        client, are the client's (stop 60 leftover)."""
        if isinstance(response, ModelResponse):
            scope = current_scope()
            answers = _answers_of(response)
            self._produced.record([*answers, *(m for m in response.result if isinstance(m, ToolMessage))], scope)
            self._produced.record_calls([call for answer in answers for call in answer.tool_calls], scope)

    def _produced_call(self, call: Mapping[str, Any]) -> bool:
        """Did a guarded model call of this middleware ask for ``call``, as it is (name, id, arguments), on this thread
        (or in this run, with no thread: `current_scope`)?"""
        return self._produced.asked(call, current_scope())

    # A call about to run that no guarded model call of this middleware asked for (`_produced_call`) is the client's: a
    # ``Command(goto="tools")`` or a ``Send`` in the run's input, an edited call (a reviewer's, a middleware's). It is
    # judged whatever ``check_tool_calls`` says, under a policy no looser than the prompt stage's (`AS_INPUT`; rt60b
    # F2), as a tool-role message the agent did not produce is (rt54c F1). The model's own calls keep their switch.
    def _call_item(self, request: Any) -> Item | None:
        call = request.tool_call
        client = not self._produced_call(call)
        if not (self.check_tool_calls or (client and self.check_input)):
            return None
        messages = _state_messages(request)
        asked = _asking_answer(messages, call)
        # The turns before the answer that asks for the call, the calls since the request with them: as the model
        # call read it (`output_items`, `call_history`).
        before = messages if asked is None else messages[:asked]
        history = call_history(before, self.history_turns, self.guard.max_chars)
        name = call.get("name") or ""
        # Rendered only until past the guard's bound (the check refuses it then): the lenient readings cost ~5 us a
        # character (rt62a F2).
        conversation = tool_call_conversation(name, tool_arguments(call), history, max_chars=self.guard.max_chars)
        return Item(Stage.TOOL_CALL, conversation, tool_call=call, extra={AS_INPUT: True} if client else {})

    # ``interrupt()`` in a tool asks the run's caller for a value; ``Command(resume=...)`` gives it, and the tool runs
    # again and acts on it (an e-mail's body): the client's input, judged as a prompt before the tool runs (rt60b F3).
    def _resume_item(self, request: Any) -> Item | None:
        """The check of the resume values the tool call's ``interrupt()``s will take (`pending_resumes`), as the
        user's turn; ``extra["whole"]``: whether all of it was read within the guard's ``max_chars``."""
        if not self.check_input:
            return None
        values = pending_resumes(request)
        if not values:
            return None
        # Read as an artifact is (`payload_leaf`): the tool decodes a text file it is given (rt63d F1).
        text, whole = object_text(values, self.guard.max_chars, payload_leaf)
        if not text.strip() and whole:
            return None
        history = guard_history(_state_messages(request), self.history_turns)
        return Item(Stage.PROMPT, prompt_conversation(text, history), label="resume value", extra={"whole": whole})

    def _tool_checks(self, request: Any) -> list[Item]:
        """What is judged before the tool runs: the resume values it will take, and its call unless allowed before."""
        # The tool it runs is the application's: its name may go into a notice (`_tool_name`).
        self._remember_tools([ran] if (ran := getattr(request, "tool", None)) is not None else [])
        resumed, call = self._resume_item(request), self._unjudged_call(request)
        # A client's Command input can write the state and send the run straight to the tools
        # (``Command(update=..., goto="tools")``, or ``resume=...`` to a tool waiting in ``interrupt()``): the tool runs
        # before any model call judges what it wrote, and one reading ``runtime.state`` acted on it (rt60f F3, rt60g
        # F1). The state's messages not judged before are judged first, as the next model call would judge them (in
        # an agent's own loop all of them were: fingerprints only).
        written = self._message_items(_state_messages(request))
        # And its other keys, which the tool reads from ``runtime.state`` (rt63h F1: ``Command(resume=..., update=...)``);
        # last, so that a call blocked itself is told as the call (a reviewer's edit is in the state too).
        # The run's context too, which the tool reads from ``runtime.context`` (rt64c F1).
        keys = self._state_key_items(request.state, run_context(request))
        return [*written, *(item for item in (resumed, call) if item is not None), *keys]

    def _before_tool(self, items: list[Item], decisions: list[Decision]) -> Decision | None:
        """The first block among the checks before the tool runs (`_tool_checks`), or ``None``: the tool runs."""
        self._allowed.remember(items, decisions, self.guard)
        return next((d for d in decisions if not d.allowed), None)

    def _tool_decisions(self, items: list[Item], judge: Callable[[list[Item]], list[Decision]]) -> list[Decision]:
        """``judge``'s decisions on ``items``; a resume value not read whole is blocked unread (`_unread_resume`)."""
        read = _read_whole(items)
        judged = iter(judge(read) if read else [])
        return [next(judged) if item.extra.get("whole", True) else self._unread_input(item) for item in items]

    async def _atool_decisions(self, items: list[Item]) -> list[Decision]:
        read = _read_whole(items)
        judged = iter(await ascreen(self.guard, read) if read else [])
        return [next(judged) if item.extra.get("whole", True) else self._unread_input(item) for item in items]

    def _unread_input(self, item: Item) -> Decision:
        keyed = _STATE_KEY in item.extra or _RUN_CONTEXT in item.extra
        return self._unread_state_key(item) if keyed else self._unread_resume()

    def _unread_resume(self) -> Decision:
        why = f"the resume value carries more than max_chars={self.guard.max_chars:,} characters: not judged whole"
        return self.guard.policy.decide_unjudged(Stage.PROMPT, why)

    def _unjudged_call(self, request: Any) -> Item | None:
        """The check of ``request``'s tool call, unless it was allowed before (`AllowedChecks`)."""
        item = self._call_item(request)
        return item if item is not None and self._allowed.unjudged([item], self.guard) else None

    def _blocked_call(self, request: Any, decision: Decision, asked: Any = None) -> ToolMessage:
        """The notice of ``request``'s blocked call (``"error"``: raised); ``asked``: the request whose call the thread
        holds, where ``request`` is one rewritten inside this middleware (`_executed_call`)."""
        notice = self._call_notice(request, decision, self.tool_call_notice)
        if self._reviewer_edit(request):
            self._keep_blocked_edit(request.tool_call)
        if self.exit_behavior == "error":
            # The call did not run: its notice answers the thread's call (`_healed`).
            self._tool_stops.keep((asked or request).tool_call, notice, current_thread())
            enforce(decision)
        return notice

    def _call_notice(self, request: Any, decision: Decision, template: str) -> ToolMessage:
        """The error `ToolMessage` that answers ``request``'s call with the notice ``template`` says."""
        call = request.tool_call
        # A blocked call's own name may be what made it unsafe: only the agent's own tool's is written.
        name = self._tool_name(call.get("name"), getattr(request, "tool", None))
        return self._own_notice(
            ToolMessage(
                content=self._notice(template, decision, tool=name),
                tool_call_id=call.get("id") or "",
                name=name,
                status="error",
                response_metadata={METADATA_KEY: decision.to_dict()},
            )
        )

    # With "error", a tool call or result the guard blocks raises out of the tools node, and the thread's answer keeps
    # a call no tool message answers: providers refuse every later request of the thread (OpenAI and Anthropic answer
    # 400), and ``invoke(None)`` resumed at the tools ran the tool again (rt65g F2). The stop is kept with the notice
    # "end" writes (`RaisedToolStops`): the thread's next turn gets it as the call's answer (`_healed`), and a run
    # resumed at the tools gets it in place of the call (`_resumed_stop`), as a blocked prompt is healed (`_raise_new`).
    # A result the guard could not judge (`GuardUnavailable`, `GuardTimeout`: the policy failing closed) is a stop of
    # the same kind once the tool ran: kept only for `GuardViolation` before, resuming ran the tool again, the next
    # turn sent the model an unanswered call, and a retry around this middleware ran it once per attempt (rt66e F1).
    # Its retry judges the result kept (`StoppedCalls.keep_result`); a resume or the next turn gets the notice.
    def _kept_stop(
        self, request: Any, stop: QwenGuardError, tool: _ToolOnce | _AsyncToolOnce, thread: str | None
    ) -> None:
        """A stop raised out of ``request``'s call: kept with its notice, the call's (`_blocked_call`) or else the
        result's, which the tool ran for. A guard that could not answer after the tool ran keeps its result too."""
        self._stopped_steps[_tools_step(request, thread)] = True  # LangGraph cancels the calls beside it
        decision: Decision | None = getattr(stop, "decision", None)
        unjudged = tool.started and decision is not None and not isinstance(stop, GuardViolation)
        if unjudged and tool.result is not None:
            self._stopped.keep_result(request, tool.result)
        else:
            self._stopped.forget_result(request)
        if decision is None or not (isinstance(stop, GuardViolation) or unjudged):
            return  # the tool did not run (a guard error judging the call): the call may be judged again
        if self._tool_stops.answer(request.tool_call, thread) is None:
            notice = self._call_notice(request, decision, self.tool_result_notice)
            self._tool_stops.keep(request.tool_call, notice, thread)

    def _judged_at_last(self, request: Any, tool: _ToolOnce | _AsyncToolOnce, thread: str | None) -> None:
        """``request``'s call answered: a result kept for its retry (`_kept_stop`), and the stop kept with it, go."""
        if tool.retried:
            self._stopped.forget_result(request)
            self._tool_stops.forget(request.tool_call, thread)

    # With "error", a blocked result raises out of the tools node and LangGraph cancels the calls beside it: a sync
    # tool's thread is not cancelled and finishes (a payment made), an async one may have acted, but neither result
    # is written, and ``ainvoke(None)`` ran the tool again (rt66e F2). A call cancelled once its tool was called is
    # kept with the notice that its result was lost: a run resumed at the tools and the thread's next turn get it.
    # Only beside a stop this middleware raised in the same tools step: a user's own cancel (a dropped request,
    # Ctrl-C) with no stop anywhere leaves the call unanswered, its tool run again on resume, as LangGraph does (rt66l
    # F3: every cancel once the tool started answered the call with a false notice, the tool never run again).
    def _lost_on_cancel(self, request: Any, tool: _AsyncToolOnce, thread: str | None) -> None:
        """``request``'s call cancelled beside a stop of its tools step: kept with the "result lost" notice where
        its tool was called."""
        if tool.started and self._stopped_steps.get(_tools_step(request, thread)):
            self._tool_stops.keep(request.tool_call, self._lost_result(request.tool_call), thread)

    # A stop answers only its own call while the thread still waits on it: a client may remove the answer that asked
    # (as the docs advise for a blocked message), and a provider may reuse call ids, and a stop kept for good answered
    # a later, harmless call of the same name and id with a notice, the tool never run (rt65l F4).
    def _resumed_stop(self, request: Any, thread: str | None) -> ToolMessage | None:
        """The notice of a call raised for before on ``thread`` (a run resumed at the tools, ``invoke(None)``: the
        thread's last answer holds the call unanswered): the call's answer, the tool not run. Not for a retry of the
        request stopped (`StoppedCalls`: it gets the stop, or its result judged again)."""
        if not len(self._tool_stops) or self._stopped.retried(request):
            return None
        notice = self._tool_stops.answer(request.tool_call, thread)
        if not isinstance(notice, ToolMessage):
            return None
        waiting = _unanswered_calls(list((getattr(request, "state", None) or {}).get("messages") or ()))[1]
        if not any(_same_call(call, request.tool_call) for call in waiting):
            self._tool_stops.keep_only(waiting, thread)  # the state no longer holds the call
            return None
        self._tool_stops.forget(request.tool_call, thread)
        return notice

    # Parallel calls: the raise ends the tools node with the results of the blocked call's siblings kept only in the
    # checkpoint's pending writes, which the thread's next turn drops. Answering the blocked call alone left the
    # siblings unanswered, a request providers refuse (rt65l F2): each gets a notice that its result was lost.
    def _healed(self, state: AgentState) -> list[BaseMessage] | None:
        """The thread's messages with the calls of its last answer raised for before on it (`RaisedToolStops`) and
        still unanswered answered by their notices, and the other calls of that answer no tool message answers by
        the notice that their result was lost (`_lost_result`), right after the answer; ``None`` when there is none.
        The thread's other stops are forgotten: its state no longer waits on them. The whole history is written again
        (``REMOVE_ALL_MESSAGES``): a message cannot be put between two others by id."""
        thread = current_thread()
        if thread is None or not len(self._tool_stops):
            return None
        messages = list(state.get("messages") or ())
        at, waiting = _unanswered_calls(messages)
        stops = [self._tool_stops.answer(call, thread) for call in waiting]
        # Answered now, or never to be: a provider that reuses call ids may ask for the same call later.
        self._tool_stops.keep_only((), thread)
        if at is None or not any(stop is not None for stop in stops):
            return None
        # Marked: an earlier run's block, which does not end this run (`_ended_by_tool`).
        notices = [
            _as_healed(stop) if stop is not None else self._lost_result(call) for call, stop in zip(waiting, stops)
        ]
        self._produced.record(notices, current_scope())  # the agent's tool's answer: its own when read back
        return [RemoveMessage(id=REMOVE_ALL_MESSAGES), *messages[: at + 1], *notices, *messages[at + 1 :]]

    def _lost_result(self, call: Mapping[str, Any]) -> ToolMessage:
        """The error `ToolMessage` that answers a call whose result was lost beside a blocked one (`_healed`)."""
        name = self._tool_name(call.get("name"))
        content = _LOST_RESULT_NOTICE.format(tool=name)
        message = ToolMessage(content=content, tool_call_id=call.get("id") or "", name=name, status="error")
        return self._own_notice(message)

    def _executed_call(self, request: Any) -> Callable[[dict[str, Any]], ToolMessage | None]:
        """Judges a call the tool is given that is not ``request``'s: ``None`` to run it, else its notice."""

        def judge(call: dict[str, Any]) -> ToolMessage | None:
            rewritten, item = self._executed_item(request, call)
            decision = screen(self.guard, [item])[0] if item is not None else None
            return self._executed_outcome(request, rewritten, decision)

        return judge

    def _aexecuted_call(self, request: Any) -> Callable[[dict[str, Any]], Awaitable[ToolMessage | None]]:
        async def judge(call: dict[str, Any]) -> ToolMessage | None:
            rewritten, item = await built_off_loop(
                lambda: self._executed_item(request, call), (call, *_read_by_call(request))
            )
            decision = (await ascreen(self.guard, [item]))[0] if item is not None else None
            # A blocked reviewer's edit is fingerprinted (`_keep_blocked_edit`): off the loop when it is large.
            return await built_off_loop(
                lambda: self._executed_outcome(request, rewritten, decision), rewritten.tool_call
            )

        return judge

    def _executed_item(self, request: Any, call: dict[str, Any]) -> tuple[Any, Item | None]:
        """``request`` rewritten to the call the tool is given (under the judged call's id), and its check."""
        rewritten = request.override(tool_call={**request.tool_call, **call, "id": request.tool_call.get("id")})
        return rewritten, self._call_item(rewritten)

    def _executed_outcome(self, request: Any, rewritten: Any, decision: Decision | None) -> ToolMessage | None:
        return None if decision is None or decision.allowed else self._blocked_call(rewritten, decision, request)

    # ``HumanInTheLoopMiddleware`` keeps a reviewer's edit in its state key after the tools step. The guard blocked it
    # there (the tool never ran), and the thread's next turn judged the key as the client's input: the user's harmless
    # question was refused, or with "error" raised for again (rt68c F2). The blocked edit is cleared from the key
    # instead, at the next hook that reads the state (`before_model`, or the next turn's `before_agent`): the key then
    # holds nothing that was not judged, and the checkpoint keeps no blocked edit. Only an edit equal to a call this
    # middleware blocked on the thread is cleared; any other entry is judged as before (a client's `Command` update).
    # Kept by fingerprint (`_edit_key`), not as the call: its arguments are the blocked text, and a thread's were
    # held in the process after its runs ended (rt68l F3); forgotten once the update that clears them is returned.
    def _reviewer_edit(self, request: Any) -> bool:
        """Is ``request``'s call the reviewer's edit the state holds for its id (`_REVIEWER_EDITS`)? The reviewer
        listed after this middleware rewrites the call inside it (`_executed_call`), listed before it the call comes
        in rewritten (rt68l F4): either way it is the key's entry."""
        call = request.tool_call
        state = getattr(request, "state", None)
        edits = state.get(_REVIEWER_EDITS) if isinstance(state, Mapping) else None
        action = edits.get(call.get("id")) if isinstance(edits, Mapping) and call.get("id") else None
        if not isinstance(action, Mapping):
            return False
        return (action.get("name"), action.get("args")) == (call.get("name"), call.get("args"))

    def _keep_blocked_edit(self, call: Mapping[str, Any]) -> None:
        """A reviewer's edit the guard blocked (`_reviewer_edit`), kept for its thread by fingerprint."""
        thread = current_thread()
        key = _edit_key(call.get("id"), call) if call.get("id") else None
        if thread is None or key is None:
            return  # no checkpoint keeps it; an edit is kept by its call's id
        self._blocked_edits[thread] = (self._blocked_edits.get(thread) or frozenset()) | {key}

    def _blocked_edits_cleared(self, state: Any) -> dict[str, Any] | None:
        """The update that clears from the state's reviewer edits (`_REVIEWER_EDITS`) those the guard blocked on the
        thread (`_keep_blocked_edit`), or ``None`` where it holds none: the thread's are forgotten then."""
        thread = current_thread()
        blocked = self._blocked_edits.get(thread) if thread is not None else None
        if thread is None or not blocked:
            return None
        edits = state.get(_REVIEWER_EDITS) if isinstance(state, Mapping) else None
        held: Mapping[Any, Any] = edits if isinstance(edits, Mapping) else {}
        left = {i: action for i, action in held.items() if _edit_key(i, action) not in blocked}
        if len(left) == len(held):
            self._blocked_edits.pop(thread)
            return None
        return {_REVIEWER_EDITS: left}

    def _with_cleared(self, cleared: dict[str, Any] | None, update: dict[str, Any] | None) -> dict[str, Any] | None:
        """A hook's update with the blocked reviewer edits cleared beside it (`_blocked_edits_cleared`); the update's
        own write of the key (a block of what is left clears it) wins. Returned, the thread's edits are forgotten:
        the key holds none of them now (a hook that raises returns nothing, and they are cleared at the next)."""
        if cleared is None:
            return update
        thread = current_thread()
        if thread is not None:
            self._blocked_edits.pop(thread)
        return {**cleared, **(update or {})}

    # A failing tool's error is an output too: its text can quote what the tool read (a page it could not
    # parse), and a ToolNode, a tool-error or a retry middleware listed before this one writes it into a
    # message that streams out and stays in the checkpoint. Blocked, the guard's notice is the result (with
    # "error", GuardViolation is raised); the error itself goes nowhere.
    def _error_item(self, request: Any, error: BaseException) -> Item | None:
        """A failed tool's error as its result (`error_texts`: all it carries, within the guard's ``max_chars``),
        or ``None`` where it is not judged. An interrupt raised out of the tool (``interrupt()`` in it, or in a
        sub-agent it runs: a review request quoting that sub-agent's tool call) goes to the run's caller: its text
        (`interrupt_text`) is judged the same way, and a blocked one is the guard's notice instead. Read once: an exception whose text changes between reads is judged as
        first read. ``extra["whole"]``: whether all of it fit (a page in its cause past the limit was left out,
        and the error went on with it: rt50f F7)."""
        stage = self._result_stage(request)
        if stage is None:
            return None
        interrupts = interrupt_values(error)
        if interrupts is not None:  # handed to the run's caller: judged as the tool's output (rt57b F4)
            text, whole = interrupt_text(interrupts, self.guard.max_chars, payload_leaf)
            left_out = [] if whole else [""]
        elif control_flow(error):
            return None
        else:
            left_out = []
            text = "\n".join(error_texts(error, self.guard.max_chars, left_out=left_out))
        if not text.strip() and not left_out:
            return None
        call = request.tool_call
        message = ToolMessage(
            content=text, tool_call_id=call.get("id") or "", name=call.get("name") or "tool", status="error"
        )
        conversation = untrusted_conversation(text, "tool output")
        extra = {"entry": None, "whole": not left_out, **({AS_ANSWER: True} if self._answers_run(request) else {})}
        return Item(stage, conversation, message, extra=extra)

    def _error_decision(self, item: Item, judge: Callable[[], Decision]) -> Decision:
        """The decision on a failed tool's error: ``judge``'s, or blocked whatever ``on_error`` says when the error
        carries more than ``max_chars`` (size alone never gets text through unjudged: `InputTooLarge`)."""
        if not item.extra["whole"]:
            return self._too_large_error()
        try:
            return judge()
        except InputTooLarge:
            return self._too_large_error()

    async def _aerror_decision(self, item: Item) -> Decision:
        if not item.extra["whole"]:
            return self._too_large_error()
        try:
            return (await ascreen(self.guard, [item]))[0]
        except InputTooLarge:
            return self._too_large_error()

    def _too_large_error(self) -> Decision:
        why = f"the tool's error (or interrupt) carries more than max_chars={self.guard.max_chars:,} characters: not judged whole"
        return self.guard.policy.decide_unjudged(Stage.TOOL_RESULT, why)

    def _withheld_error(self, run: ToolRun, item: Item, decision: Decision) -> ToolMessage:
        if self.exit_behavior == "error":
            stop = stop_of(decision)
            run.error(stop)
            raise stop
        notice = self._redact_input(item, decision)  # a ToolMessage's notice
        assert isinstance(notice, ToolMessage)
        run.end(notice)
        return notice

    async def _awithheld_error(self, run: ToolRun, item: Item, decision: Decision) -> ToolMessage:
        if self.exit_behavior == "error":
            stop = stop_of(decision)
            await run.aerror(stop)
            raise stop
        notice = self._redact_input(item, decision)
        assert isinstance(notice, ToolMessage)
        await run.aend(notice)
        return notice

    # A sub-agent the tool runs may hand back with ``Command(graph=Command.PARENT, update=...)``: LangGraph raises it
    # out of the tool as a ``ParentCommand`` and writes its update to the graph above, past any result the guard
    # reads. Its messages are what the tool's run writes to the state: judged as a returned Command's (rt57b F1).
    def _handed_up_items(self, request: Any, error: BaseException) -> list[Item] | None:
        """The checks of what a ``ParentCommand`` raised out of the tool writes (`bubbled_command`: its messages, the
        rest of its update, its ``Send`` payloads), or ``None`` where ``error`` is none or they have nothing to
        judge."""
        command = bubbled_command(error)
        return (self._result_items(request, command) or None) if command is not None else None

    def _handed_up(
        self, error: BaseException, items: list[Item], decisions: list[Decision]
    ) -> BaseException | ToolMessage:
        """The ``ParentCommand`` to raise: ``error`` itself, its Command's blocked messages replaced by notices
        (`_withheld`; ``"error"``: `GuardViolation` raised), as LangGraph rewrites it on its way up (``args``); or,
        where what it writes besides its messages is blocked, the notice the tool's call gets instead (the handoff
        does not happen)."""
        command = bubbled_command(error)
        judged = self._withheld(command, items, decisions)
        self._produced.record_result(judged, current_scope())  # the agent's tool wrote it: its own, as a result
        if isinstance(judged, ToolMessage):
            return judged
        if judged is not command:
            error.args = (judged,)
        return error

    def _result_items(self, request: Any, result: Any) -> list[Item]:
        """The tool's result: every message it writes to the state (`tool_result_messages`: its `ToolMessage`,
        a ``Command``'s messages, a list of them), each untrusted content with its name and ids (`tool_output_text`),
        and what each ``Command`` in it hands the graph besides (`command_rest_text`: other state keys, ``Send``
        payloads; rt59c F2, F4), one check a Command, whose block withholds the whole result (`_withheld`). A
        ``return_direct`` tool's result is the run's answer too (`_result_stage`)."""
        stage = self._result_stage(request)
        if stage is None:
            return []
        as_answer = {AS_ANSWER: True} if self._answers_run(request) else {}
        call = request.tool_call
        tool = str(call.get("name") or "")
        items = []
        for entry, message in tool_result_messages(result):
            text = tool_output_text(message, self.guard.max_chars, tool=tool, labels=True)
            if text.strip():
                conversation = untrusted_conversation(text, "tool output")
                named = bool(tool_labels(message, tool))  # a name judged with it goes with it (`_redact_input`)
                extra = {"entry": entry, _NAMED: named, **as_answer}
                items.append(Item(stage, conversation, message, extra=extra))
        for command in tool_result_commands(result):
            text = command_rest_text(command, self.guard.max_chars)
            if text.strip():
                # Judged as the call's result: blocked, the call's notice is the whole result.
                written = ToolMessage(content=text, tool_call_id=call.get("id") or "", name=tool or "tool")
                conversation = untrusted_conversation(text, "tool output")
                extra = {"entry": None, _WHOLE: True, _STATE_WRITES: command, **as_answer}
                items.append(Item(stage, conversation, written, extra=extra))
        return items

    # A ``return_direct`` tool's result ends the run as its final answer: ``create_agent`` goes from the tools to the
    # end, no model call reads it. Decided under the tool-result stage alone, a stage loosened for the pages a model
    # reads let through an answer the response stage blocks, and ``check_tool_results=False`` judged it not at all
    # (rt65e F2): it is decided as LlamaIndex decides one (rt60a F2), as an answer too (`AS_ANSWER`: the response
    # stage's decision, or the tool-result stage's where that one is stricter).
    def _answers_run(self, request: Any) -> bool:
        """Is the call's result the run's answer (its tool's ``return_direct``) and the answer screen on?"""
        return self.check_output and bool(getattr(getattr(request, "tool", None), "return_direct", False))

    def _result_stage(self, request: Any) -> Stage | None:
        """The stage a tool's result (or its error) is judged under: the tool-result stage, or with
        ``check_tool_results=False`` the response stage for a ``return_direct`` tool's (`_answers_run`), else none."""
        if self.check_tool_results:
            return Stage.TOOL_RESULT
        return Stage.RESPONSE if self._answers_run(request) else None

    def _withheld(self, result: Any, items: list[Item], decisions: list[Decision]) -> Any:
        """The result with every blocked message replaced by the notice (``"error"``: raised)."""
        self._allowed.remember(items, decisions, self.guard)
        self._trust_state_writes(items, decisions)
        blocked = blocked_pairs(items, decisions)
        if not blocked:
            return result
        if self.exit_behavior == "error":
            enforce(blocked[0][1])
        whole = [(item, d) for item, d in blocked if item.extra.get(_WHOLE)]
        if whole:  # what a Command hands the graph besides its messages: no part of the result goes on
            notice = self._redact_input(*whole[0])
            assert isinstance(notice, ToolMessage)
            return notice
        notices = {id(item.extra["entry"]): self._withheld_message(item, d) for item, d in blocked}
        return _with_notices(result, notices)

    def _withheld_message(self, item: Item, decision: Decision) -> BaseMessage:
        notice = self._redact_input(item, decision)
        if isinstance(notice, ToolMessage):
            return notice
        # A turn the tool wrote (a handoff's): its tool calls were judged with its text and go with it; marked,
        # so that "end" ends the run on it (`_ended_by_tool`).
        record = {**notice.response_metadata[METADATA_KEY], _WRITTEN_BY_TOOL: True}
        update: dict[str, Any] = {"response_metadata": {**notice.response_metadata, METADATA_KEY: record}}
        if isinstance(notice, AIMessage):
            update.update(tool_calls=[], invalid_tool_calls=[], additional_kwargs={})
        return notice.model_copy(update=update)

    # -- the model call: hold-back streaming --------------------------------------------------------
    # Another middleware may write messages after `before_model` judged the state (a summary that
    # `SummarizationMiddleware`, listed after this one, writes in its own before_model) or add them to the
    # request in its own model call: the model call judges the messages it is given (here, and in the held
    # model for what a middleware inside this one adds). What was judged before hits the verdict cache.
    def _given(self, messages: list[BaseMessage], items: list[Item], decisions: list[Decision]) -> list[BaseMessage]:
        """The messages the model reads: with "replace", notices in place of blocked ones. Raises the first
        block's `GuardViolation` with "error" or "end", or when the last message (what the model answers) is
        blocked; the model call's outcome is then the policy's (`_stream_stopped`)."""
        self._allowed.remember(items, decisions, self.guard)
        blocked = without_runs_of_blocked(blocked_pairs(items, decisions))
        if not blocked:
            return messages
        notices = {id(m): self._redact_input(member, d) for item, d in blocked for member, m in self._members(item)}
        if self.exit_behavior != "replace" or (messages and id(messages[-1]) in notices):
            enforce(blocked[0][1])
        return [notices.get(id(m), m) for m in messages]

    def _given_request(self, request: ModelRequest, items: list[Item], decisions: list[Decision]) -> ModelRequest:
        messages: list[BaseMessage] = list(request.messages)
        given = self._given(messages, items, decisions)
        return request if given is messages else request.override(messages=given)  # type: ignore[arg-type]

    def _answer_calls(self, request: ModelRequest) -> bool | frozenset[str]:
        """The tool calls of this model call's answer to judge: all of them, or the structured-output tools'
        (``ToolStrategy``: the structured response, the answer; `_answer_tools`)."""
        return self.check_tool_calls or strategy_tools(request.response_format)

    def _holds_calls(self, request: ModelRequest) -> bool:
        """Does the held stream hold tool calls? A stream cannot tell a call's name before its first chunk has
        gone by, so all of them in a call that may answer by a structured-output tool."""
        return bool(self._answer_calls(request))

    def _held_request(self, request: ModelRequest) -> tuple[ModelRequest, StreamLedger | None]:
        if not (self.check_output and self.check_stream) or not isinstance(request.model, Runnable):
            return request, None
        ledger = StreamLedger()
        holds_calls = self._holds_calls(request)

        def hold(model: Runnable[Any, Any]) -> Runnable[Any, Any]:
            if isinstance(model, HeldBackChatModel) and model.ledger is ledger:
                return model  # already held by this call
            return HeldBackChatModel.wrap(
                model,
                self.guard,
                ledger,
                stream_options=self.stream_options,
                history_turns=self.history_turns,
                check_tool_calls=holds_calls,
                answer_tools=answers,
                given_items=self._message_items,
                given_after=self._given,
                judged=lambda items, decisions: self._allowed.remember(items, decisions, self.guard),
                answer_items=answer_items,
                answer_after=self._answer_after,
            )

        calls, answers = self._answer_calls(request), strategy_tools(request.response_format)

        def answer_items(messages: list[BaseMessage], answer: BaseMessage) -> list[Item]:
            """An answer that was not streamed, judged in the held call (before its run ends): its text and the
            calls this call judges (`_answer_items`), with the messages the model read as context."""
            context = self._unowned(messages)
            found = output_items(
                answer, context, self.history_turns, tool_calls=calls, answers=answers, budget=self.guard.max_chars
            )
            found += reading_items(answer, context, self.history_turns)  # a JSON answer, as it is parsed
            return self._allowed.unjudged(found, self.guard)

        return HeldModelRequest.of(request, hold), ledger

    def _stream_stopped(
        self, error: GuardViolation | GuardUnavailable, ledger: StreamLedger | None = None
    ) -> ModelResponse:
        """The held stream stopped on a violation (or a fail-closed guard error): the policy action."""
        decision = error.decision
        if self.exit_behavior == "error" or decision is None:
            raise error
        # A new message (no id): the consumer already has the judged-safe prefix of the stopped answer. An answer
        # judged whole in the held call (`_answer_after`) is replaced, reusing its id.
        replaces = ledger.stopped_answer if ledger is not None else None
        return ModelResponse(result=[self._refusal(decision, replaces=replaces)])

    def _answer_after(self, items: list[Item], decisions: list[Decision]) -> None:
        """The verdicts on an answer the held call judged whole (its ``answer_items``): remembered (not judged
        again here), and the first block raised, inside the call: the policy action follows (`_stream_stopped`)."""
        self._allowed.remember(items, decisions, self.guard)
        blocked = blocked_pairs(items, decisions)
        if blocked:
            enforce(blocked[0][1])

    def _answered(self, response: Any, ledger: StreamLedger | None) -> Any:
        if ledger is not None and ledger.stopped is not None:
            # A middleware inside this one answered after the held stream was stopped (a retry's
            # "Model call failed ..." message): the stop is the call's outcome all the same.
            return self._stream_stopped(ledger.stopped, ledger)
        return response

    @contextmanager
    def _held_scope(self, ledger: StreamLedger | None, request: ModelRequest) -> Iterator[None]:
        """Tell callback handlers on this guard that this call's stream is judged here (see `HELD_CALL`)."""
        if ledger is None:
            yield
            return
        scope = HELD_CALL.set(HeldCall(self.guard, self._holds_calls(request)))
        try:
            yield
        finally:
            HELD_CALL.reset(scope)

    def _trust_own_names(self, response: Any) -> None:
        """The name ``create_agent(name=...)`` puts on its model's answers is the application's (`_agent_name`): not
        judged when the answer comes back as input (a client's forged answer under another name is). Demo guards flag
        common agent names (``research_agent``). Only that name: trusting every label of an answer (`sent_labels`:
        a ``prefix``, worded call ids) exempted any user's message named with the same text (rt60d F4)."""
        name = _agent_name()
        if name is not None and any(answer.name == name for answer in _answers_of(response)):
            item = label_item(AIMessage(content="", name=name))
            self._allowed.trust([item] if item is not None else [], self.guard)

    def _label_check(self, answer: AIMessage) -> Item | None:
        """What is sent with ``answer`` beside its text (`sent_labels`: a ``prefix``, worded call ids, a name other
        than the agent's), judged with the answer: a provider class sends it back (ChatMistralAI's ``prefix``) and a
        consumer reads it (rt60d F4). ``None`` when there is none."""
        name = _agent_name()
        bare = answer.model_copy(update={"name": None}) if name is not None and answer.name == name else answer
        item = label_item(bare)
        return None if item is None else dataclasses.replace(item, message=answer)

    def _answer_items(self, request: ModelRequest, response: Any, ledger: StreamLedger | None) -> list[Item]:
        """The model call's answer, judged as the call's outcome, before any ``after_model`` hook sees it
        (``HumanInTheLoopMiddleware`` shows its tool calls to a reviewer; a logger stores them): the text of
        each AI message in it unless its stream was judged and it still says what streamed (a middleware inside
        this one may have rewritten it under the same id), and their tool calls."""
        items: list[Item] = []
        answers = strategy_tools(request.response_format)  # the structured response's calls: the answer
        for answer in _answers_of(response):
            streamed = ledger is not None and ledger.judged(answer, self.guard.max_chars)
            if streamed:
                self._remember_judged(answer)  # after_model does not judge its text again
            text = self.check_output and not streamed
            context = self._unowned(request.messages)
            items += output_items(
                answer,
                context,
                self.history_turns,
                text=text,
                tool_calls=self._answer_calls(request),
                answers=answers,
                budget=self.guard.max_chars,
            )
            if text:  # a JSON answer is read parsed (``ProviderStrategy``): its decoded strings too
                items += reading_items(answer, context, self.history_turns)
            if self.check_output and (label := self._label_check(answer)) is not None:
                items.append(label)
        return items + self._beside_items(request, response)

    def _beside_items(self, request: ModelRequest, response: Any) -> list[Item]:
        """The other messages of the model call's result, which LangChain adds to the state with the answer (a
        middleware inside this one put a human or system turn, a note, beside it): judged as untrusted text the
        call wrote, no looser than a prompt (`AS_INPUT`), before the model node ends and a stream or the state
        takes them (rt57b F2). Not the tool messages ``create_agent`` writes for a ``ToolStrategy`` answer
        (`_structured_notes`: the judged call's parsed response, or the application's text)."""
        if not (self.check_output and isinstance(response, ModelResponse)):
            return []
        notes = _structured_notes(request, response)
        items = []
        for message in response.result:
            if isinstance(message, AIMessage) or _screened(message) or id(message) in notes:
                continue
            text = tool_output_text(message, self.guard.max_chars)
            if text.strip():
                conversation = untrusted_conversation(text, "model call output")
                items.append(Item(Stage.TOOL_RESULT, conversation, message, extra={AS_INPUT: True}))
        return items

    def _on_answer(self, response: Any, items: list[Item], decisions: list[Decision]) -> Any:
        # Read back as the next model call's input: not judged again.
        self._allowed.remember(items, decisions, self.guard)
        blocked = blocked_pairs(items, decisions)
        if not blocked:
            for answer in _answers_of(response):
                self._remember_judged(answer)  # after_model does not judge its text again
            return response
        decision = blocked[0][1]
        if self.exit_behavior == "error":
            enforce(decision)
        # The answer never reaches the state (nor its structured response, nor what came beside it): the refusal
        # takes its place, with its id (as after_model replaces an answer).
        answers = _answers_of(response)
        return ModelResponse(result=[self._refusal(decision, replaces=answers[0] if answers else None)])

    def _answer_checks(self, request: ModelRequest, response: Any, ledger: StreamLedger | None) -> list[Item] | None:
        """What the model call answered, recorded (the application's names), and its checks not judged before (a held
        stream judged its tool calls at its end); ``None`` when it has none. The answer itself is recorded as the
        agent's once let through (`_record_response`)."""
        self._remember_tools(request.tools)
        self._trust_own_names(response)
        items = self._answer_items(request, response, ledger)
        return self._allowed.unjudged(items, self.guard) if items else None

    # What the call's outcome holds is recorded as the agent's own (`_record_response`) once all of it is judged: a
    # blocked answer, or one a blocked Command beside it withholds, is the refusal by then.
    @speaking_as(_ASYNC_TWIN)
    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        response = self._wrap_model_call(request, handler)
        commands = _inner_commands(handler)
        items = self._command_items(commands) if commands else []
        if commands and items:
            response = self._on_commands(commands, response, items, screen(self.guard, items))
        self._record_response(response)
        return response

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        response = await self._awrap_model_call(request, handler)
        commands = _inner_commands(handler)
        if commands:
            found = commands
            # Off the loop where large, or where a value is an object that cannot be sized (`opaque_output`)
            items = await _read_off_loop(lambda: self._command_items(found), found)
            if items:
                verdicts = await ascreen(self.guard, items)
                answered = response
                response = await _read_off_loop(lambda: self._on_commands(found, answered, items, verdicts), found)
        outcome = response
        read = outcome.result if isinstance(outcome, ModelResponse) else ()
        await built_off_loop(lambda: self._record_response(outcome), read)  # fingerprints: reads what it records
        return response

    # A middleware inside this one may return ``ExtendedModelResponse(response, command=Command(update=...))``:
    # LangChain's composer keeps the Command out of the response this middleware gets and applies it with the model
    # node's update, to the state and every stream (rt57b F2a). What it writes is judged here, where the composer's
    # list of them can be reached (`_inner_commands`): its messages, and what it writes to other state keys (a note,
    # ``structured_response``: rt60 K2).
    def _command_items(self, commands: list[Any]) -> list[Item]:
        """What the Commands middleware inside this one returned beside the answer write, judged as untrusted text the
        model call wrote, no looser than a prompt (`AS_INPUT`), as `_beside_items`: each message, and the rest of each
        Command (`command_rest_text`: other state keys, ``Send`` payloads; read as a tool's Command's rest is), one
        check a Command, whose block withholds that Command whole (`_on_commands`)."""
        if not self.check_output:
            return []
        items = []
        for entry, message in tool_result_messages(commands):
            text = tool_output_text(message, self.guard.max_chars)
            if text.strip() and not _screened(message):
                conversation = untrusted_conversation(text, "model call output")
                items.append(Item(Stage.TOOL_RESULT, conversation, message, extra={"entry": entry, AS_INPUT: True}))
        for command in tool_result_commands(commands):
            text = command_rest_text(command, self.guard.max_chars)
            if text.strip():
                conversation = untrusted_conversation(text, "model call output")
                items.append(Item(Stage.TOOL_RESULT, conversation, extra={_COMMAND: command, AS_INPUT: True}))
        return items

    def _on_commands(self, commands: list[Any], response: Any, items: list[Item], decisions: list[Decision]) -> Any:
        """``response``, or the refusal where what a Command writes is blocked (``"error"``: raised): a Command whose
        other writes are blocked leaves the composer's list, and blocked messages are replaced by notices in it, in
        place (`_withheld`)."""
        blocked = blocked_pairs(items, decisions)
        if blocked and self.exit_behavior == "error":
            self._allowed.remember(items, decisions, self.guard)
            enforce(blocked[0][1])
        rest = [(item, d) for item, d in zip(items, decisions) if _COMMAND in item.extra]
        messages = [(item, d) for item, d in zip(items, decisions) if _COMMAND not in item.extra]
        self._allowed.remember([item for item, _ in rest], [d for _, d in rest], self.guard)
        dropped = {id(item.extra[_COMMAND]) for item, d in rest if not d.allowed}
        kept = [command for command in commands if id(command) not in dropped]
        commands[:] = self._withheld(kept, [item for item, _ in messages], [d for _, d in messages])
        if not blocked:
            return response
        answers = _answers_of(response)
        if isinstance(response, ModelResponse) and not answers:
            return response  # already the guard's refusal
        return ModelResponse(result=[self._refusal(blocked[0][1], replaces=answers[0] if answers else None)])

    def _wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        with self._stopped.watching(request, step=request.state):
            keys = self._state_key_items(request.state, run_context(request))
            given = self._message_items(list(request.messages))
            key_decisions, decisions = self._split(keys, screen(self.guard, [*_read_whole(keys), *given]))
            try:
                stopped = self._key_stopped(request, keys, key_decisions) if keys else None
                if stopped is not None and not isinstance(stopped, ModelRequest):
                    return stopped  # the model is not called
                request = self._given_request(stopped or request, given, decisions)
            except GuardViolation as error:
                return self._stream_stopped(error)
            held, ledger = self._held_request(request)
            failed: Exception | None = None
            try:
                with self._held_scope(ledger, request):
                    response = self._answered(handler(held), ledger)
            except (GuardViolation, GuardUnavailable) as error:
                if ledger is None:
                    raise
                return self._stream_stopped(error, ledger)
            except Exception as error:  # noqa: BLE001 - judged below, out of this block
                if ledger is not None or not self.check_output:
                    raise  # a held call judged its own error (`HeldBackChatModel._failed`)
                failed = error
            if failed is not None:
                # Not held (check_stream=False): the error can quote the answer all the same (rt64b F1)
                context = guard_history(self._unowned(request.messages), self.history_turns)
                stop = error_stop(self.guard, failed, context, self.history_turns)
                if stop is None:
                    raise failed
                return self._stream_stopped(stop)
            fresh = self._answer_checks(request, response, ledger)
            if fresh is None:
                return response
            return self._on_answer(response, fresh, screen(self.guard, fresh) if fresh else [])

    async def _awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        with self._stopped.watching(request, step=request.state):
            asked = request
            context = run_context(asked)
            keys = await built_off_loop(
                lambda: self._state_key_items(asked.state, context), _state_read(asked.state, context)
            )
            given = await built_off_loop(lambda: self._message_items(list(asked.messages)), asked.messages)
            try:
                key_decisions, decisions = self._split(keys, await ascreen(self.guard, [*_read_whole(keys), *given]))
                stopped = self._key_stopped(asked, keys, key_decisions) if keys else None
                if stopped is not None and not isinstance(stopped, ModelRequest):
                    return stopped  # the model is not called
                kept = stopped or asked
                request = await built_off_loop(lambda: self._given_request(kept, given, decisions), asked.messages)
            except GuardViolation as error:
                return self._stream_stopped(error)
            held, ledger = self._held_request(request)
            failed: Exception | None = None
            try:
                with self._held_scope(ledger, request):
                    response = self._answered(await handler(held), ledger)
            except (GuardViolation, GuardUnavailable) as error:
                if ledger is None:
                    raise
                return self._stream_stopped(error, ledger)
            except Exception as error:  # noqa: BLE001 - judged below, out of this block
                if ledger is not None or not self.check_output:
                    raise
                failed = error
            if failed is not None:
                messages = request.messages
                context = await built_off_loop(
                    lambda: guard_history(self._unowned(messages), self.history_turns), messages
                )
                stop = await aerror_stop(self.guard, failed, context, self.history_turns)
                if stop is None:
                    raise failed
                return self._stream_stopped(stop)
            sent = request
            fresh = await built_off_loop(lambda: self._answer_checks(sent, response, ledger), (sent.messages, response))
            if fresh is None:
                return response
            verdicts = await ascreen(self.guard, fresh) if fresh else []
            return await built_off_loop(lambda: self._on_answer(response, fresh, verdicts), response)

    # -- tool calls -----------------------------------------------------------------------------
    # What a tool runs inside it (a sub-agent with tools of its own) is out of sight of the run's callbacks but
    # qwenguard's: with no handler in the app's config, nothing judged it, and a sub-agent's harmful call ran (rt67d
    # F1). The tool's children get a handler on this middleware's guard (`ToolGuards`), whose stop withholds the call's result.
    @cached_property
    def _tool_guards(self) -> ToolGuards | None:
        return ToolGuards(self.guard, self.history_turns) if self.check_tool_calls else None

    def _tool_run(self, request: Any) -> ToolRun:
        """The guarded call's run (`ToolRun`): the tool held, judged again if rewritten, and what it runs judged."""
        return ToolRun(
            request,
            self._executed_call(request),
            self._aexecuted_call(request),
            self._tool_guards,
            lambda decision: self._stopped_inside(request, decision),
        )

    def _stopped_inside(self, request: Any, decision: Decision) -> ToolMessage:
        """The guarded call's result where the handler lent to what its tool runs stopped it (`ToolGuards`): the
        tool ran, and what it did inside was stopped (a sub-agent's call before its tool ran): the result's notice
        (``"error"``: raised, and kept with that notice by `_kept_stop`)."""
        if self.exit_behavior == "error":
            enforce(decision)
        return self._call_notice(request, decision, self.tool_result_notice)

    @speaking_as(_ASYNC_TWIN)
    def wrap_tool_call(self, request: Any, handler: Callable[[Any], ToolMessage | Command]) -> ToolMessage | Command:
        thread = current_thread()
        result: ToolMessage | Command | None = self._resumed_stop(request, thread)
        if result is None:
            tool = _ToolOnce(handler, self._stopped.result_of(request))
            try:
                result = self._wrap_tool_call(request, tool)
            except QwenGuardError as stop:
                self._kept_stop(request, stop, tool, thread)
                raise
            self._judged_at_last(request, tool, thread)
        # What it returns is what the agent's tool wrote to the state (`Produced`): its own, not a client's.
        return self._produced.record_result(result, current_scope())

    async def awrap_tool_call(
        self, request: Any, handler: Callable[[Any], Awaitable[ToolMessage | Command]]
    ) -> ToolMessage | Command:
        thread = current_thread()
        # A call's fingerprint reads its arguments, of any size: off the loop when they are large.
        result: ToolMessage | Command | None = await built_off_loop(
            lambda: self._resumed_stop(request, thread), request.tool_call
        )
        if result is None:
            tool = _AsyncToolOnce(handler, self._stopped.result_of(request))
            try:
                result = await self._awrap_tool_call(request, tool)
            except QwenGuardError as stop:
                kept = stop
                await built_off_loop(lambda: self._kept_stop(request, kept, tool, thread), request.tool_call)
                raise
            except asyncio.CancelledError:
                self._lost_on_cancel(request, tool, thread)
                raise
            self._judged_at_last(request, tool, thread)
        scope = current_scope()
        return await _read_off_loop(lambda: self._produced.record_result(result, scope), result)  # fingerprints

    def _wrap_tool_call(self, request: Any, handler: Callable[[Any], ToolMessage | Command]) -> ToolMessage | Command:
        with self._stopped.watching(request):  # a retry around this middleware does not run the tool again
            checks = self._tool_checks(request)
            if checks:  # the call: judged as the model's answer, mostly
                blocked = self._before_tool(checks, self._tool_decisions(checks, lambda i: screen(self.guard, i)))
                if blocked is not None:
                    return self._blocked_call(request, blocked)  # handler never runs: the tool does not execute
            # The callbacks hear of the run, and of its judged result only; a call rewritten inside this
            # middleware (a reviewer's edit) is judged again before it runs.
            run = self._tool_run(request)
            run.start()
            try:
                result = handler(run.request)
                items = [] if run.is_notice(result) else self._result_items(request, result)
                judged = self._withheld(result, items, screen(self.guard, items)) if items else result
            except BaseException as error:
                handed_up = self._handed_up_items(request, error)
                failed = self._error_item(request, error) if handed_up is None else None
                if failed is None and handed_up is None:
                    run.error(error)
                    raise
                caught = error
            else:
                run.end(judged)
                return judged
            # Out of the except block: nothing the guard raises or returns has the tool's error chained to it.
            if handed_up is not None:
                try:
                    bubbling = self._handed_up(caught, handed_up, screen(self.guard, handed_up))
                except QwenGuardError as stop:
                    run.error(stop)
                    raise
                if isinstance(bubbling, ToolMessage):  # withheld whole: the call's notice is its result
                    run.end(bubbling)
                    return bubbling
                run.error(bubbling)
                raise bubbling
            assert failed is not None
            decision = self._error_decision(failed, lambda: screen(self.guard, [failed])[0])
            if decision.allowed:
                run.error(caught)
                raise caught
            return self._withheld_error(run, failed, decision)

    async def _awrap_tool_call(
        self, request: Any, handler: Callable[[Any], Awaitable[ToolMessage | Command]]
    ) -> ToolMessage | Command:
        with self._stopped.watching(request):
            # The resume values too: a client's, of any size (`_read_by_call` sizes the call and the state only).
            # A resume value that is not a string is read off the loop whatever its size: an object's fields are not
            # sized before they are read (`_screening.built_off_loop`).
            resumed = pending_resumes(request)
            if any(not isinstance(value, str) for value in resumed):
                checks = await asyncio.to_thread(self._tool_checks, request)
            else:
                read = (*_read_by_call(request), resumed, *_state_read(request.state, run_context(request)))
                checks = await built_off_loop(lambda: self._tool_checks(request), read)
            if checks:
                blocked = self._before_tool(checks, await self._atool_decisions(checks))
                if blocked is not None:
                    # A blocked reviewer's edit is fingerprinted (`_keep_blocked_edit`): off the loop when large.
                    return await built_off_loop(lambda: self._blocked_call(request, blocked), request.tool_call)
            run = self._tool_run(request)
            await run.astart()
            try:
                result = await handler(run.request)
                items = (
                    []
                    if run.is_notice(result)
                    else await _read_off_loop(lambda: self._result_items(request, result), result)
                )
                if items:
                    decisions = await ascreen(self.guard, items)
                    judged = await _read_off_loop(lambda: self._withheld(result, items, decisions), result)
                else:
                    judged = result
            except BaseException as error:
                raised = error  # an interrupt's payload or a handoff's messages: read off the loop when large
                handed_up = await _read_off_loop(
                    lambda: self._handed_up_items(request, raised), raised.args, bubbled_command(raised)
                )
                failed = (
                    await built_off_loop(lambda: self._error_item(request, raised), raised.args)
                    if handed_up is None
                    else None
                )
                if failed is None and handed_up is None:
                    await run.aerror(error)
                    raise
                caught = error
            else:
                await run.aend(judged)
                return judged
            if handed_up is not None:
                up = handed_up
                try:
                    verdicts = await ascreen(self.guard, up)
                    bubbling = await _read_off_loop(
                        lambda: self._handed_up(caught, up, verdicts), caught.args, bubbled_command(caught)
                    )
                except QwenGuardError as stop:
                    await run.aerror(stop)
                    raise
                if isinstance(bubbling, ToolMessage):
                    await run.aend(bubbling)
                    return bubbling
                await run.aerror(bubbling)
                raise bubbling
            assert failed is not None
            decision = await self._aerror_decision(failed)
            if decision.allowed:
                await run.aerror(caught)
                raise caught
            return await self._awithheld_error(run, failed, decision)
