"""What an exception says to whoever holds it, read the same way by every integration: a failed tool's error a
``ToolNode`` writes (LangChain), a failed model call's error that can quote the answer it was producing (rt64b F1,
LangChain and LlamaIndex).

Bounded: exceptions are walked breadth first without recursion (`_MAX_ERRORS`), parts of each (`_MAX_PARTS`),
characters (a budget); nothing is read through a property, and whatever fails to read is left out.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from itertools import islice
from typing import Any

from qwenguard.core import Decision, QwenGuardError, Stage

from ._common import stop_of

__all__ = ["carried_by", "error_stop_of", "error_texts"]

#: How many exceptions `error_texts` reads: the error's own, a group's sub-exceptions, causes and contexts.
_MAX_ERRORS = 64
#: How many of one exception's args, notes and attributes `error_texts` reads.
_MAX_PARTS = 32


def error_texts(error: BaseException, budget: int = sys.maxsize, *, left_out: list[str] | None = None) -> list[str]:
    """What a failed tool's error says, as a `ToolNode` with ``handle_tool_errors=True`` writes it
    (``"Error: " + repr(error)``: an exception group's repr carries its sub-exceptions, its str() does not),
    and what a ``handle_tool_errors`` callable may write instead: for the error and each exception it
    carries (a group's sub-exceptions, ``__cause__``, ``__context__``, one in its args or attributes;
    breadth first without recursion, at most `_MAX_ERRORS`), its ``str()``, string args, notes and public
    string attributes (`carried_by`). The error's repr and str() always; the rest while the total fits in
    ``budget`` characters (a text that does not fit is left out whole, never cut; ``left_out`` gets a mark for
    each such text, or for an error's own text past ``budget``). A repr, str or attribute that fails is left
    out."""
    texts: list[str] = []
    known: set[str] = set()
    size = 0

    def add(value: str | bytes, always: bool = False) -> None:
        nonlocal size
        if size + len(value) > budget:
            if left_out is not None:
                left_out.append("")
            if not always:
                return  # UTF-8 decodes to at most as many characters as bytes
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if text and text not in known:
            texts.append(text)
            known.add(text)
            size += len(text)

    try:
        add(f"Error: {error!r}", always=True)  # langgraph.prebuilt.tool_node.TOOL_CALL_ERROR_TEMPLATE
    except Exception:  # noqa: BLE001 - a broken or too deeply nested repr: ToolNode cannot write it either
        pass
    # Every exception's str() first (a cause's text is likelier written than an attribute), then the rest.
    read: list[tuple[BaseException, list[str | bytes]]] = []
    queue, queued = [error], {id(error)}
    while queue and len(read) < _MAX_ERRORS:
        current = queue.pop(0)
        values, inner = carried_by(current)
        read.append((current, values))
        for exception in inner:
            if id(exception) not in queued and len(read) + len(queue) < _MAX_ERRORS:
                queued.add(id(exception))
                queue.append(exception)
    for current, _ in read:
        try:
            add(str(current), always=current is error)
        except Exception:  # noqa: BLE001
            pass
    for _, values in read:
        for value in values:
            add(value)
    return texts


def carried_by(error: BaseException) -> tuple[list[str | bytes], list[BaseException]]:
    """What one exception carries beyond its str(): its string args (a group's message is in its str()), its
    notes (``add_note``), its public string or bytes attributes (``JSONDecodeError.doc``, a
    ``CalledProcessError``'s ``stderr``; at most `_MAX_PARTS` of each), and the exceptions it holds. Read from
    its instance dict, never through a property; whatever fails to read is left out."""
    values: list[str | bytes] = []
    inner: list[BaseException] = []
    try:
        group = getattr(error, "exceptions", None)  # an ExceptionGroup's (duck-typed: Python 3.10 has none)
        if isinstance(group, (list, tuple)):
            inner.extend(e for e in group[:_MAX_ERRORS] if isinstance(e, BaseException))
        inner.extend(e for e in (error.__cause__, error.__context__) if e is not None)
        notes = getattr(error, "__notes__", None)
        attributes = vars(error)
        candidates = [
            *(() if isinstance(group, (list, tuple)) else islice(error.args, _MAX_PARTS)),
            *(islice(notes, _MAX_PARTS) if isinstance(notes, list) else ()),
            *(value for name, value in islice(attributes.items(), _MAX_PARTS) if not str(name).startswith("_")),
        ]
    except Exception:  # noqa: BLE001 - a broken attribute: what was read so far
        return values, inner
    for value in candidates:
        if isinstance(value, (str, bytes)):
            values.append(value)
        elif isinstance(value, BaseException):
            inner.append(value)
    return values, inner


def error_stop_of(guard: Any, decisions: Sequence[Decision] | None) -> QwenGuardError | None:
    """The guard's stop for a failed model call's error judged as its answer (``decisions``; ``None``: it was not
    judged whole, blocked whatever ``on_error`` says: size alone never gets text through unjudged), or ``None``
    where the error goes through unchanged."""
    if decisions is None:
        why = f"the model's error carries more than max_chars={guard.max_chars:,} characters: not judged whole"
        return stop_of(guard.policy.decide_unjudged(Stage.RESPONSE, why))
    blocked = next((d for d in decisions if not d.allowed), None)
    return stop_of(blocked) if blocked is not None else None
