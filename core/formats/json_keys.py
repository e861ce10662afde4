"""`unique_keys`: a JSON object that names a key twice is refused, not read as its last copy.

``json.loads`` keeps the last of duplicate keys without a word: a merged, hand-edited or templated file with
``"mode"`` (a ``--policy`` file, rt57c F9) or ``"text"`` (an eval row, rt71g F1) twice is read as whichever came
last, while a reader of the file sees the first. Pass ``object_pairs_hook=unique_keys``; nested objects too.

    >>> import json
    >>> json.loads('{"a": 1, "a": 2}', object_pairs_hook=unique_keys)
    Traceback (most recent call last):
    ...
    qwenguard.core.formats.json_keys.DuplicateKey: the key 'a' appears more than once in one object; keep one
"""

from __future__ import annotations

from typing import Any

__all__ = ["DuplicateKey", "unique_keys"]


class DuplicateKey(ValueError):
    """A JSON object names one key twice (a `ValueError`, as ``json.loads``'s own errors are)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: the object as a dict; a `DuplicateKey` naming a repeated key."""
    seen: dict[str, Any] = {}
    for key, item in pairs:
        if key in seen:
            raise DuplicateKey(f"the key {key!r} appears more than once in one object; keep one")
        seen[key] = item
    return seen
