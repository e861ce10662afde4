"""`GateSession`: a streamed text judged chunk by chunk with the Gen guard, each check paying only for
what is new; `GrowingWindow`: the text such a gate reads.

A gate judges the answer so far before each chunk goes out. With a full check per chunk, chunk N costs
the instructions plus the whole window again; a `GateSession` keeps the model's cache of the previous
check (`backends.gen_session.GenSession`) and runs only the new chunk, the closing instructions and the
verdict, so the cost per chunk stays flat as the answer grows. Decisions are the guard's own: the same
policy, timeouts, fail mode and events as ``guard.check_many([(stage, conversation)])``, and the same
verdict on the same conversation.

The cache helps only when each check's conversation extends the previous one. A window that slides by
one chunk every chunk (the last N characters) changes its first character every time; `GrowingWindow`
instead grows by appending and hops forward by half a window once it is full, so consecutive checks
share their prefix and each hop costs one re-read of half a window.

With a remote guard (or a local one without the decode engine) a `GateSession` runs full checks.

Memory: an open session holds the keys and values of its last prompt (instructions, request and window),
``2 x layers x kv_heads x head_dim x dtype bytes`` per token: for Qwen3Guard-Gen-0.6B in bfloat16 112 KiB a
token, about 100 MB for a 2,000-character window. `close` frees it (the LangChain screens close theirs when
the stream ends).

    guard = Guard.from_pretrained("demo")
    gate, window = GateSession(guard), GrowingWindow(2000)
    for delta in ["Paris is ", "the capital ", "of France."]:
        text = window.add(delta)
        decision = gate.check([{"role": "user", "content": "Tell me about Paris"},
                               {"role": "assistant", "content": text}])
        enforce(decision)   # qwenguard.core.enforce: raises GuardViolation when the answer so far is blocked
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from ..backends.gen_session import GenSession
from ..backends.gen_session_pool import GenSessionPool
from ..formats.prompts import Message
from ..policy import Decision
from ..verdict import Stage

__all__ = ["GateSession", "GrowingWindow", "DEFAULT_GATE_WINDOW_CHARS"]

#: Characters of a streamed answer a gate reads at most (the LangChain callback's window).
DEFAULT_GATE_WINDOW_CHARS = 2000


def open_gen_session(backend: Any, sessions: int = 1) -> GenSession | GenSessionPool | None:
    """A `GenSession` on ``backend`` when it runs the decode engine locally (a `GenSessionPool` of
    ``sessions`` for checks that overlap), else ``None``."""
    if getattr(backend, "engine", None) is None or not hasattr(backend, "_plan"):
        return None
    return GenSession(backend) if sessions == 1 else GenSessionPool(backend, sessions)


class GateSession:
    """Checks of one growing conversation at ``stage`` (default: stream), through ``guard``'s policy.

    `check` / `acheck` return the `Decision` that ``guard.check_many([(stage, conversation)])`` would
    (events emitted alike); use one session per streamed text, from one thread or one task at a time
    (``sessions=N``: up to N checks at once, sharing what their caches hold).
    """

    def __init__(self, guard: Any, stage: Stage | str = Stage.STREAM, *, sessions: int = 1) -> None:
        self.guard = guard
        self.stage = Stage(stage)
        #: ``None`` when the guard's backend cannot keep a cache: every check is a full check. With
        #: ``sessions > 1``, a `GenSessionPool`: that many checks may run at once (more wait for one).
        self.session = open_gen_session(guard.backend, sessions)

    def check(self, conversation: Sequence[Message]) -> Decision:
        """The decision on ``conversation`` (the text so far, as the last turn)."""
        guard, session = self.guard, self.session
        if session is None:
            return cast(Decision, guard.check_many([(self.stage, conversation)])[0])
        # The Guard's own check path (size limits, cleaning, policy, events) with the backend call swapped.
        check = guard._prepare(self.stage, conversation)
        pending = [check] if check.decision is None else []
        outcome: Any = []
        if pending:
            try:
                outcome = [session.classify(check.conversation, timeout=guard._timeout(pending))]
            except Exception as exc:  # noqa: BLE001 - any backend failure becomes the policy's on_error
                outcome = exc
            # A context that broke the answer (a padded prompt): judged again as the Guard does (rt51b F5).
            outcome = guard._judged_without_context(pending, outcome)
        refused = guard._settle([check], pending, outcome)
        guard._judge_excused([check])  # an ignored category's verdict, judged again in parts (`excused_split`)
        return cast(Decision, guard._finish([check], refused)[0])

    async def acheck(self, conversation: Sequence[Message]) -> Decision:
        """Async twin of `check` (tokenizing in a worker thread, the model in the backend's batcher)."""
        guard, session = self.guard, self.session
        if session is None:
            return cast(Decision, (await guard.acheck_many([(self.stage, conversation)]))[0])
        (check,) = await guard._aprepare([(self.stage, conversation)])  # off the loop where large, as acheck_many
        pending = [check] if check.decision is None else []
        outcome: Any = []
        if pending:
            try:
                outcome = [await session.aclassify(check.conversation, timeout=guard._timeout(pending))]
            except Exception as exc:  # noqa: BLE001
                outcome = exc
            outcome = await guard._ajudged_without_context(pending, outcome)
        refused = guard._settle([check], pending, outcome)
        await guard._ajudge_excused([check])
        return cast(Decision, guard._finish([check], refused)[0])

    def close(self) -> None:
        """Free the session's cache (later checks are full checks)."""
        if self.session is not None:
            self.session.close()

    def __enter__(self) -> GateSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GrowingWindow:
    """The latest part of a streamed text, kept so that consecutive reads share their prefix.

    `add` appends a delta and returns the window: the whole text while it is at most ``window_chars``
    long (the same text as its last ``window_chars`` characters), then a window that grows by appending
    and, once longer than ``window_chars``, keeps only its last ``window_chars // 2`` characters. Every
    window holds at least half a window of the latest text (and all of it up to ``window_chars``)."""

    def __init__(self, window_chars: int = DEFAULT_GATE_WINDOW_CHARS) -> None:
        if window_chars < 2:
            raise ValueError("window_chars must be >= 2")
        self.window_chars = window_chars
        self.text = ""
        self.start = 0  # offset of `text` in the whole stream
        self.hops = 0

    def add(self, delta: str) -> str:
        self.text += delta
        if len(self.text) > self.window_chars:
            keep = self.window_chars // 2
            self.start += len(self.text) - keep
            self.text = self.text[-keep:]
            self.hops += 1
        return self.text
