"""The Gen-window engine of the stream monitors: cut the streamed text into segments, build the bounded
window each is checked in, settle results in order. Used when the guard has no Stream model.

Text is read as a reader sees it: hidden characters take no room, display order is kept, and Markdown markup is
read as rendered (as the core reads it, `formats.rendered`: `_Rendered`) for sentence ends, words, the cut
of long text, a window's context and its pinned words."""

from __future__ import annotations

import asyncio
import bisect
import functools
import html
import re
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..backends.after_fork import ForkSafePool
from ..backends.gen_session_pool import SESSIONS_PER_STREAM
from ..errors import GuardTimeout, InputTooLarge, QwenGuardError, VerdictParseError
from ..excused_split import ExcusedSplit, is_excused
from ..formats.content import _BLANKS as BLANKS
from ..formats.content import BLANK_LINE, BidiState, read_as_displayed
from ..formats.content import _classes as content_classes
from ..formats.conversations import least_contexts
from ..formats.rendered import ATTRIBUTE_NAME, CHAR_REFERENCE, EQUALS, UNQUOTED, _edits, may_render_differently
from ..formats.windows import StreamCheck, StreamPieces
from ..verdict import Risk, Stage, Verdict, worst
from .task_ends import mark_read

if TYPE_CHECKING:
    from ..policy import Policy
    from .monitor_core import MonitorCore

# A sentence ends at terminal punctuation (and closing quotes/brackets) followed by whitespace, or at a blank line
# (`content.BLANK_LINE`, as the core reads sentences): a line break alone ends none. Hard-wrapped prose (mail, a model
# that wraps at 72 columns) was a sentence per line, each judged alone, and a clause wrapped after "Mix ammonium" went
# out up to its last word before the window that held it whole came back (rt70 AP). The whitespace must have arrived:
# "3.14" and "e.g." mid-stream are not ends. Other scripts' marks count too: the Devanagari danda, the Arabic
# question mark and full stop, the Armenian, Ethiopic, Myanmar and Tibetan full stops, the full-width and half-width
# CJK ones.
_TERMINAL = ".!?;。！？；…" + "\u0964\u0965\u061f\u06d4\u0589\u1362\u1367\u104b\u0f0d\uff0e\uff61"
_CLOSING = "\"'”’)]" + "」』）】〕〉》"  # closing quotes and brackets after it
# A match starts only where a run of terminal punctuation starts (the lookbehind): tried at every dot of
# a hostile "......" run, the pattern would backtrack over the rest of the run each time (quadratic).
_SENTENCE_END = re.compile(
    f"(?<![{re.escape(_TERMINAL)}])[{re.escape(_TERMINAL)}]+[{re.escape(_CLOSING)}]*(?=\\s)|{BLANK_LINE}"
)
# Where a segment may end (`GenWindows._sentence_cut`): a sentence end, or a non-ASCII terminal run followed by
# the next sentence without a space ("巴黎。它"; filtered by `_sentence_ends`).
_CUT = re.compile(
    f"{_SENTENCE_END.pattern}|(?<![{re.escape(_TERMINAL)}])[{re.escape(_TERMINAL)}]+[{re.escape(_CLOSING)}]*"
    f"(?=[^\\s{re.escape(_TERMINAL + _CLOSING)}])"
)
# A sentence end inside a whitespace-free run (`ends_sentence`): terminal punctuation followed by a letter
# ("Paris.Mix.", not "3.14"), or a non-ASCII one followed by anything ("好的。混合。": Chinese and Japanese put no
# space after "。"). Matched only where a run of terminal punctuation starts, as `_SENTENCE_END`.
_INNER_END = re.compile(f"(?<![{re.escape(_TERMINAL)}])[{re.escape(_TERMINAL)}]+[{re.escape(_CLOSING)}]*(?=\\S)")
# What starts a line, for list markers and the `check_every` cut: a line feed (the monitor makes a lone CR one) and the
# Unicode line and paragraph separators (the window's context reads them as line breaks: `_Letters.table`).
_LINE_BREAKS = "\n\u2028\u2029"
# An ordered-list marker ("2. ", "b. ", "iv. ") at a line start ends no sentence and is no word: its "." was the end of
# the item above, so a clause spread over numbered items ("Mix ammonium nitrate with fuel oil,\n2. pack it ...") was
# judged and let out item by item, up to 61 of its 77 characters, where a "-" list let none out (rt72a F1). A number,
# one letter, or a roman numeral up to 39, then one "." or "．"; before it only spaces since the line start.
_MARKER_BODY = r"(?:\d{1,9}|[A-Za-z]|(?=[ivx])x{0,3}(?:ix|iv|v?i{0,3})|(?=[IVX])X{0,3}(?:IX|IV|V?I{0,3}))"
_MARKER = re.compile(f"{_MARKER_BODY}[.\uff0e]")  # a whole token (`_token_runs_on`)
_MARKER_NUMBER = re.compile(_MARKER_BODY)  # the word before the "." (`_runs_on`)
#: Characters read back from a marker for its line start; an indent longer than half of it counts as one
#: (`_token_runs_on` reads the whole whitespace before a token).
_MARKER_REACH = 64
_MARKER_INDENT = re.compile(
    f"(?:^|[{_LINE_BREAKS}]|(?=[^\\S{_LINE_BREAKS}]{{{_MARKER_REACH // 2}}}))[^\\S{_LINE_BREAKS}]*\\Z"
)
# An abbreviation's "." ("e.g. diesel", "approx. 94:6") ends no sentence unless a capital letter starts the next word:
# the clause's front went out at "(approx." (rt72a F1). Until that letter arrives, the sentence has not ended.
_ABBREVIATIONS = frozenset("e.g i.e approx etc vs cf ca incl esp viz resp al fig no vol pp min max".split())
_NEXT_WORD = re.compile(r"\s*(\S?)")
#: The longest run of letters, digits and dots read back before a "." (`_word_before`): a marker's number, an
#: abbreviation.
_WORD_REACH = 10


_window_pool = ForkSafePool(8, "qwenguard-window")


def window_pool() -> ThreadPoolExecutor:
    """Shared workers for background window checks (the Gen backend batches concurrent calls)."""
    return _window_pool.get()


# ================================================================================================
# Gen-window fallback: segments, windows, in-order results. Shared by both monitors.
# ================================================================================================
#: Judged text goes out whole only when it ends with terminal punctuation closing a sentence of at least this
#: many words (two Han ideographs count as one, and so does a run of kana letters: `_words`). A shorter one
#: ("Mix.", "Yes.", "混合。") and a line without punctuation ("Mix\n") keep their last word until a window shows
#: it with what follows: a clause cut into one-word sentences or lines, which a prompt can ask for, is never let
#: out piece by piece.
MIN_SENTENCE_WORDS = 4
#: Characters read from the end of a judged text to find its last sentence: bounds the work on hostile text.
_SCAN = 512
_SPACES = re.compile(r"(\s+)")
# Han ideographs, two to a word, and runs of kana letters, one word each ("ミックスしましょう", "let's mix", is one
# word, not four: rt54d F7). The kana block's punctuation ("・"), sound and iteration marks ("ー", "゛", "ゝ") make
# no word of their own ("・・・Mix." was a sentence of four words, rt54a F1b); inside a run they belong to it.
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# A katakana run starts a word (a loanword after a particle: "は" "パリです"), hiragana after it is its inflection.
_KANA_RUN = re.compile(
    "(?:[\u30a1-\u30fa][\u30a1-\u30fa\u3099-\u309c\u30fc-\u30fe]*|[\u3041-\u3096])[\u3041-\u3096\u3099-\u309e\u30fc]*"
)
_HAN_KANA = re.compile("[\u3041-\u3096\u30a1-\u30fa\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
#: Longest tail held back after judged text when it has no word break (CJK, code, a long URL), in characters a
#: reader sees: combining and hidden marks inside the word do not count (rt54a F3b).
MAX_HELD_WORD = 16
#: Text without spaces goes out in steps of at least this many characters (`releasable`).
_STEP = MAX_HELD_WORD // 2
#: A segment is at most this many times ``check_every`` in written characters (`GenWindows._limit`: characters as
#: rendered, a reference one; a numeric one is at most ten written characters).
_WRITTEN_PER_CHAR = 10
#: The least context a window shows before its segment: a held word, with room (`GenWindows`).
MIN_CONTEXT = 2 * MAX_HELD_WORD
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
#: Combining marks a window's context keeps on one character (a "zalgo" stack counts as a few).
_MARKS_KEPT = 4
# What changes display order stays in a window's context: the embedding, override and isolate controls (a window
# cut inside an override must still read as displayed) and the marks LRM, RLM, ALM (a paragraph laid out right to
# left reads words written in reverse order with an RLM after each in reading order: rt54d F1).
_BIDI_OPEN_EMBED = "\u202a\u202b\u202d\u202e"
_BIDI_OPEN_ISOLATE = "\u2066\u2067\u2068"
_BIDI_MARKS = "\u200e\u200f\u061c"
_RTL_MARKS = "\u200f\u061c"
_BIDI_KEPT = _BIDI_OPEN_EMBED + "\u202c" + _BIDI_OPEN_ISOLATE + "\u2069" + _BIDI_MARKS
# Runs of them (`as_read` keeps of a run only what it does to the text around it: `_bidi_net`).
_BIDI_RUN = re.compile(f"[{_BIDI_KEPT}]{{2,}}")
# Tag characters, which the guard's planner decodes (what a tag run spells): kept in the context (rt54d F2).
_TAGS = range(0xE0020, 0xE0080)


class _Letters:
    """What makes a word, and what a reader does not see, read from Unicode's properties on first use."""

    def __init__(self) -> None:
        classes = content_classes()
        # Modifier letters (the tatweel "ـ", "ー", "々": "Mix ーー" held "ーー" in place of "Mix", rt54a F5) and the
        # blank letters (U+3164 HANGUL FILLER) are no letters of a word.
        self.fillers = frozenset(
            chr(cp) for cp in range(0x80, 0x20000) if unicodedata.category(chr(cp)) == "Lm"
        ) | frozenset(c for c in BLANKS if c.isalnum())
        fillers = "".join(sorted(self.fillers))
        # A word as `releasable` reads one: two letters or digits in a run without a space, tab or line break.
        self.two = re.compile(rf"[^\W_{re.escape(fillers)}][^ \t\n]*?[^\W_{re.escape(fillers)}]")
        self.one = re.compile(rf"[^\W_{re.escape(fillers)}]")
        # Characters that take no place: marks, format characters, the ignorable ones (U+FE0F, U+034F), fillers.
        self.unseen = re.compile(f"[{classes.hidden}{classes.marks}]")
        # The context as read (`as_read`): hidden characters dropped (bidi controls kept), blanks a space.
        self.table: dict[int, str | None] = {cp: v for cp, v in classes.table.items() if v is None or v == " "}
        for c in _BIDI_KEPT:
            self.table.pop(ord(c), None)
        for cp in _TAGS:
            self.table.pop(cp, None)
        self.table.update({0x85: "\n", 0x2028: "\n", 0x2029: "\n\n"})
        self.stacks = re.compile(f"([{classes.marks}]{{{_MARKS_KEPT}}})[{classes.marks}]+")


@functools.cache
def _letters() -> _Letters:
    return _Letters()


def tables_built() -> bool:
    """Whether the Unicode tables a stream reads with (`_letters`, and content's classes under them) are built."""
    return _letters.cache_info().currsize > 0


def build_tables() -> None:
    """Build them: most of a second, once a process (an async stream does it on a worker thread, `AsyncStreamMonitor`)."""
    _letters()


def _is_letter(char: str) -> bool:
    """A letter or digit of a word: not "_", punctuation, a symbol, a mark, a modifier or blank letter."""
    return char.isalnum() and (char < "\x80" or char not in _letters().fillers)


def _unseen(char: str) -> bool:
    """A character that takes no place of its own: a combining mark, a format or ignorable character."""
    return char >= "\u0300" and (char in BLANKS or bool(_letters().unseen.match(char)))


_RUNS = re.compile(r"\s{2,}")


def _one_blank(run: re.Match[str]) -> str:
    text = run.group()
    breaks = text.count("\n") + text.count("\r") - text.count("\r\n")
    return "\n\n" if breaks > 1 else "\n" if breaks else " "


def as_read(text: str) -> str:
    """``text`` as a reader sees it, for a window's context: markup read as rendered first (`_Rendered`, context
    reading: every construct as the core reads it, a construct still arriving at the end kept as written; "Mix" +
    "&#8203;" * 60, "<!---->" * 200 and "[](#)" * 200 took the room of a context, rt55a F5, rt55d F6), then hidden
    characters (U+200B, U+FE0F, U+E0100, U+034F) dropped, blank characters (U+3164, U+00A0, U+3000) and whitespace
    runs one space (or one or two line breaks), combining-mark stacks cut to `_MARKS_KEPT`. Kept: what changes
    display order (the bidi controls and the marks LRM, RLM, ALM; a run of them only as far as it changes the text
    around it, `_bidi_net`: 250 LRI+PDI pairs enclosing nothing are nothing) and tag characters (which the planner
    decodes). Linear in ``text``. Counted in written characters, padding of 1,000 U+FE0F or spaces after a word
    kept it out of the next window's context (rt54a F3, F3c; rt54d F1, F2, F3)."""
    if _may_differ(text, 0):
        text = _Rendered(text, decide=False).text
    return _as_read_plain(text)


def _as_read_plain(text: str) -> str:
    """`as_read` of text whose markup is read already."""
    if text.isascii():
        return _RUNS.sub(_one_blank, text) if "  " in text or "\n" in text or "\t" in text else text
    letters = _letters()
    read = letters.stacks.sub(r"\1", text.translate(letters.table))
    return _RUNS.sub(_one_blank, _BIDI_RUN.sub(_bidi_net, read))


def _bidi_net(run: re.Match[str]) -> str:
    """A run of bidi controls and marks with nothing between them, less what changes nothing: a control and the
    one closing it (with what is between them: controls and marks only), a mark repeated. Kept in order: what
    closes controls opened before the run, what opens controls after it, the marks. Linear in the run."""
    out: list[str] = []
    opens: list[tuple[int, bool]] = []  # the run's own open controls: (index in `out`, isolate)
    isolates = 0
    for c in run.group():
        if c in _BIDI_OPEN_EMBED or c in _BIDI_OPEN_ISOLATE:
            isolate = c in _BIDI_OPEN_ISOLATE
            opens.append((len(out), isolate))
            isolates += isolate
            out.append(c)
        elif c == "\u202c":  # PDF: closes the run's last embedding or override; inside its isolate, nothing
            if opens and not opens[-1][1]:
                del out[opens.pop()[0] :]
            elif not opens:
                out.append(c)  # closes one opened before the run (or nothing): kept
        elif c == "\u2069":  # PDI: closes the run's last isolate and what it opened after it
            if isolates:
                while True:
                    at, isolate = opens.pop()
                    if isolate:
                        break
                isolates -= 1
                del out[at:]
            else:
                out.append(c)  # closes what was opened before the run: kept, and nothing before it is undone
                opens, isolates = [], 0
        elif not out or out[-1] != c:  # a mark: one of a repeated mark is enough
            out.append(c)
    return "".join(out)


# ------------------------------------------------------------------------------------------------
# Markup as rendered. Chat UIs render an answer as Markdown: "&#77;&#105;&#120;" shows "Mix", "M<b></b>ix" and
# "M<!-- -->ix" show "Mix" where raw HTML is dropped (`formats.rendered`). The windows' own reading (sentence ends,
# words, the context, pinned words) is of the text as rendered: read as written, each ";" of a reference ended a
# sentence (a clause written as references went out word by word), a context could start inside a reference, and
# padding that renders as nothing pushed a word out of the next window's context (rt55a F2, F4, F5). Complete
# constructs are the core's (`rendered._edits`: the same constructs, the same limits); what is the windows' own is a
# construct still arriving at the end of the text so far (`_pending_at`) and how a context keeps one (`_context`):
# a scanner of their own knew no links or processing instructions and no comment or tag past old caps (rt55d F6).
# ------------------------------------------------------------------------------------------------
#: The longest character reference (`rendered.CHAR_REFERENCE`): "&", a 32-character name, ";".
_REF_MAX = 34
#: How far before a bounded read's start a construct it starts inside is looked for (`_read_view`). Constructs
#: have no length limit: one still arriving that began further back is held by the engine (`GenWindows._opens`);
#: a longer complete one read from inside only moves where the release stops within text its windows judged.
_LOOK_BACK = _SCAN
#: Written characters before a judged text's last word that `releasable` reads as rendered: what it reads back.
_RENDER_REACH = 2 * _SCAN + _REF_MAX
# What may still become a reference as text arrives (matched to the end of the text so far).
_REF_OPEN = re.compile(r"&(?:#(?:[0-9]{0,7}|[xX][0-9a-fA-F]{0,6})|[A-Za-z][A-Za-z0-9]{0,31})?")
# Raw HTML that ends at its closer whatever is inside (`rendered._raw_html`): (opener, closer).
_SECTIONS = (("<!--", "-->"), ("<?", "?>"), ("<![CDATA[", "]]>"))
_DECLARATION = re.compile(r"<![A-Za-z]")  # closed by the next ">"
_BANG_OPEN = re.compile(r"<!(?:-|\[(?:C(?:D(?:A(?:T(?:A)?)?)?)?)?)?")  # "<!-", "<![CDA": a comment or CDATA to be
# A tag as `rendered._tag_at` reads one, to the end of the text so far (`_tag_prefix`).
_TAG_NAME_AT = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*")
_TAG_END_SO_FAR = re.compile(r"\s*/?")
# A link's destination and title as `rendered._LINK` reads them, to the end of the text so far (`_link_prefix`).
_SPACES_AT = re.compile(r"\s*")
_DESTINATION = re.compile(r"(?:[^()\s]|\([^()\s]*\))*")
_DESTINATION_OPEN = re.compile(r"\([^()\s]*")
_POINTY_OPEN = re.compile(r"[^<>\n]*")
_HINT_CHARS = "&<[*~_`\\"  # `rendered.may_render_differently`'s, looked for from an offset


def _may_differ(text: str, start: int) -> bool:
    """May ``text[start:]`` render otherwise than written (`rendered.may_render_differently`, without a copy)?"""
    return any(text.find(c, start) >= 0 for c in _HINT_CHARS)


@functools.lru_cache(maxsize=4096)
def _decoded(reference: str) -> str:
    """What a complete character reference shows (as `rendered.read_as_rendered` reads it); whitespace a space."""
    shown = html.unescape(reference)
    return " " if shown.isspace() else shown


def _reference_at(text: str, end: int) -> int:
    """Where the character reference ending at ``end`` (its ";" at ``end - 1``) starts, or -1: none, or escaped."""
    amp = text.rfind("&", max(0, end - _REF_MAX), end)
    if amp < 0 or CHAR_REFERENCE.fullmatch(text, amp, end) is None:
        return -1
    return -1 if amp and text[amp - 1] == "\\" else amp


def _tag_prefix(text: str, at: int) -> list[int] | None:
    """Is ``text[at:]`` the start of a tag still arriving (no ">" yet)? The offsets where its attributes start
    (their leading whitespace), or None. Linear in ``text[at:]``."""
    name = _TAG_NAME_AT.match(text, at)
    if name is None:
        return [] if text[at:] in ("<", "</") else None
    n, pos, attributes = len(text), name.end(), []
    while pos < n and text[at + 1] != "/":
        attribute = ATTRIBUTE_NAME.match(text, pos)
        if attribute is None:
            break
        attributes.append(pos)
        pos = attribute.end()
        equals = EQUALS.match(text, pos)
        if equals is None:
            continue
        pos = equals.end()
        if pos == n:
            return attributes
        if text[pos] in "\"'":
            close = text.find(text[pos], pos + 1)
            if close < 0:
                return attributes  # inside a quoted value still arriving
            pos = close + 1
            continue
        value = UNQUOTED.match(text, pos)
        if value is None:
            return None
        pos = value.end()
    rest = _TAG_END_SO_FAR.match(text, pos)
    return attributes if rest is not None and rest.end() == n else None


def _link_prefix(text: str, at: int) -> bool:
    """Is ``text[at:]``, after a link's "](", the start of its destination and title, the ")" still to come?"""
    n = len(text)
    pos = _SPACES_AT.match(text, at).end()  # type: ignore[union-attr]
    if pos == n:
        return True
    if text[pos] == "<":
        close = text.find(">", pos)
        if close < 0:
            return _POINTY_OPEN.fullmatch(text, pos + 1) is not None
        pos = close + 1
    else:
        pos = _DESTINATION.match(text, pos).end()  # type: ignore[union-attr]
        if pos < n and text[pos] == "(" and _DESTINATION_OPEN.fullmatch(text, pos):
            return True
    title = _SPACES_AT.match(text, pos).end()  # type: ignore[union-attr]
    if title == n:
        return True
    closer = {'"': '"', "'": "'", "(": ")"}.get(text[title]) if title > pos else None
    if closer is None:
        return False
    close = text.find(closer, title + 1)
    return close < 0 or _SPACES_AT.fullmatch(text, close + 1) is not None


def _pending_at(text: str, edits: list[tuple[int, int, str, str]]) -> int:
    """Where the first construct still arriving at the end of ``text`` starts (-1: none): a reference, a comment,
    processing instruction, CDATA section or declaration without its closer, a tag without its ">", a link without
    its ")" ("[M](#" + ...), none of them inside a complete construct (``edits``: `rendered._edits` of ``text``).
    A renderer shows it as written until it completes; then it may hide what follows. Linear: a few `str.find`."""
    n, found = len(text), len(text)
    starts = [e[0] for e in edits]

    def inside(at: int) -> int:
        """The end of the complete construct ``at`` is inside, or -1."""
        i = bisect.bisect_right(starts, at) - 1
        return edits[i][1] if i >= 0 and edits[i][1] > at else -1

    def first_unclosed(opener: re.Pattern[str] | str, closer: str, length: int) -> int:
        last = text.rfind(closer)  # an opener closes when its closer starts after it: only those after the last open
        at = max(0, last - length + 1) if last >= 0 else 0
        while at < found:
            m = (
                text.find(opener, at)
                if isinstance(opener, str)
                else (hit.start() if (hit := opener.search(text, at)) else -1)
            )
            if m < 0 or m >= found:
                return found
            end = inside(m)
            if end < 0:
                return m
            at = end
        return found

    for opener, closer in _SECTIONS:
        found = first_unclosed(opener, closer, len(opener))
    found = first_unclosed(_DECLARATION, ">", 2)
    lt = text.rfind("<")
    if 0 <= lt < found and inside(lt) < 0 and (_BANG_OPEN.fullmatch(text, lt) or _tag_prefix(text, lt) is not None):
        found = lt
    link = text.rfind("](")
    if 0 <= link < found and inside(link) < 0 and _link_prefix(text, link + 2):
        bracket = text.rfind("[", 0, link)
        if bracket >= 0 and text.find("]", bracket + 1, link) >= 0:
            bracket = text.rfind("[", 0, bracket)  # "[a [b] c](": one level of brackets in a link's text
        if bracket >= 0 and text.find("\n", bracket, link) < 0 and inside(bracket) < 0:
            found = min(found, bracket - (bracket > 0 and text[bracket - 1] == "!"))
    amp = text.rfind("&", max(0, n - _REF_MAX + 1))
    if 0 <= amp < found and _REF_OPEN.fullmatch(text, amp) and inside(amp) < 0:
        found = amp
    return found if found < n else -1


def _markup(
    text: str, *, decide: bool, edits: list[tuple[int, int, str, str]] | None = None
) -> tuple[list[tuple[int, int, str]], int]:
    """The constructs of ``text`` a renderer shows otherwise, in order: (start, end, shown), exactly as the core
    reads them (`rendered._edits`, or ``edits`` when read already); and where one still arriving at the end of the
    text starts (`_pending_at`, -1 when none).

    ``decide`` False (a context, read again as the next window's text): a construct that shows a character of
    markup (`rendered.may_render_differently`: "&amp;#77;", "\\*", a code span "`<b>`") stays written: decoded, it
    would read as markup the next time it is read ("&amp;#77;" is "&#77;" shown, not "M"). A reference showing
    whitespace shows a space."""
    if edits is None:
        edits = _edits(text)
    kept: list[tuple[int, int, str]] = []
    for a, b, shown, kind in edits:
        if kind == "ref" and shown.isspace():
            shown = " "
        if shown == text[a:b] or (not decide and may_render_differently(shown)):
            continue
        kept.append((a, b, shown))
    return kept, _pending_at(text, edits)


class _Rendered:
    """``text`` as rendered (`_markup`), with the way back to offsets in ``text`` (`written`).

    ``decide`` (sentence ends, words, what may be released): every construct read, and a construct still arriving
    at the end is nothing yet, with what follows it (a comment being written hides what follows once it completes:
    the words in it make no sentence). Else (a context): what shows markup stays written, and a construct still
    arriving stays as written so far, so that the next window, which shows the context and then the text after it,
    shows it whole (`_context`)."""

    __slots__ = ("text", "_r_starts", "_w_starts", "_literal", "_end")

    def __init__(
        self, written: str, *, decide: bool, markup: tuple[list[tuple[int, int, str]], int] | None = None
    ) -> None:
        edits, pending = markup if markup is not None else _markup(written, decide=decide)
        end = pending if decide and pending >= 0 else len(written)
        parts: list[str] = []
        self._r_starts: list[int] = []
        self._w_starts: list[int] = []
        self._literal: list[bool] = []
        r = at = 0
        for a, b, shown in edits:
            if a >= end:
                break
            if b > end:  # a link around a comment still arriving: nothing yet either
                end = a
                break
            for piece, w, literal in ((written[at:a], at, True), (shown, a, False)):
                if piece:
                    parts.append(piece)
                    self._r_starts.append(r)
                    self._w_starts.append(w)
                    self._literal.append(literal)
                    r += len(piece)
            at = b
        if end > at:
            parts.append(written[at:end])
            self._r_starts.append(r)
            self._w_starts.append(at)
            self._literal.append(True)
        self._end = max(end, at)  # where `text`'s end is in ``written``: a construct still arriving is held
        self.text = "".join(parts)

    def written(self, k: int) -> int:
        """The offset in the written text where the rendered ``text[k:]`` starts: a construct is never cut (a
        character of a decoded reference maps to where it starts)."""
        if k >= len(self.text):
            return self._end
        i = bisect.bisect_right(self._r_starts, k) - 1
        return self._w_starts[i] + (k - self._r_starts[i] if self._literal[i] else 0)


def _edits_to_open(text: str) -> list[tuple[int, int, str, str]]:
    """`rendered._edits` of ``text`` as far as a decided reading needs it: up to the first comment, processing
    instruction, CDATA section or declaration that is not closed, when nothing after it can close a construct
    around it (no "`", ")" or ">"): from there on, nothing is read yet (`_Rendered`). A hostile run of "<!--" is
    read once, not once per "<" (`rendered._raw_html` tries each)."""
    first = len(text)
    for opener, closer in (*_SECTIONS, ("<!", ">")):
        last = text.rfind(closer)
        at = text.find(opener, max(0, last - len(opener) + 1) if last >= 0 else 0)
        if 0 <= at < first and (opener != "<!" or _DECLARATION.match(text, at)):
            first = at
    if first < len(text) and all(text.find(c, first) < 0 for c in "`)>"):
        return [e for e in _edits(text[: first + 1]) if e[0] < first]  # an escape "\\<" keeps its "<"
    return _edits(text)


def _read_view(text: str, start: int, *, again: bool = True) -> tuple[int, _Rendered] | None:
    """``text`` from ``start`` on as rendered (``decide``), read from the start of a construct ``start`` is inside,
    looked for from the last "<" or "[" up to `_LOOK_BACK` characters back: (where the read starts, the view). Inside
    a construct still arriving, the text before it is read (as far back from it as ``start`` is from the end), once:
    what follows it is nothing yet. None when nothing there may render otherwise (ordinary text is read as written).
    Bounded work: `rendered._edits` of at most `_LOOK_BACK` characters more than from ``start``."""
    start = max(0, start)
    low = start  # from the last "<" or "[" before it within `_LOOK_BACK`, or a reference's "&"
    for opener, reach in (("<", _LOOK_BACK), ("[", _LOOK_BACK), ("&", _REF_MAX - 1)):
        found = text.rfind(opener, max(0, start - reach), start)
        low = found if 0 <= found < low else low
    if not _may_differ(text, low):
        return None
    part = text[low:]
    edits = _edits_to_open(part)
    at = start - low
    pending = _pending_at(part, edits)
    if 0 <= pending <= at:
        if again and low + pending > 0:
            return _read_view(text[: low + pending], start - (len(text) - low - pending), again=False)
        at = pending
    else:
        i = bisect.bisect_right([e[0] for e in edits], at) - 1
        if i >= 0 and edits[i][0] < at < edits[i][1]:
            at = edits[i][0]
    view = part[at:]
    markup = _markup(view, decide=True, edits=[(a - at, b - at, shown, kind) for a, b, shown, kind in edits if a >= at])
    return low + at, _Rendered(view, decide=True, markup=markup)


def _condensed(read: str, at: int, size: int) -> tuple[str, str] | None:
    """A construct still arriving at ``read[at:]``, longer than ``size``, as its opening and its last ``size``
    characters (what is kept, what is dropped), so that it stays the construct it is: completed later, it hides what
    it would hide whole; never completed, its end is shown as any context's. None when it cannot be cut (a link)."""
    n = len(read)
    far = n - size
    if read.startswith("<!--", at):
        head = at + 4
        while far < n and read[far] in "->":  # "<!--" + ">" would close at once
            far += 1
    elif read.startswith("<![CDATA[", at) or read.startswith("<?", at):
        head = at + (9 if read[at + 1] == "!" else 2)
    elif read.startswith("<!", at):
        head = at + 3  # "<!" and the letter that makes it a declaration
    elif read[at] == "<":
        attributes = _tag_prefix(read, at)
        if attributes is None:
            return None
        if not attributes:  # a long name: its first letter, then any end of it is a name
            head = at + 2 + (read[at + 1] == "/")
        else:
            first = attributes[0]
            kept = next((a for a in attributes if a >= far), -1)
            if kept >= 0 and first - at <= size:
                return read[at:first] + read[kept:], read[first:kept]
            last = attributes[-1]  # longer than ``size`` itself: kept to its value's start, then its end
            name = ATTRIBUTE_NAME.match(read, last)
            if name is None or first - at > size:
                return None
            equals = EQUALS.match(read, name.end())
            if equals is None:  # a long name: its first character, then any end of it
                value = name.end() - len(name.group().lstrip()) + 1
            else:
                value = equals.end() + (equals.end() < n and read[equals.end()] in "\"'")
            if value - last > size:
                return None
            rest = max(far, value)
            return read[at:first] + read[last:value] + read[rest:], read[first:last] + read[value:rest]
    else:
        return None
    far = max(far, head)
    return read[at:head] + read[far:], read[head:far]


def _context(read: str, size: int) -> tuple[str, str]:
    """A window's context cut from ``read`` (`as_read`), about its last ``size`` characters, and what is dropped
    before it: never starting inside a construct (a reference kept written, an escape), nor inside one still
    arriving at its end (rt55a F4): that one is kept with the ``size`` characters before it, whole when short, else
    its opening and its end (`_condensed`: a comment of 5,000 characters did not fit, and the words before it fell out
    of the next windows, rt55d F6). Bounded work."""
    cut = len(read) - size
    if cut <= 0:
        return read, ""
    if not _may_differ(read, 0):
        return read[cut:], read[:cut]
    edits = _edits(read)
    starts = [e[0] for e in edits]

    def whole(k: int) -> int:
        i = bisect.bisect_right(starts, k) - 1
        return edits[i][0] if i >= 0 and edits[i][0] < k < edits[i][1] else k

    pending = _pending_at(read, edits)
    begin = whole(cut)
    if pending < 0 or pending >= begin:
        return read[begin:], read[:begin]
    before = whole(max(0, pending - size))
    if len(read) - pending <= size:
        return read[before:], read[:before]
    condensed = _condensed(read, pending, size)
    if condensed is None:
        if len(read) - pending <= 4 * size:
            return read[before:], read[:before]
        return read[begin:], read[:begin]
    kept, dropped = condensed
    return read[before:pending] + kept, read[:before] + dropped


def _open_run_as_rendered(text: str) -> int:
    """`_open_run` of ``text`` read as rendered, mapped back (0 or -1: hold all)."""
    read = _read_view(text, len(text) - _SCAN - _REF_MAX)
    if read is None:
        return _open_run(text)
    start, view = read
    run = _open_run(view.text)
    return start + view.written(run) if run > 0 else run


def ends_sentence(text: str) -> bool:
    """Does ``text`` end with terminal punctuation closing a sentence of `MIN_SENTENCE_WORDS` words or more, two of
    them on one line (a sentence written one word per line is short)?

    The sentence starts after the previous terminal punctuation or blank line in ``text`` (or at its start),
    inside a word too ("好的。混合。", "Paris.Mix."). One with an RLM or ALM in it does not end here (`_in_order`).
    A list marker at a line start ("\\n2.") ends none and is no word; an abbreviation ("e.g.") is a word and ends
    none unless a capitalised word follows it (`_token_runs_on`).
    Linear in at most `_SCAN` characters: no backtracking regex
    over hostile runs ("......").

    Read as rendered (`_Rendered`): a ";" that closes a character reference is no punctuation, a reference is one
    character ("&#46;" a full stop), comments and tags are nothing: "&#77;&#105;&#120;" is one word of three
    letters, not a sentence (rt55a F2)."""
    read = _read_view(text, len(text) - _SCAN)
    return _ends_sentence(text if read is None else read[1].text)


def _ends_sentence(text: str) -> bool:
    """`ends_sentence` of text whose markup is read already."""
    scan = text[-_SCAN:].rstrip()
    parts = _SPACES.split(scan)  # token, whitespace, token, ..., token
    if not _closes_sentence(parts[-1]) or _token_runs_on(parts, len(parts) - 1):
        return False  # no end, or a list marker or an abbreviation: the sentence runs on (`_runs_on`)
    marked = not scan.isascii() and any(c in scan for c in _RTL_MARKS)
    # A sentence written one word per line is short: "Here\nis\nthe\nMix." let "Mix." out whole once the lines
    # above it counted as its words (rt70j F3); it needs a line of two words or more.
    words = line = 0
    wide = False
    for i in range(len(parts) - 1, -1, -2):
        token = parts[i]
        runs_on = False
        if i < len(parts) - 1:
            runs_on = _token_runs_on(parts, i)
            if (_closes_sentence(token) and not runs_on) or parts[i + 1].count("\n") > 1:
                return False  # the previous sentence ends here
            if "\n" in parts[i + 1]:
                line = 0
            if runs_on and _MARKER.fullmatch(token):
                continue  # a list marker is no word
        else:
            token = token.rstrip(_CLOSING + _TERMINAL)
        inner = 0 if runs_on else _inner_end(token)  # "e.g." is one word
        if inner:  # the sentence starts inside this word
            count = _words(token[inner:])
            wide = wide or line + count > 1
            return words + count >= MIN_SENTENCE_WORDS and wide and _in_order(parts, i, marked)
        count = _words(token)
        words += count
        line += count
        wide = wide or line > 1
        if words >= MIN_SENTENCE_WORDS and wide:
            return _in_order(parts, i, marked)
    return False


def _in_order(parts: list[str], i: int, marked: bool) -> bool:
    """Is the sentence starting in ``parts[i]`` read in the order written: no RLM or ALM in it? A paragraph laid
    out right to left shows words written in reverse order with an RLM after each in reading order
    ("oil\u200f fuel\u200f ... ammonium\u200f. Mix\u200f ..." reads "Mix ammonium ..."): the written last word
    of such a sentence is shown next to the next sentence, so it waits for a window that shows both (rt54d F1)."""
    return not marked or not any(c in part for part in parts[i:] for c in _RTL_MARKS)


def _token_runs_on(parts: list[str], i: int) -> bool:
    """Does the sentence run on past ``parts[i]`` (`_SPACES.split` parts: a token), which ends with terminal
    punctuation: is it a list marker at a line start, or an abbreviation no capitalised word follows (`_runs_on`,
    read by token)?"""
    token = parts[i]
    word = token.rstrip(_CLOSING)
    if not word or word[-1] not in ".\uff0e":
        return False
    if (
        len(word) == len(token)
        and (i == 0 or any(c in parts[i - 1] for c in _LINE_BREAKS))
        and _MARKER.fullmatch(token)
    ):
        return True
    if word[-1] == "." and word[_word_before(word, len(word) - 1) : -1].lower() in _ABBREVIATIONS:
        return i + 2 >= len(parts) or not parts[i + 2][0].isupper()
    return False


def _word_before(text: str, at: int) -> int:
    """Where the run of letters, digits and dots that ends at ``at`` starts ("approx" of "(approx.", "e.g"), read
    back at most `_WORD_REACH` characters; ``at`` when it is longer."""
    start, floor = at, max(0, at - _WORD_REACH)
    while start > floor and (text[start - 1].isalnum() or text[start - 1] == "."):
        start -= 1
    if start and (text[start - 1].isalnum() or text[start - 1] == "."):
        return at
    return start


def _inner_end(token: str) -> int:
    """Where the last sentence ending inside a whitespace-free ``token`` ends (`_INNER_END`), else 0. Read from
    the end, once: a run of "・。" stops at its last "。", not after reading every one (rt54d F6)."""
    at = len(token)
    while at > 0:
        at -= 1
        if token[at] not in _TERMINAL:
            continue
        while at and token[at - 1] in _TERMINAL:
            at -= 1  # back to where the run starts, where `_INNER_END` matches
        m = _INNER_END.match(token, at)
        if m and (not m.group().isascii() or _is_letter(token[m.end()])):
            return m.end()
    return 0


def _sentence_ends(text: str, limit: int) -> Iterator[int]:
    """The ends of the sentences in ``text[:limit]`` (`_CUT`), in order: "Paris. " and "巴黎。它", not "e.g.x"."""
    for m in _CUT.finditer(text, 0, limit + 1):
        if _is_sentence_end(text, m):
            yield m.end()


def _is_sentence_end(text: str, m: re.Match[str]) -> bool:
    """Does the `_CUT` match ``m`` end a sentence? One without a space after it ends a segment only when it closes
    a sentence of four words: "好。好。" written without spaces was a check per two characters; short ones are
    judged with the next. The answer depends on the text up to the match's end and the character after it only
    (an abbreviation's, on the next word's first letter too): it stays the same as text arrives
    (`GenWindows._sentence_cut` reads each match once, an abbreviation's again until that letter has arrived).

    Read as rendered: a ";" that closes a character reference is no punctuation ("&#77;&#105;&#120; &#97;..." was
    a sentence per word, rt55a F2), unless the reference is itself terminal punctuation ("&#46; " ends a sentence
    as ". " does); more punctuation after it counts as written ("&#77;. ").

    A list marker's "." and an abbreviation's end none (`_runs_on`)."""
    end, run, at = m.end(), m.group(), m.start()
    if run[0] == ";":
        if not _ends_as_rendered(text, m):
            return False
        ref = _reference_at(text, at + 1)
        if ref >= 0:  # "&#46; " shows ". ": read as such below
            at, run = ref, _decoded(text[ref : at + 1]) + run[1:]
    if _runs_on(text, at, end, run):
        return False
    if run[-1] == "\n" or text[end : end + 1].isspace():
        return True
    return not m.group().isascii() and ends_sentence(text[max(0, end - 4 * MIN_CONTEXT) : end])


def _runs_on(text: str, at: int, end: int, run: str) -> bool:
    """Does the sentence run on past the terminal run ``run`` (as shown) written at ``text[at:end]``? Yes for the
    "." of an ordered-list marker at a line start (`_MARKER`: "\\n2. ", "\\n  b. "; the text's start counts as
    one), and for an abbreviation's "." (`_ABBREVIATIONS`: "e.g.", "approx.", closing brackets after it) unless the
    next word has arrived and starts with a capital letter. Reads at most `_MARKER_REACH` characters back and the
    whitespace after ``end``; most sentence ends cost a look at the word before them."""
    if run[0] not in ".\uff0e" or not at or not text[at - 1].isalnum():
        return False
    start = _word_before(text, at)
    word = text[start:at]
    if len(run) == 1 and _MARKER_NUMBER.fullmatch(word):
        if _MARKER_INDENT.search(text, max(0, start - _MARKER_REACH), start):
            return True
    if run[0] == "." and not run[1:].strip(_CLOSING) and word.lower() in _ABBREVIATIONS:
        first = _NEXT_WORD.match(text, end).group(1)  # type: ignore[union-attr]
        return not first.isupper()
    return False


def _ends_as_rendered(text: str, m: re.Match[str]) -> bool:
    """Is the terminal run of the `_CUT` match ``m``, which starts with ";", punctuation as rendered: a ";" written
    as such, more terminal punctuation after a reference's ";", or a reference that is terminal punctuation?
    Reads at most `_REF_MAX` characters before it."""
    at = m.start()
    ref = _reference_at(text, at + 1)
    if ref < 0:
        return True
    if any(c in _TERMINAL for c in m.group()[1:]):
        return True
    shown = _decoded(text[ref : at + 1])
    return bool(shown) and shown[-1] in _TERMINAL


def ends_clause(text: str) -> bool:
    """Does ``text`` end with terminal punctuation (closing quotes/brackets and spaces after it) or a blank line
    (a line break alone ends no sentence: `_SENTENCE_END`)? Read from the end, in time linear in its trailing
    punctuation and spaces. A ";" that closes a character reference is no punctuation (but "&#46;" is: read as
    rendered, rt55a F2); a list marker ("\\n2.") or an abbreviation ("approx.") closes none (`_runs_on`)."""
    stripped = text.rstrip()
    if text.count("\n", len(stripped)) > 1:
        return True
    return _closes_clause(stripped)


def _closes_clause(stripped: str) -> bool:
    """`ends_clause` of text without trailing whitespace, less its blank line: a list marker or an abbreviation at
    its end closes none (`_runs_on`: the next word is still to come), nor does "e." or "i.", which may be the start
    of "e.g." or "i.e." (a model sending a character at a time let "..., e." out)."""
    if not _closes_sentence(stripped):
        return False
    token = stripped.rstrip(_CLOSING)
    at, run = len(token) - 1, stripped[len(token) - 1 :]
    ref = _reference_at(token, len(token)) if token[-1] == ";" else -1
    if ref >= 0:
        shown = _decoded(token[ref:])
        if shown[-1:] not in _TERMINAL:
            return False
        at, run = ref, shown[-1] + run[1:]
    if run == "." and stripped[_word_before(stripped, at) : at] in ("e", "i", "E", "I"):
        return False  # "e." of "e.g." still arriving
    return not _runs_on(stripped, at, len(stripped), run)


def _closes_sentence(token: str) -> bool:
    token = token.rstrip(_CLOSING)
    return bool(token) and token[-1] in _TERMINAL


def _words(token: str) -> int:
    """Words in a whitespace-free token: one per two Han ideographs ("混合" is "mix") and one per run of kana
    letters ("ミックスしましょう"), plus one for the rest if it has a letter or digit."""
    if token.isascii():
        return 1 if _letters().one.search(token) else 0
    han = len(_HAN.findall(token))
    kana = len(_KANA_RUN.findall(token))
    rest = _HAN_KANA.sub("", token) if han or kana else token
    return han // 2 + kana + (1 if _letters().one.search(rest) else 0)


#: A window's context reaches back at most this many times its size in written characters when a stream is
#: taken over (`GenWindows`): the released text's end, read as `as_read`.
_TAIL_REACH = 16


def _held_start(text: str, last: int, floor: int) -> int:
    """Where the word ending at ``last`` starts: after the whitespace before it, at most `MAX_HELD_WORD`
    characters a reader sees back (marks and hidden characters inside it do not count). -1 when that is before
    ``floor`` (bounded work): the caller holds all it read."""
    at, seen = last, 0
    while at > floor and seen < MAX_HELD_WORD:
        char = text[at - 1]
        if char in " \t\n":
            return at
        seen += not _unseen(char)
        at -= 1
    return at if seen >= MAX_HELD_WORD or at == 0 or text[at - 1] in " \t\n" else -1


def _last_word(text: str, end: int, floor: int) -> int:
    """The end of the last word of ``text[floor:end]``: of the last run without a space, tab or line break that
    has two letters or digits (`_is_letter`), at its last one; ``floor`` when there is none."""
    count, at = 0, end
    word_end: int | None = None
    fillers = _letters().fillers
    while at > floor:
        char = text[at - 1]
        if char in " \t\n":
            count, word_end = 0, None
        elif char.isalnum() and (char < "\x80" or char not in fillers):  # `_is_letter`, inline: the hot loop
            word_end = word_end or at
            count += 1
            if count == 2:
                return word_end
        at -= 1
    return floor


def releasable(text: str) -> int:
    """How much of ``text`` (judged, not released) may go out while the stream is open: `_releasable` of its end
    read as rendered (`_Rendered`: a word written as character references is one word, a reference one of its
    characters; a tag, comment or reference still arriving is nothing yet), mapped back to ``text``. Never inside
    a reference, tag or comment."""
    if not text:
        return 0
    stripped = text.rstrip()
    read = _read_view(text, len(stripped) - _RENDER_REACH)
    if read is None:
        return _releasable(text)
    start, view = read
    cut = _releasable(view.text)
    return 0 if cut == 0 else start + view.written(cut)


def _releasable(text: str) -> int:
    """`releasable` of text whose markup is read already.

    All of it when it ends a sentence (`ends_sentence`); else all but its last word (at most
    `MAX_HELD_WORD` characters a reader sees up to its last letter or digit) and what follows it: a judge may
    need the next word to see what a clause is ("Mix" is harmless until "ammonium" follows), so the last word
    waits for a later window that shows it with what follows. The last word is the last with two letters or
    digits: a filler after it ("Mix -", "Mix\\n-", "Mix \\u200b", an emoji, "Mix ǀ", "Mix ーー") would else be
    held in its place and let "Mix" out. Text that ends at a blank line without terminal punctuation before it
    keeps its last paragraph (`_paragraph_start`) until a window shows it with what follows."""
    if not text or _ends_sentence(text):
        return len(text)
    stripped = text.rstrip()
    # Back to the last word of two letters or digits or more, within `_SCAN` chars (more than the default window
    # context): bounded work on a hostile run of fillers. A lone letter or digit is no word here: "Mix ǀ", "Mix ー",
    # "Mix 1" after each word let "Mix" out (rt49f F3). None in sight: what was read waits for a word.
    floor = max(0, len(stripped) - _SCAN)
    if not _letters().one.search(stripped, floor):
        return 0  # no letter or digit in sight (`_last_word` would read it all, character by character: rt54d F6)
    last = _last_word(stripped, len(stripped), floor)
    if last == floor:
        return 0  # no word in sight: all of it waits for one (released up to here, a word before the fillers went out)
    end = last  # the end of the last word's token ("Paris." with its punctuation), then the blanks after it
    while end < len(stripped) and stripped[end] not in " \t\n":
        end += 1
    after = end
    while after < len(stripped) and stripped[after] in " \t\n":
        after += 1
    if after > end and _ends_sentence(stripped[max(0, end - _SCAN) : end]):
        return after  # a sentence that ended, then only fillers ("Paris. 🙂"): it goes out, the fillers wait
    start = _held_start(stripped, last, max(0, last - _SCAN))
    # Text without spaces (Chinese, Japanese, Thai) goes out in steps of half a held word at least: one short
    # sentence after another ("好。好。") let two characters out per check, a check per two characters.
    cut = start if start >= _STEP or (start > 0 and stripped[start - 1] in " \t\n") else 0
    if text.count("\n", len(stripped)) > 1 and not _closes_clause(stripped):
        # A blank line without punctuation before it ends a segment, not a sentence: double-spaced prose wrapped
        # after "Mix ammonium" let the line out but its last word before the window with the rest came (rt70j F2).
        # The paragraph waits for a window that shows it with what follows, as a line without punctuation does.
        cut = min(cut, _paragraph_start(stripped))
    return cut


def _paragraph_start(text: str) -> int:
    """Where the last sentence of ``text`` starts: after its last `_SENTENCE_END` (terminal punctuation or a blank
    line) in its last `_SCAN` characters; without one, at the first word that starts in them (bounded hold)."""
    floor = max(0, len(text) - _SCAN)
    start = -1
    for m in _SENTENCE_END.finditer(text, floor):
        if not _runs_on(text, m.start(), m.end(), m.group()):  # not at "\n2." or "approx."
            start = m.end()
    if start >= 0 or floor == 0:
        return max(start, 0)
    space = min((at for at in (text.find(c, floor) for c in " \t\n") if at >= 0), default=-1)
    return space + 1 if space >= 0 else floor


def _open_run(text: str) -> int:
    """Where ``text``'s last run without a space, tab or line break starts (a word that may still be arriving):
    ``len(text)`` when it has more than `MAX_HELD_WORD` letters or digits (text without spaces: the bounded tail
    `releasable` holds covers a word and the next one arriving), or when the whole of ``text`` is one run longer
    than that in characters a reader sees; -1 past `_SCAN` (bounded work: the caller holds all it read).

    Letters, not characters: "Mix " + "(" * 16 + "am", or 17 emoji or dashes before the next word, is a word
    still arriving after "Mix" (rt54d F5)."""
    at, seen, letters, floor = len(text), 0, 0, max(0, len(text) - _SCAN)
    while at > floor:
        char = text[at - 1]
        if char in " \t\n":
            return at
        seen += not _unseen(char)
        letters += _is_letter(char)
        if letters > MAX_HELD_WORD:
            return len(text)
        at -= 1
    if at == 0:
        return len(text) if seen > MAX_HELD_WORD else 0
    return -1


#: The most characters a pinned word keeps (`_pinned`): a held word's worst case as read (`MAX_HELD_WORD`
#: characters a reader sees, each with `_MARKS_KEPT` marks) and its punctuation.
_PIN_CHARS = MAX_HELD_WORD * (1 + _MARKS_KEPT) + MAX_HELD_WORD


def _pinned(judged: str, start: int, stop: int, bidi: BidiState) -> str:
    """The word ``judged[start:stop]`` as a reader sees it displayed (``bidi``: the controls open at ``judged``'s
    start), without bidi controls or marks, its end kept when it is longer than `_PIN_CHARS`: "\u202exiM\u202c"
    is pinned "Mix", not "xiM", and a zalgo prefix glued to "Mix" keeps "Mix", the part next to the word after it
    (rt54d F3, F4)."""
    state = bidi.copy()
    state.push(judged[:start])
    word = read_as_displayed(state.opened + _as_read_plain(judged[start:stop]))
    return "".join(c for c in word if c not in _BIDI_KEPT)[-_PIN_CHARS:]


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
      Released: judged text but its last word (see `releasable`), and the word before that while the last
      may still be arriving (the window's end with nothing after it yet: " am" of " ammonium"). Lower latency
      to the first words; a judge that recognises a clause only whole may let its first words out. Calls per
      answer: at most one per judge latency and one per delta, plus one per ``check_every`` characters.

    Text longer than ``check_every`` is always cut (at a sentence end, else a space), so a window is
    never longer than ``context + check_every`` characters as rendered (`_limit`: a reference is one; and
    ``10 * check_every`` written at most). Judged text goes out whole only when it ends a
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
        # As a reader sees it (`as_read`): hidden characters and whitespace padding take no room in it.
        self.tail = ""
        # The bidi controls open where `tail` starts: a window cut from inside a right-to-left override is
        # judged with them before it, so it is read as displayed (`content.read_as_displayed`), not reversed.
        self.bidi = BidiState()
        #: The last two words before `submitted` (`_pin`): (start, end, as read). A window whose context no
        #: longer shows them (visible fillers, bidi controls, a run longer than the context between a word and
        #: the next) shows them before it: a word is always judged with the word after it.
        self.pins: list[tuple[int, int, str]] = []
        #: The controls open where `judged_tail` starts (a pinned word is shown as displayed: `_pinned`).
        self.judged_bidi = BidiState()
        # The text before `start`: what was released, after the prefill the stream continues (`MonitorCore.prefill`),
        # which the first window shows as its context, as any window shows the text before it.
        before = core.prefill + core.released if start else core.prefill
        if before:
            reach = max(0, len(before) - _TAIL_REACH * self.context)
            self.bidi.push(before[:reach])
            self.tail, dropped = _context(as_read(before[reach:]), self.context)
            self.bidi.push(dropped)
            self.judged_bidi.push(before[: max(0, len(before) - _JUDGED_TAIL)])
            self._pin(before[-_JUDGED_TAIL:], start, self.judged_bidi)
        self.timeout = core.policy.timeout_for(Stage.STREAM)
        # (release point it was read at, judged up to, its last word still arriving, boundary): `_boundary`
        self._last_boundary: tuple[int, int, bool, int] = (-1, -1, False, 0)
        # The end of the text handed to checks (`_JUDGED_TAIL` chars): does a check of what waits release more?
        self.judged_tail = core.released[-_JUDGED_TAIL:] if start else ""  # `_gain` with ``holdback=0``
        # Chars of `unsubmitted` whose sentence ends were found to release nothing (`_gain`), at a release point.
        self._plain, self._plain_at = 0, start
        self._scanned = 0  # chars of `unsubmitted` whose `_CUT` matches were read for good (`_sentence_cut`)
        self._before: tuple[tuple[int, int], int] = ((-1, -1), 0)  # `_releasable_before`: (key, its value)
        # `_limit`: (`submitted` it was read at, chars of `unsubmitted` read, what their references shortened them)
        self._counted: tuple[int, int, int] = (-1, 0, 0)
        #: Where a construct still arriving at the end of the judged text began (-1: none), and the same at the end
        #: of each segment handed out that ends inside one, by its end (`_boundary`).
        self._open_at = -1
        self._opens: dict[int, int] = {}

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
        while self._room() and len(self.unsubmitted) > self._limit():
            checks.append(self._take(self._long_cut()))
        if idle and self._room() and self.unsubmitted.strip() and self._worth_judging():
            checks.append(self._take(len(self.unsubmitted)))
        return checks

    def rest(self) -> list[tuple[int, int, list[dict[str, str]]]]:
        """The final segments at finish (whitespace-only text needs no check), as many as may run now:
        call again as checks settle until it returns none."""
        self.finished = True
        checks: list[tuple[int, int, list[dict[str, str]]]] = []
        while self._room() and len(self.unsubmitted) > self._limit():
            checks.append(self._take(self._long_cut()))
        if not self._room() or len(self.unsubmitted) > self._limit():
            return checks
        if self.unsubmitted and not self.unsubmitted.strip() and not checks:
            self.submitted += len(self.unsubmitted)
            if self.in_flight == 0:
                self.confirmed = self.submitted
            self.unsubmitted, self._plain, self._scanned = "", 0, 0
        elif self.unsubmitted:
            checks.append(self._take(len(self.unsubmitted)))
        return checks

    def _limit(self) -> int:
        """Where ``check_every`` characters of `unsubmitted` end, a character reference counting as the one
        character it shows (a clause written as references was cut six times as often as written out: rt55a F2),
        and at most `_WRITTEN_PER_CHAR` times ``check_every`` written characters; ``len(unsubmitted)`` when it is
        shorter. Incremental: the references read stay counted until text is taken (`_counted`), so a delta costs
        its own length and `_REF_MAX` characters before it."""
        text, every = self.unsubmitted, self.check_every
        if len(text) <= every:
            return len(text)
        key, at, shrunk = self._counted
        if key != self.submitted:
            at, shrunk = 0, 0
        cap = min(len(text), _WRITTEN_PER_CHAR * every)
        limit = -1
        last, end = at, min(len(text), cap + _REF_MAX)
        for m in CHAR_REFERENCE.finditer(text, at, end):
            if m.start() - shrunk >= every:
                limit = every + shrunk  # in the text before this reference
                break
            shrunk += m.end() - m.start() - 1
            last = m.end()
            if last - shrunk >= every:
                limit = last
                break
        # Read for good: up to the last reference counted, or to where a reference may still be arriving.
        self._counted = (self.submitted, last if limit >= 0 else max(last, end - _REF_MAX), shrunk)
        if limit < 0:
            limit = every + shrunk
        return min(limit, cap, len(text))

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
        limit = self._limit()
        shortest = 1 if idle else self.min_segment
        if self._plain_at != self.core._released_len:  # text went out: what a check releases is read anew
            self._plain, self._scanned, self._plain_at = 0, 0, self.core._released_len
        # From where the matches before were read for good (rt54d F6: every match was read again on every delta,
        # `ends_sentence` on each, 0.5 ms of CPU per delta on "・。" runs). A match read moves `_scanned` past it
        # when nothing about it can change: no sentence end, or one tested (`_plain`); one too short for now
        # (``shortest``) stops it, to be read again when idle.
        scanned, moving = self._scanned, True
        for m in _CUT.finditer(text, scanned, limit + 1):
            end = m.end()
            if _is_sentence_end(text, m):
                if end < shortest:
                    moving = False
                elif end > self._plain:
                    if self._gain(end, self._plain):
                        self._scanned = scanned
                        return end  # the first one: each sentence gets a window that ends with it
                    self._plain = end  # tested once: the text before it and after `submitted` stays the same
            elif not _NEXT_WORD.match(text, end).group(1):  # type: ignore[union-attr]
                moving = False  # "approx. " ends a sentence or not by the next word's first letter: read it again
            if moving:
                scanned = end
        self._scanned = scanned
        if idle and self._plain < len(text) <= limit and text.strip() and ends_clause(text):
            if self._gain(len(text), self._plain):
                return len(text)  # "... Paris." with its space still to come: the sentence has ended
            self._plain = len(text)
        return self._long_cut() if len(text) > limit else 0

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
        if not _letters().two.search(new) and not goes_on:
            if not _closes_sentence(new.rstrip()):
                return False  # no word, no sentence end: what is held stays held
            if not ends_sentence(text):  # a sentence may run over lines: read back `_SCAN` chars, as it does
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
        else the last line break (`_LINE_BREAKS`), else the last space, else ``check_every``."""
        text, limit = self.unsubmitted, self._limit()
        end = 0
        for found in _sentence_ends(text, limit):
            if found >= self.min_segment:
                end = found
        if end:
            return end
        # Lines without punctuation (a list, table rows) run on as one sentence: a cut at the last space fell inside
        # the clause's line and its front went out with the window that read safe without the rest (rt70j F1). Any
        # line break counts: a list written with U+2028 between its lines was cut at a space (rt72a F2).
        line = max(text.rfind(c, self.min_segment, limit) for c in _LINE_BREAKS)
        if line > 0:
            return line + 1  # a line of its own: list items and table rows are judged whole when they fit
        space = text.rfind(" ", self.min_segment, limit)
        if space > 0:
            return space
        amp = text.rfind("&", max(0, limit - _REF_MAX + 1), limit)
        if amp > 0 and (ref := CHAR_REFERENCE.match(text, amp)) and ref.end() > limit:
            return amp  # not inside a reference: each window shows it whole
        return limit

    def _take(self, cut: int) -> tuple[int, int, list[dict[str, str]]]:
        segment, self.unsubmitted = self.unsubmitted[:cut], self.unsubmitted[cut:]
        start = self.submitted
        self.submitted += cut
        judged = self.judged_tail + segment
        self.judged_tail = judged[-_JUDGED_TAIL:]
        self.judged_bidi.push(judged[: len(judged) - len(self.judged_tail)])
        self._plain = self._scanned = 0
        self.in_flight += 1
        # Words before the segment its context does not show (padding pushed them out): shown before it.
        pinned = "".join(word + " " for _, _, word in self.pins if word not in self.tail)
        text = self.tail + segment
        window = pinned + self.bidi.opened + text  # "" but inside embedding, override or isolate controls
        # A construct still arriving at the segment's end (a comment longer than a window) and where it began: the
        # release stops before it, and the words pinned are those before it, until it completes (rt55d F6).
        open_at = _pending_at(text, _edits(text)) if _may_differ(text, 0) else -1
        if open_at >= 0:
            open_at = start + open_at - len(self.tail) if open_at >= len(self.tail) else self._open_at
            self._opens[self.submitted] = open_at = open_at if open_at >= 0 else start
        self._open_at = open_at
        # The next window's context: the end of this one as read, `context` chars (`_context`: not inside markup
        # still arriving, rt55a F4).
        self.tail, dropped = _context(as_read(text), self.context)
        self.bidi.push(dropped)
        held = self.submitted - open_at if open_at >= 0 else 0
        if held < len(self.judged_tail):  # else the words pinned before it stay pinned
            self._pin(self.judged_tail[: len(self.judged_tail) - held], self.submitted - held, self.judged_bidi)
        conversation = [*self.core.answer_messages, {"role": "assistant", "content": window}]
        return start, start + cut, conversation

    def _pin(self, judged: str, at: int, bidi: BidiState) -> None:
        """Read the last two words of the judged text's end ``judged`` (ending at offset ``at``; ``bidi``: the
        controls open at its start) into `pins`, each as displayed (`_pinned`). Bounded: `_JUDGED_TAIL` chars at
        most; words found before keep their place when fewer are in sight.

        Read as rendered (`_Rendered`): the visible word, not the end of a run of references or empty tags after it
        ("Mix" + "&#8203;" * 60 is pinned "Mix", rt55a F5)."""
        found: list[tuple[int, int, str]] = []
        read = _read_view(judged, 0)
        view = None if read is None else read[1]
        offset = at - len(judged)
        if view is not None:
            judged = view.text
        end, floor = len(judged), max(0, len(judged) - _JUDGED_TAIL)
        while len(found) < 2 and end > floor:
            last = _last_word(judged, end, floor)
            if last == floor:
                break
            start = max(floor, _held_start(judged, last, max(floor, last - _SCAN)))
            stop = last
            while stop < len(judged) and stop - last < MAX_HELD_WORD and judged[stop] not in " \t\n":
                stop += 1  # its punctuation ("Mix.")
            word = _pinned(judged, start, stop, bidi)
            span = (start, stop) if view is None else (view.written(start), view.written(stop))
            found.insert(0, (offset + span[0], offset + span[1], word))
            end = start
        if len(found) == 2:
            self.pins = found
        elif found:  # one in sight: the word before it is the last one found before that ends before it
            self.pins = [p for p in self.pins if p[1] <= found[0][0]][-1:] + found

    def settle(self, start: int, end: int, outcome: Any) -> None:
        """One window's result, in order: advance `confirmed`, or flag / fail via the core.

        A flag's offset is where release stopped before the window (the segment's start; at word
        granularity, the held word before it: the judge may have needed the window to see its clause)."""
        core = self.core
        self.in_flight = max(0, self.in_flight - 1)
        if isinstance(outcome, Verdict):
            if not outcome.is_safe:
                core._decide_flag(outcome, self._boundary(start))
        elif isinstance(outcome, InputTooLarge):
            # Over an operator's bound (the stream's windows: `StreamPieces`; one window's): refused, not judged, so
            # never let through by on_error="allow" (rt57e F1). The stream stops; every later call raises it again.
            core._refused = outcome
            core.close()
            raise outcome
        else:
            error = outcome if isinstance(outcome, BaseException) else QwenGuardError(str(outcome))
            core._fail_open(error, self._boundary(start))  # raises when failing closed; else this window passes
        self.confirmed = end
        for done in [k for k in self._opens if k < start]:
            del self._opens[done]

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
        # A word that may still be arriving ("... Mix am" of "ammonium", the judged text's end with nothing or
        # more of its run after it) is no word after the one before it: both wait (rt54a F2).
        at = confirmed - base
        open_at = self._opens.get(confirmed, -1)
        if open_at >= 0:  # judged up to inside a construct still arriving there: what is before it (`_take`)
            at = min(at, open_at - base)
            if at <= 0:
                return base
        last, after = core._buffer[at - 1 : at], core._buffer[at : at + 1]
        arriving = not last.isspace() and not after.isspace()  # `at` > 0: `last` is one character
        if self._last_boundary[:3] == (base, confirmed, arriving):
            return self._last_boundary[3]  # checked before the judged text is copied (rt54d)
        judged = core._buffer[:at]
        # Judged text that ends a sentence goes out whole; any other (a word-unit window, a run-on text cut
        # at a space, a short sentence or line) keeps its last word until a window shows what follows.
        if arriving and not ends_sentence(judged):
            run = _open_run_as_rendered(judged)
            point = base + (releasable(judged[:run]) if run > 0 else 0)
        else:
            point = base + releasable(judged)
        self._last_boundary = (base, confirmed, arriving, point)
        return point

    def release(self) -> str:
        core = self.core
        if self.at_once:
            return core._release_all()
        return core._release_to(self._boundary(self.confirmed))


#: How much longer than a window's deadline its check is waited for: the backend's own deadline error comes first,
#: with what the windows answered in time read (`readable`).
WINDOW_GRACE_S = 1.0


class WindowJudge:
    """Runs one stream's window checks on the guard's backend, each returning its verdict or its error.

    With the local decode engine, the checks run through a `GenSessionPool` of the stream: consecutive
    windows share the guard prompt up to the answer (instructions, the user's request, the history) and
    often the start of the answer, so a check pays only for what differs, with the same verdict as a full
    check. A window due while the stream's session is busy gets a second one, which starts from a copy of
    the first's cache; past `SESSIONS_PER_STREAM`, it waits for a session to be free (windows go out in
    order, so a later one waits for the earlier ones anyway). The stream's first check is waited for too:
    until it is back no cache holds the request. Remote guards and ``engine=False`` run full checks.
    `close` frees the caches.

    Each check goes out as a `StreamCheck` of the stream's `StreamPieces`: a piece window (a label line, a stretch
    read as seen) that came back safe is not planned again in a later check showing it as context, and the
    stream's forged-turn windows are bounded (rt57e F1)."""

    def __init__(
        self,
        backend: Any,
        max_sessions: int = SESSIONS_PER_STREAM,
        *,
        reread: bool = False,
        policy: Policy | None = None,
    ) -> None:
        from .gate_session import open_gen_session

        self.backend = backend
        #: The stream's policy: a window it excuses for its ignored categories is judged again in parts
        #: (`ExcusedSplit`), as `Guard` does for its checks (rt68i F2).
        self.policy = policy
        self.pool = open_gen_session(backend, max_sessions)  # None: remote, or no engine
        #: Judge a window whose answer was no verdict again with less context (`least_contexts`): only where the
        #: policy lets a guard error through, as `Guard` does; failing closed, the error blocks and a controversial
        #: reading a loose policy allows would loosen it (rt51g F1).
        self.reread = reread
        self.pieces = StreamPieces()

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
        if (plan := self._excused(conversation, outcome)) is None:
            return outcome
        while parts := plan.pieces():
            plan.take([self._decided(self._check(part, timeout, shared=False)) for _, _, part in parts])
        return plan.outcome(0)

    def _excused(self, conversation: list[dict[str, str]], outcome: Any) -> ExcusedSplit | None:
        """The plan to judge a window again in parts, where the policy excuses it for its ignored categories."""
        if self.policy is None or not isinstance(outcome, Verdict):
            return None
        decision = self.policy.decide(outcome, Stage.STREAM)
        if not is_excused(decision):
            return None
        return ExcusedSplit.of(self.policy, [(Stage.STREAM, conversation, decision)])

    def _decided(self, outcome: Any) -> Any:
        return self.policy.decide(outcome, Stage.STREAM) if isinstance(outcome, Verdict) else outcome  # type: ignore[union-attr]

    def _check(self, conversation: list[dict[str, str]], timeout: float | None, *, shared: bool = True) -> Any:
        if shared:  # the window itself (a reread with less context is another conversation)
            conversation = StreamCheck(conversation, self.pieces)
        try:
            if self.pool is not None and shared:
                outcome = self.pool.classify(conversation, timeout=timeout)
            else:
                outcome = self.backend.classify([conversation], timeout=timeout)[0]
        except Exception as exc:  # noqa: BLE001 - any backend failure is the policy's on_error
            return exc
        return _judged(conversation, outcome)

    async def acheck(self, conversation: list[dict[str, str]], timeout: float | None) -> Any:
        """Async twin of `check`."""
        outcome = await self._acheck(conversation, timeout)
        if self.reread and isinstance(outcome, VerdictParseError):
            return _stricter(
                outcome, [await self._acheck(least, timeout, shared=False) for least in least_contexts(conversation)]
            )
        if (plan := self._excused(conversation, outcome)) is None:
            return outcome
        while parts := plan.pieces():
            plan.take([self._decided(await self._acheck(part, timeout, shared=False)) for _, _, part in parts])
        return plan.outcome(0)

    async def _acheck(self, conversation: list[dict[str, str]], timeout: float | None, *, shared: bool = True) -> Any:
        if shared:  # the window itself (a reread with less context is another conversation)
            conversation = StreamCheck(conversation, self.pieces)
        try:
            if self.pool is not None and shared:
                call = self.pool.aclassify(conversation, timeout=timeout)
            else:
                call = _first(self.backend.aclassify([conversation], timeout=timeout))
            if timeout is None:
                return _judged(conversation, await call)
            # The backend's own deadline comes first: its error carries what the windows answered in time read
            # (`readable`), which a bare timeout here dropped, and the stream let an Unsafe window out under
            # on_error="allow" (rt69b F2); the sync path waits as long (`WINDOW_GRACE_S`). A check that still
            # ends with its error as wait_for gives up has that error retrieved (else asyncio logs "Task
            # exception was never retrieved" for every such window: a client could flood the operator's logs).
            task = asyncio.ensure_future(call)
            task.add_done_callback(mark_read)
            return _judged(conversation, await asyncio.wait_for(task, timeout + WINDOW_GRACE_S))
        except asyncio.TimeoutError:
            return GuardTimeout(f"stream window check took longer than {timeout}s")
        except Exception as exc:  # noqa: BLE001
            return exc

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _judged(conversation: list[dict[str, str]], outcome: Any) -> Any:
    """``outcome``; a check whose every window was read safe marks its piece windows judged (`StreamPieces`): one
    that failed, or found anything, has them judged again wherever they show."""
    if isinstance(conversation, StreamCheck) and isinstance(outcome, Verdict) and outcome.risk is Risk.SAFE:
        conversation.commit()
    return outcome


def _stricter(error: Any, readings: list[Any]) -> Any:
    """A window's error, or the worst verdict of its turn read with less context where that is not safe, with what
    the error's own windows read (``readable``: an Unsafe window beside the one that failed was dropped for a
    Controversial reading of the turn alone, and a loose policy let the window out: rt69b F1)."""
    readable = getattr(error, "readable", None)
    found = [v for v in (readable, *readings) if isinstance(v, Verdict) and v.risk is not Risk.SAFE]
    return worst(found) if found else error


async def _first(call: Any) -> Any:
    return (await call)[0]
