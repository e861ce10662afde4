"""The state both stream monitors share: release bookkeeping, decisions, the token-verdict path. No I/O.

See `qwenguard.core.streaming.monitor` for the contract.
"""

from __future__ import annotations

import inspect
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import GuardTimeout, GuardUnavailable, GuardViolation, InputTooLarge, StreamClosed
from ..formats.content import clean_text
from ..formats.conversations import answer_prefill, prompt_conversation
from ..formats.overstrike import crlf_joined
from ..formats.prompts import Message, normalize_messages
from ..policy import Action, Decision, quoted, require_switch
from ..verdict import Risk, Stage, Verdict
from .debounce import DEFAULT_WINDOW, Debounce, Flag
from .gen_windows import MAX_WINDOWS_IN_FLIGHT, RELEASE_UNITS, GenWindows, WindowJudge

#: Guard tokens held back after the last released one. >= window - 1 keeps flagged spans unreleased.
DEFAULT_HOLDBACK = 8
#: Gen-window fallback: longest segment (chars) in one check; longer text is cut into several.
DEFAULT_CHECK_EVERY = 256
#: Gen-window fallback: shortest segment (chars) a sentence end closes while a check is in flight (a shorter
#: sentence is checked at once when none is, else joined to the next).
DEFAULT_MIN_SEGMENT = 40
#: Gen-window fallback: chars of earlier text shown with each new segment.
DEFAULT_CONTEXT = 384
#: Gen-window fallback: what one check may release: "sentence" (whole sentences), "opening" (the answer's
#: opening words as soon as they are judged with the word after them, then whole sentences) or "word" (all
#: but the last word judged, throughout). See `GenWindows`.
DEFAULT_RELEASE_UNIT = "sentence"
#: Per-token verdicts kept for `take_token_verdicts` (bounded: old ones drop off).
DEFAULT_KEEP_TOKEN_VERDICTS = 2048

OPEN, FINISHED, CLOSED, VIOLATED, FAILED = "open", "finished", "closed", "violated", "failed"


def as_messages(prompt: str | Sequence[Message]) -> list[dict[str, str]]:
    """The stream's prompt as messages, each content under the one content rule (`clean_text`), its lone CRs kept:
    the prompt is checked whole, read as a terminal shows it too, as `Guard.check_prompt` reads it (rt70l F4)."""
    if prompt is None:
        raise TypeError("prompt is None; pass the user's prompt or the conversation")
    msgs = prompt_conversation(prompt) if isinstance(prompt, str) else normalize_messages(prompt)
    return [{"role": m["role"], "content": clean_text(m["content"], keep_lone_cr=True)} for m in msgs]


def check_delta(delta: object) -> str:
    """A delta under the one content rule (`clean_text`) but for its lone carriage returns, which the monitor turns
    into line feeds itself (`MonitorCore._crlf_joined`: the last may be half a CRLF).

    What is released is what was judged: a lone surrogate comes out as U+FFFD, a NUL not at all."""
    if type(delta) is not str:
        if not isinstance(delta, str):
            raise TypeError(f"delta must be str, got {type(delta).__name__}")
        delta = str(delta)
    return clean_text(delta, keep_lone_cr=True)


def deadline(call: Any, policy: Any, stage: Stage) -> dict[str, Any]:
    """``{"timeout": policy's budget for stage}`` for a stream-backend call that takes one, else ``{}``.

    `TransformersStream` sessions take ``timeout``; a wrapper of an older backend that does not still
    works, without a deadline."""
    return {"timeout": policy.timeout_for(stage)} if _takes_timeout(call) else {}


def _takes_timeout(call: Any) -> bool:
    func = getattr(call, "__func__", call)
    known = _TAKES_TIMEOUT.get(func)
    if known is None:
        try:
            params = inspect.signature(call).parameters.values()
        except (TypeError, ValueError):
            params = ()  # type: ignore[assignment]
        known = any(p.name == "timeout" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        try:
            _TAKES_TIMEOUT[func] = known
        except TypeError:  # not weak-referenceable: just not remembered
            pass
    return known


_TAKES_TIMEOUT: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


#: The options of `Guard.stream` / `Guard.astream` (`MonitorCore`'s keywords).
STREAM_OPTIONS = (
    "holdback",
    "window",
    "screen_prompt",
    "check_every",
    "min_segment",
    "context",
    "release_unit",
    "keep_token_verdicts",
    "parallel_input",
    "max_windows_in_flight",
)


#: The count options that take no 0 (``context`` and ``keep_token_verdicts`` may be 0: none shown, none kept).
_AT_LEAST_ONE = ("check_every", "min_segment", "max_windows_in_flight")


def check_stream_options(options: Mapping[str, Any]) -> None:
    """Refuse, naming the option, what ``guard.stream(prompt, **options)`` would refuse: an unknown name or a value
    that cannot work. An integration that keeps an option dict for later streams checks it when it is built, not
    at the first streamed answer (rt57c F7: ``monitor_options={"hold_back": 3}`` was taken and never applied)."""
    if not isinstance(options, Mapping):
        raise TypeError(f"stream options must be a dict, got {type(options).__name__}")
    unknown = sorted(str(name) for name in set(options) - set(STREAM_OPTIONS))
    if unknown:
        raise TypeError(f"unknown stream option(s) {unknown}; known: {list(STREAM_OPTIONS)}")
    for name, value in options.items():
        if name == "holdback":
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"holdback must be a non-negative integer, got {quoted(value)}")
        elif name == "window":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"window must be a positive integer, got {quoted(value)}")
        elif name in ("screen_prompt", "parallel_input"):
            require_switch(name, value, optional=name == "parallel_input")  # parallel_input None: the guard's
        elif name == "release_unit":
            if value not in RELEASE_UNITS:
                raise ValueError(f"release_unit must be one of {RELEASE_UNITS}, got {quoted(value)}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < (1 if name in _AT_LEAST_ONE else 0):
            kind = "a positive integer" if name in _AT_LEAST_ONE else "a non-negative integer"
            raise ValueError(f"{name} must be {kind}, got {quoted(value)}")


# ================================================================================================
# Shared logic: state, release bookkeeping, decisions. No I/O here.
# ================================================================================================
class MonitorCore:
    def __init__(
        self,
        guard: Any,
        prompt: str | Sequence[Message],
        *,
        holdback: int | None = None,
        window: int = DEFAULT_WINDOW,
        screen_prompt: bool = True,
        check_every: int = DEFAULT_CHECK_EVERY,
        min_segment: int = DEFAULT_MIN_SEGMENT,
        context: int = DEFAULT_CONTEXT,
        release_unit: str = DEFAULT_RELEASE_UNIT,
        keep_token_verdicts: int = DEFAULT_KEEP_TOKEN_VERDICTS,
        parallel_input: bool | None = None,
        max_windows_in_flight: int = MAX_WINDOWS_IN_FLIGHT,
    ) -> None:
        holdback = DEFAULT_HOLDBACK if holdback is None else holdback
        check_stream_options(
            {
                "holdback": holdback,
                "screen_prompt": screen_prompt,
                "check_every": check_every,
                "min_segment": min_segment,
                "context": context,
                "release_unit": release_unit,
                "keep_token_verdicts": keep_token_verdicts,
                "parallel_input": parallel_input,
                "max_windows_in_flight": max_windows_in_flight,
            }
        )
        self.guard = guard
        self.policy = guard.policy
        self.messages = as_messages(prompt)
        # A conversation that ends in assistant turns (a prefill) is answered by their continuation, which a provider
        # returns as one turn with them (rt62f F2): each window shows the prefill's text before the streamed text,
        # after the turns before it (`answer_messages`); only the streamed text is released (the consumer has the
        # prefill). The prompt is screened as it is, prefill included.
        before, prefill = answer_prefill(self.messages)
        self.prefill = prefill or ""
        self.answer_messages = (before or [{"role": "user", "content": ""}]) if prefill is not None else self.messages
        self.holdback = holdback
        self.screen_prompt = screen_prompt
        self._debounce = Debounce(window)
        self.window = self._debounce.window
        # The Stream model scores an answer after a user turn: a continuation is judged in Gen windows instead.
        self.stream_backend = guard.stream_backend if prefill is None else None
        self.enabled = self.policy.enabled(Stage.STREAM)
        if self.stream_backend is not None and self.messages[-1]["role"] != "user":
            raise ValueError(
                "a streamed answer follows a user turn: the conversation's last message must be the user's"
            )
        #: The violation that ended the stream, a fail-closed guard error, or the first guard error failed
        #: open (the stream stays judged: see `_fail_open`); else None.
        self.decision: Decision | None = None
        #: The prompt's Decision (None when the prompt was not screened).
        self.prompt_decision: Decision | None = None
        #: Allowed-but-flagged stream decisions (loose controversial, ignored categories, checks failed open).
        self.flags: list[Decision] = []
        self._state = OPEN
        self._released_parts: list[str] = []
        self._released_len = 0
        self._buffer = ""  # fed, not yet released; starts at char offset _released_len
        self._cr_held = False  # the last delta ended in a CR: judged once the next character shows if it is a CRLF
        # Token engine: (index, start) of the most recent scored tokens.
        self._recent: deque[tuple[int, int]] = deque(maxlen=max(self.holdback, self.window) + 1)
        self._scored = 0
        self._scored_end = 0
        self._tokens: deque[Any] = deque(maxlen=keep_token_verdicts)
        self._window_opts = (check_every, min_segment, context, release_unit)
        self.max_windows_in_flight = max_windows_in_flight  # Gen-window checks this stream runs at once
        self._session: Any = None
        self._windows: GenWindows | None = None  # Gen-window engine: segments and release (`GenWindows`)
        self._window_judge: Any = None  # Gen-window engine: runs the window checks (`WindowJudge`)
        self._taken_over = False  # the windows go on with a stream another monitor judged (`take_over`)
        # Parallel input (Gen-window engine): the prompt check runs beside the answer, which is fed and
        # judged meanwhile but released only once the prompt's verdict allowed it (None: the guard's setting).
        parallel = getattr(guard, "parallel_input", False) if parallel_input is None else parallel_input
        self.parallel_input = parallel is True and self.screen_prompt and self.stream_backend is None
        self._prompt_check: Any = None  # the prompt check in flight (a future or a task), until gated
        self._refused: BaseException | None = None  # why the parallel prompt check refused the prompt

    # -- public read-only view ------------------------------------------------------------------
    @property
    def released(self) -> str:
        """All text released so far."""
        if len(self._released_parts) > 1:
            self._released_parts = ["".join(self._released_parts)]
        return self._released_parts[0] if self._released_parts else ""

    def _crlf_joined(self, delta: str) -> str:
        """``delta`` (from `check_delta`) as judged and released: each lone CR a line feed, as `clean_text` makes it
        (released text cannot go back over a line it holds, rt70a F1); a CR at its end held until the next character
        or the end (`end_cr`), so a CRLF cut between two deltas stays one line break."""
        delta, self._cr_held = crlf_joined(delta, self._cr_held)
        return delta

    def end_cr(self) -> str:
        """At the answer's end: ``"\\n"`` for a held CR (a lone one: it is judged and released as a line feed), else
        ``""``."""
        held, self._cr_held = self._cr_held, False
        return "\n" if held else ""

    def _append(self, delta: str) -> None:
        """Add fed text to the held text, in place where the allocator can grow it there.

        ``self._buffer += delta`` copies the whole held text on every delta (CPython grows a string in place
        only when nothing else refers to it: a local variable, not an attribute): quadratic while a slow judge
        holds a long answer (200,000 one-character deltas: 1.6 s of copying, 400,000: 8 s). Through a local, the
        string is resized instead; when other allocations sit right after it (the async monitor's), ``realloc``
        still moves it, so this removes the copies only where memory allows.

        An answer longer than the guard's ``max_chars`` (its bound for one check) is `InputTooLarge`, and the
        monitor closes with what it held unreleased: a check of that text is refused before any work, while a
        stream was judged window after window without end (8M characters in one delta: 31,498 window checks,
        rt55b F3)."""
        limit = getattr(self.guard, "max_chars", None)
        if isinstance(limit, int) and self._released_len + len(self._buffer) + len(delta) > limit:
            self.close()
            raise InputTooLarge(
                f"the streamed answer passed max_chars={limit:,} characters, the guard's bound for one check; the "
                f"stream is stopped and what it held is not released (raise Guard(max_chars=...) for longer answers)"
            )
        held, self._buffer = self._buffer, ""
        held += delta
        self._buffer = held

    @property
    def text(self) -> str:
        """All text fed so far."""
        return self.released + self._buffer

    @property
    def held(self) -> str:
        """Text fed but not released yet."""
        return self._buffer

    @property
    def finished(self) -> bool:
        return self._state == FINISHED

    @property
    def closed(self) -> bool:
        return self._state in (CLOSED, FINISHED, VIOLATED, FAILED)

    def take_token_verdicts(self) -> list[Any]:
        """The per-token verdicts scored since the last call (Stream model only; bounded buffer)."""
        out = list(self._tokens)
        self._tokens.clear()
        return out

    # -- state ----------------------------------------------------------------------------------
    def _check_feedable(self) -> None:
        state = self._state
        if state == OPEN:
            return
        if state == VIOLATED and self.decision is not None:
            raise GuardViolation(self.decision)
        if state == FAILED and self.decision is not None:
            raise GuardUnavailable(
                f"the stream guard failed and the policy fails closed: {self.decision.error}", self.decision
            )
        if state == FINISHED:
            raise StreamClosed("this stream monitor is finished; open a new one with guard.stream(...)")
        if self._refused is not None:
            raise self._refused
        raise StreamClosed("this stream monitor is closed")

    def _release_to(self, boundary: int) -> str:
        cut = boundary - self._released_len
        if cut <= 0:
            return ""
        out = self._buffer[:cut]
        self._buffer = self._buffer[cut:]
        self._released_len += len(out)
        self._released_parts.append(out)
        return out

    def _release_all(self) -> str:
        return self._release_to(self._released_len + len(self._buffer))

    # -- decisions ------------------------------------------------------------------------------
    def _emit(self, decision: Decision) -> None:
        emit = getattr(self.guard, "_emit", None)
        if emit is not None:
            emit(decision)

    def _settle_prompt(self, verdict: Verdict | None, error: BaseException | None) -> None:
        """Gate the stream on the prompt (Stream query heads' verdict, or a guard error)."""
        if error is not None:
            decision = self.policy.decide_error(Stage.PROMPT, error, timeout=isinstance(error, GuardTimeout))
        elif not self.policy.enabled(Stage.PROMPT):
            decision = Decision(True, Action.ALLOW, Stage.PROMPT, "disabled")
        else:
            decision = self.policy.decide(verdict, Stage.PROMPT)
        self._emit(decision)
        self._gate(decision)

    def _gate(self, decision: Decision) -> None:
        self.prompt_decision = decision
        if decision.allowed:
            # A prompt check failed open lets the answer start; the answer is judged all the same.
            return
        self._close_engine()
        if decision.reason in ("guard_error", "timeout"):
            self._state = FAILED
            self.decision = decision
            cls = GuardTimeout if decision.reason == "timeout" else GuardUnavailable
            raise cls(f"guard could not answer and the policy fails closed: {decision.error}", decision)
        self._state = VIOLATED
        self.decision = decision
        raise GuardViolation(decision)

    @property
    def _prompt_held(self) -> bool:
        """True while the parallel prompt check has not allowed the stream yet: nothing may be released."""
        return self._prompt_check is not None

    def _gate_prompt_check(self, result: Any) -> None:
        """The parallel prompt check came back: gate the stream on it (raises when it blocks)."""
        self._prompt_check = None
        if isinstance(result, BaseException):
            # The prompt was refused, not judged (`InputTooLarge`: over an operator limit): the stream ends
            # here, as the sequential check would not have opened it, and every later call raises it again.
            self._refused = result
            self._state = CLOSED
            self._close_engine()
            raise result
        self._gate(result)

    def _violation(self, decision: Decision) -> GuardViolation:
        self._state = VIOLATED
        self.decision = decision
        self._emit(decision)
        self._close_engine()
        return GuardViolation(decision)

    def _fail_open(self, error: BaseException, offset: int) -> None:
        """One check failed (an error, a missed deadline): raise when the policy fails closed; else record a
        flagged ``guard_error``/``timeout`` decision at ``offset`` and go on. Failing open lets the text of
        the failed check through, not the rest of the stream: later text is judged as before, so a payload
        that makes one check fail (a burst that slows the guard past its deadline) does not switch the
        guard off."""
        if isinstance(error, (GuardViolation, StreamClosed)):
            raise error
        decision = self.policy.decide_error(Stage.STREAM, error, timeout=isinstance(error, GuardTimeout))
        decision = replace(decision, offset=offset)
        self._emit(decision)
        if not decision.allowed:
            self._state = FAILED
            self.decision = decision
            self._close_engine()
            cls = GuardTimeout if decision.reason == "timeout" else GuardUnavailable
            raise cls(f"the stream guard failed and the policy fails closed: {decision.error}", decision) from error
        self.flags.append(decision)
        if self.decision is None:
            self.decision = decision

    def _fail_tokens(self, error: BaseException) -> None:
        """The Stream-model session failed: fail closed (raise), or fail open and judge the text not released
        yet, and the rest of the answer, in Gen windows (the session's state is unknown after an error)."""
        self._fail_open(error, self._released_len)
        self._close_engine()
        self._judge_in_windows()

    def _judge_in_windows(self) -> None:
        """From here on the Gen-window engine judges the stream: what is held, then what follows."""
        if not self.enabled:
            return
        if self._window_judge is not None:
            self._window_judge.close()
        # With a Stream model asked for, the windows take over from it (its session could not open or
        # failed; or a remote session's, `take_over`): they keep its release contract, "released once
        # judged", whatever the holdback.
        takeover = self._taken_over or self.stream_backend is not None
        self._windows = GenWindows(self, start=self._released_len, held=self._buffer, takeover=takeover)
        # Windows are judged again with less context only where a guard error would be let through (as `Guard` does).
        self._window_judge = WindowJudge(
            self.guard.backend, reread=self.policy.on_error_for(Stage.STREAM) == "allow", policy=self.policy
        )

    def take_over(self, released: str, held: str, failed: Decision | None = None, cr_held: bool = False) -> None:
        """Judge, in Gen windows, a stream another monitor started and cannot go on with (a remote session
        that failed open): ``released`` is out already, ``held`` was fed and waits for its verdict.
        ``failed``: the decision that ended the other monitor's checking, kept as this one's. ``cr_held``: a CR
        after ``held`` waits for the next character (`crlf_joined`)."""
        self._cr_held = cr_held
        self._released_parts = [released] if released else []
        self._released_len = len(released)
        self._buffer = held
        self.decision = failed
        self._taken_over = True  # kept: an async monitor opens (and sets up its windows again) on first use
        self._judge_in_windows()

    def _decide_flag(self, verdict: Verdict, offset: int) -> str | None:
        """Policy on a flagged span; raises GuardViolation when it blocks."""
        decision = replace(self.policy.decide(verdict, Stage.STREAM), offset=offset)
        if not decision.allowed:
            raise self._violation(decision)
        self.flags.append(decision)
        self._emit(decision)
        return None

    def _emit_final(self) -> None:
        if self.decision is None and not self.flags:
            model = getattr(self.stream_backend or self.guard.backend, "name", None)
            self._emit(Decision(True, Action.ALLOW, Stage.STREAM, "safe", Verdict(Risk.SAFE, model=model)))

    # -- token engine (Stream model) -------------------------------------------------------------
    def _absorb_tokens(self, verdicts: Sequence[Any]) -> str:
        """Debounce each token in order; release what holdback allows. Raises on a blocking flag."""
        if not verdicts:
            return ""
        recent = self._recent
        push = self._debounce.push
        # Kept first: the tokens that raise a stop are the ones an operator auditing it reads (rt66g F2).
        self._tokens.extend(verdicts)
        for v in verdicts:
            recent.append((v.index, v.start))
            flag = push(v.risk, v.category)
            if flag is not None:
                self._on_token_flag(flag, v)
        last = verdicts[-1]
        self._scored = last.index + 1
        self._scored_end = last.end
        if self.holdback == 0:
            return self._release_to(self._scored_end)
        if self._scored < self.holdback:
            return ""
        return self._release_to(recent[-self.holdback][1])

    def _on_token_flag(self, flag: Flag, v: Any) -> None:
        """Judge a debounce flag: the policy sees every category of the run so far (each held for a window of
        tokens), not only the one of the token that raised it (a run let through for an ignored category that
        flows into another is judged as both)."""
        offset = next((start for index, start in self._recent if index == flag.start), v.start)
        verdict = Verdict(
            flag.risk,
            flag.categories,
            None,
            f"stream tokens {flag.start}..{flag.index}: {flag.risk.value}",
            0.0,
            getattr(self.stream_backend, "name", None),
            v.probs,
        )
        self._decide_flag(verdict, offset)

    def _close_engine(self) -> None:
        session, self._session = self._session, None
        judge, self._window_judge = self._window_judge, None
        for engine in (session, judge):
            if engine is not None:
                try:
                    engine.close()
                except Exception:  # noqa: BLE001 - closing must not mask the outcome
                    pass
        pending = getattr(self, "_pending", None)  # Gen-window checks in flight (futures or tasks)
        while pending:
            pending.popleft()[2].cancel()
        prompt_check, self._prompt_check = self._prompt_check, None
        if prompt_check is not None:
            prompt_check.cancel()

    def _abandon(self) -> None:
        """A sync call was interrupted (KeyboardInterrupt) inside the engine: what the engine has scored
        is unknown, so the monitor closes; nothing more is released."""
        if self._state == OPEN:
            self._state = CLOSED
        self._close_engine()

    def close(self) -> None:
        """Stop: free the session, cancel pending checks. Unreleased text stays unreleased."""
        if self._state == OPEN:
            self._state = CLOSED
        self._close_engine()
