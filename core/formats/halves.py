"""A text cut in two where a reader would cut it: at the sentence end nearest its middle, else at the space
nearest it, else at its middle (never inside a run of combining marks).

The guard's answer names one primary category per window (QwenLM/Qwen3Guard#7): a window read as a category the
policy ignores is judged again in parts (`qwenguard.core.excused_split`), so that what else it holds is named too.
"""

from __future__ import annotations

import re
import unicodedata

from .content import SENTENCE_END

__all__ = ["MIN_SPLIT_CHARS", "cut_conversation", "halves", "parts"]

#: A judged text shorter than this is not cut: a clause of a few words is read whole or not at all.
MIN_SPLIT_CHARS = 24

_SPACE = re.compile(r"\s+")
#: Where a part may end: a sentence end as the window planner reads one, or a line break (a list's item, a chat log's
#: line: without punctuation, such text has no sentence end, and was cut at spaces into fragments: rt69p F2).
_PART_END = re.compile(f"(?:{SENTENCE_END.pattern})|\n")
#: How far before the middle the search for the nearest end starts: an end is a few characters long, and one that
#: straddles the middle was found neither looking back nor looking on (rt69p F3).
_STRADDLE = 8


def _nearest(pattern: re.Pattern[str], text: str, middle: int, low: int, high: int) -> int | None:
    """The match boundary (its end) of ``pattern`` in ``text[low:high]`` nearest ``middle``, found by looking out
    from the middle: the work is the distance searched, not the text's length."""
    after = pattern.search(text, max(low, middle - _STRADDLE), high)
    while after is not None and after.end() <= middle:  # one that ends before the middle is `before`'s to find
        after = pattern.search(text, after.end(), high)
    before = None
    span = 64
    while before is None:
        start = max(low, middle - span)
        for match in pattern.finditer(text, start, middle):
            before = match.end()
        if start == low:
            break
        span *= 4
    cuts = [cut for cut in (before, after.end() if after else None) if cut is not None and low < cut < high]
    return min(cuts, key=lambda cut: abs(cut - middle)) if cuts else None


def _cut(text: str, sentences: bool = False) -> int | None:
    """Where ``text`` (stripped) is cut: an index strictly inside it, so both sides hold more than white space;
    ``sentences``: only at a sentence end (``None`` where none is near enough the middle)."""
    size = len(text)
    middle = size // 2
    low, high = size // 8, size - size // 8  # a cut near an end leaves a sliver: the middle, then the spaces
    cut = _nearest(_PART_END, text, middle, low, high)
    if cut is None and sentences:
        return None
    if cut is None:
        cut = _nearest(_SPACE, text, middle, low, high)
    if cut is None:
        cut = middle
        while cut < size - 1 and unicodedata.combining(text[cut]):  # a mark stays with its letter
            cut += 1
    return cut


def halves(text: str, sentences: bool = False) -> tuple[str, str] | None:
    """``text`` in two (each stripped of the white space at the cut), or ``None`` where it is too short to cut
    (``sentences``: or holds no sentence end near enough its middle)."""
    text = text.strip()
    if len(text) < MIN_SPLIT_CHARS:
        return None
    cut = _cut(text, sentences)
    if cut is None:
        return None
    first, second = text[:cut].rstrip(), text[cut:].lstrip()
    if not first.strip() or not second.strip():
        return None
    return first, second


def parts(text: str, cuts: int, sentences: bool = False) -> list[str]:
    """``text`` cut in two ``cuts`` times over (up to 2 ** cuts parts; a part too short to cut stays whole);
    ``sentences``: only at sentence ends (a part holding none stays whole)."""
    out = [text]
    for _ in range(cuts):
        out = [part for piece in out for part in (halves(piece, sentences) or (piece,))]
    return out


def cut_conversation(conversation: list[dict[str, str]], cuts: int) -> list[list[dict[str, str]]]:
    """The conversation once for each part of its last turn (`parts`), each after the same earlier turns; ``[]``
    where the last turn is too short to cut. Cut at sentence ends first, so that a sentence stays whole (a short
    question cut at spaces was judged only in fragments, none of which read as what the sentence asks: rt69n F3);
    at spaces where the turn holds no sentence end to cut at."""
    *context, last = conversation
    pieces = parts(last["content"], cuts, sentences=True)
    if len(pieces) < 2:
        pieces = parts(last["content"], cuts)
    if len(pieces) < 2:
        return []
    return [[*context, {**last, "content": piece}] for piece in pieces]
