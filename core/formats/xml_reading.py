"""Text as an XML parser reads it: the reading an app's XML output parser (LangChain's ``XMLOutputParser``, defusedxml
or expat) gives a model's answer, where the Markdown reading (`rendered`) and the text as written do not show it.

An XML parser keeps a CDATA section's text in place ("<![CDATA[M]]>ix" is "Mix"; a browser drops it: rt58e F2),
decodes character references whatever Markdown code context they sit in (``XMLOutputParser`` strips a ```xml or ```
fence, and an inline code span's backticks are plain text to it: F3), and expat expands the internal entities a
DOCTYPE declares ("<!DOCTYPE a [<!ENTITY m "M">]>...&m;ix": F6). `XmlReading` is that reading: references decoded
(`rendered.decode_reference`, any number of leading zeros: F1), CDATA text kept, entities expanded, comments,
processing instructions and the DOCTYPE dropped, tags and fence lines read as breaks (an element's text is a value
of its own). `xml_places` says where it differs unseen, so ordinary Markdown and code cost one scan at most.

Entities are bound as expat binds them (rt58g F1, F2): only by the declarations of a DOCTYPE's internal subset, read
in order (comments, processing instructions and quoted literals skipped, so a declaration inside one binds nothing),
the first declaration of a name winning, names of any length and in any script (a superset of XML's Name: a name
expat refuses makes it refuse the text). A DOCTYPE binds the references after it, up to the next one (each is a
document of its own to a parser). An entity's replacement text is its literal with character references decoded,
read as content with this same reading (CDATA kept, comments dropped, tags as breaks: F3), and expanded without
recursion, so a chain of any depth is read (F7).

Entity expansion is bounded (billion laughs): past `XML_EXPANSION_CHARS` characters expanded (or four times the
text's length, if more) the answer cannot be read as an XML parser reads it and is refused (`InputTooLarge`,
whatever ``on_error`` says: a client's text past a bound never fails open): no ordinary answer declares entities, and
a reading cut at a cap would let the words past it through unread. The scan is linear in the text; closers are found once each."""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..errors import InputTooLarge
from .rendered import CHAR_REFERENCE, decode_reference, edited_span

__all__ = ["XML_EXPANSION_CHARS", "XmlReading", "may_read_as_xml", "read_as_xml", "xml_places"]

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

    def __init__(self, text: str) -> None:
        self.text = text
        self._budget = max(XML_EXPANSION_CHARS, 4 * len(text))
        self._entities: _Entities = {}
        self._expanded: dict[str, str] = {}
        self.edits = self._edits(text, _Finder(text)) if may_read_as_xml(text) else []
        self._starts = [e[0] for e in self.edits]
        self._ends = [e[1] for e in self.edits]
        self.places = [(a, b) for a, b, shown, kind in self.edits if _is_place(kind, shown)]

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
        self._budget -= chars
        if self._budget < 0:
            raise InputTooLarge(
                f"XML entities expanding past {max(XML_EXPANSION_CHARS, 4 * len(self.text)):,} characters cannot be "
                "read as an XML parser reads them"
            )

    def span(self, a: int, b: int) -> str:
        """``text[a:b]`` as an XML parser reads it, widened to the constructs it cuts; runs of spaces as one."""
        return edited_span(self.text, self.edits, self._starts, self._ends, a, b)


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


def read_as_xml(text: str) -> str:
    """``text`` as an XML parser reads it (tags as breaks).

    >>> read_as_xml("<a><![CDATA[M]]>ix &#00000097;mmonium</a>")
    ' Mix ammonium '
    """
    reading = XmlReading(text)
    return reading.span(0, len(text)) if reading.edits else text


def xml_places(text: str) -> list[tuple[int, int]]:
    """Where the XML reading differs unseen (`XmlReading.places`)."""
    return XmlReading(text).places
