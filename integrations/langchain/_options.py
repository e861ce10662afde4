"""Options checked by name: `refuse_unknown`.

qwenguard's LangChain pieces are pydantic models, which ignore a keyword they have no field for: an option
misspelt (``screen_sytem=True``) or spelt as the LlamaIndex integration spells it (``on_block="raise"``, LangChain's
``on_violation``) was accepted and did nothing, and an injected document was dropped where the app asked for a raise
(rt55c F3). The LlamaIndex pieces refuse such keys (`integrations/llamaindex/_component.py`); these do too, naming
the other integration's word or the closest option. The check runs in each piece's ``__init__``: copies
(``model_copy``, ``bind_tools``, pickling) do not go through it, and the fields LangChain's base classes add
(``callbacks``, ``tags``, ``metadata``, ``cache``, ``rate_limiter``...) are fields, so they are taken.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["known_fields", "refuse_unknown", "by_keyword"]


def known_fields(cls: Any) -> set[str]:
    """The keywords pydantic takes for ``cls``: its fields, by name and by alias."""
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        names.add(name)
        names.update(a for a in (field.alias, field.validation_alias) if isinstance(a, str))
    return names


def refuse_unknown(name: str, given: Iterable[str], known: Iterable[str], hints: Mapping[str, str]) -> None:
    """Nothing when every key of ``given`` is ``known``; else a ``TypeError`` naming each unknown one, with its hint
    (``hints``: the other integration's name for an option) or the closest known option (difflib)."""
    known = set(known)
    unknown = [key for key in given if key not in known]
    if not unknown:
        return
    notes = []
    for key in unknown:
        hint = hints.get(key)
        if hint is None:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "no such option"
        notes.append(f"{key!r} ({hint})")
    word = "option" if len(unknown) == 1 else "options"
    raise TypeError(f"{name} got unknown {word}: " + "; ".join(notes))


def by_keyword(piece: str, names: tuple[str, str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``args`` (at most two, in the order of ``names``) moved into ``kwargs``: ``Piece(first, guard)`` by position too,
    where pydantic's own errors named neither (``takes 1 positional argument``, ``Field required``)."""
    if len(args) > 2:
        raise TypeError(f"{piece}({', '.join(names)}) takes at most 2 positional arguments, got {len(args)}")
    for name, value in zip(names, args):
        if name in kwargs:
            raise TypeError(f"{piece} got {name!r} twice (positionally and as a keyword)")
        kwargs[name] = value
