"""Where harmful text becomes harmful: the first word of an unsafe span that harmless text never uses.

A prefix of an unsafe answer ("Sure. Mix ammonium nitrate with ...") is unsafe from its first harmful words on,
not from its first word: "Mix" also starts a cake recipe. `harm_onset` finds that point without hand labels: the
first word of the span that appears nowhere in the generator's harmless text banks (answers, facts, prose,
everyday sentences, harmless twins of harmful sentences, harmless tasks). The partial-answer family labels a
prefix unsafe once it holds that word, and the Stream model's token labels start there.
"""

from __future__ import annotations

import functools
import re

from .answer_texts import REFUSALS, SAFE_INTROS
from .document_texts import FILLER, SAFE_FACTS
from .everyday import (
    _B_ADJ,
    _B_NOUNS,
    _B_PEOPLE,
    _B_QUESTIONS,
    _B_SENTENCES,
    _B_VERBS,
    SAFE_TWINS,
    _safe_words,
)
from .frames import CHOICES, HOWTO_TASKS, INFO_ITEMS, WRITE_TEXTS
from .qa import _QA_FAMILIES
from .slots import SLOTS
from .tool_texts import SAFE_TEXTS

__all__ = ["harm_onset", "is_harmless_word"]

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
# Slot lists that hold everyday values (safe templates use them).
_EVERYDAY_SLOTS = ("email", "day", "time", "month", "lang", "num", "greeting", "drink")


def _norm(word: str) -> str:
    return word.lower().strip("'-")


@functools.cache
def _harmless_words() -> frozenset[str]:
    texts: list[str] = []
    for fam in _QA_FAMILIES:
        texts += list(fam.questions) + list(fam.answers) + [v for row in fam.rows for v in row.values()]
    texts += (
        [t for topic in FILLER.values() for t in topic] + SAFE_FACTS + SAFE_TEXTS + SAFE_TWINS + SAFE_INTROS + REFUSALS
    )
    texts += list(_B_NOUNS + _B_ADJ + _B_VERBS + _B_PEOPLE + _B_SENTENCES + _B_QUESTIONS)
    texts += HOWTO_TASKS[None] + WRITE_TEXTS[None] + INFO_ITEMS[None] + [" ".join(c) for c in CHOICES[None]]
    texts += [v for key in _EVERYDAY_SLOTS for v in SLOTS[key]]
    words = {_norm(w) for t in texts for w in _WORD.findall(t)}
    return frozenset(words | set(_safe_words()))


def is_harmless_word(word: str) -> bool:
    """True when the harmless text banks use ``word`` (case-insensitive)."""
    return _norm(word) in _harmless_words()


def harm_onset(text: str, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """``(start, end)`` character offsets of the first word in ``text[start:end]`` that harmless text never uses.

    A token with digits (a card number, a code) counts as such a word unless it is an everyday number; a span made
    only of harmless words has its onset at its first word (the whole span is the harm, e.g. an insult).
    """
    end = len(text) if end is None else end
    first: tuple[int, int] | None = None
    for m in re.finditer(r"\S+", text[start:end]):
        token = m.group(0)
        a, b = start + m.start(), start + m.end()
        first = first or (a, b)
        if any(c.isdigit() for c in token):
            if token.strip(".,;:!?") not in SLOTS["num"]:
                return a, b  # a card number, a code, an account: data, not prose
            continue
        if any(not is_harmless_word(w) for w in _WORD.findall(token)):
            return a, b
    return first or (start, end)
