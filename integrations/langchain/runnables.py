"""LCEL pieces: `GuardRunnable`, `guard_input()`, `guard_output()`.

    chain = guard_input(guard) | prompt | model | guard_output(guard)
    chain = GuardRunnable(guard=guard, runnable=prompt | model)      # input and output, with context

- `guard_input` passes its input through unchanged after screening it (strings, user messages and
  system messages but one that opens a message list as prompts, tool messages as untrusted content;
  for dict inputs every value, or only ``input_keys``, as the template after it reads it: text, every
  message of a list there, its system ones too (a chain's variables are the caller's, the template comes
  after), documents as retrieved content, and anything else but numbers as it prints, ``str(value)``).
- `guard_output` is a streaming transform with hold-back (``_holding.py``): a chunk is passed on only
  once the guard has judged its text (the core StreamMonitor, pipelined with generation), and a
  violation *raises* (`GuardViolation`) — raising, not returning, is what makes LangChain stop the
  upstream model (an early return lets it keep generating). ``invoke`` judges the whole answer in one
  check. Tool-call chunks are held until the calls are judged, when the answer is complete. A model that fails
  mid-stream: its error is judged as the answer (it can quote the text held back: `_held_model.error_stop`);
  blocked, `GuardViolation` is raised in its place with nothing of the error chained; allowed, the error itself.
  (With ``invoke`` the error never reaches the step: `GuardRunnable(runnable=model)` judges it there too.)
  Placed where no model's answer reaches it, it raises `TypeError` before the model is asked: on a prompt template's
  output, or as its chain's first step (or after guard_input steps only), where it gets the chain's input and the
  model after it would answer unjudged; a model's message handed to such a chain is judged (`_refuse_misplaced`).
- `GuardRunnable(runnable=...)` does both around ``runnable`` and judges the answer in the context of
  the screened request. With ``parallel_input=True`` (or a `Guard` built with ``parallel_input=True``)
  the runnable starts while the input is checked: its answer is judged meanwhile but nothing goes out
  before the input's verdict, and a blocked input stops the runnable (``stream``: at its next chunk;
  ``invoke``: at its next step inside, `_input_beside.stopping`; async: at once, the call or read in flight
  is cancelled) and raises `GuardViolation` for the prompt. No tool inside it starts before the verdict.
- ``with_retry`` / ``with_fallbacks`` keep the guard's stop (`_keep_stops.py`).

Every path exists sync and async: ``invoke``/``ainvoke``, ``stream``/``astream``, ``batch``/``abatch``,
``transform``/``atransform``.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import re
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NoReturn, cast

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from pydantic import ConfigDict, field_validator, model_validator
from qwenguard.core import Guard, Stage
from qwenguard.core.formats.conversations import prompt_conversation, untrusted_conversation
from qwenguard.core.guard import speaking_as
from qwenguard.core.streaming.parallel import PendingCheck

from .._common import Bounded
from ._held_model import (
    OwedCall,
    StreamLedger,
    aerror_stop,
    context_digest,
    error_stop,
    passed_before,
    passing,
    step_of,
)
from ._holding import HeldStream, monitor_options
from ._input_beside import (
    aafter_verdict,
    aanswer_beside,
    after_verdict,
    answer_beside,
    astart_input,
    auntil_blocked,
    start_input,
    stopping,
    until_blocked,
)
from ._json_reading import ReadingHeldStream, reading_items
from ._keep_stops import KeepsStops
from ._messages import DEFAULT_HISTORY_TURNS, Item, input_items, output_items, prompt_items, user_run_text
from ._options import by_keyword, known_fields, refuse_unknown
from ._screening import ascreen, built_off_loop, raise_first, require_guard, screen
from ._streaming import DEFAULT_WINDOW_CHARS, Engine
from .documents import document_text

__all__ = ["GuardRunnable", "guard_input", "guard_output"]


#: A dict input's values that print as digits or a keyword: nothing a model could read as a request.
_PLAIN = (bool, int, float, type(None))


#: Other pieces' options GuardRunnable has not (pydantic ignored them: rt55c F3), with what to write instead.
_HINTS: dict[str, str] = {
    "on_violation": "GuardRunnable raises GuardViolation on a block; GuardedRetriever drops retrieved documents",
    "on_block": "LlamaIndex's option; GuardRunnable raises GuardViolation on a block",
    "screen_tools": (
        "LlamaIndex GuardedLLM's option; no such screen on LangChain: a model's tool calls are judged with its answer "
        "(check_output), not the tools' descriptions"
    ),
    "exit_behavior": "GuardMiddleware's option: GuardRunnable raises GuardViolation",
}


#: The keys of a message dict LangChain reads (``convert_to_messages``); any other is printed by a template only.
_MESSAGE_KEYS = frozenset({"role", "content", "type"})


def _strings(value: Any) -> list[str]:
    """Every string ``value`` holds (nested dicts, lists and tuples, each read once; other values as they print), in
    order."""
    out: list[str] = []
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (dict, list, tuple)):
            if id(item) in seen:  # a structure that holds itself
                continue
            seen.add(id(item))
            stack.extend(reversed([*map(str, item), *item.values()] if isinstance(item, dict) else list(item)))
        elif not isinstance(item, _PLAIN):
            out.append(str(item))
    return out


def _documents(value: Any) -> Sequence[Document] | None:
    """``value`` as documents (one, or a non-empty list of them), else None."""
    if isinstance(value, Document):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Document) for v in value):
        return value
    return None


def _user_texts(value: Any) -> list[str | None]:
    """What a dict input's ``value`` puts in the user message a prompt template builds around it: its user text, in
    order; ``None`` where it ends a run of user turns (an assistant or tool turn); nothing for documents (judged on
    their own, as retrieved content), numbers, and a system message (hoisted out of the turns by providers)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, _PLAIN) or _documents(value) is not None:
        return []
    messages: Sequence[BaseMessage] | None = None
    if isinstance(value, PromptValue):
        messages = value.to_messages()
    elif isinstance(value, BaseMessage):
        messages = [value]
    elif isinstance(value, (list, tuple)):
        try:
            messages = convert_to_messages(value)
        except (NotImplementedError, ValueError, TypeError, KeyError):
            messages = None
    if messages is None:
        return [str(value)]  # as the template prints it
    # The run a provider sends as one user message (`user_run_text`): across a system turn (hoisted out) and an
    # assistant turn it drops (rt63f F4: an empty `AIMessage("")` ended the join, ChatAnthropic sends the two as one),
    # taking in tool results; a `ChatMessage(role="user")` or its chunk is a user's turn (stop 62's leftover).
    return [user_run_text(m) for m in messages]


def _joined_variables(value: dict[str, Any], keys: Sequence[str]) -> list[Item]:
    """The user text of two or more variables, joined as a template that places them side by side reads it: each
    value is judged alone (`GuardRunnable._value_items`), and a request split across variables ("Tell me how to
    {verb} {rest}" with "mix" | "ammonium nitrate with fuel oil", or a history ending in a user turn before
    "{question}") was never judged whole (rt62f F1). The step cannot see the template after it: the values are joined
    in the input's order with a space, the common ``"{a} {b}"``; a guard placed after the template
    (``prompt | guard_input(guard) | model``) judges the rendered messages exactly. Linear in the input's text."""
    items: list[Item] = []
    run: list[str] = []
    named: list[str] = []

    def end() -> None:
        if len(set(named)) >= 2 and sum(1 for t in run if t.strip()) >= 2:
            label = "chain input " + " + ".join(repr(k) for k in dict.fromkeys(named)) + ", joined"
            items.append(Item(Stage.PROMPT, prompt_conversation(" ".join(t for t in run if t.strip())), label=label))
        run.clear()
        named.clear()

    for key in keys:
        for text in _user_texts(value[key]):
            if text is None:
                end()
            else:
                run.append(text)
                named.append(key)
    end()
    return items


def _is_graph(runnable: Any) -> bool:
    """Is ``runnable`` a LangGraph graph (a compiled `StateGraph`, a `create_agent` agent, an ``@entrypoint``)? Told by
    its classes' names, so that langgraph need not be installed."""
    return any(c.__name__ == "Pregel" and c.__module__.startswith("langgraph") for c in type(runnable).__mro__)


def _keeps_state(graph: Any) -> bool:
    """Does a LangGraph ``graph`` hand back its state (a dict of channels: an agent's messages), or keep its answer in
    a checkpointer, as its run ends? Not an ``@entrypoint`` without one that returns its text (rt63f F5)."""
    checkpointer = getattr(graph, "checkpointer", None)
    return not isinstance(getattr(graph, "output_channels", None), str) or checkpointer not in (None, False)


def _parts(runnable: Any) -> Iterator[Any]:
    """The runnables ``runnable`` runs inside it: a binding's (``with_config``, ``with_retry``), the fallbacks', a
    sequence's and a parallel's steps, a branch's; not a graph's nodes."""
    from langchain_core.runnables import RunnableBranch, RunnableParallel, RunnableSequence
    from langchain_core.runnables.base import RunnableBindingBase
    from langchain_core.runnables.fallbacks import RunnableWithFallbacks
    from langchain_core.runnables.passthrough import RunnableAssign

    if isinstance(runnable, RunnableBindingBase):  # with_retry's RunnableRetry and RunnableEach too
        yield runnable.bound
    elif isinstance(runnable, RunnableWithFallbacks):
        yield runnable.runnable
        yield from runnable.fallbacks
    elif isinstance(runnable, RunnableSequence):
        yield from runnable.steps
    elif isinstance(runnable, RunnableParallel):
        yield from runnable.steps__.values()
    elif isinstance(runnable, RunnableAssign):
        yield runnable.mapper
    elif isinstance(runnable, RunnableBranch):
        yield from (branch for _, branch in runnable.branches)
        yield runnable.default
    elif isinstance(runnable, GuardRunnable) and runnable.runnable is not None:
        yield runnable.runnable


def _unguardable(runnable: Any) -> str | None:
    """What, inside ``runnable``, an output check after it cannot guard (``"graph"``, ``"history"``), else ``None``:
    it acts or stores its answer before the check's verdict. Looked for through the wrappers an app puts around it
    (``with_retry``, ``with_config``, fallbacks, a sequence: rt63f F3 found each hiding one); a runnable of the app's
    own that calls one in its body is not seen."""
    from langchain_core.runnables.history import RunnableWithMessageHistory

    stack, seen = [runnable], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, RunnableWithMessageHistory):
            return "history"
        if _is_graph(item):
            if _keeps_state(item):
                return "graph"
            continue
        stack.extend(_parts(item))
    return None


# -- what a guard step wraps, by what it is rather than which object it is (`GuardRunnable._step_identity`) ----------
#: A GuardRunnable's fields that are not its settings: its guard, and what it wraps (`runnable_identity`).
_NOT_SETTINGS = frozenset({"guard", "runnable"})

#: A memory address in a repr (``<function f at 0x7f...>``, a client object's): another for each object built.
_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")

#: The identity of each wrapped runnable read so far, by its id while it lives (a weak reference drops its entry).
_IDENTITIES: dict[int, str] = {}


def runnable_identity(runnable: Any) -> str:
    """A digest of what ``runnable`` is: its repr, memory addresses left out, so that a runnable built again the same
    way (a chain made for each call, a model with its clients) has the same. Read once per object, when first seen:
    the repr of one whose fields change as it answers (a counter, a list of the calls it saw) would differ by attempt.
    A runnable built anew for each call whose repr has changed since (a chain around such a model) is another."""
    known = _IDENTITIES.get(id(runnable))
    if known is not None:
        return known
    try:
        text = _ADDRESS.sub("", repr(runnable))
    except Exception:  # noqa: BLE001 - a repr that fails: its class alone
        text = f"{type(runnable).__module__}.{type(runnable).__qualname__}"
    identity = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    try:
        weakref.finalize(runnable, _IDENTITIES.pop, id(runnable), None)
    except TypeError:  # not weakly referable: read again on each call
        return identity
    _IDENTITIES[id(runnable)] = identity
    return identity


async def arunnable_identity(runnable: Any) -> str:
    """Async twin of `runnable_identity`: a runnable not read yet is read on a worker thread (its repr may be long)."""
    known = _IDENTITIES.get(id(runnable))
    return known if known is not None else await asyncio.to_thread(runnable_identity, runnable)


def _combine(chunks: Sequence[Any]) -> Any:
    """The full value of a streamed input (what ``invoke`` would have received)."""
    final = chunks[0]
    for chunk in chunks[1:]:
        try:
            final = final + chunk
        except TypeError:
            final = chunk
    return final


# -- where guard_output stands in its chain ---------------------------------------------------------------------------
# Placed before the model (``guard_output(guard) | model``, ``guard_input(guard) | guard_output(guard) | model``) it
# judged the user's question as an answer, let it through, and the model's answer went out unjudged (rt67g F1). What
# it receives there is the chain's own input: LangChain tags the first step of a RunnableSequence run ``seq:step:1``
# (on that step's run only: a step's children never inherit it), and a guard_input step passes its input on
# unchanged, so a guard_output after only guard_input steps receives it too. Whether a model ran before it cannot be
# told soundly (a function, a parser or a RunnableLambda can produce the answer, and LangChain reports no model run
# when the chain has no callbacks), so only these two positions, and a prompt, are refused.

#: The tag LangChain gives each step of a RunnableSequence run, with the step's number from 1.
_SEQUENCE_STEP = re.compile(r"seq:step:(\d+)")

#: Sequence runs (by run id) whose steps so far were all guard_input, with how many: the steps that passed the chain's
#: input on unchanged. Bounded: a sequence with no guard_output after them never reads its entry.
_PASSED_ON: Bounded[Any, int] = Bounded(4096)

_MISPLACED = (
    "guard_output judges a model's answer, and here it runs {where}: what it got ({got}) is {what}, and the model "
    "after it would answer unjudged. Put it right after the model: prompt | model | guard_output(guard) (with "
    "guard_input(guard) | prompt | model | guard_output(guard) to screen the input too). An answer the application "
    "got elsewhere is judged by guard_output(guard).invoke(answer), or in a chain when it is the model's message."
)


def _sequence_step(run_manager: Any) -> int | None:
    """The number of the RunnableSequence step this run is (1 for the first), or None when it is no sequence's step."""
    for tag in getattr(run_manager, "tags", None) or ():
        found = _SEQUENCE_STEP.fullmatch(tag) if isinstance(tag, str) else None
        if found:
            return int(found.group(1))
    return None


def _note_passed_on(run_manager: Any) -> None:
    """A guard_input step ran (its output is its input): noted while every step before it in its sequence was one."""
    step, sequence = _sequence_step(run_manager), getattr(run_manager, "parent_run_id", None)
    if step is not None and sequence is not None and (step == 1 or _PASSED_ON.get(sequence) == step - 1):
        _PASSED_ON[sequence] = step


def _takes_chain_input(run_manager: Any) -> bool:
    """Does this step receive its sequence's own input (it is the first step, or only guard_input steps came before)?"""
    step, sequence = _sequence_step(run_manager), getattr(run_manager, "parent_run_id", None)
    if step is None:
        return False
    return step == 1 or (sequence is not None and _PASSED_ON.get(sequence) == step - 1)


def _refuse_misplaced(value: Any, run_manager: Any) -> None:
    """Raise `TypeError` where guard_output receives no model's answer: a prompt (a template's output), or its
    chain's own input (what the model after it is asked) that is not a model's message."""
    got = type(value).__name__
    if isinstance(value, PromptValue):
        raise TypeError(_MISPLACED.format(where="on a prompt template's output", got=got, what="the model's input"))
    if not isinstance(value, AIMessage) and _takes_chain_input(run_manager):
        where = "first in its chain" if _sequence_step(run_manager) == 1 else "after guard_input only"
        raise TypeError(_MISPLACED.format(where=where, got=got, what="the chain's input, not an answer"))


_END = object()


def _after(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """``first``, then ``rest``; closing it closes ``rest`` (the provider stops generating when its stream is closed)."""
    try:
        yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


async def _aafter(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Async twin of `_after`."""
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()


#: What the event-loop warning tells a sync chain run inside async code to use (`speaking_as`).
_ASYNC_TWIN = (
    "the chain's async methods: await chain.ainvoke(...) / async for over chain.astream(...) (not invoke / stream)"
)


class GuardRunnable(KeepsStops, RunnableSerializable[Any, Any]):
    """A guard step in a chain: screens the input, the output (streamed chunk by chunk), or both around ``runnable``.

    Prefer the helpers `guard_input` / `guard_output` for pieces of a ``|`` chain.

    Args:
        guard: the `qwenguard.core.Guard`.
        runnable: optional runnable to wrap; without it the step screens what flows through it.
        check_input / check_output: which side to screen.
        input_keys: for dict inputs, the keys whose values are the user's input (default: all strings).
        screen_system: judge a system message that opens a message-list input too (the application's
            prompt, left out by default); later ones, and all in a dict input's values, are judged anyway.
        stream_engine: ``"monitor"`` (default: a StreamMonitor; chunks are passed on once it released
            their text, ``holdback`` guard tokens behind) or ``"gate"`` (the answer judged by a Gen check
            at every word end, chunks held until then; ``window_chars``, ``min_chars``). See ``_streaming.py``.
        holdback: guard tokens the monitor keeps back (Stream model; ``None``: the monitor's default).
        release_unit: with a Gen guard (no Stream model), what one check may release: ``"sentence"``
            (whole sentences), ``"opening"`` (the answer's opening words as soon as they are judged, then
            whole sentences) or ``"word"`` (all judged text but its last word: more checks). ``None``: the
            monitor's default, ``"sentence"``. See docs/streaming.md.
        parallel_input: with ``runnable``, start it while the input is checked (``None``: the guard's
            ``parallel_input``). Nothing it produces goes out before the input's verdict, and no tool in
            it starts before it; a blocked input stops it (at its next step) and raises for the prompt.
            The runnable does see a blocked input.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: Guard
    runnable: Runnable[Any, Any] | None = None
    check_input: bool = True
    check_output: bool = True
    input_keys: tuple[str, ...] | None = None
    screen_system: bool = False
    history_turns: int = DEFAULT_HISTORY_TURNS
    stream_engine: Engine = "monitor"
    holdback: int | None = None
    release_unit: str | None = None
    window_chars: int = DEFAULT_WINDOW_CHARS
    min_chars: int = 1
    parallel_input: bool | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """``GuardRunnable(runnable, guard)`` positionally too (as ``GuardedChatModel(model, guard)``), or by keyword;
        pydantic's own errors named neither (``takes 1 positional argument``, ``Field required``), and it ignored an
        unknown keyword: that is an error naming it (`_options`)."""
        by_keyword("GuardRunnable", ("runnable", "guard"), args, kwargs)
        refuse_unknown("GuardRunnable", kwargs, known_fields(type(self)), _HINTS)
        if isinstance(kwargs.get("runnable"), Guard):
            raise TypeError("GuardRunnable(runnable, guard): the runnable comes first, and got a Guard")
        if "guard" not in kwargs:
            raise TypeError("GuardRunnable needs the guard: GuardRunnable(runnable=model, guard=guard)")
        super().__init__(**kwargs)

    @field_validator("guard", mode="before")
    @classmethod
    def _check_guard(cls, value: Any) -> Guard:
        return require_guard(value)

    @field_validator("stream_engine")
    @classmethod
    def _check_engine(cls, value: str) -> str:
        if value not in ("monitor", "gate"):  # "pipelined" is for callbacks, which cannot hold text
            raise ValueError(f"stream_engine must be 'monitor' or 'gate', got {value!r}")
        return value

    @field_validator("release_unit")
    @classmethod
    def _check_release_unit(cls, value: str | None) -> str | None:
        monitor_options(release_unit=value)  # refuses an unknown unit
        return value

    @model_validator(mode="after")
    def _check_sides(self) -> GuardRunnable:
        if self.runnable is None and self.check_input == self.check_output:
            raise ValueError(
                "a GuardRunnable without a runnable screens its input or its output, not both: "
                "use guard_input(guard) / guard_output(guard), or pass runnable=..."
            )
        found = _unguardable(self.runnable) if self.check_output and self.runnable is not None else None
        if found == "graph":
            # Its output is its state, read only after its tools acted and its checkpointer kept the answer; the
            # TypeError came then, naming guard_output (rt63d F4).
            raise ValueError(
                "GuardRunnable judges a model's answer, and a LangGraph graph (an agent) in the runnable hands back "
                "its state or keeps its answer in its checkpointer, after its tools ran: guard an agent with "
                "GuardMiddleware (create_agent(..., middleware=[GuardMiddleware(guard)])) or its model with "
                "GuardedChatModel; GuardRunnable(runnable, guard, check_output=False) judges its input only"
            )
        if found == "history":
            # Its history store is written when the run ends, before this step's verdict: a blocked answer was kept
            # and the next turn handed it to the model unjudged (rt63d F2).
            raise ValueError(
                "GuardRunnable around a RunnableWithMessageHistory judges the answer after the history has stored "
                "it: put the guard inside, RunnableWithMessageHistory(prompt | GuardedChatModel(model, guard), ...), "
                "so that a blocked answer is never stored"
            )
        return self

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        if name is None and self.runnable is None:
            name = "guard_input" if self.check_input else "guard_output"
        return super().get_name(suffix, name=name)

    # -- input side (pure) ------------------------------------------------------------------------
    def _input_items(self, value: Any, *, variable: bool = False) -> list[Item]:
        """``variable``: ``value`` is a dict input's value, which a prompt template fills in after this step: a
        system message there is the caller's, never the template's own (`input_items`' ``screen_system``)."""
        screen_system, budget = self.screen_system or variable, self.guard.max_chars
        if isinstance(value, str):
            return prompt_items([value])
        if isinstance(value, PromptValue):  # a formatted template, its own system messages first
            return input_items(value.to_messages(), self.history_turns, screen_system=self.screen_system, budget=budget)
        if isinstance(value, BaseMessage):
            return input_items([value], self.history_turns, screen_system=screen_system, budget=budget)
        if isinstance(value, (list, tuple)):
            return input_items(
                convert_to_messages(value), self.history_turns, screen_system=screen_system, budget=budget
            )
        if isinstance(value, dict):
            keys = self.input_keys if self.input_keys is not None else tuple(value)
            items: list[Item] = []
            for key in keys:
                if key not in value:
                    raise KeyError(f"guard input key {key!r} not in the chain input (keys: {sorted(value)})")
                sub = value[key]
                if isinstance(sub, _PLAIN):
                    if self.input_keys is not None:
                        raise TypeError(f"guard input key {key!r} holds a {type(sub).__name__}, not text or messages")
                    continue  # a number prints as digits: nothing to judge
                items.extend(self._value_items(key, sub))
            return items + _joined_variables(value, keys)
        raise TypeError(
            f"cannot screen a {type(value).__name__} input: pass a string, messages, a PromptValue or a dict of them"
        )

    def _value_items(self, key: str, value: Any) -> list[Item]:
        """A dict input's value: what a prompt template after this step reads of it. Text and messages as such;
        documents (a RAG chain's ``{"context": docs}``) as retrieved content, each on its own; anything else as
        the template prints it (``str()``: a nested dict, a set, bytes), never skipped."""
        if isinstance(value, (str, PromptValue, BaseMessage)):
            return self._input_items(value, variable=True)
        documents = _documents(value)
        if documents is not None:
            budget = self.guard.max_chars
            texts = [document_text(doc, budget) for doc in documents]  # ids and keys too: ``str(list)`` shows them
            return [
                Item(Stage.RETRIEVAL, untrusted_conversation(text, f"document {i}"), label=f"document in {key!r}")
                for i, text in enumerate(texts)
                if text.strip()
            ]
        if isinstance(value, (list, tuple)):
            try:
                messages = convert_to_messages(value)
            except (NotImplementedError, ValueError, TypeError, KeyError):
                pass  # not messages (numbers, rows, pairs that name no role): the template prints the list
            else:
                items = input_items(messages, self.history_turns, screen_system=True, budget=self.guard.max_chars)
                # Keys LangChain files away (``"note"``, ``"id"``, ``response_metadata``) are printed by a template's
                # ``{slot}`` with the rest (rt51f F3): what they hold is judged too, as the user's text.
                extra = "\n".join(
                    _strings([v for m in value if isinstance(m, dict) for k, v in m.items() if k not in _MESSAGE_KEYS])
                )
                if extra.strip():
                    items.append(Item(Stage.PROMPT, prompt_conversation(extra), label=f"chain input {key!r}"))
                return items
        # What the template prints. Its length is the guard's to bound (max_chars), as any input's.
        text = str(value)
        return [Item(Stage.PROMPT, prompt_conversation(text), label=f"chain input {key!r}")] if text.strip() else []

    def _parallel(self, items: Sequence[Item], config: RunnableConfig | None = None) -> bool:
        """Is the input checked beside the runnable (there is a runnable and something to check)? Not on a
        checkpointed thread: the runnable would save the blocked prompt (and a tool call on it) to the thread
        before the verdict, and the next, harmless turn would act on it (rt51f F2)."""
        parallel = self.guard.parallel_input if self.parallel_input is None else self.parallel_input
        thread = ((config or {}).get("configurable") or {}).get("thread_id") is not None
        return bool(parallel) and bool(items) and self.runnable is not None and not thread

    def _start_input(self, items: Sequence[Item], config: RunnableConfig) -> PendingCheck | None:
        """Screen ``items`` now (raises when blocked), or start their check beside the runnable."""
        return start_input(self.guard, items, parallel=self._parallel(items, config))

    async def _astart_input(self, items: Sequence[Item], config: RunnableConfig) -> PendingCheck | None:
        """Async twin of `_start_input`."""
        return await astart_input(self.guard, items, parallel=self._parallel(items, config))

    @staticmethod
    def _context(items: Sequence[Item]) -> list[dict[str, str]]:
        prompts = [i for i in items if i.stage is Stage.PROMPT]
        return list(prompts[-1].conversation) if prompts else []

    # -- output side (pure) -----------------------------------------------------------------------
    def _output_items(self, value: Any, context: list[dict[str, str]], *, text: bool = True) -> list[Item]:
        if isinstance(value, BaseMessage):
            items = output_items(
                value, context, self.history_turns, text=text, tool_calls=True, budget=self.guard.max_chars
            )
        elif isinstance(value, str):
            message = AIMessage(content=value)
            items = output_items(message, context, self.history_turns, tool_calls=False) if text else []
        else:
            step = "guard_output" if self.runnable is None else "GuardRunnable's output check"
            raise TypeError(
                f"{step} judges text: got a {type(value).__name__}. Put it right after the model "
                "(before output parsers), where the output is a message or a string."
            )
        # A JSON answer is read parsed by a parser after this step: its decoded strings too (`_json_reading`).
        return items + reading_items(value, context, self.history_turns) if text else items

    def _held(self, context: list[dict[str, str]], prefix: str = "") -> HeldStream:
        """The held stream of an answer after ``context`` that continues ``prefix`` (`_held_model.passed_before`)."""
        return ReadingHeldStream(
            self.guard,
            context,
            engine=self.stream_engine,
            monitor_options=monitor_options(self.holdback, self.release_unit),
            window_chars=self.window_chars,
            min_chars=self.min_chars,
            history_turns=self.history_turns,
            prefix=prefix,
        )

    # -- an attempt after one whose stream failed part-way: its answer continues what went out ------------------
    # As `GuardedChatModel`'s (`_held_model.OwedTexts`): a node's ``RetryPolicy`` or ``with_retry()`` runs the step
    # again, and the consumer reads its answer right after the text the failed attempt passed on. The call is this
    # step (what it wraps and its settings, `_step_identity`: two steps given one question in a node run, a
    # classifier's and the answer's, would take and pay each other's text) and the screened input's conversation, in
    # the node run (or the run retrying it). Without an input check (``guard_output``) there is no call: its input is
    # the model's chunks, and one ``guard_output`` may end two chains of a node run (a helper's and the answer's), so
    # nothing it reads tells the answer's retry from the helper: each of its streams is judged on its own (documented).
    def _owed_call(
        self, context: list[dict[str, str]], config: RunnableConfig, run_manager: Any, wrapped: str
    ) -> OwedCall | None:
        """The call this stream is an attempt of; ``wrapped``: the wrapped runnable's identity (`runnable_identity`)."""
        if not context:
            return None
        step = step_of(config, run_manager.parent_run_id)
        return OwedCall(f"{self._step_identity(wrapped)}:{context_digest(context)}", step)

    def _step_identity(self, wrapped: str) -> str:
        """What this step is, the same for a copy of it: the runnable it wraps (``wrapped``) and its settings. Not the
        instance: one built for each call (inside a node, or by ``configurable_fields`` for a request that sets a
        field) is another object on each attempt, and keyed by a token of the instance its retry was judged fresh
        (rt66k F1). Two steps that wrap the same runnable with the same settings, given the same input in one node
        run, are one step (their texts conflict: `_held_model.OwedTexts`)."""
        settings = [(name, getattr(self, name)) for name in type(self).model_fields if name not in _NOT_SETTINGS]
        digest = hashlib.blake2b(f"{wrapped}\n{settings!r}".encode("utf-8", "surrogatepass"), digest_size=16)
        return digest.hexdigest()

    def _continued(
        self, call: OwedCall | None, context: list[dict[str, str]]
    ) -> tuple[HeldStream, AbstractContextManager[None]]:
        """(the held stream of this attempt, the watch that records what it passed on if it fails: `passing`)."""
        if call is None:
            return self._held(context), nullcontext()
        ledger = StreamLedger()  # the step's store keeps the text (`OwedTexts`): a ledger is one model call's
        held = self._held(context, passed_before(self.guard, ledger, call))
        return held, passing(ledger, call, held)

    # -- where the step stands ----------------------------------------------------------------------
    def _placed(self, value: Any, run_manager: Any) -> None:
        """A guard_output step refuses what is no model's answer (`_refuse_misplaced`); a guard_input step notes that
        it passed its input on. (Streams do both once their input has come: `_transform`.)"""
        if self.runnable is None and self.check_output:
            _refuse_misplaced(value, run_manager)
        elif self.runnable is None:
            _note_passed_on(run_manager)

    # -- invoke -----------------------------------------------------------------------------------
    @speaking_as(_ASYNC_TWIN)
    def _invoke(
        self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        """``kwargs``: a binding's (``.bind(stop=...)``), for the wrapped runnable, as `RunnableBinding` passes them
        (a `TypeError` here was an error that ``with_fallbacks`` answered unguarded)."""
        self._placed(value, run_manager)
        context: list[dict[str, str]] = []
        pending: PendingCheck | None = None
        if self.check_input:
            items = self._input_items(value)
            pending = self._start_input(items, config)
            context = self._context(items)
        output = value
        if self.runnable is not None:  # (an input check runs beside it only when there is one: `_parallel`)
            # A sync call cannot be cancelled: a blocking verdict stops it at its next step (`stopping`), and no
            # tool of it runs before the verdict, rather than the whole run (an agent's tools) going on to the end.
            runnable = self.runnable
            child = patch_config(config, callbacks=stopping(run_manager.get_child(), pending))
            try:
                output = answer_beside(lambda: runnable.invoke(value, child, **kwargs), pending)
            except Exception as error:  # noqa: BLE001 - judged below, out of this block (see `_failed`)
                if not self.check_output:
                    raise
                failed: Exception | None = error
            else:
                failed = None
            if failed is not None:
                self._failed(failed, context)
        if self.check_output:
            items = self._output_items(output, context)
            raise_first(items, screen(self.guard, items))
        return output

    async def _ainvoke(
        self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        self._placed(value, run_manager)
        context: list[dict[str, str]] = []
        pending: PendingCheck | None = None
        if self.check_input:
            items = await built_off_loop(lambda: self._input_items(value), value)
            pending = await self._astart_input(items, config)
            context = self._context(items)
        output = value
        if self.runnable is not None:
            # Cancelled at once by a blocking verdict; its tools wait for the verdict (a model may answer first).
            call = self.runnable.ainvoke(
                value, patch_config(config, callbacks=stopping(run_manager.get_child(), pending)), **kwargs
            )
            try:
                output = await aanswer_beside(call, pending)
            except Exception as error:  # noqa: BLE001 - judged below, out of this block (see `_failed`)
                if not self.check_output:
                    raise
                failed: Exception | None = error
            else:
                failed = None
            if failed is not None:
                await self._afailed(failed, context)
        if self.check_output:
            items = await built_off_loop(lambda: self._output_items(output, context), output)
            raise_first(items, await ascreen(self.guard, items))
        return output

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    # -- a failed model ---------------------------------------------------------------------------
    # Its error can quote the answer it was producing, text the held stream never released (rt64b F1): judged as that
    # answer (`error_stop`), raised as the guard's stop when blocked, with nothing of the error chained to it.
    def _failed(self, error: Exception, context: list[dict[str, str]]) -> NoReturn:
        """Raise the guard's stop where what ``error`` carries is blocked as the answer to ``context``, else ``error``,
        unchanged. Called where no exception is being handled."""
        stop = error_stop(self.guard, error, context, self.history_turns)
        if stop is None:
            raise error
        raise stop from None

    async def _afailed(self, error: Exception, context: list[dict[str, str]]) -> NoReturn:
        """Async twin of `_failed`."""
        stop = await aerror_stop(self.guard, error, context, self.history_turns)
        if stop is None:
            raise error
        raise stop from None

    # -- streaming --------------------------------------------------------------------------------
    def _guard_chunks(
        self, chunks: Iterator[Any], context: list[dict[str, str]], call: OwedCall | None = None
    ) -> Iterator[Any]:
        """``chunks``, held until judged as the answer after ``context``; as an attempt of ``call`` (`_owed_call`)."""
        held, watch = self._continued(call, context)
        failed: Exception | None = None
        try:
            with watch:
                yield from held.run(chunks)
        except Exception as error:  # noqa: BLE001 - the model's (or a step's before it): judged below, out of this block
            failed = error
        if failed is not None:
            self._failed(failed, context)

    async def _aguard_chunks(
        self, chunks: AsyncIterator[Any], context: list[dict[str, str]], call: OwedCall | None = None
    ) -> AsyncIterator[Any]:
        held, watch = self._continued(call, context)
        failed: Exception | None = None
        try:
            with watch:
                async for chunk in held.arun(chunks):
                    yield chunk
        except Exception as error:  # noqa: BLE001 - judged below (see `_guard_chunks`)
            failed = error
        if failed is not None:
            await self._afailed(failed, context)

    @speaking_as(_ASYNC_TWIN)
    def _transform(
        self, inputs: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Iterator[Any]:
        if self.runnable is None and not self.check_input:  # guard_output: stream straight through the gate
            first: Any = _END
            failed: Exception | None = None
            try:
                first = next(inputs, _END)  # what it is tells where the step stands (`_refuse_misplaced`)
            except Exception as error:  # noqa: BLE001 - the model's, at its first chunk: judged as `_guard_chunks` does
                failed = error
            if failed is not None:
                self._failed(failed, [])
            if first is not _END:
                _refuse_misplaced(first, run_manager)
                yield from self._guard_chunks(_after(first, inputs), [])
            return
        chunks = list(inputs)
        if not chunks:
            return
        value = _combine(chunks)
        items = self._input_items(value) if self.check_input else []  # as `_invoke`: no check, no context
        pending = self._start_input(items, config)
        if self.runnable is None:
            _note_passed_on(run_manager)
            yield value
            return
        child = patch_config(config, callbacks=stopping(run_manager.get_child(), pending))
        output = self.runnable.transform(iter([value]), child, **kwargs)
        if pending is not None:
            output = until_blocked(output, pending)
        if self.check_output:
            context = self._context(items)
            call = self._owed_call(context, config, run_manager, runnable_identity(self.runnable))
            output = self._guard_chunks(output, context, call)
        yield from (output if pending is None else after_verdict(output, pending))

    async def _atransform(
        self,
        inputs: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        if self.runnable is None and not self.check_input:  # as `_transform`
            first: Any = _END
            failed: Exception | None = None
            try:
                first = await anext(inputs, _END)
            except Exception as error:  # noqa: BLE001 - the model's, at its first chunk: judged as `_aguard_chunks` does
                failed = error
            if failed is not None:
                await self._afailed(failed, [])
            if first is not _END:
                _refuse_misplaced(first, run_manager)
                async for chunk in self._aguard_chunks(_aafter(first, inputs), []):
                    yield chunk
            return
        chunks = [chunk async for chunk in inputs]
        if not chunks:
            return
        value = _combine(chunks)
        items = await built_off_loop(lambda: self._input_items(value), value) if self.check_input else []
        pending = await self._astart_input(items, config)
        if self.runnable is None:
            _note_passed_on(run_manager)
            yield value
            return

        async def one() -> AsyncIterator[Any]:
            yield value

        output = self.runnable.atransform(
            one(), patch_config(config, callbacks=stopping(run_manager.get_child(), pending)), **kwargs
        )
        if pending is not None:
            output = auntil_blocked(output, pending)
        if self.check_output:
            context = self._context(items)
            wrapped = await arunnable_identity(self.runnable)
            call = await built_off_loop(lambda: self._owed_call(context, config, run_manager, wrapped), context)
            output = self._aguard_chunks(output, context, call)
        async for chunk in output if pending is None else aafter_verdict(output, pending):
            yield chunk

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        # Its held stream is closed before LangChain's close path drains the input it reads ahead (``_TransformerFirst``).
        first = _TransformerFirst(self._transform)
        yield from first.stream(self._transform_stream_with_config(input, first.transformer, config, **kwargs))

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk


def guard_input(
    guard: Guard,
    *,
    input_keys: Sequence[str] | None = None,
    history_turns: int = DEFAULT_HISTORY_TURNS,
    screen_system: bool = False,
) -> GuardRunnable:
    """A chain step that screens its input and passes it on unchanged (raises `GuardViolation` if blocked).

    >>> chain = guard_input(guard, input_keys=["question"]) | prompt | model     # doctest: +SKIP
    """
    return GuardRunnable(
        guard=guard,
        check_input=True,
        check_output=False,
        input_keys=tuple(input_keys) if input_keys is not None else None,
        history_turns=history_turns,
        screen_system=screen_system,
    )


def guard_output(
    guard: Guard,
    *,
    stream_engine: Engine = "monitor",
    holdback: int | None = None,
    release_unit: str | None = None,
    window_chars: int = DEFAULT_WINDOW_CHARS,
    min_chars: int = 1,
) -> GuardRunnable:
    """A chain step that passes the model's answer on only once the guard judged it, and raises on a violation.

    >>> chain = prompt | model | guard_output(guard) | StrOutputParser()         # doctest: +SKIP

    ``stream_engine="monitor"`` (default) holds chunks back until the StreamMonitor released their
    text; ``"gate"`` judges the answer with a Gen check at every word end before passing it on
    (finer-grained, one check per word). With a Gen guard the monitor judges whole sentences by default;
    ``release_unit="opening"`` releases the answer's opening words as soon as they are judged (then
    sentences), ``"word"`` judged text but its last word throughout (earlier first text, more checks).

    It goes after the model: before it (``guard_output(guard) | model``, or after a prompt template or guard_input
    steps only) it raises `TypeError`, as it would judge the question as the answer. Alone,
    ``guard_output(guard).invoke(answer)`` judges an answer the application got elsewhere."""
    return GuardRunnable(
        guard=guard,
        check_input=False,
        check_output=True,
        stream_engine=stream_engine,
        holdback=holdback,
        release_unit=release_unit,
        window_chars=window_chars,
        min_chars=min_chars,
    )


class _TransformerFirst:
    """Closes a sync LangChain transformer's generators before LangChain's close path reads their input again.

    Closed mid-stream, ``Runnable._transform_stream_with_config`` catches `GeneratorExit` and drains the other half
    of its input's tee on the consumer's thread, and only then lets its transformer's generator go (closed later,
    by the garbage collector). A held stream reads that same input ahead on a thread of its own while the consumer
    holds a released chunk (`UpstreamReader`): the two would read one tee at once ("cannot re-enter the tee
    iterator", reported as a chain error: rt56d F3). Wrapped with this, the stream closes its transformer's
    generators first: a held stream stops its reader, waiting up to `CLOSE_GRACE_S` for the read in flight.

    >>> first = _TransformerFirst(self._transform)                                 # doctest: +SKIP
    >>> yield from first.stream(self._transform_stream_with_config(input, first.transformer, config))  # doctest: +SKIP
    """

    def __init__(self, transformer: Callable[..., Iterator[Any]]) -> None:
        self._transformer = transformer
        self._opened: list[tuple[contextvars.Context, Iterator[Any]]] = []

    def transformer(self, inputs: Iterator[Any], run_manager: Any, config: Any, **kwargs: Any) -> Iterator[Any]:
        """The wrapped transformer (LangChain passes ``run_manager`` and ``config`` by these names)."""
        generator = self._transformer(inputs, run_manager, config, **kwargs)
        # Closed in the context LangChain runs it in (its config's), as its own close would be.
        self._opened.append((contextvars.copy_context(), generator))
        return generator

    def stream(self, outer: Iterator[Any]) -> Iterator[Any]:
        """``yield from outer`` (LangChain's generator), closing the transformer's generators before ``outer`` when
        the consumer closes."""
        outer = cast(Generator[Any, Any, Any], outer)
        try:
            chunk = next(outer)
            while True:
                try:
                    yield chunk
                except GeneratorExit:
                    self._close()
                    outer.close()
                    raise
                except BaseException as exc:  # thrown in by the consumer: ``outer``'s to handle, as ``yield from``
                    chunk = outer.throw(exc)
                else:
                    chunk = next(outer)
        except StopIteration:
            return

    def _close(self) -> None:
        opened, self._opened = self._opened, []
        for context, generator in opened:
            close = getattr(generator, "close", None)
            if close is not None:
                context.run(close)
