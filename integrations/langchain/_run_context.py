"""The run's context (LangGraph's ``context=``), read as the client's input.

``agent.invoke(inputs, context=Ctx(...))`` (LangGraph Server's runs API takes ``context`` from the client beside
``input`` and ``command``) hands every node a value that no message carries: a tool reads it through
``ToolRuntime.context``, a ``@dynamic_prompt`` prints it into the system prompt, and it is never in the state
(rt64c F1: a tool e-mailed a note the guard never heard). `GuardMiddleware` judges its text as the user's words,
read as a client's resume value is (`payload_leaf`: a dataclass's, a pydantic model's or a slotted object's fields, a
mapping's keys and values, a text file by what it holds), within the guard's ``max_chars``.

An id, an account number or a date sent as text (``"u-4821"``, ``"acme-7"``, ``"2024-06-01"``, a UUID) is no words:
one identifier (`IDENTIFIER`) with a digit in it and eight letters at most, or hex digits only, is left out (`_is_id`),
so that a context of ids and numbers costs no check and cannot be blocked for what it is not. Words joined into one
(``"Mix_ammonium_1"``) hold more letters: read.
"""

from __future__ import annotations

import re
from typing import Any

from .._common import IDENTIFIER
from ._messages import payload_leaf
from ._tool_errors import object_text

__all__ = ["context_text", "run_context"]

#: The most letters an id (`_is_id`) holds: a short word at most (``acme``), too few to say something.
_ID_LETTERS = 8
#: Hex digits, in groups: a UUID, a hash.
_HEX = re.compile(r"[0-9A-Fa-f]+(?:-[0-9A-Fa-f]+)*")


def run_context(holder: Any) -> Any:
    """The context of the run ``holder`` belongs to: a hook's ``Runtime``, or a model or tool call's request (its
    ``runtime``); ``None`` when there is none."""
    runtime = getattr(holder, "runtime", holder)
    return getattr(runtime, "context", None)


def context_text(context: Any, budget: int) -> tuple[str, bool]:
    """What ``context`` says, one text a line (ids left out: `_context_leaf`), and whether all of it was read within
    ``budget`` characters (`object_text`)."""
    return object_text([context], budget, _context_leaf)


def _context_leaf(item: Any) -> Any:
    """An item of the context read its own way: an id as no text, anything else as a resume value's (`payload_leaf`)."""
    if isinstance(item, str) and _is_id(item):
        return ""
    return payload_leaf(item)


def _is_id(text: str) -> bool:
    """One identifier with a digit in it and few letters, or hex digits only: an id, a number or a date as text."""
    if IDENTIFIER.fullmatch(text) is None or not any(c.isdigit() for c in text):
        return False
    return sum(c.isalpha() for c in text) <= _ID_LETTERS or _HEX.fullmatch(text) is not None
