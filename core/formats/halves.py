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


def _nearest(pattern: re.Pattern[str], text: str, middle: int, low: int, high: int) -> int | None:
    """The match boundary (its end) of ``pattern`` in ``text[low:high]`` nearest ``middle``, found by looking out
    from the middle: the work is the distance searched, not the text's length."""
    after = pattern.search(text, middle, high)
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


def _cut(text: str) -> int:
    """Where ``text`` (stripped) is cut: an index strictly inside it, so both sides hold more than white space."""
    size = len(text)
    middle = size // 2
    low, high = size // 8, size - size // 8  # a cut near an end leaves a sliver: the middle, then the spaces
    cut = _nearest(SENTENCE_END, text, middle, low, high)  # the window planner's own rule
    if cut is None:
        cut = _nearest(_SPACE, text, middle, low, high)
    if cut is None:
        cut = middle
        while cut < size - 1 and unicodedata.combining(text[cut]):  # a mark stays with its letter
            cut += 1
    return cut


def halves(text: str) -> tuple[str, str] | None:
    """``text`` in two (each stripped of the white space at the cut), or ``None`` where it is too short to cut."""
    text = text.strip()
    if len(text) < MIN_SPLIT_CHARS:
        return None
    cut = _cut(text)
    first, second = text[:cut].rstrip(), text[cut:].lstrip()
    if not first.strip() or not second.strip():
        return None
    return first, second


def parts(text: str, cuts: int) -> list[str]:
    """``text`` cut in two ``cuts`` times over (up to 2 ** cuts parts; a part too short to cut stays whole)."""
    out = [text]
    for _ in range(cuts):
        out = [part for piece in out for part in (halves(piece) or (piece,))]
    return out


def cut_conversation(conversation: list[dict[str, str]], cuts: int) -> list[list[dict[str, str]]]:
    """The conversation once for each part of its last turn (`parts`), each after the same earlier turns; ``[]``
    where the last turn is too short to cut."""
    *context, last = conversation
    pieces = parts(last["content"], cuts)
    if len(pieces) < 2:
        return []
    return [[*context, {**last, "content": piece}] for piece in pieces]
