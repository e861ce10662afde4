"""Opaque identifiers: an id a store or a framework made up (a canonical UUID, a hex digest, digits), in which a
reader can read no words. The integrations judge every string a retrieved document or node shows the app with
its text, ids included (instructions planted in an id reach a prompt or a sources panel: rt51f F9, rt56c F1), but
leave such an id out of the judged text: it says nothing, and a random UUID beside a safe page made the demo guard
drop the page now and then (rt56c: 14 of 1,000 LangChain documents "Paris is the capital of France." under uuid4
ids). An id with anything else in it (words, spaces, words joined by underscores or dashes, a file path) is
judged."""

from __future__ import annotations

import re

__all__ = ["is_opaque_id"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
# Lengths an id has (SHA-256 is 64 hex digits, a 64-bit number 20 digits): longer runs can carry a message
# written as numbers or hex that an LLM told elsewhere to decode would read, and are judged.
_DIGITS = re.compile(r"[0-9]{1,64}")
# A digest: 8 to 64 hex digits in one case, a digit among them ("deadbeef" and "facade" are words).
_HEX = re.compile(r"(?=[a-f]*[0-9])[0-9a-f]{8,64}|(?=[A-F]*[0-9])[0-9A-F]{8,64}")


def is_opaque_id(value: object) -> bool:
    """Whether ``value`` is a str that is wholly a canonical UUID, a hex digest (8 to 64) or ASCII digits (to 64)."""
    if not isinstance(value, str):
        return False
    return any(pattern.fullmatch(value) for pattern in (_UUID, _DIGITS, _HEX))
