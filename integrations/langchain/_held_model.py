"""`HeldBackChatModel`: an agent's chat model that streams out only what the guard has judged.

Why a model and not a hook: in ``create_agent`` the model's tokens reach ``stream_mode="messages"``
consumers from inside the model call (LangGraph's messages handler listens to ``on_llm_new_token`` of
every chat model run), before any middleware hook sees them. LangChain's own `PIIMiddleware` holds
text only on the ``stream_events(version="v3")`` surface; with ``stream_mode="messages"`` its held
text still goes out. `GuardMiddleware.wrap_model_call` therefore swaps the request's model for this
wrapper: the real model runs out of sight of the caller's callbacks (so its raw tokens reach no event
stream: LangGraph's ``stream_mode="messages"``, ``stream_events``, ``astream_events``, tracers), its
chunks go through `HeldStream` (the core's hold-back StreamMonitor), and only the chunks the guard
released are yielded by the wrapper, whose run is reported and streamed as the model's. Tool-call chunks are held
until the calls are judged. Non-streaming calls (``invoke`` with nothing listening) are judged whole by the
middleware's checks (``answer_items`` / ``answer_after``) before the wrapper's run ends. Handlers attached to the
wrapped model itself are moved to the wrapper (`_own_handlers`): they hear only what the guard let through.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
    UsageMetadataCallbackHandler,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from pydantic import ConfigDict, Field
from qwenguard.core import (
    Guard,
    GuardUnavailable,
    GuardViolation,
    InputTooLarge,
    QwenGuardError,
    Stage,
)
from qwenguard.core.guard import speaking_as
from qwenguard.core.streaming.parallel import PendingCheck

from .._common import stop_of
from .._error_reading import error_stop_of, error_texts
from . import _out_of_sight as out_of_sight
from ._holding import HELD_LLM_TYPE_PREFIX, HeldStream
from ._input_beside import aafter_verdict, aanswer_beside, after_verdict, answer_beside, auntil_blocked, until_blocked
from ._input_memory import judged_content
from ._json_reading import ReadingHeldStream
from ._messages import DEFAULT_HISTORY_TURNS, Item, call_history, guard_history, output_items
from ._own_handlers import detached, with_own
from ._screening import ascreen, built_off_loop, screen
from ._tool_errors import control_flow

__all__ = ["HeldBackChatModel", "StreamLedger", "aerror_stop", "error_stop"]

#: LangGraph's tag for a model run its message streams skip (``langgraph.constants.TAG_NOSTREAM``),
#: spelled out so that this module needs langchain-core only.
TAG_NOSTREAM = "nostream"


class StreamLedger:
    """What the held streams of one model call judged: the answers whose text was judged as it streamed (by id,
    with a fingerprint of what was judged: `judged_content`), and the stop (`GuardViolation`, or
    `GuardUnavailable` failing closed) that ended one, if any."""

    def __init__(self) -> None:
        self._judged: dict[str, str] = {}
        self.stopped: GuardViolation | GuardUnavailable | None = None
        #: The answer a stop was for, when it came whole (not streamed): its refusal reuses its id.
        self.stopped_answer: BaseMessage | None = None
        #: The text the held streams of this call passed on before their attempt failed, by the conversation they
        #: answered (`OwedCall.conversation`): the consumer holds it, and the next attempt's answer continues it.
        self.passed: dict[str, str] = {}

    def record(self, message: BaseMessage, budget: int, judged: str | None = None) -> None:
        """``message``'s text was judged: its fingerprint (`judged_content`, or ``judged`` when read already)."""
        if message.id:
            self._judged[message.id] = judged if judged is not None else judged_content(message, budget)

    def judged(self, message: BaseMessage, budget: int) -> bool:
        """Was ``message``'s text judged as it streamed, and does it still say what was judged? A middleware
        inside `GuardMiddleware` may rewrite a streamed answer (a footer, a translation) and keep its id."""
        fingerprint = self._judged.get(message.id) if message.id else None
        return fingerprint is not None and fingerprint == judged_content(message, budget)

    def again(self) -> None:
        """Before the model runs again in this call: once a stop ended it, that stop, at once. A middleware between
        `GuardMiddleware` and the model that retries on a failure (``ModelRetryMiddleware``: its default retries a
        `GuardViolation`) gets it again instead of a new answer: an answer judged whole in the held call and blocked
        costs one model call, as a streamed one does (before, each retry ran the model again and threw the answer
        away: rt53e F3)."""
        if self.stopped is not None:
            raise self.stopped

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Run a held stream: once one was stopped, the call's outcome is that stop. A middleware inside
        `GuardMiddleware` that takes it for a failure (``ModelRetryMiddleware``, a fallback) gets the same
        stop again at once instead of a new answer: the guard's stop is not re-rolled."""
        if self.stopped is not None:
            raise self.stopped
        try:
            yield
        except (GuardViolation, GuardUnavailable) as stop:
            self.stopped = stop
            raise


# -- an attempt after one that failed part-way: its answer continues what went out --------------------
# A provider that fails part-way through a streamed answer, after the guard passed on "... Now you Mix", is asked again
# (``ModelRetryMiddleware``, ``ModelFallbackMiddleware``, a node's ``RetryPolicy``, ``with_retry()``,
# ``with_fallbacks()``); the consumer reads the new answer right after the text it holds. Judged as a fresh answer,
# the boundary was never judged: "Mix" + "ammonium nitrate ..." reached the consumer (rt65d F1). The next attempt's
# monitor opens with that text as its answer's prefill (`HeldStream`'s ``prefix``): every window shows it before the
# new text, which alone is released. Refusing another attempt once text went out would be simpler, and would fail
# every legitimate retry of a dropped connection.
# The text is owed to the call (`OwedCall`): the same conversation (a retry sends the same messages again, a fallback
# sends them to another model) in the same step. Another call of the step (a title or helper call before the answer,
# with messages of its own) neither continues it nor clears it (before, it did both: rt65m F1). The step is the
# LangGraph task (node run) the text went out in, else the run the attempts are children of (a ``RunnableRetry``'s,
# a ``RunnableWithFallbacks``': ``GuardedChatModel(...).with_retry()`` outside a graph, rt65m F2). The text is kept in
# the call's ledger (a retry or fallback inside `GuardMiddleware` shares it) and in `OwedTexts` for the step, which
# every attempt shares whoever makes it: a middleware outside `GuardMiddleware` (a new ledger per attempt), a node's
# ``RetryPolicy`` or ``with_retry()`` around `GuardedChatModel` (no ledger).

#: LangGraph's key of a task's id in its config's ``configurable`` (``langgraph._internal._constants``): the same for
#: every attempt of a node run, another for each run.
_TASK_ID = "__pregel_task_id"

#: How LangGraph's ``checkpoint_ns`` joins the node runs a task is in, and ends a node's name before its task id
#: (``langgraph._internal._constants.NS_SEP`` / ``NS_END``).
_NS_SEP, _NS_END = "|", ":"

#: How long a failed attempt's text is owed to the next one: longer than retries wait (LangGraph's ``RetryPolicy`` at
#: most ``max_interval=128`` s by default, ``ModelRetryMiddleware`` 60 s). A later attempt is judged on its own.
OWED_RETENTION_S = 600.0

#: Texts owed at most at once by attempts that failed (an ``Exception``: each as long as what went out): the oldest are
#: pushed out first, and leave a mark.
OWED_KEPT = 256

#: Texts owed at most at once by attempts cut off without an error of their own (cancelled, closed): a pool of their
#: own, whose oldest are pushed out with no mark (`OwedTexts`).
OWED_CUT_KEPT = 256

#: Marks of texts pushed out before their time, at most (each a hash, ~100 bytes with its entry: ~26 MB in all). Past
#: it every call owed nothing is refused until the oldest mark expires: so many failed streams in ten minutes is a
#: hostile provider more than an outage (16,384 let a large outage refuse every agent call for minutes).
OWED_MARKS = 262_144


class OwedTexts:
    """The text failed attempts passed on, by the call that continues it (`OwedCall.key`), each for ``retention_s``
    and ``kept`` at most. One pushed out before its time by others (an outage fails every stream in flight) leaves a
    mark: the call's next attempt is refused, not judged fresh (before, it was: rt65m F3). Past ``marks`` marks, until
    the mark pushed out would have gone, every call that is owed no text is refused: nothing owed is ever forgotten
    silently.

    An attempt cut off without an error of its own (``cut``: a cancellation, a stream its consumer closed) owes its
    text in a pool of its own, ``cut_kept`` at most, whose oldest are pushed out with no mark. Most are a user's "stop"
    or a client that hung up, never asked again: in the marked pool, 256 of them pushed out an honest retry's text
    (refused), and 262,400 in ten minutes (437 a second, one client) refused every call of the process (rt66k F3).
    A cut-off attempt's retry (an app's timeout that asks again) pushed out by other cut-off ones is judged fresh:
    accepted, as a stream cannot tell a timeout from a user's stop. Once an attempt of a call failed, its text stays
    in the marked pool.

    Two attempts of one key that owe different texts, neither continuing the other's (siblings LangGraph runs with one
    key: `step_of`; the calls of a batch with the same messages), leave a conflict: the next attempt is refused, as it
    cannot be judged as what its consumer holds (before, the later text replaced the other: a sibling's retry was
    judged after the other's text, rt66k F2). Where either failed, the conflict is a mark; between cut-off attempts it
    is held in their pool."""

    def __init__(
        self,
        kept: int = OWED_KEPT,
        marks: int = OWED_MARKS,
        retention_s: float = OWED_RETENTION_S,
        clock: Callable[[], float] = time.monotonic,
        cut_kept: int = OWED_CUT_KEPT,
    ) -> None:
        self.kept, self.marks, self.retention_s, self._clock = kept, marks, retention_s, clock
        self.cut_kept = cut_kept
        self._texts: OrderedDict[Hashable, tuple[float, str]] = OrderedDict()  # key: (until, text), oldest first
        # Cut-off attempts' texts: (until, text), or ``None`` for a conflict (refused), oldest first.
        self._cut: OrderedDict[Hashable, tuple[float, str | None]] = OrderedDict()
        # A mark is the key's hash, to be small: two keys with one hash refuse a call too many, never one too few.
        self._marks: OrderedDict[int, float] = OrderedDict()  # hash: until
        self._all_until = -math.inf
        self._lock = threading.Lock()

    def owed(self, key: Hashable) -> str | None:
        """The text owed to ``key``'s attempt (``""``: none), or ``None`` where some was owed and is forgotten."""
        with self._lock:
            now = self._clock()
            entry = self._texts.get(key) or self._cut.get(key)
            if entry is not None and now < entry[0]:
                return entry[1]
            until = self._marks.get(hash(key))
            forgotten = (until is not None and now < until) or now < self._all_until
            return None if forgotten else ""

    def owe(self, key: Hashable, text: str, continued: str = "", *, cut: bool = False) -> None:
        """An attempt of ``key`` that continued ``continued`` ended with ``text`` with the consumer (``cut``: cut off,
        not failed): its next attempt continues it."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            until = now + self.retention_s
            failed = key in self._texts or not cut  # once failed, marked whatever ends the later attempts
            entry = self._texts.pop(key, None) or self._cut.pop(key, None)
            if entry is not None and entry[1] not in (continued, text):
                text_or_conflict: str | None = None  # another attempt's text, not this one's beginning
            else:
                text_or_conflict = text
            if failed and text_or_conflict is None:
                self._mark(key, until)
            elif failed:
                self._texts[key] = (until, text)
                self._marks.pop(hash(key), None)
                while len(self._texts) > self.kept:
                    pushed, (pushed_until, _) = self._texts.popitem(last=False)
                    self._mark(pushed, pushed_until)
            else:
                self._cut[key] = (until, text_or_conflict)
                self._marks.pop(hash(key), None)
                while len(self._cut) > self.cut_kept:
                    self._cut.popitem(last=False)  # no mark: its retry is judged fresh (documented)

    def paid(self, key: Hashable, prefix: str) -> None:
        """An attempt of ``key`` that continued ``prefix`` answered to its end: nothing is owed. Not when another
        attempt failed meanwhile (the calls of a batch in one step share their key): its text is still owed."""
        with self._lock:
            for texts in (self._texts, self._cut):
                entry = texts.get(key)
                if entry is not None and entry[1] == prefix:
                    del texts[key]

    def _mark(self, key: Hashable, until: float) -> None:
        self._marks[hash(key)] = until
        self._marks.move_to_end(hash(key))
        while len(self._marks) > self.marks:
            self._all_until = max(self._all_until, self._marks.popitem(last=False)[1])

    def _expire(self, now: float) -> None:
        # Oldest first, every one kept as long: the first still owed ends each sweep.
        for texts in (self._texts, self._cut):
            while texts and next(iter(texts.values()))[0] <= now:
                texts.popitem(last=False)
        while self._marks and next(iter(self._marks.values())) <= now:
            self._marks.popitem(last=False)


#: What the failed attempts of every step passed on.
_OWED = OwedTexts()


@dataclass(frozen=True)
class OwedCall:
    """A model call as its attempts share what failed ones passed on: ``conversation``, a digest of its messages
    (`conversation_digest`); ``step``, the LangGraph task or the run its attempts are children of (``None``: neither,
    the call's ledger alone)."""

    conversation: str
    step: tuple[str, ...] | None

    @property
    def key(self) -> tuple[str, ...]:
        return (*(self.step or ()), self.conversation)


def conversation_digest(messages: Sequence[BaseMessage]) -> str:
    """A digest of what ``messages`` say (each one's role, name, text, tool calls by name and arguments, tool call id;
    not its id, which a node may make anew each time it runs): the same for the conversation a retry or a fallback
    sends again. Not the system prompt, nor how a text is marked up: a fallback strips Anthropic's ``cache_control``
    marks, and a prompt may differ by attempt (a clock, a prompt per model); with them the retry was judged fresh
    (rt65o F1). A call of the step that sends the same messages under another system prompt (a title for the same
    history) is taken for an attempt of it (documented)."""
    return _digest_of(
        [
            message.type,
            message.name,
            message.text,
            getattr(message, "tool_call_id", None),
            [(c.get("name"), c.get("args")) for c in getattr(message, "tool_calls", None) or ()],
        ]
        for message in messages
        if message.type != "system"
    )


def context_digest(context: Sequence[Mapping[str, str]]) -> str:
    """A digest of the conversation a guard step's runnable answers (`GuardRunnable`: the guard's turns of its screened
    input, each one's role and text), the system prompt aside as in `conversation_digest`."""
    return _digest_of([turn.get("role"), turn.get("content")] for turn in context if turn.get("role") != "system")


def _digest_of(lines: Iterable[list[Any]]) -> str:
    """A 16-byte digest of ``lines`` (what each message said), each as JSON on a line of its own."""
    digest = hashlib.blake2b(digest_size=16)
    for said in lines:
        digest.update(json.dumps(said, default=repr, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def _step(run_manager: Any) -> tuple[str, ...] | None:
    """The step a model call is an attempt of: its LangGraph task (node run), from the caller's config (`_node_run`);
    outside one, the run the caller's context makes it a child of (a ``RunnableRetry``'s, a ``RunnableWithFallbacks``':
    the same for each attempt; LangChain hands ``_stream`` no run manager, so its run's parent, where it does, comes
    next)."""
    callbacks = (var_child_runnable_config.get() or {}).get("callbacks")
    return step_of(
        out_of_sight.config_without_callbacks(),
        getattr(callbacks, "parent_run_id", None) or getattr(run_manager, "parent_run_id", None),
    )


def step_of(config: Mapping[str, Any], parent: Any) -> tuple[str, ...] | None:
    """The step of a call with ``config`` (its ``configurable`` and ``metadata``) whose run is a child of ``parent``
    (a run id, or ``None``): its LangGraph node run (`_node_run`) and the place of its task among its siblings
    (`_task_place`), else that run."""
    configurable = config.get("configurable") or {}
    task = configurable.get(_TASK_ID)
    if isinstance(task, str):
        run = _node_run(str(configurable.get("checkpoint_ns") or ""), task)
        return ("task", *run, _task_place(config.get("metadata") or {}))
    return ("run", str(parent)) if parent is not None else None


def _node_run(namespace: str, task: str) -> tuple[str, str]:
    """What stays the same across a retry at any level of a task in LangGraph's ``checkpoint_ns`` ``namespace``
    (``"agent:<task id>|model:<task id>"``): the outermost node run (its name and task id, the same for each attempt of
    it) and the names of the nodes inside it. A retry of an outer node (a subgraph, an agent run as a node or called
    in one, under the parent's ``RetryPolicy``) runs the inner ones as new tasks, in a namespace with a new task id in
    each inner part and a count of the subgraphs the task ran (``"sub:<id>|1|chat:<new id>"``): keyed by the innermost
    task, its model call was judged fresh (rt66d F1). Calls of other nodes inside it differ by name, and calls of the
    node with other messages by their digest (`OwedCall.conversation`)."""
    parts = [part for part in namespace.split(_NS_SEP) if part and not part.isdigit()]
    if not parts:
        return task, ""
    return parts[0], _NS_SEP.join(part.split(_NS_END)[0] for part in parts[1:])


def _task_place(metadata: Mapping[str, Any]) -> str:
    """Where the innermost task stands among its siblings: LangGraph's ``langgraph_path`` (``("__pregel_pull",
    node)``; a ``Send``'s ``("__pregel_push", index, ...)``; a functional API task's call, by its parent's path and its
    index there). Made of names and indexes, never ids: the same across a retry at any level, and another for each task
    of a ``Send`` fan-out, whose tasks `_node_run` alone tells apart only by the task id an outer retry renews (one key
    for both drafts of a best-of-2: a sibling's retry was judged after the other's text, rt66k F2). Siblings above the
    innermost level (a ``Send`` to a subgraph node, two agents one node runs) share a key: where both owe text, it is a
    conflict (`OwedTexts`), and their next attempt is refused."""
    path = metadata.get("langgraph_path")
    return repr(path) if isinstance(path, (tuple, list)) else ""


def owed_call(messages: Sequence[BaseMessage], run_manager: Any) -> OwedCall:
    return OwedCall(conversation_digest(messages), _step(run_manager))


async def aowed_call(messages: Sequence[BaseMessage], run_manager: Any) -> OwedCall:
    """Async twin of `owed_call`: a long history is read on a worker thread (`built_off_loop`)."""
    step = _step(run_manager)  # the caller's config: read here, in its context
    return OwedCall(await built_off_loop(lambda: conversation_digest(messages), messages), step)


def passed_before(guard: Guard, ledger: StreamLedger, call: OwedCall) -> str:
    """The text the consumer holds from the attempts of this call that failed before this one: the ledger's, else the
    step's (it outlives a ledger). Where it was forgotten (`OwedTexts`), the guard's stop, whatever ``on_error``:
    the attempt cannot be judged as what the consumer reads it as."""
    # A ledger is one model call: its attempts continue what failed ones passed on whatever messages they send.
    kept = ledger.passed.get(call.conversation) or next(reversed(ledger.passed.values()), None)
    if kept is not None or call.step is None:
        return kept or ""
    owed = _OWED.owed(call.key)
    if owed is None:
        why = "the text an earlier attempt passed on was pushed out by other failed calls: its continuation is unjudged"
        raise stop_of(guard.policy.decide_unjudged(Stage.STREAM, why))
    return owed


def record_passed(ledger: StreamLedger, call: OwedCall, passed: str, continued: str = "", *, cut: bool = False) -> None:
    """An attempt that continued ``continued`` failed (``cut``: was cut off) with ``passed`` (its prefix and what it
    passed on) with the consumer: the next continues it (`OwedTexts.owe`)."""
    if not passed:
        return  # nothing went out: nothing is owed
    ledger.passed[call.conversation] = passed
    if call.step is not None:
        _OWED.owe(call.key, passed, continued, cut=cut)


def forget_passed(ledger: StreamLedger, call: OwedCall, prefix: str) -> None:
    """An attempt that continued ``prefix`` answered to its end: a later call of the step answers on its own. Not when
    another attempt failed meanwhile (the calls of a batch in one step share their key): its text is still owed."""
    if ledger.passed.get(call.conversation) == prefix:
        ledger.passed.pop(call.conversation)
    if call.step is not None:
        _OWED.paid(call.key, prefix)


# -- a failed call's error, judged as its answer ------------------------------------------------------
# A provider can fail mid-answer with an error that quotes the answer (Ollama's "error parsing tool call: raw='...'"):
# the text the hold-back held, neither judged nor released, reached the app in the exception, and a retry middleware
# outside the guard wrote it into a message that streamed out whole (rt64b F1). The error is read as a failed tool's
# is (`error_texts`) and judged as the answer would have been. Only on a failure: an answer costs nothing more.
def _error_items(
    error: BaseException, context: Sequence[dict[str, str]], turns: int, budget: int
) -> tuple[list[Item], bool] | None:
    """The checks of a failed model call's ``error`` as the answer it may quote (all it carries, within ``budget``
    characters), and whether all of it was read; ``None`` where there is nothing to judge: the guard's own stop, a
    cancellation, LangGraph's control flow (`control_flow`), an error that says nothing."""
    if control_flow(error):
        return None
    left_out: list[str] = []
    text = "\n".join(error_texts(error, budget, left_out=left_out))
    if not text.strip() and not left_out:
        return None
    return output_items(AIMessage(content=text), context, turns, tool_calls=False, sources=False), not left_out


def error_stop(
    guard: Guard, error: BaseException, context: Sequence[dict[str, str]], turns: int
) -> QwenGuardError | None:
    """What a model call that failed with ``error`` raises instead of it: the guard's stop where what the error carries
    is blocked as the answer to ``context`` (a guard that cannot answer: as the policy's ``on_error`` says), else
    ``None`` (the error itself is raised, unchanged). To be raised ``from None`` where no exception is being handled,
    so that nothing of the error is chained to it."""
    read = _error_items(error, context, turns, guard.max_chars)
    if read is None:
        return None
    items, whole = read
    try:
        decisions = screen(guard, items) if whole else None
    except InputTooLarge:  # the error and its context past what one check reads
        decisions = None
    return error_stop_of(guard, decisions)


async def aerror_stop(
    guard: Guard, error: BaseException, context: Sequence[dict[str, str]], turns: int
) -> QwenGuardError | None:
    """Async twin of `error_stop`: the error is read on a worker thread (its causes, notes and attributes are not
    sized before they are read)."""
    read = await asyncio.to_thread(_error_items, error, context, turns, guard.max_chars)
    if read is None:
        return None
    items, whole = read
    try:
        decisions = await ascreen(guard, items) if whole else None
    except InputTooLarge:
        decisions = None
    return error_stop_of(guard, decisions)


#: What the event-loop warning tells a sync call inside async code to use (`speaking_as`); under `GuardMiddleware`
#: the middleware's words hold (the outermost entry point's).
_ASYNC_TWIN = (
    "the model's async methods: await model.ainvoke(...) / async for over model.astream(...) (not invoke / stream)"
)


def chat_model_in(runnable: Runnable[Any, Any]) -> BaseChatModel | None:
    """The chat model a runnable wraps (``model.bind(...)``, ``with_retry()``, ``with_config``: ``.bound``), or itself."""
    for _ in range(16):  # bindings nest a few deep; never loop on a cycle
        if isinstance(runnable, BaseChatModel):
            return runnable
        bound = getattr(runnable, "bound", None)
        if not isinstance(bound, Runnable):
            return None
        runnable = bound
    return None


class HeldBackChatModel(BaseChatModel):
    """``inner`` (the agent's model), streaming only judged chunks. Built by `GuardMiddleware`.

    ``inner`` is what ``create_agent`` was given: a chat model, or one wrapped in a runnable
    (``model.bind(temperature=0)``, ``model.with_retry()``, ``configurable_fields``); the wrapper calls
    it as the agent would have (``bind_tools``, ``stream``), so its bindings still reach the provider."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: Runnable[Any, BaseMessage]
    bound: Any = None  # ``inner`` with tools bound (`bind_tools`), else None
    guard: Guard
    stream_options: dict[str, Any] = Field(default_factory=dict)
    history_turns: int = DEFAULT_HISTORY_TURNS
    check_tool_calls: bool = True
    #: A structured output's schema tools (``ToolStrategy``): their calls are the answer (`_messages.AS_ANSWER`).
    answer_tools: frozenset[str] = frozenset()
    ledger: Any = None  # a StreamLedger shared by copies (``bind_tools`` returns a copy)
    #: The middleware's reader of the messages a model call is given: the `Item`s to judge (or None), and the
    #: messages to send once judged (``given_after(messages, items, decisions)``, raising when they stop the call).
    given_items: Any = None
    given_after: Any = None
    #: Told what a held stream judged at its end and let pass (``judged(items, decisions)``): the middleware's
    #: `AllowedChecks`, so that its tool-call checks are not judged again with the verdict cache off.
    judged: Any = None
    #: The middleware's checks of an answer that was not streamed (``answer_items(messages, answer)``: the `Item`s
    #: not judged yet) and what follows their verdicts (``answer_after(items, decisions)``, raising when they stop
    #: the call): judged before this wrapper's run ends, so that its end reports only an answer the guard let
    #: through (before, the middleware judged it after the run had ended: every handler on the run, a run collector
    #: and a usage counter heard the blocked answer whole: rt53a F2).
    answer_items: Any = None
    answer_after: Any = None
    model_name: str | None = None  # what create_agent reads to pick a structured-output strategy
    #: The config factories the wrapped model's bindings carried (``with_listeners``), taken off it (`fields_around`):
    #: applied to this wrapper's calls, so that their listeners see its run.
    own_listeners: list[Any] = Field(default_factory=list, exclude=True, repr=False)

    @classmethod
    def wrap(cls, model: Runnable[Any, Any], guard: Guard, ledger: StreamLedger, **options: Any) -> HeldBackChatModel:
        return cls(**cls.fields_around(model), guard=guard, ledger=ledger, **options)

    @staticmethod
    def fields_around(model: Runnable[Any, Any], callbacks: Any = None) -> dict[str, Any]:
        """The fields a wrapper of ``model`` takes from it: what ``create_agent`` reads of a model (its
        name and profile), no cache of its own (the real model's cache, if any, still applies), and the handlers
        the model carries itself (``ChatX(callbacks=[...])``, ``with_config(callbacks=...)``, ``with_listeners``:
        `_own_handlers`), moved to the wrapper (after ``callbacks``, the wrapper's own): the real model runs
        without them, and they hear only what the guard let through (before, every raw token: rt53a F1)."""
        name = getattr(model, "model_name", None) or getattr(model, "model", None)
        inner, own = detached(model)
        return {
            "inner": inner,
            "profile": getattr(model, "profile", None),
            "cache": False,
            "model_name": name if isinstance(name, str) else None,
            "callbacks": own.callbacks(callbacks),
            "own_listeners": own.factories,
        }

    #: What this wrapper's ``_llm_type`` starts with (the wrapped model's follows): what a callback sees.
    type_prefix: ClassVar[str] = HELD_LLM_TYPE_PREFIX

    @property
    def _llm_type(self) -> str:
        inner_type = getattr(self.inner, "_llm_type", None)  # a runnable around a model forwards it
        return f"{self.type_prefix}{inner_type if isinstance(inner_type, str) else type(self.inner).__name__}"

    # Provider-aware middleware reads a model's provider from ``_get_ls_params`` (``ProviderToolSearchMiddleware``; the
    # provider a ``SummarizationMiddleware`` matches reported token counts against), as tracers do: it read this
    # wrapper's class name, so one listed after the guard refused every model call, and a guarded summarizer's
    # reported-token trigger never fired (rt67d F2). A wrapper that holds no chat model keeps LangChain's own.
    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """The wrapped model's (its provider, model name and type, temperature...)."""
        model = chat_model_in(self.inner)
        if model is None:
            return super()._get_ls_params(stop=stop, **kwargs)
        return model._get_ls_params(stop=stop, **kwargs)

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any
    ) -> Runnable[Any, AIMessage]:
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.model_copy(update={"bound": self.inner.bind_tools(tools, **kwargs)})  # type: ignore[attr-defined]

    def _target(self) -> Runnable[Any, BaseMessage]:
        return self.bound if self.bound is not None else self.inner

    # -- the caller's config, for the model it wraps ----------------------------------------------
    # BaseChatModel hands ``_generate`` / ``_stream`` no config, and sets no ambient one: a model called directly
    # with ``config={"configurable": ...}`` (or ``with_config``) ran the inner model with its defaults (rt52d F2).
    # Each entry point runs with its config at hand (`out_of_sight.call_config`; a stream, step by step), read by
    # `_config`.
    # The wrapped model's listeners (``with_listeners``) are added to each call's config here (`with_own`).
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        config = with_own(self.own_listeners, config)
        with out_of_sight.call_config(config):
            return super().invoke(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        config = with_own(self.own_listeners, config)
        with out_of_sight.call_config(config):
            return await super().ainvoke(input, config, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        config = with_own(self.own_listeners, config)
        if config is None:  # the ambient config is the caller's (a step of a chain or graph, the agent's model call)
            return super().stream(input, config, **kwargs)
        context = out_of_sight.calling_with(config)
        return out_of_sight.run_in(context, lambda: super(HeldBackChatModel, self).stream(input, config, **kwargs))

    def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        config = with_own(self.own_listeners, config)
        if config is None:
            return super().astream(input, config, **kwargs)
        context = out_of_sight.calling_with(config)
        return out_of_sight.arun_in(context, lambda: super(HeldBackChatModel, self).astream(input, config, **kwargs))

    @staticmethod
    def _config(asynchronous: bool) -> RunnableConfig:
        """The real model runs with no callbacks of the caller: what it streams raw must not reach
        anyone (LangGraph's stream handlers, ``astream_events``, a tracer's token events). Its judged
        output is reported as this wrapper's run. The handlers attached to the model itself were moved to this
        wrapper (`fields_around`); tagged ``nostream`` as well, in case one is where they are not looked for. The
        model runs out of the caller's context as well (`_out_of_sight`): a bound model (``bind_tools``,
        ``with_structured_output``) would merge the caller's handlers back in."""
        manager = AsyncCallbackManager(handlers=[]) if asynchronous else CallbackManager(handlers=[])
        return out_of_sight.config_without_callbacks(callbacks=manager, tags=[TAG_NOSTREAM])

    def _held(self, messages: list[BaseMessage], prefix: str = "") -> HeldStream:
        """The held stream of an answer to ``messages`` that continues ``prefix`` (`passed_before`)."""
        # A JSON answer's parsed reading is judged too, its chunks held from a rewritten escape (`_json_reading`).
        return ReadingHeldStream(
            self.guard,
            guard_history(messages, self.history_turns),
            engine="monitor",
            monitor_options=self.stream_options,
            history_turns=self.history_turns,
            tool_calls=self.check_tool_calls,
            answers=self.answer_tools,
            judged=self.judged,
            prefix=prefix,
            calls_context=call_history(messages, self.history_turns, self.guard.max_chars),
        )

    def _given(self, messages: list[BaseMessage]) -> tuple[int, list[Item]]:
        """(where the messages the middleware judges start, its items for them: none without a middleware): the
        agent's own system prompt, which opens the messages, is left out."""
        if self.given_items is None:
            return 0, []
        start = 1 if messages and isinstance(messages[0], SystemMessage) else 0
        items: list[Item] = self.given_items(list(messages[start:]))
        return start, items

    def _given_messages(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        """The messages the model reads, as the middleware judged them (`GuardMiddleware._given`: notices in place
        of blocked ones, or it raises). It judged the state in ``before_model`` and the request in its model
        call: this catches what a middleware inside it added to the request (what it allowed is not judged
        again). In the ledger's watch: a retry inside the middleware gets the same stop."""
        start, items = self._given(messages)
        if not items:
            return messages
        with self._ledger().watching():
            return [*messages[:start], *self.given_after(messages[start:], items, screen(self.guard, items))]

    async def _agiven_messages(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        """Async twin of `_given_messages`. The messages are read (into checks, and notices) on a worker thread once
        they are large (`built_off_loop`): on the loop, a long or block-heavy history held it (rt55b F1)."""
        if self.given_items is None:
            return messages  # no middleware: nothing to read (`_given`)
        start, items = await built_off_loop(lambda: self._given(messages), messages)
        if not items:
            return messages
        with self._ledger().watching():
            decisions = await ascreen(self.guard, items)
            given = await built_off_loop(lambda: self.given_after(messages[start:], items, decisions), messages)
            return [*messages[:start], *given]

    def _start_input(self, messages: list[BaseMessage]) -> PendingCheck | None:
        """Before the model runs: screen its input (raises when blocked), or start that check beside the
        model and return it (nothing goes out before its verdict). Here: nothing (the middleware screens
        the input: `_given_messages`)."""
        return None

    async def _astart_input(self, messages: list[BaseMessage]) -> PendingCheck | None:
        """Async twin of `_start_input`."""
        return None

    def _judge_answer(self, messages: list[BaseMessage], answer: BaseMessage) -> None:
        """An answer that was not streamed, whole: the middleware's checks (`answer_items`), before the run ends."""
        if self.answer_items is None:
            return
        start = 1 if messages and isinstance(messages[0], SystemMessage) else 0  # the agent's own prompt: left out
        items: list[Item] = self.answer_items(list(messages[start:]), answer)
        with self._watching_whole(answer):
            self.answer_after(items, screen(self.guard, items) if items else [])

    async def _ajudge_answer(self, messages: list[BaseMessage], answer: BaseMessage) -> None:
        """Async twin of `_judge_answer`: what it reads (the checks, the answer's fingerprint) is read on a worker
        thread once large (`built_off_loop`)."""
        if self.answer_items is None:
            return
        start = 1 if messages and isinstance(messages[0], SystemMessage) else 0
        budget = self.guard.max_chars
        items, judged = await built_off_loop(
            lambda: (self.answer_items(list(messages[start:]), answer), judged_content(answer, budget)),
            (messages, answer),
        )
        with self._watching_whole(answer, judged):
            self.answer_after(items, await ascreen(self.guard, items) if items else [])

    @contextmanager
    def _watching_whole(self, answer: BaseMessage, judged: str | None = None) -> Iterator[None]:
        """The ledger's watch over a whole answer's checks: a stop is the call's outcome (kept with the answer it
        was for); an answer let through counts as judged (the middleware does not judge its text again), by its
        fingerprint (`judged_content`: ``judged`` when read already)."""
        ledger = self._ledger()
        try:
            with ledger.watching():
                yield
        except (GuardViolation, GuardUnavailable):
            ledger.stopped_answer = answer
            raise
        ledger.record(answer, self.guard.max_chars, judged)

    def _failed(self, messages: list[BaseMessage], error: Exception) -> NoReturn:
        """The model call failed with ``error``: raise the guard's stop where what it carries is blocked as the answer
        (`error_stop`), in the ledger's watch (a retry inside the middleware gets that stop again); else ``error``,
        unchanged. Called where no exception is being handled: the stop has nothing of the error chained to it."""
        stop = error_stop(self.guard, error, guard_history(messages, self.history_turns), self.history_turns)
        if stop is None:
            raise error
        with self._ledger().watching():
            raise stop from None

    async def _afailed(self, messages: list[BaseMessage], error: Exception) -> NoReturn:
        """Async twin of `_failed`."""
        context = await built_off_loop(lambda: guard_history(messages, self.history_turns), messages)
        stop = await aerror_stop(self.guard, error, context, self.history_turns)
        if stop is None:
            raise error
        with self._ledger().watching():
            raise stop from None

    def _ledger(self) -> StreamLedger:
        return self.ledger if self.ledger is not None else StreamLedger()

    def _judged(self, held: HeldStream) -> None:
        if self.ledger is not None and isinstance(held.whole, BaseMessage):
            self.ledger.record(held.whole, self.guard.max_chars)

    # -- not streamed: the answer passes through here (the middleware's after_model judges it) -----
    @speaking_as(_ASYNC_TWIN)
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._ledger().again()
        messages = self._given_messages(messages)
        pending = self._start_input(messages)
        target = self._target()
        config = self._config(False)
        try:
            message = answer_beside(
                lambda: out_of_sight.call(lambda: target.invoke(messages, config, stop=stop, **kwargs)), pending
            )
        except Exception as error:  # noqa: BLE001 - judged below, out of this block: nothing chained to the stop
            failed: Exception | None = error
        else:
            failed = None
        if failed is not None:
            self._failed(messages, failed)
        with _counted_if_stopped(run_manager, lambda: message):
            self._judge_answer(messages, message)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._ledger().again()
        messages = await self._agiven_messages(messages)
        pending = await self._astart_input(messages)
        target, config = self._target(), self._config(True)
        call = out_of_sight.acall(lambda: target.ainvoke(messages, config, stop=stop, **kwargs))
        try:
            message = await aanswer_beside(call, pending)
        except Exception as error:  # noqa: BLE001 - judged below (see `_generate`)
            failed: Exception | None = error
        else:
            failed = None
        if failed is not None:
            await self._afailed(messages, failed)
        with _counted_if_stopped(run_manager, lambda: message):
            await self._ajudge_answer(messages, message)
        return ChatResult(generations=[ChatGeneration(message=message)])

    # -- streamed: only what the guard released --------------------------------------------------
    @speaking_as(_ASYNC_TWIN)
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        ledger, call = self._ledger(), owed_call(messages, run_manager)
        ledger.again()
        with ledger.watching():
            prefix = passed_before(self.guard, ledger, call)
        messages = self._given_messages(messages)
        pending = self._start_input(messages)
        held = self._held(messages, prefix)
        with ledger.watching(), _counted_if_stopped(run_manager, lambda: held.whole), passing(ledger, call, held):
            target, config = self._target(), self._config(False)
            upstream = out_of_sight.stream(lambda: target.stream(messages, config, stop=stop, **kwargs))
            if pending is not None:
                upstream = until_blocked(upstream, pending)
            released = held.run(upstream)
            failed: Exception | None = None
            try:
                for chunk in released if pending is None else after_verdict(released, pending):
                    yield ChatGenerationChunk(message=_as_chunk(chunk))
            except Exception as error:  # noqa: BLE001 - judged below (see `_generate`)
                failed = error
            if failed is not None:
                self._failed(messages, failed)
        self._judged(held)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        ledger, call = self._ledger(), await aowed_call(messages, run_manager)
        ledger.again()
        with ledger.watching():
            prefix = passed_before(self.guard, ledger, call)
        messages = await self._agiven_messages(messages)
        pending = await self._astart_input(messages)
        held = await built_off_loop(lambda: self._held(messages, prefix), messages)  # the context: read from the end
        with ledger.watching(), _counted_if_stopped(run_manager, lambda: held.whole), passing(ledger, call, held):
            target, config = self._target(), self._config(True)
            upstream = out_of_sight.astream(lambda: target.astream(messages, config, stop=stop, **kwargs))
            if pending is not None:
                upstream = auntil_blocked(upstream, pending)
            released = held.arun(upstream)
            failed: Exception | None = None
            try:
                async for chunk in released if pending is None else aafter_verdict(released, pending):
                    yield ChatGenerationChunk(message=_as_chunk(chunk))
            except Exception as error:  # noqa: BLE001 - judged below (see `_generate`)
                failed = error
            if failed is not None:
                await self._afailed(messages, failed)
        await built_off_loop(lambda: self._judged(held), held.whole)  # added up by its end checks: a fingerprint


@contextmanager
def passing(ledger: StreamLedger, call: OwedCall, held: HeldStream) -> Iterator[None]:
    """Around a held stream: when it ends before its answer did (the model's error, a guard that cannot answer, a
    cancellation, a consumer that stopped reading), what it passed on after its prefix is what the step's next attempt
    continues (`record_passed`); when it ends, nothing is. A timeout cancels an attempt (``asyncio.wait_for``, a
    timeout middleware, a ``RetryPolicy(retry_on=TimeoutError)``) and a sync consumer that gives up on a stream closes
    it (``GeneratorExit``), and either is asked again as a failure is (before, only an ``Exception`` was recorded:
    their retry was judged fresh, rt66d F2). A user's "stop generating" or a client that hangs up ends an attempt the
    same way: such cut-off attempts owe their text in a pool of their own, pushed out with no mark (`OwedTexts`), so
    that hang-ups never refuse an honest retry nor, past the marks, every call (rt66k F3)."""
    try:
        yield
    except GuardViolation:
        # The guard's stop is the call's outcome, never asked again (`StreamLedger.stopped`): nothing is owed, and
        # blocked answers took the step store's slots for nothing (rt65o F2: 256 of them refused an honest retry).
        raise
    except Exception:
        record_passed(ledger, call, held.prefix + held.passed_text, held.prefix)
        raise
    except BaseException:  # CancelledError, GeneratorExit: cut off, not failed
        record_passed(ledger, call, held.prefix + held.passed_text, held.prefix, cut=True)
        raise
    forget_passed(ledger, call, held.prefix)


@contextmanager
def _counted_if_stopped(run_manager: Any, answer: Any) -> Iterator[None]:
    """When the guard stops the call, the tokens the model spent on ``answer()`` (its ``usage_metadata``, where the
    model reported it: a whole answer; a stream only where its usage came before the stop) are told to the usage
    counters among this wrapper's run's handlers (`UsageMetadataCallbackHandler`: ``get_usage_metadata_callback()``,
    or one in ``callbacks``), in an ``on_llm_end`` of an empty message: no text. The real model runs out of their
    sight and the wrapper's run ends in the stop, so a blocked call was counted by none (rt53e F9). No other handler
    hears it: the run still ends in the stop."""
    try:
        yield
    except (GuardViolation, GuardUnavailable):
        _count_spent(run_manager, answer())
        raise


def _count_spent(run_manager: Any, answer: Any) -> None:
    usage = getattr(answer, "usage_metadata", None)
    if run_manager is None or not usage or not isinstance(answer, AIMessage):
        return
    name = answer.response_metadata.get("model_name")
    spent = AIMessage(content="", usage_metadata=usage, response_metadata={"model_name": name} if name else {})
    result = LLMResult(generations=[[ChatGeneration(message=spent)]])
    counters: list[UsageMetadataCallbackHandler] = []
    for handler in run_manager.handlers:
        if isinstance(handler, UsageMetadataCallbackHandler) and not any(handler is c for c in counters):
            counters.append(handler)
    for counter in counters:
        counter.on_llm_end(result, run_id=run_manager.run_id, parent_run_id=run_manager.parent_run_id)


def _as_chunk(message: Any) -> Any:
    """A whole answer the model streamed as one message (a model that does not stream, ``disable_streaming=True``, or
    a configured one that turned streaming off: its ``stream`` yields its ``invoke``) as the chunk a chat model's
    stream reports; before, the wrapper's stream failed on it."""
    if isinstance(message, AIMessage) and not isinstance(message, AIMessageChunk):
        return AIMessageChunk(**message.model_dump(exclude={"type"}))
    return message
