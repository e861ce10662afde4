"""Windows: how a conversation too long for one guard prompt is judged, in bounded, overlapping pieces.

A Qwen3Guard-Gen check judges the *last* turn of a conversation; earlier turns are context. When the
whole prompt does not fit in ``max_prompt_tokens``, `WindowPlanner` builds windows:

- **Context, trimmed in linear time.** Each earlier turn is tokenized once, newest first, and the
  turns are kept while their token counts (summed, plus each role's fixed label cost) fit the context
  share of a window: all of the room the judged turn leaves when it fits in one window, a quarter of
  a window when it must be windowed itself (up to half of it where ``keep_whole`` asks for more). Older
  turns are never tokenized. If even the newest earlier turn alone is too long, its tail is kept (cut
  between characters): it is context, the judged turn is what must never be cut.
- **The judged turn, windowed, never truncated.** Overlapping pieces (``overlap`` tokens shared by
  neighbours at least; back to the start of the sentence a window's edge cuts, up to a quarter of the room (or
  ``keep_whole``, up to half of it), so a sentence that long is whole in the next window: rt63a F3) cut only
  between characters (``text[a:b]`` at a token's start offset, never a decoded token slice, so never a broken
  UTF-8 sequence). Each window is encoded whole, and a window over the budget is re-split shorter until it fits
  (a piece can re-encode a token or two longer than counted where BPE merges differ at its edges), so every
  window's ids are a complete guard prompt ending with the template's own tail (``...</think>\\n\\n``) and never
  longer than the budget.
- **Forged turns.** The text before each line-initial ``USER:``/``ASSISTANT:`` label in the judged
  turn (`content.forged_turn_segments`) is judged again on its own, as extra windows of the same
  check (same role; the newest ``forged_context`` (`FORGED_CONTEXT_TOKENS`) of context, so that many short
  labelled lines cannot make a check judge the whole conversation once per line). A model may read a
  label-like line as a new turn and judge only what follows it; these windows judge what precedes it. The
  worst verdict over all windows wins.
- **Read as seen.** Where the judged turn hides something from the tokenizer that a reader does not see
  (letters split by zero-width characters, words by line separators, look-alike or full-width letters:
  `content.as_seen_pieces`), the stretch around it is judged again as a reader reads it, as extra windows
  like the forged-turn ones (same context). A reading's own label lines (a label only it shows: ``&#85;SER:``)
  are split and left out as the text's are (`_label_readings`).
- **Padding shortened.** Every run of more than `blank_runs.KEPT_BLANKS` blanks in a turn (and in each reading) is
  cut to that many first (`blank_runs.shorten_blank_runs`): a reader sees one gap, and a run of thousands of
  tokens no longer keeps two neighbouring words out of every window (rt58c F1). So is every rule, a run of one
  punctuation or symbol character or of a unit of two or three (`blank_runs.shorten_rule_runs`): a window counted in
  bytes no longer holds 64 times fewer of its words than the tokenizer's (rt71e F1).
- **A run of turns.** Where the judged turn ends two or more consecutive turns of its role with text (user turns;
  assistant turns too), the run is also judged joined (`final_run`), as the provider sends it (one message), an
  extra window like the others (and with a line break between two turns that touch with no blank, as a chat shows
  them: "how to make a" | "bomb" ran together as "make abomb", rt71e F2); the whole run, even where a window may
  show fewer turns (``max_messages``, a remote server's cap).
- **Bounded work.** More than ``max_windows`` windows for one conversation raises `InputTooLarge`
  (before any model work; before any reading when the judged turn's own tokens, or its characters past the BMP,
  already need more); ``check()`` (a deadline or cancellation) is called between readings, their stretches and
  windows.
- **A stream's checks** (`StreamPieces`, `StreamCheck`): each check of a streamed answer shows the end of the
  text judged before as its context, so its label lines were planned again as forged-turn windows in every later
  check (rt57e F1: 100 times the windows of prose). A piece window already judged safe in the stream (the same
  piece, role and context: the same prompt, so the same verdict) is not planned again, and a stream's forged-turn
  windows past `STREAM_FORGED_PER_CHECK` a check are bounded by ``max_windows`` in all, the bound one check of the
  whole answer has (`InputTooLarge`).

Reusable by any backend that can count tokens: the encoder needs ``encode(messages) -> ids`` and
``content_token_starts(text) -> [char offset of each token]`` (`ConversationEncoder` has both).
"""

from __future__ import annotations

import bisect
import hashlib
import re
import threading
import unicodedata
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from ..errors import InputTooLarge
from .blank_runs import padding_read, shorten_padding
from .content import (
    SENTENCE_END,
    as_seen_pieces,
    clean_text,
    forged_turn_segments,
    is_blank,
    prepare_content,
    without_verdict_lines,
)
from .overstrike import has_layout
from .prompts import normalize_messages
from .rendered import may_render_differently

__all__ = [
    "Window",
    "WindowPlanner",
    "TokenCounter",
    "DEFAULT_MAX_WINDOW_TOKENS",
    "DEFAULT_WINDOW_OVERLAP",
    "DEFAULT_MAX_WINDOWS",
    "CALL_WINDOW_BUDGET",
    "over_call_budget",
    "CALL_WINDOW_ACCOUNT",
    "WindowAccount",
    "window_budget",
    "StreamPieces",
    "StreamCheck",
    "STREAM_FORGED_PER_CHECK",
]

#: Longest guard prompt of one window, in tokens (template included; the model's context may be longer).
#: Why well under Qwen3Guard's 32K context: attention work grows with length squared, and where it is
#: materialised (CPU, eager attention) so does memory: one 32K window costs 64x the attention of a
#: 4K one, and a batch of three asked for a 12.8 GB mask. And Qwen3Guard was trained on moderation
#: conversations (1.19M labelled prompts and responses), not on 32K documents; overlapping 4K windows
#: keep each judgement close to what it was trained on, at the price of a few more forwards.
DEFAULT_MAX_WINDOW_TOKENS = 4096
#: Tokens shared by neighbouring windows at least. Where a window's edge cuts a sentence longer than that, the next
#: window starts at the sentence's start (`_sentence_start`), up to a quarter of a window back (about 1,000 tokens of
#: a 4K window): a sentence cut at one window's edge is whole in the other if it is no longer than that (rt63a F3).
DEFAULT_WINDOW_OVERLAP = 64
#: Windows one conversation may need (forged-turn windows included). A 1 MB English text at 4K-token
#: windows needs about 70; more is refused (`InputTooLarge`) rather than run.
DEFAULT_MAX_WINDOWS = 256
#: Tokens one character of NFC text is at most in a byte-level encoding (four UTF-8 bytes): a text in NFC of fewer
#: characters than ``max_windows`` windows hold at that rate is never counted before its readings
#: (`WindowPlanner.plan`). Any other text is: Qwen3's normalizer (NFC) makes up to three characters of one, U+FB2C
#: five tokens and U+1D160 six (rt70h F2).
MAX_TOKENS_PER_CHAR = 4
#: Windows one backend call may plan over all of its conversations, where the caller sets a budget (``qwenguard
#: serve``: ``--max-windows-per-request``, for the request being served). ``max_windows`` bounds one conversation,
#: not a batch of them: 256 conversations of forged turn labels planned 25,000 windows and ran to the request's
#: deadline. ``None`` (a library call): each conversation's ``max_windows`` only.
CALL_WINDOW_BUDGET: ContextVar[int | None] = ContextVar("qwenguard_call_window_budget", default=None)


def over_call_budget(windows: int, budget: int | None) -> InputTooLarge | None:
    """The error for a call whose conversations need ``windows`` windows in all, past ``budget``; else None."""
    if budget is None or windows <= budget:
        return None
    return InputTooLarge(
        f"these conversations need more than {budget} windows in all (forged-turn and read-as-seen windows "
        "included); send fewer at once, or raise the budget (qwenguard serve --max-windows-per-request)"
    )


class WindowAccount:
    """Windows planned over every backend call made inside one caller's call (`window_budget`): one integration
    call judges each user turn of a client's history as its own check, up to ``max_windows`` each, so K turns of
    label lines planned about 255*K windows (rt57e F2); the guard's retries and re-reads are further backend calls.
    Thread-safe; nested accounts charge their outer ones too."""

    def __init__(self, budget: int, outer: WindowAccount | None = None) -> None:
        if budget < 1:
            raise ValueError("a window budget must be >= 1")
        self.budget = budget
        self.used = 0
        self.outer = outer
        self._lock = threading.Lock()

    def charge(self, windows: int) -> InputTooLarge | None:
        """Count ``windows`` more; the error (nothing counted) when that passes this budget or an outer one."""
        with self._lock:
            if self.used + windows > self.budget:
                return InputTooLarge(
                    f"this call's checks need more than {self.budget} guard windows in all (forged-turn and "
                    "read-as-seen windows included); send less at once, or raise the budget (max_windows_per_call)"
                )
            if self.outer is not None and (error := self.outer.charge(windows)) is not None:
                return error
            self.used += windows
        return None


#: The `WindowAccount` of the caller's call, where one is set (`window_budget`); ``None``: no bound across calls.
CALL_WINDOW_ACCOUNT: ContextVar[WindowAccount | None] = ContextVar("qwenguard_call_window_account", default=None)


@contextmanager
def window_budget(budget: int | None) -> Iterator[WindowAccount | None]:
    """Bound the guard windows of every backend call planned inside the block to ``budget`` in all (the local Gen
    backend reads it on the caller's side, as `CALL_WINDOW_BUDGET`); ``None``: the block adds no bound. Sync and
    async alike (a context variable: each task keeps its own)."""
    if budget is None:
        yield CALL_WINDOW_ACCOUNT.get()
        return
    account = WindowAccount(budget, CALL_WINDOW_ACCOUNT.get())
    token = CALL_WINDOW_ACCOUNT.set(account)
    try:
        yield account
    finally:
        CALL_WINDOW_ACCOUNT.reset(token)


#: Context tokens a forged-turn piece's window carries (the newest earlier turns, or the tail of the last).
FORGED_CONTEXT_TOKENS = 256
#: A window must hold at least this many content tokens, or the context is dropped to make room.
MIN_WINDOW_CONTENT = 16


#: Forged-turn windows a stream check plans free of its stream's bound (`StreamPieces`): ordinary text needs none,
#: a dialogue one or two a check. Read-as-seen windows are not counted: they cost at most about the check's own
#: text (`content.as_seen_pieces`), where a forged-turn window is the whole template per label line.
STREAM_FORGED_PER_CHECK = 2
#: Piece windows a stream remembers as judged (`StreamPieces`): the oldest are forgotten first (judged again).
_PIECES_REMEMBERED = 1024


class StreamPieces:
    """The piece windows (forged-turn, read-as-seen) one streamed answer's checks planned, and which came back
    judged.

    Each check of a stream shows the end of the text judged before it as context, so every label line in it was a
    forged-turn window again in each later check (rt57e F1: a stream of "\\nUSER: a" lines planned 100 times the
    windows of prose, linear in its length and bounded by nothing). A piece window is the piece alone after the
    same newest context (the stream's prompt): one whose key (role, context, piece) came back in a judged check is
    the same prompt, with the same verdict, and is not planned again; a piece that goes on into the new text is
    another piece and is. Forged-turn windows past `STREAM_FORGED_PER_CHECK` a check count against ``max_windows`` for
    the whole stream, the bound one check of the whole answer has: past it, `InputTooLarge` (the stream fails
    closed). Thread-safe: a stream's checks run on several threads at once."""

    def __init__(self) -> None:
        self._judged: dict[bytes, None] = {}  # keys of windows judged, oldest first
        self.spent = 0  # forged-turn windows planned past the free ones, over the stream
        self._lock = threading.Lock()

    def seen(self, key: bytes) -> bool:
        with self._lock:
            return key in self._judged

    def commit(self, keys: Sequence[bytes]) -> None:
        """``keys`` came back judged (a verdict, not an error: a check that failed is judged again)."""
        with self._lock:
            for key in keys:
                self._judged[key] = None
            while len(self._judged) > _PIECES_REMEMBERED:
                del self._judged[next(iter(self._judged))]

    def charge(self, windows: int, max_windows: int) -> InputTooLarge | None:
        """Count a check's ``windows`` forged-turn windows; the error once the stream is past ``max_windows``."""
        with self._lock:
            self.spent += max(0, windows - STREAM_FORGED_PER_CHECK)
            if self.spent <= max_windows:
                return None
        return InputTooLarge(
            f"this streamed answer needs more than max_windows={max_windows} forged-turn windows over its checks "
            "(one for each line that starts with a turn label); the stream is stopped and what it held is not "
            "released"
        )


class StreamCheck(list):  # type: ignore[type-arg]
    """One stream check's conversation, with its stream's `StreamPieces`: the Gen planner skips the piece windows
    judged before in the stream and records the ones it plans (`planned`), which `StreamPieces.commit` marks
    judged once the check comes back with a verdict. A plain list plans every piece."""

    def __init__(self, conversation: Sequence[dict[str, str]], pieces: StreamPieces) -> None:
        super().__init__(conversation)
        self.pieces = pieces
        self.planned: list[bytes] = []

    def commit(self) -> None:
        self.pieces.commit(self.planned)


def _piece_key(context: list[dict[str, str]], role: str, piece: str) -> bytes:
    """What a piece window shows, as a key: its context turns, its role, its text (a digest, no collision)."""
    digest = hashlib.blake2b(digest_size=16)
    for turn in [*context, {"role": role, "content": piece}]:
        for part in (turn["role"], turn["content"]):
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.digest()


@lru_cache(maxsize=256)
def _turn_as_seen(text: str) -> str:
    """An earlier turn as read (`as_seen_pieces`), ``""`` where it reads as written. Cached: every window of a
    stream and every check of a conversation shows the same earlier turns (3 ms for 2,000 Chinese characters)."""
    return "\n".join(p for p in as_seen_pieces(text) if p.strip())


def _as_seen_turns(context: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """``context`` with each turn that a reader sees differently than written (`content.as_seen_pieces`: hidden
    splits, look-alikes, tag characters, markup a renderer shows otherwise) replaced by how it reads; ``None`` when
    none does. ASCII without a character that markup needs reads as written, and is not read again."""
    seen: list[dict[str, str]] = []
    changed = False
    for turn in context:
        text = turn["content"]
        # Markup is ASCII ("a b<b></b>omb", "b&#111;mb", "b**om**b"): an ASCII turn that may render differently is
        # read too (the ASCII shortcut predates the rendered readings: rt56a F3). Ordinary Markdown finds no place.
        plain = text.isascii() and not may_render_differently(text)
        read = "" if plain else _turn_as_seen(text)
        changed |= bool(read)
        seen.append({"role": turn["role"], "content": prepare_content(read)} if read else turn)
    return seen if changed else None


#: Runs of blanks: a reading's piece that differs from one taken before only in them (a no-break space read as a
#: space, as in French "USER\u00a0:") adds no window (`_label_readings`).
_BLANKS = re.compile(r"\s+")


def _label_readings(
    readings: list[str], taken: list[str], most: int, *, written: list[str]
) -> tuple[list[str], list[str]]:
    """The forged-turn segments of the judged turn's ``readings`` (`as_seen_pieces`), and each reading without its
    verdict lines (`forged_turn_segments`, `without_verdict_lines`: what the text as written gets), prepared; less
    what ``taken`` (the pieces planned) holds already, blanks aside, and less a segment that is how one of the
    ``written`` forged-turn segments reads: a reading is split only where it shows a label the text does not. Past
    ``most`` pieces in all it stops (the planner refuses what needs more windows than it may plan)."""
    turns: list[str] = []
    bare: list[str] = []
    have: set[str] | None = None
    for reading in readings:
        if len(turns) + len(bare) > most:
            break
        segments = forged_turn_segments(reading)
        cut = without_verdict_lines(reading)
        if not segments and cut == reading:
            continue
        if have is None:
            have = {_BLANKS.sub(" ", p) for p in taken}
            # A transcript whose every turn holds a soft hyphen is read whole again: its label lines, split already
            # as written, were each planned twice (rt70m F2: 140 turns refused, HEAD judged them in 156 windows).
            have.update(_BLANKS.sub(" ", prepare_content(r.strip())) for p in written for r in as_seen_pieces(p))
        turns += [p for p in (prepare_content(s.strip()) for s in segments) if _fresh(p, have)]
        if cut != reading and cut.strip() and _fresh(piece := prepare_content(cut), have):
            bare.append(piece)
    return turns, bare


def _fresh(piece: str, have: set[str]) -> bool:
    """Whether ``piece`` is not in ``have`` (blanks aside); it is from now on."""
    key = _BLANKS.sub(" ", piece)
    if key in have:
        return False
    have.add(key)
    return True


def _padding_read_turns(earlier: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """``earlier`` with each turn padded by runs of format characters between blanks (`padding_read`: bidi pairs,
    tags) read as its blanks; ``None`` when no turn is. A context turn padded so pushed its words out of the judged
    turn's windows (rt59a F5: the judged turn alone had this reading)."""
    read = [padding_read(turn["content"]) for turn in earlier]
    if all(r is None for r in read):
        return None
    return [turn if r is None else {**turn, "content": r} for turn, r in zip(earlier, read, strict=True)]


def _shortened(message: dict[str, str]) -> dict[str, str]:
    content = shorten_padding(message["content"])
    return message if content is message["content"] else {**message, "content": content}


def final_run(messages: Sequence[dict[str, str]], separator: str = "") -> str | None:
    """The texts of the consecutive turns of the judged (last) turn's role that end ``messages``, joined as one
    message reads them (as the integrations join a run, `"".join`; ``separator`` between two turns where neither
    side has a blank, a line break as a chat shows the turns), when two or more of them have text, or they are
    the assistant's, the judged one shows nothing and an earlier one has text; else ``None``. A provider sends
    consecutive turns of one role as one message (the Anthropic API combines them): a run of user turns as one
    prompt, a run of assistant turns as one answer (rt62f F2b); ``[call send_email(recipe), ""]`` is that call, and
    was judged as ``""`` (rt63g F1); a blank user turn after a request is judged with the request as its context. A
    turn of the other role that shows nothing (`is_blank`: ``"\u200b"`` too, rt63g F1) inside the run is skipped (a
    provider drops it); system turns are gone already (`normalize_messages`).
    Linear: each turn of the run is read once."""
    if not messages:
        return None
    role = messages[-1]["role"]
    raw: list[str] = []
    for turn in reversed(messages):
        if turn["role"] == role:
            raw.append(turn["content"])
        elif not is_blank(turn["content"]):
            break
    if not any(t.strip() for t in raw[1:]):  # a lone turn (every answer to a question): nothing read again
        return None
    texts = [clean_text(t, keep_lone_cr=True, keep_moves=True) for t in reversed(raw)]  # laid out (`as_seen_pieces`)
    shown = sum(1 for t in texts if not is_blank(t))
    if shown < 2 and (shown == 0 or role != "assistant" or not is_blank(texts[-1])):  # the judged turn's text alone
        return None
    if not separator:
        return "".join(texts)
    joined: list[str] = []
    for text in (t for t in texts if t):
        if joined and not joined[-1][-1].isspace() and not text[0].isspace():
            joined.append(separator)
        joined.append(text)
    return "".join(joined)


def user_run(messages: Sequence[dict[str, str]]) -> str | None:
    """`final_run` where the judged turn is a user's, else ``None``."""
    return final_run(messages) if messages and messages[-1]["role"] == "user" else None


def _sentence_start(piece: str, starts: list[int], lo: int, j: int) -> int:
    """The first token of the sentence that token ``j`` (a window's end) cuts, looked for back to token ``lo``; ``lo``
    when none starts there (a clause without a sentence end before it is kept whole as far back as that)."""
    last = deque(SENTENCE_END.finditer(piece, starts[lo], starts[j] if j < len(starts) else len(piece)), maxlen=1)
    if not last:
        return lo
    return bisect.bisect_right(starts, last[0].start(), lo, j)  # the token after the one the sentence's end starts in


class TokenCounter(Protocol):
    """What the planner needs from an encoder (`ConversationEncoder` is one). A counter that counts other units than
    tokens may name them (``unit``, e.g. ``"bytes"``) and say how to count finer (``advice``): the planner's
    `InputTooLarge` words its limit so."""

    def encode(self, messages: Sequence[dict[str, Any]]) -> Sequence[int]: ...

    def content_token_starts(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Window:
    """One guard prompt: the conversation shown (context turns, then a piece of the judged turn) and its ids.

    ``messages`` suits backends that send messages (remote chat mode); ``ids`` those that send tokens.
    The last message holds the window's text as the model sees it (after `content.prepare_content`,
    which is idempotent, so sending it on through the same rule changes nothing). ``piece`` is 0 for
    the judged turn and k for its k-th forged-turn segment; ``span`` is where the text lies in that piece."""

    messages: list[dict[str, str]]
    ids: Sequence[int]  # a list of real ids; a byte counter's stand-in ``range`` when sized without a tokenizer
    piece: int = 0
    span: tuple[int, int] = (0, 0)


#: `astral_per_token` of each tokenizer read (a weak key: the tokenizer's lifetime).
_ASTRAL_BOUNDS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_ASTRAL_LOCK = threading.Lock()


def astral_per_token(tokenizer: Any) -> int:
    """The most characters past the BMP one token of ``tokenizer``'s vocabulary holds, for a byte-level BPE: the lead
    bytes (0xF0-0xF4, "ð"-"ô" as such a vocabulary writes bytes) in its longest run of them; 0 for any other
    tokenizer (no bound). Read once per tokenizer: building the vocabulary's dict holds the GIL ~0.2-0.3 s, and each
    planner paid it again (rt69o F3)."""
    if tokenizer is None:
        return 0
    with _ASTRAL_LOCK:
        try:
            known = _ASTRAL_BOUNDS.get(tokenizer)
        except TypeError:  # not weakly referable: read each time
            known = None
        if known is not None:
            return known
        vocab: dict[str, int] = getattr(tokenizer, "get_vocab", dict)()
        bound = max(1, *(sum(c in "ðñòóô" for c in token) for token in vocab)) if "Ġ" in vocab else 0
        try:
            _ASTRAL_BOUNDS[tokenizer] = bound
        except TypeError:
            pass
        return bound


class WindowPlanner:
    """Plans the windows of conversations for one encoder and budget.

    >>> planner = WindowPlanner(encoder, max_prompt_tokens=4096)      # doctest: +SKIP
    >>> [len(w.ids) for w in planner.plan(conversation)]               # doctest: +SKIP
    [4090, 4093, 1210]
    """

    def __init__(
        self,
        encoder: TokenCounter,
        *,
        max_prompt_tokens: int,
        overlap: int = DEFAULT_WINDOW_OVERLAP,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        keep_whole: int | None = None,
        forged_context: int = FORGED_CONTEXT_TOKENS,
    ) -> None:
        """``keep_whole``: what a window keeps whole back from its edge (a sentence the edge cuts) and of the earlier
        turns beside a windowed turn, up to half the room; ``None``: a quarter of the room (the local guard's
        windows). ``forged_context``: context a forged-turn piece's window carries at most (`FORGED_CONTEXT_TOKENS`).
        Both in the encoder's units: a counter of bytes keeps as much text whole as tokens do only where they are
        given in bytes (`remote_plan.RemotePlanner`: rt70e F1)."""
        if max_prompt_tokens < 1 or overlap < 0 or max_windows < 1:
            raise ValueError("max_prompt_tokens and max_windows must be >= 1, overlap >= 0")
        if (keep_whole is not None and keep_whole < 0) or forged_context < 0:
            raise ValueError("keep_whole and forged_context must be >= 0")
        self.encoder = encoder
        self.budget = max_prompt_tokens
        self.overlap = overlap
        self.max_windows = max_windows
        self.keep_whole = keep_whole
        self.forged_context = forged_context
        self._label_cost: dict[tuple[str, str], int] = {}
        self._base: dict[str, int] = {}
        self._astral_bound: int | None = None  # `_astral_per_token`, once read (0: no bound)

    def require_room(self, option: str = "max_window_tokens") -> None:
        """Refuse a budget no window can use: the guard prompt around one empty turn (of either role) and
        `MIN_WINDOW_CONTENT` tokens of text must fit. Asked when the guard is built, so that a budget too small is an
        error there, not at every check (where ``on_error="allow"`` let each check through, flagged: rt59b note)."""
        for role in ("user", "assistant"):
            overhead = self._empty_prompt(role)
            if self.budget - overhead < MIN_WINDOW_CONTENT:
                raise ValueError(
                    f"{option}: a window of {self.budget} tokens cannot hold the guard prompt ({overhead} tokens) "
                    f"and {MIN_WINDOW_CONTENT} tokens of text; raise it to at least {overhead + MIN_WINDOW_CONTENT}"
                )

    # -- fixed costs, measured once ---------------------------------------------------------------
    def _empty_prompt(self, role: str) -> int:
        """Tokens of the guard prompt around one empty turn of ``role`` (the template alone)."""
        if role not in self._base:
            self._base[role] = len(self.encoder.encode([{"role": role, "content": ""}]))
        return self._base[role]

    def _turn_cost(self, role: str, last_role: str) -> int:
        """Tokens one empty earlier turn of ``role`` adds (its label and separator), plus one of slack
        for a BPE merge across the separator."""
        key = (role, last_role)
        if key not in self._label_cost:
            two = len(self.encoder.encode([{"role": role, "content": ""}, {"role": last_role, "content": ""}]))
            self._label_cost[key] = max(0, two - self._empty_prompt(last_role)) + 1
        return self._label_cost[key]

    def _too_large(self) -> InputTooLarge:
        unit = getattr(self.encoder, "unit", "tokens")  # a byte counter's windows are of bytes (rt70e F2)
        return InputTooLarge(
            f"this conversation needs more than max_windows={self.max_windows} windows of at most "
            f"{self.budget} {unit} (forged-turn windows included); split it, or raise max_windows"
            f"{getattr(self.encoder, 'advice', '')}"
        )

    def _kept_whole(self, room: int) -> int:
        """Units of a window of ``room`` kept whole: back from its edge, and of earlier turns beside a windowed turn
        (a quarter of the room; ``keep_whole``, up to half of it, where that is more)."""
        quarter = room // 4
        return quarter if self.keep_whole is None else max(quarter, min(room // 2, self.keep_whole))

    # -- planning -----------------------------------------------------------------------------
    def plan(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        check: Callable[[], None] | None = None,
        join_runs: bool = True,
        max_messages: int | None = None,
        stream: StreamCheck | None = None,
    ) -> list[Window]:
        """The windows of one conversation (one window when it fits). Raises `InputTooLarge` past
        ``max_windows``, ``ValueError`` when the budget cannot hold even the template and a few tokens.
        ``join_runs=False``: the caller judges a final run of turns joined itself (`RunsJudged`).
        ``max_messages``: turns one window shows at most (a remote server's cap per request); the readings are
        still taken from the whole conversation, only the earlier turns shown as context are fewer.
        ``stream``: a stream check (`StreamCheck`): piece windows judged before in its stream are left out."""
        if max_messages is not None and max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        # Padding between two words ("mix" + " \t" * 12,000 + "ammonium") pushed one out of every window that showed
        # the other (rt58c F1): runs of blanks are shortened first, for the judged turn and its context alike.
        written = normalize_messages(messages)
        msgs = [_shortened(m) for m in written]
        *earlier, last = msgs
        # Its lone CRs, backspaces and control sequences read as a terminal shows them (`as_seen_pieces`); every other
        # reading reads it without the last two, as `clean_text` hands it on.
        kept = clean_text(last["content"], keep_lone_cr=True, keep_moves=True)
        judged = clean_text(kept, keep_lone_cr=True) if "\x08" in kept or "\x1b" in kept else kept
        pieces = [prepare_content(judged)]
        # The judged turn alone can need more windows than allowed: refused before any reading is taken (a text of
        # tag characters, read several times over, outlasted its check's deadline and was allowed unjudged under
        # on_error="allow", rt69h F2). Its tokens are counted only when they may be too many; they are its windows'.
        counted = shorten_padding(pieces[0])  # the judged turn's piece as its windows cut it (below)
        first_starts = self._starts_if_too_many(counted, last["role"])
        if check is not None:
            check()
        pieces += [prepare_content(s.strip()) for s in forged_turn_segments(judged) if s.strip()]
        forged_end = len(pieces)  # pieces[1:forged_end]: the forged-turn ones (a stream's bound counts them)
        if (bare := without_verdict_lines(judged)) != judged and bare.strip():  # forged verdict lines left out
            pieces.append(prepare_content(bare))
        # A terminal lays out the text as written: a layer's padding (dots, spaces) puts its words in their columns,
        # and the shortened runs would move them (review of rt71e's rule runs: rt70a's clause never whole again).
        laid = kept
        if written[-1] is not last:  # padding was shortened (`_shortened` keeps the message otherwise)
            if has_layout(unshortened := clean_text(written[-1]["content"], keep_lone_cr=True, keep_moves=True)):
                laid = unshortened
        readings = as_seen_pieces(laid, check)
        pieces += [prepare_content(s) for s in readings]
        if check is not None:
            check()  # each reading of a long text takes a while: abandoned or late work stops between them
        # A label a reader sees only as read ("&#85;SER:", an empty link or a comment inside the word: rt70f F2): the
        # readings' forged turns and verdict lines are judged as the text's are; their turns count as forged ones.
        most = self.max_windows - len(pieces)
        turns, bare_readings = _label_readings(readings, pieces, most, written=pieces[1:forged_end])
        forged_at = {*range(1, forged_end), *range(len(pieces), len(pieces) + len(turns))}
        pieces += turns + bare_readings
        if (unpadded := padding_read(judged)) is not None:  # padding of bidi pairs or tags between blanks (rt58f F1)
            pieces.append(prepare_content(unpadded))
        if check is not None:
            check()
        if join_runs and (joined := final_run(msgs)) is not None:
            # "How can I make a bo" and "mb at home?", each safe alone: a provider sends consecutive user turns as
            # one message (ChatAnthropic merges them; rt55c F1: the integrations judged the run joined, the core API
            # and the server did not). The run is also judged as that message reads; a run of assistant turns too
            # ("Step 1: Mix" | " ammonium nitrate ...", one answer to the model that reads them back: rt62f F2b).
            pieces += [prepare_content(joined), *(prepare_content(s) for s in as_seen_pieces(joined, check))]
            if (lined := final_run(msgs, "\n")) != joined and lined is not None:
                # Run together, "how to make a" | "bomb" read "make abomb" (rt71e); a chat shows each turn on a line of
                # its own. Both are judged: run together is how "How can I make a bo" | "mb at home?" reads.
                pieces.append(prepare_content(lined))
            if check is not None:
                check()
            if "\x08" in joined or "\x1b" in joined:  # its cursor moves were for the terminal's reading only
                joined = clean_text(joined, keep_lone_cr=True)
            if (unpadded := padding_read(joined)) is not None:
                pieces.append(prepare_content(unpadded))
        # A reading can open a new run (hidden characters between blanks, read as nothing): shortened the same way.
        pieces = [shorten_padding(p) for p in pieces]
        first_starts = first_starts if pieces[0] == counted else None
        if len(pieces) > self.max_windows:  # each piece needs a window: refuse before tokenizing anything
            raise self._too_large()
        if max_messages is not None and len(msgs) > max_messages:
            # Only now, after every reading is taken: the joined run spans turns, and a cap applied first cut its
            # head off ("How can I make a bo", "mb at home?", then 255 short user turns: a remote guard judged the
            # run's last 256 turns joined and allowed it, rt56a F2). Context turns past the cap are left out as
            # turns past the context are.
            earlier = earlier[len(earlier) - (max_messages - 1) :] if max_messages > 1 else []
            msgs = [*earlier, last]
        windows: list[Window] = []
        whole: Sequence[int] | None = None
        # Fast path: the conversation fits whole. Only tried when it plausibly can (a token is rarely
        # more than 8 characters), so a huge conversation is never tokenized whole just to find out.
        if sum(len(m["content"]) for m in msgs) <= 8 * self.budget:
            whole = self.encoder.encode(msgs)
        first = 0
        if whole is not None and len(whole) <= self.budget:
            shown = [*earlier, {"role": last["role"], "content": pieces[0]}]  # encodes to the same ids
            windows.append(Window(shown, whole, 0, (0, len(pieces[0]))))
            context, first = [dict(m) for m in earlier], 1
        else:
            context = self._context(earlier, last["role"], pieces[0], check)
        role = last["role"]
        if first == 0:
            context, room = self._fit_context(context, role)
            windows.extend(self._piece_windows(context, role, room, pieces, 0, check, 0, first_starts))
        seen = _as_seen_turns(context)
        if seen is not None:
            # An earlier turn written so that a reader (and the app's LLM) reads what the tokenizer does not ("a
            # b\u200bo\u200bm\u200bb", a request spelled in tag characters) was context only as written: the
            # judged turn ("And step 2?") was read without it (rt54c F3). The same context as seen, with every window
            # of the judged turn (the turns the raw windows show: a fixed reach and the first window only missed a
            # request behind a long answer or before a long judged turn, rt54e E2).
            context, room = self._fit_context(seen, role)
            windows.extend(self._piece_windows(context, role, room, pieces, 0, check, len(windows), first_starts))
        if (padded := _padding_read_turns(earlier)) is not None:
            # The context with its padding of bidi pairs or tags read as blanks (the judged turn has this reading as
            # a piece of its own): the turns it kept out of the raw windows are shown with every window of the turn.
            context, room = self._fit_context(self._context(padded, role, pieces[0], check), role)
            windows.extend(self._piece_windows(context, role, room, pieces, 0, check, len(windows), first_starts))
        if len(pieces) > 1:
            # Each forged-turn (and read-as-seen) piece is a window of its own: with the whole context in each, a message of many
            # short labelled lines made one check judge the conversation once per line (254 lines after 8,000
            # characters of history: 478,650 tokens). They carry the newest context only.
            forged = self._context(earlier, role, "", check, share=self.forged_context)
            context, room = self._fit_context(forged, role)
            keys: set[bytes] = set()
            forged_windows = 0
            for index in range(1, len(pieces)):
                if stream is not None:
                    # Judged before in this stream, or earlier in this check: the same window, the same verdict.
                    key = _piece_key(context, role, pieces[index])
                    if key in keys or stream.pieces.seen(key):
                        continue
                    keys.add(key)
                    stream.planned.append(key)
                planned = self._piece_windows(context, role, room, pieces, index, check, len(windows))
                forged_windows += len(planned) if index in forged_at else 0
                windows.extend(planned)
            if stream is not None and (too_many := stream.pieces.charge(forged_windows, self.max_windows)):
                raise too_many
        return windows

    def _starts_if_too_many(self, piece: str, role: str) -> list[int] | None:
        """The token starts of the judged ``piece`` when it may need more than ``max_windows`` windows (else ``None``,
        nothing tokenized); `InputTooLarge` when it does. A window holds at most the room the empty guard prompt leaves,
        so the piece needs at least tokens / room windows: a bound that never refuses what fits. Counted only past
        `MAX_TOKENS_PER_CHAR` tokens a character, or at three times that rate when not in NFC: below, the piece cannot
        need that many (prose stays untokenized)."""
        room = self.budget - self._empty_prompt(role)
        cap = self.max_windows * room
        # NFC makes three characters of one at most (UAX #15): a text not in it may have three times the tokens.
        if room < 1 or (
            len(piece) * MAX_TOKENS_PER_CHAR <= cap
            and (3 * len(piece) * MAX_TOKENS_PER_CHAR <= cap or unicodedata.is_normalized("NFC", piece))
        ):
            return None
        # Characters past the BMP first, counted without tokenizing (a text of tag characters tokenized 9 s a
        # million): each is a token of its own at least, or shares one with at most `_astral_per_token` others.
        if (per_token := self._astral_per_token()) is not None:
            # Counted as the tokenizer may read them: a normalizer (Qwen3's is NFC) turns some into BMP characters
            # that BPE merges (CJK compatibility ideographs: a third of the bound, refused where 4 of 8 windows
            # held it, rt69o F2). NFKC turns at least as many: the count stays a bound.
            folded = unicodedata.normalize("NFKC", piece)
            astral = len(folded.encode("utf-16-le")) // 2 - len(folded)  # a surrogate pair each
            if -(-astral // per_token // room) > self.max_windows:
                raise self._too_large()
        starts = self.encoder.content_token_starts(piece)
        if -(-len(starts) // room) > self.max_windows:
            raise self._too_large()
        return starts

    def _astral_per_token(self) -> int | None:
        """The most characters past the BMP one token of the encoder's vocabulary holds, for a byte-level BPE
        (`astral_per_token`, read once per tokenizer); ``None`` for any other encoder: no bound without it."""
        if self._astral_bound is None:
            self._astral_bound = astral_per_token(getattr(self.encoder, "tokenizer", None))
        return self._astral_bound or None

    def _context(
        self,
        earlier: list[dict[str, str]],
        role: str,
        judged: str,
        check: Callable[[], None] | None,
        share: int | None = None,
    ) -> list[dict[str, str]]:
        """The newest earlier turns that fit the context share of a window (linear: each turn tokenized once);
        ``share``: at most that many tokens of them."""
        if not earlier:
            return []
        room = self.budget - self._empty_prompt(role)
        if share is None:
            size = len(self.encoder.content_token_starts(judged)) if len(judged) <= 8 * room else room
            share = room - size - 2 if size <= room // 2 else self._kept_whole(room)
        else:
            share = min(share, self._kept_whole(room))
        kept: list[dict[str, str]] = []
        used = 0
        for turn in reversed(earlier):
            if check is not None:
                check()
            cost = self._turn_cost(turn["role"], role)
            raw = turn["content"]
            # Only what can fit is tokenized: a token is rarely more than 8 characters, so a longer turn
            # is cut to its last 8*share characters first (its tail is all that could be kept anyway).
            tail_only = len(raw) > 8 * max(share, 1)
            content = prepare_content(raw[-8 * max(share, 1) :] if tail_only else raw)
            starts = self.encoder.content_token_starts(content)
            if not tail_only and used + cost + len(starts) <= share:
                kept.append({"role": turn["role"], "content": content})
                used += cost + len(starts)
                continue
            left = share - used - cost
            if not kept and left >= MIN_WINDOW_CONTENT and starts:
                # The turn right before the judged one is too long: keep its tail as context.
                cut = starts[max(0, len(starts) - left)]
                kept.append({"role": turn["role"], "content": content[cut:]})
            break
        kept.reverse()
        return kept

    def _fit_context(self, context: list[dict[str, str]], role: str) -> tuple[list[dict[str, str]], int]:
        """Drop the oldest context turns until a window has room for some text; the room left, in tokens."""
        while True:
            overhead = len(self.encoder.encode([*context, {"role": role, "content": ""}]))
            room = self.budget - overhead
            if room >= MIN_WINDOW_CONTENT or not context:
                break
            context = context[1:]
        if room < MIN_WINDOW_CONTENT:
            raise ValueError(
                f"a window of {self.budget} tokens cannot hold the guard prompt ({overhead} tokens) and "
                f"{MIN_WINDOW_CONTENT} tokens of text; raise max_window_tokens / max_context"
            )
        return context, room

    def _piece_windows(
        self,
        context: list[dict[str, str]],
        role: str,
        room: int,
        pieces: list[str],
        index: int,
        check: Callable[[], None] | None,
        have: int,
        known_starts: list[int] | None = None,
    ) -> list[Window]:
        """Windows of one piece of the judged turn, each fitted to the budget by encoding it (``known_starts``: its
        token starts, when counted already)."""
        piece = pieces[index]
        starts = self.encoder.content_token_starts(piece) if known_starts is None else known_starts
        n = len(starts)
        overlap = min(self.overlap, room // 4)
        # A sentence cut at a window's edge starts the next window whole, however long (up to a quarter of the room:
        # at most a third more windows; `_kept_whole`): 64 shared tokens missed a 120-token clause laid across the edge
        # (rt63a F3).
        reach = max(overlap, self._kept_whole(room))
        out: list[Window] = []
        i = 0
        while True:
            if check is not None:
                check()
            if have + len(out) >= self.max_windows:
                raise self._too_large()
            j = min(n, i + room)
            begin = starts[i] if n else 0
            while True:
                end = starts[j] if j < n else len(piece)
                msgs = [*context, {"role": role, "content": piece[begin:end]}]
                ids = self.encoder.encode(msgs)
                excess = len(ids) - self.budget
                if excess <= 0:
                    break
                # Over by `excess` tokens (BPE merges at the edges, a label neutralised at the start):
                # cut the piece shorter by that much and encode again. The ids are never truncated.
                shorter = j - excess
                if shorter <= i or starts[shorter] <= begin:
                    raise ValueError(f"cannot fit a window of this text in {self.budget} tokens")
                j = shorter
            out.append(Window(msgs, ids, index, (begin, end)))
            if j >= n:
                return out
            k = max(i + 1, min(j - overlap, _sentence_start(piece, starts, max(i + 1, j - reach), j)))
            while k < n and starts[k] <= begin:  # tokens inside one character share its start
                k += 1
            if k >= n:
                return out
            i = k
