"""Hold-back streaming: pass a model's chunks on only once the guard has judged them.

Used wherever the framework lets us hold text: `guard_output` / `GuardRunnable` (an LCEL step between
the model and the consumer) and `GuardMiddleware` (it wraps the agent's model call, see
``_held_model.py``). The judge is the core's hold-back `StreamMonitor` (``guard.stream`` /
``guard.astream``): with a Qwen3Guard-Stream model every token is scored as it arrives and text is
released ``holdback`` tokens behind; with a Gen guard each sentence is checked in the background as
soon as it is complete (pipelined with generation) and released once its verdict is in, so a short
safe first sentence goes out without waiting for the next one. Judged text goes out as soon as its verdict
is back: the next chunk is raced against the check in flight (a sync stream's model is read on a thread of
its own).

A chunk goes out once all of its text has been released, in order (one released but for whitespace at its end, which
the monitor holds as the next text's separator, goes out in two parts: `_split_released`), and one that wrote the
last word of a string another string broke off mid-sentence once a later chunk read that string on (`_broken_off`: a
window showed the word with the next of its own string, not with the line between). Tool-call chunks (their streamed
arguments) are held until the whole call is judged as the assistant's action, after the stream ends, and so
are chunks that carry text the answer quotes (`source_text`: citations, server tool outputs, metadata),
judged as untrusted content then; chunks behind them wait too, so the consumer's order never changes. A violation raises
`GuardViolation` from the iterator: the upstream stream is closed (the provider stops generating), and
nothing held beyond what the monitor released is passed on (`MonitorScreen.released_at_stop`: with a Stream
model not the tokens ``holdback`` held before the flagged span).

A chunk goes out in the form its text was judged (`as_judged`): its strings under the core's content rule
(`clean_text`, the rule the monitor applies to each delta), so the consumer holds the text the guard read; a CR at
the end of a chunk's text is carried into the next chunk's (`HeldStream._cr_carried`), as the monitor holds it, and
one carried to the answer's end goes out as a line feed in a last chunk of its own (`HeldStream._cr_tail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.messages.ai import add_ai_message_chunks
from qwenguard.core import Decision, Guard, GuardUnavailable, GuardViolation
from qwenguard.core.formats.content import clean_text
from qwenguard.core.formats.conversations import json_text
from qwenguard.core.formats.overstrike import crlf_joined
from qwenguard.core.streaming.gen_windows import RELEASE_UNITS
from qwenguard.core.streaming.wakeup import UpstreamRace, UpstreamReader

from .._common import Kinds
from ._messages import (
    _TOOL_CALL_KINDS,
    DEFAULT_HISTORY_TURNS,
    Item,
    StreamReading,
    _block_calls,
    _call_keys,
    _server_result,
    _strings,
    answer_text,
    answer_tool_calls,
    beyond_its_parse,
    block_text,
    output_items,
    source_text,
    worded,
)
from ._screening import ascreen, built_off_loop, raise_first, screen
from ._stream_reading import Runs
from ._streaming import DEFAULT_WINDOW_CHARS, Engine, MonitorScreen, Screen, open_screen

__all__ = [
    "HeldStream",
    "HeldCall",
    "HELD_CALL",
    "HELD_LLM_TYPE_PREFIX",
    "GUARD_PARAM",
    "TOOL_CALLS_PARAM",
    "guard_token",
    "monitor_options",
    "chunk_text",
    "as_message",
]

#: How `HeldBackChatModel` (``_held_model.py``) names its ``_llm_type``: what a callback sees of its run.
HELD_LLM_TYPE_PREFIX = "qwenguard-held-"


@dataclass(frozen=True)
class HeldCall:
    """A model call whose stream `GuardMiddleware` holds: every chunk judged by ``guard`` before it is
    released (tool-call arguments too when ``tool_calls``)."""

    guard: Guard
    tool_calls: bool


#: Set by `GuardMiddleware` around the model call it holds (code, never anything a client sends). A callback
#: handler on the same guard does not judge that call's stream again: the same guard, with the same policy,
#: judged each chunk before anyone saw it (and every chunk twice doubled the guard's work per token).
HELD_CALL: ContextVar[HeldCall | None] = ContextVar("qwenguard_held_call", default=None)


#: The invocation parameters by which a `GuardedChatModel` run names the guard that judged its stream
#: (`guard_token`) and whether its tool calls were held: a callback handler on the same guard reads them
#: (``invocation_params`` of ``on_chat_model_start``) and does not judge that run's stream again.
GUARD_PARAM = "qwenguard_guard"
TOOL_CALLS_PARAM = "qwenguard_tool_calls"


_TOKENS: weakref.WeakKeyDictionary[Guard, str] = weakref.WeakKeyDictionary()
_TOKENS_LOCK = threading.Lock()


def guard_token(guard: Guard) -> str:
    """A random name for this guard object while it lives: it goes into traces with the invocation
    parameters, so not its memory address. Not a secret; another process names it differently."""
    with _TOKENS_LOCK:
        token = _TOKENS.get(guard)
        if token is None:
            token = _TOKENS[guard] = f"guard-{secrets.token_hex(8)}"
        return token


def monitor_options(holdback: int | None = None, release_unit: str | None = None) -> dict[str, Any]:
    """The hold-back monitor's options (``guard.stream``) from a holding path's own arguments (``None``: the
    monitor's default). An unknown ``release_unit`` is refused here, when the path is built."""
    if release_unit is not None and release_unit not in RELEASE_UNITS:
        raise ValueError(f"release_unit must be one of {RELEASE_UNITS} (or None), got {release_unit!r}")
    options: dict[str, Any] = {} if holdback is None else {"holdback": holdback}
    if release_unit is not None:
        options["release_unit"] = release_unit
    return options


def chunk_text(chunk: Any, reading: StreamReading | None = None) -> str:
    """The text a streamed chunk carries (a message chunk or a string): the answer's words (`answer_text`), read
    through the stream's ``reading`` (`StreamReading`: joined, the chunks' texts read as their sum does)."""
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, BaseMessage):
        return answer_text(chunk, reading)
    raise TypeError(
        f"guard_output judges text: got a {type(chunk).__name__} chunk. Put it right after the model "
        "(before output parsers), where chunks are messages or strings."
    )


def _is_text_block(block: Any) -> bool:
    """A ``{"type": "text", "text": ...}`` content block: the answer's words, as LangChain's ``.text`` reads them."""
    return isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str)


def _block_texts(content: list[Any]) -> Iterator[str]:
    """The texts of a list content's plain strings and text blocks (where `HeldStream._cr_carried` carries a CR)."""
    for block in content:
        if isinstance(block, str):
            yield block
        elif _is_text_block(block):
            yield block["text"]


def as_judged(chunk: Any) -> Any:
    """``chunk`` in the form its text is judged and released: every string of its content, ``additional_kwargs``
    (where `chunk_text` reads the answer's words: text, reasoning, refusal, a provider's own keys) and tool calls under the core's
    content rule (`clean_text`), the rest of the chunk as it came. The chunk itself when nothing changes (an honest
    one). What the consumer holds is then what the monitor judged: no NUL, ANSI escape or lone surrogate half (two
    halves a JSON round trip joins into characters no check read), and a violation's offset indexes its text."""
    if isinstance(chunk, str):
        return clean_text(chunk)
    if not isinstance(chunk, BaseMessage):
        return chunk
    update: dict[str, Any] = {}
    # The answer's text and its calls' arguments (rt49f F7: arguments went out raw, NUL, ANSI escapes and the
    # surrogate halves of tag characters the guard judged as U+FFFD).
    for field in ("content", "additional_kwargs", "tool_call_chunks", "tool_calls", "invalid_tool_calls"):
        value = getattr(chunk, field, None)
        if value is None:
            continue
        cleaned = _cleaned(value)
        if cleaned is not value:
            update[field] = cleaned
    return chunk.model_copy(update=update) if update else chunk


class _Branch:
    """A dict, list or tuple being cleaned (`_cleaned`): its parts so far, and whether one changed."""

    __slots__ = ("node", "key", "parts", "out", "changed")

    def __init__(self, node: Any, key: Any) -> None:
        self.node, self.key = node, key
        self.parts = iter(node.items() if isinstance(node, Mapping) else enumerate(node))
        self.out: list[tuple[Any, Any]] = []
        self.changed = False

    def add(self, key: Any, old: Any, new: Any) -> None:
        if isinstance(self.node, Mapping) and isinstance(key, str):
            cleaned_key = clean_text(key)
            self.changed |= cleaned_key is not key
            key = cleaned_key
        self.changed |= new is not old
        self.out.append((key, new))

    def built(self) -> Any:
        if not self.changed:
            return self.node
        if isinstance(self.node, Mapping):
            return dict(self.out)
        values = [value for _, value in self.out]
        return tuple(values) if isinstance(self.node, tuple) else values


def _cleaned(value: Any) -> Any:
    """``value`` with every string in it (dict keys too) under `clean_text`; the same object where none changes.

    Walked from a stack (any nesting); a container inside itself is left as it is where it recurs."""
    if isinstance(value, str):
        return clean_text(value)
    if not isinstance(value, (Mapping, list, tuple)) or not value:
        return value  # every chunk passes here: an empty field (no calls, no kwargs) costs no walk
    stack = [_Branch(value, None)]
    open_ids = {id(value)}
    while True:
        branch = stack[-1]
        for key, part in branch.parts:
            if isinstance(part, (Mapping, list, tuple)) and id(part) not in open_ids:
                stack.append(_Branch(part, key))
                open_ids.add(id(part))
                break
            branch.add(key, part, clean_text(part) if isinstance(part, str) else part)
        else:
            stack.pop()
            open_ids.discard(id(branch.node))
            done = branch.built()
            if not stack:
                return done
            stack[-1].add(branch.key, branch.node, done)


def _has_tool_calls(chunk: Any) -> bool:
    # Not only ``tool_call_chunks``: a legacy ``function_call`` and a provider's own (server) tool call stream too.
    return bool(getattr(chunk, "tool_call_chunks", None) or answer_tool_calls(chunk))


def _quotes(chunk: Any, budget: int) -> bool:
    """Does this chunk carry text the answer quotes (`source_text`), judged once the stream ended?"""
    return isinstance(chunk, BaseMessage) and bool(source_text(chunk, budget).strip())


def _add(whole: Any, chunk: Any, budget: int) -> Any:
    """``whole + chunk``, never losing what the answer's tool calls are read from.

    LangChain refuses some sums (two floats under one ``additional_kwargs`` key; a str after a message) that
    a custom streaming runnable can send. A chunk without a tool call or quoted text adds nothing judged at
    the end (its text is judged as it streams), so the sum is kept without it; one with either after chunks
    without any takes their place; a message chunk with one is added again as only what they are read from
    (`_end_parts`). A sum that still fails is refused: the calls or quotes could not be judged, and they never
    go out (not ``on_error``'s to let through: the guard could answer, the stream could not be read)."""
    if whole is None:
        return chunk
    try:
        return whole + chunk
    except TypeError as error:
        if not _judged_at_end(chunk, budget):
            return whole if isinstance(whole, BaseMessage) else chunk
        if not isinstance(whole, BaseMessage) or not _judged_at_end(whole, budget):
            return chunk  # nothing before it to keep
        if isinstance(chunk, AIMessageChunk):
            with contextlib.suppress(TypeError):
                return whole + _end_parts(chunk)
        raise GuardUnavailable(
            f"a streamed chunk with a tool call or quoted text cannot be added to the chunks before it ({error}): "
            "the answer's tool calls and quotes cannot be judged, so the stream stops"
        ) from error


def _summable(chunk: Any) -> Any:
    """``chunk`` as it is added up: a message that is no chunk as an `AIMessageChunk` (its calls as call chunks).

    ``BaseMessage.__add__`` of two messages (a custom runnable can stream whole `AIMessage`s) is a
    ``ChatPromptTemplate``, no message and no error: the answer's calls and quotes were never judged (rt49a H3)."""
    if not isinstance(chunk, BaseMessage) or isinstance(chunk, BaseMessageChunk):
        return chunk
    calls = [*(getattr(chunk, "tool_calls", None) or ()), *(getattr(chunk, "invalid_tool_calls", None) or ())]
    return AIMessageChunk(
        content=chunk.content,
        additional_kwargs=chunk.additional_kwargs,
        response_metadata=chunk.response_metadata,
        id=chunk.id,
        tool_call_chunks=[_call_chunk(call) for call in calls if isinstance(call, Mapping)],
    )


def _call_chunk(call: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed (or invalid) call as the call chunk it could have streamed as: its arguments as JSON text."""
    args = call.get("args")
    if not isinstance(args, str):
        try:
            args = json_text(args)  # `json.dumps`'s text, written from a stack (any nesting)
        except ValueError as error:  # arguments that hold themselves
            raise GuardUnavailable(f"a streamed tool call's arguments cannot be written as text ({error})") from error
    name, call_id = call.get("name"), call.get("id")
    return {
        "name": name if isinstance(name, str) else None,
        "args": args,
        "id": call_id if isinstance(call_id, str) else None,
        "index": None,  # a call of its own, never merged with another message's
        "type": "tool_call_chunk",
    }


def _merges(value: Any) -> bool:
    """Is ``value + chunk`` (a message chunk after it) `add_ai_message_chunks`, which adds many in one pass?"""
    return isinstance(value, AIMessageChunk) and type(value).__add__ is AIMessageChunk.__add__


def _sum(whole: Any, run: list[AIMessageChunk], budget: int) -> Any:
    """``whole`` (``None`` or a chunk that `_merges`) and then each chunk of ``run``, as `_add` adds them one by one.

    Added in one pass: `add_ai_message_chunks` folds the chunks left to right, as the sums one at a time do, but
    builds (and parses the tool-call arguments of) one message, not one per chunk, which made a stream quadratic in
    its arguments' length. A run LangChain cannot add whole is added one chunk at a time after all, so that `_add`
    decides for the chunk it cannot add, as it did."""
    first, rest = (run[0], run[1:]) if whole is None else (whole, run)
    if not rest:
        return first
    try:
        return add_ai_message_chunks(first, *rest)
    except (TypeError, ValueError):
        for chunk in run:
            whole = _add(whole, chunk, budget)
        return whole


#: Block kinds whose text is judged once the stream ended (calls, and a provider's own tools' results): recorded
#: as streamed. Anthropic streams a call's arguments as ``input_json_delta`` pieces after its ``tool_use`` block.
_WATCHED = Kinds({*_TOOL_CALL_KINDS, "input_json_delta"})


class StreamedCallBlocks:
    """The tool-call and server-result content blocks of a held stream, as streamed, by index (or id).

    The answer's calls and quotes are judged from the chunks added up, and LangChain's sum can lose a block's text:
    the ``chunk_position="last"`` chunk `BaseChatModel.stream` adds replaces a block with the call parsed from
    ``tool_call_chunks`` (whatever else the block held), and a block sharing its index with an earlier text block
    merges into it and is read as text (rt48e P1, rt48f H1, H2: the clause as a block's arguments, a dict's value or
    a server result went out unjudged). Each block's pieces are merged as LangChain merges strings (joined) and kept
    whole otherwise (`beside`), and judged beside the sum unless the sum judges the same: a call equal (name and
    arguments, whatever its id or index) to one of the sum's, a result whose text the sum quotes. An honest
    stream's are, and cost no check more."""

    def __init__(self) -> None:
        self._blocks: dict[Any, dict[str, Any]] = {}

    def add(self, chunk: Any) -> None:
        content = getattr(chunk, "content", None)
        if not isinstance(chunk, BaseMessage) or not isinstance(content, list):
            return
        for block in content:
            if not isinstance(block, dict) or not (block.get("type") in _WATCHED or _server_result(block)):
                continue
            index, call_id = block.get("index"), block.get("id")
            usable = isinstance(index, (int, str)) and not isinstance(index, bool)
            key = ("index", index) if usable else ("id", call_id if isinstance(call_id, str) else None)
            record = self._blocks.setdefault(key, {"type": None, "fields": {}})
            if record["type"] in (None, "input_json_delta"):
                record["type"] = block.get("type")
            for field, value in block.items():
                if field != "type":
                    record["fields"].setdefault(field, []).append(value)

    def beside(self, message: BaseMessage) -> BaseMessage:
        """``message`` with each streamed block the sum does not judge the same beside its content."""
        if not self._blocks:
            return message
        judged: set[tuple[str, str]] = set()
        for call in answer_tool_calls(message):
            judged |= _call_keys(call) or set()
        quoted = source_text(message)
        extra = [block for block in map(_merged, self._blocks.values()) if not _judged_the_same(block, judged, quoted)]
        if not extra:
            return message
        content = message.content if isinstance(message.content, list) else [{"type": "text", "text": message.content}]
        return message.model_copy(update={"content": [*content, *extra]})


def _merged(record: dict[str, Any]) -> dict[str, Any]:
    """One block from its streamed pieces: strings joined (the arguments' text and the name, as LangChain joins
    them), a label its first value (a later one that differs and is no identifier kept beside, judged with the
    call: the consumer got it), anything else whole (one value as it is, several as their list: every string in
    them is read)."""
    block: dict[str, Any] = {"type": record["type"] or "tool_call"}
    for field, values in record["fields"].items():
        if field in _LABELS:
            first = next((v for v in values if v is not None and v != ""), values[0])
            block[field] = first
            later = [v for v in values if v != first and worded(v)]
            if later:
                block[f"streamed_{field}"] = later
        elif all(isinstance(v, str) for v in values):
            block[field] = "".join(values)
        else:
            kept = [v for v in values if v is not None and v != ""]
            block[field] = kept[0] if len(kept) == 1 else kept
    return block


#: A block's labels: one value each in the merged block (LangChain keeps the first), every other its own words.
_LABELS = frozenset({"id", "call_id", "index"})


def _judged_the_same(block: dict[str, Any], judged: set[tuple[str, str]], quoted: str) -> bool:
    if _server_result(block):
        return all(text in quoted for text in _strings(block) if text.strip())
    for call in _block_calls(block):
        keys = _call_keys(call)
        if keys is None or keys.isdisjoint(judged):
            return False
    return True


class BlockOrder:
    """Whether a held stream's text still reads, added up, as it streamed (rt54b F1).

    LangChain adds a stream's content blocks up by their ``index`` (``merge_lists``): a text delta for a block
    streamed before goes back into that block, so an answer whose blocks' deltas interleave (an Anthropic-compatible
    gateway can send block 0's and block 1's words by turns) reads, added up, otherwise than it streamed: the
    monitor read ``"Mix Paris ammonium is ..."``, the consumer's sum says ``"Mix ammonium nitrate ..."``. Once the
    text goes back to a block streamed before (any block, string content or a block without an index, streamed in
    between), the stream is `interleaved`: what has gone out read the same both ways, and the rest is held until the
    answer as LangChain adds it up is judged whole (`HeldStream._end_items`)."""

    __slots__ = ("_seen", "_last", "interleaved")

    def __init__(self) -> None:
        self._seen: set[Any] = set()
        self._last: Any = None
        self.interleaved = False

    def add(self, chunk: Any) -> bool:
        """Record ``chunk``'s text blocks in order; whether the stream is interleaved from this chunk on."""
        if self.interleaved or not isinstance(chunk, BaseMessage):
            return self.interleaved
        content = chunk.content
        if isinstance(content, str):
            if content:
                self._last = object()  # added after every block: a later block's text goes back before it
            return False
        for block in content if isinstance(content, list) else ():
            if not (block_text(block) if isinstance(block, (str, Mapping)) else ""):
                continue
            index = block.get("index") if isinstance(block, Mapping) else None
            usable = isinstance(index, (int, str)) and not isinstance(index, bool)
            if not usable:
                self._last = object()  # appended where it streamed, never merged into another block
                continue
            if index != self._last:
                if index in self._seen:
                    self.interleaved = True
                    return True
                self._seen.add(index)
                self._last = index
        return False


def _split_released(held: deque[_Held], released: int) -> None:
    """The first held chunk, whose text is released but for whitespace at its end, as two chunks: the released text
    with the rest of the chunk, then that whitespace alone (same id). The monitor holds a trailing whitespace back as
    the separator of the next text: a chunk ``"France. "`` waited for the model's next chunk, the judged sentence with
    it (rt65d F2: a 2 s pause held it 2 s). The parts add up to the chunk (its other fields on the first only), and
    the consumer never holds more than the monitor released. A chunk whose text is not its string content (blocks,
    reasoning beside it) or that closes the stream (``chunk_position="last"``) waits as before."""
    end, to_end, chunk, text, seq = held[0]
    unreleased = end - released
    # The last character first: a long chunk whose words wait is not copied for each chunk that comes after it.
    if not 0 < unreleased < len(text) or not text[-1].isspace() or text[-unreleased:].strip():
        return
    at = len(text) - unreleased
    head: Any
    tail: Any
    if isinstance(chunk, str) and chunk == text:
        head, tail = chunk[:at], chunk[at:]
    elif isinstance(chunk, AIMessageChunk) and chunk.content == text and chunk.chunk_position != "last":
        head, tail = chunk.model_copy(update={"content": text[:at]}), AIMessageChunk(content=text[at:], id=chunk.id)
    else:
        return
    held.popleft()
    held.appendleft((end, to_end, tail, text[at:], seq))
    held.appendleft((released, to_end, head, text[:at], seq))


def _judged_at_end(chunk: Any, budget: int) -> bool:
    return _has_tool_calls(chunk) or _quotes(chunk, budget)


#: The ``additional_kwargs`` keys judged once the stream ended: tool calls and server tool outputs.
_END_KEYS = ("function_call", "tool_calls", "tool_outputs")


def _end_parts(chunk: AIMessageChunk) -> AIMessageChunk:
    """The parts of a message chunk judged once the stream ended (`answer_tool_calls`, `source_text`)."""
    kept = {k: v for k, v in chunk.additional_kwargs.items() if k in _END_KEYS}
    return AIMessageChunk(
        content=chunk.content,
        tool_call_chunks=chunk.tool_call_chunks,
        additional_kwargs=kept,
        response_metadata=chunk.response_metadata,
    )


def as_message(value: BaseMessage) -> BaseMessage:
    """An aggregated `AIMessageChunk` parses its tool-call chunks into ``tool_calls`` (a legacy ``function_call``
    stays in ``additional_kwargs``); its metadata is kept (`source_text` reads it)."""
    if isinstance(value, AIMessageChunk):
        message = AIMessage(
            content=value.content,
            additional_kwargs=value.additional_kwargs,
            response_metadata=value.response_metadata,
            tool_calls=value.tool_calls,
            invalid_tool_calls=value.invalid_tool_calls,
            id=value.id,
        )
        # The streamed argument text, where its parse says less than it (a key written twice: the parse keeps the
        # last value, the consumer got both): judged as written (`answer_tool_calls` reads such text).
        written = [c for c in value.tool_call_chunks if beyond_its_parse(c.get("args") or "")]
        return (
            message.model_copy(update={"invalid_tool_calls": [*message.invalid_tool_calls, *written]})
            if written
            else message
        )
    return value


#: A chunk held back: (the end offset of its text in the answer, held until the stream ended, the chunk, its text,
#: which chunk of the stream it is).
_Held = tuple[int, bool, Any, str, int]


class HeldStream:
    """One streamed answer held back until judged. ``run(chunks)`` / ``arun(chunks)`` yield what may go out.

    Args:
        guard: the `Guard`.
        context: the conversation the answer follows (guard dicts, ending with the user's turn).
        engine: ``"monitor"`` (the core StreamMonitor; default) or ``"gate"`` (a Gen check of the
            answer so far at every word end, in the stream's path).
        monitor_options: passed to ``guard.stream`` (e.g. ``holdback``).
        tool_calls: judge the answer's tool calls (held until then); ``False`` passes them on in order.
        answers: a structured output's schema tools: their calls are the answer, held and judged as the answer
            whatever ``tool_calls`` says (`_messages.AS_ANSWER`).
        prefix: text the consumer already holds that this answer continues (a failed attempt's passed-on text
            before a retry's answer): judged as a prefill is, before the answer's text in every window, never
            passed on again.
        calls_context: what the answer's tool calls are read after (`_messages.call_history`: the calls asked for
            since the request too); default: ``context``.
    """

    def __init__(
        self,
        guard: Guard,
        context: Sequence[dict[str, str]],
        *,
        engine: Engine = "monitor",
        monitor_options: dict[str, Any] | None = None,
        window_chars: int = DEFAULT_WINDOW_CHARS,
        min_chars: int = 1,
        history_turns: int = DEFAULT_HISTORY_TURNS,
        tool_calls: bool = True,
        answers: Collection[str] = (),
        judged: Callable[[Sequence[Item], Sequence[Decision]], None] | None = None,
        prefix: str = "",
        calls_context: Sequence[dict[str, str]] | None = None,
    ) -> None:
        self.guard = guard
        self.calls_context = None if calls_context is None else [dict(m) for m in calls_context]
        self.tool_calls = tool_calls
        self.answers = frozenset(answers)
        #: Told the end items and their decisions once they passed (a middleware remembers what it allowed).
        self.judged = judged
        self.context = [dict(m) for m in context]
        self.engine: Engine = engine
        self.monitor_options = dict(monitor_options or {})
        self.window_chars = window_chars
        self.min_chars = min_chars
        self.history_turns = history_turns
        # The chunks added up so far (`_add`), and the message chunks after them, added only when the whole is read.
        self._whole: Any = None
        self._run: list[AIMessageChunk] = []
        self._streamed_calls = StreamedCallBlocks()
        self._order = BlockOrder()
        self._reading = StreamReading()  # how the chunks' blocks read whole join up (`chunk_text`)
        self._cr_held = False  # the last chunk's text ended in a CR, carried into the next (`_cr_carried`)
        self._cr_source: Any = None  # where that CR was written (`_cr_tail`)
        # Chunks that wrote the last word of a string another broke off mid-sentence (`_broken_off`): by chunk, the
        # strings it waits for, and how much text is released once they were read on (the chunk that read them).
        self._count = 0
        self._gates: dict[int, set[int]] = {}
        self._gate_ends: dict[int, int] = {}
        self._latest: dict[int, int] = {}  # string -> the last chunk that wrote some of it
        self._since: dict[int, int] = {}  # string -> the first chunk that wrote some of it since it was read on
        #: Whether a chunk was held for what is judged once the stream ended (`_end_items` must read it).
        self._held_for_end = False
        self._passed_texts: list[str] = []  # the texts of the chunks passed on (`passed_text`)
        self.prefix = prefix

    @property
    def whole(self) -> Any:
        """The whole answer as streamed (chunks added up), once the stream ended."""
        if self._run:
            run, self._run = self._run, []
            self._whole = _sum(self._whole, run, self.guard.max_chars)
        return self._whole

    def _open(self, *, asynchronous: bool) -> Screen:
        # The prefix as an assistant turn closing the context: a prefill, which the monitor shows before the text
        # of each window and does not release (`MonitorCore.prefill`; a prefill in the context comes before it).
        context = [*self.context, {"role": "assistant", "content": self.prefix}] if self.prefix else self.context
        return open_screen(
            self.guard,
            context,
            self.engine,
            asynchronous=asynchronous,
            hold=True,
            window_chars=self.window_chars,
            min_chars=self.min_chars,
            monitor_options=self.monitor_options,
        )

    def _end_items(self) -> list[Item]:
        """What is judged once the stream ended: the answer's tool calls and the text it quotes."""
        if not isinstance(self.whole, BaseMessage):
            if self._held_for_end:
                # A chunk held for its calls or quotes, and a sum they cannot be read from: they never go out.
                raise GuardUnavailable(
                    f"the streamed chunks add up to a {type(self.whole).__name__}, not a message: the answer's tool "
                    "calls and quotes cannot be judged, so the stream stops"
                )
            return []
        return output_items(
            self._streamed_calls.beside(as_message(self.whole)),
            self.context,
            self.history_turns,
            # The text was judged as it streamed, unless its blocks interleaved: then as LangChain adds it up.
            text=self._order.interleaved or self._reading.interleaved,
            tool_calls=self.tool_calls,
            answers=self.answers,
            sources=True,
            budget=self.guard.max_chars,
            calls_context=self.calls_context,
        )

    def _passed(self, items: list[Item], decisions: Sequence[Decision]) -> None:
        """Raise for the first blocked end item; else tell `judged` (the tool calls need not be judged again)."""
        raise_first(items, decisions)
        if self.judged is not None and items:
            self.judged(items, decisions)

    def _holds_to_end(self, chunk: Any, held: deque[_Held]) -> bool:
        """Is this chunk held until the stream ended and its end items are judged (`_end_items`): a tool-call
        chunk (when tool calls are judged), one that carries quoted text, one whose text goes back to a block
        streamed before (`BlockOrder`), or one behind any of them?"""
        interleaved = self._order.add(chunk)  # every chunk's blocks are recorded, held or not
        # A piece of a block read whole that went back to a string read before another (`StreamReading`).
        if interleaved or self._reading.interleaved or (held and held[-1][1]):
            return True
        # A call's name may come after its first chunk: every call is held where one of them may be the answer.
        calls = self.tool_calls or bool(self.answers)
        return (calls and _has_tool_calls(chunk)) or _quotes(chunk, self.guard.max_chars)

    def _released_before_stop(self, held: deque[_Held], judge: Screen, violation: GuardViolation) -> list[Any]:
        """Held chunks whose text the judge had released when ``violation`` stopped the stream, not passed on yet.

        Never more than the judge released (`MonitorScreen.released_at_stop`): not up to a Stream model's offset,
        where the flagged token run starts, with the tokens before it held back under ``holdback`` (rt49b F3)."""
        released = judge.released_at_stop(violation) if isinstance(judge, MonitorScreen) else judge.released
        out = []
        while self._ready(held, released):
            out.append(self._passed_on(held))
        return out

    def _hold(self, chunk: Any, held: deque[_Held], fed: int) -> tuple[int, str]:
        """Hold ``chunk`` (`as_judged`: its text as the monitor judges it) until its text is released; the
        characters fed so far, and its text."""
        chunk = as_judged(self._cr_carried(chunk))
        text = chunk_text(chunk, self._reading)
        fed += len(text)
        to_end = self._holds_to_end(chunk, held)
        self._held_for_end |= to_end
        held.append((fed, to_end, chunk, text, self._count))
        runs = self._reading.runs()
        if runs.extended or runs.broken:
            self._broken_off(runs, held, fed)
        self._count += 1
        self._streamed_calls.add(chunk)
        summed = _summable(chunk)  # the consumer gets the chunk as it was judged
        # Nothing reads the whole before the stream ended: message chunks wait in a list to be added in one pass
        # (`_sum`); a sum one at a time copies (and LangChain parses) the tool-call arguments so far at every chunk.
        if _merges(summed) and (self._run or self._whole is None or _merges(self._whole)):
            self._run.append(summed)
        else:
            self._whole = _add(self.whole, summed, self.guard.max_chars)
        return fed, text

    def _cr_carried(self, chunk: Any) -> Any:
        """``chunk`` with its text (a string chunk, a message's string content or the text blocks of its list
        content) as the local monitor releases it (`crlf_joined`): a CR at its end is carried into the next text, so
        a CRLF cut between two chunks stays a CRLF (`as_judged` alone made it two line feeds, rt70l F2; rt71 BC for
        list content, as Anthropic and the responses API stream), and any other lone CR is a line feed. A chunk with
        no text carries it on; one still carried at the answer's end goes out as a line feed: in the message that
        ends the answer (a whole message, or the chunk marked ``chunk_position="last"``, `_cr_ended`), else in a
        chunk of its own (`_cr_tail`)."""
        if isinstance(chunk, str):
            return self._crlf(chunk, chunk) if self._cr_held or "\r" in chunk else chunk
        content = getattr(chunk, "content", None) if isinstance(chunk, BaseMessage) else None
        if isinstance(content, str):
            if not self._cr_held and "\r" not in content:
                return chunk
            return self._cr_ended(chunk.model_copy(update={"content": self._crlf(content, chunk)}))
        if not isinstance(content, list) or not (self._cr_held or any("\r" in t for t in _block_texts(content))):
            return chunk
        blocks: list[Any] = []
        for block in content:
            if isinstance(block, str):
                block = self._crlf(block, [chunk, None])
            elif _is_text_block(block):
                block = {**block, "text": self._crlf(block["text"], [chunk, block])}
            blocks.append(block)
        return self._cr_ended(chunk.model_copy(update={"content": blocks}))

    def _cr_ended(self, message: BaseMessage) -> BaseMessage:
        """``message`` with the CR still carried after it released in it as a line feed when it ends the answer: a
        whole message (a router's or a cache's answer: a chunk after it made LangChain add the two up into a
        ``ChatPromptTemplate`` for the next step, rt71i F1) or the chunk a chat model marks ``chunk_position="last"``
        (a chunk after it came after the stream's end marker, rt71i F2). Else as it is: the CR stays carried."""
        if not self._cr_held or (
            isinstance(message, BaseMessageChunk) and getattr(message, "chunk_position", None) != "last"
        ):
            return message
        tail = self._cr_tail()
        content = message.content
        if isinstance(content, str) and (content or isinstance(tail, str) or isinstance(tail.content, str)):
            return message.model_copy(update={"content": content + "\n"})
        blocks: list[Any] = list(content) if isinstance(content, list) else []
        for i in reversed(range(len(blocks))):  # its last text wrote the CR: no text after it took the CR on
            if isinstance(blocks[i], str):
                blocks[i] += "\n"
                return message.model_copy(update={"content": blocks})
            if _is_text_block(blocks[i]):
                blocks[i] = {**blocks[i], "text": blocks[i]["text"] + "\n"}
                return message.model_copy(update={"content": blocks})
        # No text of its own (the empty last chunk): the CR's block at its index, so the sum joins it there
        added = tail.content if not isinstance(tail, str) and isinstance(tail.content, list) else ["\n"]
        return message.model_copy(update={"content": blocks + added})

    def _crlf(self, text: str, source: Any) -> str:
        """``text`` released (`crlf_joined`); ``source`` is remembered as where a CR carried on was written."""
        text, self._cr_held = crlf_joined(clean_text(text, keep_lone_cr=True), self._cr_held)
        if self._cr_held:
            self._cr_source = source
        return text

    def _cr_tail(self) -> Any:
        """The answer ended with a CR carried (`_cr_carried`) and no chunk marked its end (`_cr_ended`): a last
        chunk with its line feed (a lone CR is released as one), in the form of the text that wrote it (a string, a
        message's string content, or a text block at the same index, so the sum joins it there); ``None`` when none
        is carried. Without it the consumer lost a character the model wrote (rt71 BC)."""
        if not self._cr_held:
            return None
        self._cr_held = False
        source = self._cr_source
        if isinstance(source, str):
            return "\n"
        if isinstance(source, BaseMessage):
            return AIMessageChunk(content="\n", id=source.id)
        message, block = source
        if block is None:
            return AIMessageChunk(content=["\n"], id=message.id)
        tail = {key: block[key] for key in ("type", "index") if key in block}
        return AIMessageChunk(content=[{**tail, "text": "\n"}], id=message.id)

    def _broken_off(self, runs: Runs, held: deque[_Held], fed: int) -> None:
        """Gate the chunks that wrote the last word of a string broken off mid-sentence (``runs.broken``) until a
        later chunk reads the string on (`StreamReading`, rt66 G): a window read that word before a line of other
        text (OpenRouter's ``format`` after each piece's ``text``) and let it out, "Mix" before "ammonium" came. Once
        read on (``runs.continued``), they go out with the chunk that did, whose text shows the word with the next."""
        seq = held[-1][4]
        for path in runs.continued:
            self._since[path] = seq
            for gate, paths in self._gates.items():
                if path in paths:
                    paths.discard(path)
                    self._gate_ends[gate] = fed
        for path in runs.extended:
            self._latest[path] = seq
            self._since.setdefault(path, seq)
        first = held[0][4]
        for path in runs.broken:
            since = self._since.pop(path, seq)
            if self._latest.get(path, -1) >= first:  # a chunk that wrote some of it is held still
                self._gates.setdefault(max(since, first), set()).add(path)

    def _gates_opened(self) -> None:
        """The stream ended: what every string wrote was judged, unless it is judged whole (`interleaved`)."""
        if not self._reading.interleaved:
            self._gates.clear()
            self._gate_ends.clear()

    def _ready(self, held: deque[_Held], released: int) -> bool:
        """Does the first held chunk go out now: all its text released, and no string it broke off waited for
        (`_broken_off`)? Once only whitespace at its end is not, it is split there first (`_split_released`)."""
        if not held or held[0][1]:
            return False
        if self._gates and held[0][4] in self._gates:
            seq = held[0][4]
            if self._gates[seq] or released < self._gate_ends.get(seq, 0):
                return False
            del self._gates[seq]
            self._gate_ends.pop(seq, None)
        if held[0][0] > released:
            _split_released(held, released)
        return held[0][0] <= released

    def _passed_on(self, held: deque[_Held]) -> Any:
        """The first held chunk, taken to go out: its text counts as the consumer's (`passed_text`)."""
        _, _, chunk, text, _ = held.popleft()
        self._passed_texts.append(text)
        return chunk

    @property
    def passed_text(self) -> str:
        """The text of the chunks passed on so far: what the consumer holds of this answer."""
        return "".join(self._passed_texts)

    def run(self, chunks: Iterator[Any]) -> Iterator[Any]:
        judge = self._open(asynchronous=False)
        held: deque[_Held] = deque()
        fed = 0
        # While a monitor's check runs beside the stream the model is read on a thread of its own, so judged
        # text goes out when its verdict is back, not when the model sends its next token (``wakeup.py``).
        reader = UpstreamReader(chunks, name="qwenguard-lc-upstream")
        waiters = judge.verdict_waiters if isinstance(judge, MonitorScreen) else list
        try:
            for fresh, chunk in reader.race(waiters):
                if not fresh:
                    judge.release()  # type: ignore[union-attr]
                else:
                    fed, text = self._hold(chunk, held, fed)
                    if text:
                        judge.check(text)  # raises on a violation: held chunks never go out
                while self._ready(held, judge.released):
                    yield self._passed_on(held)
            tail = self._cr_tail()
            if tail is not None:
                fed, text = self._hold(tail, held, fed)
                judge.check(text)
            judge.finish()
            self._gates_opened()
            while self._ready(held, judge.released):
                yield self._passed_on(held)  # the text is judged: it goes out before the tool calls are
            items = self._end_items()
            self._passed(items, screen(self.guard, items))
        except GuardViolation as violation:
            yield from self._released_before_stop(held, judge, violation)
            raise
        finally:
            judge.close()
            # The provider stops generating when its stream is closed: at once, or when a read in flight returns.
            reader.close()
        while held:
            yield self._passed_on(held)

    async def arun(self, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        judge = self._open(asynchronous=True)
        held: deque[_Held] = deque()
        fed = 0
        turn = _LoopTurns()
        # The next chunk is raced against the monitor's check in flight: judged text goes out when its
        # verdict is back, not when the model sends its next token (``wakeup.py``).
        race = UpstreamRace(chunks)
        try:
            while True:
                try:
                    fresh, chunk = await race.next(judge.verdict_waiters() if isinstance(judge, MonitorScreen) else ())
                except StopAsyncIteration:
                    break
                if not fresh:
                    await judge.arelease()  # type: ignore[union-attr]
                else:
                    fed, text = self._hold(chunk, held, fed)
                    if text:
                        await judge.acheck(text)
                while self._ready(held, judge.released):
                    yield self._passed_on(held)
                    await turn.taken()
            tail = self._cr_tail()
            if tail is not None:
                fed, text = self._hold(tail, held, fed)
                await judge.acheck(text)
            await judge.afinish()
            self._gates_opened()
            while self._ready(held, judge.released):
                yield self._passed_on(held)  # an answer held whole (no sentence end) goes out here, every chunk
                await turn.taken()
            # Added up (every chunk) and read on a worker thread once large: 40,000 chunks held the loop (rt55b F2).
            items = await built_off_loop(self._end_items, (self._whole, self._run))
            self._passed(items, await ascreen(self.guard, items))
        except GuardViolation as violation:
            for chunk in self._released_before_stop(held, judge, violation):
                yield chunk
                await turn.taken()
            raise
        finally:
            judge.close()
            await race.aclose()  # a read still in flight is cancelled before the upstream is closed
        while held:
            yield self._passed_on(held)
            await turn.taken()


#: Chunks a held stream releases back to back between two turns of the event loop (`_LoopTurns`).
_CHUNKS_PER_TURN = 32


class _LoopTurns:
    """Gives the event loop a turn every `_CHUNKS_PER_TURN` chunks released. Each chunk a consumer takes runs its
    callbacks (LangGraph's messages stream, tracers) before it asks for the next, and nothing awaited there
    suspends: an answer held whole and released at its end (no sentence end under ``release_unit="sentence"``)
    held the loop for all of them, 1.1-1.7 s for 40,000 chunks (rt55b F2). The chunks stay as they were judged."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = 0

    async def taken(self) -> None:
        self._count += 1
        if self._count % _CHUNKS_PER_TURN == 0:
            await asyncio.sleep(0)
