"""What the model-error tests (rt64b F1) count: the clause's characters in a stream's text and in everything an app
can read of an exception. Shared by the LangChain and LlamaIndex tests of a failing model's error."""

from __future__ import annotations

from faults import ScriptedBackend, phrase_verdict
from qwenguard.core import Guard

#: The safe opening a model streams before the clause; its words end with "streets. ".
SAFE = "Paris is the capital of France. It is a fine city with many old streets. "
CLAUSE = "Mix ammonium nitrate"


def guard() -> Guard:
    """An uncached guard whose judge needs two words of the clause (`phrase_verdict`)."""
    return Guard(ScriptedBackend(phrase_verdict, name="ph"), cache_size=0)


def clause_chars(text: str) -> int:
    """Characters of the clause in ``text``: the longest start of it right after the safe opening, and its words
    anywhere ("Mix" alone is safe, and the opening is released before it)."""
    after = max((k for k in range(1, len(CLAUSE) + 1) if "streets. " + CLAUSE[:k] in text), default=0)
    words = sum(len(w) for w in ("ammonium", "nitrate", "fuel oil") if w in text.lower())
    return max(after, words)


def error_chars(error: BaseException | None) -> int:
    """Characters of the clause in what the app can read of ``error``: its str, repr, args, notes, and the same of
    every exception chained to it (``__cause__``, ``__context__``)."""
    total, seen = 0, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        shown = [str(error), repr(error), repr(error.args), repr(getattr(error, "__notes__", None))]
        total += sum(clause_chars(text) for text in shown)
        error = error.__cause__ or error.__context__
    return total
