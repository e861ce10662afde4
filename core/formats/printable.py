"""`printable`: text from a dataset, a server or a client made safe for one line of a terminal or a report.

Its own module with no dependencies: the command's error lines use it, and an error must print in every install
(the eval package it lived in needs numpy, so a core-only or ``.[remote]`` install crashed inside its error handler
and printed a traceback with the wrong install hint: rt68f F1).
"""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: str) -> str:
    """``text`` for one line of a terminal or a report: control and other unprintable characters (ESC, CR, a
    newline) as their escapes (``\\x1b``), so a dataset's or a server's bytes cannot move the cursor or forge
    lines."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
