"""The run's context (LangGraph's ``context=``), read as the client's input.

``agent.invoke(inputs, context=Ctx(...))`` (LangGraph Server's runs API takes ``context`` from the client beside
``input`` and ``command``) hands every node a value that no message carries: a tool reads it through
``ToolRuntime.context``, a ``@dynamic_prompt`` prints it into the system prompt, and it is never in the state
(rt64c F1: a tool e-mailed a note the guard never heard). `GuardMiddleware` judges its text as the user's words,
read as a client's resume value is (`payload_leaf`: a dataclass's, a pydantic model's or a slotted object's fields, a
mapping's keys and values, a text file by what it holds), within the guard's ``max_chars``.

An id that says nothing (a UUID, a hex digest, digits: `is_opaque_id`, as node metadata is read) is left out, so a
context of such ids costs no check. Anything else is read: an id-like word (``"u-4821"``, ``"Mix1"``) can carry
words, and a list of them a sentence one word a string (rt64j F2: a rule that left out each "identifier with a
digit and eight letters at most" on its own let ``["Mix1", "ammonium1", ...]`` through unjudged).
"""

from __future__ import annotations

from typing import Any

from qwenguard.core.formats.identifiers import is_opaque_id

from ._messages import payload_leaf
from ._tool_errors import object_text

__all__ = ["context_text", "run_context"]


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
    """An item of the context read its own way: an opaque id as no text, anything else as a resume value's
    (`payload_leaf`)."""
    if is_opaque_id(item):
        return ""
    return payload_leaf(item)
