"""Long runs of whitespace, shortened before a conversation is windowed.

A reader sees one gap where a text has a run of blanks (HTML and Markdown collapse it; a chat UI shows a wide gap at
most), and the application's LLM reads the words on both sides together. A guard window counts tokens as written:
" \\t" repeated 12,000 times between "mix" and "ammonium" is ~12,000 tokens, so no window of a real-size guard showed
the two words together and every check passed (rt58c F1; 160 such characters were enough where a window was cut).
`shorten_blank_runs` keeps each run's first `KEPT_BLANKS` characters: the words stay within any window overlap of more
than that many tokens, line breaks and indentation up to that depth are kept, and the padding costs no window work.

Combining marks are padding too: a stack of 6,000 grave accents on a space (or a comma, a no-break space; Hebrew
points, enclosing circles) shows as one smudge between two words and is 6,000 tokens (rt63a F1). A run of marks keeps
its first `content.MARK_RUN` (Unicode's own bound for a stack); a run of blanks with marks in it (" " + marks, again
and again) is cut as a run of blanks is, after the marks that sit on the character before it.

Rules are padding too: a run of one punctuation or symbol character ("-", ".", "=", "#", "—", "─") or of a unit of
two or three of them ("-=", "../") is a line to a reader and, to a byte-level BPE, one token per 16-64 bytes ("-" * 64
is one Qwen3 token). A remote guard without the tokenizer sizes its windows in bytes at about 4 a token, so 256-dash
rules between a clause's words kept a 400-token clause out of every request (rt71e F1). `shorten_rule_runs` keeps the
first `KEPT_BLANKS` bytes of each such run (whole units: 16 dashes, 5 em dashes); letters, digits, marks and emoji are
never cut. Rule pieces side by side are one rule too: ("-" * 16 + "=" * 16) * 8 or ("-" * 16 + " ") * 15 is 16 bytes a
token, each piece short of a rule (rt71l F2); a stretch of punctuation, symbols and blanks that reads at more than
`KEPT_BLANKS` bytes past 4 a token keeps what one rule keeps.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .content import MARK_RUN, class_ranges

__all__ = [
    "KEPT_BLANKS",
    "has_escaped_blank_run",
    "padding_read",
    "seen_as_nothing",
    "shorten_blank_runs",
    "shorten_padding",
    "shorten_rule_runs",
]

#: What a run of whitespace keeps (each character is at most one token, far under the windows' 64-token overlap).
KEPT_BLANKS = 16

# Whitespace as Python reads it (str.isspace: ASCII blanks, line and paragraph separators, U+3000, U+2000-U+200A ...),
# blank letters (Hangul fillers, U+2800) and the characters a reader sees as nothing, which an attacker can mix into a
# run to break it into short ones (" \u00ad\t" repeated): soft hyphen, combining grapheme joiner, Mongolian and
# every variation selector, zero-width spaces and joiners, word joiner and invisible operators, the bidi marks
# (LRM, RLM, ALM: a run keeps some of them, which is all an RTL reading needs), deprecated format controls, BOM,
# musical and shorthand format controls, the language tag and tag cancel, and the code points Unicode reserves as
# default-ignorable (a reader shows them as nothing once assigned, and renders nothing for them now: U+2065,
# U+FFF0-U+FFF8, the unassigned rest of U+E0000-U+E0FFF; rt59a F1). Not the tag characters that spell ASCII
# (read by `content.as_seen_pieces`) nor the bidi embeddings and isolates (they reorder what follows them, and a run
# cut between an opener and its closer would read otherwise): runs holding those are read by `padding_read`.
_SEEN_AS_NOTHING = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2060-\u2065\u206a-\u206f\u2800"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e001f"
    "\U000e007f-\U000e0fff"
)
_RUN = re.compile(f"[\\s{_SEEN_AS_NOTHING}]{{{KEPT_BLANKS + 1},}}")
_NOTHING = re.compile(f"[{_SEEN_AS_NOTHING}]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


@lru_cache(maxsize=1)
def _marks() -> list[int]:
    """Every combining mark (Mn, Mc, Me) and non-starter that is neither whitespace nor seen as nothing. Enclosing
    marks ("\u20dd") and many vowel signs are of combining class 0: not non-starters, and stacked all the same."""
    blank = re.compile(f"[\\s{_SEEN_AS_NOTHING}]")
    return [
        cp
        for cp in (*range(0x300, 0x20000), *range(0xE0000, 0xE1000))
        if (unicodedata.category(chr(cp))[0] == "M" or unicodedata.combining(chr(cp))) and not blank.match(chr(cp))
    ]


@lru_cache(maxsize=2)
def _marked_runs(astral: bool) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Runs of blanks, characters seen as nothing and combining marks, and the marks a run opens with; of the BMP
    alone unless ``astral`` (a class that holds astral ranges is tried range by range: ten times slower)."""
    marks = class_ranges([cp for cp in _marks() if astral or cp <= 0xFFFF])
    return re.compile(f"[\\s{_SEEN_AS_NOTHING}{marks}]{{{KEPT_BLANKS + 1},}}"), re.compile(f"[{marks}]*")


@lru_cache(maxsize=1)
def _astral_marks() -> frozenset[str]:
    return frozenset(chr(cp) for cp in _marks() if cp > 0xFFFF)


def _has_astral_mark(text: str) -> bool:
    # Emoji are astral too: text with them but no astral mark is scanned with the BMP's marks (seven times faster).
    return _ASTRAL.search(text) is not None and not _astral_marks().isdisjoint(_ASTRAL.findall(text))


def seen_as_nothing(char: str) -> bool:
    """Does a reader see ``char`` as nothing (a format character, a variation selector, a filler, a reserved
    default-ignorable code point)?"""
    return unicodedata.category(char) == "Cf" or _NOTHING.match(char) is not None


def _escaped_blanks() -> list[str]:
    """The four hex digits of every character of the BMP a run is made of (`_RUN`'s class: whitespace and what a
    reader sees as nothing; and combining marks: ``json.dumps`` writes a stack of 6,000 as 36,000 characters, rt63a
    F1), as ``\\uXXXX`` writes it: ``json.dumps`` writes U+001C-U+001F so (rt59d F1), and an app decodes any of them."""
    blank = re.compile(f"[\\s{_SEEN_AS_NOTHING}]")
    codes = [
        f"{c:04x}"
        for c in range(0x10000)
        if not 0xD800 <= c <= 0xDFFF
        and (blank.match(chr(c)) or unicodedata.category(chr(c))[0] == "M" or unicodedata.combining(chr(c)))
    ]
    # Grouped by their first three digits, the last as a class (a short alternation: tried at every backslash).
    groups: dict[str, str] = {}
    for code in codes:
        groups[code[:3]] = groups.get(code[:3], "") + code[3]
    return [f"{head}[{last}]" for head, last in groups.items()]


# The escapes a JSON (or YAML, Python, JavaScript) string decodes to blanks: "mix" + "\\n" * 3000 + "ammonium" in a JSON
# answer reaches the application as two words with line breaks between them, and a reading written back by
# ``json.dumps`` writes the escapes again (rt59a F3). A run of blanks that opens with such an escape is cut to its first
# `KEPT_BLANKS` elements (an escape is one; the blanks before it are a run of their own); escaped marks count as blanks
# ("\\u0300" * 6000 decodes to a stack of marks: rt63a F1). Opening with a literal backslash, the pattern is only tried
# where one stands (prose costs nothing); it is built on first use (its thousand code points, scanned and compiled,
# cost every import).
@lru_cache(maxsize=1)
def _escaped() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The escaped runs (`shorten_blank_runs`) and their elements, an escape or a character each."""
    escape = r"\\(?:[nrtfv]|(?i:u(?:" + "|".join(_escaped_blanks()) + ")))"
    run = re.compile(f"{escape}(?:[\\s{_SEEN_AS_NOTHING}]|{escape}){{{KEPT_BLANKS},}}")
    return run, re.compile(f"{escape}|.", re.DOTALL)


def shorten_blank_runs(text: str) -> str:
    """``text`` with each run of more than `KEPT_BLANKS` whitespace characters (and characters seen as nothing) cut to
    its first `KEPT_BLANKS` (the last of them its last blank, where they end inside marks or invisible characters);
    each run of combining marks to its first `MARK_RUN`, and a run of blanks with marks in it as a run of blanks after
    the marks it opens with (a letter's, up to `MARK_RUN`); and each run opening with an escape that decodes to a blank
    or a mark to its first `KEPT_BLANKS` elements. Idempotent; linear in ``text``; ``text`` itself when it has no such
    run.

    >>> shorten_blank_runs("mix" + " \\t" * 1000 + "ammonium") == "mix" + " \\t" * 8 + "ammonium"
    True
    >>> shorten_blank_runs("mix" + "\\\\n" * 1000 + "ammonium") == "mix" + "\\\\n" * 16 + "ammonium"
    True
    """
    runs = _RUN if text.isascii() else _marked_runs(_has_astral_mark(text))[0]
    if runs.search(text):
        text = runs.sub(_kept, text)
    if "\\" in text and _escaped()[0].search(text):
        text = _escaped()[0].sub(_kept_elements, text)
    return text


@lru_cache(maxsize=1)
def _punctuation() -> str:
    """The class body of `_rules`' characters (65,536 code points read once): punctuation and symbols of the BMP but
    those any reading reads as a letter or a digit, whose NFKC form holds one (circled "\u24dc", parenthesized
    "\u24a8", "\u2460", "\u2122": the as-seen reading reads them as Latin, rt72k F1). A cut never removes them."""
    kept_out = "_`\\"
    return class_ranges(
        [
            c
            for c in range(0x10000)
            if unicodedata.category(chr(c))[0] in "PS"
            and chr(c) not in kept_out
            and not any(k.isalnum() for k in unicodedata.normalize("NFKC", chr(c)))
        ]
    )


@lru_cache(maxsize=1)
def _rules() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """Stretches of punctuation and symbols of the BMP where a rule can be, and the rules in one: ASCII's, anyone's.

    The class is every punctuation and symbol character (Unicode categories P and S) but "_", "\\" and "`": a run
    of "_" (a word character to ``\\w``) is found on its own; how many backslashes or backticks stand in a row is what
    they mean (an escape's parity, a code span's fence), and a run of them is 2-4 bytes a token. Not marks nor format
    characters (`shorten_blank_runs` cuts their runs), nor emoji and the other astral symbols (4 bytes a token, as any
    text). Built on first use (65,536 code points read)."""
    punct = f"[{_punctuation()}]"

    def runs(one: int, two: int, three: int) -> re.Pattern[str]:
        # One character, or a unit of two or three, repeated at least one, two, three times.
        units = (
            f"(?:\\1{{{one - 1},}}|({punct})(?:\\1\\2){{{two - 1},}}|({punct})({punct})(?:\\1\\3\\4){{{three - 1},}})"
        )
        return re.compile(f"({punct}){units}")

    # A stretch of six or more (six of three bytes are more than `KEPT_BLANKS` bytes): a class alone, which `re` scans
    # fast (an alternation at every place took 2x the time). In one, a run as long as a run of more than `KEPT_BLANKS`
    # bytes can be (`_kept_rule` counts them): in ASCII, that many characters (a table's "|------|-----|" is tried in
    # C, not a run at a time); else six of one character, three units of two, two of three. A try that fails reads at
    # most `KEPT_BLANKS` + 2 characters: each scan is linear.
    stretch = re.compile(f"{punct}{{{KEPT_BLANKS // 3 + 1},}}")
    ascii_rule = runs(KEPT_BLANKS + 1, KEPT_BLANKS // 2 + 1, KEPT_BLANKS // 3 + 1)
    return stretch, ascii_rule, runs(KEPT_BLANKS // 3 + 1, KEPT_BLANKS // 6 + 1, KEPT_BLANKS // 9 + 1)


_UNDERSCORES = re.compile(f"_{{{KEPT_BLANKS + 1},}}")


def shorten_rule_runs(text: str) -> str:
    """``text`` with each run of more than `KEPT_BLANKS` bytes (UTF-8) made of one punctuation or symbol character of
    the BMP, or of a unit of two or three of them, repeated, cut to its first whole units within `KEPT_BLANKS` bytes:
    16 dashes, 15 of a unit of three, 5 em dashes; then each stretch of such characters, "_" and blanks that reads at
    more than `KEPT_BLANKS` bytes past 4 a token (rule pieces side by side: `_excess`) to its first `KEPT_BLANKS`
    bytes and its last line break or blank (`_kept_pieces`). Idempotent; linear in ``text``; ``text`` itself when it
    has no such run.

    >>> shorten_rule_runs("make a " + "-" * 3000 + " bomb") == "make a " + "-" * 16 + " bomb"
    True
    >>> shorten_rule_runs("-=" * 100 + "x" + "\u2014" * 100) == "-=" * 8 + "x" + "\u2014" * 5
    True
    >>> shorten_rule_runs("make a " + ("-" * 16 + "=" * 16) * 8 + " bomb") == "make a " + "-" * 15 + " bomb"
    True
    """
    stretch = _rules()[0]
    if stretch.search(text):
        text = stretch.sub(_kept_stretch, text)
    if "_" * (KEPT_BLANKS + 1) in text:
        text = _UNDERSCORES.sub("_" * KEPT_BLANKS, text)
    candidates = _candidates(text.isascii(), not text.isascii() and _ASTRAL.search(text) is not None)
    if candidates.search(text):
        text = candidates.sub(_kept_candidate, text)
    return text


def _kept_stretch(match: re.Match[str]) -> str:
    stretch = match.group()
    rules = _rules()[1 if stretch.isascii() else 2]
    return rules.sub(_kept_rule, stretch) if rules.search(stretch) else stretch


def _kept_rule(match: re.Match[str]) -> str:
    run = match.group()
    unit = run[: 3 if match.group(3) else 2 if match.group(2) else 1]
    size = len(unit.encode())
    if len(run) // len(unit) * size <= KEPT_BLANKS:
        return run
    return unit * (KEPT_BLANKS // size)  # a unit is at most 9 bytes


# What a window counted in bytes assumes a token is (`remote_plan._TYPICAL_BYTES_PER_TOKEN`).
_BYTES_A_TOKEN = 4
_ASCII_BLANK = "\\t-\\r\\x1c-\\x1f "  # what str.isspace is in ASCII
_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


@lru_cache(maxsize=4)
def _candidates(ascii_only: bool, astral: bool) -> re.Pattern[str]:
    """Where a stretch (`_pieced`) can be: `_pieced`'s characters and joiners as one class, which ``re`` scans fast (the
    joiners' lookbehind at every place took 6x the time on prose and code)."""
    least = KEPT_BLANKS + 1 if ascii_only else KEPT_BLANKS // 2 + 1
    past_bmp = "\U00010000-\U0010ffff" if astral else ""
    return re.compile(f"[{_punctuation()}_\\s{_SEEN_AS_NOTHING}\\\\`{_formats()}{past_bmp}]{{{least},}}")


def _kept_candidate(match: re.Match[str]) -> str:
    candidate = match.group()
    pieces = _pieced(candidate.isascii(), not candidate.isascii() and _ASTRAL.search(candidate) is not None)
    return pieces.sub(_kept_pieces, candidate) if pieces.search(candidate) else candidate


@lru_cache(maxsize=4)
def _pieced(ascii_only: bool, astral: bool) -> re.Pattern[str]:
    """Stretches of punctuation, symbols (of the BMP, and "_"), blanks and characters seen as nothing: where rule pieces
    can stand side by side. Between two of their characters, also up to four backslashes, backticks or format
    characters, and if ``astral`` one symbol or emoji past the BMP (a class with astral ranges is tried only there):
    "-" * 16 + "=" * 8 joined by any of them, again and again, reads as one rule (an invisible U+202C, rt72k F2), but
    a run of them alone is no rule (a backslash's parity, a code fence). At least `KEPT_BLANKS` + 1 characters in
    ASCII text, nine else: `_excess` counts at most one byte a character in ASCII (a lone blank), two else ("────" +
    "════"), so a shorter one is never cut."""
    least = KEPT_BLANKS + 1 if ascii_only else KEPT_BLANKS // 2 + 1
    one = f"[{_punctuation()}_\\s{_SEEN_AS_NOTHING}]"
    joiner = f"[\\\\`{_formats()}]{{1,4}}"
    if astral:
        joiner = f"(?:{joiner}|[\U00010000-\U0010ffff](?<=[{_astral_symbols()}]))"
    return re.compile(f"(?:{one}|(?<={one}){joiner}(?={one})){{{least},}}")


@lru_cache(maxsize=1)
def _astral_symbols() -> str:
    """Punctuation and symbols past the BMP (emoji among them) but those read as letters or digits (the enclosed
    alphanumerics of U+1F100-U+1F1FF: "\U0001f15c", the regional indicators), as a class body."""
    return class_ranges(
        [
            c
            for c in range(0x10000, 0x20000)
            if unicodedata.category(chr(c))[0] in "PS"
            and not 0x1F100 <= c <= 0x1F1FF
            and not any(k.isalnum() for k in unicodedata.normalize("NFKC", chr(c)))
        ]
    )


@lru_cache(maxsize=1)
def _formats() -> str:
    """Every format character (Cf) of the BMP, as a class body: an invisible bidi control (U+202C) between rule pieces
    joined them to a reader and broke the stretch (rt72k F2). A cut stretch keeps no bidi control (`_kept_pieces`),
    nor a backslash or backtick at its head's end (escaping the line break kept after it)."""
    return class_ranges([c for c in range(0x80, 0x10000) if unicodedata.category(chr(c)) == "Cf"])


@lru_cache(maxsize=1)
def _segments() -> re.Pattern[str]:
    """What a stretch's (`_pieced`) tokens are at most: a run of one character, else a unit of two or three that opens
    with two different ones, repeated. Of a stretch, what is not blank is punctuation: a small negated class does."""
    one = f"[^\\s{_SEEN_AS_NOTHING}]"
    return re.compile(f"({one})(?:\\1+|(?!\\1)({one})(?:\\1\\2)+|(?!\\1)({one})({one})(?:\\1\\3\\4)+|)")


def _excess(stretch: str) -> int:
    """The bytes of ``stretch`` past `_BYTES_A_TOKEN` a token, counting as one token each run of one ASCII character
    and each repeated unit (a Qwen3 token holds up to 64 of them), a run of another character as one per four ("─" *
    4 is one token of 12 bytes), and a run of two ASCII blanks or more as one per four (blanks are
    `shorten_blank_runs`' to cut, and deep indentation is not a rule); a lone ASCII blank as none (" ----", "----\\n":
    one token each). A token merged from several runs ("->") is counted as several: text at 4 bytes a token is not
    taken for more. Counted in the regex engine (`re.subn`), not run by run in Python."""
    tokens = _segments().subn("", stretch)[1] + _BLANKS.subn("", stretch)[1]
    if not stretch.isascii():
        tokens += sum((len(run.group()) - 1) // 4 for run in _LONG_RUN.finditer(stretch) if not run.group().isascii())
    return len(stretch.encode()) - _BYTES_A_TOKEN * tokens


# A run of two ASCII blanks or more, one token per four (in the regex engine: four at a time, each further one alone);
# any other blank (U+3000, a tag character: 3-4 bytes) one token each.
_BLANKS = re.compile(
    f"[{_ASCII_BLANK}]{{2,4}}|(?<=[{_ASCII_BLANK}])[{_ASCII_BLANK}]|(?![{_ASCII_BLANK}])[\\s{_SEEN_AS_NOTHING}]"
)
_LONG_RUN = re.compile("(.)\\1{4,}")
_FORMAT = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # the bidi controls: reorder what follows
_TRAILING_NOTHING = re.compile(f"[\\s{_SEEN_AS_NOTHING}]*\\Z")


def _kept_pieces(match: re.Match[str]) -> str:
    # A stretch past one rule's excess ("-" * 16 + "=" * 16, again and again) keeps its first `KEPT_BLANKS` bytes (to
    # their last visible character), then its last line break with the few characters after it (the next table row's
    # "| ", an indentation) or else its last blank: the word after it is not glued to the rule. Letters and digits end
    # a stretch, so a clause written between rule pieces is read whole. Idempotent: a kept stretch cut again keeps
    # the same head and the same line break or blank.
    stretch = match.group()
    if len(stretch.encode()) <= KEPT_BLANKS or _excess(stretch) <= KEPT_BLANKS:
        return stretch
    head = _FORMAT.sub("", stretch.encode()[:KEPT_BLANKS].decode(errors="ignore"))  # no opener without its closer
    head = head[: _TRAILING_NOTHING.search(head).start()].rstrip("\\`")  # type: ignore[union-attr]
    rest = stretch[len(head) :]
    breaks = list(_LINE_BREAK.finditer(rest))
    if breaks:
        after = rest[breaks[-1].end() :]
        return head + breaks[-1].group() + (after if len(after) <= 4 else _last_blank(after))
    return head + _last_blank(rest)


def _last_blank(text: str) -> str:
    """The last blank in ``text``'s trailing blanks and invisible characters, or nothing."""
    blanks = [c for c in _TRAILING_NOTHING.search(text).group() if c.isspace()]  # type: ignore[union-attr]
    return blanks[-1] if blanks else ""


def shorten_padding(text: str) -> str:
    """``text`` with its runs of blanks (`shorten_blank_runs`), then its rules (`shorten_rule_runs`), shortened: what a
    conversation is windowed from."""
    return shorten_rule_runs(shorten_blank_runs(text))


def has_escaped_blank_run(text: str) -> bool:
    """Does ``text`` hold a run of more than `KEPT_BLANKS` blanks opening with an escape that decodes to one?"""
    return "\\" in text and _escaped()[0].search(text) is not None


def _kept(match: re.Match[str]) -> str:
    run = match.group()
    if run.isascii():
        return run[:KEPT_BLANKS]
    # The marks a run opens with sit on the character before it (a letter's accents): kept, up to a stack's bound.
    lead = _marked_runs(True)[1].match(run).end()  # type: ignore[union-attr]
    if lead == len(run):
        return run[:MARK_RUN]
    body = run[lead:]
    kept = body[:KEPT_BLANKS]
    if len(body) > KEPT_BLANKS and body[-1].isspace() and not kept[-1].isspace():
        # A run cut inside marks or invisible characters (" " + marks, again and again) ends with its last blank, the
        # word break before the next word; else that word would be glued to the marks.
        kept = kept[:-1] + body[-1]
    return run[: min(lead, MARK_RUN)] + kept


def _kept_elements(match: re.Match[str]) -> str:
    # Whole elements only: an escape cut in two ("\\u00") would glue junk to the word after the run.
    return "".join(m.group() for _, m in zip(range(KEPT_BLANKS), _escaped()[1].finditer(match.group())))


@lru_cache(maxsize=2)
def _any_run(astral: bool) -> re.Pattern[str]:
    # Every format character (Unicode category Cf: bidi embeddings, isolates, tags...) beside the class above, as
    # ranges (one escape per code point made the scan eight times slower on non-ASCII text); and the combining marks
    # (of the BMP alone unless ``astral``): an isolate between stacks of marks on blanks (" \u2066" + marks, again and
    # again) broke every run of the other two into short ones (rt63a F1).
    formats = [cp for cp in (*range(0x80, 0x20000), *range(0xE0000, 0xE1000)) if unicodedata.category(chr(cp)) == "Cf"]
    marks = [cp for cp in _marks() if astral or cp <= 0xFFFF]
    return re.compile(f"[\\s{_SEEN_AS_NOTHING}{class_ranges(formats)}{class_ranges(marks)}]{{{KEPT_BLANKS + 1},}}")


def padding_read(text: str) -> str | None:
    """``text`` (its blank runs shortened already: `shorten_blank_runs`) with each run of more than `KEPT_BLANKS`
    blanks, format characters and combining marks left long (one that holds bidi embeddings or isolates, or tag
    characters: " \u2066\u2069" repeated) read as its blanks alone, cut to `KEPT_BLANKS`: judged beside the text, so that padding
    of any invisible characters keeps no word out of its neighbour's window (rt58f F1). A run with no blank in it is
    no padding (words spelled in tag characters: read by `content.as_seen_pieces`) and is kept. ``None`` when there
    is no such run (most text: one scan)."""
    if text.isascii():
        return None
    runs = _any_run(_has_astral_mark(text))
    if not runs.search(text):
        return None
    read = runs.sub(_blanks_of, text)
    return read if read != text else None


def _blanks_of(match: re.Match[str]) -> str:
    blanks = "".join(c for c in match.group() if c.isspace())
    return blanks[:KEPT_BLANKS] if blanks else match.group()
