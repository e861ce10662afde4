"""Text as a Markdown renderer shows it: the reading a chat UI gives a model's answer (or a user's, a tool's, a
document's) that the text as written does not show a guard.

A CommonMark renderer decodes character references ("&#77;ix" shows "Mix", "&#x202E;" is a real override), drops
emphasis delimiters inside a word ("M**ix**"), shows a code span's or a link's text in place ("M`ix`", "[M](#)ix")
and, where the app lets raw HTML through, drops inline tags and comments ("M<b></b>ix", "M<!-- -->ix"). A guard
that reads the text as written reads none of those words (rt55a F1, F3). `read_as_rendered` is that reading;
`rendered_places` says where it differs from the text in a way a reader would not see (a reference anywhere;
markup glued inside a word), so that ordinary Markdown ("**Note:** ...") costs nothing extra.

Chosen where renderers differ: raw HTML is read as dropped (CommonMark's default passes it through, a sanitiser
drops it; an app that escapes it shows the tags, which the text as written already is); ``<br>`` and ``<hr>`` read
as a space, every other tag as nothing (inside a paragraph an HTML parser may ignore a block tag). An image's alt
text is read in place (shown when the image does not load, and read out by screen readers). The scan is linear in
the text: no pattern backtracks past its next delimiter, and closers are found once (`_Closers`).

A browser shows no body of an element it never renders ("<style>", "<script>", "<template>", "<title>",
"<noscript>", "<iframe>", a media element's fallback, one with a ``hidden`` attribute or a ``display:none`` or
``visibility:hidden`` declaration in its ``style`` value; an inline display other than none shows a hidden one
again): such an element, opener to matching closer, reads as a comment does, nothing (rt68e F1, rt68k F2: only an
attribute's name or the style's declarations count, never another attribute's value). "<bdo dir=rtl>" reads as the
isolated override a browser gives it, U+2067 U+202E ... U+202C U+2069, and a CSS bidi override as U+202E ... U+202C
(direction from CSS or ``dir``), for the display-order reading (F3, rt68k F5). A chat UI that renders TeX math
(KaTeX, MathJax) shows a math span's letters: "$\\!$", "${}$", "$\\kern0pt$", "$\\relax$" as nothing,
"$\\text{M}$" as "M" (`_math_reading`, F2, rt68k F1); prices ("$5 and $10") are no span.

Raw HTML a renderer passes through (an HTML block, "<div>&#77ix ...</div>"; inline tags, for an app that hands the
answer to the browser as HTML) reaches the browser's HTML5 parser, which decodes references without their semicolon
too ("&#77ix", "&#x4Dix", "&notit"), where CommonMark requires it (rt58g F6). A paragraph that holds raw HTML (or a
<pre> or <textarea> body, across blank lines) and such a reference is read both ways: as rendered, then as the HTML
parser reads it (`html.unescape` between the raw HTML constructs; `_html_readings`). Paragraphs without one, and all
ordinary Markdown, get no second reading."""

from __future__ import annotations

import bisect
import html
import re

__all__ = [
    "CHAR_REFERENCE",
    "decode_reference",
    "html_only_reference",
    "has_raw_html",
    "read_as_html",
    "edited_span",
    "MARKUP",
    "Rendered",
    "read_as_rendered",
    "rendered_places",
    "may_render_differently",
]

#: A character reference a CommonMark renderer decodes (the semicolon is required, unlike in HTML); a numeric one
#: padded with any number of leading zeros too, as an HTML5 browser and an XML parser decode it (rt58e F1:
#: "&#00000077;ix" reads "Mix" to both, while CommonMark's 7 digits left it read as written).
CHAR_REFERENCE = re.compile(r"&(?:#0*[0-9]{1,7}|#[xX]0*[0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_NUMERIC = re.compile(r"&#([xX]?)0*([0-9a-fA-F]*);")
#: A reference as an HTML5 parser finds it in text (`html.unescape`'s pattern): the semicolon optional (rt58g F6).
_HTML5_REFERENCE = re.compile(r"&(?:#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t]*\n)+")
#: Raw HTML elements whose text is shown across blank lines (CommonMark's HTML block type 1 ends at their closer).
_SHOWN_BODY = re.compile(r"<(pre|textarea)[\s>]", re.IGNORECASE)
_RAW_KINDS = frozenset({"tag", "comment", "pi", "cdata", "declaration"})

_ESCAPE = r"\\[!-/:-@\[-`{-~]"
_SHORT_COMMENT = re.compile(r"<!---?>")  # "<!-->" and "<!--->" close at once (CommonMark 0.31)
_LINK = (
    r"""!?\[(?P<link_text>(?:[^\[\]\n]|\[[^\[\]\n]*\])*)\]\((?:\s*<[^<>\n]*>|\s*(?:[^()\s]|\([^()\s]*\))*)"""
    r"""(?:\s+(?:"[^"]*"|'[^']*'|\([^()]*\)))?\s*\)"""
)
_DELIMITER = r"\*{1,3}|~{1,2}|_{1,3}"
# TeX math a chat UI renders with KaTeX or MathJax (rt68e F2): "$$...$$", "\\[...\\]", "\\(...\\)", and "$...$" as
# Pandoc reads it (no space after the opener or before the closer, no digit after the closer: "$5 and $10" is no
# span), and "$ ... $" between two letters as remark-math pairs it, spaces inside (rt68k F1: "a$ \\! $mmonium").
# Each body stops at the next sign that could open one ("$" or "\\(": linear, nothing backtracks past it).
_MATH = (
    r"\$\$[^$]*\$\$|\\\[(?:[^\\]|\\(?!\[))*?\\\]|\\\((?:[^\\]|\\(?!\())*?\\\)"
    r"|\$(?=[^\s$])[^$\n]*(?<=[^\s\\])\$(?![0-9])|(?<=[^\W\d_])\$(?=\s)[^$\n]*\$(?=[^\W\d_])"
)
#: One inline construct a renderer shows otherwise than written, outside code spans.
MARKUP = re.compile(
    rf"(?P<math>{_MATH})|(?P<escape>{_ESCAPE})|(?P<ref>{CHAR_REFERENCE.pattern})|(?P<link>{_LINK})"
    rf"|(?P<delimiter>{_DELIMITER})"
)
# A math span's tokens (`_math_reading`): a command, an escaped sign, a brace, a run of whitespace, one character.
_MATH_TOKEN = re.compile(r"\\[A-Za-z]+\*?|\\.|[{}]|\s+|.", re.DOTALL)
#: Commands whose argument is shown as text (its spaces shown), and fonts whose argument is shown as math.
_MATH_TEXT = frozenset(
    ("text textrm textbf textit textsf texttt textnormal textup textsl textmd emph mbox hbox fbox boxed").split()
)
_MATH_FONT = frozenset(
    (
        "mathrm mathbf mathit mathsf mathtt mathnormal mathbb mathcal mathfrak mathscr boldsymbol bm pmb "
        "operatorname operatorname* mathord mathop mathbin mathrel"
    ).split()
)
#: Commands that show nothing: negative or empty spacing, grouping and style switches (rt68k F1: "a$\\kern0pt$mmonium"
#: shows "ammonium").
_MATH_NOTHING = frozenset(
    (
        "! / negthinspace negmedspace negthickspace relax empty nobreak allowbreak strut mathstrut "
        "ignorespaces displaystyle textstyle scriptstyle scriptscriptstyle left right"
    ).split()
)
#: Commands that show a space.
_MATH_SPACE = frozenset({",", ":", ";", ">", " ", "\\"}) | frozenset(
    "quad qquad thinspace medspace thickspace enspace enskip space nobreakspace hfill hfil newline".split()
)
#: Spacing commands with a length ("\\kern0pt", "\\hspace{0pt}", "\\hskip 0pt plus 1fil"), and commands whose one
#: argument shows nothing ("\\color{red}", "\\vphantom{x}").
_MATH_LENGTHY = frozenset({"kern", "mkern", "hskip", "mskip", "hspace", "hspace*", "mspace"})
_MATH_UNSHOWN_ARGUMENT = frozenset({"color", "vphantom", "label", "textcolor", "colorbox"})
_MATH_BLANK_ARGUMENT = frozenset({"phantom", "hphantom"})
_UNIT = r"(?:pt|mu|em|ex|px|bp|mm|cm|in|pc|dd|cc|sp)"
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
# No two runs of whitespace side by side (a long one is not tried split between them: linear).
_MATH_LENGTH = re.compile(
    rf"\s*(?:(\{{)\s*)?(?:([-+])\s*)?({_NUMBER})\s*({_UNIT})"
    rf"(?:\s*(?:plus|minus)\s*(?:[-+]\s*)?(?:{_NUMBER}\s*)?(?:fil{{1,3}}|{_UNIT}))*(?(1)\s*\}})"
)
_ARGUMENT = re.compile(r"\s*\{[^{}]*\}")
#: A length's unit in ems, and the length from which it shows as a space (a thin space is 3mu, 1/6 em).
_EMS = {
    "pt": 0.1,
    "mu": 1 / 18,
    "em": 1.0,
    "ex": 0.43,
    "px": 0.075,
    "bp": 0.1,
    "mm": 0.285,
    "cm": 2.85,
    "in": 7.23,
    "pc": 1.2,
    "dd": 0.107,
    "cc": 1.28,
    "sp": 0.0,
}
_SPACE_EMS = 0.15
#: Letters a math span shows from text commands, past which (with more than one word) it may be a clause.
_MATH_TEXT_LETTERS = 3
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
# A tag's attributes, one piece at a time (`_tag_at`; the stream windows read a tag still arriving with them too).
ATTRIBUTE_NAME = re.compile(r"\s+[A-Za-z_:][\w.:-]*")
EQUALS = re.compile(r"\s*=\s*")
UNQUOTED = re.compile(r"[^\s\"'=<>`]+")
_TAG_END = re.compile(r"\s*/?>")
_BACKTICKS = re.compile(r"`+")
# Raw HTML elements and what a browser shows of them (`_elements`); each tag's attributes are read once.
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
#: Elements whose body a browser never shows, whatever their style: a template's content, a noscript's where scripts
#: run (a chat UI), an iframe's or a media element's fallback.
_NEVER_SHOWN = frozenset({"template", "noscript", "iframe", "video", "audio", "canvas"})
#: Elements whose body a browser never shows inside an open "<svg>" (its descriptions); elsewhere in HTML they are
#: unknown elements, shown inline (rt68n F3: "M<desc>ix</desc>" shows "Mix").
_SVG_UNSHOWN = frozenset({"desc", "metadata"})
#: Display values that give an element its default display back (the browser's own style sheet: hidden for a
#: `hidden` attribute or an `_UNSHOWN` element), or its parent's: read as the default, which hides (rt68n F2).
_DEFAULT_DISPLAY = frozenset({"revert", "revert-layer", "inherit"})
#: Elements a browser's own style sheet hides ("display: none"), which an inline display shows again.
_UNSHOWN = frozenset({"style", "script", "title", "noembed", "noframes", "datalist", "rp"})
#: Elements whose body is text up to their first closer (no tags in it).
_RAW_TEXT = frozenset({"style", "script", "title", "noscript", "textarea", "xmp", "iframe", "noembed", "noframes"})
_CSS_COMMENT = re.compile(r"/\*(?:[^*]|\*(?!/))*(?:\*/|$)")
_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\n\f]?|(.))", re.DOTALL)
_IMPORTANT = re.compile(r"\s*!\s*important$")
_LRO, _RLO, _PDF = "\u202d", "\u202e", "\u202c"
_LRI, _RLI, _PDI = "\u2066", "\u2067", "\u2069"
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_HINTS = frozenset("&<*~_`[\\$")
#: What an escaped snippet's references show ("&lt;b&gt;", "AT&amp;T"): no letter hides behind one.
_ESCAPED_SIGNS = frozenset("<>&\"'")
#: A construct that leaves more written characters than this unshown hides text, wherever it sits.
_HIDDEN_CHARS = 24
#: The same for a link, whose address is not shown either: past the length of an ordinary one.
_HIDDEN_LINK_CHARS = 256
#: Characters of constructs that show nothing, in all, past which the whole text is read as rendered (padding); and
#: characters constructs close together hide beyond twice what is shown among them (link addresses between the
#: words of a clause, each under `_HIDDEN_LINK_CHARS`: rt63a F2).
_HIDDEN_PADDING_CHARS = 256


def decode_reference(written: str) -> str:
    """A character reference (with its semicolon) as an HTML5 parser decodes it: numeric ones of any length (leading
    zeros dropped: `int` refuses over 4,300 digits), invalid values as HTML5 replaces them (U+FFFD past U+10FFFF or
    for a surrogate); an unknown name as written."""
    m = _NUMERIC.fullmatch(written)
    if m is None:
        return html.unescape(written)
    digits = m.group(2) or "0"
    if len(digits) > 8:  # past U+10FFFF in either base
        return "\ufffd"
    return html.unescape(f"&#{m.group(1)}{digits};")


def may_render_differently(text: str) -> bool:
    """A cheap first test: ``text`` holds a character a construct needs (most text holds none)."""
    if len(text) < 256:
        return not _HINTS.isdisjoint(text)
    # A long text is searched once a hint, in C: the set test makes a string of each character (30 ns each, 1.5-8 ms
    # for 50,000 on the event loop, where `Guard.acheck` sizes a prompt's prefill: rt70h F1).
    return any(hint in text for hint in _HINTS)


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
        for a, b, shown, kind in [*_raw_html(text, at, start), (start, start, "", "")]:
            edits += [(m.start(), m.end(), _shown(m), m.lastgroup or "") for m in MARKUP.finditer(text, at, a)]
            if b > a:
                edits.append((a, b, shown, kind))
            at = b
        if n:
            inner = text[start + n : end - n].replace("\n", " ")
            if inner.startswith(" ") and inner.endswith(" ") and inner.strip():
                inner = inner[1:-1]
            edits.append((start, end, inner, "code"))
        at = end
    return edits


class _Closers:
    """Where the next closer of each kind starts, found with `str.find` and kept: every opener before a closer
    shares one search, so a thousand openers that never close cost one scan, not one each (linear)."""

    def __init__(self, text: str, end: int) -> None:
        self.text, self.end = text, end
        self._at: dict[str, int] = {}

    def after(self, closer: str, start: int) -> int:
        """The start of the first ``closer`` at or after ``start``, or -1."""
        found = self._at.get(closer, -2)
        if found == -1 or (found >= start):
            return found
        found = self.text.find(closer, start, self.end)
        self._at[closer] = found
        return found


def _raw_html(text: str, start: int, end: int) -> list[tuple[int, int, str, str]]:
    """CommonMark's raw HTML in ``text[start:end]``, in order: comments, processing instructions, declarations,
    CDATA sections and open or closing tags of any length (rt55d F1, F3), each as (start, end, shown, kind). A
    browser shows none of it: read as nothing, but "<br>" and "<hr>" as a space (a block tag inside a paragraph may
    be ignored by the HTML parser, so it breaks nothing: rt55d F8). Linear: closers are found once (`_Closers`),
    and a quoted attribute value ends at the next quote, found by bisection."""
    found: list[tuple[int, int, str, str]] = []
    closers = _Closers(text, end)
    quotes = {q: [m.start() for m in re.finditer(q, text[start:end])] for q in "\"'"}
    at = text.find("<", start, end)
    while at >= 0:
        # "[M](<a b>)": a link destination in pointy brackets, not a tag.
        pointy = text[max(start, at - 2) : at] == "]("
        construct = None if pointy else _construct_at(text, at, end, closers, quotes, start)
        if construct is None:
            at = text.find("<", at + 1, end)
            continue
        found.append(construct)
        at = text.find("<", construct[1], end)
    return _elements(text, found) if found else found


def _elements(text: str, found: list[tuple[int, int, str, str]]) -> list[tuple[int, int, str, str]]:
    """``found`` (`_raw_html`'s constructs) with what the elements they open show: an element whose body a browser
    never shows (`_unshown`) from its opener to its matching closer as one construct
    that shows nothing, kind "comment" as hidden text is (rt68e F1: "Mix <style>benign prose</style>ammonium"); a
    void one such as "<br hidden>" as nothing; an element that overrides the direction ("<bdo dir=rtl>", CSS
    ``unicode-bidi: bidi-override``) as the override it is (`_override`), so that the display-order reading lays it
    out (rt68e F3). Linear: each tag is matched once, with a stack of open elements per name; the
    tags inside a raw-text body (`_RAW_TEXT`: "<style>", "<script>") are its text, not tags."""
    open_by_name: dict[str, list[int]] = {}
    closer_of: dict[int, int] = {}
    opener_shown: dict[int, str] = {}
    closer_shown: dict[int, str] = {}  # an override's closer, by its opener
    raw: tuple[str, int] | None = None  # the raw-text element open: its name and opener
    for i, (a, b, _, kind) in enumerate(found):
        if kind != "tag":
            continue
        closing = text.startswith("</", a)
        named = _NAME.match(text, a + 1 + closing)
        if named is None:
            continue
        name = named.group().lower()
        if raw is not None:
            if closing and name == raw[0]:
                closer_of[raw[1]], raw = i, None
            continue
        if closing:
            stack = open_by_name.get(name)
            if stack:
                closer_of[stack.pop()] = i
            continue
        attributes = _attributes(text, named.end(), b)
        style = _declarations(attributes.get("style", ""))
        if _unshown(name, attributes, style) or (name in _SVG_UNSHOWN and open_by_name.get("svg")):
            opener_shown[i] = ""
        elif (override := _override(name, attributes, style)) is not None:
            opener_shown[i], closer_shown[i] = override
        if name in _VOID:
            continue
        if name in _RAW_TEXT:
            raw = (name, i)
        else:
            open_by_name.setdefault(name, []).append(i)
    if not opener_shown:
        return found
    out: list[tuple[int, int, str, str]] = []
    closes: dict[int, str] = {}
    i = 0
    while i < len(found):
        a, b, shown, kind = found[i]
        if i in opener_shown:
            k = closer_of.get(i)
            if opener_shown[i] == "" and k is not None:
                out.append((a, found[k][1], "", "comment"))
                i = k + 1
                continue
            shown = opener_shown[i]
            if k is not None:
                closes[k] = closer_shown[i]
        elif i in closes:
            shown = closes[i]
        out.append((a, b, shown, kind))
        i += 1
    return out


def _attributes(text: str, at: int, end: int) -> dict[str, str]:
    """The attributes of the tag whose name ends at ``at`` (a tag `_tag_at` found, ending at ``end``), by lowercase
    name, with their values as the HTML parser reads them (references decoded); the first of a name counts, as there.
    Only a value is searched for what it means: "<b title='not hidden'>" is no ``hidden`` element (rt68k F2)."""
    attributes: dict[str, str] = {}
    pos = at
    while (attribute := ATTRIBUTE_NAME.match(text, pos, end)) is not None:
        pos = attribute.end()
        value = ""
        if (equals := EQUALS.match(text, pos, end)) is not None:
            pos = equals.end()
            if text[pos] in "\"'":
                close = text.find(text[pos], pos + 1, end)
                value, pos = text[pos + 1 : close], close + 1
            elif (unquoted := UNQUOTED.match(text, pos, end)) is not None:
                value, pos = unquoted.group(), unquoted.end()
        attributes.setdefault(attribute.group().strip().lower(), html.unescape(value))
    return attributes


def _declarations(style: str) -> dict[str, str]:
    """A ``style`` attribute's declarations as CSS reads them: comments dropped, escapes decoded ("displ\\61y"),
    names and values in lowercase; the last of a name counts, but for an earlier "!important"."""
    style = _CSS_ESCAPE.sub(
        lambda m: chr(min(int(m.group(1), 16), 0x10FFFF)) if m.group(1) else m.group(2), _CSS_COMMENT.sub(" ", style)
    )
    declarations: dict[str, str] = {}
    important: set[str] = set()
    for declaration in _split_declarations(style):
        name, colon, value = declaration.partition(":")
        name, value = name.strip().lower(), " ".join(value.lower().split())
        flagged = _IMPORTANT.search(value)
        if not colon or not name or (name in important and flagged is None):
            continue
        if flagged is not None:
            important.add(name)
            value = value[: flagged.start()]
        declarations[name] = value
    return declarations


def _split_declarations(style: str) -> list[str]:
    """``style`` cut at the semicolons CSS ends a declaration with: not those inside a string or parentheses
    (``font-family: 'x;display:inline'`` sets no display: rt68n F2). Linear."""
    parts: list[str] = []
    start, depth, quote = 0, 0, ""
    for i, ch in enumerate(style):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]" and depth:
            depth -= 1
        elif ch == ";" and not depth:
            parts.append(style[start:i])
            start = i + 1
    parts.append(style[start:])
    return parts


def _unshown(name: str, attributes: dict[str, str], style: dict[str, str]) -> bool:
    """Whether a browser shows nothing of an element's body: never for `_NEVER_SHOWN`; hidden by its style
    (``display: none``, ``visibility: hidden``, ``content-visibility: hidden``), or by default (`_UNSHOWN`, a
    ``hidden`` attribute) unless its style sets another display ("<span hidden style='display:inline'>" shows its
    body; ``revert`` and ``inherit`` give the default back). ``hidden="until-found"`` hides by content-visibility,
    which no display shows (rt68n F1)."""
    if name in _NEVER_SHOWN or style.get("visibility") in ("hidden", "collapse"):
        return True
    if style.get("content-visibility") == "hidden" or attributes.get("hidden", "").strip().lower() == "until-found":
        return True
    if "display" in style and style["display"] not in _DEFAULT_DISPLAY:
        return style["display"] == "none"
    return name in _UNSHOWN or "hidden" in attributes


def _override(name: str, attributes: dict[str, str], style: dict[str, str]) -> tuple[str, str] | None:
    """The controls an element that overrides the direction lays its body out with (opener, closer), or None:
    "<bdo>" is an isolated override (a browser's style sheet: ``unicode-bidi: isolate-override``), U+2067 U+202E ...
    U+202C U+2069, so that words of separate "<bdo>" elements keep their order (rt68k F5); CSS
    ``bidi-override`` is a bare one, U+202E ... U+202C. The direction is CSS ``direction``, else the ``dir``
    attribute."""
    bidi = style.get("unicode-bidi", "isolate-override" if name == "bdo" else "")
    if bidi not in ("bidi-override", "isolate-override"):
        return None
    direction = style.get("direction", attributes.get("dir", "").strip().lower())
    if direction not in ("rtl", "ltr"):
        return None
    override = _RLO if direction == "rtl" else _LRO
    if bidi == "bidi-override":
        return override, _PDF
    return (_RLI if direction == "rtl" else _LRI) + override, _PDF + _PDI


def _construct_at(
    text: str, at: int, end: int, closers: _Closers, quotes: dict[str, list[int]], base: int
) -> tuple[int, int, str, str] | None:
    if text.startswith("<!--", at):
        short = _SHORT_COMMENT.match(text, at, end)
        close = short.end() if short else closers.after("-->", at + 4) + 3
        return (at, close, "", "comment") if close >= 3 else None
    for opener, closer, kind in (("<?", "?>", "pi"), ("<![CDATA[", "]]>", "cdata")):
        if text.startswith(opener, at):
            close = closers.after(closer, at + len(opener))
            return (at, close + len(closer), "", kind) if close >= 0 else None
    if text.startswith("<!", at):
        if at + 2 < end and text[at + 2].isascii() and text[at + 2].isalpha():
            close = closers.after(">", at + 2)
            return (at, close + 1, "", "declaration") if close >= 0 else None
        return None
    return _tag_at(text, at, end, quotes, base)


def _tag_at(text: str, at: int, end: int, quotes: dict[str, list[int]], base: int) -> tuple[int, int, str, str] | None:
    """An open or closing tag at ``at`` (CommonMark's grammar, no length limit), or None."""
    closing = text.startswith("</", at)
    name = _NAME.match(text, at + 1 + closing, end)
    if name is None:
        return None
    pos = name.end()
    while not closing:
        attribute = ATTRIBUTE_NAME.match(text, pos, end)
        if attribute is None:
            break
        pos = attribute.end()
        equals = EQUALS.match(text, pos, end)
        if equals is None:
            continue
        pos = equals.end()
        if pos < end and text[pos] in "\"'":
            positions = quotes[text[pos]]
            k = bisect.bisect_right(positions, pos - base)
            if k == len(positions):
                return None
            pos = base + positions[k] + 1
            continue
        value = UNQUOTED.match(text, pos, end)
        if value is None:
            return None
        pos = value.end()
    tail = _TAG_END.match(text, pos, end)
    if tail is None:
        return None
    shown = " " if name.group().lower() in ("br", "hr") else ""
    return at, tail.end(), shown, "tag"


def _shown(m: re.Match[str]) -> str:
    kind, written = m.lastgroup, m.group()
    if kind == "escape":
        return written[1]
    if kind == "ref":
        return decode_reference(written)
    if kind == "link":
        return read_as_rendered(m.group("link_text"))
    if kind == "delimiter":
        return _delimiter_shown(m)
    if kind == "math":
        return _math_shown(written)
    return ""


def _math_shown(written: str) -> str:
    """A math span as KaTeX or MathJax shows it, for a guard (`_math_reading`)."""
    return _math_reading(written)[0]


def _math_reading(written: str) -> tuple[str, int, bool]:
    """A math span as KaTeX or MathJax shows it: its delimiters dropped, the arguments of text commands and fonts
    ("\\text{M}", "\\mathrm{M\\!ix}") as their letters, spacing as it shows (nothing for "\\!", "{}", "\\relax",
    "\\kern0pt" or another length under a thin space; a space for "\\,", "\\quad", "~", "\\enspace"), whitespace as
    nothing in math and a space in text, braces dropped; every other command as written. With the letters it shows
    from text commands and fonts, and whether it joins two letters across something that shows nothing (a spacing
    command, a text command's edge or group): what may complete a clause as shown. Linear:
    one pass over its tokens, each length read once."""
    n = 2 if written[:2] in ("$$", "\\[", "\\(") else 1
    body = written[n:-n]
    parts: list[str] = []
    modes = ["math"]  # per open group: "math", "font" (a font's argument) or "text" (spaces shown)
    opens = ""  # the mode the next group opens, after a text command or font
    text_letters = 0
    joined = False
    last_letter = ""  # the mode of the letter shown last, or "" after anything else shown
    removed = 0  # since it: 1 a brace or a space in math, 2 a command that shows nothing
    pos = 0
    while (token := _MATH_TOKEN.match(body, pos)) is not None:
        pos, written_token = token.end(), token.group()
        mode = modes[-1]
        shown: str | None = None  # None: shows nothing
        if written_token[0] == "\\" and len(written_token) > 1:
            name = written_token[1:]
            if name in _MATH_TEXT or name in _MATH_FONT:
                opens = "text" if name in _MATH_TEXT else "font"
                removed = 2
                continue
            if name in _MATH_UNSHOWN_ARGUMENT or name in _MATH_BLANK_ARGUMENT:
                argument = _ARGUMENT.match(body, pos)
                pos = argument.end() if argument else pos
                shown = " " if name in _MATH_BLANK_ARGUMENT else None
            elif name in _MATH_LENGTHY:
                length = _MATH_LENGTH.match(body, pos)
                if length is not None:
                    pos = length.end()
                    ems = float(length.group(3)) * _EMS[length.group(4)]
                    shown = " " if length.group(2) != "-" and ems >= _SPACE_EMS else None
                else:
                    shown = written_token
            elif name in _MATH_NOTHING:
                shown = None
            elif name in _MATH_SPACE:
                shown = " "
            elif not name[0].isalpha():
                shown = name  # an escaped sign: "\\{", "\\$"
            else:
                shown = written_token
        elif written_token == "{":
            modes.append(opens or ("text" if mode == "text" else mode))
            opens = ""
            removed = max(removed, 1)
            continue
        elif written_token == "}":
            if len(modes) > 1:
                modes.pop()
            removed = max(removed, 1)
            continue
        elif written_token == "~":
            shown = " "
        elif written_token.isspace() and mode != "text":
            # Math ignores it, but "$10 or AU$" (prices Pandoc pairs) is no word: it joins only text letters.
            removed = max(removed, 1)
            continue
        elif written_token.isspace():
            shown = " "
        else:
            shown = written_token
            if opens:  # "\\text M": a one-character argument
                mode, opens = opens, ""
        if shown is None:
            removed = 2
            continue
        if shown.isalpha():
            if last_letter and removed and (removed == 2 or "math" not in (last_letter, mode)):
                joined = True
            text_letters += mode != "math"
            last_letter = mode
        else:
            last_letter = ""
        removed = 0
        parts.append(shown)
    return "".join(parts), text_letters, joined


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


_SPACES = re.compile(r"[ \t]{2,}")
_ORDINAL = re.compile(r"(?:th|st|nd|rd)(?![^\W\d_])")
_LETTERS_OR_BLANK = re.compile(r"[^\W\d_]*(?:\s+[^\W\d_]*)*")


class Rendered:
    """A text's markup, read once (`_edits`): its `places`, whether one of them `hides` written text, and the
    rendered reading of any span of it (`span`), cut only between constructs of the whole text's reading: a stretch
    read on its own started inside a code span or a comment of the text and read the rest wrong (rt55d F9)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.edits = _html_readings(text, _edits(text)) if may_render_differently(text) else []
        self._starts = [e[0] for e in self.edits]
        self._ends = [e[1] for e in self.edits]
        self.places, self.hides = _places(text, self.edits)

    def span(self, a: int, b: int) -> str:
        """``text[a:b]`` as rendered, widened to the constructs it cuts; runs of spaces as one (a browser's)."""
        return edited_span(self.text, self.edits, self._starts, self._ends, a, b)


def edited_span(
    text: str, edits: list[tuple[int, int, str, str]], starts: list[int], ends: list[int], a: int, b: int
) -> str:
    """``text[a:b]`` with ``edits`` (start, end, shown, kind; in order, with their ``starts`` and ``ends``) shown in
    place, widened to the edits it cuts; runs of spaces as one where an edit was made."""
    i = bisect.bisect_right(ends, a)
    if i < len(edits) and edits[i][0] < a:
        a = edits[i][0]
    j = bisect.bisect_left(starts, b) - 1
    if j >= 0 and edits[j][1] > b:
        b = edits[j][1]
    parts: list[str] = []
    at = a
    for start, end, shown, _ in edits[i : j + 1]:
        parts += [text[at:start], shown]
        at = end
    parts.append(text[at:b])
    return _SPACES.sub(" ", "".join(parts)) if edits[i : j + 1] else text[a:b]


def _html_readings(text: str, edits: list[tuple[int, int, str, str]]) -> list[tuple[int, int, str, str]]:
    """``edits``, where a paragraph with raw HTML (or a <pre> or <textarea> body) holds a reference only an HTML5
    parser decodes (no semicolon, or in a code span or after a backslash, which raw HTML does not know), with that
    paragraph as one edit (kind "html") showing it as rendered and then as the HTML parser reads it. Linear: the
    paragraphs are found once, each read at most twice."""
    if "&" not in text or not any(e[3] in _RAW_KINDS for e in edits):
        return edits
    decoded = {(a, b) for a, b, _, kind in edits if kind == "ref"}
    refs = [m.start() for m in _HTML5_REFERENCE.finditer(text) if (m.start(), m.end()) not in decoded and _shows(m)]
    if not refs:
        return edits
    breaks = [0, *(m.end() for m in _PARAGRAPH_BREAK.finditer(text)), len(text)]
    raw = [a for a, _, _, kind in edits if kind in _RAW_KINDS]
    regions: list[list[int]] = []
    for ref in refs:
        k = bisect.bisect_right(breaks, ref) - 1
        start, end = breaks[k], breaks[min(k + 1, len(breaks) - 1)]
        i = bisect.bisect_left(raw, start)
        if i < len(raw) and raw[i] < end:
            regions.append([start, end])
    at = 0
    while (body := _SHOWN_BODY.search(text, at)) is not None:
        close = re.compile(f"</{body.group(1)}", re.IGNORECASE).search(text, body.end())
        end = len(text) if close is None else close.start()
        k = bisect.bisect_left(refs, body.end())
        if k < len(refs) and refs[k] < end:
            regions.append([breaks[bisect.bisect_right(breaks, body.start()) - 1], end])
        at = end + 1
    if not regions:
        return edits
    starts, ends = [e[0] for e in edits], [e[1] for e in edits]
    merged: list[list[int]] = []
    for a, b in sorted(regions):
        i = bisect.bisect_right(ends, a)  # widened to the edits it cuts (a code span across a blank line)
        a = min(a, edits[i][0]) if i < len(edits) else a
        j = bisect.bisect_left(starts, b) - 1
        b = max(b, edits[j][1]) if j >= 0 else b
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out: list[tuple[int, int, str, str]] = []
    k = 0
    for a, b in merged:
        while k < len(edits) and edits[k][0] < a:
            out.append(edits[k])
            k += 1
        while k < len(edits) and edits[k][0] < b:
            k += 1
        out.append((a, b, f"{edited_span(text, edits, starts, ends, a, b)} {_as_html(text, a, b)}", "html"))
    return out + edits[k:]


def _shows(m: re.Match[str]) -> bool:
    """A reference decodes to a character that is no escaped markup sign (the written characters it leaves out)."""
    written = m.group()
    shown = html.unescape(written)
    while shown and written and shown[-1] == written[-1]:  # "&notit": "¬" and "it" kept as written
        shown, written = shown[:-1], written[:-1]
    return bool(shown) and not set(shown) <= _ESCAPED_SIGNS


def _as_html(text: str, a: int, b: int) -> str:
    """``text[a:b]`` as a browser's HTML parser shows it: raw HTML constructs as nothing ("<br>" a space), references
    decoded with or without their semicolon (`html.unescape`), Markdown as written."""
    parts: list[str] = []
    at = a
    for start, end, shown, _ in _raw_html(text, a, b):
        parts += [html.unescape(text[at:start]), shown]
        at = end
    parts.append(html.unescape(text[at:b]))
    return _SPACES.sub(" ", "".join(parts))


def html_only_reference(text: str, at: int, end: int | None = None) -> bool:
    """Whether a reference starting at ``at`` ("&"; before ``end``) is one only an HTML5 parser decodes to a letter
    or other character that is no escaped markup sign ("&#77ix", "&notit"; not "&#77;", which CommonMark decodes
    too)."""
    end = len(text) if end is None else end
    m = _HTML5_REFERENCE.match(text, at, end)
    return m is not None and CHAR_REFERENCE.match(text, at, end) is None and _shows(m)


def has_raw_html(text: str) -> bool:
    """Whether ``text`` holds raw HTML (a tag, comment, processing instruction, declaration or CDATA section)."""
    return "<" in text and bool(_raw_html(text, 0, len(text)))


def read_as_html(text: str) -> str:
    """``text`` as a browser's HTML parser shows it (`_as_html`): raw HTML as nothing, references decoded with or
    without their semicolon.

    >>> read_as_html("<div>&#77ix ammonium</div>")
    'Mix ammonium'
    """
    return _as_html(text, 0, len(text))


def read_as_rendered(text: str) -> str:
    """``text`` as a CommonMark renderer shows it (inline constructs only; raw HTML dropped).

    >>> read_as_rendered("M**ix** &#97;mmonium <b></b>nitr<!-- x -->ate, [pack](#) `it`")
    'Mix ammonium nitrate, pack it'
    """
    if not may_render_differently(text):
        return text
    return Rendered(text).span(0, len(text))


def rendered_places(text: str) -> list[tuple[int, int]]:
    """Where the rendered reading differs unseen (`_places`)."""
    return Rendered(text).places


def _places(text: str, edits: list[tuple[int, int, str, str]]) -> tuple[list[tuple[int, int]], bool]:
    """Where the rendered reading differs unseen, and whether a place hides written text: every character reference
    but an escaped markup sign ("&lt;", "&amp;", "&quot;"); every construct that hides written text (a comment, a
    tag's attributes, a processing instruction, a link's long address: more than `_HIDDEN_CHARS` characters not
    shown, wherever it sits: benign prose inside comments between the clause's words, rt55d F4; constructs close
    together that hide more than `_HIDDEN_PADDING_CHARS` characters beyond twice what they and the text between them
    show, rt63a F2); and each run of markup with a letter right before and after it (a tag, comment or delimiter
    inside a word), or a link or code span glued to a word; a math span glued to a letter (but an ordinal's
    variable, "$n$th": rt68k F6), showing only spacing or a word (rt68e F2), joining letters across what shows
    nothing or showing words from text commands (rt68k F3); an element read as a bidi override (F3). Ordinary
    Markdown around whole words ("**Note:**", "`x`", "[docs](https://example.org)", "<b>bold</b>"), prices and
    formulas ("$E = mc^2$", "$x$") are no place."""
    places: list[tuple[int, int]] = []
    hides = False
    run: list[int] = []  # [start, end] of consecutive markup with nothing between
    glued = False
    unseen = 0  # markup characters of constructs that show nothing or a blank (a comment, an empty tag or link, <br>)
    # Characters the constructs of a stretch hide, less twice those shown in it (by them and between them), for the
    # stretch ending at the construct read last where that is largest (a running maximum, as for the best sum of a
    # subarray): links that show the words of a clause ("[with](https://cdn.example.com/<220 characters>)" x 21)
    # hide a little each and pushed its halves into different windows (rt63a F2); links in prose add up to nothing,
    # a list of ten links to 40-character addresses to less than the bound. Past it: read as rendered, once.
    excess = 0
    shown_to = 0  # where the last construct read ends

    def close() -> None:
        if not run:
            return
        a, b = run
        before = text[a - 1] if a else ""
        after = text[b] if b < len(text) else ""
        if (before.isalpha() and after.isalpha()) or (glued and (before.isalpha() or after.isalpha())):
            places.append((a, b))

    for a, b, shown, kind in edits:
        excess = max(0, excess - 2 * max(0, a - shown_to)) + (b - a) - 3 * len(shown)
        shown_to = b
        if excess > _HIDDEN_PADDING_CHARS and not hides:
            places.append((a, b))
            hides = True
        if kind == "html":  # read as an HTML parser reads it too: a place
            places.append((a, b))
            continue
        if kind == "ref":
            # "&lt;" and "&amp;" (an escaped snippet) hide no letter; "&#77;", "&#32;", "&#45;" or "&#8203;" can.
            if shown not in _ESCAPED_SIGNS:
                places.append((a, b))
            continue
        if kind == "math":
            # A span glued to a letter ("$\\text{M}$ix", "P$\\!$ack"), showing only spacing, or a word of letters
            # ("Mix $\\text{ammonium}$") may complete a clause as shown; a formula between spaces ("$E = mc^2$"), a
            # variable ("$x$") or a price is none (rt68e F2). Blank math that hides written text is hidden text.
            before = text[a - 1] if a else ""
            after = text[b] if b < len(text) else ""
            word = _LETTERS_OR_BLANK.fullmatch(shown) is not None and len(shown.strip()) != 1
            # A span that joins letters across what shows nothing ("$\\text{M}\\text{ix}$", "$\\mathrm{M\\!ix}$") or
            # shows words from text commands ("$\\text{Mix}~\\text{ammonium}.$") reads otherwise than written, with
            # punctuation and digits too (rt68k F3).
            _, text_letters, joined = _math_reading(text[a:b])
            clause = text_letters > _MATH_TEXT_LETTERS and len(shown.split()) > 1
            # An ordinal's variable ("the $n$th term", "the $2^k$th moment": math letters, one at most) joins no word.
            ordinal = (
                not before.isalpha()
                and _ORDINAL.match(text, b) is not None
                and not (text_letters or joined)
                and sum(c.isalpha() for c in shown) <= 1
            )
            if before.isalpha() or (after.isalpha() and not ordinal) or word or joined or clause:
                places.append((a, b))
            if not shown.strip():
                unseen += b - a - len(shown)
                if ((b - a) - len(shown) > _HIDDEN_CHARS or unseen > _HIDDEN_PADDING_CHARS) and not hides:
                    places.append((a, b))
                    hides = True
            continue
        if not _BIDI_CONTROLS.isdisjoint(shown):  # "<bdo dir=rtl>" as U+202E: read in display order too (rt68e F3)
            places.append((a, b))
        if (b - a) - len(shown) > (_HIDDEN_LINK_CHARS if kind == "link" else _HIDDEN_CHARS) and kind != "code":
            places.append((a, b))
            hides = True
        if (not shown or shown.isspace()) and kind != "code":
            unseen += b - a - len(shown)
            # Many short ones between spaced words (" <!-- --> " x 1,500; " <br> " or "[ ](#)", which show a blank:
            # rt59a F2): each hides little, all of them push the words apart as far as padding does (rt58f F2): the
            # text is read as rendered, once.
            if unseen > _HIDDEN_PADDING_CHARS and not hides:
                places.append((a, b))
                hides = True
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
    return sorted(set(places)), hides
