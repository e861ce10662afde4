"""A JSON answer judged as the application reads it, parsed, beside its raw text (the LlamaIndex twin of rt57b F3).

A structured answer in text (``structured_predict`` and its twins over an LLM that is not function-calling,
``as_structured_llm``, an ``output_cls`` query engine over one: LlamaIndex's ``PydanticOutputParser``; the
sub-question generator, the auto-retriever, guidance programs: ``parse_json_markdown``) reaches the application
parsed, its escapes decoded into words the guard never read in the raw text. Where the answer holds such an escape,
its parsed readings (`qwenguard.core.formats.json_reading`) are judged too, as the answer, each way LlamaIndex
reads it: ``json.loads``; ``PydanticOutputParser``'s first ``{`` to last ``}``; the streaming programs' repair of a
cut answer (``_repair_incomplete_json``, rt58a F1); ``parse_json_markdown``'s fence and bracket cut, then its
``yaml.safe_load`` fallback, which decodes ``\\x4D``, ``\\U0000004D`` and ``!!binary`` too (rt58e F4; past 32,768
characters, or where libyaml refuses what the pure-Python loader reads, its scalars decoded: rt58g F4, F8); and,
where no parser reads the whole text (a stream's parsed prefix is what the application keeps), its string literals
decoded. Whole (`reading_checks`), or at the end of a stream (`ReadingHold`), every piece of text from the first
such escape where a parser may read it as a value held until then; the reading is judged at the end either way.
Tool-call arguments are read parsed; a string argument that is itself JSON is read parsed too
(`qwenguard.core.formats.json_reading.json_strings_parsed`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from qwenguard.core import Stage
from qwenguard.core.formats.conversations import response_conversation
from qwenguard.core.formats.json_reading import (
    EscapeWatch,
    has_decoded_escape,
    has_rewritten_escape,
    literals_reading,
    repaired,
    yaml_value,
)
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


def _json(text: str) -> Any:
    return json.loads(text)


def _extracted(text: str) -> Any:
    # ``PydanticOutputParser.parse``: `extracted`, then pydantic's JSON reader (which decodes as ``json.loads``).
    return _json(extracted(text))


def _repaired(text: str) -> Any:
    # ``process_streaming_objects``: a cut answer, its quote and braces closed, read by pydantic's JSON reader.
    return _json(repaired(text))


def _marshalled(text: str) -> str:
    # ``output_parsers.utils.parse_json_markdown``: past a ```json fence, from the first ``[`` or ``{`` to the last
    # ``]`` or ``}`` (whichever opens first).
    if "```json" in text:
        text = text.split("```json")[1].strip().strip("`").strip()  # its strip("```"): a set of one character
    text = text.strip()
    square, brace = text.find("["), text.find("{")
    if (square < brace and square != -1) or brace == -1:
        return text[square : text.rfind("]") + 1]
    return text[brace : text.rfind("}") + 1]


def _markdown(text: str) -> Any:
    # ``parse_json_markdown``: ``json.loads``, and where that fails ``yaml.safe_load`` (`yaml_value`).
    marshalled = _marshalled(text)
    try:
        value = json.loads(marshalled)
    except json.JSONDecodeError:
        if not has_decoded_escape(marshalled):
            raise
        return yaml_value(marshalled)
    return value


#: How LlamaIndex reads a JSON answer: whole (``json.loads``), as its ``PydanticOutputParser`` does, repaired as a
#: streaming program does, and as ``parse_json_markdown`` does (YAML past a JSON error).
_PARSERS = (_json, _extracted, _repaired, _markdown)


def parsed_reading(text: str) -> str | None:
    """``text`` parsed each way LlamaIndex parses it, written back with its strings decoded; ``None`` when it reads
    as the raw text does (`qwenguard.core.formats.json_reading.parsed_reading`)."""
    reading = _parsed_reading(text, _PARSERS, has_decoded_escape)
    if reading is None and text.lstrip().startswith(("{", "[")) and has_rewritten_escape(text):
        # No parser reads it whole: a streaming program kept the last prefix it could read, decoded.
        return literals_reading(text) or None
    return reading


def reading_checks(prompt: Sequence[Any], text: str) -> list[tuple[Stage, Any]]:
    """The check of ``text``'s parsed reading as the model's response to ``prompt``; none when it reads as its text
    does (most answers: one scan for an escape)."""
    reading = parsed_reading(text)
    if reading is None or not reading.strip():
        return []
    return [(Stage.RESPONSE, response_conversation(list(prompt), reading))]


class ReadingHold:
    """Holds a stream's judged text from the first escape a parse decodes where a parser may read it as a value
    (`EscapeWatch`, fed the model's text as it arrives, before the monitor releases any of it: in a value that opens
    the answer or a fence, or in a string literal after a bracket; not LaTeX or a Windows path in prose, rt58g F5) to
    the end, where the caller judges the parsed reading (`reading_checks`) before `finish` hands the held text over:
    no piece a streaming parse would decode into unjudged words goes out before it is."""

    __slots__ = ("_held", "_watch")

    def __init__(self) -> None:
        self._watch = EscapeWatch(has_decoded_escape)
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
