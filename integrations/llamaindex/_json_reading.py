"""A JSON answer judged as the application reads it, parsed, beside its raw text (the LlamaIndex twin of rt57b F3).

A structured answer in text (``structured_predict`` and its twins over an LLM that is not function-calling,
``as_structured_llm``, an ``output_cls`` query engine over one: LlamaIndex's ``PydanticOutputParser``) reaches the
application parsed, its ``\\uXXXX`` escapes decoded into words the guard never read in the raw text. Where the answer
holds such an escape, its parsed reading (`qwenguard.core.formats.json_reading`) is judged too, as the answer: whole
(`reading_checks`), or at the end of a stream (`ReadingHold`), every piece of text from the first such escape held
until then. Tool-call arguments need none of this: the guard reads them parsed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from qwenguard.core import Stage
from qwenguard.core.formats.conversations import response_conversation
from qwenguard.core.formats.json_reading import EscapeWatch
from qwenguard.core.formats.json_reading import parsed_reading as _parsed_reading

__all__ = ["ReadingHold", "extracted", "parsed_reading", "reading_checks"]


def extracted(text: str) -> str:
    """What ``extract_json_str`` (``PydanticOutputParser.parse``) takes of ``text``: its first ``{`` to its last
    ``}``. Found here in linear time: its pattern ``\\{.*\\}`` scans to the end from every ``{`` when no ``}``
    follows, work that grows with the square of the answer."""
    stripped = text.strip()
    start, end = stripped.find("{"), stripped.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the text")
    return stripped[start : end + 1]


def _extracted(text: str) -> Any:
    # ``PydanticOutputParser.parse``: `extracted`, then pydantic's JSON reader (which decodes as ``json.loads``).
    return json.loads(extracted(text))


#: How LlamaIndex reads a JSON answer: whole (``json.loads``), or as its ``PydanticOutputParser`` does.
_PARSERS = (json.loads, _extracted)


def parsed_reading(text: str) -> str | None:
    """``text`` parsed as LlamaIndex parses it, written back with its strings decoded; ``None`` when it reads as the
    raw text does (`qwenguard.core.formats.json_reading.parsed_reading`)."""
    return _parsed_reading(text, _PARSERS)


def reading_checks(prompt: Sequence[Any], text: str) -> list[tuple[Stage, Any]]:
    """The check of ``text``'s parsed reading as the model's response to ``prompt``; none when it reads as its text
    does (most answers: one scan for an escape)."""
    reading = parsed_reading(text)
    if reading is None or not reading.strip():
        return []
    return [(Stage.RESPONSE, response_conversation(list(prompt), reading))]


class ReadingHold:
    """Holds a stream's judged text from the first rewritten escape after a ``{`` or ``[`` (`EscapeWatch`, fed the
    model's text as it arrives, before the monitor releases any of it) to the end, where the caller judges the
    parsed reading (`reading_checks`) before `finish` hands the held text over: no piece the parse would decode into
    unjudged words goes out before it is."""

    __slots__ = ("_held", "_watch")

    def __init__(self) -> None:
        self._watch = EscapeWatch()
        self._held: list[str] = []

    def watch(self, text: str) -> None:
        """Note ``text``, the model's next piece (before the monitor is fed it)."""
        self._watch.feed(text)

    @property
    def holding(self) -> bool:
        return self._watch.seen

    def take(self, released: str) -> str:
        """What of newly released text may go out now (the rest is held to the end)."""
        if not released or not self._watch.seen:
            return released
        self._held.append(released)
        return ""

    def finish(self, tail: str) -> str:
        """The held text and the stream's last text: all of it, once the reading's check passed."""
        held = "".join(self._held)
        self._held = []
        return held + tail
