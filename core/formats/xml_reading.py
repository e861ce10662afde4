"""Text as an XML parser reads it: the reading an app's XML output parser (LangChain's ``XMLOutputParser``, defusedxml
or expat) gives a model's answer, where the Markdown reading (`rendered`) and the text as written do not show it.

An XML parser keeps a CDATA section's text in place ("<![CDATA[M]]>ix" is "Mix"; a browser drops it: rt58e F2),
decodes character references whatever Markdown code context they sit in (``XMLOutputParser`` strips a ```xml or ```
fence, and an inline code span's backticks are plain text to it: F3), and expat expands the internal entities a
DOCTYPE declares ("<!DOCTYPE a [<!ENTITY m "M">]>...&m;ix": F6). `XmlReading` is that reading: references decoded
(`rendered.decode_reference`, any number of leading zeros: F1), CDATA text kept, entities expanded, comments,
processing instructions and the DOCTYPE dropped, tags and fence lines read as breaks (an element's text is a value
of its own; the rendered reading joins the body's inline tags, but sees no expansion and no CDATA text: where the
reading holds one, it is read again with the body's tags as nothing, as ``itertext()`` joins them: rt59e F1).
`xml_places` says where it differs unseen, so ordinary Markdown and code cost one scan at most.

Entities are bound as expat binds them (rt58g F1, F2): only by the declarations of a DOCTYPE's internal subset, read
in order (comments, processing instructions and quoted literals skipped, so a declaration inside one binds nothing),
the first declaration of a name winning, names of any length and in any script (a superset of XML's Name: a name
expat refuses makes it refuse the text). A DOCTYPE binds the references after it, up to the next one (each is a
document of its own to a parser). An entity's replacement text is its literal with character references decoded,
read as content with this same reading (CDATA kept, comments dropped: F3), and expanded without recursion, so a
chain of any depth is read (F7). A tag inside a value splits no word for ``itertext()`` ("<b>M</b>ix" is "Mix"), and
no rendered reading sees an expansion: where one holds a tag, the text is read twice, its tags as breaks, then as
nothing (`XmlReading.readings`; rt59d F3).

Entity expansion is bounded (billion laughs): past `XML_EXPANSION_CHARS` characters expanded (or four times the
text's length, if more) the answer cannot be read as an XML parser reads it and is refused (`InputTooLarge`,
whatever ``on_error`` says: a client's text past a bound never fails open): no ordinary answer declares entities, and
a reading cut at a cap would let the words past it through unread. The scan is linear in the text; closers are found once each.

A stream (the Stream model's reading, `content.AsSeenStream`) binds entities with `XmlScope`: the same binding, fed the
text piece by piece, each character scanned once; its expansions share one budget for the whole stream."""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..errors import InputTooLarge
from .rendered import CHAR_REFERENCE, decode_reference, edited_span

__all__ = ["XML_EXPANSION_CHARS", "XmlReading", "XmlScope", "may_read_as_xml", "read_as_xml", "xml_places"]

#: Entity expansion allowed before the reading gives up (fails closed), or four times the text's length if more.
XML_EXPANSION_CHARS = 65536
#: What an escaped snippet's references show: no letter hides behind one (as `rendered`).
_ESCAPED_SIGNS = frozenset("<>&\"'")
# XML's Name, widened to every non-ASCII character (expat refuses the text for a name outside XML's): rt58g F1.
_NAME_START = "A-Za-z_:\u0080-\U0010ffff"
_NAME = rf"[{_NAME_START}][{_NAME_START}0-9.\-]*"
_S = "[ \t\r\n]"
_MARKUP = re.compile(
    r"(?P<cdata><!\[CDATA\[)|(?P<comment><!--)|(?P<pi><\?)|(?P<doctype><!DOCTYPE)"
    rf"|(?P<ref>&(?:#[xX][0-9a-fA-F]+|#[0-9]+|{_NAME});)"
    r"|(?P<fence>^[ \t]{0,3}```[^`\n]*$)|(?P<tag></?[A-Za-z_:][\w.:-]*(?:\s[^<>]*)?/?>)|(?P<closer>\]\]>)",
    re.MULTILINE,
)
_CHAR_REF = re.compile(r"&#[xX][0-9a-fA-F]+;|&#[0-9]+;")
_ENTITY_HEAD = re.compile(rf"<!ENTITY{_S}+(%{_S}+)?({_NAME}){_S}+")
_PE_REFERENCE = re.compile(rf"%{_NAME};")
_BLANKS = re.compile(f"{_S}*")
_PREDEFINED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
_ELEMENT = re.compile(r"<[A-Za-z_:][\w.:-]*[\s/>]")
#: How a tag inside an entity's value is read until the reading is built (`XmlReading.readings`): a break in one
#: reading, nothing in the other. NUL: no XML text holds one (a parser refuses it), so none is mistaken for a tag.
_JOIN = "\x00"
_RUNS = re.compile(r"[ \t]{2,}")
#: A declared entity: its replacement text, or None for an external one (bound, but nothing to read).
_Entities = dict[str, "str | None"]


def may_read_as_xml(text: str) -> bool:
    """A cheap first test: ``text`` holds what an XML parser reads otherwise than the Markdown reading does: a CDATA
    section, an entity declaration, or a reference or comment in a text with Markdown code (backticks) and an
    element."""
    if "<![CDATA[" in text or "]]>" in text or "<!ENTITY" in text:
        return True
    return (
        "`" in text
        and (("&" in text and CHAR_REFERENCE.search(text) is not None) or "<!--" in text or "<?" in text)
        and _ELEMENT.search(text) is not None  # no element, nothing an XML parser hands on: code stays code
    )


class _Finder:
    """The next place of each closer, found with `str.find` and kept while later searches start between where the
    kept one started and what it found: hostile runs of openers that never close share one scan (linear)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._kept: dict[str, tuple[int, int]] = {}
        self._unquoted: dict[str, dict[int, tuple[int, str]]] = {}

    def after(self, closer: str, start: int) -> int:
        kept = self._kept.get(closer)
        if kept is not None and kept[0] <= start and (kept[1] == -1 or kept[1] >= start):
            return kept[1]
        found = self.text.find(closer, start)
        self._kept[closer] = (start, found)
        return found

    def first(self, closers: str, start: int) -> tuple[int, str]:
        """The first of the one-character ``closers`` at or after ``start``: (place, closer), or (-1, "")."""
        places = [(at, c) for c in closers if (at := self.after(c, start)) >= 0]
        return min(places) if places else (-1, "")

    def unquoted(self, stops: str, start: int) -> tuple[int, str]:
        """The first of the one-character ``stops`` at or after ``start`` outside quoted literals: (place, stop), or
        (-1, "") if a literal never closes or no stop follows. Each place read on from is kept with its answer, so
        openers whose declarations never close share one walk over the quotes (linear)."""
        walked: list[int] = []
        kept = self._unquoted.setdefault(stops, {})
        pos = start
        while pos not in kept:
            walked.append(pos)
            place, sign = self.first(stops + "\"'", pos)
            if sign in stops and sign:
                found = (place, sign)
                break
            close = self.after(sign, place + 1) if sign else -1
            if close < 0:
                found = (-1, "")
                break
            pos = close + 1
        else:
            found = kept[pos]
        for at in walked:
            kept[at] = found
        return found


class XmlReading:
    """A text's XML markup, read once: its edits (start, end, shown, kind), its `places` (where the reading differs
    unseen: a reference, a CDATA section, a comment, a processing instruction) and the reading of any span of it
    (`span`), cut only between constructs of the whole text."""

    def __init__(self, text: str, scope: XmlScope | None = None) -> None:
        self.text = text
        self._budget = max(XML_EXPANSION_CHARS, 4 * len(text))
        # A stream's text (`XmlScope`): the entities bound before it, their expansions and the budget are the stream's.
        self._scope = scope
        self._entities: _Entities = scope.entities if scope is not None else {}
        self._expanded: dict[str, str] = scope.expanded if scope is not None else {}
        bound = bool(self._entities) and "&" in text
        self._unrendered = False  # an entity expanded or CDATA text kept: what no rendered reading shows
        self.edits = self._edits(text, _Finder(text)) if bound or may_read_as_xml(text) else []
        self._starts = [e[0] for e in self.edits]
        self._ends = [e[1] for e in self.edits]
        self.places = [(a, b) for a, b, shown, kind in self.edits if _is_place(kind, shown)]
        # Where the reading holds what the rendered reading never shows, the body's tags are also read as nothing
        # (rt59e F1: "&m;<b/>ix" and "<![CDATA[M]]><b/>ix" are "Mix" to itertext(), "M ix" with tags as breaks).
        self._joined = (
            [(a, b, _JOIN if kind == "tag" else shown, kind) for a, b, shown, kind in self.edits]
            if self._unrendered
            else None
        )

    def _edits(self, text: str, finder: _Finder, expanding: set[str] | None = None) -> list[tuple[int, int, str, str]]:
        """The constructs of ``text`` as the parser reads them: the answer's, whose DOCTYPEs bind the entities of the
        references after them, or an entity's replacement text (while the entities ``expanding`` are read)."""
        edits: list[tuple[int, int, str, str]] = []
        at = 0
        while True:
            m = _MARKUP.search(text, at)
            if m is None:
                return edits
            kind, a = m.lastgroup or "", m.start()
            if kind == "cdata":
                close = finder.after("]]>", m.end())
                # Unclosed (a stream's word): the opener is markup, what follows it the section's text.
                b, inner = (close + 3, text[m.end() : close]) if close >= 0 else (m.end(), "")
                edits.append((a, b, inner, kind))
                self._unrendered = self._unrendered or (expanding is None and bool(inner.strip()))
            elif kind in ("comment", "pi"):
                closer = "-->" if kind == "comment" else "?>"
                close = finder.after(closer, m.end())
                edits.append((a, close + len(closer) if close >= 0 else m.end(), "", kind))
            elif kind == "doctype":
                end, entities = _doctype(text, m.end(), finder)
                if expanding is None:  # a document of its own: its references read with its declarations
                    self._entities, self._expanded = entities, {}
                edits.append((a, end, "", kind))
            elif kind == "ref":
                edits.append((a, m.end(), self._reference(m.group(), expanding), kind))
            elif kind == "closer":  # a section's closer whose opener went before (a stream's word): markup
                edits.append((a, m.end(), "", "cdata"))
            elif kind == "tag" and expanding is not None:  # inside an entity's value: a join mark (`_JOIN`)
                edits.append((a, m.end(), _JOIN, kind))
            else:  # a tag or a fence line: a break between values
                edits.append((a, m.end(), "" if kind == "fence" else " ", kind))
            at = max(edits[-1][1], m.end(), a + 1)

    def _reference(self, written: str, expanding: set[str] | None) -> str:
        """What a reference shows: an entity being expanded around it (``expanding``) as written (recursive: the
        parser refuses the text); each of the answer's own references counts its expansion to the bound."""
        if written.startswith("&#"):
            return decode_reference(written)
        name = written[1:-1]
        if name in _PREDEFINED:
            return _PREDEFINED[name]  # expat ignores a declaration of a predefined entity
        if name not in self._entities:
            return decode_reference(written)  # an HTML parser's named reference ("&eacute;"); else as written
        if self._entities[name] is None or (expanding is not None and name in expanding):
            return written  # an external entity: nothing here to read
        shown = self._expansion(name)
        if expanding is None:
            self._spend(len(shown))
            self._unrendered = True
        return shown

    def _expansion(self, name: str) -> str:
        """The entity ``name`` read as content, its references expanded depth first with a stack of our own (a chain
        of a thousand entities is read, not a RecursionError: rt58g F7); each expansion kept, its length counted."""
        if name in self._expanded:
            return self._expanded[name]
        stack: list[tuple[str, str, Iterator[re.Match[str]]]] = []
        on_stack: set[str] = set()

        def push(entity: str) -> None:
            value = _replacement(self._entities[entity] or "")
            stack.append((entity, value, _MARKUP.finditer(value)))
            on_stack.add(entity)

        push(name)
        while stack:
            entity, value, refs = stack[-1]
            for m in refs:
                inner = m.group()[1:-1] if m.lastgroup == "ref" and not m.group().startswith("&#") else ""
                if self._entities.get(inner) is not None and inner not in self._expanded and inner not in on_stack:
                    push(inner)
                    break
            else:  # every entity it names is read: read it
                edits = self._edits(value, _Finder(value), on_stack) if value else []
                stack.pop()
                on_stack.discard(entity)
                self._spend(len(value) + sum(len(e[2]) for e in edits))  # at most its reading, before it is built
                self._expanded[entity] = edited_span(
                    value, edits, [e[0] for e in edits], [e[1] for e in edits], 0, len(value)
                )
        return self._expanded[name]

    def _spend(self, chars: int) -> None:
        if self._scope is not None:
            self._scope.spend(chars)
            return
        self._budget -= chars
        if self._budget < 0:
            raise InputTooLarge(
                f"XML entities expanding past {max(XML_EXPANSION_CHARS, 4 * len(self.text)):,} characters cannot be "
                "read as an XML parser reads them"
            )

    def span(self, a: int, b: int) -> str:
        """``text[a:b]`` as an XML parser reads it, widened to the constructs it cuts; runs of spaces as one. Where an
        entity's value holds a tag, both readings, the tag read as a break and then as nothing (`readings`)."""
        return " ".join(self.readings(a, b))

    def readings(self, a: int, b: int) -> list[str]:
        """`span`'s readings: one, or two where they differ: tags read as breaks (each element's text a value of its
        own), then as nothing, as ``itertext()`` joins them ("<b>M</b>ix" is "Mix"). The second joins the tags of an
        expanded entity's value (rt59d F3) and, where the text expands an entity or keeps CDATA text, the body's own
        tags too (rt59e F1: "&m;<b/>ix"; elsewhere the rendered reading joins those)."""
        read = edited_span(self.text, self.edits, self._starts, self._ends, a, b)
        if self._joined is not None:
            joined = edited_span(self.text, self._joined, self._starts, self._ends, a, b).replace(_JOIN, "")
        elif _JOIN in read:
            joined = read.replace(_JOIN, "")
        else:
            return [read]
        broken = _RUNS.sub(" ", read.replace(_JOIN, " ")) if _JOIN in read else read
        # Words alike (tags only between words): one reading, so ordinary XML reads once.
        return [broken] if joined == broken or joined.split() == broken.split() else [broken, joined]


def _replacement(literal: str) -> str:
    """An internal entity's replacement text: its literal with character references decoded, as the parser does when
    it reads the declaration ("&#60;![CDATA[" opens a section when the entity is read); other references kept."""
    return _CHAR_REF.sub(lambda m: decode_reference(m.group()), literal) if "&#" in literal else literal


def _is_place(kind: str, shown: str) -> bool:
    if kind == "ref":
        return shown not in _ESCAPED_SIGNS
    return kind in ("cdata", "comment", "pi")


def _doctype(text: str, at: int, finder: _Finder) -> tuple[int, _Entities]:
    """A DOCTYPE from after its "<!DOCTYPE": where it ends and the general entities its internal subset declares, in
    order, the first declaration of a name binding it (XML 1.0, 4.2; rt58g F2). Quoted literals may hold "[", ">" or
    "]>"; comments and processing instructions of the subset declare nothing. Malformed (the parser refuses the text)
    or unclosed, it ends where it went wrong, so the scan reads on from there."""
    entities: _Entities = {}
    place, sign = finder.unquoted("[>", at)  # past the name and external identifier, whose literals may hold "[", ">"
    if sign != "[":
        return (place + 1 if sign == ">" else at), entities
    pos = place + 1
    while True:
        pos = _BLANKS.match(text, pos).end()  # type: ignore[union-attr]
        if text.startswith("]", pos):
            end = _BLANKS.match(text, pos + 1).end()  # type: ignore[union-attr]
            return (end + 1 if text.startswith(">", end) else pos), entities
        if text.startswith("<!--", pos) or text.startswith("<?", pos):
            closer = "-->" if text.startswith("<!--", pos) else "?>"
            close = finder.after(closer, pos + 2)
            if close < 0:
                return pos, entities
            pos = close + len(closer)
            continue
        if (pe := _PE_REFERENCE.match(text, pos)) is not None:
            pos = pe.end()
            continue
        if not text.startswith("<!", pos):
            return pos, entities
        head = _ENTITY_HEAD.match(text, pos)
        start = pos
        value: str | None = None
        if head is not None and (quote := text[head.end() : head.end() + 1]) in ("'", '"'):
            close = finder.after(quote, head.end() + 1)
            if close < 0:
                return start, entities
            value, pos = text[head.end() + 1 : close], close + 1
        close, _ = finder.unquoted(">", pos)  # quoted literals skipped
        if close < 0:
            return start, entities
        end = close + 1
        if head is not None and not head.group(1):  # a general entity ("%" declares a parameter entity)
            entities.setdefault(head.group(2), value)
        pos = end


_DOCTYPE = "<!DOCTYPE"
_PRE_SIGNS = re.compile("[\\[>\"']")
_DECL_SIGNS = re.compile("[>\"']")
_PE_PREFIX = re.compile(rf"%(?:{_NAME})?")
#: An entity declaration (or any markup declaration of a DOCTYPE's subset) longer than this, still open in a stream:
#: `InputTooLarge` (its text is kept until it closes).
XML_DECLARATION_CHARS = 4 * XML_EXPANSION_CHARS


class XmlScope:
    """The general entities that the DOCTYPEs of a text arriving in pieces bind (rt58 X: the Stream model's reading
    never expanded them): `feed` the text in order; `entities` are those bound so far, as `_doctype` binds them whole
    (the internal subset's declarations in order, comments, processing instructions and quoted literals skipped, the
    first declaration of a name winning, a later DOCTYPE starting over). Each character is scanned once: a scan that
    needs more text waits where it stopped. Expansions read with it (`XmlReading(text, scope)`) share one budget,
    `XML_EXPANSION_CHARS` or four times the text fed (billion laughs across many small pieces)."""

    __slots__ = (
        "entities",
        "expanded",
        "seen",
        "scanning",
        "fed",
        "_buf",
        "_state",
        "_p",
        "_d",
        "_quote",
        "_closer",
        "_spent",
    )

    def __init__(self) -> None:
        self.entities: _Entities = {}
        self.expanded: dict[str, str] = {}
        self.seen = False  # a DOCTYPE came
        #: Whether text without a "<" may change what is bound (else the caller may only count it in `fed`).
        self.scanning = False
        self.fed = 0  # characters fed
        self._buf = ""  # the text from the first place still to be read (a declaration's start while one is open)
        self._state = ""  # "": outside a DOCTYPE; "pre", "subset", "close", "decl", "after"
        self._p = 0  # where the scan goes on in `_buf`
        self._d = 0  # where the open declaration starts in `_buf`
        self._quote = ""  # the quoted literal the scan is in
        self._closer = ""  # what closes the comment or processing instruction the scan is in
        self._spent = 0

    def spend(self, chars: int) -> None:
        self._spent += chars
        if self._spent > max(XML_EXPANSION_CHARS, 4 * self.fed):
            raise InputTooLarge(
                f"XML entities expanding past {max(XML_EXPANSION_CHARS, 4 * self.fed):,} characters cannot be read "
                "as an XML parser reads them"
            )

    def feed(self, text: str) -> None:
        """Read on through ``text`` (the stream's next characters as written)."""
        if not text:
            return
        self.fed += len(text)
        if not self.scanning and "<" not in text:  # most text: nothing to scan
            return
        self._buf += text
        while self._step():
            pass
        keep = self._d if self._state == "decl" else self._p
        if not self._state:
            keep = max(keep, len(self._buf) - (len(_DOCTYPE) - 1))
        if keep > 0:
            self._buf, self._p, self._d = self._buf[keep:], self._p - keep, self._d - keep
        self.scanning = bool(self._state) or "<" in self._buf
        if self._state in ("decl", "subset") and len(self._buf) > XML_DECLARATION_CHARS:
            raise InputTooLarge(
                f"an XML declaration open past {XML_DECLARATION_CHARS:,} characters cannot be read as an XML parser "
                "reads it"
            )

    def _step(self) -> bool:
        """One step of the scan; False where it needs more text."""
        buf, p = self._buf, self._p
        state = self._state
        if not state:
            at = buf.find(_DOCTYPE, p)
            if at < 0:
                self._p = max(p, len(buf) - (len(_DOCTYPE) - 1))
                return False
            # A DOCTYPE binds the references after it, up to the next one.
            self.seen = True
            self.entities, self.expanded = {}, {}
            self._state, self._p, self._quote = "pre", at + len(_DOCTYPE), ""
            return True
        if self._quote:
            close = buf.find(self._quote, p)
            if close < 0:
                self._p = len(buf)
                return False
            self._quote, self._p = "", close + 1
            return True
        if state in ("pre", "decl"):
            m = (_PRE_SIGNS if state == "pre" else _DECL_SIGNS).search(buf, p)
            if m is None:
                self._p = len(buf)
                return False
            sign, self._p = m.group(), m.end()
            if sign in "\"'":
                self._quote = sign
            elif sign == "[":
                self._state = "subset"
            elif state == "pre":
                self._state = ""  # ">": no internal subset
            else:
                self._declared(buf[self._d : m.end()])
                self._state = "subset"
            return True
        if state == "close":
            close = buf.find(self._closer, p)
            if close < 0:
                self._p = max(p, len(buf) - len(self._closer) + 1)
                return False
            self._state, self._p = "subset", close + len(self._closer)
            return True
        p = _BLANKS.match(buf, p).end()  # type: ignore[union-attr]
        self._p = p
        if p == len(buf):
            return False
        if state == "after":
            self._state = ""  # ">" closes it; anything else is malformed: it ends there
            self._p = p + 1 if buf[p] == ">" else p
            return True
        rest = buf[p : p + 4]
        if buf[p] == "]":
            self._state, self._p = "after", p + 1
        elif rest in ("<", "<!", "<!-") or (buf[p] == "%" and _PE_PREFIX.fullmatch(buf, p) is not None):
            return False  # may still become a comment, a declaration or a parameter-entity reference
        elif rest == "<!--" or rest.startswith("<?"):
            self._state, self._closer = "close", "-->" if rest == "<!--" else "?>"
            self._p = p + 2  # as `_doctype` searches: "<!-->" closes at once
        elif (pe := _PE_REFERENCE.match(buf, p)) is not None:
            self._p = pe.end()
        elif rest.startswith("<!"):
            self._state, self._d, self._p = "decl", p, p + 2
        else:
            self._state = ""  # malformed: the DOCTYPE ends there (its entities stay bound)
        return True

    def _declared(self, decl: str) -> None:
        """A whole markup declaration of the subset (up to its ">"): an internal general entity binds its name."""
        head = _ENTITY_HEAD.match(decl)
        if head is None or head.group(1) or head.group(2) in self.entities:
            return
        quote = decl[head.end() : head.end() + 1]
        value = decl[head.end() + 1 : decl.index(quote, head.end() + 1)] if quote in ("'", '"') else None
        self.entities[head.group(2)] = value
        self.expanded.clear()  # an expansion read before may name it


def read_as_xml(text: str) -> str:
    """``text`` as an XML parser reads it (tags as breaks; also as nothing where that joins words: `readings`).

    >>> read_as_xml("<a><![CDATA[M]]>ix &#00000097;mmonium</a>")
    ' Mix ammonium '
    """
    reading = XmlReading(text)
    return reading.span(0, len(text)) if reading.edits else text


def xml_places(text: str) -> list[tuple[int, int]]:
    """Where the XML reading differs unseen (`XmlReading.places`)."""
    return XmlReading(text).places
