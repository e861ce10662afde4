"""Text as an XML parser reads it: the reading an app's XML output parser (LangChain's ``XMLOutputParser``, defusedxml
or expat) gives a model's answer, where the Markdown reading (`rendered`) and the text as written do not show it.

An XML parser keeps a CDATA section's text in place ("<![CDATA[M]]>ix" is "Mix"; a browser drops it: rt58e F2),
decodes character references whatever Markdown code context they sit in (``XMLOutputParser`` strips a ```xml or ```
fence, and an inline code span's backticks are plain text to it: F3), and expat expands the internal entities a
DOCTYPE declares ("<!DOCTYPE a [<!ENTITY m "M">]>...&m;ix": F6). `XmlReading` is that reading: references decoded
(`rendered.decode_reference`, any number of leading zeros: F1), CDATA text kept, entities expanded, comments,
processing instructions and the DOCTYPE dropped, tags and fence lines read as breaks (an element's text is a value
of its own). `xml_places` says where it differs unseen, so ordinary Markdown and code cost one scan at most.

Entity expansion is bounded (billion laughs): past `XML_EXPANSION_CHARS` characters expanded (or four times the
text's length, if more) the answer cannot be read as an XML parser reads it and is refused (`InputTooLarge`,
whatever ``on_error`` says: a client's text past a bound never fails open): no ordinary answer declares entities, and
a reading cut at a cap would let the words past it through unread. The scan is linear in the text; closers are found once each."""

from __future__ import annotations

import re

from ..errors import InputTooLarge
from .rendered import CHAR_REFERENCE, decode_reference, edited_span

__all__ = ["XML_EXPANSION_CHARS", "XmlReading", "may_read_as_xml", "read_as_xml", "xml_places"]

#: Entity expansion allowed before the reading gives up (fails closed), or four times the text's length if more.
XML_EXPANSION_CHARS = 65536
#: What an escaped snippet's references show: no letter hides behind one (as `rendered`).
_ESCAPED_SIGNS = frozenset("<>&\"'")
_MARKUP = re.compile(
    r"(?P<cdata><!\[CDATA\[)|(?P<comment><!--)|(?P<pi><\?)|(?P<doctype><!DOCTYPE)"
    r"|(?P<ref>&(?:#[xX][0-9a-fA-F]+|#[0-9]+|[A-Za-z_:][\w.:-]{0,63});)"
    r"|(?P<fence>^[ \t]{0,3}```[^`\n]*$)|(?P<tag></?[A-Za-z_:][\w.:-]*(?:\s[^<>]*)?/?>)|(?P<closer>\]\]>)",
    re.MULTILINE,
)
_ENTITY = re.compile(r"""<!ENTITY\s+([A-Za-z_:][\w.:-]*)\s+(?:"([^"]*)"|'([^']*)')\s*>""")
_PREDEFINED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
_ELEMENT = re.compile(r"<[A-Za-z_:][\w.:-]*[\s/>]")


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


class XmlReading:
    """A text's XML markup, read once: its edits (start, end, shown, kind), its `places` (where the reading differs
    unseen: a reference, a CDATA section, a comment, a processing instruction) and the reading of any span of it
    (`span`), cut only between constructs of the whole text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._entities = _declared(text)
        self._budget = max(XML_EXPANSION_CHARS, 4 * len(text))
        self._expanded: dict[str, str] = {}
        self.edits = self._edits(text) if may_read_as_xml(text) else []
        self._starts = [e[0] for e in self.edits]
        self._ends = [e[1] for e in self.edits]
        self.places = [(a, b) for a, b, shown, kind in self.edits if _is_place(kind, shown)]

    def _edits(self, text: str) -> list[tuple[int, int, str, str]]:
        edits: list[tuple[int, int, str, str]] = []
        found: dict[str, int] = {}  # each closer's next place, found once (linear)

        def after(closer: str, at: int) -> int:
            where = found.get(closer, -2)
            if where == -1 or where >= at:
                return where
            where = text.find(closer, at)
            found[closer] = where
            return where

        at = 0
        while True:
            m = _MARKUP.search(text, at)
            if m is None:
                return edits
            kind, a = m.lastgroup or "", m.start()
            if kind == "cdata":
                close = after("]]>", m.end())
                # Unclosed (a stream's word): the opener is markup, what follows it the section's text.
                b, inner = (close + 3, text[m.end() : close]) if close >= 0 else (m.end(), "")
                edits.append((a, b, inner, kind))
            elif kind in ("comment", "pi", "doctype"):
                closer = {"comment": "-->", "pi": "?>", "doctype": ">"}[kind]
                close = after(closer, m.end())
                if kind == "doctype" and close >= 0 and "[" in text[m.end() : close]:
                    close = after("]>", m.end())  # an internal subset: its declarations hold ">" too
                    close = close + 1 if close >= 0 else -1
                b = close + len(closer) if close >= 0 else m.end()
                edits.append((a, b, "", kind))
            elif kind == "ref":
                edits.append((a, m.end(), self._reference(m.group()), kind))
            elif kind == "closer":  # a section's closer whose opener went before (a stream's word): markup
                edits.append((a, m.end(), "", "cdata"))
            else:  # a tag or a fence line: a break between values
                edits.append((a, m.end(), "" if kind == "fence" else " ", kind))
            at = max(edits[-1][1], m.end(), a + 1)

    def _reference(self, written: str, seen: frozenset[str] = frozenset()) -> str:
        if written.startswith("&#"):
            return decode_reference(written)
        name = written[1:-1]
        if name in _PREDEFINED:
            return _PREDEFINED[name]
        if name not in self._entities:
            return decode_reference(written)  # an HTML parser's named reference ("&eacute;"); else as written
        if name in seen:
            return written  # recursive: an XML parser refuses the text
        if name not in self._expanded:
            value = self._entities[name]
            parts: list[str] = []
            at = 0
            for m in _MARKUP.finditer(value):  # the replacement text is read as content again
                if m.lastgroup == "ref":
                    parts += [value[at : m.start()], self._reference(m.group(), seen | {name})]
                    at = m.end()
            self._expanded[name] = "".join(parts) + value[at:]
        shown = self._expanded[name]
        self._budget -= len(shown)
        if self._budget < 0:
            raise InputTooLarge(
                f"XML entities expanding past {max(XML_EXPANSION_CHARS, 4 * len(self.text)):,} characters cannot be "
                "read as an XML parser reads them"
            )
        return shown

    def span(self, a: int, b: int) -> str:
        """``text[a:b]`` as an XML parser reads it, widened to the constructs it cuts; runs of spaces as one."""
        return edited_span(self.text, self.edits, self._starts, self._ends, a, b)


def _is_place(kind: str, shown: str) -> bool:
    if kind == "ref":
        return shown not in _ESCAPED_SIGNS
    return kind in ("cdata", "comment", "pi")


def _declared(text: str) -> dict[str, str]:
    """The general entities a DOCTYPE declares: the first declaration of a name binds it (XML 1.0, 4.2)."""
    if "<!ENTITY" not in text:
        return {}
    entities: dict[str, str] = {}
    for m in _ENTITY.finditer(text):
        entities.setdefault(m.group(1), m.group(2) if m.group(2) is not None else m.group(3))
    return entities


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
