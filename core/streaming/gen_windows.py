"""The Gen-window engine of the stream monitors: cut the streamed text into segments, build the bounded
window each is checked in, settle results in order. Used when the guard has no Stream model."""

from __future__ import annotations

import asyncio
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..backends.after_fork import ForkSafePool
from ..backends.gen_session_pool import SESSIONS_PER_STREAM
from ..errors import GuardTimeout, QwenGuardError, VerdictParseError
from ..formats.content import BidiState
from ..formats.conversations import least_contexts
from ..verdict import Risk, Stage, Verdict, worst

if TYPE_CHECKING:
    from .monitor_core import MonitorCore

# A sentence ends at terminal punctuation (and closing quotes/brackets) followed by whitespace, or
# at a newline. The whitespace must have arrived: "3.14" and "e.g." mid-stream are not ends.
_TERMINAL = ".!?;。！？；…"  # terminal punctuation
_CLOSING = "\"'”’)]"  # closing quotes and brackets after it
# A match starts only where a run of terminal punctuation starts (the lookbehind): tried at every dot of
# a hostile "......" run, the pattern would backtrack over the rest of the run each time (quadratic).
_SENTENCE_END = re.compile(f"(?<![{re.escape(_TERMINAL)}])[{re.escape(_TERMINAL)}]+[{re.escape(_CLOSING)}]*(?=\\s)|\n")


_window_pool = ForkSafePool(8, "qwenguard-window")


def window_pool() -> ThreadPoolExecutor:
    """Shared workers for background window checks (the Gen backend batches concurrent calls)."""
    return _window_pool.get()


# ================================================================================================
# Gen-window fallback: segments, windows, in-order results. Shared by both monitors.
# ================================================================================================
#: Judged text goes out whole only when it ends with terminal punctuation closing a sentence of at least this
#: many words (a Han or kana character counts as one). A shorter one ("Mix.", "Yes.") and a line without
#: punctuation ("Mix\n") keep their last word until a window shows it with what follows: a clause cut into
#: one-word sentences or lines, which a prompt can ask for, is never let out piece by piece.
MIN_SENTENCE_WORDS = 4
#: Characters read from the end of a judged text to find its last sentence: bounds the work on hostile text.
_SCAN = 512
_SPACES = re.compile(r"(\s+)")
_HAN_KANA = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# A letter or digit: "_", punctuation, symbols, emoji and hidden characters make no word (a filler is not one).
_WORD_CHAR = re.compile(r"[^\W_]")
#: Longest tail held back after judged text when it has no word break (CJK, code, a long URL).
MAX_HELD_WORD = 16
#: The least context a window shows before its segment: a held word, with room (`GenWindows`).
MIN_CONTEXT = 2 * MAX_HELD_WORD
# A word as `releasable` reads one: two letters or digits in a run without a space, tab or line break.
_TWO_ALNUM = re.compile(r"[^\W_][^ \t\n]*?[^\W_]")
#: Judged text kept to tell whether a check could release more (`GenWindows._gain`): what `releasable` reads.
_JUDGED_TAIL = 2 * _SCAN
#: What a Gen-window check may release: whole sentences (default), the answer's opening words and then
#: whole sentences, or all but the last word judged.
RELEASE_UNITS = ("sentence", "opening", "word")
#: Window checks one stream keeps running at once, by default (``max_windows_in_flight``; a server's
#: ``--stream-max-windows-in-flight``). A burst of short sentences (one large delta, a fast model ahead of a
#: slow judge) waits and is judged in longer segments as checks come back, instead of handing the judge a
#: check per sentence at once, ahead of every other stream's.
MAX_WINDOWS_IN_FLIGHT = 4


def ends_sentence(text: str) -> bool:
    """Does ``text`` end with terminal punctuation closing a sentence of `MIN_SENTENCE_WORDS` words or more?

    The sentence starts after the previous terminal punctuation or line break in ``text`` (or at its start).
    Linear in at most `_SCAN` characters: no backtracking regex over hostile runs ("......")."""
    parts = _SPACES.split(text[-_SCAN:].rstrip())  # token, whitespace, token, ..., token
    if not _closes_sentence(parts[-1]):
        return False
    words = 0
    for i in range(len(parts) - 1, -1, -2):
        if i < len(parts) - 1 and (_closes_sentence(parts[i]) or "\n" in parts[i + 1]):
            return False  # the previous sentence ends here
        words += _words(parts[i])
        if words >= MIN_SENTENCE_WORDS:
            return True
    return False


def ends_clause(text: str) -> bool:
    """Does ``text`` end with terminal punctuation (closing quotes/brackets and spaces after it) or a line
    break and spaces? Read from the end, in time linear in its trailing punctuation and spaces."""
    stripped = text.rstrip()
    return "\n" in text[len(stripped) :] or _closes_sentence(stripped)


def _closes_sentence(token: str) -> bool:
    token = token.rstrip(_CLOSING)
    return bool(token) and token[-1] in _TERMINAL


def _words(token: str) -> int:
    """Words in a whitespace-free token: each Han or kana character, plus one for the rest if it has a letter."""
    han = len(_HAN_KANA.findall(token))
    rest = _HAN_KANA.sub("", token) if han else token
    return han + (1 if _WORD_CHAR.search(rest) else 0)


#: A window's context reaches back at most this many times its size in written characters (`visible_tail`).
_TAIL_REACH = 16


def visible_tail(text: str, size: int) -> str:
    """The end of ``text`` holding ``size`` characters a reader sees (format characters such as U+200B are not
    counted), at most `_TAIL_REACH` times ``size`` written: a window's context. Counted in written characters, 600
    U+200B after each word kept every word in a window of its own, and a judge never saw two together (rt49f F4)."""
    tail = text[-size:]
    if tail.isascii() or size <= 0:
        return tail
    seen, at, floor = 0, len(text), max(0, len(text) - size * _TAIL_REACH)
    while at > floor and seen < size:
        at -= 1
        seen += unicodedata.category(text[at]) != "Cf"
    return text[at:]


def releasable(text: str) -> int:
    """How much of ``text`` (judged, not released) may go out while the stream is open.

    All of it when it ends a sentence (`ends_sentence`); else all but its last word (at most
    `MAX_HELD_WORD` chars up to its last letter or digit) and what follows it: a judge may need the next word
    to see what a clause is ("Mix" is harmless until "ammonium" follows), so the last word waits for a later
    window that shows it with what follows. The last word is the last with two letters or digits: a filler after
    it ("Mix -", "Mix\\n-", "Mix \\u200b", an emoji, "Mix ǀ") would else be held in its place and let "Mix" out."""
    if not text or ends_sentence(text):
        return len(text)
    stripped = text.rstrip()
    # Back to the last word of two letters or digits or more, within `_SCAN` chars (more than the default window
    # context): bounded work on a hostile run of fillers. A lone letter or digit is no word here: "Mix ǀ", "Mix ー",
    # "Mix 1" after each word let "Mix" out (rt49f F3). None in sight: what was read waits for a word.
    floor = max(0, len(stripped) - _SCAN)
    last, count, at = floor, 0, len(stripped)
    word_end: int | None = None
    while at > floor:
        char = stripped[at - 1]
        if char in " \t\n":
            count, word_end = 0, None
        elif char.isalnum():
            word_end = word_end or at
            count += 1
            if count == 2:
                last = word_end
                break
        at -= 1
    if last == floor:
        return 0  # no word in sight: all of it waits for one (released up to here, a word before the fillers went out)
    end = last  # the end of the last word's token ("Paris." with its punctuation), then the blanks after it
    while end < len(stripped) and stripped[end] not in " \t\n":
        end += 1
    after = end
    while after < len(stripped) and stripped[after] in " \t\n":
        after += 1
    if after > end and ends_sentence(stripped[max(0, end - _SCAN) : end]):
        return after  # a sentence that ended, then only fillers ("Paris. 🙂"): it goes out, the fillers wait
    tail = max(floor, last - MAX_HELD_WORD - 1)  # a break before it changes nothing: look no further
    start = max(stripped.rfind(" ", tail, last), stripped.rfind("\t", tail, last), stripped.rfind("\n", tail, last)) + 1
    return max(start, last - MAX_HELD_WORD, 0)


class GenWindows:
    """Schedules the window checks of one stream and says how far the text may be released.

    Pipelined with generation; the unit (``release_unit``) says what a check covers and may release:

    - ``"sentence"`` (default): a window ends at a sentence end, where a Gen model judges best (it is
      trained on whole responses: the demo guard flags "Mix ammonium nitrate ... add a fuse." only once
      the clause is complete). A sentence of ``min_segment`` characters or more is checked as soon as it
      ends; a shorter one is checked at once when no check is in flight (a safe first sentence of four
      words or more goes out one judge call after it ended), else joined to the next. A sentence or line
      whose check could release nothing (no word in sight: "x\n", "\n"; "Yes." alone) is joined to the
      next too (`_gain`). Calls per answer: at most one per sentence that releases text, plus one per
      ``check_every`` characters without one.
    - ``"opening"``: ``"sentence"``, except that the answer's first check comes as soon as two complete
      words have arrived (a word still arriving is left out: a Gen model may misread "The Eiffe") and
      releases them but the last, so the first text goes out one judge call after the second word, not
      after the first sentence; from then on, whole sentences (the next window shows the opening words
      again as its context). One call more per answer. The trade, and why it is not the default: that
      first check judges a cut text, which Qwen3Guard-Gen is not trained on, and a judge that recognises a
      clause only whole lets an answer's first words out when the answer opens with that clause.
    - ``"word"``: when no check is in flight, everything received so far is judged (however short, if
      judging it lets more text out); text arriving meanwhile is judged as one segment when it comes back.
      Released: judged text but its last word (see `releasable`). Lower latency to the first words; a
      judge that recognises a clause only whole may let its first words out. Calls per answer: at most
      one per judge latency and one per delta, plus one per ``check_every`` characters.

    Text longer than ``check_every`` is always cut (at a sentence end, else a space), so a window is
    never longer than ``context + check_every`` characters. Judged text goes out whole only when it ends a
    sentence of `MIN_SENTENCE_WORDS` words or more with terminal punctuation; any other (a cut at a space, a
    word-unit window, a line without punctuation, "Yes.") goes out but its last word, which waits for a
    window that shows what follows (`releasable`).
    """

    def __init__(self, core: MonitorCore, *, start: int = 0, held: str = "", takeover: bool = False) -> None:
        """``start``/``held``: the engine takes over a stream at ``start`` (the Stream model failed open),
        with ``held`` (the text after it) still to judge.

        ``takeover``: this engine goes on with a stream another engine judged (a Stream session that
        failed). It then releases only judged text even with ``holdback=0``: there, the Stream model
        released each delta once scored, and releasing the rest unjudged would switch the guard off."""
        self.core = core
        #: Release at once and only look for a late violation (``holdback=0`` chosen for Gen windows).
        self.at_once = core.holdback == 0 and not takeover
        self.check_every, self.min_segment, context, self.unit = core._window_opts
        # A word held back after a window (the opening cut's last word, a short sentence's, the last word before a
        # filler) is released only once a window judged it with what follows: each window shows at least
        # `MIN_CONTEXT` characters before its segment, whatever ``context`` says. With ``context=0`` the next
        # window began after "Mix", and " ammonium nitrate ..." alone was safe: the whole clause went out (rt53f F1).
        self.context = max(context, MIN_CONTEXT)
        self.unsubmitted = held  # text after `submitted`
        self.submitted = start  # chars handed to checks
        self.confirmed = start  # chars whose windows all came back safe or failed open (contiguous from 0)
        self.in_flight = 0  # checks handed out and not settled
        self.finished = False  # `rest` was taken: the whole text is (being) judged
        # The last `context` chars before `submitted` (released text, when taking over mid-stream).
        self.tail = visible_tail(core.released, self.context) if start and self.context else ""
        # The bidi controls open where `tail` starts: a window cut from inside a right-to-left override is
        # judged with them before it, so it is read as displayed (`content.read_as_displayed`), not reversed.
        self.bidi = BidiState()
        if start:
            self.bidi.push(core.released[: len(core.released) - len(self.tail)])
        self.timeout = core.policy.timeout_for(Stage.STREAM)
        self._last_boundary = (-1, -1, 0)  # (release point it was read at, judged up to, boundary): `_boundary`
        # The end of the text handed to checks (`_JUDGED_TAIL` chars): does a check of what waits release more?
        self.judged_tail = core.released[-_JUDGED_TAIL:] if start else ""  # `_gain` with ``holdback=0``
        # Chars of `unsubmitted` whose sentence ends were found to release nothing (`_gain`), at a release point.
        self._plain, self._plain_at = 0, start
        self._before: tuple[tuple[int, int], int] = ((-1, -1), 0)  # `_releasable_before`: (key, its value)

    def add(self, delta: str) -> list[tuple[int, int, list[dict[str, str]]]]:
        """Append text; return the (start, end, conversation) checks that are due now."""
        waiting, self.unsubmitted = self.unsubmitted, ""
        waiting += delta  # in place: see `MonitorCore._append`
        self.unsubmitted = waiting
        return self.due()

    def due(self) -> list[tuple[int, int, list[dict[str, str]]]]:
        """The checks to start now (call again after settling results: an idle engine judges what waits)."""
        idle = self.in_flight == 0
        checks: list[tuple[int, int, list[dict[str, str]]]] = []
        if self.unit != "word":
            while self._room() and (cut := self._sentence_cut(idle and not checks)) > 0:
                checks.append(self._take(cut))
            if self.unit == "opening" and idle and not checks and self.submitted == 0:
                if cut := self._opening_cut():
                    checks.append(self._take(cut))  # the opening words, see the class docstring
            return checks
        while self._room() and len(self.unsubmitted) > self.check_every:
            checks.append(self._take(self._long_cut()))
        if idle and self._room() and self.unsubmitted.strip() and self._worth_judging():
            checks.append(self._take(len(self.unsubmitted)))
        return checks

    def rest(self) -> list[tuple[int, int, list[dict[str, str]]]]:
        """The final segments at finish (whitespace-only text needs no check), as many as may run now:
        call again as checks settle until it returns none."""
        self.finished = True
        checks: list[tuple[int, int, list[dict[str, str]]]] = []
        while self._room() and len(self.unsubmitted) > self.check_every:
            checks.append(self._take(self._long_cut()))
        if not self._room() or len(self.unsubmitted) > self.check_every:
            return checks
        if self.unsubmitted and not self.unsubmitted.strip() and not checks:
            self.submitted += len(self.unsubmitted)
            if self.in_flight == 0:
                self.confirmed = self.submitted
            self.unsubmitted, self._plain = "", 0
        elif self.unsubmitted:
            checks.append(self._take(len(self.unsubmitted)))
        return checks

    def _room(self) -> bool:
        return self.in_flight < self.core.max_windows_in_flight

    def _sentence_cut(self, idle: bool) -> int:
        """The next segment's end: a sentence end (any length when ``idle``, else ``min_segment`` or
        more) whose check could release more text (`_gain`), else a cut of text longer than ``check_every``;
        0 when none is due.

        A sentence end whose check would release nothing is no reason for a check: lines without a word ("x\n",
        "7\n", "\n", "X | O | X\n"), which `releasable` holds until a word or the end, were judged one window per
        line, each releasing nothing (rt53b F1: 500 checks per 1000 characters, and a server client feeding one
        "\n" per frame got a check per frame). They wait and join the next sentence, and are judged at least once
        per ``check_every`` characters (the cut of a longer text) and at the end (`rest`)."""
        text = self.unsubmitted
        limit = min(len(text), self.check_every)
        shortest = 1 if idle else self.min_segment
        if self._plain_at != self.core._released_len:  # text went out: what a check releases is read anew
            self._plain, self._plain_at = 0, self.core._released_len
        for m in _SENTENCE_END.finditer(text, 0, limit + 1):
            end = m.end()
            if end >= shortest and end > self._plain:
                if self._gain(end, self._plain):
                    return end  # the first one: each sentence gets a window that ends with it
                self._plain = end  # tested once: the text before it and after `submitted` stays the same
        if idle and self._plain < len(text) <= limit and text.strip() and ends_clause(text):
            if self._gain(len(text), self._plain):
                return len(text)  # "... Paris." with its space still to come: the sentence has ended
            self._plain = len(text)
        return self._long_cut() if len(text) > self.check_every else 0

    def _gain(self, cut: int, tested: int = 0) -> bool:
        """Would a check of the waiting text up to ``cut`` (the checks handed out coming back safe) let more
        text out than those checks do: a word more, not a space or a filler? ``tested``: a shorter cut found to
        release nothing, so only the text after it can. Scheduling only: what goes out is still `releasable` of
        judged text (`_boundary`).

        Bounded work on hostile text: the judged text is read back at most `_JUDGED_TAIL` chars (`releasable`
        reads `_SCAN`), and new text without a word is read alone: it releases more only when it closes a
        sentence of four words ("... is 7.": a lone letter or digit counts there) or goes on with the last run
        of characters before it (a word split between two deltas)."""
        segment = self.unsubmitted[:cut]
        if self.at_once:  # released at once: would it release more if it held (the judged text's end)
            before = self.judged_tail
        else:  # from the release point, as `_boundary` reads it: "Paris." alone is no sentence of four words
            core = self.core
            judged = max(0, self.submitted - core._released_len)  # `submitted` is never before the release point
            before = core._buffer[max(0, judged - _JUDGED_TAIL) : judged]
        new = segment[tested:]
        last = segment[tested - 1] if tested else before[-1:]
        text = before + segment
        goes_on = bool(last) and last not in " \t\n" and bool(new) and new[0] not in " \t\n"  # a run `releasable` reads
        if not _TWO_ALNUM.search(new) and not goes_on:
            if not _closes_sentence(new.rstrip()):
                return False  # no word, no sentence end: what is held stays held
            stripped = text.rstrip()
            # The last line is where the sentence starts at the latest: `ends_sentence` reads the same there.
            if not ends_sentence(text[max(0, stripped.rfind("\n")) :]):
                return False
            return bool(text[self._releasable_before(before) :].strip())
        return bool(text[self._releasable_before(before) : releasable(text)].strip())

    def _releasable_before(self, before: str) -> int:
        """`releasable` of the judged text's end ``before`` (`_gain`), read once per check handed out and
        release point."""
        key = (self.submitted, -1 if self.at_once else self.core._released_len)
        if self._before[0] != key:
            self._before = (key, releasable(before))
        return self._before[1]

    def _opening_cut(self) -> int:
        """``"opening"``: the end of the answer's complete words so far, when judging them releases a word
        (all but the last of them); else 0. A word still arriving is left out: a Gen model may misread a
        cut one ("The Eiffe")."""
        if self.at_once:
            return 0  # released at once anyway
        text = self.unsubmitted
        end = len(text)
        while end and not text[end - 1].isspace():  # back over the last word, which may still be arriving
            end -= 1
        cut = len(text[:end].rstrip())
        return cut if text[: releasable(text[:cut])].strip() else 0

    def _worth_judging(self) -> bool:
        """Would a check of everything received let more text out than what is judged already?"""
        if self.at_once:  # released at once: checks only look for a late violation
            return True
        return self._gain(len(self.unsubmitted))  # a word more, not a space

    def _long_cut(self) -> int:
        """Where to cut text longer than ``check_every``: the last sentence end past ``min_segment``,
        else the last space, else ``check_every``."""
        text, limit = self.unsubmitted, self.check_every
        end = 0
        for m in _SENTENCE_END.finditer(text, 0, limit + 1):
            if m.end() >= self.min_segment:
                end = m.end()
        if end:
            return end
        space = text.rfind(" ", self.min_segment, limit)
        return space if space > 0 else limit

    def _take(self, cut: int) -> tuple[int, int, list[dict[str, str]]]:
        segment, self.unsubmitted = self.unsubmitted[:cut], self.unsubmitted[cut:]
        start = self.submitted
        self.submitted += cut
        self.judged_tail = (self.judged_tail + segment)[-_JUDGED_TAIL:]
        self._plain = 0
        self.in_flight += 1
        text = self.tail + segment
        self.tail = visible_tail(text, self.context) if self.context else ""
        window = self.bidi.opened + text  # "" but inside embedding, override or isolate controls
        self.bidi.push(text[: len(text) - len(self.tail)])
        conversation = [*self.core.messages, {"role": "assistant", "content": window}]
        return start, start + cut, conversation

    def settle(self, start: int, end: int, outcome: Any) -> None:
        """One window's result, in order: advance `confirmed`, or flag / fail via the core.

        A flag's offset is where release stopped before the window (the segment's start; at word
        granularity, the held word before it: the judge may have needed the window to see its clause)."""
        core = self.core
        self.in_flight = max(0, self.in_flight - 1)
        if isinstance(outcome, Verdict):
            if not outcome.is_safe:
                core._decide_flag(outcome, self._boundary(start))
        else:
            error = outcome if isinstance(outcome, BaseException) else QwenGuardError(str(outcome))
            core._fail_open(error, self._boundary(start))  # raises when failing closed; else this window passes
        self.confirmed = end

    def _boundary(self, confirmed: int) -> int:
        """The release point when the text is judged up to ``confirmed``."""
        core = self.core
        base = core._released_len
        if confirmed <= base:
            return confirmed
        if self.finished and confirmed >= self.submitted and not self.unsubmitted:
            return confirmed
        # The same judged text gives the same point: `release` runs on every feed, and reading the judged
        # text again each time is quadratic when it stays held (a long run of spaces after a short sentence).
        if self._last_boundary[:2] == (base, confirmed):
            return self._last_boundary[2]
        # Judged text that ends a sentence goes out whole; any other (a word-unit window, a run-on text cut
        # at a space, a short sentence or line) keeps its last word until a window shows what follows.
        point = base + releasable(core._buffer[: confirmed - base])
        self._last_boundary = (base, confirmed, point)
        return point

    def release(self) -> str:
        core = self.core
        if self.at_once:
            return core._release_all()
        return core._release_to(self._boundary(self.confirmed))


class WindowJudge:
    """Runs one stream's window checks on the guard's backend, each returning its verdict or its error.

    With the local decode engine, the checks run through a `GenSessionPool` of the stream: consecutive
    windows share the guard prompt up to the answer (instructions, the user's request, the history) and
    often the start of the answer, so a check pays only for what differs, with the same verdict as a full
    check. A window due while the stream's session is busy gets a second one, which starts from a copy of
    the first's cache; past `SESSIONS_PER_STREAM`, it waits for a session to be free (windows go out in
    order, so a later one waits for the earlier ones anyway). The stream's first check is waited for too:
    until it is back no cache holds the request. Remote guards and ``engine=False`` run full checks.
    `close` frees the caches."""

    def __init__(self, backend: Any, max_sessions: int = SESSIONS_PER_STREAM, *, reread: bool = False) -> None:
        from .gate_session import open_gen_session

        self.backend = backend
        self.pool = open_gen_session(backend, max_sessions)  # None: remote, or no engine
        #: Judge a window whose answer was no verdict again with less context (`least_contexts`): only where the
        #: policy lets a guard error through, as `Guard` does; failing closed, the error blocks and a controversial
        #: reading a loose policy allows would loosen it (rt51g F1).
        self.reread = reread

    # The window's context is the client's prompt: padded (400 "x"), it broke the model's answer on every window, and
    # a fail-open policy released the whole harmful answer. As `Guard` does for its checks, a window whose answer was
    # no verdict is judged once more on its least context (`least_contexts`: the answer after an empty request), and
    # only a verdict that is not safe is kept from that (rt51d F7).
    def check(self, conversation: list[dict[str, str]], timeout: float | None) -> Any:
        """The verdict (or the error) for one window; runs on a worker thread."""
        outcome = self._check(conversation, timeout)
        if self.reread and isinstance(outcome, VerdictParseError):
            return _stricter(
                outcome, [self._check(least, timeout, shared=False) for least in least_contexts(conversation)]
            )
        return outcome

    def _check(self, conversation: list[dict[str, str]], timeout: float | None, *, shared: bool = True) -> Any:
        try:
            if self.pool is not None and shared:
                return self.pool.classify(conversation, timeout=timeout)
            return self.backend.classify([conversation], timeout=timeout)[0]
        except Exception as exc:  # noqa: BLE001 - any backend failure is the policy's on_error
            return exc

    async def acheck(self, conversation: list[dict[str, str]], timeout: float | None) -> Any:
        """Async twin of `check`."""
        outcome = await self._acheck(conversation, timeout)
        if self.reread and isinstance(outcome, VerdictParseError):
            return _stricter(
                outcome, [await self._acheck(least, timeout, shared=False) for least in least_contexts(conversation)]
            )
        return outcome

    async def _acheck(self, conversation: list[dict[str, str]], timeout: float | None, *, shared: bool = True) -> Any:
        try:
            if self.pool is not None and shared:
                call = self.pool.aclassify(conversation, timeout=timeout)
            else:
                call = _first(self.backend.aclassify([conversation], timeout=timeout))
            if timeout is None:
                return await call
            # The backend's own deadline and this one fire together: the check may end with its error just
            # as wait_for gives up on it; retrieve that error (else asyncio logs "Task exception was never
            # retrieved" for every such window: a client could flood the operator's logs).
            task = asyncio.ensure_future(call)
            task.add_done_callback(_retrieve)
            return await asyncio.wait_for(task, timeout)
        except asyncio.TimeoutError:
            return GuardTimeout(f"stream window check took longer than {timeout}s")
        except Exception as exc:  # noqa: BLE001
            return exc

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _stricter(error: Any, readings: list[Any]) -> Any:
    """A window's error, or the worst verdict of its turn read with less context where that is not safe."""
    found = [v for v in readings if isinstance(v, Verdict) and v.risk is not Risk.SAFE]
    return worst(found) if found else error


async def _first(call: Any) -> Any:
    return (await call)[0]


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
