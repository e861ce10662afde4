"""What a remote Gen check sends: the requests one conversation becomes, planned before any I/O.

A check becomes the requests the local guard would run as windows (`formats.windows.WindowPlanner`,
the same planner `TransformersGen` uses): the conversation whole when it fits, else overlapping
windows of the judged turn after trimming earlier turns; plus the text before each forged
``USER:``/``ASSISTANT:`` label, judged alone. Never truncated; the worst verdict wins.

How tokens are counted:

- With the served checkpoint's tokenizer (``Guard.remote(..., tokenizer=...)``), exactly, by the
  local guard's `ConversationEncoder`: the windows, and in completion mode the token ids sent, are
  the local guard's own.
- Without it, by `ByteCounter`, an upper bound: **one token per UTF-8 byte** (of the NFC form, which
  the Qwen tokenizer applies first). Qwen's tokenizer is byte-level BPE: every token covers at least
  one byte, and content cannot hold added tokens (they are neutralised), so no text has more tokens
  than bytes. The bound is reached only by text no merge covers; for English prose it is about 4x
  the real count, which costs smaller windows (more requests), never an over-long prompt. The
  template's own text is bounded the same way (its bytes as `render_prompt` writes them). The planner's
  rules stated in the counter's units are given in typical bytes (`_TYPICAL_BYTES_PER_TOKEN` a token): the
  overlap, the forged-turn context, and what a window keeps whole (a sentence its edge cuts, the earlier turns
  beside a windowed turn): a quarter of the local window's tokens, up to half a byte window (a quarter of one,
  2,700 bytes at the 4,096 fallback, let a 190-token clause across an edge and a 3 KB earlier turn go unread
  together where the local guard read them: rt70e F1).
"""

from __future__ import annotations

import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import GuardTimeout, GuardUnavailable, QwenGuardError
from ..formats.content import normalized, prepare_content
from ..formats.conversations import RunsJudged
from ..formats.prompts import moderation_mode, normalize_messages, render_prompt
from ..formats.windows import (
    DEFAULT_MAX_WINDOW_TOKENS,
    DEFAULT_MAX_WINDOWS,
    DEFAULT_WINDOW_OVERLAP,
    FORGED_CONTEXT_TOKENS,
    StreamCheck,
    TokenCounter,
    WindowPlanner,
)
from .after_fork import fork_safe_lock
from .token_floor import lower_bound

__all__ = [
    "WireCheck",
    "CheckPlan",
    "RemotePlanner",
    "ByteCounter",
    "byte_bound",
    "UNPUBLISHED_CONTEXT",
    "MAX_REQUEST_MESSAGES",
    "wire_text",
    "wire_content",
]

#: Context assumed when neither the caller nor the engine says (vLLM and SGLang publish theirs; Ollama,
#: llama.cpp and transformers serve do not): Ollama's default ``num_ctx``. Past its context Ollama cuts a prompt
#: silently, and past it during generation shifts the context out from under the verdict; a cut of text the
#: client cannot count (no tokenizer, or text that makes many tokens per word) may go unseen, so without a
#: context given the windows are planned small enough that no such engine holds less.
UNPUBLISHED_CONTEXT = 4096
#: Turns one request shows at most: what ``qwenguard serve`` takes by default (``--max-messages``). Earlier
#: turns are context, left out as the planner leaves out turns past the context; the judged turn is last. Only
#: what a request shows is capped: the readings (a run of user turns joined) are of the whole conversation.
MAX_REQUEST_MESSAGES = 256
#: Counting by bytes, a token of English is about this many bytes: a window's byte budget is capped at
#: ``max_window_tokens * 4`` (and at the context, always), neighbours overlap by ``window_overlap * 4``, a forged-turn
#: piece carries ``FORGED_CONTEXT_TOKENS * 4`` of context, and a window keeps ``max_window_tokens`` bytes whole (the
#: local window's quarter), up to half its room.
_TYPICAL_BYTES_PER_TOKEN = 4
#: What an error about a size counted by bytes adds: the tokenizer counts exactly, and its windows are the local's.
_BY_BYTES = " (counted by bytes, without the checkpoint's tokenizer: pass Guard.remote(..., tokenizer=...))"


def wire_text(text: str) -> str:
    """Text as a remote engine is sent it: NFC, the form the Qwen3 tokenizer reads and the client counts. vLLM and
    SGLang normalise it so themselves; llama.cpp and Ollama tokenize the raw text, where decomposed text (Korean as
    macOS writes it) makes several times the tokens: a window counted after NFC was longer than their context, and
    Ollama cut it silently with a count no lower than the client expected (rt49d R1)."""
    return text if text.isascii() else normalized("NFC", text)  # linear under any stack of marks (rt61b F4)


def wire_content(content: str) -> str:
    """One message's content as a remote engine is sent it: `prepare_content` (the content rule), then NFC."""
    return wire_text(prepare_content(content))


def _utf8_len(text: str, form: Literal["NFC", "NFD"]) -> int:
    return len(normalized(form, text).encode("utf-8"))


def _char_sizes(text: str) -> list[int]:
    """Per character of ``text``, a bound on the UTF-8 bytes it adds to the NFC form of any stretch holding it: its
    own NFC bytes (composition only shrinks a run; the few characters NFC expands are counted expanded), but its
    decomposed (NFD) bytes where it is a combining mark or is followed by one: canonical reordering can move a mark
    into the precomposed letter before it and break that letter up ("\u01d5" + U+0324: 4 bytes counted one by one,
    7 in NFC; a window planned to fit an engine of 4,096 tokens held 4,161, and Ollama cut the request out of it:
    rt51a F1). A mark follows a letter rarely outside such text, so Korean, Vietnamese or French cost no more."""
    sizes: list[int] = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if ch.isascii():
            sizes.append(1)
        elif unicodedata.combining(ch) or (i < last and unicodedata.combining(text[i + 1])):
            sizes.append(_utf8_len(ch, "NFD"))
        else:
            sizes.append(_utf8_len(ch, "NFC"))
    return sizes


def byte_bound(text: str) -> int:
    """Upper bound on the tokens of ``text`` for a byte-level BPE: the UTF-8 bytes of its NFC form, and of the NFC
    form of any stretch of it, counted per character (`_char_sizes`)."""
    return len(text) if text.isascii() else sum(_char_sizes(text))


class ByteCounter:
    """A `formats.windows.TokenCounter` that counts one token per byte (`byte_bound`): for windows sized
    without the checkpoint's tokenizer. ``encode`` gives a stand-in of the right length, not real ids."""

    unit = "bytes"
    advice = _BY_BYTES

    def encode(self, messages: Sequence[dict[str, Any]]) -> Sequence[int]:
        return range(byte_bound(render_prompt(messages)))

    def content_token_starts(self, text: str) -> list[int]:
        if text.isascii():
            return list(range(len(text)))
        # A character of n bytes is n "tokens" that all start where it starts: cuts fall between characters.
        return [i for i, size in enumerate(_char_sizes(text)) for _ in range(size)]


@dataclass(frozen=True)
class WireCheck:
    """One request: the conversation it shows (a window's text as the judged turn) and, when the client has
    the tokenizer and asked for them, the exact prompt ids the local guard runs for it.

    What an engine that read it whole counts for it (``usage.prompt_tokens``), at least: sent as ids, their
    number. Sent as text, ``floor`` whatever template the engine puts around the messages (their text's
    pieces, `token_floor.lower_bound`), and ``full`` when its template and tokenizer are the official ones
    (the whole prompt as the local guard renders it: exact with the tokenizer, less a margin; else its
    pieces). An answer that counts fewer than ``floor`` judged a cut prompt; fewer than ``full`` too, unless
    the engine's template is not counted as ours (`OpenAIGen` asks it once)."""

    messages: tuple[dict[str, str], ...]
    mode: str  # "prompt" or "response"
    ids: tuple[int, ...] | None = None
    floor: int = 0
    full: int = 0

    def least_tokens(self, as_ids: bool) -> tuple[int, int]:
        """(floor, full): the fewest prompt tokens an engine that read this request whole counts for it."""
        if as_ids and self.ids is not None:
            return len(self.ids), len(self.ids)
        return self.floor, max(self.floor, self.full)


@dataclass(frozen=True)
class CheckPlan:
    """The requests of one check, or the error that stops it (`InputTooLarge`, a context too small)."""

    checks: tuple[WireCheck, ...]
    mode: str
    error: QwenGuardError | None = None


class RemotePlanner:
    """Plans each check's requests for an engine context, with ``encoder`` (a `ConversationEncoder` of the
    served checkpoint's tokenizer: exact) or without it (`ByteCounter`: a bound)."""

    def __init__(
        self,
        *,
        encoder: Any = None,
        max_new_tokens: int,
        window_overlap: int = DEFAULT_WINDOW_OVERLAP,
        max_window_tokens: int = DEFAULT_MAX_WINDOW_TOKENS,
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> None:
        self.encoder = encoder
        self.max_new_tokens = max_new_tokens
        self.window_overlap = window_overlap
        self.max_window_tokens = max_window_tokens
        self.max_windows = max_windows
        self._planners: dict[int, WindowPlanner] = {}
        # Plans run in worker threads; one at a time, as a Rust tokenizer is not meant to be shared mid-call.
        self._lock = fork_safe_lock(self, "_lock")
        # The engine's context is known only from its replies; its budget is never above ``max_window_tokens``: one
        # too small for the guard prompt is refused now, not at every check (rt59b note).
        exact = encoder is not None
        WindowPlanner(
            encoder if exact else ByteCounter(),
            max_prompt_tokens=max_window_tokens * (1 if exact else _TYPICAL_BYTES_PER_TOKEN),
            max_windows=max_windows,
        ).require_room("max_window_tokens")

    def prompt_budget(self, context: int) -> int:
        """Longest prompt of one request: what `TransformersGen` allows with a tokenizer; by bytes, the
        context (a hard bound) and about ``max_window_tokens`` of English."""
        room = context - self.max_new_tokens
        if self.encoder is not None:
            return min(self.max_window_tokens, room)
        return min(self.max_window_tokens * _TYPICAL_BYTES_PER_TOKEN, room)

    def _planner(self, context: int) -> WindowPlanner:
        planner = self._planners.get(context)
        if planner is None:
            exact = self.encoder is not None
            counter: TokenCounter = self.encoder if self.encoder is not None else ByteCounter()
            per_token = 1 if exact else _TYPICAL_BYTES_PER_TOKEN
            planner = WindowPlanner(
                counter,
                max_prompt_tokens=self.prompt_budget(context),
                overlap=self.window_overlap * per_token,
                max_windows=self.max_windows,
                keep_whole=None if exact else self.max_window_tokens * per_token // 4,
                forged_context=FORGED_CONTEXT_TOKENS * per_token,
            )
            self._planners[context] = planner
        return planner

    def _no_room(self, context: int, exc: ValueError) -> str:
        """Why no request fits ``context``, in the options the caller sets: where the answer's reserve is what leaves
        too little, ``max_tokens`` and the context by name (the window planner's own words named neither: rt63b F4)."""
        how = "" if self.encoder is not None else _BY_BYTES
        room = context - self.max_new_tokens
        if self.prompt_budget(context) < self.prompt_budget(context + self.max_new_tokens):
            return (
                f"the engine's context of {context} tokens, less max_tokens={self.max_new_tokens} reserved for the "
                f"guard's answer, leaves {max(room, 0)} tokens for a prompt, too few for the guard prompt and some "
                f"text: lower max_tokens, or pass max_context= the engine's real context{how}"
            )
        return f"{exc}{how}"

    def _least(self, window: Any) -> tuple[int, int]:
        """`WireCheck.floor` and ``full`` of a window: the fewest prompt tokens an engine that read it whole counts.

        ``floor``: the messages' text only, as the prompt holds it, in either mode. The template is not counted: an
        engine's chat template may differ from ours, and a tokenizer may hold the template's text as added tokens
        (the demo's does), but no template drops what it is given. Counted by the tokenizer when the client has it
        (exact), else as pieces (`lower_bound`: text that makes many tokens a word, random letters, base64, CJK,
        counts far below its tokens). 2 tokens of each text may merge with the template's text at its edges.
        ``full``: the official prompt's tokens, exact (less 1/256 and 4: a newline an engine's rendering may differ
        by), or its pieces. The text is counted as it goes on the wire (`wire_content`: NFC, which every engine
        then reads as the client counted it)."""
        texts = [wire_content(m["content"]) for m in window.messages]
        if self.encoder is None:
            return lower_bound(texts, slack_per_text=2), lower_bound([wire_text(render_prompt(list(window.messages)))])
        counted = sum(max(0, int(self.encoder.content_token_count(t)) - 2) for t in texts)
        exact = len(window.ids)
        return counted - counted // 256, max(0, exact - exact // 256 - 4)

    def plan(
        self,
        conversation: Sequence[dict[str, str]],
        context: int,
        *,
        ids: bool = False,
        deadline: float | None = None,
        abandoned: threading.Event | None = None,
        max_messages: int | None = MAX_REQUEST_MESSAGES,
    ) -> CheckPlan:
        """The requests for ``conversation`` on an engine of ``context`` tokens (with ids when ``ids`` and the
        tokenizer is known). ``deadline`` (``time.monotonic()``): planning stops there with `GuardTimeout`; so it
        does at the next window once ``abandoned`` is set (the caller left). ``max_messages``: turns a request shows
        at most (``None``: as many as the windows hold, as locally: an engine with no cap on messages)."""
        # The whole conversation goes to the planner: its readings (the final run of user turns joined) are of all of
        # it, and only the turns each request shows are capped (rt56a F2: the cap, applied first, cut a run's head).
        msgs = normalize_messages(conversation)
        mode = moderation_mode(msgs)
        if max_messages is not None and mode == "response":
            # An answer is never judged without the turn before it (a server run with --max-messages 1 published a
            # cap that left a response check the answer alone); such a server refuses the pair (413), a guard error.
            max_messages = max(max_messages, 2)
        try:
            with self._lock:
                windows = self._planner(context).plan(
                    msgs,
                    check=_stop_at(deadline, abandoned),
                    join_runs=not isinstance(conversation, RunsJudged),
                    max_messages=max_messages,
                    stream=conversation if isinstance(conversation, StreamCheck) else None,  # judged pieces left out
                )
        except QwenGuardError as exc:  # InputTooLarge, GuardTimeout
            return CheckPlan((), mode, exc)
        except ValueError as exc:  # the context cannot hold the template and some text
            return CheckPlan((), mode, GuardUnavailable(self._no_room(context, exc)))
        with_ids = ids and self.encoder is not None
        return CheckPlan(
            tuple(
                WireCheck(tuple(w.messages), mode, tuple(w.ids) if with_ids else None, *self._least(w)) for w in windows
            ),
            mode,
        )


def _stop_at(deadline: float | None, abandoned: threading.Event | None = None) -> Callable[[], None] | None:
    if deadline is None and abandoned is None:
        return None

    def check() -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise GuardTimeout("the deadline passed while planning the windows")
        if abandoned is not None and abandoned.is_set():
            raise GuardTimeout("the caller stopped waiting while its windows were planned")

    return check
