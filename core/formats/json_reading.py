"""A JSON answer as the application reads it: parsed, its strings decoded (rt57b F3).

A structured answer in text reaches the application through a JSON parser, which turns ``"\\u0061mmonium"`` into
``"ammonium"``. A guard that judged the raw text never read words written as ``\\uXXXX`` escapes (or ``\\/``). An
answer holding such an escape is judged parsed too: `parsed_reading` writes the parse back with its strings decoded
(``json.dumps(value, ensure_ascii=False)``). Every other escape (``\\n``, ``\\"``, ``\\\\``...) is how ``json.dumps``
writes the parse again: an answer with none of the rewritten kind reads the same both ways and costs one scan.
Framework-free: each adapter passes the parsers its framework reads with; `EscapeWatch` follows a stream.

    >>> parsed_reading('{"a": "\\\\u0061mmonium"}')
    '{"a": "ammonium"}'
    >>> parsed_reading('{"a": "plain\\\\n"}') is None
    True
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["EscapeWatch", "has_rewritten_escape", "parsed_reading"]

#: A backslash escape that ``json.dumps`` never writes for what it decodes to (``\\uXXXX``, ``\\/``): after an even
#: run of backslashes (an odd run ends in an escaped backslash, not an escape).
_REWRITTEN_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\[u/]")
#: Where a JSON value may start: a stream's escape counts only after one (prose quoting ``C:\\users`` is not held).
_JSON_OPENERS = ("{", "[")


def has_rewritten_escape(text: str) -> bool:
    """Does ``text`` hold an escape whose decoded reading ``json.dumps`` would write otherwise?"""
    # The substring tests first: an answer without either pair (most) costs two scans in C, not the pattern's.
    return ("\\u" in text or "\\/" in text) and _REWRITTEN_ESCAPE.search(text) is not None


def parsed_reading(text: str, parsers: Sequence[Callable[[str], Any]] = (json.loads,)) -> str | None:
    """``text`` as the first of ``parsers`` that reads it hands it to the application, written back with its
    strings decoded; ``None`` when it reads the same as the raw text (no rewritten escape), or as no JSON value
    holding text (no parser reads it, or it is a number, ``true``, ``null``)."""
    if not has_rewritten_escape(text):
        return None
    for parse in parsers:
        try:
            value = parse(text)
        except Exception:  # noqa: BLE001, S112 - not JSON to this parser (deep nesting: RecursionError)
            continue
        if value is None or isinstance(value, bool | int | float):
            return None
        return json.dumps(value, ensure_ascii=False)
    return None


class EscapeWatch:
    """Follows a streamed answer, chunk by chunk, in linear time: `seen` turns true at the first rewritten escape
    after a ``{`` or ``[`` (an escape split over two chunks counts), and stays true."""

    __slots__ = ("_odd_tail", "_opened", "seen")

    def __init__(self) -> None:
        self._opened = False  # a ``{`` or ``[`` streamed so far
        self._odd_tail = False  # the text so far ends in an odd run of backslashes
        self.seen = False

    def feed(self, text: str) -> bool:
        """Note ``text``, the stream's next piece; `seen` after it."""
        if self.seen or not text:
            return self.seen
        scanned = ("\\" if self._odd_tail else "") + text
        self._opened = self._opened or any(o in text for o in _JSON_OPENERS)
        self.seen = self._opened and has_rewritten_escape(scanned)
        self._odd_tail = (len(scanned) - len(scanned.rstrip("\\"))) % 2 == 1
        return self.seen
