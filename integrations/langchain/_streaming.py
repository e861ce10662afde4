"""Judging a streamed answer (and streamed tool-call arguments) while it streams: the engines.

Where text can be held back (`guard_output`, `GuardRunnable`, `GuardMiddleware`: see ``_holding.py``)
a chunk is passed on only once a verdict covers it. A callback cannot hold anything: the model yields a
chunk (and LangGraph's ``stream_mode="messages"`` handler emits it) right after ``on_llm_new_token``
returns; all a callback can do is *wait* before returning, which stalls the stream, or raise, which
stops it. The engines are three answers to that:

``"pipelined"`` — `PipelinedScreen`, the callbacks' default with a Gen guard. Each chunk starts a check
of the answer so far in the background (up to ``max_in_flight`` at once; a busy guard's checks
coalesce) and the chunk goes out at once. A check that comes back unsafe raises on the next chunk, so
the stream stops one judge latency after the unsafe words arrived. The consumer never holds more than
``max_unjudged`` characters that no verdict covers: past that, the callback waits for the verdicts in
flight. Added cost per token: close to zero while the guard keeps up; exposure: at most the text that
streams while one check is in flight, and never more than ``max_unjudged`` characters plus the chunk
in flight. A guard that answers faster than a thread hand-off (`INLINE_BELOW_S`, every check timed) is
judged in the stream's path instead, chunk by chunk as ``"gate"`` does, until checks are slow again.

``"gate"`` — the same with ``max_unjudged=0``: every chunk is judged before it is yielded (one Gen
check per chunk, in the stream's path: a 70 ms guard makes a 20 ms/token stream run at 70 ms/token).
Exposure: none beyond what the guard judges safe on its own (the first word of a multi-word phrase). A
holding caller (``hold=True``) passes a judged word on only once a later check has shown it with the word
after it, unless it ends a sentence (`StreamGate.release_point`).
Its checks go through a `GateSession` (``qwenguard.core.streaming.gate_session``): with a local Gen guard
(decode engine on) the model keeps its cache of the previous check, so a chunk costs its own tokens,
the closing instructions and the verdict, flat in the answer's length, where a full check re-reads
the instructions and the whole window every chunk. A remote guard (or ``engine=False``) gets full checks.

``"monitor"`` — `MonitorScreen`, a `qwenguard.core` StreamMonitor per stream (``guard.stream``): the
cheap engine with a Qwen3Guard-Stream model (O(1) per token), and the callbacks' default when the
guard has one. In a callback it releases at once (``holdback=0``) and flags on the first unsafe token.

The window a Gen check reads is bounded (never the whole prefix: O(window) per check), with the user's
request as context. Every engine reads a *growing* window (`GrowingWindow`): the whole answer up to
``window_chars`` characters (the same text as the last ``window_chars``), then a window that grows by
appending and, once over ``window_chars``, hops
forward to its last ``window_chars // 2`` characters. Consecutive checks then share their prefix, which
is what lets the session's cache (or a remote engine's prefix cache) reuse the previous check; a sliding
tail changes its first character every chunk and would re-read the whole window every time. The price:
past ``window_chars`` characters a check sees between half a window and a whole one of the latest text
(never less than ``window_chars // 2``), where the sliding tail always saw a whole one; one check per hop
re-reads half a window. Tool-call arguments stream through the same engine as text, each call judged as
the assistant's action (``Tool call: name({...``). The ``"pipelined"`` engine's checks overlap, so it
keeps a small pool of sessions (`SESSIONS_PER_STREAM`, a `GenSessionPool`): a check takes an idle
one, continuing from the longest prefix any of them holds, or waits for one (it stays in flight
meanwhile; later chunks coalesce into the next check).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import re
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import replace
from typing import Any, Literal, Union

from qwenguard.core import Decision, Guard, GuardViolation, InputTooLarge, Stage, enforce
from qwenguard.core.backends.after_fork import ForkSafePool
from qwenguard.core.backends.gen_session_pool import SESSIONS_PER_STREAM
from qwenguard.core.formats.conversations import response_conversation, tool_call_conversation
from qwenguard.core.formats.json_reading import escapes_read
from qwenguard.core.streaming.gate_session import GateSession, GrowingWindow
from qwenguard.core.streaming.gen_windows import releasable
from qwenguard.core.streaming.task_ends import mark_read
from qwenguard.core.streaming.wakeup import arelease_judged, release_judged, verdict_waiters

from .._off_loop import OFF_LOOP_SIZE
from ._messages import Item

__all__ = [
    "StreamGate",
    "ToolCallGate",
    "GateScreen",
    "PipelinedScreen",
    "MonitorScreen",
    "Screen",
    "open_screen",
    "Engine",
    "DEFAULT_WINDOW_CHARS",
    "DEFAULT_MAX_UNJUDGED",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_SEGMENT",
]

Engine = Literal["pipelined", "gate", "monitor"]
ENGINES = ("pipelined", "gate", "monitor")

#: Characters of the answer the guard reads per check (the tail of the answer so far).
DEFAULT_WINDOW_CHARS = 2000
#: ``"pipelined"``: characters the consumer may receive before a verdict covers them.
DEFAULT_MAX_UNJUDGED = 16
#: ``"pipelined"``: checks of one stream running at once.
DEFAULT_MAX_IN_FLIGHT = 4
#: ``"pipelined"``: a guard whose checks take less than this is judged in the stream's path: handing such a
#: check to a worker thread costs the stream more (two thread switches under the GIL, ~60-100 us) than the
#: check itself, and nothing is left to hide.
INLINE_BELOW_S = 0.0002
#: Hold-back with a Gen guard: the shortest sentence the core monitor judges on its own. The core's
#: default (40) joins a short first sentence to the next; 1 releases each sentence once it is judged.
DEFAULT_SEGMENT = 1

# A character that ends a word: whitespace or punctuation (matched against the last character only).
_WORD_END = re.compile(r"[\s.,;:!?)\]}\"'…。，！？]")


# ================================================================================================
# Bookkeeping of one streamed text: what was fed, what a verdict covers. No I/O.
# ================================================================================================
class StreamGate:
    """One streamed answer: the tail the guard reads, how much is fed and how much is judged.

    ``pending(delta)`` says what to check (or ``None``); ``settle`` records a verdict and raises when it
    blocks. The I/O (sync or async guard call, now or in the background) is the caller's."""

    stage = Stage.STREAM
    label = "streamed answer"
    #: Characters of unread text whose check an async caller builds on the event loop at most (`aitem`).
    on_loop_chars = OFF_LOOP_SIZE

    def __init__(
        self,
        context: Sequence[dict[str, str]],
        *,
        window_chars: int = DEFAULT_WINDOW_CHARS,
        min_chars: int = 1,
        whole_words: bool = False,
        max_chars: int | None = None,
    ) -> None:
        if window_chars < 1 or min_chars < 1:
            raise ValueError("window_chars and min_chars must be >= 1")
        #: The guard's ``max_chars``: a streamed answer past it stops with `InputTooLarge`, as a check of it would be
        #: refused (the pipelined engine judged 32,000 characters under max_chars=20,000: rt55d, after rt55b F3).
        self.max_chars = max_chars
        self._too_large: InputTooLarge | None = None
        self.context = [dict(m) for m in context]
        if not any(m.get("role") == "user" for m in self.context):
            # Response moderation reads an answer *to* a user turn (the official format): without the request
            # (a bare `guard_output`), the answer follows an empty one, as in the monitor engine.
            self.context.insert(0, {"role": "user", "content": ""})
        # Only where the caller can hold text back: judge complete words (a half word is noise to the guard).
        self.whole_words = whole_words
        self.window_chars = window_chars
        self.min_chars = min_chars
        # At most ``window_chars`` characters are kept: a check never reads more, and appending to the whole
        # answer would cost O(answer) per chunk on long streams. The window grows by appending and hops by
        # half (`GrowingWindow`), so consecutive checks share a prefix for the sessions' caches.
        self.tail = ""
        self._window = GrowingWindow(window_chars) if window_chars >= 2 else None  # 1: the last character
        self.length = 0  # characters streamed so far
        self.judged = 0  # characters of the answer covered by a verdict (contiguous from 0)
        #: The end of the furthest check made so far, and the text fed since: a check must read all of it,
        #: even when a long stretch without a due check (or one large delta) has moved the window past it.
        self.issued = 0
        self._since_issued = ""
        #: Safe verdicts not yet joined to `judged` (the pipelined engine settles checks in any order).
        self._safe_spans: list[tuple[int, int]] = []
        #: Held callers (``whole_words``): where passed-on text may end while the stream is open, the judged
        #: text less its last word unless it ends a sentence (`releasable`: "Mix" waits for the check that
        #: shows "ammonium"). Set with each safe verdict, not per chunk.
        self.release_point = 0
        self.decision: Decision | None = None  # the violation (or fail-closed error), once found

    def add(self, delta: str) -> None:
        """Append ``delta`` (raises the recorded violation again once the stream is stopped)."""
        if self.decision is not None:
            enforce(self.decision)
        if self.max_chars is not None and self._too_large is None and self.length + len(delta) > self.max_chars:
            self._too_large = InputTooLarge(
                f"the {self.label} passed max_chars={self.max_chars:,} characters, the guard's bound for one check; "
                f"the stream is stopped (raise Guard(max_chars=...) for longer answers)"
            )
        if self._too_large is not None:
            raise self._too_large
        if delta:
            if self._window is not None:
                self.tail = self._window.add(delta)
            else:
                self.tail = (self.tail + delta)[-self.window_chars :]
            self.length += len(delta)
            self._since_issued += delta

    @property
    def unjudged(self) -> int:
        """Characters fed and not covered by a verdict (0 when they are whitespace only)."""
        n = self.length - self.judged
        if n <= 0:
            return 0
        if n <= len(self.tail) and not self.tail[-n:].strip():
            return 0  # whitespace alone cannot make judged-safe text unsafe
        return n

    def due(self, delta: str, *, final: bool = False) -> bool:
        """Is a check due now, after ``delta`` was added?"""
        unjudged = self.unjudged
        if unjudged <= 0 or (not final and unjudged < self.min_chars):
            return False
        if not final:
            if self.whole_words and not _WORD_END.match(self.tail[-1:]):
                return False  # the word is not complete yet: hold it
            if not self.whole_words and not delta.strip():
                return False  # whitespace: judged with the next word
        return True

    def item(self) -> Item:
        """The check of everything fed so far: its window, or all the text no check has read yet when that
        is longer (the guard windows a long text itself; nothing fed is ever marked judged unread)."""
        text = self.tail if len(self._since_issued) <= len(self.tail) else self._since_issued
        item = Item(self.stage, self._conversation(text), label=self.label)
        item.extra["end"] = self.length
        item.extra["start"] = self.length - len(text)
        self.issued, self._since_issued = self.length, ""
        return item

    def _conversation(self, text: str) -> list[dict[str, str]]:
        return response_conversation(self.context, text)

    async def aitem(self) -> Item:
        """`item`, built on a worker thread when what it reads is longer than `on_loop_chars` (rt62a F4: one chunk of
        200,000 characters of tool-call arguments was read on the event loop, 0.4-0.9 s)."""
        if max(len(self.tail), len(self._since_issued)) <= self.on_loop_chars:
            return self.item()
        return await asyncio.to_thread(self.item)

    async def apending(self, delta: str, *, final: bool = False) -> Item | None:
        """Async twin of `pending` (the check built off the loop when long: `aitem`)."""
        self.add(delta)
        return await self.aitem() if self.due(delta, final=final) else None

    def pending(self, delta: str, *, final: bool = False) -> Item | None:
        """Append ``delta``; return the check that must pass before it is released, if one is due."""
        self.add(delta)
        return self.item() if self.due(delta, final=final) else None

    def settle(self, item: Item, decision: Decision) -> None:
        """Record the verdict on ``item``; raise `GuardViolation`/`GuardUnavailable` when it blocks."""
        if self.decision is not None:
            enforce(self.decision)
        if decision.allowed:
            self._join_safe(item.extra["start"], item.extra["end"])
            behind = self.length - self.judged  # fed since the check was made (0 for held callers)
            if self.whole_words and behind <= len(self.tail):
                judged = self.tail[: len(self.tail) - behind]
                self.release_point = self.judged - (len(judged) - releasable(judged))
            return
        # The violation is in the text judged by this check and not before: point at the new part (held
        # callers: where release stopped, before the word this check showed with what follows it).
        decision = replace(decision, offset=self.release_point if self.whole_words else self.judged)
        self.decision = decision
        enforce(decision)

    def _join_safe(self, start: int, end: int) -> None:
        """Count ``[start, end)`` as judged once every character before ``start`` is: a check that comes back
        before an earlier one does not cover the text that earlier one read."""
        self._safe_spans.append((start, end))
        self._safe_spans.sort()
        while self._safe_spans and self._safe_spans[0][0] <= self.judged:
            self.judged = max(self.judged, self._safe_spans.pop(0)[1])


class ToolCallGate(StreamGate):
    """The streamed arguments of one tool call, judged as the assistant's action (``Tool call: name(...``), and as
    the tool reads them: a window holding a ``\\u`` or ``\\/`` escape is judged with its strings decoded, a string
    argument that is JSON itself decoded within (`escapes_read`; the consumer's ``tool_call_chunks`` parse and the
    tool's ``json.loads`` read it so, and the call was judged decoded only once the model had finished)."""

    stage = Stage.TOOL_CALL
    #: Its check reads the arguments as a tool's parsers do (`render_tool_call`: ~3-5 us a character of escapes).
    on_loop_chars = 1_000

    def __init__(self, name: str, context: Sequence[dict[str, str]], **options: Any) -> None:
        super().__init__(context, **options)
        self.name = name or "tool"
        self.label = f"tool call {self.name}"
        #: The name as it streamed (``""``: none yet), and how much of it a safe verdict read. A name streams to the
        #: consumer as the arguments do (a model may write a sentence there: rt69d F1), so it counts as unjudged
        #: text until a check has read it. A check reads it whole up to ``window_chars``; a longer name as the
        #: arguments are read: what no check was sent yet and a window before it (rt69k F3: 100,000 characters of
        #: name in 102 chunks sent 5.26 M characters to the guard).
        self._streamed_name = name
        self._name_judged = 0
        self._name_issued = 0  # how much of the name checks were sent
        self._name_spans: list[tuple[int, int]] = []  # safe reads of the name past ``_name_judged``
        self._name_epoch = 0  # another name (not a longer one): the reads of the one before count for nothing
        self._name_read = name or "tool"  # what the next check shows as the call's name

    @property
    def name_unjudged(self) -> int:
        """Characters of the call's name that no safe verdict has read."""
        return len(self._streamed_name) - self._name_judged

    @property
    def unjudged(self) -> int:
        return super().unjudged + self.name_unjudged

    def rename(self, name: str) -> None:
        """The call's name as it has streamed so far (LangChain adds its pieces up): the next check reads it."""
        if self.decision is not None:
            enforce(self.decision)
        if not name or name == self._streamed_name:
            return
        if not name.startswith(self._streamed_name):
            # another name, not a longer one: read whole again
            self._name_judged = self._name_issued = 0
            self._name_spans.clear()
            self._name_epoch += 1
        self._streamed_name = self.name = name
        self.label = f"tool call {name}"

    def add(self, delta: str) -> None:
        # The name goes to the guard with the arguments: it counts toward the guard's bound for one check (rt69k F3).
        if self.max_chars is not None and self._too_large is None:
            if self.length + len(delta) + len(self._streamed_name) > self.max_chars:
                self._too_large = InputTooLarge(
                    f"the {self.label} passed max_chars={self.max_chars:,} characters with its name, the guard's "
                    f"bound for one check; the stream is stopped (raise Guard(max_chars=...) for longer calls)"
                )
        super().add(delta)

    def due(self, delta: str, *, final: bool = False) -> bool:
        # A name is whole words by the time it streams on: due as soon as it grew (arguments wait as text does).
        return self.name_unjudged > 0 or super().due(delta, final=final)

    def item(self) -> Item:
        name = self._streamed_name
        start = 0 if len(name) <= self.window_chars else max(0, self._name_issued - self.window_chars)
        self._name_read = name[start:] or "tool"
        item = super().item()
        # What this check read of the name: [name_start, name_end) of the name of this epoch.
        item.extra["name_start"], item.extra["name_end"] = start, len(name)
        item.extra["name_epoch"] = self._name_epoch
        self._name_issued = len(name)
        return item

    def settle(self, item: Item, decision: Decision) -> None:
        super().settle(item, decision)  # raises when it blocks
        if item.extra.get("name_epoch") != self._name_epoch or "name_end" not in item.extra:
            return
        # A read counts once every character before it is judged (a later check may come back first: `_join_safe`).
        self._name_spans.append((item.extra["name_start"], item.extra["name_end"]))
        self._name_spans.sort()
        while self._name_spans and self._name_spans[0][0] <= self._name_judged:
            self._name_judged = max(self._name_judged, self._name_spans.pop(0)[1])

    def _conversation(self, text: str) -> list[dict[str, str]]:
        # The window only (O(window) a check, as building the conversation is); offsets stay the raw text's.
        read = escapes_read(text)
        # Rendered only until past the guard's bound (a check past it is refused: `add`): rt62a F2.
        return tool_call_conversation(
            self._name_read, text if read is None else read, self.context, max_chars=self.max_chars
        )


# ================================================================================================
# Engines: one interface (check/flush/finish, sync and async twins, `released`, close)
# ================================================================================================
class GateScreen:
    """Every due chunk judged in the stream's path, synchronously.

    ``hold=True`` (runnables, which can hold chunks back): judge at word ends only and release what
    was judged but its last word, which waits for the next check (all of it once the stream ended).
    ``hold=False`` (callbacks): judge every chunk; everything fed counts as released."""

    def __init__(
        self, guard: Guard, gate: StreamGate, *, hold: bool = False, session: GateSession | None = None
    ) -> None:
        self.guard = guard
        self.hold = hold
        self.gate = gate
        self.finished = False  # the stream ended: everything judged may go out
        #: Incremental checks of this stream (``None``: a full ``check_many`` per check).
        self.session = session

    def _decide(self, item: Item) -> Decision:
        if self.session is not None:
            return self.session.check(item.conversation)
        return self.guard.check_many([item.pair])[0]

    async def _adecide(self, item: Item) -> Decision:
        if self.session is not None:
            return await self.session.acheck(item.conversation)
        return (await self.guard.acheck_many([item.pair]))[0]

    @property
    def released(self) -> int:
        """Characters that may be passed on now."""
        if not self.hold:
            return self.gate.length
        return self.gate.judged if self.finished else self.gate.release_point

    def check(self, delta: str) -> None:
        item = self.gate.pending(delta)
        if item is not None:
            self.gate.settle(item, self._decide(item))

    async def acheck(self, delta: str) -> None:
        item = await self.gate.apending(delta)
        if item is not None:
            self.gate.settle(item, await self._adecide(item))

    def flush(self) -> None:
        item = self.gate.pending("", final=True)
        if item is not None:
            self.gate.settle(item, self._decide(item))
        self.finished = True

    async def aflush(self) -> None:
        item = await self.gate.apending("", final=True)
        if item is not None:
            self.gate.settle(item, await self._adecide(item))
        self.finished = True

    finish, afinish = flush, aflush

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


_pool = ForkSafePool(16, "qwenguard-lc-stream")


def _executor() -> ThreadPoolExecutor:
    """Workers for the background checks of sync streams (the Gen backend batches concurrent calls)."""
    return _pool.get()


Handle = Union["Future[list[Decision]]", "asyncio.Future[list[Decision]]"]


class PipelinedScreen:
    """The ``"pipelined"`` engine (and ``"gate"`` with ``max_unjudged=0, max_in_flight=1``), for callbacks.

    See the module docstring. Checks of a sync stream run on worker threads, of an async one as tasks;
    a check the stream would wait for at once (always, with ``max_unjudged=0``) runs in the stream's path, and
    so does a queued one it must wait for that no worker has started yet. Every check is timed from when it
    starts running to its verdict (a worker holds the GIL meanwhile unless the check lets it go, e.g. for I/O:
    a forced switch comes only after ``sys.getswitchinterval()``, 5 ms, so a short check's time is its own):
    while checks take less than `INLINE_BELOW_S` (a guard that answers at once: a rule-based backend) every due
    check runs in the stream's path, as with ``"gate"``, until checks are slow again (`_judges_inline`)."""

    def __init__(
        self,
        guard: Guard,
        gate: StreamGate,
        *,
        max_unjudged: int = DEFAULT_MAX_UNJUDGED,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        session: GateSession | None = None,
    ) -> None:
        if max_unjudged < 0 or max_in_flight < 1:
            raise ValueError("max_unjudged must be >= 0 and max_in_flight >= 1")
        self.guard = guard
        self.gate = gate
        #: Incremental checks of this stream (the ``"gate"`` engine), or ``None``: full checks.
        self.session = session
        self.max_unjudged = max_unjudged
        self.max_in_flight = max_in_flight
        self._flight: deque[tuple[Item, Handle]] = deque()
        #: Wall times of the last checks (see `_judges_inline`), owned by the stream's thread; every check,
        #: wherever it ran, puts its time into `_timings` (workers too) and the stream takes them from there.
        self._costs: deque[float] = deque(maxlen=3)
        self._timings: queue.SimpleQueue[float] = queue.SimpleQueue()

    @property
    def released(self) -> int:
        return self.gate.length  # a callback holds nothing back

    def _judges_inline(self) -> bool:
        """Run the next due check in the stream's path? Yes while the guard answers faster than a hand-off:
        the median of the last three timed checks (the upper one of two) is under `INLINE_BELOW_S`. A lone
        slow one (a busy machine, a garbage collection) changes nothing; a guard that became slow is
        judged beside the stream again after its second slow check."""
        while not self._timings.empty():  # one reader (this thread): what it saw is there to take
            self._costs.append(self._timings.get_nowait())
        if self._flight or not self._costs:
            return False
        return sorted(self._costs)[len(self._costs) // 2] < INLINE_BELOW_S

    # -- shared logic ---------------------------------------------------------------------------
    def _settle(self, item: Item, decisions: list[Decision]) -> None:
        self.gate.settle(item, decisions[0])

    def _harvest(self) -> None:
        """Settle every finished check (any order: an unsafe verdict raises as soon as it is seen)."""
        if not self._flight:
            return
        running: deque[tuple[Item, Handle]] = deque()
        done: list[tuple[Item, Handle]] = []
        for item, handle in self._flight:
            (done if handle.done() else running).append((item, handle))
        self._flight = running
        for item, handle in done:
            self._settle(item, handle.result())

    def _wants_check(self, delta: str) -> bool:
        return len(self._flight) < self.max_in_flight and self.gate.due(delta)

    # -- sync -----------------------------------------------------------------------------------
    def _judge(self, item: Item) -> list[Decision]:
        if self.session is not None:
            return [self.session.check(item.conversation)]
        return self.guard.check_many([item.pair])

    def _timed_judge(self, item: Item) -> list[Decision]:
        """`_judge`, its time recorded (on the stream's thread or a worker)."""
        started = time.perf_counter()
        decisions = self._judge(item)
        self._timings.put(time.perf_counter() - started)
        return decisions

    async def _ajudge(self, item: Item) -> list[Decision]:
        if self.session is not None:
            return [await self.session.acheck(item.conversation)]
        return await self.guard.acheck_many([item.pair])

    def _start(self) -> None:
        item = self.gate.item()
        context = contextvars.copy_context()
        self._flight.append((item, _executor().submit(context.run, self._timed_judge, item)))

    def _wait_oldest(self) -> None:
        item, handle = self._flight.popleft()
        if isinstance(handle, Future) and handle.cancel():
            # No worker has picked it up yet: judge it here rather than wait for one to (the stream waits
            # either way; this saves the hand-off, and with a fast guard most waits are this one).
            self._settle(item, self._timed_judge(item))
            return
        # A task (started by an async dispatch of this run) cannot be waited for here: used once done.
        if isinstance(handle, Future) or handle.done():
            self._settle(item, handle.result())

    def _judge_now(self) -> None:
        # A check that would be waited for at once runs on this thread: handing it to a worker only to
        # block on it costs two thread switches a chunk (most of the "gate" engine's own cost).
        item = self.gate.item()
        self._settle(item, self._timed_judge(item))

    def _starts_in_background(self, delta: str) -> bool:
        """Start a check beside the stream? Not one the stream would wait for at once: the loops of
        `check` / `acheck` judge that in the stream's path."""
        return self._wants_check(delta) and (bool(self._flight) or self.gate.unjudged <= self.max_unjudged)

    def check(self, delta: str) -> None:
        self.gate.add(delta)
        self._harvest()
        if self._judges_inline() and self._wants_check(delta):
            self._judge_now()
        elif self._starts_in_background(delta):
            self._start()
        while self.gate.unjudged > self.max_unjudged:
            if self._flight:
                self._wait_oldest()
            else:
                self._judge_now()

    def flush(self) -> None:
        """Everything fed so far judged (waits for the checks in flight)."""
        self.gate.add("")
        while self._flight:
            self._wait_oldest()
        if self.gate.unjudged:
            self._judge_now()

    finish = flush

    # -- async ----------------------------------------------------------------------------------
    async def _astart(self) -> None:
        item = await self.gate.aitem()
        task = asyncio.ensure_future(self._ajudge_timed(item))
        task.add_done_callback(mark_read)  # a run that ends (or is dropped) with checks in flight never reads them
        self._flight.append((item, task))

    async def _ajudge_timed(self, item: Item) -> list[Decision]:
        # A task runs on the stream's own thread: its time is the check's own, plus whatever else the loop
        # ran meanwhile (never less than the check).
        started = time.perf_counter()
        decisions = await self._ajudge(item)
        self._timings.put(time.perf_counter() - started)
        return decisions

    async def _await_oldest(self) -> None:
        item, handle = self._flight.popleft()
        result = await (asyncio.wrap_future(handle) if isinstance(handle, Future) else handle)
        self._settle(item, result)

    async def _ajudge_now(self) -> None:
        item = await self.gate.aitem()  # awaited here: no task of its own (see `_judge_now`)
        self._settle(item, await self._ajudge_timed(item))

    async def acheck(self, delta: str) -> None:
        self.gate.add(delta)
        self._harvest()
        if self._judges_inline() and self._wants_check(delta):
            await self._ajudge_now()
        elif self._starts_in_background(delta):
            await self._astart()
        while self.gate.unjudged > self.max_unjudged:
            if self._flight:
                await self._await_oldest()
            else:
                await self._ajudge_now()

    async def aflush(self) -> None:
        self.gate.add("")
        while self._flight:
            await self._await_oldest()
        if self.gate.unjudged:
            await self._ajudge_now()

    afinish = aflush

    def close(self) -> None:
        """Stop: cancel the checks still in flight (a running worker thread finishes on its own)."""
        while self._flight:
            self._flight.popleft()[1].cancel()
        if self.session is not None:
            self.session.close()


def _monitor_prompt(context: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation a monitor opens with: up to the last user turn, and the assistant turns after it, which the
    streamed answer continues (a prefill: the monitor judges it with the answer and releases only the answer, as
    `response_conversation` judges it in the other engines and on invoke; they were dropped, rt62f F2)."""
    turns = [dict(m) for m in context]
    last_user = max((i for i, m in enumerate(turns) if m.get("role") == "user"), default=None)
    if last_user is None:
        return [{"role": "user", "content": ""}, *(m for m in turns if m.get("role") == "assistant")]
    return turns[: last_user + 1] + [m for m in turns[last_user + 1 :] if m.get("role") == "assistant"]


class MonitorScreen:
    """The ``"monitor"`` engine: a core StreamMonitor (sync or async) fed delta by delta.

    ``released`` is how many characters the monitor has released (judged, plus ``holdback``).
    ``max_unjudged`` (callbacks, which cannot hold text): while the monitor holds more than that many
    characters the reader already has (its Stream session failed and Gen windows judge the rest: they hold
    text until a window is back), the callback waits for the window in flight, as ``"pipelined"`` does."""

    def __init__(
        self,
        guard: Guard,
        context: Sequence[dict[str, str]],
        *,
        asynchronous: bool,
        max_unjudged: int | None = None,
        **options: Any,
    ) -> None:
        self.guard = guard
        self.max_unjudged = max_unjudged
        options.setdefault("screen_prompt", False)  # the input is screened on its own, as a prompt
        prompt = _monitor_prompt(context)
        if guard.stream_backend is None or prompt[-1]["role"] == "assistant":  # Gen windows (a prefill's too)
            options.setdefault("min_segment", DEFAULT_SEGMENT)
        self.monitor = guard.astream(prompt, **options) if asynchronous else guard.stream(prompt, **options)
        self._released = 0

    @property
    def released(self) -> int:
        return self._released

    def released_at_stop(self, violation: GuardViolation) -> int:
        """Once ``violation`` stopped the stream: the characters a holding caller may still pass on, and never more.

        What the monitor released, read from the monitor itself (a call that raises returns nothing). With a Gen
        guard the monitor's own violation says where its release point stood before the flagged window (judged
        safe, a sentence's last word held): that text is owed too. Not with a Stream model, whose offset is where
        the flagged token run starts: the tokens before it are what ``holdback`` holds (the model flags a run
        late), and the consumer of ``guard.stream()`` never gets them."""
        released = len(self.monitor.released)
        decision = violation.decision
        ours = decision is getattr(self.monitor, "decision", None)  # not a stop raised upstream of the monitor
        # A Gen-window monitor (a prefill's too: `stream_backend` None) points at the window; a remote one has none.
        gen = getattr(self.monitor, "stream_backend", self.guard.stream_backend) is None
        if ours and gen and decision.offset is not None:
            return max(released, decision.offset)
        return released

    def check(self, delta: str) -> None:
        if delta:
            self._released += len(self.monitor.feed(delta))
        while self._over_bound() and (waiters := self.verdict_waiters()):
            wait_futures(waiters, return_when=FIRST_COMPLETED)
            self.release()

    async def acheck(self, delta: str) -> None:
        if delta:
            self._released += len(await self.monitor.afeed(delta))
        while self._over_bound() and (waiters := self.verdict_waiters()):
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            await self.arelease()

    def _over_bound(self) -> bool:
        monitor = self.monitor
        return self.max_unjudged is not None and not monitor.closed and len(monitor.held) > self.max_unjudged

    def flush(self) -> None:
        """A monitor cannot judge early what it holds; its release follows its own verdicts."""

    async def aflush(self) -> None:
        """See `flush`."""

    def finish(self) -> None:
        if not self.monitor.closed:
            self._released += len(self.monitor.finish())

    async def afinish(self) -> None:
        if not self.monitor.closed:
            self._released += len(await self.monitor.afinish())

    def verdict_waiters(self) -> list[Any]:
        """The monitor's check in flight whose verdict may let held text out."""
        return verdict_waiters(self.monitor)

    def release(self) -> None:
        """Take what the monitor's verdicts let out now, without new text (see ``wakeup.py``)."""
        self._released += len(release_judged(self.monitor))

    async def arelease(self) -> None:
        """Take what the monitor's verdicts let out now, without new text (see ``wakeup.py``)."""
        self._released += len(await arelease_judged(self.monitor))

    def close(self) -> None:
        self.monitor.close()


Screen = GateScreen | PipelinedScreen | MonitorScreen


def check_engine(engine: str | None) -> None:
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"stream_engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")


def _max_chars(guard: Guard) -> int | None:
    limit = getattr(guard, "max_chars", None)
    return limit if isinstance(limit, int) else None


def open_screen(
    guard: Guard,
    context: Sequence[dict[str, str]],
    engine: Engine,
    *,
    asynchronous: bool,
    hold: bool = False,
    window_chars: int = DEFAULT_WINDOW_CHARS,
    min_chars: int = 1,
    max_unjudged: int = DEFAULT_MAX_UNJUDGED,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    monitor_options: dict[str, Any] | None = None,
) -> Screen:
    """A screen for one streamed answer with the chosen engine (``hold``: the caller can hold text back)."""
    check_engine(engine)
    if engine == "monitor":
        bound = None if hold else max_unjudged  # a holding caller releases only judged text anyway
        return MonitorScreen(guard, context, asynchronous=asynchronous, max_unjudged=bound, **(monitor_options or {}))
    # Every Gen engine reads a growing window through sessions (the holding screens and the gate judge in
    # the stream's path, one check at a time; the pipelined engine's checks overlap: a pool of sessions).
    gate = StreamGate(
        context, window_chars=window_chars, min_chars=min_chars, whole_words=hold, max_chars=_max_chars(guard)
    )
    if hold:
        return GateScreen(guard, gate, hold=True, session=GateSession(guard, gate.stage))
    if engine == "gate":
        return PipelinedScreen(guard, gate, max_unjudged=0, max_in_flight=1, session=GateSession(guard, gate.stage))
    session = GateSession(guard, gate.stage, sessions=min(max_in_flight, SESSIONS_PER_STREAM))
    return PipelinedScreen(guard, gate, max_unjudged=max_unjudged, max_in_flight=max_in_flight, session=session)


def open_tool_screen(
    guard: Guard,
    name: str,
    context: Sequence[dict[str, str]],
    engine: Engine,
    *,
    window_chars: int = DEFAULT_WINDOW_CHARS,
    max_unjudged: int = DEFAULT_MAX_UNJUDGED,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> PipelinedScreen:
    """A screen for the streamed arguments of one tool call (callbacks: the text engine's bound).

    The ``"monitor"`` engine judges answers, not actions: tool calls go through ``"pipelined"``."""
    gate = ToolCallGate(name, context, window_chars=window_chars, max_chars=_max_chars(guard))
    if engine == "gate":
        return PipelinedScreen(guard, gate, max_unjudged=0, max_in_flight=1, session=GateSession(guard, gate.stage))
    session = GateSession(guard, gate.stage, sessions=min(max_in_flight, SESSIONS_PER_STREAM))
    return PipelinedScreen(guard, gate, max_unjudged=max_unjudged, max_in_flight=max_in_flight, session=session)
