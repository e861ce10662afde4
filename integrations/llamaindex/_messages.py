"""LlamaIndex ``ChatMessage`` lists, read by role and content block into what the guard must judge.

An LLM call's input mixes text of different trust: the user's turns, the assistant's earlier turns
and tool calls, the application's system prompt, tool outputs, and (in RAG) retrieved context. Each
is judged as what it is (DESIGN.md decision 12): user turns as prompts, assistant turns as responses,
tool calls as tool calls, tool outputs as untrusted content. *Every* message new to the model is
judged, not only the last user turn: a chat history can be supplied by the client, so an unsafe turn
followed by "Please answer." or hidden behind a forged assistant turn must not slip through.

Text is read from every block kind of llama-index-core 0.14 that carries text: `TextBlock`,
`ThinkingBlock`, `CitableBlock` and `CitationBlock` (their text parts) and `DocumentBlock` with inline
text data (its ``data``, or a ``data:`` URL); inline images, audio and video too when their declared type is a text type or their bytes are text
(`_media_text`). Media bytes and binary documents (PDF...) carry no text a text guard can read:
they are passed on unjudged (a documented limit; screen them before they reach the LLM). The text a
message's ``additional_kwargs`` carry is judged as the message's too (`carried_text`): a provider may send
it beside the blocks or in their place.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import hashlib
import json
import re
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any
from urllib.parse import unquote_to_bytes

from llama_index.core.base.llms.types import (
    AudioBlock,
    CachePoint,
    ChatMessage,
    ChatResponse,
    CitableBlock,
    CitationBlock,
    CompletionResponse,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
)
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import (
    BasePromptTemplate,
    ChatPromptTemplate,
    PromptTemplate,
    RichPromptTemplate,
    SelectorPromptTemplate,
)
from qwenguard.core.errors import InputTooLarge
from qwenguard.core.formats.content import clean_text
from qwenguard.core.formats.conversations import (
    RunsJudged,
    calls_context_room,
    last_user_text,
    prompt_conversation,
    response_conversation,
    tool_call_conversation,
    untrusted_conversation,
    with_tool_calls,
)
from qwenguard.core.formats.json_reading import arguments_parsed
from qwenguard.core.formats.media import (
    SNIFF_BYTES,
    base64_as_text,
    base64_bytes,
    base64_text_over,
    bytes_as_text,
    labelled_text,
    text_encoding,
)
from qwenguard.core.policy import Decision, Policy
from qwenguard.core.verdict import Stage

from .._common import IDENTIFIER, NO_FIELDS, SEALED, pairs_once, reply_strings

__all__ = [
    "ANSWER_VARIABLES",
    "ASSISTANT_ROLES",
    "CONTEXT_VARIABLES",
    "FRAMEWORK_VARIABLES",
    "QUERY_VARIABLES",
    "Checks",
    "GuardMessage",
    "InputPlan",
    "ScopedSeen",
    "Seen",
    "TemplateCall",
    "answer_marks",
    "prompt_mark",
    "agent_actions",
    "agent_observation",
    "agent_observations",
    "answer_text",
    "block_text",
    "carried_text",
    "codeact_calls",
    "condense_parts",
    "cut_judged_turns",
    "observation_check",
    "observation_text",
    "history_messages",
    "file_turns",
    "joined_variables",
    "message_text",
    "plan_inputs",
    "record_output",
    "guarded_tool_name",
    "plan_template",
    "raw_reasoning",
    "query_wording",
    "react_actions",
    "react_tool_text",
    "renders_blocks",
    "reply_parts",
    "reply_text",
    "resolve_template",
    "role_of",
    "template_actions",
    "template_turns",
    "thinking_extra",
    "tools_text",
    "tool_calls_in",
    "tool_calls_of",
    "value_strings",
    "variable_checks",
    "variable_texts",
    "wire_text",
]

GuardMessage = dict[str, str]
Checks = list[tuple[Stage, list[GuardMessage]]]

#: Template variables that hold the user's own words (LlamaIndex's prompts use ``query_str``).
QUERY_VARIABLES = ("query_str", "query", "question", "user_input", "input")
#: Template variables that hold retrieved or external text: untrusted, screened as documents.
CONTEXT_VARIABLES = ("context_str", "context_msg", "context")
#: The variable LlamaIndex's condense prompts print the stored history into (``messages_to_history_str``).
HISTORY_VARIABLE = "chat_history"
#: Template variables that hold the model's own earlier answer (LlamaIndex's refine prompt): a response.
ANSWER_VARIABLES = ("existing_answer",)

_SYSTEM = (MessageRole.SYSTEM.value, MessageRole.DEVELOPER.value)
_ASSISTANT = (MessageRole.ASSISTANT.value, MessageRole.CHATBOT.value, MessageRole.MODEL.value)
#: The roles of the model's own turns.
ASSISTANT_ROLES = _ASSISTANT
#: The roles of system turns (the application's prompt when one opens the list).
SYSTEM_ROLES = _SYSTEM
_TOOL = (MessageRole.TOOL.value, MessageRole.FUNCTION.value)
_TEXT_DOCUMENT_TYPES = ("text/", "application/json", "application/xml", "application/x-yaml", "application/yaml")


def role_of(message: ChatMessage) -> str:
    return getattr(message.role, "value", str(message.role))


# -- text of blocks ---------------------------------------------------------------------------
def _is_text_type(mimetype: str | None) -> bool:
    """Whether a declared type is one a provider sends as text (``text/*``, JSON, XML, YAML)."""
    return (mimetype or "").lower().startswith(_TEXT_DOCUMENT_TYPES)


def _file_text(raw: bytes, mimetype: str | None) -> str:
    """A file's bytes as text: all of them when its declared type is a text type (a provider labels them so,
    whatever their first bytes), else when they are text all the same (`bytes_as_text`); "" for media."""
    if _is_text_type(mimetype):
        # Its encoding as a reader tells it (UTF-16 by its mark or its zero bytes), and the charset its type names
        # (`labelled_text`); UTF-8 when the start says none (a media signature before the text).
        return labelled_text(raw, mimetype)
    # Untyped, or typed as binary (a PDF, octet-stream, an image): read when its bytes are text all the same.
    return bytes_as_text(raw) or ""


def _document_text(block: DocumentBlock) -> str:
    # Only inline data: the guard never fetches a URL or reads a path on the application's behalf. A ``data:`` URL is
    # inline data: LlamaIndex decodes it locally and OpenAI-style classes send its bytes as a file part (rt60c F3).
    if not block.data:
        return _data_url_text(block.url, block.document_mimetype)
    try:
        raw = block.resolve_document().read()
    except (ValueError, OSError):
        return ""
    return _file_text(raw, block.document_mimetype)


def _media_text(data: Any, mimetype: str | None, budget: int | None = None) -> str:
    """The text of an image's, a video's or an audio clip's inline data (base64, as the block keeps it): a provider
    sends the bytes under their declared type (GoogleGenAI as inline data, ``text/plain`` included), and a model
    reads text as text. Decoded whole under a text type (`_file_text`); otherwise only the start is decoded to tell
    (`base64_as_text`: an image or a video costs no more), and bytes that start as media are no text. ``budget``:
    `InputTooLarge`, not decoded, where the base64 alone proves the text longer (`base64_text_over`)."""
    if isinstance(data, bytes):
        encoded = data.decode("ascii", "replace")
    elif isinstance(data, str):  # an `ImageNode` keeps its base64 as a str
        encoded = data
    else:
        return ""
    if not encoded:
        return ""
    if _is_text_type(mimetype):
        if (over := base64_text_over(encoded, budget)) is not None:
            raise over
        return _file_text(base64_bytes(encoded), mimetype)
    return base64_as_text(encoded, budget=budget) or ""


def _data_url_text(url: Any, mimetype: str | None, budget: int | None = None) -> str:
    """The text of a ``data:`` URL's bytes: LlamaIndex decodes one where a block's inline data would be, and a
    provider sends the bytes inline (GoogleGenAI, under the block's type) or the URL as it is (OpenAI, under the
    URL's own type). Decoded whole when either type is a text type, else read when the bytes are text all the
    same; "" for media and for any other URL (the guard fetches nothing: docs/llamaindex.md). ``budget``: as for
    `_media_text`; a percent-encoded payload is at least a byte for three of its characters."""
    url = str(url) if url is not None else ""
    comma = url.find(",") if url[:5].lower() == "data:" else -1
    if comma < 0:
        return ""
    head, payload = url[5:comma], url[comma + 1 :]  # not ``split``: it takes milliseconds over a 1 MB image's URL
    encoded = head.lower().endswith(";base64")
    # The URL's type with its parameters (a charset it names is read by: `labelled_text`), without ``;base64``
    declared = mimetype if _is_text_type(mimetype) else head[: -len(";base64")] if encoded else head
    if not encoded:  # its bytes percent-encoded
        if not _is_text_type(declared) and not _percent_start_is_text(payload):
            return ""  # only its start decoded to tell: a percent-encoded image cost 0.7 s a MB whole (rt70n F1)
        if budget is not None and len(payload) // 3 > 4 * budget:  # four bytes a character at most
            raise InputTooLarge(f"a data: URL of {len(payload) // 3:,} bytes or more: text over {budget:,} characters")
        return _file_text(unquote_to_bytes(payload), declared)
    if not _is_text_type(declared):
        return base64_as_text(payload, budget=budget) or ""  # only its start decoded to tell: an image costs no more
    if (over := base64_text_over(payload, budget)) is not None:
        raise over
    try:
        return _file_text(base64_bytes(payload), declared)
    except (binascii.Error, ValueError):
        return ""


def _percent_start_is_text(payload: str) -> bool:
    """Are the first `SNIFF_BYTES` bytes of a percent-encoded payload text (`text_encoding`, as `bytes_as_text`)? A byte is at most three
    characters; the start is cut before an escape it would split."""
    start = payload[: 3 * SNIFF_BYTES]
    whole = len(start) == len(payload)
    if not whole:
        cut = start.rfind("%", len(start) - 2)
        start = start[:cut] if cut >= 0 else start
    sample = unquote_to_bytes(start)
    return text_encoding(sample[:SNIFF_BYTES], whole=whole and len(sample) <= SNIFF_BYTES) is not None


def media_data_text(data: Any, url: Any, mimetype: str | None, budget: int | None = None) -> str:
    """The text an image's, a video's or an audio clip's inline data holds (`_media_text`), else its ``data:`` URL's
    (`_data_url_text`), as a content block carries them: "" for media, a path or any other URL (nothing is read or
    fetched). A retrieved node's media are read by it too (`node_text`): an engine sends them as blocks.
    ``budget`` (characters): `InputTooLarge` without decoding data whose size alone proves its text longer."""
    return _media_text(data, mimetype, budget) or _data_url_text(url, mimetype, budget)


#: A cache point's standard values (all that Anthropic's API takes): no words. The Anthropic class sends any other.
_CACHE_VALUES = frozenset({"ephemeral", "5m", "1h"})


#: Keys of a `ThinkingBlock`'s ``additional_information`` whose value is an id: one identifier there is no text.
_THINKING_IDS = frozenset({"id", "type"})


def thinking_extra(block: ThinkingBlock) -> str:
    """The text a thinking block carries beside its content: the strings of its ``additional_information`` that are
    not one token, which a provider sends back (BedrockConverse: ``reasoningText.signature``). A signature is one
    base64 token (`SEALED`), an id one identifier; words there are judged, as LangChain's reader judges them."""
    texts = []
    for key, value in block.additional_information.items():
        if isinstance(value, str) and value.strip():
            token = IDENTIFIER if key in _THINKING_IDS else SEALED
            if token.fullmatch(value) is None:
                texts.append(value)
    return "\n".join(texts)


def block_text(block: Any) -> str:
    """The text one content block carries ("" for tool calls, a standard cache point, media bytes; inline image,
    video and audio data that is text is text, `_media_text`)."""
    if isinstance(block, TextBlock):
        return block.text
    if isinstance(block, ThinkingBlock):
        return "\n".join(t for t in (block.content, thinking_extra(block)) if t)
    if isinstance(block, CitationBlock):
        # Its title and source too: an answer's citation shows them, and a provider may send them back.
        return "\n".join(t for t in (block.title, block.source, block_text(block.cited_content)) if t)
    if isinstance(block, CitableBlock):
        # Anthropic sends it as a search result: its title and source beside the content, for the model to read
        # and cite (a search tool's page: its author chose them).
        return "\n".join(t for t in (block.title, block.source, *map(block_text, block.content)) if t)
    if isinstance(block, CachePoint):
        return "\n".join(v for v in (block.cache_control.type, block.cache_control.ttl) if v not in _CACHE_VALUES)
    if isinstance(block, ImageBlock):
        return media_data_text(block.image, block.url, block.image_mimetype)
    if isinstance(block, VideoBlock):
        return media_data_text(block.video, block.url, block.video_mimetype)
    if isinstance(block, AudioBlock):
        # A format ("mp3"), or a type a client wrote there.
        return media_data_text(block.audio, block.url, block.format)
    if isinstance(block, DocumentBlock):
        # Its title is sent as the file's name, which a model reads too, whatever the file holds.
        return "\n".join(t for t in (block.title, _document_text(block)) if t)
    return ""


def message_text(message: ChatMessage) -> str:
    """All the text a message carries, every text-bearing block joined (tool calls are read apart)."""
    return "\n".join(t for b in message.blocks if (t := block_text(b)))


def answer_text(message: ChatMessage) -> str:
    """The answer's plain text only (`TextBlock`s), what ``message.content`` shows."""
    return "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock))


# -- what a response carries beside its message --------------------------------------------------
def reply_parts(response: ChatResponse | CompletionResponse, *, own: bool = True) -> list[Any]:
    """What a response hands its caller beside its text and blocks: the provider's reply object (``raw``: all of
    BedrockConverse's reply, whose citations, guardrail trace and extra fields no block holds), the message's
    ``additional_kwargs`` and, with ``own``, the response's (a guarded stream's last chunk keeps their numbers only)."""
    parts: list[Any] = [response.raw]
    if isinstance(response, ChatResponse):
        parts.append(response.message.additional_kwargs)
        # A call's id is the provider's, in no judged text: one that is not an identifier holds words (a stream's
        # last chunk has no raw that repeats it). Under "id", identifiers are left out (`opaque`).
        parts.append({"id": [b.tool_call_id for b in response.message.blocks if isinstance(b, ToolCallBlock)]})
    if own:
        parts.append(response.additional_kwargs)
    return [p for p in parts if p]


#: Keys under which a provider's reply object keeps the model's reasoning (lower case, without ``_``): OpenAI-compatible
#: servers' ``reasoning_content`` and ``reasoning``, Anthropic's ``thinking`` blocks, Bedrock's ``reasoningText``.
_REASONING_KEYS = frozenset({"reasoningcontent", "reasoning", "thinking", "reasoningtext"})
#: Keys inside the reasoning that are no words of it (a signature is a token: `reply_strings` judges words there).
_NOT_REASONING = frozenset({"signature", "id", "type"})


def raw_reasoning(raw: Any, budget: int) -> list[str]:
    """The model's reasoning a reply object (a response's ``raw``) holds, the strings under a reasoning key. A chat
    model's reply made a `CompletionResponse` (LlamaIndex's ``chat_to_completion_decorator``) keeps its reasoning
    there alone: it is the model's answer, judged with its text, not third-party content. Read within ``budget``
    items: what is left past it is judged with the rest of ``raw`` (`reply_text`)."""
    found: list[str] = []
    stack: list[tuple[Any, bool]] = [(raw, False)]
    steps = 0
    while stack and steps < budget:
        item, inside = stack.pop()
        steps += 1
        if isinstance(item, str):
            if inside and item.strip():
                found.append(item)
        elif isinstance(item, Mapping):
            entries = []
            for key, value in item.items():
                name = str(key).replace("_", "").lower()
                if not (inside and name in _NOT_REASONING):
                    entries.append((value, inside or name in _REASONING_KEYS))
            stack.extend(reversed(entries))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(value, inside) for value in item]))
        elif callable(getattr(item, "model_dump", None)):  # OpenAI's ChatCompletion, Anthropic's Message...
            stack.append((item.model_dump(), inside))
    return found


def _squeezed(text: str) -> str:
    return "".join(text.split())


#: The most characters `_Known` searches in all, as a multiple of the judged text's length (and at least
#: `_MIN_SEARCH`): a reply of many short strings beside a long answer would make each lookup a scan of it.
_SEARCHES = 64
_MIN_SEARCH = 1 << 22


class _Known:
    """Tells a string that is part of text judged already (whitespace aside: a tool call's JSON is spaced as the
    provider likes): ``raw`` repeats the answer, and judging it again would cost a guard call for nothing. Past
    its search budget it knows nothing more: what is left is judged (bounded by the walk), never skipped unread."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._blob = "\x00".join(_squeezed(t) for t in texts if t)
        self._left = max(_MIN_SEARCH, _SEARCHES * len(self._blob))

    def __call__(self, text: str) -> bool:
        self._left -= len(self._blob) + len(text)
        return self._left >= 0 and _squeezed(text) in self._blob


def _call_texts(calls: Sequence[ToolSelection]) -> list[str]:
    """The text of judged tool calls as a reply may repeat it: names, argument keys and strings, their JSON."""
    texts: list[str] = []
    for call in calls:
        args = call.tool_kwargs
        texts += [call.tool_name, json.dumps(args, ensure_ascii=False, default=str), json.dumps(args, default=str)]
        stack: list[Any] = [args]
        while stack:  # the arguments were judged whole: no bound needed beyond theirs
            item = stack.pop()
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, Mapping):
                texts += map(str, item)
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
    return texts


def reply_text(parts: Sequence[Any], judged: Iterable[str], calls: Sequence[ToolSelection], budget: int) -> str:
    """The text of ``parts`` (`reply_parts`) the guard has not judged, one string a line: what is not provider
    bookkeeping (`reply_strings`, read within ``budget``; `InputTooLarge` past it), nor found in the ``judged``
    text or the judged tool ``calls``. An OpenAI-like ``raw`` repeats only these: nothing is left."""
    if not parts:
        return ""
    known = _Known([*judged, *_call_texts(calls)])
    return "\n".join(reply_strings(list(parts), budget, known))


# -- tool calls -------------------------------------------------------------------------------
def tool_calls_in(llm: Any, response: ChatResponse, *, carried: bool = True) -> list[ToolSelection]:
    """The tool calls a chat response asks for, read the way the agent will read them; a call whose
    arguments are not a JSON object also comes with their text as sent (the LLM's parser may read it as ``{}``,
    but the text is in the message, and reaches whoever shows it). With ``carried``, also the entries of its
    ``additional_kwargs["tool_calls"]`` whose arguments are an object, which no parser may read but a provider
    class sends (`_kwargs_calls`)."""
    calls: list[ToolSelection] | None = None
    getter = getattr(llm, "get_tool_calls_from_response", None)
    if getter is not None:
        try:
            calls = list(getter(response, error_on_no_tool_call=False) or [])
        except NotImplementedError:
            pass
    if calls is None:  # an LLM that cannot parse its own tool calls: read the standard blocks directly
        calls = [
            _selection(b.tool_call_id or "", b.tool_name, b.tool_kwargs)
            for b in response.message.blocks
            if isinstance(b, ToolCallBlock)
        ]
    unparsed = _unparsed_arguments(response.message)
    judged: list[ToolSelection] = []
    for call in calls:
        if call.tool_id in unparsed:
            judged += [_selection(call.tool_id, call.tool_name, text) for _, text in unparsed.pop(call.tool_id)]
            if not call.tool_kwargs:
                continue
        # What the agent runs: a parser may repair text that is not an object (``parse_partial_json`` closes a
        # truncated one and decodes its escapes), so the repaired arguments are judged beside the text as sent.
        judged.append(call)
    judged += [_selection(call_id, name, text) for call_id, texts in unparsed.items() for name, text in texts]
    if not carried:
        return judged
    marks = {_call_mark(c) for c in judged}
    return judged + [c for c in _kwargs_calls(response.message) if _call_mark(c) not in marks]


#: ReAct actions judged in one answer besides the one the agent runs: more are only an attacker's decoys.
MAX_REACT_ACTIONS = 16
_JSON_ESCAPE = re.compile(r"\\(u.{4}|.)", re.DOTALL)
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", '"': '"', "\\": "\\", "/": "/"}
_THOUGHT_FIRST = re.compile(r"\s*Thought: ")
_ACTION_NAME = re.compile(r"[^\n() ]+")


def _react_pick(text: str, last_brace: int) -> tuple[int, int] | None:
    """(where its ``\\nAction:`` line starts, where its ``\\nAction Input:`` line starts) of the action LlamaIndex's
    ``extract_tool_use`` picks, found in linear time: after a leading ``Thought: ``, the first action; without
    one, its ``(.+)`` is greedy, so the LAST ``\\nAction: name`` that has an ``\\nAction Input: `` and a ``{...}``
    after it. Either way the input is the first ``\\nAction Input: `` after the name, its arguments the first
    ``{`` after that to the last ``}`` of the text. ``None``: the parser finds no action."""
    # An action has an input iff its name ends before the last input line that has a ``{`` after it and before
    # the last ``}``: one test per action, not one search.
    last_open = text.rfind("{", 0, last_brace) if last_brace >= 0 else -1
    last_input = text.rfind("\nAction Input: ", 0, last_open) if last_open >= 0 else -1

    def name_end(action: int) -> int:
        name = _ACTION_NAME.match(text, action + len("\nAction: "))
        return -1 if name is None else name.end()

    def picked(action: int) -> tuple[int, int] | None:
        end = name_end(action)
        return None if end < 0 or end > last_input else (action, text.find("\nAction Input: ", end))

    if last_input < 0:
        return None
    thought = _THOUGHT_FIRST.match(text)
    if thought is not None:  # the first action with a name; if it has no input, no later one has
        action = text.find("\nAction: ", thought.end())
        while action >= 0 and name_end(action) < 0:
            action = text.find("\nAction: ", action + 1)
        return None if action < 0 else picked(action)
    action = text.rfind("\nAction: ", 0, last_input)
    while action >= 1:  # ``(.+)`` takes one character at least
        if (found := picked(action)) is not None:
            return found
        action = text.rfind("\nAction: ", 0, action)
    return None


def react_actions(text: str) -> list[ToolSelection]:
    """The tool calls a ReAct step written as text asks for (``\\nAction: name`` then ``\\nAction Input: {...}``),
    with their arguments read as the agent reads them, so that the guard judges what the tool would run
    with, not only the text as written (``\\u006d\\u0069\\u0078`` is "mix" to the agent's JSON reader).

    Found with ``str.find`` rather than the agent's parser, whose regular expression backtracks cubically
    on text with many ``Action:`` lines (5,000 characters: 25 s). First the action the parser runs
    (`_react_pick`: the first after a leading ``Thought: ``, else the last), then the others in order, up to
    `MAX_REACT_ACTIONS` more. As there, an action's arguments run from the first ``{`` after its
    ``Action Input:`` to the last ``}`` of the text. Arguments that are not strict JSON (the agent reads them
    leniently, with ``dirtyjson``) are judged as their text with its escapes decoded.

    Linear in the text however many ``Action Input:`` lines it has: each search resumes where the last one
    stopped (the cap counts actions added, not lines read)."""
    last_brace = text.rfind("}")
    actions: list[ToolSelection] = []
    starts: set[int] = set()

    def add(named: int, at: int, start: int) -> None:
        if start < 0 or start > last_brace or start in starts:  # inputs sharing a brace share their arguments
            return
        starts.add(start)
        words = text[named + len("\nAction:") : at].split()[:1]
        name = _ACTION_NAME.match(words[0]) if words else None
        arguments = text[start : last_brace + 1]
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        decoded = parsed if isinstance(parsed, Mapping) else _decode_escapes(arguments)
        actions.append(_selection(f"react-{len(actions)}", name.group() if name else "tool", decoded))

    if (picked := _react_pick(text, last_brace)) is not None:
        add(*picked, text.find("{", picked[1]))
    named = text.find("\nAction:")  # the last action line before the input line ``at``
    at = text.find("\nAction Input:", named) if named >= 0 else -1
    brace = -1  # the first ``{`` at or after ``at``
    while at >= 0 and len(actions) <= MAX_REACT_ACTIONS:
        if brace < at:  # else no ``{`` lies between the last input line and this one: the same brace
            brace = text.find("{", at)
        if brace < 0 or brace > last_brace:  # nor can any later input line have arguments
            break
        if brace not in starts:
            # Searched from the last action line found, not from the text's start: at most once per action added.
            named = text.rfind("\nAction:", named, at + 1)
            add(named, at, brace)
        at = text.find("\nAction Input:", at + 1)
    return actions


#: How ReActAgent hands its LLM a tool's output (``ObservationReasoningStep.get_content``).
OBSERVATION = "Observation:"


def observation_text(text: str) -> str:
    """The tool output a ReAct agent's turn in a history holds: from its first ``Observation:`` to its end ("" when
    it has none). ReActAgent stores its whole reasoning in memory as ONE assistant message, each tool's output
    after an ``Observation:`` among its thoughts; a ``return_direct`` tool's output never went to the LLM before.
    What follows the first one is judged as untrusted tool output (an injection is a prompt-side category), not
    only as the assistant's answer: to the end, since the output itself may write ``Thought:`` to end its segment
    early."""
    at = text.find(OBSERVATION)
    return text[at:] if at >= 0 else ""


#: How CodeActAgent hands its LLM the output of the code it ran (``handle_tool_call_results``), as a user turn.
CODEACT_RESULT = "Result of executing the code given:"


def agent_observation(previous: ChatMessage | None, text: str) -> bool:
    """Is a user turn with ``text``, right after ``previous``, a tool's output that an agent hands its LLM in a user's
    role, in the exact shape the agent writes it (rt58d F2): ReActAgent's ``Observation: ...`` (its formatter's
    default ``observation_role``) after the assistant turn holding the ReAct action it answers, CodeActAgent's
    ``Result of executing the code given:...`` after the one holding the ``<execute>`` code. A user's own turn that
    merely starts the same way, after no such turn, is the user's prompt."""
    if previous is None or role_of(previous) not in _ASSISTANT:
        return False
    if text.startswith(OBSERVATION):
        return bool(react_actions(wire_text(previous)))
    if text.startswith(CODEACT_RESULT):
        return bool(codeact_calls(wire_text(previous)))
    return False


def agent_observations(messages: Sequence[ChatMessage]) -> set[int]:
    """The indexes of the user turns of ``messages`` that are an agent's tool outputs (`agent_observation`)."""
    found: set[int] = set()
    for i in range(1, len(messages)):
        m = messages[i]
        if role_of(m) == MessageRole.USER.value and agent_observation(messages[i - 1], wire_text(m)):
            found.add(i)
    return found


def observation_check(text: str) -> tuple[bytes, tuple[Stage, list[GuardMessage]]]:
    """The fingerprint and the check of an agent's tool output in a user's role (`agent_observation`): untrusted tool
    output, decided under the stricter of the tool-result and prompt stages' policies (a `ClientToolCheck`). Its text
    form carries no call id to bind it to a call the model made, so it cannot be told from a client's history of the
    same two turns: the shape lets the tool-result policy judge it, never a looser one than the prompt's."""
    return mark("client_tool", text), ClientToolCheck(untrusted_conversation(text, "tool output"))


#: Where ReActAgent's system header lists its tools (``get_react_tool_descriptions``), and the section after them.
_REACT_TOOLS = "> Tool Name: "
_REACT_AFTER_TOOLS = "\n## Output Format"


def react_tool_text(text: str) -> str:
    """The tool descriptions a ReAct system header lists (names, descriptions, argument schemas: an MCP server's or a
    hub's text), from the first ``> Tool Name:`` to the header's LAST ``## Output Format`` (a description that writes
    one does not end the section early), or to its end; "" for a system prompt without them."""
    at = text.find(_REACT_TOOLS)
    if at < 0:
        return ""
    end = text.rfind(_REACT_AFTER_TOOLS, at)
    return text[at : end if end >= 0 else len(text)]


def _tool_spec(item: Any) -> Any:
    """A tool as JSON shows it: a LlamaIndex tool by its metadata (what OpenAI's classes send), a model's dump."""
    to_openai_tool = getattr(getattr(item, "metadata", None), "to_openai_tool", None)
    if callable(to_openai_tool):
        return to_openai_tool()
    if isinstance(item, BaseModel):
        return item.model_dump()
    return _attributes(item) or str(item)


def tools_text(tools: Any) -> str:
    """The text of the tool list a provider class builds for a request (``tools=``: the names, descriptions and
    parameter schemas the model reads) as JSON, or its strings when it is no JSON."""
    try:
        return json.dumps(tools, ensure_ascii=False, default=_tool_spec)
    except (TypeError, ValueError, RecursionError):
        return "\n".join(_strings(tools))


#: The tool CodeActAgent runs the code of an answer's ``<execute>`` blocks with.
CODEACT_TOOL = "execute"


def codeact_calls(text: str) -> list[ToolSelection]:
    """The call CodeActAgent makes from an answer: the code of every ``<execute>...</execute>`` block, stripped
    and joined by a blank line (its ``re.findall(r"<execute>(.*?)</execute>", text, re.DOTALL)``, found with
    ``str.find``: linear on unclosed tags), run as ``execute({"code": ...})``; none without a block."""
    blocks: list[str] = []
    at = text.find("<execute>")
    while at >= 0:
        end = text.find("</execute>", at + len("<execute>"))
        if end < 0:
            break
        blocks.append(text[at + len("<execute>") : end].strip())
        at = text.find("<execute>", end + len("</execute>"))
    if not blocks:
        return []
    return [_selection("codeact", CODEACT_TOOL, {"code": "\n\n".join(blocks)})]


def agent_actions(texts: Iterable[str]) -> list[ToolSelection]:
    """The tool calls agents read out of an answer's text (ReAct actions, CodeAct code), in each of ``texts``
    (what the agent parses: the message's content, or its streamed deltas), each distinct call once."""
    calls: list[ToolSelection] = []
    judged: set[bytes] = set()
    for text in dict.fromkeys(t for t in texts if t):
        for call in [*codeact_calls(text), *react_actions(text)]:
            if (key := _call_mark(call)) not in judged:
                judged.add(key)
                calls.append(call)
    return calls


#: The tool name a text-to-SQL step's query is judged as calling: the SQL database it runs against.
SQL_TOOL = "sql_database"
_SQL_VARIABLES = frozenset({"query_str", "schema", "dialect"})


def _sub_question_calls(parser: Any, text: str) -> list[ToolSelection]:
    """The tools a sub-question generator's answer runs: the template's own parser reads it as the generator does
    (``LLMQuestionGenerator``: ``SubQuestionOutputParser``, JSON then YAML), each ``{sub_question, tool_name}`` a call of
    that tool with the sub-question as its input (a ``QueryEngineTool``'s ``input``); none where it cannot parse it
    (nor can the generator)."""
    try:
        parsed = parser.parse(text)
    except Exception:  # noqa: BLE001 - the generator's parse fails the same way: nothing runs
        return []
    items = getattr(parsed, "parsed_output", parsed)
    calls: list[ToolSelection] = []
    for item in items if isinstance(items, list) else []:
        name, question = getattr(item, "tool_name", None), getattr(item, "sub_question", None)
        if isinstance(name, str) and isinstance(question, str):
            calls.append(_selection(f"sub-question-{len(calls)}", name, {"input": question}))
    return calls


def _sql_calls(text: str) -> list[ToolSelection]:
    """The query a text-to-SQL step's answer runs, read as ``NLSQLRetriever``'s ``DefaultSQLParser`` reads it: from the
    first ``SQLQuery:`` to the first ``SQLResult:`` after it, code fences removed."""
    at = text.find("SQLQuery:")
    if at >= 0:
        text = text[at + len("SQLQuery:") :]
    end = text.find("SQLResult:")
    sql = (text if end < 0 else text[:end]).replace("```sql", "").replace("```", "").strip()
    return [_selection("sql", SQL_TOOL, {"query": sql})] if sql else []


def template_actions(template: Any) -> Callable[[str], list[ToolSelection]] | None:
    """How the component that made a template call reads actions out of its answer, which it then runs (rt58d F1), or
    None: a sub-question generator's template (its ``SubQuestionOutputParser``, or the ``sub_question`` prompt type
    with a parser) names the tools to run and their inputs (`_sub_question_calls`); a text-to-SQL template (the
    ``text_to_sql`` prompt type, or the ``query_str``/``schema``/``dialect`` variables ``NLSQLRetriever`` fills) the
    SQL to run (`_sql_calls`)."""
    from llama_index.core.prompts.prompt_type import PromptType
    from llama_index.core.question_gen.output_parser import SubQuestionOutputParser

    parser = getattr(template, "output_parser", None)
    metadata = getattr(template, "metadata", None)
    kind = metadata.get("prompt_type") if isinstance(metadata, Mapping) else None
    if isinstance(parser, SubQuestionOutputParser) or (kind == PromptType.SUB_QUESTION and parser is not None):
        return functools.partial(_sub_question_calls, parser)
    variables = getattr(template, "template_vars", None)
    if kind == PromptType.TEXT_TO_SQL or (isinstance(variables, list) and _SQL_VARIABLES <= set(variables)):
        return _sql_calls
    return None


def _decode_escapes(text: str) -> str:
    """JSON string escapes decoded as ``dirtyjson`` (the ReAct agent's reader) decodes them, in linear time.

    Its ``\\u`` takes the next four characters to Python's ``int(x, 16)``, which also reads ``+061``, `` 061``
    and ``0_61`` as 0x61 ("a"): decoded the same way here, so that "Mix \\u+061mmonium" is judged as the tool
    would get it. An escape it refuses (``\\users``, ``\\q``) is kept as written: the agent then reads the
    arguments without decoding them, as written too."""

    def one(match: re.Match[str]) -> str:
        escape = match.group(1)
        if len(escape) == 5 and escape[2] not in "xX":
            try:
                return chr(int(escape[1:], 16))
            except ValueError:
                pass
        return _ESCAPED.get(escape, match.group(0))

    decoded = _JSON_ESCAPE.sub(one, text)
    # A pair of \\uXXXX escapes may spell one character outside the BMP (a surrogate pair).
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _selection(call_id: str, name: str, arguments: Mapping[str, Any] | str) -> ToolSelection:
    if isinstance(arguments, str):
        # Not an object: kept as text (for judging only; `ToolSelection` validates a dict).
        return ToolSelection.model_construct(tool_id=call_id, tool_name=name, tool_kwargs=arguments)  # type: ignore[arg-type]
    return ToolSelection(tool_id=call_id, tool_name=name, tool_kwargs=dict(arguments))


def _unparsed_arguments(message: ChatMessage) -> dict[str, list[tuple[str, str]]]:
    """Tool call id -> [(name, argument text)] for each call in ``message`` whose arguments arrived as text that is
    not a JSON object (`ToolCallBlock` or an ``additional_kwargs["tool_calls"]`` entry, `_call_parts`). A list: a
    client's history can give two calls one id, and each text is sent."""
    found: dict[str, list[tuple[str, str]]] = {}
    for b in message.blocks:
        if isinstance(b, ToolCallBlock) and isinstance(b.tool_kwargs, str) and not _is_object(b.tool_kwargs):
            found.setdefault(b.tool_call_id or f"block-{len(found)}", []).append((b.tool_name, b.tool_kwargs))
    # Each id's texts as a set, for one lookup per entry: comparing with every earlier text of the id is
    # quadratic in a history that gives thousands of calls one id.
    seen: dict[str, set[str]] = {}
    for call in message.additional_kwargs.get("tool_calls") or ():
        call_id, name, text = _call_parts(call)
        if isinstance(text, str) and not _is_object(text):
            key = str(call_id or f"call-{len(found)}")
            texts = found.setdefault(key, [])
            if key not in seen:
                seen[key] = {t for _, t in texts}
            if text not in seen[key]:  # a block and its kwargs entry: one text, judged once
                seen[key].add(text)
                texts.append((str(name or "tool"), text))
    return found


def _field(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, Mapping) else getattr(entry, key, None)


def _arguments_key(call: Any) -> str:
    """Where a call entry without a ``function`` keeps its arguments: Anthropic's ``input``, else GoogleGenAI's
    ``args`` (which that class reads of a dict or of any object, ``.name`` and ``.args``)."""
    return "input" if _field(call, "input") is not None else "args"


def _call_parts(call: Any) -> tuple[Any, Any, Any]:
    """(id, name, arguments) of an ``additional_kwargs["tool_calls"]`` entry, a dict or an object (``None`` where
    missing): OpenAI's and Ollama's ``{"function": {"name", "arguments"}}`` (JSON text; Ollama's an object),
    Anthropic's legacy ``{"id", "name", "input": {...}}``, which the Anthropic class still sends as a ``tool_use``,
    or GoogleGenAI's ``{"name", "args": {...}}``, which it sends as a ``functionCall``."""
    function = _field(call, "function")
    if function is not None:
        return _field(call, "id"), _field(function, "name"), _field(function, "arguments")
    return _field(call, "id"), _field(call, "name"), _field(call, _arguments_key(call))


def _kwargs_calls(message: ChatMessage) -> list[ToolSelection]:
    """The ``additional_kwargs["tool_calls"]`` entries whose arguments are an object, or JSON text of one (those
    that are not: `_unparsed_arguments`), as tool calls. The Anthropic and Ollama classes send such entries (with
    their dict arguments) in any role, and their parsers read tool-call blocks only."""
    calls: list[ToolSelection] = []
    for entry in message.additional_kwargs.get("tool_calls") or ():
        call_id, name, arguments = _call_parts(entry)
        if isinstance(arguments, str):
            arguments = _object_of(arguments) if arguments.strip() else arguments
        if isinstance(name, str) and isinstance(arguments, Mapping):
            calls.append(_selection(str(call_id or f"call-{len(calls)}"), name, arguments))
    return calls


def _is_object(text: str) -> bool:
    """Whether argument text parses to a JSON object that says what its text says (`_object_of`); no text is one
    (the call is judged as ``name({})``)."""
    return not text.strip() or _object_of(text) is not None


def _object_of(text: str) -> dict[str, Any] | None:
    """The JSON object argument text says, or None. One with a key written twice is none (the parser keeps the last
    value, the model reads both): judged as written, as text that does not parse."""
    try:
        value = json.loads(text, object_pairs_hook=pairs_once)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def tool_calls_of(llm: Any, message: ChatMessage, *, carried: bool = True) -> list[ToolSelection]:
    """The tool calls in an assistant message of a history (blocks, or ``additional_kwargs["tool_calls"]`` entries
    in OpenAI's, Ollama's or Anthropic's form; ``carried``: see `tool_calls_in`)."""
    if not any(isinstance(b, ToolCallBlock) for b in message.blocks) and not message.additional_kwargs.get(
        "tool_calls"
    ):
        return []
    try:
        return tool_calls_in(llm, ChatResponse(message=message), carried=carried)
    except Exception:
        return tool_calls_in(None, ChatResponse(message=message), carried=carried)


def _tool_names(messages: Sequence[ChatMessage]) -> dict[str, str]:
    """Tool call id → tool name, from the assistant messages that asked for the calls."""
    names: dict[str, str] = {}
    for m in messages:
        for b in m.blocks:
            if isinstance(b, ToolCallBlock) and b.tool_call_id:
                names[b.tool_call_id] = b.tool_name
        for call in m.additional_kwargs.get("tool_calls") or ():
            call_id, name, _ = _call_parts(call)
            call_id = getattr(call, "tool_id", None) or call_id
            name = getattr(call, "tool_name", None) or name
            if call_id and name:
                names[str(call_id)] = str(name)
    return names


def _unmatched_id(message: ChatMessage, names: Mapping[str, str]) -> str:
    """A tool message's ``tool_call_id`` that is one identifier and the id of no call of its history (``names``,
    `_tool_names`), else "". GoogleGenAI sends an id it cannot map to a call as the function's name
    (``tool_id_to_name.get(id, id)``), and the model reads a name: judged as the message's text, as names are. An id
    that is not one identifier is judged with the message's text already (`carried_text`)."""
    call_id = message.additional_kwargs.get("tool_call_id")
    if not isinstance(call_id, str) or call_id in names or IDENTIFIER.fullmatch(call_id) is None:
        return ""
    return call_id


# -- what was judged already --------------------------------------------------------------------
#: What `_norm` strips from a text's ends: ASCII whitespace, which reads as nothing there.
_ENDS = " \t\n\r"


def _norm(text: str) -> str:
    """``text`` as the guard reads it (`clean_text`: control runs between letters as one invisible separator, other
    controls removed), without the ASCII whitespace at its ends (a chat engine stores an answer stripped). Nothing
    else is folded: ``str.split()`` also split on NEL and the information separators (U+001C-U+001F), which the guard
    reads as a hidden place between letters, so a request that splits a word with one took the fingerprint of the
    spaced text judged safe (rt54c F10)."""
    return clean_text(text).strip(_ENDS)


def mark(kind: str, *parts: str) -> bytes:
    """A fingerprint of one judged input: its kind and the parts of its check, each as the guard reads it (`_norm`)."""
    h = hashlib.blake2b(kind.encode(), digest_size=16)
    for p in parts:
        h.update(b"\x1f" + _norm(p).encode("utf-8", "surrogatepass"))
    return h.digest()


def answer_mark(question: str, text: str) -> bytes:
    """An assistant turn judged as a response to ``question`` (the user turn before it): what it answers is part of
    its verdict, so a text let through after one question is not exempt after another (rt54c F4)."""
    return mark("assistant", question, text)


def _call_key(call: ToolSelection, question: str) -> bytes:
    """A tool call judged after ``question`` (the user turn it was judged with): remembered as that check."""
    return mark("tool_call", question, *_call_parts_text(call))


def _call_parts_text(call: ToolSelection) -> tuple[str, str]:
    args = call.tool_kwargs
    if isinstance(args, str) and args.strip():
        parsed = _object_of(args)
        args = args if parsed is None else parsed
    return call.tool_name, json.dumps(args, sort_keys=True, default=str, ensure_ascii=False)


def _call_mark(call: ToolSelection) -> bytes:
    # Argument text is marked as the object it says only when it says one (`_object_of`): text writing a key twice
    # is marked as written, so that a client cannot pass it off as a call judged before with the last value alone.
    return mark("tool_call", *_call_parts_text(call))


def _turn_bytes(role: str, text: str) -> bytes:
    data = _norm(text).encode("utf-8", "surrogatepass")
    return b"%s\x1f%d\x1f%s" % (role.encode(), len(data), data)


class _Context:
    """The fingerprint of the turns a check reads, in order, grown a turn at a time (each turn's text hashed once,
    the state copied: linear in a history's length). A fingerprint is of the check made (rt60d F3): a turn judged
    after other turns is marked with them, and stands for no check of it alone or after other turns."""

    __slots__ = ("_h", "turns", "_first")

    def __init__(self, h: Any = None, turns: int = 0, first: tuple[str, str] | None = None) -> None:
        self._h = h if h is not None else hashlib.blake2b(b"context", digest_size=16)
        self.turns = turns
        self._first = first

    def then(self, role: str, text: str, turn: bytes | None = None) -> _Context:
        """These turns and one more (``turn``: its `_turn_bytes`, when known)."""
        h = self._h.copy()
        h.update(_turn_bytes(role, text) if turn is None else turn)
        return _Context(h, self.turns + 1, (role, text) if self.turns == 0 else None)

    @staticmethod
    def _mark(kind: str, h: Any) -> bytes:
        return hashlib.blake2b(kind.encode() + b"\x1f" + h.digest(), digest_size=16).digest()

    def prompt_mark(self) -> bytes:
        """The fingerprint of a prompt check of these turns (the last, the user's, judged after the others): alone,
        the same check as an earlier user turn's (``mark("user", text)``)."""
        if self._first is not None and self._first[0] == "user":
            return mark("user", self._first[1])
        return self._mark("prompt", self._h)

    def answer_mark(self, text: str, turn: bytes | None = None) -> bytes:
        """The fingerprint of an answer ``text`` judged after these turns (ending with the user turn it answers): after
        that turn alone, the same check as an earlier answer's (`answer_mark`). ``turn``: its `_turn_bytes`."""
        if self._first is not None and self._first[0] == "user":
            return answer_mark(self._first[1], text)
        h = self._h.copy()
        h.update(_turn_bytes("assistant", text) if turn is None else turn)
        return self._mark("answer", h)


def _context_of(conversation: Sequence[GuardMessage]) -> _Context:
    context = _Context()
    for turn in conversation:
        context = context.then(str(turn.get("role", "")), str(turn.get("content", "")))
    return context


def prompt_mark(conversation: Sequence[GuardMessage]) -> bytes:
    """The fingerprint of a prompt check of ``conversation`` (its last turn, the user's, after the turns before it),
    as `plan_inputs` finds it for that turn after the same turns in a later history."""
    return _context_of(conversation).prompt_mark()


def answer_marks(message: ChatMessage, calls: Sequence[ToolSelection], prompt: Sequence[GuardMessage]) -> list[bytes]:
    """Fingerprints of an answer the guard let through after ``prompt`` (the conversation it was judged against, the
    latest user turn last), as it will come back in the next history after that turn (chat engines keep only the
    stripped answer text; agents keep the whole message): the check made, the turns before included (rt60d F3).
    Its tool calls were judged after the conversation (`tool_call_conversation`: the latest user turn kept whole);
    a history's calls are judged after that turn alone (`plan_inputs`): marked by it."""
    context = _context_of(prompt)
    # The latest user turn, the last one `tool_call_conversation` reads: a prompt ending in a prefill has an assistant
    # turn last, and marking its calls as judged after no question skipped them after none (rt64i F2).
    question = last_user_text(prompt) or "" if prompt else ""
    marks = [context.answer_mark(t) for t in {message_text(message), answer_text(message)} if t.strip()]
    return marks + [_call_key(c, question) for c in calls]


#: The tool calls a `GuardedLLM` of this process returned as the model's (judged, let through): a tool message answering
#: one of them is the output of a tool the application ran for the model. Any other tool message of a call's input (a
#: client's history can hold one, with a forged call before it) is the client's text in a tool's role (rt54c F1). A
#: call's id reaches the client (FunctionAgent's ``ToolCall`` events, a history an API hands back), so the call alone
#: cannot make a text tool output (rt54e E4): each call is bound to the one output that is the tool's (`own_output`).
#: A binding is made only in the run that made the call, on the very answer the guarded LLM returned (the message
#: object an agent or application puts back in its next call's input: `_Answers`): ids are no secret and not unique
#: (TGI numbers every answer's calls from "0", Kimi-style servers write ``functions.web_search:0``), so a call's id,
#: name and arguments, the same in every user's run, never bound an output for all of them (rt60d F2: one user's run
#: made another's real output a client's text; a client could bind a popular call to its own text). Bounded, oldest
#: first: a call dropped is no longer own (its outputs are then the client's).
_OWN_CALLS_KEPT = 65536


def _own_call_key(call: ToolSelection) -> bytes:
    return mark("own_call", str(call.tool_id), *_call_parts_text(call))


def remember_own_calls(calls: Sequence[ToolSelection], answer: ChatMessage | None = None) -> None:
    """Remember ``calls`` (``answer``'s, let through) as the model's own: the first output of each a `GuardedLLM` reads
    after that very ``answer`` is tool output (`own_output`)."""
    keys = [_own_call_key(c) for c in calls if isinstance(c.tool_id, str) and c.tool_id.strip()]
    if keys:
        _RETURNED.add(keys)
        if answer is not None:
            _ANSWERS.add(answer, keys)


def own_call(call: ToolSelection | None) -> bool:
    """Did a guarded LLM of this process return ``call`` as the model's (`remember_own_calls`)?"""
    return call is not None and _own_call_key(call) in _RETURNED


def own_output(call: ToolSelection | None, text: str, *, bind: bool = False, answer: ChatMessage | None = None) -> bool:
    """Is ``text`` the output of ``call``, a call a guarded LLM of this process returned (`own_call`), held by
    ``answer`` (the message of the input that holds it)? The call alone makes no text the tool's (rt54e E4):

    - a text a tool `guard_tool` wraps produced for the call's arguments (`record_output`, as the wrapper returned
      it), wherever it is read;
    - the call of an answer the guarded LLM returned, as it returned it (``answer`` is that message object: the run
      that made the call): the first output a `GuardedLLM` reads after it (``bind``: its chat input, where an agent
      hands its model the tool's output in the call after the one that asked for it) is bound to it as the tool's,
      and from then on any other text is the client's; without ``bind`` (a memory, a callback handler) a call with no
      output bound has none, unless its tool produced the text;
    - any other (the history came back as copies: a memory's store, a later request): only an output bound to the
      same call in the run that made it (`_BOUND`), or that its tool produced for a call a guarded LLM returned."""
    if call is None:
        return False
    name, arguments = _call_parts_text(call)
    # A text a wrapped tool produced for these arguments binds wherever it is read. Any other text is bound only in the
    # run that made the call (the answer object): a tool's name says nothing more, since the names `guard_tool` wraps
    # are the process's, and an unwrapped tool of the same name in another agent had every output refused as a
    # client's (seen in the full suite, where another test wraps a `web_search`).
    produced = mark("guarded_tool", name) in _GUARDED_TOOLS and mark("produced", name, arguments, text) in _PRODUCED
    key, output = _own_call_key(call), mark("own_output", text)
    bound = _ANSWERS.output(answer, key, output, bind=bind or produced)
    if bound is not None:
        return bound
    return mark("bound_output", key.hex(), output.hex()) in _BOUND or (produced and key in _RETURNED)


def guarded_tool_name(name: str) -> None:
    """Remember that a tool named ``name`` is wrapped by `guard_tool`: its calls' outputs are the tool's only as it
    produced them (`record_output`)."""
    _GUARDED_TOOLS.add([mark("guarded_tool", name)])


def record_output(name: str, arguments: Mapping[str, Any], blocks: Sequence[Any]) -> None:
    """Remember the output (its content ``blocks``) a wrapped tool named ``name`` returned for ``arguments``, as an
    agent hands it to its LLM (a tool message of those blocks: `own_output`)."""
    text = "\n".join(t for b in blocks if (t := block_text(b)))
    args = json.dumps(dict(arguments), sort_keys=True, default=str, ensure_ascii=False)
    _PRODUCED.add([mark("produced", name, args, text)])


# -- text carried in additional_kwargs -----------------------------------------------------------
#: Keys whose values link or label (ids, types, indexes): one identifier there is no text a model reads as words, where
#: the message's own schema puts it (`_FIELD`). A name is read (a tool's name, a speaker's), and so is a list under
#: one of these keys.
_LINK_KEYS = frozenset({"id", "tool_call_id", "call_id", "type", "index", "reference_audio_id"})
#: Keys of the OpenAI message and tool-call schema: not judged as words. Any other key is text a provider may print
#: (LlamaIndex's default ``messages_to_prompt`` writes a message's whole ``additional_kwargs`` into the prompt).
_SCHEMA_KEYS = _LINK_KEYS | {"name", "function", "arguments", "tool_calls", "function_call", "role", "content", "audio"}


# Where a value sits in ``additional_kwargs``: a field of the message's own schema (a key of the mapping, a field of
# a ``tool_calls`` entry or of its ``function``, of a ``function_call``), the ``tool_calls`` list, one of its entries,
# a ``function``; anything else is text (a tool's arguments, OpenAI's ``arguments`` and Anthropic's ``input`` above
# all: an identifier there is the call's input, which the model reads; a ``cache_control``'s fields).
_TEXT, _FIELD, _ENTRIES, _ENTRY, _FUNCTION = range(5)
_TOP = {"tool_calls": _ENTRIES, "function_call": _FUNCTION}


def _inside(where: int, key: str) -> int:
    """Where the value under ``key`` of a mapping at ``where`` sits."""
    if where not in (_ENTRY, _FUNCTION) or key in ("arguments", "input"):
        return _TEXT
    return _FUNCTION if where == _ENTRY and key == "function" else _FIELD


def _strings(value: Any, key: str | None = None, where: int = _TEXT) -> Iterator[str]:
    """Every string ``value`` holds (mapping keys but schema keys and values, sequence items, a pydantic model's
    fields), depth first, except one identifier under a link key where the message's schema puts it (``where``:
    `_FIELD`; never inside a tool's arguments). Without recursion (a client's JSON may nest as deep as it likes),
    each container once."""
    stack: list[tuple[Any, str | None, int]] = [(value, key, where)]
    walked: set[int] = set()  # containers read once: one that holds itself is not read forever
    dumps: list[Any] = []  # a model's dump lives as long as the walk: a freed one's id is the next one's
    while stack:
        item, at, where = stack.pop()
        if not isinstance(item, str):
            if id(item) in walked:
                continue
            walked.add(id(item))
        if isinstance(item, str):
            if not (where == _FIELD and at in _LINK_KEYS and IDENTIFIER.fullmatch(item)):
                yield item
        elif isinstance(item, Mapping):
            found: list[tuple[Any, str | None, int]] = []
            for name, v in item.items():
                name = str(name)
                if name not in _SCHEMA_KEYS:
                    found.append((name, None, _TEXT))  # a key is text too
                found.append((v, name, _inside(where, name)))
            stack.extend(reversed(found))
        elif isinstance(item, (list, tuple)):
            # A list of identifiers can spell a sentence; the items of ``tool_calls`` are its entries.
            inner = _ENTRY if where == _ENTRIES else _TEXT
            stack.extend(reversed([(v, None, inner) for v in item]))
        elif isinstance(item, BaseModel):  # the OpenAI client's tool call objects, sent as their dump
            dumps.append(item.model_dump())
            stack.append((dumps[-1], at, where))
        elif fields := _attributes(item, entry=where == _ENTRY):
            dumps.append(fields)
            stack.append((fields, at, where))


def value_strings(value: Any, budget: int, what: str = "value") -> list[str]:
    """Every non-blank string ``value`` holds, depth first: mapping keys and values, sequence and set items, a pydantic
    model's fields, an object's public data attributes (`_attributes`). Bytes that are text are read as text (an
    app may decode and show them); binary data and numbers hold none. Walked without
    recursion, each container once, and only until past ``budget`` (a string counts its length, anything else one:
    the guard's ``max_chars``): a walk cut short raises `InputTooLarge`, since what is left would go unjudged."""
    texts: list[str] = []
    total = 0
    stack: list[Any] = [value]
    walked: set[int] = set()
    dumps: list[Any] = []  # a model's dump lives as long as the walk: a freed one's id is the next one's
    while stack:
        if total > budget:
            raise InputTooLarge(f"{what} holds over max_chars={budget:,} characters of text; it cannot be judged whole")
        item = stack.pop()
        total += 1
        room = budget - total + 1  # items beyond it cannot be reached before the walk stops
        if isinstance(item, (bytes, bytearray)):
            item = _bytes_text(item, room)
        if isinstance(item, str):
            if item.strip():
                texts.append(item)
                total += len(item) - 1
            continue
        if isinstance(item, (int, float, bytes, bytearray, memoryview)) or item is None or id(item) in walked:
            continue
        walked.add(id(item))
        if isinstance(item, Mapping):
            pairs = [part for k, v in islice(item.items(), room) for part in (k, v)]
            stack.extend(reversed(pairs))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(reversed(list(islice(item, room))))
        elif isinstance(item, BaseModel):
            dumps.append(item.model_dump())
            stack.append(dumps[-1])
        elif fields := _attributes(item):
            dumps.append(fields)
            stack.append(fields)
    if total > budget:
        raise InputTooLarge(f"{what} holds over max_chars={budget:,} characters of text; it cannot be judged whole")
    return texts


def _bytes_text(data: bytes | bytearray, room: int) -> str | None:
    """The text ``data`` holds, read no further than the walk can take (``room`` characters; a 64 MB thumbnail was
    decoded whole: rt52e F5): UTF-8 (a stray invalid byte does not hide the rest), UTF-16 (a byte-order mark, or
    every other byte zero), else the readable runs of six characters or more between undecodable bytes (text padded
    with junk to look binary: rt52e F1). ``None``: nothing readable. Text in a legacy code page (GBK, cp1251) reads as
    such runs only where it is ASCII."""
    head = bytes(data[: 4 * max(room, 0) + 4])
    marked = head[:2] in (b"\xff\xfe", b"\xfe\xff")
    if marked or head.count(0) * 3 >= len(head):  # NULs are valid UTF-8: tried first
        wide = head.decode("utf-16" if marked else "utf-16-le", errors="replace")
        if wide.count("\ufffd") * 10 <= len(wide):
            return wide
    text = head.decode("utf-8", errors="replace")
    if text.count("\ufffd") * 10 <= len(text):
        return text
    runs = _READABLE_RUN.findall(text)
    return " ".join(runs) if runs else None


#: A run of characters that decoded and are no control characters (`_bytes_text`).
_READABLE_RUN = re.compile(r"[^\ufffd\x00-\x08\x0b-\x1f\x7f]{6,}")


#: What a provider class reads of a tool-call entry that is an object: read as attributes too (a property).
_ENTRY_ATTRIBUTES = ("id", "name", "function", "input", "args", "thought_signature")


def _attributes(item: Any, *, entry: bool = False) -> dict[str, Any]:
    """The public data attributes of an object that is no mapping, sequence or pydantic model (a `SimpleNamespace`,
    a dataclass, a plain class's instance): its dataclass fields and ``__dict__``, what its repr shows and a
    provider class reads (GoogleGenAI sends a tool-call entry's ``.name`` and ``.args``), and for an ``entry`` the
    attributes providers read of one (`_ENTRY_ATTRIBUTES`). Empty for a value that holds none (a number, bytes)."""
    if isinstance(item, NO_FIELDS):
        return {}
    found: dict[str, Any] = {}
    if dataclasses.is_dataclass(item):
        found.update((f.name, getattr(item, f.name, None)) for f in dataclasses.fields(item))
    found.update(getattr(item, "__dict__", None) or {})
    if entry:
        found.update((key, value) for key in _ENTRY_ATTRIBUTES if (value := getattr(item, key, None)) is not None)
    return {str(k): v for k, v in found.items() if not str(k).startswith("_")}


def _unjudged(call: Any, judged: set[bytes]) -> Any:
    """A tool call entry of ``additional_kwargs``, without its function (its name and input) when that was judged
    as a tool call."""
    _, name, arguments = _call_parts(call)
    if not isinstance(name, str) or not isinstance(arguments, (str, Mapping)):
        return call
    if _call_mark(_selection("", name, arguments)) not in judged:
        return call
    if isinstance(call, Mapping):
        fields: Mapping[str, Any] = call
    else:
        fields = call.model_dump() if isinstance(call, BaseModel) else _attributes(call, entry=True)
    called = ("function",) if _field(call, "function") is not None else ("name", _arguments_key(call))
    return {k: v for k, v in fields.items() if k not in called}


def carried_text(message: ChatMessage, calls: Sequence[ToolSelection] = ()) -> str:
    """The text a message's ``additional_kwargs`` carry, which a provider may send with it or in its place.

    LlamaIndex's OpenAI serializer merges them into the message it sends when they hold a ``"tool_calls"`` or
    ``"function_call"`` key (``{"function_call": None, "content": ...}`` replaces the text), and its Responses
    serializer sends each ``"tool_calls"`` entry as an input item of its own; the Anthropic and Ollama classes send
    the entries in any role (`_call_parts`): every string in them is read, whatever the key, and the keys
    themselves but the message schema's (`_SCHEMA_KEYS`: the default ``messages_to_prompt`` prints the whole
    mapping). Left out: one identifier under a link key (an id, a type) where the message's schema puts it, never
    inside a tool's arguments (`_strings`), and the tool calls in ``calls`` (judged as tool calls). A ``"role"``
    that differs from the message's own raises `ValueError`: the message would be sent in a role it was not judged
    in (a system turn, never judged, sent as a user turn)."""
    kwargs = message.additional_kwargs
    own, claimed = role_of(message), kwargs.get("role")
    if claimed is not None and str(getattr(claimed, "value", claimed)) != own:
        raise ValueError(
            f"a {own!r} message has additional_kwargs['role']={claimed!r}: a provider would send it in that role, "
            "which it was not judged in; refused (drop the 'role' key, or give the message that role)"
        )
    judged = {_call_mark(c) for c in calls}
    parts: list[str] = []
    for key, value in kwargs.items():
        if key == "role":
            continue
        if key == "tool_calls" and judged and isinstance(value, (list, tuple)):
            value = [_unjudged(call, judged) for call in value]
        if str(key) not in _SCHEMA_KEYS and str(key).strip():
            parts.append(str(key))
        parts.extend(t for t in _strings(value, str(key), _TOP.get(str(key), _FIELD)) if t.strip())
    return "\n".join(parts)


def wire_text(message: ChatMessage, calls: Sequence[ToolSelection] = ()) -> str:
    """What a provider may send as a message's text: its blocks' text, the tool-call blocks not in ``calls``
    (`block_calls_text`), then what its ``additional_kwargs`` carry (`carried_text`; raises `ValueError` for a
    ``"role"`` there that is not the message's)."""
    parts = (message_text(message), block_calls_text(message, calls), carried_text(message, calls))
    return "\n".join(t for t in parts if t)


def block_calls_text(message: ChatMessage, calls: Sequence[ToolSelection] = ()) -> str:
    """The `ToolCallBlock`s of a message that are not among ``calls`` (judged as tool calls), as the guard reads a
    tool call (``Tool call: name({...})``), and any block's ``tool_call_id`` that is not an identifier. The OpenAI
    serializer sends a message's tool-call blocks as its ``tool_calls`` whatever its role (a chat template may show
    a user turn holding them as the assistant's call), and the ids with them."""
    judged = {_call_mark(c) for c in calls}
    lines: list[str] = []
    for block in message.blocks:
        if not isinstance(block, ToolCallBlock):
            continue
        call = _selection(block.tool_call_id or "", block.tool_name, block.tool_kwargs)
        if _call_mark(call) not in judged:
            lines.append(with_tool_calls(None, [(block.tool_name, block.tool_kwargs)]))
        if block.tool_call_id and not IDENTIFIER.fullmatch(block.tool_call_id):
            lines.append(block.tool_call_id)
    return "\n".join(lines)


#: ``role: `` at a line's start, as LlamaIndex's ``messages_to_history_str`` writes each turn of a history string
#: (the condense prompts' ``chat_history``).
_HISTORY_LINE = re.compile(f"({'|'.join(re.escape(r.value) for r in MessageRole)}): ")


def _mark_kind(role: str) -> str:
    if role in _ASSISTANT:
        return "assistant"
    if role in _TOOL:
        return "tool"
    return "system" if role in _SYSTEM else "user"


def _clean_line(line: str, first: bool, last: bool) -> str:
    """A line of a turn as `clean_text` reads it inside the turn's text: a control run at the line's edge sits
    against a line break there (or the text's end), which decides whether it is a hidden separator."""
    c = clean_text(("" if first else "\n") + line + ("" if last else "\n"))
    return c[0 if first else 1 : len(c) if last else len(c) - 1]


def _prefix_state(kind: str, prefix: Sequence[str]) -> Any:
    """The `mark` hash state of ``kind`` after the parts ``prefix``, ready for the turn's text."""
    h = hashlib.blake2b(kind.encode(), digest_size=16)
    for p in prefix:
        h.update(b"\x1f" + _norm(p).encode("utf-8", "surrogatepass"))
    h.update(b"\x1f")
    return h


class _TurnPrint:
    """The fingerprint `mark` gives a turn's text (after ``prefix``, the other parts of its check), grown a line at a
    time (`_norm`: cleaned, ends stripped), so that every cut of a history string is linear in its length."""

    def __init__(self, kind: str, prefix: Sequence[str], start: Any = None) -> None:
        # ``start``: the hash state after the prefix (`_prefix_state`), copied; each cleaned and hashed once however
        # many turns share it (rt54e E9: every answer after one long question re-read the whole question).
        self.h = start.copy() if start is not None else _prefix_state(kind, prefix)
        self.started = False  # a character other than ASCII whitespace was added
        self.pending = ""  # the whitespace after the last such character (stripped if the text ends there)

    def _add(self, h: Any, piece: str) -> None:
        body = piece.rstrip(_ENDS)
        h.update(((self.pending + body) if self.started else body.lstrip(_ENDS)).encode("utf-8", "surrogatepass"))

    def ending(self, line: str, first: bool) -> bytes | None:
        """The fingerprint of the text so far with ``line`` as its last line (None while it is only whitespace)."""
        piece = _clean_line(line, first, True)
        if not piece.strip(_ENDS):
            return None
        h = self.h.copy()
        self._add(h, piece)
        return h.digest()

    def extend(self, line: str, first: bool) -> None:
        """Add ``line`` and the line break after it."""
        piece = _clean_line(line, first, False)
        if piece.strip(_ENDS):
            self._add(self.h, piece)
            self.started = True
            self.pending = piece[len(piece.rstrip(_ENDS)) :] + "\n"
        elif self.started:
            self.pending += piece + "\n"


def cut_judged_turns(text: str, seen: Seen | None) -> tuple[str, list[GuardMessage]]:
    """``text`` without the turns of a history string in it (``role: content`` lines, as LlamaIndex's
    ``messages_to_history_str`` writes them) that were judged in that role and let through before, and those
    turns, in order, as context. A condense step formats the stored history into its prompt: judged whole as the
    user's text, an earlier answer (a refusal that names what it refuses) would read as the user asking for it
    and stop every harmless follow-up. Only a turn whose whole text matches a fingerprint ``seen`` holds in that
    role is cut (never a guess at where a turn ends), an assistant turn only as the answer to the user turn before it
    (`answer_mark`); everything else stays in the text and is judged as it was. Linear: each turn's fingerprint grows
    a line at a time (`_TurnPrint`), and each user turn is read once as the question of the answers after it."""
    if seen is None or not text:
        return text, []
    lines = text.split("\n")
    labels = [(k, m) for k, line in enumerate(lines) if (m := _HISTORY_LINE.match(line)) is not None]
    # The hash state of an answer after the user turn before each label line (that turn's whole text, to the next
    # label: `history_messages`), computed once per user turn and copied for each answer after it (rt54e E9).
    questions: dict[int, Any] = {}
    question: Any = None
    for n, (k, m) in enumerate(labels):
        questions[k] = question
        if _mark_kind(m.group(1)) == "user":
            upto = labels[n + 1][0] if n + 1 < len(labels) else len(lines)
            question = "\n".join([lines[k][m.end() :], *lines[k + 1 : upto]])
            question = _prefix_state("assistant", [question])
    no_question = _prefix_state("assistant", [""])
    kept: list[str] = []
    turns: list[GuardMessage] = []
    i = 0
    while i < len(lines):
        label = _HISTORY_LINE.match(lines[i])
        if label is None:
            kept.append(lines[i])
            i += 1
            continue
        kind = _mark_kind(label.group(1))
        if kind == "assistant":
            asked = questions[i]
            fingerprint = _TurnPrint(kind, (), no_question if asked is None else asked)
        else:
            fingerprint = _TurnPrint(kind, ())
        matched, hit = -1, False
        j = i
        while j < len(lines) and (j == i or _HISTORY_LINE.match(lines[j]) is None):
            line = lines[j][label.end() :] if j == i else lines[j]
            key = fingerprint.ending(line, j == i)
            if key is not None:
                hit = key in seen
            if hit:
                matched = j
            fingerprint.extend(line, j == i)
            j += 1
        if matched < 0:
            kept.append(lines[i])
            i += 1
            continue
        content = "\n".join([lines[i][label.end() :], *lines[i + 1 : matched + 1]])
        turns.append({"role": "assistant" if kind == "assistant" else "user", "content": content})
        i = matched + 1
    return "\n".join(kept), turns


def history_messages(text: str) -> list[ChatMessage]:
    """The turns of a history string as LlamaIndex's ``messages_to_history_str`` writes them: ``role: content``
    lines, a turn running to the next such line; text before the first is a user turn."""
    turns: list[ChatMessage] = []
    role, lines = MessageRole.USER.value, list[str]()
    for line in text.split("\n"):
        if (label := _HISTORY_LINE.match(line)) is not None:
            if "".join(lines).strip():
                turns.append(ChatMessage(role=role, content="\n".join(lines)))
            role, lines = label.group(1), [line[label.end() :]]
        else:
            lines.append(line)
    if "".join(lines).strip():
        turns.append(ChatMessage(role=role, content="\n".join(lines)))
    return turns


def _template_pattern(template: str, variables: tuple[str, ...]) -> re.Pattern[str]:
    parts = re.split("\\{(" + "|".join(variables) + ")\\}", template)
    # The history matches as little as it can: a history holding the template's own wording ends there, and what
    # follows is read as the question, judged as the user's prompt (never the other way round).
    return re.compile(
        "".join(
            re.escape(p) if i % 2 == 0 else (f"(?P<{p}>.*?)" if p == "chat_history" else f"(?P<{p}>.*)")
            for i, p in enumerate(parts)
        ),
        re.DOTALL,
    )


_CONDENSE_PATTERNS: list[re.Pattern[str]] = []


def condense_parts(prompt: str) -> tuple[str, str] | None:
    """``(chat_history, question)`` of a prompt formatted from LlamaIndex's condense template (what
    `CondensePlusContextChatEngine` hands ``complete``), or None for any other prompt."""
    if not _CONDENSE_PATTERNS:
        from llama_index.core.chat_engine.condense_plus_context import DEFAULT_CONDENSE_PROMPT_TEMPLATE
        from llama_index.core.chat_engine.condense_question import DEFAULT_TEMPLATE

        _CONDENSE_PATTERNS.extend(
            _template_pattern(t, ("chat_history", "question"))
            for t in (DEFAULT_CONDENSE_PROMPT_TEMPLATE, DEFAULT_TEMPLATE)
        )
    for pattern in _CONDENSE_PATTERNS:
        if (m := pattern.fullmatch(prompt)) is not None:
            return m.group("chat_history"), m.group("question")
    return None


class Seen:
    """A bounded memory of inputs already judged and let through: what is *not* in it is new to the
    model. Oldest entries drop off first (a dropped entry is only judged again)."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._keys: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (a workflow Context saved with its memory): the fingerprints travel, the lock is made anew.
        with self._lock:
            return {"maxsize": self.maxsize, "keys": list(self._keys)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.maxsize = state["maxsize"]
        self._keys = OrderedDict.fromkeys(state["keys"])
        self._lock = threading.Lock()

    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            if key in self._keys:
                self._keys.move_to_end(key)
                return True
            return False

    def add(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            for key in keys:
                self._keys[key] = None
                self._keys.move_to_end(key)
            while len(self._keys) > self.maxsize:
                self._keys.popitem(last=False)


class _Answers:
    """The answers a `GuardedLLM` returned with tool calls (`remember_own_calls`), by the message object itself, each
    call with the fingerprint of its output once one is bound (`own_output`). Held weakly (an answer dropped by its
    run needs no binding) and bounded, least recently used first: an answer dropped binds nothing more (its calls'
    unbound outputs are then the client's), and an output bound before stays so (`_BOUND`)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._answers: OrderedDict[int, tuple[weakref.ref[ChatMessage], dict[bytes, bytes | None]]] = OrderedDict()
        self._dead: list[tuple[int, weakref.ref[ChatMessage]]] = []
        self._lock = threading.Lock()

    def _purge(self) -> None:
        # Under the lock. A message's weakref callback only lists it (the collector may run it while this thread holds
        # the lock: taking the lock there would deadlock).
        while self._dead:
            key, ref = self._dead.pop()
            if (held := self._answers.get(key)) is not None and held[0] is ref:
                del self._answers[key]

    def add(self, answer: ChatMessage, keys: Iterable[bytes]) -> None:
        key = id(answer)
        with self._lock:
            self._purge()
            held = self._answers.get(key)
            if held is None or held[0]() is not answer:
                ref = weakref.ref(answer, lambda r: self._dead.append((key, r)))
                held = self._answers[key] = (ref, {})
            for k in keys:
                held[1].setdefault(k, None)  # an answer returned again keeps its bound outputs
            self._answers.move_to_end(key)
            while len(self._answers) > self.maxsize:
                self._answers.popitem(last=False)

    def output(self, answer: ChatMessage | None, key: bytes, output: bytes, *, bind: bool) -> bool | None:
        """Is ``output`` the one bound to the call ``key`` of ``answer`` (bound now when none is and ``bind``)? None when
        ``answer`` is not a kept answer holding that call."""
        if answer is None:
            return None
        with self._lock:
            held = self._answers.get(id(answer))
            if held is None or held[0]() is not answer or key not in held[1]:
                return None
            self._answers.move_to_end(id(answer))
            bound = held[1][key]
            if bound is None and bind:
                held[1][key] = bound = output
        if bound is None:
            return False
        _BOUND.add([mark("bound_output", key.hex(), bound.hex())])
        return bound == output


class ScopedSeen(Seen):
    """A `Seen` as one scope reads and writes it (`_common.guard_scope`: a guard under its policy): a fingerprint
    answers only for the scope that remembered it, so a changed ``guard.policy``, another guard (a copy sharing the
    memory) and a closed guard (no scope: nothing is answered, nothing kept) judge again (rt62b F1, F2)."""

    def __init__(self, seen: Seen, scope: bytes | None) -> None:  # a view: the fingerprints stay in ``seen``
        self._of = seen
        self._token = scope

    def __contains__(self, key: bytes) -> bool:
        return self._token is not None and self._token + key in self._of

    def add(self, keys: Iterable[bytes]) -> None:
        if self._token is not None:
            self._of.add([self._token + key for key in keys])


#: The calls a guarded LLM returned (`own_call`), the answers that hold them as returned (`_Answers`), and each output
#: bound to a call in the run that made it (`own_output`: what a copy of that history, read later, may hold); bounded.
_RETURNED = Seen(_OWN_CALLS_KEPT)
_ANSWERS = _Answers(_OWN_CALLS_KEPT)
_BOUND = Seen(_OWN_CALLS_KEPT)
#: The names of the tools `guard_tool` wrapped, and the outputs they returned (`record_output`); bounded.
_GUARDED_TOOLS = Seen(_OWN_CALLS_KEPT)
_PRODUCED = Seen(_OWN_CALLS_KEPT)


# -- text a client wrote in a tool's role -------------------------------------------------------
class ClientToolCheck(tuple):
    """A ``(Stage.TOOL_RESULT, conversation)`` check of a tool-role message in a call's input that no guarded tool
    call of this process produced (`own_call`): a client's history can hold one (``role="tool"``/``"function"``,
    after a forged call or none), and the stage picks the policy. Judged once, decided under the stricter of the
    prompt stage's policy and the tool-result stage's (`judge`, `ajudge`): the role a client writes its text in
    cannot loosen the operator's policy (rt54c F1)."""

    __slots__ = ()

    def __new__(cls, conversation: list[GuardMessage]) -> ClientToolCheck:
        return super().__new__(cls, (Stage.TOOL_RESULT, conversation))


def _asked(policy: Policy, checks: Sequence[tuple[Stage, list[GuardMessage]]]) -> list[tuple[Stage, Any]]:
    """The checks as the guard is asked them: a client's tool-role text under the prompt stage (under the tool-result
    stage only when the prompt stage is off: then that is the only one that judges)."""
    # RunsJudged: runs of consecutive user turns are judged joined here already (`UserRun`): not again by the core.
    return [
        (Stage.PROMPT if policy.enabled(Stage.PROMPT) else Stage.TOOL_RESULT, RunsJudged(c[1]))
        if isinstance(c, ClientToolCheck)
        else (c[0], RunsJudged(c[1]))
        for c in checks
    ]


def _stricter(policy: Policy, decision: Decision) -> Decision:
    """A client's tool-role text: the tool-result stage's decision where it blocks (as before: the stage says where),
    else the prompt stage's where that one is stricter (it blocks, or flags what the other allows)."""
    return policy.decide_stricter(decision, Stage.TOOL_RESULT, Stage.PROMPT)


def _decided(policy: Policy, checks: Sequence[Any], decisions: list[Decision]) -> list[Decision]:
    return [_stricter(policy, d) if isinstance(c, ClientToolCheck) else d for c, d in zip(checks, decisions)]


def judge(guard: Any, checks: Sequence[tuple[Stage, list[GuardMessage]]]) -> list[Decision]:
    """``guard.check_many(checks)``, with each `ClientToolCheck` decided under the stricter of the prompt and
    tool-result stages' policies (one judge call, as before)."""
    policy = guard.policy
    return _decided(policy, checks, guard.check_many(_asked(policy, checks)))


async def ajudge(guard: Any, checks: Sequence[tuple[Stage, list[GuardMessage]]]) -> list[Decision]:
    """Async twin of `judge`."""
    policy = guard.policy
    return _decided(policy, checks, await guard.acheck_many(_asked(policy, checks)))


def tool_output_check(
    message: ChatMessage,
    text: str,
    names: Mapping[str, str],
    calls: Mapping[str, ToolSelection],
    *,
    bind: bool = False,
    answers: Mapping[str, ChatMessage] | None = None,
) -> tuple[bytes, tuple[Stage, list[GuardMessage]]]:
    """The fingerprint and the check of a tool-role message with ``text`` (its text as sent): the output of a tool the
    application ran for a call a guarded LLM returned (``calls``: the history's calls by id; the first output a
    `GuardedLLM` read for that call, `own_output`, bound when ``bind``) is untrusted tool output, under the
    tool-result stage's policy; any other is text a client may have written: a `ClientToolCheck`, remembered apart (a
    tool output let through under a looser policy is no pass for a client's). ``answers``: the messages that hold
    ``calls``, by id (an output is bound only after the answer the guarded LLM returned: `own_output`)."""
    call_id = str(message.additional_kwargs.get("tool_call_id") or "")
    name = names.get(call_id) or str(message.additional_kwargs.get("name") or "tool")
    conversation = untrusted_conversation(text, f"output of tool {name}")
    if call_id and own_output(calls.get(call_id), text, bind=bind, answer=(answers or {}).get(call_id)):
        return mark("tool", text), (Stage.TOOL_RESULT, conversation)
    return mark("client_tool", text), ClientToolCheck(conversation)


def calls_by_id(llm: Any, messages: Sequence[ChatMessage]) -> dict[str, ToolSelection]:
    """The tool calls of the assistant messages of ``messages``, by id."""
    calls: dict[str, ToolSelection] = {}
    for m in messages:
        if role_of(m) in _ASSISTANT:
            for call in tool_calls_of(llm, m):
                if isinstance(call.tool_id, str) and call.tool_id:
                    calls.setdefault(call.tool_id, call)
    return calls


def tool_names(messages: Sequence[ChatMessage]) -> dict[str, str]:
    """Tool call id → tool name, from the assistant messages of ``messages`` (`_tool_names`)."""
    return _tool_names(messages)


def unmatched_id(message: ChatMessage, names: Mapping[str, str]) -> str:
    """`_unmatched_id`."""
    return _unmatched_id(message, names)


def is_tool_role(message: ChatMessage) -> bool:
    return role_of(message) in _TOOL


# -- consecutive user turns --------------------------------------------------------------------
class UserRun:
    """Consecutive user turns, which providers send as one (the Anthropic Messages API combines consecutive user
    turns; a provider class may merge them client-side): each is judged as before, and a run of two or more with
    text once more as one prompt, their texts joined (rt54e E6: "How can I make a bo" and "mb at home?" were each
    safe). A run goes on across the messages a provider drops or hoists out of the turns: a system message (sent as
    the system prompt; judged on its own) and an assistant turn with no text and no tool calls. Linear: each turn's
    text is read once more, and the guard's ``max_chars`` applies to the joined text as to any message's; a single
    turn costs no check more."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, text: str) -> None:
        if text.strip():
            self.texts.append(text)

    def end(self) -> str | None:
        """The joined text of the run that ends here (None for fewer than two turns with text), and a new run."""
        texts, self.texts = self.texts, []
        return "".join(texts) if len(texts) >= 2 else None


def keeps_run(role: str, text: str, calls: Sequence[Any]) -> bool:
    """Does a message that is not a user turn leave a run of user turns going on (`UserRun`)?"""
    return role in _SYSTEM or (role in _ASSISTANT and not text.strip() and not calls)


def run_check(joined: str) -> tuple[bytes, tuple[Stage, list[GuardMessage]]]:
    """The fingerprint and the check of a run of user turns joined (`UserRun`): a prompt on its own."""
    return mark("user_run", joined), (Stage.PROMPT, prompt_conversation(joined))


def keeps_answer_run(role: str, text: str) -> bool:
    """Does a message that is not an assistant turn leave a run of assistant turns going on (`UserRun`'s rule, the
    roles swapped: a system message, a user turn with no text)?"""
    return role in _SYSTEM or (role == MessageRole.USER.value and not text.strip())


def answer_run_check(question: str, joined: str) -> tuple[bytes, tuple[Stage, list[GuardMessage]]]:
    """The fingerprint and the check of a run of assistant turns joined, which a provider sends as one answer (the
    Anthropic API combines consecutive turns of a role; `UserRun`): a response to the user turn before the run
    (rt62f F2b: "Step 1: Mix" | " ammonium nitrate ..." were each safe)."""
    return mark("assistant_run", question, joined), (Stage.RESPONSE, response_conversation(question, joined))


# -- planning the input checks ----------------------------------------------------------------
@dataclass
class InputPlan:
    """One LLM call's input checks. ``prompt``: the conversation an answer is judged against (the
    latest user turn after the earlier text turns); ``marks``: fingerprints to remember once the
    checks passed."""

    checks: Checks = field(default_factory=list)
    prompt: list[GuardMessage] = field(default_factory=list)
    marks: list[bytes] = field(default_factory=list)
    #: What a tool call of the answer is read after: ``prompt`` before any prefill, then the assistant turns after the
    #: latest user turn with the calls they asked for (`with_tool_calls`; rt71j F2), the oldest left out past
    #: ``max_chars``. ``None``: ``prompt``.
    calls_prompt: list[GuardMessage] | None = None


def plan_inputs(
    messages: Sequence[ChatMessage],
    llm: Any = None,
    *,
    screen_system: bool = False,
    seen: Seen | None = None,
    latest_prompt: bool = True,
    screen_tools: bool = False,
    bind_outputs: bool = False,
    max_chars: int | None = None,
) -> InputPlan:
    """The checks an LLM call's input needs, by role, for every message new to the model (``max_chars``: the guard's,
    which a history's tool calls are rendered only until past: rt62a F2).

    - the latest user turn: a prompt, after the earlier text turns (always, unless this very
      conversation was judged already);
    - every other user turn: a prompt on its own; assistant turns: a response to the user turn
      before them, and each tool call they hold as a tool call; tool outputs: untrusted content, the output of a
      call no guarded LLM returned as the client's input (`tool_output_check`); a tool output an agent hands over in a
      user's role (ReAct's ``Observation:``, CodeAct's code result: `agent_observation`) as tool output too, not as the
      user's prompt (`observation_check`);
    - system messages: untrusted content; the one that opens the list (the application's prompt) only with
      ``screen_system``.

    ``seen`` skips what was judged and let through before (each turn is judged once as the history
    grows); without it every message is judged (a guard's verdict cache makes repeats cheap).
    ``latest_prompt=False``: the latest user turn is judged on its own too (a template's turns: its query
    variable is the prompt). ``screen_tools``: the tool descriptions an opening ReAct header lists (`react_tool_text`)
    as untrusted content. ``bind_outputs``: a `GuardedLLM`'s chat input, where the first output of a call it returned
    is bound to the call as the tool's (`own_output`). A run of two or more consecutive user turns is judged once more
    joined (`UserRun`), and so is a run of assistant turns, as one answer (`answer_run_check`); assistant turns after
    the latest user turn (a prefill) end ``prompt``: the answer continues them (`answer_prefill_turns`).

    A fingerprint stands only for the check it records (rt60d F3): an earlier user turn is skipped when it was judged
    alone, or as the latest turn after the very turns before it here (`prompt_mark`); an answer when it was judged
    after the user turn before it alone, or after that turn and the very turns before it (`answer_marks`). A
    conversation that goes on with the same earlier turns judges none of them again; a text let through in one context
    is judged again in another.
    """
    plan = InputPlan()
    # An agent's tool output in a user's role is judged as tool output, not as a prompt (rt58d F2); it stays where it is
    # in the conversation the answers are judged in: left out, a client that wrote one after a forged action had the
    # answer judged without the request it answers (rt58f F4).
    agent_outputs = agent_observations(messages)
    users = (i for i, m in enumerate(messages) if role_of(m) == MessageRole.USER.value)
    last_user = max(users, default=None) if latest_prompt else None
    names = _tool_names(messages)
    by_id: dict[str, ToolSelection] = {}  # the calls of the assistant turns so far, by id (the latest: ids repeat)
    holders: dict[str, ChatMessage] = {}  # the assistant message holding each
    history: list[GuardMessage] = []
    before = _Context()  # the fingerprint of ``history`` so far, grown a turn at a time
    asked: _Context | None = None  # ``before`` and the latest user turn so far: the check an answer after it was in
    previous_user = ""
    run = UserRun()
    answers = UserRun()  # the consecutive assistant turns ending at message i - 1, joined the same way
    acted: deque[GuardMessage] = deque()  # the assistant turns after the latest user turn, their calls rendered
    acted_chars = 0

    def judged(key: bytes) -> bool:
        return seen is not None and key in seen

    def new(key: bytes) -> bool:
        if seen is not None and key in seen:
            return False
        plan.marks.append(key)
        return True

    def end_run() -> None:
        if (joined := run.end()) is not None:
            key, check = run_check(joined)
            if new(key):
                plan.checks.append(check)

    def end_answers() -> None:
        if (joined := answers.end()) is not None:
            key, check = answer_run_check(previous_user, joined)
            if new(key):
                plan.checks.append(check)

    for i, m in enumerate(messages):
        role = role_of(m)
        calls = tool_calls_of(llm, m) if role in _ASSISTANT else []
        text = wire_text(m, calls)  # what the provider may send, not only the blocks (and no role change)
        has_text = bool(text.strip())
        if role == MessageRole.USER.value:
            run.add(text)
        elif not keeps_run(role, text, calls):
            end_run()
        if role in _ASSISTANT:
            answers.add(text)
        elif not keeps_answer_run(role, text):
            end_answers()
        if role in _SYSTEM:
            # Only a system message that opens the list is the application's (its prompt; a template's wording):
            # one further on came with the conversation (a client's chat_history, text a memory inserts).
            if (screen_system or i > 0) and has_text and new(mark("system", text)):
                plan.checks.append((Stage.PROMPT, untrusted_conversation(text, "system prompt")))
            elif (
                screen_tools
                and i == 0
                and (described := react_tool_text(text)).strip()
                and new(mark("tools", described))
            ):
                # A ReAct header's tool descriptions come from the tools (an MCP server's list): not the app's words.
                plan.checks.append((Stage.PROMPT, untrusted_conversation(described, "tool descriptions")))
            continue
        if role == MessageRole.USER.value:
            asked = here = before.then("user", text)
        if i in agent_outputs:  # judged as tool output, and the context of what follows it as the LLM reads it
            if has_text and new((handed := observation_check(text))[0]):
                plan.checks.append(handed[1])
            if i == last_user:
                plan.prompt = prompt_conversation(text, history)
        elif role == MessageRole.USER.value:
            if i == last_user:
                plan.prompt = prompt_conversation(text, history)
                if has_text and new(here.prompt_mark()):
                    plan.checks.append((Stage.PROMPT, plan.prompt))
            # An earlier turn: judged alone, unless judged before after the very turns before it here (as the latest).
            elif has_text and not judged(here.prompt_mark()) and new(mark("user", text)):
                plan.checks.append((Stage.PROMPT, prompt_conversation(text)))
        elif role in _ASSISTANT:
            if last_user is not None and i > last_user and (has_text or calls):
                # A later call is read after these (a clause split over two answers' calls ran: rt71j F2).
                acts = [(c.tool_name, arguments_parsed(c.tool_kwargs)) for c in calls]
                room = calls_context_room(max_chars)  # rt72m F2: not every earlier call in every call's check
                acted.append({"role": "assistant", "content": with_tool_calls(text or None, acts, max_chars=room)})
                acted_chars += len(acted[-1]["content"])
                while acted_chars > room and len(acted) > 1:
                    acted_chars -= len(acted.popleft()["content"])  # the oldest first
            # Remembered as the check made: this text after this question (rt54c F4); skipped too when it was judged
            # after this question and the very turns before it, as a guarded LLM judged its answer (rt60d F3).
            said = _turn_bytes("assistant", text)  # hashed once: for the check it was in, and as context after it
            in_context = asked is not None and judged(asked.answer_mark(text, said))
            if has_text and not in_context and new(answer_mark(previous_user, text)):
                plan.checks.append((Stage.RESPONSE, response_conversation(previous_user, text)))
                if (observed := observation_text(text)).strip():  # a ReAct agent's stored tool outputs
                    plan.checks.append((Stage.TOOL_RESULT, untrusted_conversation(observed, "tool output")))
            for call in calls:
                if isinstance(call.tool_id, str) and call.tool_id:
                    by_id[call.tool_id], holders[call.tool_id] = call, m
                if new(_call_key(call, previous_user)):
                    context = [{"role": "user", "content": previous_user}]
                    plan.checks.append(
                        (
                            Stage.TOOL_CALL,
                            tool_call_conversation(
                                call.tool_name, arguments_parsed(call.tool_kwargs), context, max_chars=max_chars
                            ),
                        )
                    )
        elif role in _TOOL:
            if label := _unmatched_id(m, names):
                text = "\n".join(t for t in (text, label) if t)
                has_text = True
            if has_text:
                # Tool output of a call a guarded LLM returned, or a client's text in a tool's role (rt54c F1).
                key, check = tool_output_check(m, text, names, by_id, bind=bind_outputs, answers=holders)
                if new(key):
                    plan.checks.append(check)
            continue
        if has_text and (last_user is None or i < last_user):
            history.append({"role": "user" if role == MessageRole.USER.value else "assistant", "content": text})
            before = (
                here
                if role == MessageRole.USER.value
                else before.then("assistant", text, said if role in _ASSISTANT else None)
            )
        if role == MessageRole.USER.value:
            previous_user = text
    end_run()
    end_answers()
    if acted:
        plan.calls_prompt = [*plan.prompt, *acted]
    if last_user is None:
        plan.prompt = prompt_conversation("", history)
    elif prefill := answer_prefill_turns(messages[last_user + 1 :], llm):
        # Assistant turns after the latest user turn: the answer continues them (a provider returns the two as one
        # turn), and is judged so (`response_conversation`, the monitor; rt62f F2: each part alone was safe).
        plan.prompt = [*plan.prompt, *({"role": "assistant", "content": t} for t in prefill)]
    return plan


def answer_prefill_turns(messages: Sequence[ChatMessage], llm: Any = None) -> list[str]:
    """The texts of the assistant turns of text (system messages aside) that end ``messages`` (what follows the
    latest user turn): a prefill, which an answer continues, whatever came before them (a tool call and its result:
    rt62g F3), as core's `answer_prefill` reads a conversation; else none."""
    texts: list[str] = []
    for m in reversed(messages):
        role = role_of(m)
        if role in _SYSTEM:
            continue
        if role not in _ASSISTANT or tool_calls_of(llm, m):
            break
        texts.append(wire_text(m, []))
    texts.reverse()
    return texts if any(t.strip() for t in texts) else []


# -- template calls -----------------------------------------------------------------------------
#: Templates that put ``str(value)`` in place of each ``{variable}`` (LlamaIndex's ``SafeFormatter``): the
#: exact classes only, since a subclass may format in its own way.
_SUBSTITUTING = (PromptTemplate, ChatPromptTemplate)
#: Values whose text is only digits or a constant: nothing to judge (exact types: a subclass may print anything).
_PLAIN = (int, float, bool, type(None))


def variable_text(name: str, value: Any, max_chars: int | None = None) -> str:
    """The text a template substitutes for ``{name}``: ``str(value)``, computed once, at most ``max_chars``
    characters (`InputTooLarge` past that, as the guard raises it: size never lets text through unjudged);
    a value that cannot be printed raises a `TypeError` naming the variable (formatting would fail on it too)."""
    text = value
    if type(text) is not str:
        try:
            # The exact ``str`` type: a subclass's own ``__str__`` would print it anew when the template is formatted.
            text = str.__str__(str(value))
        except Exception as exc:
            raise TypeError(f"template variable {name!r} ({type(value).__name__}) cannot be printed: {exc!r}") from exc
    if max_chars is not None and len(text) > max_chars:
        raise InputTooLarge(
            f"template variable {name!r} is {len(text):,} characters, over max_chars={max_chars:,}; "
            "shorten it or raise Guard(max_chars=...)"
        )
    return text


def variable_texts(variables: Mapping[str, Any], max_chars: int | None = None) -> dict[str, str]:
    """The text of each variable a guard can judge (`variable_text`). Left out: plain numbers, booleans and
    ``None`` (their text is digits or a constant) and bytes (binary data, read by no text guard, as images are; a chat
    template's binary block they fill is read as the file it is: `query_wording`, `file_turns`)."""
    return {
        key: variable_text(key, value, max_chars)
        for key, value in variables.items()
        if type(value) not in _PLAIN and not isinstance(value, bytes)
    }


@dataclass
class TemplateCall:
    """A template call with its variables computed once (`resolve_template`).

    ``template`` and ``arguments``: what the wrapped LLM is handed to format; ``variables``: the text of each
    variable, by the caller's name (before ``template_var_mappings``: a renamed ``query_str`` is still the
    query); ``computed``: the variables a function mapping produced; ``exact``: ``variables`` are the very
    text the template substitutes, else the formatted prompt must be judged too; ``renamed``: the template's own
    name of each variable ``template_var_mappings`` renamed (where ``template`` holds its value)."""

    template: BasePromptTemplate
    arguments: dict[str, Any]
    variables: dict[str, str]
    computed: frozenset[str] = frozenset()
    exact: bool = True
    renamed: dict[str, str] = field(default_factory=dict)


def resolve_template(
    prompt: BasePromptTemplate, arguments: Mapping[str, Any], llm: Any = None, max_chars: int | None = None
) -> TemplateCall:
    """Compute a template call's variables once, as the template would, and hand the wrapped LLM a copy of the
    template that substitutes exactly that text: its function mappings are called here, once (a function that
    answers differently the second time cannot swap the text judged for another), each value is printed here,
    once (so is a ``__str__``), and the copy has no mappings left and every variable in its ``kwargs``.

    A ``SelectorPromptTemplate`` is resolved to the template it selects for ``llm``. A ``RichPromptTemplate``
    (Jinja) may read a value that is not a string in its own way (a loop, an attribute): those are handed over
    as they are, and the call is not ``exact``; nor is one that renders a block that is not text (`renders_blocks`: a
    filter's document or image, which the formatted messages are judged for). Other template classes format in their
    own way: handed over untouched (their mappings are called once, by their formatting), not ``exact``."""
    template = prompt
    while isinstance(template, SelectorPromptTemplate):
        template = template.select(llm=llm)
    values = {**template.kwargs, **arguments}
    if type(template) not in (*_SUBSTITUTING, RichPromptTemplate):
        strings = {k: v for k, v in values.items() if isinstance(v, str)}
        return TemplateCall(prompt, dict(arguments), variable_texts(strings, max_chars), exact=False)
    computed = frozenset(template.function_mappings or {})
    mapped = template._map_function_vars(values)  # the application's functions: called here, and only here
    if isinstance(template, RichPromptTemplate):
        texts = variable_texts({k: v for k, v in mapped.items() if isinstance(v, str)}, max_chars)
        exact = all(isinstance(v, str) or type(v) in _PLAIN for v in mapped.values())
    else:
        texts, exact = variable_texts(mapped, max_chars), True
    given = {**mapped, **texts}  # the text judged, not the values: printing them again could print other text
    resolved = template.model_copy(
        update={"kwargs": template._map_template_vars(given), "function_mappings": {}, "template_var_mappings": {}}
    )
    if exact and isinstance(resolved, RichPromptTemplate):
        exact = not renders_blocks(resolved)
    return TemplateCall(resolved, {}, texts, computed, exact, dict(template.template_var_mappings or {}))


def renders_blocks(template: RichPromptTemplate) -> bool:
    """Does a Jinja template, formatted with its ``kwargs``, render a block that is not text? A filter turns a string
    into one (``{{ upload | document }}``, ``{{ upload | image }}``): the model reads that file, which no variable's
    text shows (rt69e F2). A template that fails to render counts as one: its call formats it again and fails there."""
    try:
        messages = template.format_messages()
    except Exception:
        return True
    return any(not isinstance(block, TextBlock) for message in messages for block in message.blocks)


def template_turns(
    template: BasePromptTemplate, variables: Mapping[str, Any], query: str | None = None
) -> tuple[list[ChatMessage], list[ChatMessage]]:
    """The messages a chat template carries as its own text, in two parts: the conversation before its query turn
    (its last message, when that is not a system one and holds the ``{query}`` placeholder; else every message),
    and that query turn.

    A chat engine writes the conversation there: the context chat engines put the stored history (a client's
    ``chat_history`` too) between their system prompt and ``{query_str}``, as literal template text. Those turns
    come formatted with ``variables`` exactly as the model reads them: a ``{query_str}`` or ``{context_str}`` a
    history turn holds is expanded there too, so it is judged expanded (rt62d F3). The query turn is the template's
    wording around the query: its text placeholders cut out (their values are judged by variable), its other blocks
    filled, as the model reads them (`query_wording`). Both empty for a template that is not a `ChatPromptTemplate`."""
    if type(template) is not ChatPromptTemplate:
        return [], []
    messages = template.message_templates
    last = messages[-1] if messages else None
    asks = last is not None and role_of(last) not in _SYSTEM and query in last.get_template_vars()
    before = messages[:-1] if asks else messages
    read = [m.format_vars(**variables) for m in before]  # as `ChatPromptTemplate.format_messages` formats each
    return read, [query_wording(last, variables)] if asks and last is not None else []


def query_wording(message: ChatMessage, variables: Mapping[str, Any]) -> ChatMessage:
    """A chat template's query turn as its wording is judged: its text blocks with every placeholder blank (their
    values are judged by variable), its other blocks formatted with ``variables`` as the model reads them. LlamaIndex
    fills a templated binary block with a variable (``DocumentBlock(data=b"{doc}")``, ``ImageBlock(image=b"{img}")``):
    the file the model reads is that value, which no variable's text shows (bytes are not judged by variable: rt69e
    F1); read as the chat path reads the block (`block_text`), in the user's turn."""
    blanks = dict.fromkeys(variables, "")
    blocks = []
    for block in message.blocks:
        values = blanks if isinstance(block, TextBlock) else variables
        # Only the block's own variables, as `ChatMessage.format_vars` hands them (it formats each block so).
        names = set(block.get_template_vars())
        blocks.append(block.format_vars(**{k: v for k, v in values.items() if k in names}))
    return message.model_copy(update={"blocks": blocks})


def file_turns(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """``messages`` with only their blocks that are not text (a document, an image...), each in its turn's role, those
    left with none left out: the files a model reads beside the text, read as the chat path reads them
    (`plan_inputs`)."""
    kept = [(m, [b for b in m.blocks if not isinstance(b, TextBlock)]) for m in messages]
    return [ChatMessage(role=m.role, blocks=blocks) for m, blocks in kept if blocks]


def plan_template(
    variables: Mapping[str, Any],
    *,
    screen_context: bool = True,
    computed: Iterable[str] = (),
    seen: Seen | None = None,
    template: BasePromptTemplate | None = None,
    renamed: Mapping[str, str] | None = None,
    llm: Any = None,
) -> InputPlan | None:
    """The checks of a template call (``predict``, a query engine's synthesis), by variable: every variable
    the template is formatted with is judged, as the text the template substitutes for it (`variable_texts`),
    never the formatted template (the framework's text is not the user's prompt). ``None`` when no query
    variable is recognised (the caller then judges the formatted prompt).

    - the query (the first of `QUERY_VARIABLES`): the prompt answers are judged against;
    - context variables: untrusted documents, only with ``screen_context`` (a node postprocessor may
      screen them instead), or when a function mapping ``computed`` them (no postprocessor saw that text);
    - a previous answer (`ANSWER_VARIABLES`, the refine prompt's): a response to the query;
    - a condense prompt's ``chat_history``: its turns by role;
    - every other non-empty variable (a second question, an e-mail the template quotes, an object it prints): a
      prompt on its own. Like the query, the caller supplies it: user-side input of unknown origin, judged as every
      user turn but the latest is (not gated by ``screen_context``, which only hands retrieved context to a
      postprocessor; shown to the judge as a user turn, as untrusted content is, so injected instructions still read
      as Jailbreak);
    - the query and those variables once more, joined as the template places them (`joined_variables`), when two or
      more of them hold text: a request split across them is judged whole.

    ``template`` (resolved: its ``kwargs`` hold every variable, by the template's names; ``renamed``: those of the
    variables ``template_var_mappings`` renamed): the turns a chat template carries before its query turn
    (`template_turns`: a context chat engine's conversation) are judged by role as the model reads them, and the query
    as the latest user turn after them, as the chat path judges a conversation (`plan_inputs`); the answer is judged
    after that whole conversation (rt62d F4). The query turn's own wording, its text placeholders cut out and its
    files filled (`query_wording`), by role too; the files of the opening system message (`file_turns`) as well.
    """
    texts = variable_texts(variables)
    query_key = next((k for k in QUERY_VARIABLES if k in texts), None)
    if query_key is None:
        return None
    others = _each_variable(texts, screen_context=screen_context, query_key=query_key, computed=computed, seen=seen)
    said = InputPlan()
    if template is not None:
        turns, wording = template_turns(template, template.kwargs, (renamed or {}).get(query_key, query_key))
        # The files of the system message that opens it (the application's, its text not judged): a templated binary
        # block there is filled from a variable (rt69e F1).
        opening = [m for m in turns[:1] if role_of(m) in _SYSTEM]
        filed = plan_inputs(file_turns(opening), llm, screen_system=True, seen=seen, latest_prompt=False).checks
        others = [*others, *filed]
        if any(role_of(m) not in _SYSTEM for m in turns):
            # The query is the latest user turn of the conversation the template writes: judged after those turns,
            # and the answer after all of it, as on the chat path (the history, not a variable, is the context).
            query = ChatMessage(role=MessageRole.USER, content=texts[query_key])
            asked = plan_inputs([*turns, query], llm, seen=seen)
            said = plan_inputs(wording, llm, seen=seen, latest_prompt=False)
            joined = joined_variables(texts, query_key, template, renamed, seen=seen, earlier=asked.prompt[:-1])
            asks = [*asked.checks, *said.checks, *others, *joined]
            return InputPlan(asks, asked.prompt, [*asked.marks, *said.marks])
        # No conversation: a later system message by role (one that opens the template is the application's).
        said = plan_inputs([*turns, *wording], llm, seen=seen, latest_prompt=False)
    # After a condense prompt's history, the question is judged in its context (a follow-up reads as what it refers to).
    history = texts.get(HISTORY_VARIABLE, "")
    earlier = plan_inputs(history_messages(history), latest_prompt=False).prompt[:-1] if history.strip() else []
    conversation = prompt_conversation(texts[query_key], earlier)
    joined = joined_variables(texts, query_key, template, renamed, seen=seen, earlier=earlier)
    checks: Checks = [(Stage.PROMPT, conversation), *said.checks, *others, *joined]
    # The query comes back as a user turn of the next call's history: judged already, after these turns (rt60d F3).
    return InputPlan(checks, conversation, [prompt_mark(conversation), *said.marks])


def variable_checks(
    variables: Mapping[str, Any],
    *,
    screen_context: bool = True,
    computed: Iterable[str] = (),
    seen: Seen | None = None,
    template: BasePromptTemplate | None = None,
    renamed: Mapping[str, str] | None = None,
) -> Checks:
    """The checks of a template's variables when it has no query variable (see `plan_template`; its formatted prompt
    is judged too): each variable as what it is, and those judged as a prompt once more, joined as ``template``
    places them (`joined_variables`), when two or more hold text."""
    texts = variable_texts(variables)
    checks = _each_variable(texts, screen_context=screen_context, computed=computed, seen=seen)
    return checks + joined_variables(texts, None, template, renamed, seen=seen)


def _each_variable(
    texts: Mapping[str, str],
    *,
    screen_context: bool = True,
    query_key: str | None = None,
    computed: Iterable[str] = (),
    seen: Seen | None = None,
) -> Checks:
    """The checks of a template's variables other than ``query_key``, each on its own. With ``seen``, the turns of a
    history string judged before are cut out of a variable judged as a prompt (`cut_judged_turns`)."""
    query = texts[query_key] if query_key is not None else ""
    computed = frozenset(computed)
    checks: Checks = []
    for key, value in texts.items():
        if key == query_key or not value.strip():
            continue
        if key in CONTEXT_VARIABLES:
            if screen_context or key in computed:
                checks.append((Stage.RETRIEVAL, untrusted_conversation(value, key)))
        elif key in ANSWER_VARIABLES and query_key is not None:
            checks.append((Stage.RESPONSE, response_conversation(query, value)))
        elif key == HISTORY_VARIABLE:
            # A condense prompt's history: its turns by role, as the chat path judges a history (an earlier answer
            # that refuses what it names is a response, not the user asking for it: rt50c F9, rt51c F1).
            # A system turn opening it is a client's, not the application's prompt (rt51e F6): judged too.
            history = plan_inputs(history_messages(value), screen_system=True, seen=seen, latest_prompt=False)
            checks.extend(history.checks)
        else:
            rest, turns = cut_judged_turns(value, seen)
            if rest.strip():
                checks.append((Stage.PROMPT, prompt_conversation(rest, turns)))
    return checks


#: The variables LlamaIndex's own prompts (``llama_index.core.prompts.default_prompts``, ``chat_prompts``) fill from
#: the application and the index, never from the user: a database's schema and dialect, a table's name and schema,
#: the index's chunks, the counts and the entity and relation types it asks for. Each is still judged on its own;
#: joined with the question it would be one more, schema-sized check on every text-to-SQL query (rt63f F6).
FRAMEWORK_VARIABLES = frozenset(
    {
        "schema",
        "dialect",
        "table_name",
        "table_schema",
        "context_list",
        "context_messages",
        "new_chunk_text",
        "num_chunks",
        "branching_factor",
        "max_keywords",
        "max_knowledge_triplets",
        "num",
        "allowed_entity_types",
        "allowed_entity_properties",
        "allowed_relation_types",
        "allowed_relation_properties",
    }
)


def _read_as_prompt(key: str, query_key: str | None) -> bool:
    """Is variable ``key`` the user's text, judged as a prompt: the query, or one that is not context, the refine
    prompt's previous answer, nor a condense prompt's history (`_each_variable`)?"""
    if key == query_key:
        return True
    if key in CONTEXT_VARIABLES or key == HISTORY_VARIABLE:
        return False
    return not (key in ANSWER_VARIABLES and query_key is not None)


#: What LlamaIndex's ``SafeFormatter`` substitutes: a ``{name}`` (a name it holds no value for stays as written).
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
#: The most template text between two variables that a joined reading keeps as written (longer: one space).
_JOINING_CHARS = 40


def _template_texts(template: BasePromptTemplate | None) -> list[str] | None:
    """The texts a template substitutes its variables in, in the order the model reads them: a `PromptTemplate`'s
    string, a `ChatPromptTemplate`'s text blocks message by message. None for another class (it formats in its own
    way: a ``RichPromptTemplate``'s Jinja may loop or branch)."""
    if type(template) is PromptTemplate:
        return [template.template]
    if type(template) is ChatPromptTemplate:
        return [b.text for m in template.message_templates for b in m.blocks if isinstance(b, TextBlock)]
    return None


def _template_source(template: BasePromptTemplate) -> str:
    """A template's own text, as its class gives it (empty when it gives none)."""
    try:
        return str(template.get_template())
    except Exception:  # a template class of the application's own: its variables keep the caller's order
        return ""


def _first_expression(source: str, name: str) -> int:
    """Where ``source`` first prints ``name`` as a Jinja expression (``{{ name``); past its end when it does not."""
    found = re.search(r"\{\{[-+]?\s*" + re.escape(name) + r"\b", source)
    return found.start() if found is not None else len(source)


def joined_variables(
    texts: Mapping[str, str],
    query_key: str | None,
    template: BasePromptTemplate | None = None,
    renamed: Mapping[str, str] | None = None,
    *,
    seen: Seen | None = None,
    earlier: Sequence[GuardMessage] = (),
) -> Checks:
    """The user's text of two or more variables judged once more, as one prompt: a request split across the query
    and a variable beside it ("Tell me how to {verb} {query_str}", "Mix" | "ammonium nitrate with fuel oil") reaches
    the model whole while each part, judged alone, reads harmless (rt62f N1). The variables read as a prompt
    (`_read_as_prompt`: not context, the previous answer or the history; nor one of LlamaIndex's own
    `FRAMEWORK_VARIABLES`, the application's schema and the like) are joined in the order ``template`` places
    them (``renamed``: the template's name of a caller's variable), with the template's own text between two of them
    where it is short and no other variable's text lies there (the model reads that very text), else one space;
    each placement counts, and a variable the template does not place is left out (the model never reads it).
    A template of another class (its placements are not read) joins them with a space, in the order its text first
    prints them as a Jinja expression (``{{ name``), then the caller's. No check without a template (a caller that
    knows none: nothing says the variables meet), nor when fewer than two such variables hold text. Judged after
    ``earlier`` (the query's context); the turns of a history string judged before are cut out of a variable
    (`cut_judged_turns`) and shown as context, as when it is judged alone. Linear in the template's text."""
    reading: dict[str, str] = {}
    context = list(earlier)
    for key, value in texts.items():
        if not value.strip() or not _read_as_prompt(key, query_key) or key in FRAMEWORK_VARIABLES:
            continue
        rest, turns = (value, []) if key == query_key else cut_judged_turns(value, seen)
        if rest.strip():
            reading[(renamed or {}).get(key, key)] = rest
            context.extend(turns)
    if template is None or len(reading) < 2:
        return []
    strings = _template_texts(template)
    if strings is None:
        names = sorted(reading, key=functools.partial(_first_expression, _template_source(template)))  # stable
        parts = [piece for name in names for piece in (" ", reading[name])][1:]
        return _joined_check(names, parts, context)
    held = {*reading, *template.kwargs}  # what the formatter substitutes
    names, parts = [], []
    for string in strings:
        end: int | None = None  # where the last joined placeholder of this string ends
        for found in _PLACEHOLDER.finditer(string):
            name = found.group(1)
            if name not in reading:
                if name in held:
                    end = None  # another variable's text lies between: not the template's wording
                continue
            if parts:
                between = string[end : found.start()] if end is not None else " "
                parts.append(between if len(between) <= _JOINING_CHARS else " ")
            parts.append(reading[name])
            names.append(name)
            end = found.end()
    return _joined_check(names, parts, context)


def _joined_check(names: Sequence[str], parts: Sequence[str], context: Sequence[GuardMessage]) -> Checks:
    """One prompt check of ``parts`` (the variables' text and what joins them), when they hold two or more variables
    (``names``, one per placement)."""
    if len(set(names)) < 2:
        return []
    return [(Stage.PROMPT, prompt_conversation("".join(parts), context))]
