"""Text as a Markdown renderer shows it: the reading a chat UI gives a model's answer (or a user's, a tool's, a
document's) that the text as written does not show a guard.

A CommonMark renderer decodes character references ("&#77;ix" shows "Mix", "&#x202E;" is a real override), drops
emphasis delimiters inside a word ("M**ix**"), shows a code span's or a link's text in place ("M`ix`", "[M](#)ix")
and, where the app lets raw HTML through, drops inline tags and comments ("M<b></b>ix", "M<!-- -->ix"). A guard
that reads the text as written reads none of those words (rt55a F1, F3). `read_as_rendered` is that reading;
`rendered_places` says where it differs from the text in a way a reader would not see (a reference anywhere;
markup glued inside a word), so that ordinary Markdown ("**Note:** ...") costs nothing extra.

Chosen where renderers differ: raw HTML is read as dropped (CommonMark's default passes it through, a sanitiser
drops it; an app that escapes it shows the tags, which the text as written already is); a tag that breaks a line
(``<br>``, ``<p>``, ``<div>``...) reads as a space. An image's alt text is read in place (shown when the image
does not load, and read out by screen readers). Every pattern is bounded, so the scan is linear in the text.
"""

from __future__ import annotations

import bisect
import html
import re

__all__ = ["CHAR_REFERENCE", "MARKUP", "read_as_rendered", "rendered_places", "may_render_differently"]

#: A character reference a CommonMark renderer decodes (the semicolon is required, unlike in HTML).
CHAR_REFERENCE = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")

_ESCAPE = r"\\[!-/:-@\[-`{-~]"
_SHORT_COMMENT = re.compile(r"<!---?>")  # "<!-->" and "<!--->" close at once (CommonMark 0.31)
_ATTRIBUTE = r"""\s+[A-Za-z_:][\w.:-]{0,63}(?:\s*=\s*(?:[^\s"'=<>`]{1,512}|'[^']{0,512}'|"[^"]{0,512}"))?"""
_TAG = rf"</?[A-Za-z][A-Za-z0-9-]{{0,31}}(?:{_ATTRIBUTE}){{0,32}}\s*/?>"
_LINK = r"""!?\[(?P<link_text>[^\[\]\n]{0,512})\]\([^()\s]{0,2048}(?:\s+(?:"[^"\n]{0,512}"|'[^'\n]{0,512}'))?\s*\)"""
_DELIMITER = r"\*{1,3}|~{1,2}|_{1,3}"
#: One inline construct a renderer shows otherwise than written, outside code spans.
MARKUP = re.compile(
    rf"(?P<escape>{_ESCAPE})|(?P<tag>{_TAG})|(?P<ref>{CHAR_REFERENCE.pattern})"
    rf"|(?P<link>{_LINK})|(?P<delimiter>{_DELIMITER})"
)
_BACKTICKS = re.compile(r"`+")
# Tags a renderer lays out as a break between words.
_BREAKS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6 header hr li main "
    "nav ol p pre section table tbody td tfoot th thead tr ul".split()
)
_TAG_NAME = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)")
_HINTS = frozenset("&<*~_`[\\")


def may_render_differently(text: str) -> bool:
    """A cheap first test: ``text`` holds a character a construct needs (most text holds none)."""
    return not _HINTS.isdisjoint(text)


def _code_spans(text: str) -> list[tuple[int, int, int]]:
    """CommonMark code spans as (start, end, backtick run length): a run of backticks closes at the next run of
    the same length. Linear: each length's runs are listed once and consumed in order."""
    runs = [(m.start(), m.end() - m.start()) for m in _BACKTICKS.finditer(text)]
    if len(runs) < 2:
        return []
    by_length: dict[int, list[int]] = {}
    for i, (_, n) in enumerate(runs):
        by_length.setdefault(n, []).append(i)
    spans: list[tuple[int, int, int]] = []
    i = 0
    while i < len(runs):
        start, n = runs[i]
        same = by_length[n]
        k = bisect.bisect_right(same, i)
        if k == len(same):
            i += 1
            continue
        j = same[k]
        spans.append((start, runs[j][0] + n, n))
        i = j + 1
    return spans


def _edits(text: str) -> list[tuple[int, int, str, str]]:
    """What a renderer changes: (start, end, shown text, kind), in order and not overlapping."""
    edits: list[tuple[int, int, str, str]] = []
    at = 0
    for start, end, n in [*_code_spans(text), (len(text), len(text), 0)]:
        for a, b in [*_comments(text, at, start), (start, start)]:
            edits += [(m.start(), m.end(), _shown(m), m.lastgroup or "") for m in MARKUP.finditer(text, at, a)]
            if b > a:
                edits.append((a, b, "", "comment"))
            at = b
        if n:
            inner = text[start + n : end - n].replace("\n", " ")
            if inner.startswith(" ") and inner.endswith(" ") and inner.strip():
                inner = inner[1:-1]
            edits.append((start, end, inner, "code"))
        at = end
    return edits


def _comments(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """HTML comments in ``text[start:end]``. Found with `str.find`, each search starting past the last, so a
    thousand unclosed "<!--" cost one scan, not one each (a lazy pattern would rescan the rest of the text)."""
    found: list[tuple[int, int]] = []
    at = text.find("<!--", start, end)
    while at >= 0:
        short = _SHORT_COMMENT.match(text, at, end)
        close = short.end() if short else text.find("-->", at + 4, end) + 3
        if close < 3:
            break
        found.append((at, close))
        at = text.find("<!--", close, end)
    return found


def _shown(m: re.Match[str]) -> str:
    kind, written = m.lastgroup, m.group()
    if kind == "escape":
        return written[1]
    if kind == "ref":
        return html.unescape(written)
    if kind == "tag":
        name = _TAG_NAME.match(written)
        return " " if name and name.group(1).lower() in _BREAKS else ""
    if kind == "link":
        return read_as_rendered(m.group("link_text"))
    if kind == "delimiter":
        return _delimiter_shown(m)
    return ""


def _delimiter_shown(m: re.Match[str]) -> str:
    """Emphasis and strikethrough delimiters read as nothing where they can open or close a span (a non-space on
    one side); "_" only at a word's edge (inside a word, "snake_case", it is a letter of it)."""
    text, a, b = m.string, m.start(), m.end()
    before = text[a - 1] if a else " "
    after = text[b] if b < len(text) else " "
    if before.isspace() and after.isspace():
        return m.group()  # "2 * 3": not a delimiter
    if m.group()[0] == "_" and before.isalnum() and after.isalnum():
        return m.group()
    return ""


def read_as_rendered(text: str) -> str:
    """``text`` as a CommonMark renderer shows it (inline constructs only; raw HTML dropped).

    >>> read_as_rendered("M**ix** &#97;mmonium <b></b>nitr<!-- x -->ate, [pack](#) `it`")
    'Mix ammonium nitrate, pack it'
    """
    if not may_render_differently(text):
        return text
    parts: list[str] = []
    at = 0
    for a, b, shown, _ in _edits(text):
        parts += [text[at:a], shown]
        at = b
    return "".join(parts) + text[at:]


def rendered_places(text: str) -> list[tuple[int, int]]:
    """Where the rendered reading differs unseen: every character reference but an escaped ASCII sign ("&lt;"),
    and each run of markup with a letter right before and after it (a tag, comment or delimiter inside a word), or a link or code span glued
    to a word. Ordinary Markdown around whole words ("**Note:**", "`x`", "[docs](url)") is no place."""
    if not may_render_differently(text):
        return []
    places: list[tuple[int, int]] = []
    run: list[int] = []  # [start, end] of consecutive markup with nothing between
    glued = False

    def close() -> None:
        if not run:
            return
        a, b = run
        before = text[a - 1] if a else ""
        after = text[b] if b < len(text) else ""
        if (before.isalpha() and after.isalpha()) or (glued and (before.isalpha() or after.isalpha())):
            places.append((a, b))

    for a, b, shown, kind in _edits(text):
        if kind == "ref":
            # "&lt;" and "&amp;" (an escaped snippet) hide no letter; "&#77;", "&#32;" or "&#8203;" can.
            if not (shown.isascii() and len(shown) == 1 and not shown.isalnum() and not shown.isspace()):
                places.append((a, b))
            continue
        if shown == text[a:b] or kind == "escape" or (shown and shown.isspace()):
            close()
            run = []
            continue
        if run and run[1] == a:
            run[1] = b
            glued = glued or kind in ("link", "code")
        else:
            close()
            run, glued = [a, b], kind in ("link", "code")
    close()
    return sorted(places)
