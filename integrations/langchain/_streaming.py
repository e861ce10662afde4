"""Judging a streamed answer while it streams: two engines for the callbacks and the output runnable.

``"gate"`` — `StreamGate`, the default of the callback handlers.

A LangChain callback cannot hold text back: ``BaseChatModel.stream`` yields a chunk (and LangGraph's
``stream_mode="messages"`` handler emits it) right after ``on_llm_new_token`` returns. So the gate
below judges, synchronously, everything streamed so far *including* the chunk at hand, and raises
on the chunk where the guard first finds a violation: the consumer receives exactly the prefix the
guard judged safe, and never the chunk that made it unsafe.

Trade-off (documented in the README): this is the strictest setting — no hold-back, no debounce
(Qwen3Guard-Stream's official rule waits for two consecutive unsafe tokens, which would let the first
unsafe word through) — and it costs one guard check per chunk with text. ``min_chars`` batches tiny
chunks at the price of letting up to ``min_chars - 1`` unjudged characters of a chunk group through;
the default (1) judges every chunk.

The window the guard reads is the last ``window_chars`` characters of the answer (a sliding window,
never the whole prefix, so long answers cost O(window) per check), with the user's request as
context.

``"monitor"`` — `MonitorScreen`, a `qwenguard.core` StreamMonitor per stream (``guard.stream``), the
default of `guard_output`. It is the cheap engine with a Qwen3Guard-Stream model (O(1) per token) and
bounds Gen checks to sentence windows otherwise, but it judges text *after* it arrives: the token
engine commits the last few BPE tokens of a delta only when more text comes, and the Gen-window
engine checks whole sentences in the background. Where text can be held back (a runnable that yields
chunks only once the monitor released them) that keeps the guarantee; in a callback, which cannot hold
anything back, the violation is raised on the chunk where the monitor finds it, which may be a chunk
or a sentence after the unsafe words went out. The handlers therefore default to ``"gate"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from qwenguard.core import Decision, Guard, Stage, enforce
from qwenguard.core.formats.conversations import response_conversation

from ._messages import Item

__all__ = ["StreamGate", "GateScreen", "MonitorScreen", "open_screen", "Engine", "DEFAULT_WINDOW_CHARS"]

Engine = Literal["gate", "monitor"]

#: Characters of the answer the guard reads per check (the tail of the answer so far).
DEFAULT_WINDOW_CHARS = 2000

# A character that ends a word: whitespace or punctuation (matched against the last character only).
_WORD_END = re.compile(r"[\s.,;:!?)\]}\"'…。，！？]")


class StreamGate:
    """One streamed answer. ``pending(delta)`` says what to check (or ``None``); ``settle`` raises.

    The I/O (sync or async guard call) is the caller's; the logic is written once here.
    """

    def __init__(
        self,
        context: Sequence[dict[str, str]],
        *,
        window_chars: int = DEFAULT_WINDOW_CHARS,
        min_chars: int = 1,
        whole_words: bool = False,
    ) -> None:
        if window_chars < 1 or min_chars < 1:
            raise ValueError("window_chars and min_chars must be >= 1")
        self.context = [dict(m) for m in context]
        if not any(m.get("role") == "user" for m in self.context):
            # Response moderation reads an answer *to* a user turn (the official format): without the request
            # (a bare `guard_output`), the answer follows an empty one, as in the monitor engine.
            self.context.insert(0, {"role": "user", "content": ""})
        # Only where the caller can hold text back: judge complete words (a half word is noise to the guard).
        self.whole_words = whole_words
        self.window_chars = window_chars
        self.min_chars = min_chars
        # Only the last ``window_chars`` characters are kept: a check never reads more, and appending to
        # the whole answer would cost O(answer) per chunk on long streams.
        self.tail = ""
        self.length = 0  # characters streamed so far
        self.judged = 0  # characters of the answer covered by a verdict
        self.decision: Decision | None = None  # the violation, once found

    def pending(self, delta: str, *, final: bool = False) -> Item | None:
        """Append ``delta``; return the check that must pass before it is released, if one is due."""
        if self.decision is not None:  # a violation (or fail-closed error) already stopped this stream
            enforce(self.decision)
        if delta:
            self.tail = (self.tail + delta)[-self.window_chars :]
            self.length += len(delta)
        unjudged = self.length - self.judged
        if unjudged <= 0 or (not final and unjudged < self.min_chars):
            return None
        if not final:
            if self.whole_words and not _WORD_END.match(self.tail[-1:]):
                return None  # the word is not complete yet: hold it
            if not self.whole_words and not delta.strip():
                return None  # whitespace alone cannot make judged-safe text unsafe: judged with the next word
        item = Item(Stage.STREAM, response_conversation(self.context, self.tail), label="streamed answer")
        item.extra["end"] = self.length
        item.extra["start"] = self.length - len(self.tail)
        return item

    def settle(self, item: Item, decision: Decision) -> None:
        """Record the verdict on ``item``; raise `GuardViolation`/`GuardUnavailable` when it blocks."""
        if decision.allowed:
            self.judged = item.extra["end"]
            return
        # The violation is in the text judged by this check and not before: point at the new part.
        decision = replace(decision, offset=self.judged)
        self.decision = decision
        enforce(decision)


def check_gate(guard: Guard, gate: StreamGate, delta: str, *, final: bool = False) -> None:
    item = gate.pending(delta, final=final)
    if item is not None:
        gate.settle(item, guard.check_many([item.pair])[0])


async def acheck_gate(guard: Guard, gate: StreamGate, delta: str, *, final: bool = False) -> None:
    item = gate.pending(delta, final=final)
    if item is not None:
        gate.settle(item, (await guard.acheck_many([item.pair]))[0])


class GateScreen:
    """The ``"gate"`` engine behind one interface with `MonitorScreen`: ``check``/``acheck`` one delta.

    ``hold=True`` (runnables, which can hold chunks back): judge at word ends only and release what
    was judged. ``hold=False`` (callbacks): judge every chunk; everything fed counts as released."""

    def __init__(
        self, guard: Guard, context: Sequence[dict[str, str]], *, window_chars: int, min_chars: int, hold: bool = False
    ) -> None:
        self.guard = guard
        self.hold = hold
        self.gate = StreamGate(context, window_chars=window_chars, min_chars=min_chars, whole_words=hold)

    @property
    def released(self) -> int:
        """Characters that may be passed on now."""
        return self.gate.judged if self.hold else self.gate.length

    def check(self, delta: str, *, final: bool = False) -> None:
        check_gate(self.guard, self.gate, delta, final=final)

    async def acheck(self, delta: str, *, final: bool = False) -> None:
        await acheck_gate(self.guard, self.gate, delta, final=final)

    def close(self) -> None:
        pass


def _monitor_prompt(context: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation a monitor opens with: up to the last user turn (a stream follows a user turn)."""
    turns = [dict(m) for m in context]
    while turns and turns[-1].get("role") != "user":
        turns.pop()
    return turns or [{"role": "user", "content": ""}]


class MonitorScreen:
    """The ``"monitor"`` engine: a StreamMonitor (sync or async) fed delta by delta.

    ``released`` is how many characters the monitor has released (judged, plus ``holdback``)."""

    def __init__(self, guard: Guard, context: Sequence[dict[str, str]], *, asynchronous: bool, **options: Any) -> None:
        self.guard = guard
        options.setdefault("screen_prompt", False)  # the input is screened on its own, as a prompt
        prompt = _monitor_prompt(context)
        self.monitor = guard.astream(prompt, **options) if asynchronous else guard.stream(prompt, **options)
        self._released = 0

    @property
    def released(self) -> int:
        return self._released

    def check(self, delta: str, *, final: bool = False) -> None:
        if delta:
            self._released += len(self.monitor.feed(delta))
        if final and not self.monitor.closed:
            self._released += len(self.monitor.finish())

    async def acheck(self, delta: str, *, final: bool = False) -> None:
        if delta:
            self._released += len(await self.monitor.afeed(delta))
        if final and not self.monitor.closed:
            self._released += len(await self.monitor.afinish())

    def close(self) -> None:
        self.monitor.close()


def open_screen(
    guard: Guard,
    context: Sequence[dict[str, str]],
    engine: Engine,
    *,
    asynchronous: bool,
    hold: bool = False,
    window_chars: int = DEFAULT_WINDOW_CHARS,
    min_chars: int = 1,
    monitor_options: dict[str, Any] | None = None,
) -> GateScreen | MonitorScreen:
    """A screen for one streamed answer with the chosen engine (``hold``: the caller can hold text back)."""
    if engine == "gate":
        return GateScreen(guard, context, window_chars=window_chars, min_chars=min_chars, hold=hold)
    if engine == "monitor":
        return MonitorScreen(guard, context, asynchronous=asynchronous, **(monitor_options or {}))
    raise ValueError(f"stream engine must be 'gate' or 'monitor', got {engine!r}")
