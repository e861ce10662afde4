"""How `GuardedLLM` turns the wrapped LLM's stream chunks into chunks that carry only judged text.

A provider's chunk repeats its text in many places: ``delta``, the (often cumulative)
``message.content`` and its blocks, ``raw`` (the provider's own chunk object), ``logprobs``,
``additional_kwargs`` (``thinking_delta``), the message's ``additional_kwargs`` (``tool_calls``).
Held-back text must not leave through any of them, so a guarded chunk is *built* from what was
judged, never copied from the provider's chunk and trimmed:

- every chunk before the last: ``delta`` = the text just released, ``message`` = the role and the
  text released so far (and the released thinking, when the model streams reasoning); no ``raw``,
  no ``logprobs``, no tool calls; ``additional_kwargs`` keeps only numbers (token counts);
- the last chunk, once the whole answer and its tool calls were judged, and the text its ``raw`` and
  its message's ``additional_kwargs`` hold beside the answer (`._messages.reply_text`): the provider's
  final message (tool calls included, which an agent reads there) with the judged text, its ``raw``.

The text of a chunk is its ``delta``; an LLM that sends no deltas is read from the growth of its
message text (cumulative), the message text itself (per-chunk), or what it changed of the last one (a
snapshot that rewrites the text: held to the stream's end, `_Growth`).
"""

from __future__ import annotations

import gc
import inspect
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    TextBlock,
    ThinkingBlock,
)
from qwenguard.core.streaming.wakeup import arelease_judged, release_judged

from ._messages import answer_text, block_text, message_text, thinking_extra

__all__ = [
    "ActionHold",
    "AnswerFeed",
    "ChatChunks",
    "CompletionChunks",
    "aclose_upstream",
    "close_upstream",
    "plain_numbers",
    "unread_text",
]

logger = logging.getLogger("qwenguard.llamaindex")


def plain_numbers(extra: dict[str, Any]) -> dict[str, Any]:
    """The entries of a chunk's ``additional_kwargs`` that cannot carry text (token counts)."""
    return {k: v for k, v in extra.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def unread_text(message: ChatMessage) -> str:
    """Text a final message carries outside the streamed deltas (citations, documents, inline data that is text,
    words in a thinking block's signature): judged at the end with the tool calls, since no monitor saw it."""
    return "\n".join(t for b in message.blocks if (t := _unstreamed(b)))


def _unstreamed(block: Any) -> str:
    """What `block_text` reads of a block that no monitor saw: all of it but streamed answer text and reasoning
    (GoogleGenAI hands a reply's inline data over as an `ImageBlock` of the last chunk, text/plain included)."""
    if isinstance(block, TextBlock):
        return ""  # streamed, judged by the monitor
    if isinstance(block, ThinkingBlock):
        return thinking_extra(block)  # its content was streamed, judged by the monitor with the answer
    return block_text(block)


#: A snapshot stream's text fed to the guard, at most, as a multiple of its current text (and `_REWRITE_SLACK` more):
#: past it the rest is not fed, and the last snapshot is judged whole at the end anyway.
_REWRITE_FACTOR = 2
_REWRITE_SLACK = 1024
#: The shortest text a chunk is taken to rewrite (shorter ones: per-chunk pieces that share a character by chance).
_REWRITE_MIN = 8


def _common_prefix(a: str, b: str) -> int:
    """The length of the common start of ``a`` and ``b`` (a binary search over slices: C-speed comparisons)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _common_suffix(a: str, b: str, limit: int) -> int:
    """The length of the common end of ``a`` and ``b``, at most ``limit``."""
    low, high = 0, min(limit, len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[len(a) - mid :] == b[len(b) - mid :]:
            low = mid
        else:
            high = mid - 1
    return low


class _Text:
    """Text built piece by piece, joined when read: adding a piece costs its own length. (``self.text += piece``
    copies the whole text each time, an attribute's string being shared: a stream of 4-character deltas cost 2.7 s
    for 200,000 characters, 9.9 s for 400,000, on the event loop of an async stream.)"""

    __slots__ = ("_parts", "length")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.length = 0

    def add(self, piece: str) -> None:
        if piece:
            self._parts.append(piece)
            self.length += len(piece)

    def set(self, text: str) -> None:
        self._parts = [text] if text else []
        self.length = len(text)

    def value(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""


class _Growth:
    """The new text of a chunk: its delta, else what its whole text adds to the text so far.

    A chunk without a delta carries the text so far (cumulative: the new text is its growth), its own piece
    (per-chunk text), or the text so far rewritten: a snapshot (LlamaIndex's `StructuredLLM` streams each partial
    object's JSON whole, ``{"topic":"Par"}`` then ``{"topic":"Paris"}``). A snapshot's new text is what it changed
    of the last one, between their common start and end: fed whole each time, every snapshot was judged again (work
    growing with the square of the answer) and the guarded text was every snapshot end to end. A chunk rewrites when
    the text it shares with the last one, at its start and end, is at least half of that text (a piece shares a few
    characters by chance); what is fed of a rewriting stream is bounded (`_REWRITE_FACTOR`). Its pieces are judged,
    but a snapshot is text made of them that may never have been judged as it reads, so once a stream rewrites
    (``rewritten``), its text is held: the caller judges the last snapshot (``now``) whole and hands it over at the
    end."""

    def __init__(self) -> None:
        self._seen = _Text()  # all the text fed
        self._now = _Text()  # the text as the model has it now (``seen`` but in a stream that rewrote)
        self.rewritten = False
        self._fed = 0  # characters of a rewriting stream fed

    @property
    def seen(self) -> str:
        return self._seen.value()

    @property
    def now(self) -> str:
        return self._now.value()

    def step(self, delta: str | None, whole: str) -> str:
        if delta is not None:
            new = delta
            self._now.add(delta)
        elif len(whole) >= self._now.length and whole.startswith(self.now):
            new = whole[self._now.length :]
            self._now.set(whole)
        elif (changed := self._changed(whole)) is not None:
            self.rewritten = True
            self._now.set(whole)
            room = _REWRITE_FACTOR * len(whole) + _REWRITE_SLACK - self._fed
            new = changed if len(changed) <= room else ""
        else:  # per-chunk text, not cumulative
            new = whole
            self._now.add(whole)
        if self.rewritten:
            self._fed += len(new)
        self._seen.add(new)
        return new

    def _changed(self, whole: str) -> str | None:
        """What ``whole`` changed of the text so far, when it rewrites it (None: a piece of its own)."""
        # A rewrite shares at least half the text so far with it, at most ``whole``'s length: a short piece is its
        # own, told without reading the text so far (joined only when it may be a rewrite).
        if self._now.length < _REWRITE_MIN or 2 * len(whole) < self._now.length:
            return None
        last = self.now
        start = _common_prefix(last, whole)
        end = _common_suffix(last, whole, min(len(last), len(whole)) - start)
        if start == 0 or 2 * (start + end) < len(last):
            return None
        return whole[start : len(whole) - end]


class ChatChunks:
    """Reads the wrapped LLM's chat chunks (text and thinking deltas) and builds the guarded ones."""

    def __init__(self) -> None:
        self.last: ChatResponse | None = None
        self.text = ""  # released answer text
        self.thinking = ""  # released reasoning text
        self._text_in = _Growth()
        self._thinking_in = _Growth()

    def read(self, chunk: ChatResponse) -> tuple[str, str]:
        """``(text delta, thinking delta)`` of an inner chunk."""
        self.last = chunk
        text = self._text_in.step(chunk.delta, answer_text(chunk.message))
        thinking_delta = chunk.additional_kwargs.get("thinking_delta")
        thinking_whole = "".join(b.content or "" for b in chunk.message.blocks if isinstance(b, ThinkingBlock))
        thinking = self._thinking_in.step(thinking_delta if isinstance(thinking_delta, str) else None, thinking_whole)
        return text, thinking

    @property
    def streamed(self) -> str:
        """All the answer text read from the wrapped LLM so far (what an agent adds up from the deltas)."""
        return self._text_in.seen

    @property
    def answer(self) -> str:
        """The answer text as the consumer gets it in the end: the text so far, or a rewritten one as it stands."""
        return self._text_in.now

    @property
    def reasoned(self) -> str:
        """All the reasoning text read from the wrapped LLM so far."""
        return self._thinking_in.seen

    def rewritten(self) -> str:
        """The answer and reasoning of a stream that rewrote them (`_Growth`), as they stand: judged whole at the
        end, since the consumer gets them whole ("" when neither was rewritten)."""
        parts = (self._thinking_in, self._text_in)
        return "\n".join(g.now for g in parts if g.rewritten and g.now)

    def partial(self, text: str, thinking: str = "") -> ChatResponse | None:
        """A chunk carrying released text only (``None`` when nothing was released). A rewritten text is held."""
        text = "" if self._text_in.rewritten else text
        thinking = "" if self._thinking_in.rewritten else thinking
        if not text and not thinking:
            return None
        self.text += text
        self.thinking += thinking
        assert self.last is not None
        blocks: list[Any] = [ThinkingBlock(content=self.thinking)] if self.thinking else []
        blocks.append(TextBlock(text=self.text))
        extra = plain_numbers(self.last.additional_kwargs)
        if thinking:
            extra["thinking_delta"] = thinking
        return ChatResponse(
            message=ChatMessage(role=self.last.message.role, blocks=blocks), delta=text, additional_kwargs=extra
        )

    def final(self, text: str, thinking: str = "") -> ChatResponse:
        """The last chunk: the provider's final message with the judged text (all of it by now; a rewritten text as
        it stands, judged whole: `rewritten`)."""
        assert self.last is not None
        delta: str | None = text
        if self._text_in.rewritten:
            self.text, delta = self._text_in.now, None
        else:
            self.text += text
        if self._thinking_in.rewritten:
            self.thinking, thinking = self._thinking_in.now, ""
        else:
            self.thinking += thinking
        last = self.last
        blocks: list[Any] = []
        placed_text = placed_thinking = False
        for block in last.message.blocks:
            if isinstance(block, TextBlock):
                if not placed_text:
                    blocks.append(TextBlock(text=self.text))
                placed_text = True
            elif isinstance(block, ThinkingBlock):
                if not placed_thinking and self.thinking:
                    blocks.append(block.model_copy(update={"content": self.thinking}))
                placed_thinking = True
            else:
                blocks.append(block)
        if not placed_text and (self.text or not blocks):
            blocks.insert(0, TextBlock(text=self.text))
        if not placed_thinking and self.thinking:
            blocks.insert(0, ThinkingBlock(content=self.thinking))
        extra = plain_numbers(last.additional_kwargs)
        if thinking:
            extra["thinking_delta"] = thinking
        return last.model_copy(
            update={
                "message": last.message.model_copy(update={"blocks": blocks}),
                "delta": delta,
                "additional_kwargs": extra,
            }
        )


class AnswerFeed:
    """A chat stream's reasoning and answer text fed to one monitor, as one response, and told apart once released.

    `GuardedLLM.chat` judges the reasoning and the text of an answer joined (`._messages.message_text`: a
    `ThinkingBlock`, ``"\\n"``, the text); judged in two monitors, a clause split between them ("The plan: Mix" |
    " ammonium nitrate...") was never read whole (rt62f F3). So the pieces go to the one monitor in the order they
    arrive (a chunk's reasoning before its text, as the blocks are read), with ``"\\n"`` where the stream turns from
    one to the other, and what the monitor releases (a prefix of what it was fed) is cut back into reasoning and
    text by the lengths fed: the consumer gets each as before; the joining newline is never released to it."""

    _SEP = "\n"

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor
        # [kind, length] of the fed text not released yet, in order ("text", "thinking", "sep"): one entry a turn.
        self._parts: deque[list[Any]] = deque()
        self._kind: str | None = None  # the kind fed last

    def _join(self, text: str, thinking: str) -> str:
        pieces = []
        for kind, piece in (("thinking", thinking), ("text", text)):
            if not piece:
                continue
            if self._kind is not None and kind != self._kind:
                self._add("sep", self._SEP)
                pieces.append(self._SEP)
            self._add(kind, piece)
            pieces.append(piece)
        return "".join(pieces)

    def _add(self, kind: str, piece: str) -> None:
        if self._parts and self._parts[-1][0] == kind:
            self._parts[-1][1] += len(piece)
        else:
            self._parts.append([kind, len(piece)])
        self._kind = kind

    def _split(self, released: str) -> tuple[str, str]:
        """``(text, thinking)`` of released text (the monitor releases what it was fed, in order)."""
        text: list[str] = []
        thinking: list[str] = []
        at = 0
        while at < len(released) and self._parts:
            part = self._parts[0]
            take = min(part[1], len(released) - at)
            if part[0] != "sep":
                (text if part[0] == "text" else thinking).append(released[at : at + take])
            at += take
            part[1] -= take
            if not part[1]:
                self._parts.popleft()
        return "".join(text), "".join(thinking)

    def feed(self, text: str, thinking: str) -> tuple[str, str]:
        """Feed a chunk's ``text`` and ``thinking``; ``(text, thinking)`` released now."""
        joined = self._join(text, thinking)
        return self._split(self.monitor.feed(joined)) if joined else ("", "")

    async def afeed(self, text: str, thinking: str) -> tuple[str, str]:
        """Async twin of `feed`."""
        joined = self._join(text, thinking)
        return self._split(await self.monitor.afeed(joined)) if joined else ("", "")

    def release(self) -> tuple[str, str]:
        """``(text, thinking)`` that the verdicts back let out now, without new text (``wakeup.py``)."""
        return self._split(release_judged(self.monitor))

    async def arelease(self) -> tuple[str, str]:
        """Async twin of `release`."""
        return self._split(await arelease_judged(self.monitor))

    def finish(self) -> tuple[str, str]:
        """Judge the rest; ``(text, thinking)`` of the last window."""
        return self._split(self.monitor.finish())

    async def afinish(self) -> tuple[str, str]:
        """Async twin of `finish`."""
        return self._split(await self.monitor.afinish())


class ActionHold:
    """Holds judged answer text back from where an agent reads a tool call out of it, until the end of the stream.

    A ReAct step's ``Action Input:`` arguments and a CodeAct answer's ``<execute>`` code are tool calls written as
    text: the agent parses them once the step has ended, and `GuardedLLM` judges them as tool calls then, with the
    arguments read as the agent reads them (``\\u004d\\u0069\\u0078`` is "Mix" to its JSON reader, not to the
    stream monitor). So the text from the first ``Action Input:`` (the parser needs one before any arguments) or
    ``<execute>`` on stays here, and goes out with the last chunk, after those checks passed; never when they
    failed. Text before it is released as the monitor judges it, less a tail that may be the start of one of these
    markers (a few characters, held until the next release tells). Found in the released text itself (what the
    agent reads), each character looked at a bounded number of times."""

    MARKS = ("Action Input:", "<execute>")
    _LONGEST = max(map(len, MARKS))

    def __init__(self, active: bool = True) -> None:
        self.active = active  # False: holds nothing (see `for_messages`)
        self._held: list[str] = []  # from the marker on (a list: a long input arrives in many pieces)
        self._maybe = ""  # not holding yet: the end of the released text that may start a marker
        self.holding = False

    @classmethod
    def for_messages(cls, messages: Sequence[ChatMessage]) -> ActionHold:
        """A hold for a call whose input shows the model one of the markers (a ReAct header, a CodeAct prompt, an
        earlier step); one that holds nothing otherwise: an agent's parser takes only the exact markers, which a
        model never shown them does not write, and a FunctionAgent answer that mentioned "Action Input:" in
        passing arrived at its end."""
        return cls(any(mark in message_text(m) for m in messages for mark in cls.MARKS))

    def take(self, released: str) -> str:
        """What of newly released text may go out now (the rest is held)."""
        if not released or not self.active:
            return released
        if self.holding:
            self._held.append(released)
            return ""
        # Not holding: a marker begins within the kept end and the new text (the kept end is shorter than one).
        text = self._maybe + released
        found = [i for m in self.MARKS if (i := text.find(m)) >= 0]
        if found:
            at = min(found)
            self._held, self._maybe, self.holding = [text[at:]], "", True
            return text[:at]
        keep = self._partial(text)
        self._maybe = text[len(text) - keep :]
        return text[: len(text) - keep]

    def _partial(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins a marker."""
        for size in range(min(len(text), self._LONGEST - 1), 0, -1):
            end = text[-size:]
            if any(m.startswith(end) for m in self.MARKS):
                return size
        return 0

    def finish(self, tail: str) -> str:
        """The held text and the stream's last judged text: all of it, once the final checks passed."""
        held = self._maybe + "".join(self._held)
        self._held, self._maybe = [], ""
        return held + tail


class CompletionChunks:
    """The completion twin of `ChatChunks`."""

    def __init__(self) -> None:
        self.last: CompletionResponse | None = None
        self.text = ""
        self._in = _Growth()
        self._thinking = _Text()

    def read(self, chunk: CompletionResponse) -> tuple[str, str]:
        """``(text delta, thinking delta)`` of an inner chunk. A chat model's stream handed over as a completion
        (LlamaIndex's ``stream_chat_to_completion_decorator``) keeps its reasoning in ``additional_kwargs``
        (``thinking_delta``) alone: judged with the text, as `GuardedLLM.complete` judges a reply's reasoning, and
        never handed over (no guarded chunk carries it)."""
        self.last = chunk
        thinking = chunk.additional_kwargs.get("thinking_delta")
        thinking = thinking if isinstance(thinking, str) else ""
        self._thinking.add(thinking)
        return self._in.step(chunk.delta, chunk.text or ""), thinking

    @property
    def streamed(self) -> str:
        """All the text read from the wrapped LLM so far."""
        return self._in.seen

    @property
    def reasoned(self) -> str:
        """All the reasoning read from the wrapped LLM so far."""
        return self._thinking.value()

    @property
    def answer(self) -> str:
        """The text as the consumer gets it in the end (see `ChatChunks.answer`)."""
        return self._in.now

    def rewritten(self) -> str:
        """The text of a stream that rewrote it, as it stands ("" otherwise): see `ChatChunks.rewritten`."""
        return self._in.now if self._in.rewritten else ""

    def partial(self, text: str) -> CompletionResponse | None:
        if not text or self._in.rewritten:
            return None
        self.text += text
        assert self.last is not None
        return CompletionResponse(
            text=self.text, delta=text, additional_kwargs=plain_numbers(self.last.additional_kwargs)
        )

    def final(self, text: str) -> CompletionResponse:
        assert self.last is not None
        delta: str | None = text
        if self._in.rewritten:
            self.text, delta = self._in.now, None
        else:
            self.text += text
        return self.last.model_copy(
            update={"text": self.text, "delta": delta, "additional_kwargs": plain_numbers(self.last.additional_kwargs)}
        )


# -- closing the upstream ---------------------------------------------------------------------
# A stopped stream must stop the producer too (no more tokens generated, or billed). Closing the
# provider's generator is not always enough: llama-index-llms-openai iterates an `openai.Stream`
# whose own generator references it back, so once the generator is closed the HTTP response stays
# open until the next full garbage collection, and the server keeps streaming. So the HTTP streams
# a generator chain holds (found through its frames, before they are cleared) are closed as well.
_HTTP_STREAMS = {("openai", "Stream"), ("openai", "AsyncStream"), ("httpx", "Response")}


def _is_http_stream(obj: Any) -> bool:
    cls = type(obj)
    return (cls.__module__.split(".")[0], cls.__name__) in _HTTP_STREAMS and callable(getattr(obj, "close", None))


def _http_streams(gen: Any, depth: int = 4) -> list[Any]:
    found: list[Any] = []
    seen: set[int] = set()
    frontier = [gen]
    for _ in range(depth):
        nxt = []
        for obj in frontier:
            for ref in gc.get_referents(obj):
                if id(ref) in seen:
                    continue
                seen.add(id(ref))
                if inspect.isgenerator(ref) or inspect.isasyncgen(ref):
                    nxt.append(ref)
                elif _is_http_stream(ref):
                    found.append(ref)
        frontier = nxt
    return found


def close_upstream(gen: Any) -> None:
    """Close a sync stream and the HTTP responses it holds."""
    streams = _http_streams(gen) if inspect.isgenerator(gen) else []
    try:
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    finally:
        for stream in streams:
            try:
                stream.close()
            except Exception:  # closing must not mask the outcome
                logger.debug("closing %r failed", stream, exc_info=True)


async def aclose_upstream(gen: Any) -> None:
    """Close an async stream and the HTTP responses it holds."""
    streams = _http_streams(gen) if inspect.isasyncgen(gen) else []
    try:
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            await aclose()
    finally:
        for stream in streams:
            try:
                result = (getattr(stream, "aclose", None) or stream.close)()
                if inspect.isawaitable(result):
                    await result
            except Exception:  # closing must not mask the outcome
                logger.debug("closing %r failed", stream, exc_info=True)
