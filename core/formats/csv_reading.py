"""An answer as a CSV reader reads it: quotes taken away (rt58e F7).

LangChain's ``CommaSeparatedListOutputParser`` reads an answer with Python's ``csv`` module: a field that opens
with ``"`` is quoted, and the text after its closing quote joins it, so ``"M"ix ammonium`` reaches the application
as ``Mix ammonium`` while the raw text reads ``"M"ix``. Where a ``"`` stands between word characters (the cheap
trigger: ordinary prose quotes words from outside them), the answer is read once more as the parser reads it
(`csv_reading`), its items joined by ``", "``. `QuoteWatch` follows a stream for the same trigger, chunk by chunk.
Framework-free; linear (the ``csv`` module is C).

    >>> csv_reading('"M"ix ammonium, fuel')
    'Mix ammonium, fuel'
    >>> csv_reading('Paris, "the capital", France') is None
    True
"""

from __future__ import annotations

import csv
import io

from .blank_runs import seen_as_nothing

__all__ = ["QuoteWatch", "csv_reading", "has_quote_in_word"]


def has_quote_in_word(text: str) -> bool:
    """Does ``text`` hold a ``"`` between word characters (characters a reader sees as nothing between them and the
    quote left out: ``"M"\u200dix`` reads "Mix" too, rt59d F2)?"""
    # Each quote found by a literal scan (in C), its neighbours looked at: a pattern opening with ``\w`` would be
    # tried at every position of the text (25 times slower on prose).
    at = text.find('"')
    while at >= 0:
        end = at + 1
        while end < len(text) and (text[end] == '"' or seen_as_nothing(text[end])):
            end += 1
        before = at - 1
        while before >= 0 and seen_as_nothing(text[before]):
            before -= 1
        if before >= 0 and end < len(text) and _word(text[before]) and _word(text[end]):
            return True
        at = text.find('"', end)
    return False


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"  # ``\w``, as the csv reader's neighbours count


def csv_reading(text: str) -> str | None:
    """``text`` as ``CommaSeparatedListOutputParser`` reads it (``csv.reader``, ``skipinitialspace``), its items
    joined by ``", "``; ``None`` without a ``"`` between word characters, or where it reads as the raw text does."""
    if not has_quote_in_word(text):
        return None
    try:
        rows = csv.reader(io.StringIO(text), quotechar='"', delimiter=",", skipinitialspace=True)
        items = [item for row in rows for item in row]
    except csv.Error:
        return None  # the parser splits on commas instead: the raw text's words
    reading = ", ".join(items)
    return reading if reading.strip() and reading != text else None


class QuoteWatch:
    """Follows a streamed answer: `seen` turns true at the first ``"`` between word characters (split over chunks
    too) and stays true. Constant work per character."""

    __slots__ = ("_carry", "seen")

    def __init__(self) -> None:
        self._carry = ""  # the text's last word character and a quote after it
        self.seen = False

    def feed(self, text: str) -> bool:
        """Note ``text``, the stream's next piece; `seen` after it."""
        if self.seen or not text:
            return self.seen
        scanned = self._carry + text
        self.seen = has_quote_in_word(scanned)
        # What the next piece may complete: the last word character and what follows it, quotes and characters seen
        # as nothing (a run of them is carried as one of each: ``\w"+\w`` needs no more, the carry stays short).
        end = len(scanned)
        while end and (scanned[end - 1] == '"' or seen_as_nothing(scanned[end - 1])):
            end -= 1
        tail = scanned[end:]
        quoted = '"' if '"' in tail else ""
        hidden = next((c for c in tail if c != '"'), "")
        self._carry = scanned[end - 1] + hidden + quoted + hidden if end and _word(scanned[end - 1]) else ""
        return self.seen
