"""Long runs of whitespace, shortened before a conversation is windowed.

A reader sees one gap where a text has a run of blanks (HTML and Markdown collapse it; a chat UI shows a wide gap at
most), and the application's LLM reads the words on both sides together. A guard window counts tokens as written:
" \\t" repeated 12,000 times between "mix" and "ammonium" is ~12,000 tokens, so no window of a real-size guard showed
the two words together and every check passed (rt58c F1; 160 such characters were enough where a window was cut).
`shorten_blank_runs` keeps each run's first `KEPT_BLANKS` characters: the words stay within any window overlap of more
than that many tokens, line breaks and indentation up to that depth are kept, and the padding costs no window work.
"""

from __future__ import annotations

import re

__all__ = ["KEPT_BLANKS", "shorten_blank_runs"]

#: What a run of whitespace keeps (each character is at most one token, far under the windows' 64-token overlap).
KEPT_BLANKS = 16

# Whitespace as Python reads it (str.isspace: ASCII blanks, line and paragraph separators, U+3000, U+2000-U+200A ...),
# blank letters (Hangul fillers, U+2800) and the characters a reader sees as nothing, which an attacker can mix into a
# run to break it into short ones (" \u00ad\t" repeated): soft hyphen, combining grapheme joiner, Mongolian and
# standard variation selectors, zero-width spaces and joiners, word joiner and invisible operators, BOM. Not tag
# characters (a run of them spells ASCII, read by `content.as_seen_pieces`) nor bidi controls (they reorder the
# text after them, read by `content.read_as_displayed`).
_SEEN_AS_NOTHING = (
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200d\u2060-\u2064\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0"
)
_RUN = re.compile(f"[\\s{_SEEN_AS_NOTHING}]{{{KEPT_BLANKS + 1},}}")


def shorten_blank_runs(text: str) -> str:
    """``text`` with each run of more than `KEPT_BLANKS` whitespace characters (and characters seen as nothing) cut to its first
    `KEPT_BLANKS`. Idempotent; linear in ``text``; ``text`` itself when it has no such run.

    >>> shorten_blank_runs("mix" + " \\t" * 1000 + "ammonium") == "mix" + " \\t" * 8 + "ammonium"
    True
    """
    return _RUN.sub(_kept, text) if _RUN.search(text) else text


def _kept(match: re.Match[str]) -> str:
    return match.group()[:KEPT_BLANKS]
