"""A JSON answer judged as the application reads it, parsed, beside its raw text (rt57b F3, rt58a F2).

A structured answer in text (``with_structured_output(method="json_mode" | "json_schema")``, ``create_agent``'s
``ProviderStrategy``, ``model | JsonOutputParser()``) reaches the application parsed, its ``\\uXXXX`` escapes decoded
into words the guard never read in the raw text. Where the answer holds such an escape, its parsed reading
(`qwenguard.core.formats.json_reading`) is judged too, as the answer: whole (`reading_items`), or at the end of a held
stream (`ReadingHeldStream`), every chunk from the first such escape where a parser may read it as a value held until
then (`EscapeWatch`: in a value that opens the answer or a fence, ``{``, ``[`` or a bare JSON string, or in a string
literal after a bracket; prose that quotes ``"C:\\users"`` is not held, rt58g F5). Tool-call arguments are judged parsed by LangChain's own
parse; a string argument that is itself JSON is read parsed too (`._messages.tool_arguments`), streamed too
(`._streaming.ToolCallGate`).

Two more parsers read an answer otherwise than its raw text: ``YamlOutputParser`` (``yaml.safe_load`` of the
answer or its first fence: ``"\\x4Dix"``, ``"\\U0000004Dix"``, ``!!binary``; where the answer holds such an escape or
a tag, `qwenguard.core.formats.json_reading.has_decoded_escape`) and ``CommaSeparatedListOutputParser`` (``csv``
quoting: ``"M"ix ammonium``; where a ``"`` stands between word characters, `qwenguard.core.formats.csv_reading`).
Their readings are judged with the JSON one, whole; a stream is held from a quote between word characters (the
list parser hands each item on as the next one opens). A YAML parser is no transform: it reads the whole answer only
once the stream has ended, after the end check read it (no hold, so LaTeX or a quoted Windows path streams on).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.utils.json import parse_json_markdown
from qwenguard.core import Stage
from qwenguard.core.formats.conversations import response_conversation
from qwenguard.core.formats.csv_reading import QuoteWatch, csv_reading
from qwenguard.core.formats.json_reading import EscapeWatch, has_decoded_escape, has_yaml_only_escape, yaml_value
from qwenguard.core.formats.json_reading import parsed_reading as _parsed_reading

from ._holding import HeldStream
from ._messages import DEFAULT_HISTORY_TURNS, Item, guard_history

__all__ = ["ReadingHeldStream", "answer_reading", "parsed_reading", "reading_items", "yaml_reading"]

#: How LangChain reads a JSON answer: ``ProviderStrategy``'s ``json.loads``, then its parsers' lenient reading
#: (``JsonOutputParser``, ``PydanticOutputParser``: fenced or partial JSON too).
_PARSERS = (json.loads, parse_json_markdown)
#: What `parse_json_markdown` strips from the text's ends, and how a JSON value that holds text opens.
_STRIPPED = " \n\r\t`"
_OPENERS = ("{", "[", '"')


#: Where ``YamlOutputParser`` finds its YAML: the first fence opening a line (else the whole answer).
_YAML_FENCE = re.compile(r"^```(?:ya?ml)?(?P<yaml>[^`]*)", re.MULTILINE | re.DOTALL)


def yaml_reading(text: str) -> str | None:
    """``text`` as ``YamlOutputParser`` reads it (`qwenguard.core.formats.json_reading.yaml_value` of the answer or
    its first fence), written back; ``None`` without a YAML-decodable escape or tag, or where it reads as written."""
    if not has_decoded_escape(text):
        return None
    match = _YAML_FENCE.search(text.strip())
    try:
        return yaml_value(match.group("yaml") if match else text).text
    except Exception:  # noqa: BLE001 - no YAML to it, or none that reads otherwise
        return None


def parsed_reading(text: str) -> str | None:
    """``text`` parsed as LangChain's JSON parsers parse it, written back with its strings decoded; ``None`` when it
    reads as the raw text does (`qwenguard.core.formats.json_reading.parsed_reading`)."""
    # Its parsers read a value that opens the text (past spaces and backticks) or a fenced block: prose that
    # quotes ``C:\users`` is not parsed twice over in Python for nothing.
    if not text.lstrip(_STRIPPED).startswith(_OPENERS) and "```" not in text:
        return None
    return _parsed_reading(text, _PARSERS)


def answer_reading(text: str) -> str | None:
    """``text`` as LangChain's parsers read it: JSON (`parsed_reading`), YAML (`yaml_reading`: where the JSON one
    reads nothing, or the text holds an escape or tag only YAML decodes) and CSV (`csv_reading`), each distinct
    reading once, one a line; ``None`` when every one reads as the raw text does."""
    json_read = parsed_reading(text)
    readings = [json_read or ""]
    if json_read is None or has_yaml_only_escape(text):  # else YAML reads the JSON answer's strings as JSON does
        readings.append(yaml_reading(text) or "")
    readings.append(csv_reading(text) or "")
    distinct = [r for i, r in enumerate(readings) if r and r not in readings[:i]]
    return "\n".join(distinct) if distinct else None


def _reply_to(context: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    # Response moderation reads an answer to a user turn (as `output_items` does): an empty one when none is there.
    if any(m.get("role") == "user" for m in context):
        return list(context)
    return [{"role": "user", "content": ""}, *context]


def reading_items(
    answer: BaseMessage | str | None,
    context: Sequence[BaseMessage] | Sequence[dict[str, str]],
    turns: int = DEFAULT_HISTORY_TURNS,
    *,
    text: str | None = None,
) -> list[Item]:
    """The check of ``answer``'s parsed reading (`answer_reading` of its text: a message's, a string, or ``text``
    when given), as the model's response to ``context`` (the messages the model read, or guard dicts, as
    `output_items` takes them); none when it reads as its text does."""
    message = answer if isinstance(answer, BaseMessage) else None
    if text is None:
        text = _text_of(answer)
    reading = answer_reading(text)
    if reading is None or not reading.strip():
        return []
    if context and isinstance(context[0], BaseMessage):
        history = guard_history(context, turns)  # type: ignore[arg-type]
    else:
        history = [dict(m) for m in context][-turns:] if turns > 0 else []
    conversation = response_conversation(_reply_to(history), reading)
    return [Item(Stage.RESPONSE, conversation, message, label="model response, as parsed")]


def _text_of(chunk: Any) -> str:
    """What LangChain's parsers read of a message (``.text``: its text blocks) or a string chunk; ``""`` else."""
    if isinstance(chunk, str):
        return chunk
    text = getattr(chunk, "text", "") if isinstance(chunk, BaseMessage) else ""
    return text if isinstance(text, str) else ""


class ReadingHeldStream(HeldStream):
    """`HeldStream` that also judges a streamed JSON answer's parsed reading: from the first rewritten escape
    where a parser may read it as a value (`EscapeWatch`) every chunk is held until the stream ended and that reading is judged
    (`reading_items`), so no chunk the parse would decode into unjudged words goes out before it is. Message or
    string chunks; the text read is the chunks' own, joined (as a parser adds them up), whatever the sum kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._escapes = EscapeWatch()
        self._quotes = QuoteWatch()  # a ``"`` between word characters: the list parser reads it away
        self._texts: list[str] = []

    def _holds_to_end(self, chunk: Any, held: Any) -> bool:
        to_end = super()._holds_to_end(chunk, held)  # first: it records every chunk's blocks
        text = _text_of(chunk)
        self._texts.append(text)
        held_json = self._escapes.feed(text)
        return self._quotes.feed(text) or held_json or to_end

    def _end_items(self) -> list[Item]:
        whole = self.whole
        # String chunks (a step after a parser) carry no calls or quotes: the parent has nothing to judge at the end
        # (and would refuse a string sum once chunks were held to it, as they are here from an escape on).
        items: list[Item] = [] if isinstance(whole, str) else super()._end_items()
        text = "".join(self._texts)
        # A YAML escape or tag is looked for in the joined text (split over chunks too): a C scan or two, once.
        if self._escapes.seen or self._quotes.seen or has_decoded_escape(text):
            answer = whole if isinstance(whole, BaseMessage) else None
            items += reading_items(answer, self.context, self.history_turns, text=text)
        return items
