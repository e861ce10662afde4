"""A line as a terminal shows it after a lone carriage return: the cursor goes back to the line's start and what
follows overwrites what was there (a terminal, a notebook's output cell).

Every other reading takes a lone CR as a line break and reads the pieces in written order. An answer written in
layers, the last words first and each layer padded to its column ("....add a fuse.\\r....with fuel oil,\\rMix"), shows
a clause that no reading held (rt70a F1). `clean_text` turns a lone CR into a line break in what the guard hands on;
a text checked whole is also judged as laid out here, since the app shows the text it was given.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

__all__ = ["LONE_CR", "crlf_joined", "has_lone_cr", "overlaid_lines", "read_as_overlaid"]

#: A carriage return that does not start a CRLF.
LONE_CR = re.compile(r"\r(?!\n)")
#: Columns between tab stops.
TAB = 8
#: Columns of a line laid out: what a segment between CRs writes past them is not read as overlaid (the text as
#: written still is), so the work on one line is bounded as the other as-seen readings' is (rt70l F5).
OVERLAID_COLUMNS = 4096
#: Characters laid out between two calls of the planner's deadline check.
_CHECK_EVERY = 1 << 16


def has_lone_cr(text: str) -> bool:
    """Whether ``text`` holds a carriage return not followed by a line feed."""
    return "\r" in text and LONE_CR.search(text) is not None


def crlf_joined(delta: str, cr_held: bool) -> tuple[str, bool]:
    """A streamed ``delta`` as released, and whether a CR is held after it: each lone CR a line feed (released text
    cannot go back over a line it holds, rt70a F1), a CR at its end held until the next character shows whether it
    starts a CRLF (``cr_held``: one held after the delta before), so a CRLF cut between two deltas stays a CRLF."""
    if cr_held:
        delta = "\r" + delta
    cr_held = delta.endswith("\r")
    if cr_held:
        delta = delta[:-1]
    return (LONE_CR.sub("\n", delta) if "\r" in delta else delta), cr_held


def overlaid_lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of each line of ``text`` (between line feeds) that holds a lone CR, in order. Linear: each line
    is looked through once."""
    lines: list[tuple[int, int]] = []
    for m in LONE_CR.finditer(text):
        if lines and m.start() < lines[-1][1]:
            continue
        end = text.find("\n", m.end())
        lines.append((text.rfind("\n", 0, m.start()) + 1, len(text) if end < 0 else end))
    return lines


def read_as_overlaid(text: str, check: Callable[[], None] | None = None, units: bool = False) -> str:
    """``text`` with each line holding a CR laid out as a terminal shows it: each CR goes back to column 0 and
    later characters overwrite earlier ones, a wide East Asian character over two columns, a combining mark or
    zero-width character on the column before it. Other lines as written. Linear in the text's length; the first
    `OVERLAID_COLUMNS` of a line laid out.

    ``units``: as a notebook's output cell shows it instead (Jupyter's ``fixCarriageReturn``: what follows a CR
    replaces as many UTF-16 code units, whatever their width, rt70l F1). ``check``: the planner's deadline check,
    called between lines and within a long one.

    >>> read_as_overlaid("..........fuel oil.\\r....with\\rMix")
    'Mix.with..fuel oil.'
    """
    if "\r" not in text:
        return text
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        crlf = "\r" if i + 1 < len(lines) and line.endswith("\r") else ""  # kept as written
        body = line[: len(line) - len(crlf)]
        if "\r" in body:
            if check is not None:
                check()
            body = _in_units(body) if units else _laid_out(body, check)
        out.append(body + crlf)
    return "\n".join(out)


def _laid_out(line: str, check: Callable[[], None] | None) -> str:
    segments = [segment[:OVERLAID_COLUMNS] for segment in line.split("\r")]
    if line.isascii() and "\t" not in line:
        # One column a character: each segment overwrites the start of the line (a slice assignment, linear).
        cells: list[str] = []
        for segment in segments:
            cells[: len(segment)] = segment
        return "".join(cells)
    return _Cells().laid_out(segments, check)


def _in_units(line: str) -> str:
    """``line`` as a notebook lays it out: each segment replaces the start of the line, a UTF-16 code unit a place
    (a split pair shows U+FFFD)."""
    cells = bytearray()
    for segment in line.split("\r"):
        units = segment[:OVERLAID_COLUMNS].encode("utf-16-le", "surrogatepass")
        cells[: len(units)] = units
    return cells.decode("utf-16-le", "replace")


class _Cells:
    """The columns of one line: a character each, ``""`` for the second column of a wide character; marks (zero
    width) kept apart by column, so a long run of them is not copied once per mark."""

    def __init__(self) -> None:
        self.cells: list[str] = []
        self.marks: dict[int, list[str]] = {}

    def laid_out(self, segments: list[str], check: Callable[[], None] | None) -> str:
        done = 0
        for segment in segments:
            if check is not None and done > _CHECK_EVERY:
                check()
                done = 0
            done += len(segment)
            self._write(segment)
        return "".join(c + "".join(self.marks.get(i, ())) for i, c in enumerate(self.cells))

    def _write(self, segment: str) -> None:
        """``segment`` written from column 0 over what is there."""
        col = 0
        for ch in segment:
            if ch == "\t":
                col = (col // TAB + 1) * TAB
                self._reach(col)
            elif (width := _width(ch)) == 0:
                if col:  # nothing to sit on at column 0: not shown
                    self.marks.setdefault(col - 1, []).append(ch)
            else:
                self._reach(col + width)
                for i in range(col, col + width):
                    self._clear(i)
                self.cells[col] = ch
                if width == 2:
                    self.cells[col + 1] = ""
                col += width

    def _reach(self, width: int) -> None:
        if len(self.cells) < width:
            self.cells += " " * (width - len(self.cells))

    def _clear(self, i: int) -> None:
        """Column ``i`` is overwritten: a wide character it held half of is gone, its other half shows a blank."""
        self.marks.pop(i, None)
        if self.cells[i] == "" and i:
            self.cells[i - 1] = " "
            self.marks.pop(i - 1, None)
        elif i + 1 < len(self.cells) and self.cells[i + 1] == "":
            self.cells[i + 1] = " "


def _width(ch: str) -> int:
    """Columns ``ch`` takes on a terminal (glibc's and xterm's ``wcwidth``): 0 for a combining mark, a format
    character or a Hangul medial or final jamo (it joins the syllable before), 2 for a wide or full-width one, else 1;
    a soft hyphen takes one (rt70l F1)."""
    if ch < "\x7f" or ch == "\u00ad":
        return 1
    if "\u1160" <= ch <= "\u11ff" or "\ud7b0" <= ch <= "\ud7ff":
        return 0
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
