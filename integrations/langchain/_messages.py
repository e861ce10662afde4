"""LangChain messages → guard conversations, by role.

DESIGN.md decision 12: the user's own turns are prompts; the assistant's text is a response and the
tool calls it asks for are actions; tool results (and retrieved context) are untrusted content from
outside. This module decides *what* to check in a list of LangChain messages; the callers decide
when, and what a violation does.

What the model is about to read is screened whole (`input_items`): every user turn, every tool result,
and every assistant turn (its text and its tool calls), wherever it sits in the list. A client that
sends its own history can put a fake assistant turn anywhere; screening only what follows the last
assistant turn would let it hide an earlier user turn. Repeated screening of an unchanged history
hits the guard's verdict cache (same stage, same conversation), so an agent loop pays for each
message once.

System and developer messages (`system_role`) are judged as prompts, as a user turn is: a client's
history can carry its request in one. Only a ``system`` message that opens the list, the application's
prompt, is left out (one placed right after it, a template's ``MessagesPlaceholder`` of client history, is
judged), and not even that with ``screen_system=True`` (what `GuardMiddleware` passes: an agent's own
system prompt is never in its state, so every system message there is input).

Text is every content block that carries text (`message_text`), not only ``"text"`` blocks:
``"text-plain"`` (inline or base64), ``"input_text"``/``"output_text"``, reasoning, refusals, tool
results nested in blocks, provider-specific blocks; a block of a kind the guard does not know, which a provider
class sends as it is, is read whole, its keys too (`block_text`); streamed in pieces, through the stream's one
`StreamReading`, as the pieces added up read (key names once, the pieces of a string joined). Media (images, audio, video, non-text files, URLs)
is not text and is not judged; tool-call blocks are judged as tool calls (`answer_tool_calls`: a legacy
``function_call``, a provider's own ``server_tool_call`` and every tool-call content block too, one wrapped in a v1
``non_standard`` block included).

Context kept for a check: the last few user/assistant text turns (`DEFAULT_HISTORY_TURNS`). Tool
messages are never used as context of another check: untrusted text must not colour the verdict on
the user's own words.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any, TypeGuard

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from qwenguard.core import InputTooLarge, Stage
from qwenguard.core.formats.conversations import (
    _json_parts,
    answer_calls_conversation,
    answer_prefill,
    calls_context_room,
    prompt_conversation,
    response_conversation,
    tool_call_conversation,
    untrusted_conversation,
    with_tool_calls,
)
from qwenguard.core.formats.json_reading import arguments_parsed
from qwenguard.core.formats.media import (
    BASE64_ONLY,
    DATA_KEYS,
    bytes_as_text,
    data_url,
    data_url_text,
    file_data_text,
)
from qwenguard.core.guard import DEFAULT_MAX_CHARS

from .._common import (
    ACTION_KINDS,
    IDENTIFIER,
    LABEL_KEYS,
    REPLY_FIELDS,
    SEALED,
    SEALED_KEYS,
    Kinds,
    action_call,
    identifier,
    link_text,
    pairs_once,
)
from ._stream_reading import ID_KEYS, StreamReading
from ._tool_errors import object_fields, object_text

__all__ = [
    "DEFAULT_HISTORY_TURNS",
    "Item",
    "StreamReading",
    "block_text",
    "message_text",
    "answer_text",
    "reasoning_text",
    "beside_text",
    "source_text",
    "call_history",
    "guard_history",
    "input_items",
    "sent_labels",
    "label_item",
    "system_role",
    "turn_role",
    "user_run_text",
    "output_items",
    "prompt_items",
    "tool_arguments",
    "answer_tool_calls",
    "beyond_its_parse",
    "tool_result_messages",
    "command_messages",
    "is_update_pairs",
    "tool_output_text",
    "tool_labels",
    "opaque_output",
    "tool_result_commands",
    "command_rest",
    "command_rest_text",
    "tool_text",
    "artifact_text",
    "payload_leaf",
    "AS_INPUT",
    "AS_ANSWER",
]

#: How many earlier user/assistant text turns a check sees as context.
DEFAULT_HISTORY_TURNS = 6

#: Marks (in `Item.extra`) a tool-result check of text that came with the input, which a client may write: a
#: tool-role message, or what an earlier answer quotes as a server tool's result. Its stage names its kind, but the
#: client chose that kind by the message's shape, so it is decided under a policy no looser than the prompt stage's
#: (`_screening.screen`): nothing a client sends can loosen the operator's policy (rt54c F1). `GuardMiddleware`
#: takes the mark off the messages it saw its agent's tools (and its guarded model calls) produce.
AS_INPUT = "as_input"

#: Marks (in `Item.extra`) a tool-call check of a structured output's schema call (``with_structured_output``,
#: ``ToolStrategy``): its arguments are the object the application reads, the answer. Asked under the response stage
#: while that stage is on, and decided under the stricter of the response and tool-call stages' policies
#: (`_screening.screen`): a tool-call stage that ignores a category or is off cannot let through an answer the
#: response stage blocks (rt57t, the twin of LlamaIndex's rt57f F1).
AS_ANSWER = "as_answer"


@dataclass
class Item:
    """One check to run: ``stage`` + ``conversation`` (for `Guard.check_many`), and what it came from."""

    stage: Stage
    conversation: list[dict[str, str]]
    message: BaseMessage | None = None
    index: int | None = None  # position of ``message`` in the list it came from
    tool_call: Mapping[str, Any] | None = None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pair(self) -> tuple[Stage, list[dict[str, str]]]:
        return self.stage, self.conversation


# -- text of content blocks ---------------------------------------------------------------------
# Block kinds that are tool calls: judged as actions (``AIMessage.tool_calls``), not as text. Anthropic's
# ``server_tool_use`` and ``mcp_tool_use`` are calls too (ChatAnthropic sends an earlier answer's as they are): their
# ``input`` is judged as arguments, keys and all.
_TOOL_CALL_KINDS = Kinds(
    {
        "tool_call",
        "tool_call_chunk",
        "invalid_tool_call",
        "server_tool_call",
        "server_tool_call_chunk",
        "tool_use",
        "server_tool_use",
        "mcp_tool_use",
        "function_call",
        # The Responses API's actions (`ACTION_KINDS`: a patch the app applies, a computer action, an MCP call the app
        # approves): calls the app or the provider carries out, judged as such (`action_call`; rt54b F3).
        *ACTION_KINDS,
    }
)
# Block kinds that hold what a provider's own (server-side) tool did and returned: text the answer quotes from
# outside (`source_text`, untrusted content), not the model's words. LangChain's standard block, the Responses
# API's items with ``output_version="responses/v1"``; Anthropic's ``*_tool_result`` blocks (`_server_result`).
_SERVER_RESULT_KINDS = Kinds(
    {
        "server_tool_result",
        "mcp_call",
        "mcp_list_tools",
        "file_search_call",
        "code_interpreter_call",
        "web_search_call",
        "image_generation_call",
        "tool_search_output",
        # In an answer, a ``json`` block is what a server tool returned: ChatBedrockConverse streams a server tool's
        # result (``delta.toolResult``) as its text and ``json`` blocks. (In a tool's result it is the tool's data.)
        "json",
    }
)


def _server_result(block: Mapping[str, Any]) -> bool:
    """A content block a provider's own tool wrote (web search, web fetch, code execution, MCP: `_SERVER_RESULT_KINDS`,
    Anthropic's ``web_search_tool_result`` and the like); a client tool's ``tool_result`` is not one."""
    kind = block.get("type")
    return isinstance(kind, str) and (kind in _SERVER_RESULT_KINDS or kind.endswith("_tool_result"))


# Keys that never carry text a model reads: identifiers, media references, encodings, provider
# bookkeeping. Every other string in a block is judged (an unknown block kind fails towards judging).
_NOT_TEXT = frozenset(
    {
        "type",
        "id",
        "index",
        "mime_type",
        "media_type",
        "url",
        "file_id",
        "source_type",
        "cache_control",
        "detail",
        "format",
        "encoding",
        "signature",
        "status",
        "extras",
        "annotations",
        "call_id",
        "tool_call_id",
        "image_url",
        "video_url",
        "audio_url",
    }
)
_BYTES = (bytes, bytearray, memoryview)


def _bytes_text(value: bytes | bytearray | memoryview) -> str | None:
    """A blob's text: ChatBedrockConverse sends raw ``bytes`` (a ``document``'s ``source.bytes``, which boto
    base64-encodes) and the model reads the file. Decoded when its bytes are text (`bytes_as_text`); ``None`` for
    media (an image's, a PDF's, an archive's start, binary bytes), whatever key holds it: a blob is a file."""
    return bytes_as_text(value if isinstance(value, bytes) else bytes(value))


def _media_bytes(value: str) -> bool:
    """Could ``value`` be media data: base64 (a data URL's or bare) longer than a few words? A short or non-base64
    string under a media key is words a reader sees."""
    parsed = data_url(value)
    body = parsed.body if parsed is not None and parsed.base64 else value
    return len(body) > 256 and BASE64_ONLY.fullmatch(body[:4096]) is not None


def _leaf_text(value: str, parent: Mapping[str, Any] | None, key: str, skip: frozenset[str] = _NOT_TEXT) -> str | None:
    """The text of one string found under ``key`` of ``parent`` (``None``: not text)."""
    if data_url(value) is not None:
        return data_url_text(value)
    if key in skip:
        return None
    if key in DATA_KEYS:
        return file_data_text(value, parent, key)  # media bytes are none, unless they are text all the same
    return value


def _is_json(parent: Mapping[str, Any] | None, key: str) -> bool:
    """Is this the object of a ``json`` block (``{"type": "json", "json": {...}}``)?"""
    return key == "json" and parent is not None and parent.get("type") == "json"


def _json_text(value: Any, budget: int = DEFAULT_MAX_CHARS) -> list[str]:
    """A ``json`` block's object as its reader sees it (the model in a tool result, the consumer in an answer): every
    key and string in it (`_keyed_texts`), one a line. Its keys are the data's own words, none a format's."""
    return _keyed_texts(value, budget, frozenset(), _never)


def _strings(value: Any, parent: Mapping[str, Any] | None = None, key: str = "") -> list[str]:
    """The text of the strings in ``value``, in order (`_leaf_text`; ``annotations`` left out).

    A tool-call mapping nested in ``value`` is read as text too: only an answer's top-level call blocks are judged as
    calls (`answer_tool_calls`), and one inside a reasoning summary or a block's ``extras`` reaches the consumer all
    the same (rt49a H1).

    Walked without recursion: a client's block can nest a mapping deeper than Python's recursion limit, and its
    strings are judged all the same. A walk past ``DEFAULT_MAX_CHARS`` items (an object built in process can hold
    itself) raises `InputTooLarge`: what is left must not go out unjudged."""
    texts: list[str] = []
    stack: list[tuple[Any, Mapping[str, Any] | None, Any]] = [(value, parent, key)]  # (item, its mapping, its key)
    for _ in range(DEFAULT_MAX_CHARS):
        if not stack:
            break
        item, parent, key = stack.pop()
        if _is_json(parent, key):
            texts += _json_text(item)
            continue
        text = None
        if isinstance(item, str):
            text = _leaf_text(item, parent, key)
        elif isinstance(item, _BYTES):
            text = _bytes_text(item)
        elif isinstance(item, Mapping):
            stack.extend(reversed([(v, item, k) for k, v in item.items() if k != "annotations"]))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(v, None, "") for v in item]))
        if text is not None:
            texts.append(text)
    if stack:
        raise InputTooLarge(f"a block holds over {DEFAULT_MAX_CHARS} items: it cannot be judged whole")
    return texts


#: The keys of a plain text block: LangChain's ``.text`` is all of it a provider sends.
_TEXT_KEYS = frozenset({"type", "text", "cache_control", "id", "index"})


def block_text(block: Any, *, answer: bool = True, reading: StreamReading | None = None) -> str:
    """The text one content block carries (``""`` for media).

    In an answer (``answer``: the model's own words) a tool call is an action (`answer_tool_calls`) and a
    provider's own tool result is what the answer quotes (`source_text`): neither is read here. In any other
    message (a user turn, a tool's output) they are text like the rest: a provider class sends them on (the
    Responses API's turns a tool output's blocks into one string the model reads).

    A block of a kind the guard does not know (``tool_addition``, ``compaction``, ``redacted_thinking``...) is sent
    as it is (ChatAnthropic passes such blocks on): read whole, its keys too (`_passed_text`), as a parameter's name
    in a tool definition is words a model reads. So is a ``non_standard`` block's value (ChatAnthropic sends it as
    its own block, ChatOllama as its ``str()``) and a mapping without ``type`` (ChatGoogleGenerativeAI sends its
    ``str()``), ids and signatures included, and, outside an answer, whatever a text block carries beside its
    text (Anthropic's ``citations``, kept in every role; an answer's are what it quotes, `source_text`).

    >>> block_text({"type": "text-plain", "mime_type": "text/plain", "text": "notes"})
    'notes'
    >>> block_text({"type": "tool_addition", "tool": {"input_schema": {"properties": {"a_field_name": {}}}}})
    'a_field_name'

    With ``reading`` (one per stream), ``block`` is a streamed chunk's: a block read whole is read as it extends the
    pieces of the same block before it (`StreamReading`), not with its keys again between every two words.
    """
    if reading is not None:
        how = _read_whole(block)
        if how is None:
            reading.block(block, None)  # placed: a piece read whole may join it (`StreamReading`)
            text = block_text(block, answer=answer)
            if text:
                reading.touch()
            return text
        root = reading.block(block, how)
        if how == "non_standard" and "value" in block:
            # LangChain adds two non_standard pieces' values up, the later one's ``type`` dropped.
            value_root = reading.item(reading.child(root, "value"))
            return _passed_text(block["value"], whole=True, reading=reading, root=value_root)
        return _passed_text(block, whole=how != "unknown", reading=reading, root=root)
    if isinstance(block, str):
        return block
    if isinstance(block, Mapping):
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            if answer or block.keys() <= _TEXT_KEYS:
                return block["text"]  # the common case, and exactly LangChain's own ``.text``
            beside = _passed_text({k: v for k, v in block.items() if k not in _TEXT_KEYS})
            return "\n".join(t for t in (block["text"], beside) if t)
        if kind == "non_standard":
            return _passed_text(block["value"] if "value" in block else block, whole=True)
        if _server_result(block) or kind in _TOOL_CALL_KINDS:
            if answer:
                return ""  # an action (`answer_tool_calls`) or a quote (`source_text`): judged apart
            return "\n".join(s for k, v in block.items() if k != "annotations" for s in _strings(v, block, k) if s)
        if _kindless(block):
            # ChatGoogleGenerativeAI sends a mapping without a kind as its ``str()`` (a text part), every character
            # of it words the model reads, ids and signatures too.
            return _passed_text(block, whole=True)
        if kind not in _KNOWN_KINDS:
            return _passed_text(block)
        if kind == "reasoning_content":
            return _bedrock_reasoning(block)
        return "\n".join(s for s in _strings(block) if s)
    return ""


def _bedrock_reasoning(block: Mapping[str, Any]) -> str:
    """ChatBedrockConverse's reasoning block (``{"type": "reasoning_content", "reasoning_content": {"text": ...,
    "signature": ...}}``, streamed in pieces by ``index``), read as reasoning as ``thinking`` is: its strings, and its
    signature when it is words (one base64 token is the provider's check, `_sealed`)."""
    inner = block.get("reasoning_content")
    signature = inner.get("signature") if isinstance(inner, Mapping) else None
    worded = [signature] if isinstance(signature, str) and not _sealed("signature", signature) else []
    return "\n".join(s for s in [*_strings(block), *worded] if s)


def _read_whole(block: Any) -> str | None:
    """How `block_text` reads ``block`` whole (`_passed_text`): ``"non_standard"``, ``"kindless"`` (every character
    text, ids too), ``"unknown"`` (a kind the guard does not know); ``None`` where it reads it otherwise."""
    if not isinstance(block, Mapping):
        return None
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return None
    if kind == "non_standard":
        return "non_standard"
    if _server_result(block) or kind in _TOOL_CALL_KINDS:
        return None
    if _kindless(block):
        return "kindless"
    return "unknown" if kind not in _KNOWN_KINDS else None


def _kindless(block: Mapping[str, Any]) -> bool:
    """A content block without ``type``, as a provider class is given it, or as a callback handler is: langchain-core's
    traced copy names a one-key block's kind after its key (``{"id": x}`` becomes ``{"type": "id", "id": x}``)."""
    kind = block.get("type")
    return kind is None or (isinstance(kind, str) and kind not in _KNOWN_KINDS and block.keys() == {"type", kind})


def message_text(message: BaseMessage | str | Any, reading: StreamReading | None = None) -> str:
    """The text of a message: string content, or the text of every content block that carries text
    (`block_text`: an answer's tool calls and quoted tool results are read apart). ``reading``: ``message`` is a
    streamed chunk, read as it extends the chunks before it (`StreamReading`)."""
    if isinstance(message, str):
        return message
    content = getattr(message, "content", message)
    if isinstance(content, str):
        if content and reading is not None:
            reading.touch()
        return content
    if isinstance(content, (list, tuple)):
        answer = not isinstance(message, BaseMessage) or _role(message) == "assistant"
        if reading is not None:
            reading.contents()
        return "".join(block_text(block, answer=answer, reading=reading) for block in content)
    return "" if content is None else str(content)


#: Block kinds whose name is the format's own word, not text: left out of a tool output's walk (`tool_text`).
_KNOWN_KINDS = Kinds(
    _TOOL_CALL_KINDS
    | _SERVER_RESULT_KINDS
    | {
        "text",
        "text-plain",
        "input_text",
        "output_text",
        "image",
        "image_url",
        "input_image",
        "file",
        "input_file",
        "audio",
        "input_audio",
        "video",
        "json",
        "search_result",
        "document",
        "reasoning",
        "thinking",
        "reasoning_content",
        "refusal",
        "citation",
        "non_standard",
        "custom_tool_call_output",
        "base64",
        "url",
    }
)


def _plain(block: Any) -> bool:
    return isinstance(block, str) or (
        isinstance(block, Mapping) and block.get("type") == "text" and set(block) <= {"type", "text"}
    )


def tool_text(message: Any, budget: int = DEFAULT_MAX_CHARS) -> str:
    """A tool's output as the model reads it: its text (`message_text`), or, for list content that is not plain text
    blocks, every key and string in its blocks but media bytes and the format's own words, one a line. ChatDeepSeek
    sends such a list as its JSON text, and the Responses API's class does for a list holding a block it does not
    know: a page a tool fetched can put text under any key (an image's ``url``, a block's ``status``, a key itself).
    Walked without recursion and only until past ``budget`` characters (the guard refuses what is over it)."""
    content = getattr(message, "content", message)
    if not isinstance(content, (list, tuple)) or all(_plain(b) for b in content):
        return message_text(message)
    return "\n".join(_keyed_texts(content, budget, _TOOL_OUTPUT_WORDS, _format_kind))


def _format_kind(key: str, text: str) -> bool:
    return key == "type" and text in _KNOWN_KINDS


#: Key names a tool output's walk leaves out (`tool_text`): a block's own.
_TOOL_OUTPUT_WORDS = frozenset({"type", "text"})


def _keyed_texts(
    value: Any,
    budget: int,
    words: frozenset[str],
    opaque: Callable[[str, str], bool],
    reading: StreamReading | None = None,
    root: int = 0,
) -> list[str]:
    """Every key and string in ``value`` but media bytes, one a line, as a provider that sends ``value`` as it is
    (or as its JSON text) puts them before the model: keys but the format's own ``words``, strings but those
    ``opaque(key, string)`` says carry no words (a block's kind, an id). Plain words under a media key are words
    (the provider sends them as they are); media data is read only when it is text (`_leaf_text`). Walked without
    recursion and only until past ``budget`` (a text counts its length, anything else one, as `_walk_text` counts):
    a walk cut short raises `InputTooLarge`, since what is left (a million zeros, then a sentence) must not go out
    unjudged.

    With ``reading``, ``value`` is one streamed piece of what is read at its ``root`` path: the texts go to the
    reading, which joins them as LangChain adds the pieces up (`StreamReading`), and none are returned."""
    texts: list[str] = []
    total = 0
    # (item, its mapping, its key, its level: 2 the value itself, 1 an object in one of its lists, 0 deeper, its path
    # in ``reading``: a key name's is ``~`` its value's). ``opaque`` applies where the format puts its own fields,
    # levels 2 and 1 (a block's id, a citation's type), never deeper (a tool definition's schema is words: a
    # property's ``id``, ``signature`` or ``type`` values are read).
    stack: list[tuple[Any, Mapping[str, Any] | None, str, int, int]] = [(value, None, "", 2, root)]
    while stack and total <= budget:
        item, parent, key, level, path = stack.pop()
        formal = level > 0
        text = None
        if isinstance(item, str):
            media = key in DATA_KEYS or data_url(item) is not None
            text = _leaf_text(item, parent, key, frozenset()) if media else item
            if media and text is None and not _media_bytes(item):
                text = item  # plain text under a media key: the provider sends it as it is, words and all
        elif isinstance(item, _BYTES):
            text = _bytes_text(item)
        if reading is not None and text:
            # A piece of a streamed value: the reading tells an id or a signature by the value added up.
            total += len(text)
            if path < 0:
                reading.key(~path, text)
            else:
                reading.leaf(path, key, text, opaque if formal else None)
            continue
        if text and formal and opaque(key, text):
            text = None
        total += max(1, len(text)) if text else 1
        room = budget - total + 1  # items beyond it cannot be reached before the walk stops
        if text:
            texts.append(text)
        elif isinstance(item, Mapping):
            for name, inner in reversed(list(islice(item.items(), room))):
                # A string keeps its mapping's level; a list of the value itself holds level-1 objects; else deeper.
                inner_level = level if isinstance(inner, str) else 1 if level == 2 and isinstance(inner, list) else 0
                at = reading.child(path, str(name)) if reading is not None else 0
                stack.append((inner, item, str(name), inner_level, at))
                if str(name) not in words:
                    stack.append((str(name), None, "", 0, ~at))  # a key is text too
        elif isinstance(item, (list, tuple)):
            # The objects of a level-1 list are level 1; a list in a list, or anything deeper, level 0.
            items = list(islice(item, room))
            paths = [reading.element(path, v) for v in items] if reading is not None else [0] * len(items)
            stack.extend(
                reversed([(v, None, "", level if isinstance(v, Mapping) else 0, p) for v, p in zip(items, paths)])
            )
    if stack or total > budget:
        raise InputTooLarge(f"a block read whole is over {budget} characters: it cannot be judged whole")
    return texts


#: Key names of the block formats (LangChain's standard blocks, Anthropic's, OpenAI's, Bedrock's, JSON Schema's): words
#: of the format, not a client's, left out of a block read whole (`_passed_text`). Any other key is judged as text.
_FORMAT_WORDS = (
    _NOT_TEXT
    | DATA_KEYS
    | {
        "text",
        "content",
        "value",
        "name",
        "description",
        "title",
        "input",
        "args",
        "arguments",
        "output",
        "partial_json",
        "thinking",
        "reasoning",
        "summary",
        "citations",
        "cited_text",
        "document_index",
        "document_title",
        "source",
        "tool_use_id",
        "is_error",
        "server_name",
        "encrypted_content",
        "encrypted_index",
        "tool",
        "tools",
        "definition",
        "input_schema",
        "properties",
        "required",
        "items",
        "tool_changes",
        "executable_code",
        "code_execution_result",
        "language",
        "outcome",
        # AWS Bedrock Converse's (a native block, which ChatBedrockConverse sends as it is: ``{"document": ...}``)
        "document",
        "bytes",
    }
)


def _opaque(key: str, text: str) -> bool:
    """A block's kind, an id or a signature (`ID_KEYS`, `SEALED_KEYS`): no words a model reads."""
    if key in ID_KEYS:
        return IDENTIFIER.fullmatch(text) is not None if key == "type" else identifier(text)
    return key in SEALED_KEYS and SEALED.fullmatch(text) is not None


def _sealed(key: Any, value: Any) -> bool:
    """A signature or encrypted data the provider checks (`SEALED_KEYS`, one base64 token): no words."""
    return key in SEALED_KEYS and isinstance(value, str) and SEALED.fullmatch(value) is not None


def _never(key: str, text: str) -> bool:
    return False


def _passed_text(value: Any, *, whole: bool = False, reading: StreamReading | None = None, root: int = 0) -> str:
    """A block (or part of one) a provider class sends as it is, read whole: its keys but the format's words
    (`_FORMAT_WORDS`) and its strings (`_keyed_texts`), one a line. Ids and signatures are left out (`_opaque`),
    but with ``whole``: a ``non_standard`` block's value, which ChatOllama sends as its ``str()``, every
    character of it text. Read up to the guard's default ``max_chars``.

    With ``reading``, ``value`` is a streamed piece of what sits at ``root``: read as it extends the pieces before it
    (`StreamReading`)."""
    opaque = _never if whole else _opaque
    if reading is None:
        return "\n".join(_keyed_texts(value, DEFAULT_MAX_CHARS, _FORMAT_WORDS, opaque))
    _keyed_texts(value, DEFAULT_MAX_CHARS, _FORMAT_WORDS, opaque, reading, root)
    return reading.take()


def answer_text(message: BaseMessage | str | Any, reading: StreamReading | None = None) -> str:
    """What the consumer of a model's answer (or a streamed chunk of it) reads as the model's words: its
    reasoning (see `reasoning_text`), its text, then the text a provider keeps beside the content
    (`beside_text`: a refusal, a spoken answer's transcript). An earlier answer the model reads back is judged
    the same way: ``ChatOpenAI(use_responses_api=True)`` sends a v0 answer's reasoning summary and refusal back
    with its content.

    A stream's chunks are read through one ``reading`` (`StreamReading`): joined, their texts read as the chunks
    added up do, a block or an ``additional_kwargs`` key read whole included (rt60c F1)."""
    if reading is None:
        return reasoning_text(message) + message_text(message) + beside_text(message)
    reasoning = reasoning_text(message)
    if reasoning:
        reading.touch()
    return reasoning + message_text(message, reading) + beside_text(message, reading)


def beside_text(message: Any, reading: StreamReading | None = None) -> str:
    """The answer's own words kept beside the content, where ``ChatOpenAI`` (Chat Completions) puts them:
    ``additional_kwargs["refusal"]`` (the model's refusal, in place of the content) and
    ``additional_kwargs["audio"]["transcript"]`` (the spoken answer of ``modalities=["text", "audio"]``:
    the content is empty). Apps show and store them as the answer, so they are judged as its text.

    So is every ``additional_kwargs`` key no provider class writes (`_KNOWN_KWARGS`), keys and all (`_passed_text`):
    the consumer gets it with the answer (rt49a M2). A streamed chunk's are read through the stream's ``reading``
    (`StreamReading`): LangChain adds the chunks' keys up by name."""
    extra = getattr(message, "additional_kwargs", None)
    if not isinstance(extra, Mapping):
        return ""
    audio = extra.get("audio")
    texts = (extra.get("refusal"), audio.get("transcript") if isinstance(audio, Mapping) else None)
    said = "".join(t for t in texts if isinstance(t, str))
    unknown = {k: v for k, v in extra.items() if k not in _KNOWN_KWARGS}
    if reading is not None:
        if said:
            reading.touch()
        if not unknown:
            return said
        return said + _passed_text(unknown, reading=reading, root=reading.child(0, "additional_kwargs"))
    rest = _passed_text(unknown) if unknown else ""
    return f"{said}\n{rest}" if said and rest else said or rest


#: The ``additional_kwargs`` keys provider classes write, each read where it is judged: calls (`answer_tool_calls`),
#: server tool outputs (`source_text`), reasoning (`reasoning_text`), the refusal and transcript (`beside_text`), a
#: name and a prefix (`sent_labels`), structured output's ``parsed`` (the content's own JSON), and bookkeeping (a
#: role marker, call id maps, signatures).
_KNOWN_KWARGS = frozenset(
    {
        "function_call",
        "tool_calls",
        "tool_outputs",
        "refusal",
        "audio",
        "reasoning",
        "reasoning_content",
        "name",
        "prefix",
        "parsed",
        "__openai_role__",
        "__openai_function_call_ids__",
        "__gemini_function_call_thought_signatures__",
    }
)


def reasoning_text(message: Any) -> str:
    """A thinking model's reasoning carried beside the content: ``additional_kwargs["reasoning_content"]``,
    where `ChatDeepSeek`, `ChatOllama(reasoning=True)` and other OpenAI-compatible provider classes put
    it (DeepSeek's API and vLLM's reasoning parsers stream it as ``delta.reasoning_content``), and the
    Responses API's reasoning item with ``output_version="v0"``: ``additional_kwargs["reasoning"]``, its
    ``summary`` (and ``content``) parts' ``text``. Apps show it as the model's "thinking", so it is judged
    with the answer, before it. Not when the content already has a reasoning block (LangChain's standard
    blocks and ``output_version="responses/v1"`` move it there; `block_text` reads it)."""
    extra = getattr(message, "additional_kwargs", None)
    if not isinstance(extra, Mapping):
        return ""
    texts: list[Any] = [extra.get("reasoning_content")]
    item = extra.get("reasoning")
    if isinstance(item, str):
        texts.append(item)  # a provider's plain reasoning string
    elif item is not None:
        # The item's summary and content parts, and whatever else it holds (a call beside the summary reaches the
        # consumer too, rt49a M2): every string but its labels, and its signature and encrypted content when each is
        # one base64 token (`_sealed`; words there are read, rt54b F4, as `source_text` and `_passed_text` read them).
        kept = item.items() if isinstance(item, Mapping) else [("", item)]
        texts += _strings({k: v for k, v in kept if not _sealed(k, v)})
    reasoning = "".join(t for t in texts if isinstance(t, str))
    if not reasoning:
        return ""
    content = getattr(message, "content", None)
    if isinstance(content, (list, tuple)):
        # What the content's reasoning blocks say (`block_text` reads them): judged there. Reasoning that is not all
        # in them is judged here too: a client's history can put anything beside a short block, and ChatOllama sends
        # ``reasoning_content`` (as ``thinking``) while dropping the blocks.
        blocks = "\n".join(
            block_text(b)
            for b in content
            if isinstance(b, Mapping) and b.get("type") in ("reasoning", "thinking", "reasoning_content")
        )
        if blocks and all(t in blocks for t in texts if isinstance(t, str)):
            return ""
    return reasoning


# -- what an answer quotes: untrusted text beside its own words ------------------------------------------
#: Keys that hold no text in what an answer quotes (besides `_NOT_TEXT`, whose ``extras`` and ``annotations``
#: are walked here, and whose ``url`` is read as the words its path spells, `link_text`): opaque encodings and
#: container ids. Encrypted data (``encrypted_content``, ``encrypted_index``) is left out only when it is one base64
#: token (`_sealed`): words there are read (rt54b F4).
_SOURCE_NOT_TEXT = (_NOT_TEXT - {"extras", "annotations", "url"}) | {"container_id", "partial_image_b64"}
#: Server tool outputs whose ``result`` is media (an image's base64), not text.
_MEDIA_RESULTS = Kinds({"image_generation_call"})
#: Provider bookkeeping in ``response_metadata``, never judged: ids, model names, finish reasons, usage,
#: timings, HTTP headers, the provider's own safety ratings, the app's own request ``metadata`` and ``user``
#: echoed back, the guard's record (`_screening.METADATA_KEY`), and ``logprobs`` (the answer's own tokens,
#: judged as its text). Every other string there is judged (an unknown key fails towards judging).
_METADATA_NOT_TEXT = frozenset(
    {
        "id",
        "model",
        "model_name",
        "model_id",
        "model_provider",
        "model_version",
        "system_fingerprint",
        "finish_reason",
        "stop_reason",
        "stop_sequence",
        "done_reason",
        "incomplete_details",
        "service_tier",
        "created",
        "created_at",
        "expires_at",
        "object",
        "status",
        "output_version",
        "usage",
        "token_usage",
        "headers",
        "logprobs",
        "safety_ratings",
        "metadata",
        "user",
        "qwenguard",
        # AWS Bedrock's (boto's request record, stop reason, latency metrics)
        "ResponseMetadata",
        "stopReason",
        "metrics",
        "amazon-bedrock-invocationMetrics",
    }
)


#: The keys of what an answer quotes that are the formats' own words (`_FORMAT_WORDS`, the reply formats' field
#: names `REPLY_FIELDS`, labels `LABEL_KEYS`, metadata's bookkeeping): every other key is read as text (rt54b F5), as
#: in a block read whole (`_passed_text`). A third-party MCP server names its tools' parameters in an
#: ``mcp_list_tools`` item, which the model reads back.
_QUOTE_WORDS = _FORMAT_WORDS | REPLY_FIELDS | LABEL_KEYS | _METADATA_NOT_TEXT
#: Kinds of a quoted part whose ``url`` is media's, not a page's address: left out (`_walk_text`).
_MEDIA_PARTS = Kinds({"image", "image_url", "input_image", "audio", "video", "file", "input_file"})


#: In ``prompt_feedback`` (ChatGoogleGenerativeAI's, when Gemini refused the prompt), the provider's own ratings:
#: bookkeeping as ``safety_ratings`` is. Its ``block_reason`` is a label (`_metadata_text`); its
#: ``block_reason_message`` free text the consumer reads, judged.
_FEEDBACK_RATINGS = "safety_ratings"
_FEEDBACK_LABEL = "block_reason"


def _feedback_text(feedback: Any) -> Any:
    """``prompt_feedback`` but its ratings, and its reason unless that is more than one identifier."""
    if not isinstance(feedback, Mapping):
        return feedback
    reason = feedback.get(_FEEDBACK_LABEL)
    label = not isinstance(reason, str) or IDENTIFIER.fullmatch(reason) is not None
    skip = {_FEEDBACK_RATINGS, _FEEDBACK_LABEL} if label else {_FEEDBACK_RATINGS}
    return {k: v for k, v in feedback.items() if k not in skip}


def _metadata_text(meta: Mapping[str, Any], budget: int) -> dict[str, Any]:
    """The part of ``response_metadata`` that may hold text: all but provider bookkeeping (`_METADATA_NOT_TEXT`,
    and the ratings in ``prompt_feedback``)."""
    found = {k: v for k, v in islice(meta.items(), budget + 1) if k not in _METADATA_NOT_TEXT}
    if "prompt_feedback" in found:
        found["prompt_feedback"] = _feedback_text(found["prompt_feedback"])
    return found


def _walk_text(value: Any, budget: int, skip: frozenset[str], *, unkeyed: Any = None) -> list[str]:
    """The text of the strings in ``value`` (through mappings' keys and values, lists and tuples; strings under a key
    in ``skip`` and media data left out, `_leaf_text`), walked without recursion and only until past
    ``budget`` (a text counts its length, anything else one), as `artifact_text` walks. A walk cut short
    raises `InputTooLarge`: what is left must not go out unjudged.

    Keys are read but the formats' own words (`_QUOTE_WORDS`), and but those of ``unkeyed`` itself (a provider class's
    ``response_metadata``, whose keys are its own); a link under ``url`` is read as the words its path spells
    (`link_text`, not a media part's); encrypted data and signatures are left out when they are one base64 token."""
    texts: list[str] = []
    total = 0
    stack: list[tuple[Any, Mapping[str, Any] | None, Any]] = [(value, None, "")]  # (item, its mapping, its key)
    while stack and total <= budget:
        item, parent, key = stack.pop()
        if _is_json(parent, key):
            found = _json_text(item, budget - total)  # keys too (refused there when over what is left)
            texts += found
            total += sum(max(1, len(t)) for t in found) or 1
            continue
        if isinstance(item, str):
            if _sealed(key, item):
                text = None
            elif key == "url" and data_url(item) is None and "://" in item[:16] and not any(c.isspace() for c in item):
                media = parent is not None and parent.get("type") in _MEDIA_PARTS
                text = None if media else link_text(item) or None  # a page's address spells words (rt54b F2)
            else:
                text = _leaf_text(item, parent, key, skip)
        else:
            text = _bytes_text(item) if isinstance(item, _BYTES) else None
        total += max(1, len(text)) if text else 1
        room = budget - total + 1  # items beyond it cannot be reached before the walk stops
        if text:
            texts.append(text)
        elif isinstance(item, Mapping):
            media = item.get("type") in _MEDIA_RESULTS
            keyed = item is not unkeyed
            pairs: list[tuple[Any, Mapping[str, Any] | None, Any]] = []
            for k, v in islice(item.items(), room):
                if keyed and str(k) not in _QUOTE_WORDS:
                    pairs.append((str(k), None, ""))  # a key no format names: words the consumer reads (rt54b F5)
                if not (media and k == "result"):
                    pairs.append((v, item, k))
            stack.extend(reversed(pairs))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(v, None, "") for v in islice(item, room)]))
    if stack or total > budget:
        raise InputTooLarge(f"the text an answer quotes is over {budget} characters: it cannot be judged whole")
    return texts


def _quoted(block: Mapping[str, Any]) -> list[Any]:
    """What one content block of an answer quotes: a server tool's result, whole (`_server_result`); else a block's
    citations and annotations, a ``reference`` (ChatMistralAI moves a reference chunk's fields but its text there,
    with ``output_version="v0"``), and a ``json`` object beside its own fields: a streamed server tool result (a
    ``json`` block) that LangChain's sum of chunks merged into the block of the same index, a text block say."""
    if _server_result(block):
        return [block]
    merged = {"type": "json", "json": block["json"]} if "json" in block else None
    return [block.get("citations"), block.get("annotations"), block.get("reference"), merged]


def source_text(message: Any, budget: int = DEFAULT_MAX_CHARS, *, metadata: bool = True) -> str:
    """The untrusted text an answer (or a streamed chunk of it) carries beside its own words, one string a
    line: what it quotes from its sources and what the provider's own tools returned. Judged as untrusted
    content, as tool results and retrieved documents are:

    - citations of content blocks: Anthropic's ``citations`` and the ``annotations`` of OpenAI's and
      LangChain's standard text blocks (``cited_text``, ``title``, a document's title, the words a page's ``url``
      spells, `link_text`; not ids);
    - what a provider's own tools returned: ``additional_kwargs["tool_outputs"]``, the Responses API's
      server-side tool items with ``output_version="v0"`` (an MCP call's ``output``, file search results, code
      interpreter logs), and the same items as content blocks (``responses/v1``), LangChain's standard
      ``server_tool_result`` blocks and Anthropic's ``*_tool_result`` blocks (`_server_result`), and a server tool's
      result ChatBedrockConverse streams as a ``json`` block, keys and all (`_quoted`);
    - with ``metadata``, the strings of ``response_metadata`` but provider bookkeeping (`_metadata_text`):
      grounding sources a provider puts there, the message of Gemini's ``prompt_feedback``. The model never reads
      its metadata back.

    Read within ``budget`` characters (`_walk_text`; the guard's ``max_chars``)."""
    found: list[Any] = []
    content = getattr(message, "content", None)
    if isinstance(content, (list, tuple)):
        for block in content:
            if isinstance(block, Mapping):
                found += _quoted(block)
    extra = getattr(message, "additional_kwargs", None)
    if isinstance(extra, Mapping):
        outputs = extra.get("tool_outputs")
        if isinstance(outputs, (list, tuple)):
            # The actions among them (`ACTION_KINDS`) are calls, judged as such (`answer_tool_calls`).
            outputs = [o for o in outputs if not (isinstance(o, Mapping) and o.get("type") in ACTION_KINDS)]
        found.append(outputs)
    meta = getattr(message, "response_metadata", None) if metadata else None
    read_meta = _metadata_text(meta, budget) if isinstance(meta, Mapping) else None
    found.append(read_meta)
    found = [f for f in found if f]  # every streamed chunk is read: most carry nothing here
    return "\n".join(_walk_text(found, budget, _SOURCE_NOT_TEXT, unkeyed=read_meta)) if found else ""


#: `ChatMessage` roles (any string a provider accepts) read as the assistant's turn, and as a tool's output; a
#: system or developer role is the system's (`system_role`); any other is read as a user's turn (`_role`).
_ASSISTANT_ROLES = Kinds({"assistant", "ai", "model"})
_TOOL_ROLES = Kinds({"tool", "function", "ipython"})


#: A message's kind by its class: a chunk class is sent as the class it extends (langchain-openai converts by
#: ``isinstance``), while its ``type`` names the chunk ("ChatMessageChunk"), which no comparison matched (rt63f F2).
_KINDS = (
    (HumanMessage, "human"),
    (AIMessage, "ai"),
    (SystemMessage, "system"),
    (ChatMessage, "chat"),
    (ToolMessage, "tool"),
    (FunctionMessage, "function"),
)


def _kind(message: BaseMessage) -> str:
    """``message``'s type as a provider class sends it: its class's (`_KINDS`), else its ``type`` (a chunk's without
    its ``Chunk`` suffix)."""
    for cls, kind in _KINDS:
        if isinstance(message, cls):
            return kind
    kind = str(message.type)
    return kind[: -len("MessageChunk")].lower() if kind.endswith("MessageChunk") else kind


def _role(message: BaseMessage) -> str | None:
    kind = _kind(message)
    if kind == "human":
        return "user"
    if kind == "ai":
        return "assistant"
    if kind == "chat":
        role = str(getattr(message, "role", "")).strip().lower()
        if role in _ASSISTANT_ROLES:
            return "assistant"
        if role not in _TOOL_ROLES and role not in ("system", "developer"):
            # A user's, or a role the guard does not know ("critic", "narrator"): a chat template may show it to
            # the model as it likes, so it is judged as input, as a user turn is.
            return "user"
    return None  # system, tool, function, ...: not conversation context


def user_run_text(message: BaseMessage) -> str | None:
    """What ``message`` adds to the run of user turns a provider sends as one message (`_UserRun`'s rule): a user
    turn's text, a tool result's; ``""`` for a turn the run goes on across (a system message, hoisted out; an
    assistant turn a provider drops, `_dropped_answer`); ``None`` for a turn that ends it (an assistant's)."""
    if system_role(message) is not None or _dropped_answer(message):
        return ""
    if _is_tool_output(message):
        return tool_text(message)
    return message_text(message) if _role(message) == "user" else None


def turn_role(message: BaseMessage) -> str | None:
    """The turn ``message`` is as the model reads it: ``"user"`` (a `ChatMessage` of a user's or an unknown role too),
    ``"assistant"``, or ``None`` (a system, developer or tool message: not a turn of the conversation)."""
    return _role(message)


#: The `ChatMessage` roles the guard knows; any other role string is sent as it is (ChatOllama) and judged as a label.
_KNOWN_ROLES = _ASSISTANT_ROLES | _TOOL_ROLES | {"user", "human", "system", "developer"}


def _unknown_role(message: BaseMessage) -> bool:
    role = getattr(message, "role", None)
    return isinstance(role, str) and bool(role.strip()) and role.strip().lower() not in _KNOWN_ROLES


def system_role(message: BaseMessage) -> str | None:
    """``"system"`` or ``"developer"`` for a message of that role, else ``None``. An OpenAI-style
    ``{"role": "developer"}`` converts to a `SystemMessage` marked ``__openai_role__``."""
    kind = _kind(message)
    if kind == "system":
        extra = message.additional_kwargs
        return "developer" if isinstance(extra, Mapping) and extra.get("__openai_role__") == "developer" else "system"
    if kind == "chat":
        role = str(getattr(message, "role", "")).strip().lower()
        return role if role in ("system", "developer") else None
    return None


def _is_tool_output(message: BaseMessage) -> bool:
    """A tool's (or legacy function's) result the model reads: untrusted text."""
    kind = _kind(message)
    if kind in ("tool", "function"):
        return True
    return kind == "chat" and str(getattr(message, "role", "")).strip().lower() in _TOOL_ROLES


def _turn(message: BaseMessage) -> dict[str, str] | None:
    role = _role(message)
    if role is None:
        return None
    text = message_text(message)
    return {"role": role, "content": text} if text.strip() else None


def guard_history(messages: Sequence[BaseMessage], turns: int = DEFAULT_HISTORY_TURNS) -> list[dict[str, str]]:
    """The last ``turns`` user/assistant text turns of ``messages`` as ``{"role", "content"}`` dicts, and at least the
    assistant turns of text that end them, whatever ``turns`` says: a prefill is the start of the answer, not context
    (`response_conversation` judges the answer as its continuation; with ``history_turns=0`` it was dropped and the
    continuation judged alone, rt62g F4)."""
    prefill: list[dict[str, str]] = []
    for message in reversed(messages):
        if not isinstance(message, AIMessage) or message.tool_calls or (turn := _turn(message)) is None:
            break
        prefill.append(turn)
    if turns <= len(prefill):
        return prefill[::-1]
    out: list[dict[str, str]] = []
    for message in reversed(messages):  # from the end: a long history costs only the turns kept
        turn = _turn(message)
        if turn is not None:
            out.append(turn)
            if len(out) == turns:
                break
    return out[::-1]


def call_history(
    messages: Sequence[BaseMessage], turns: int = DEFAULT_HISTORY_TURNS, budget: int | None = None
) -> list[dict[str, str]]:
    """The context a new tool call is judged in: `guard_history`, and the calls the model asked for since the user's
    latest request, each answer's after its text in its own turn (`with_tool_calls`). A clause split over two
    successive answers' calls (one call each: the agent loop) ran when a call was read after text turns alone
    (rt71j F2). Calls alone are the run's own actions, not counted in ``turns``: `tool_call_conversation` keeps them
    while they fit its ``max_chars``, the oldest left out first. ``budget``: rendered only until that much is written
    (older calls are left out), and at most `CALLS_CONTEXT_CHARS` of calls: a long run costs a call no more than that
    (rt72m F2)."""
    request = next((i for i in range(len(messages) - 1, -1, -1) if _role(messages[i]) == "user"), None)
    if request is None or turns <= 0:
        return guard_history(messages, turns)
    out: list[dict[str, str]] = []
    said, room, acted = 0, calls_context_room(budget), False
    for i in range(len(messages) - 1, -1, -1):  # from the end, as `guard_history`
        message, turn = messages[i], _turn(messages[i])
        # Past the bound, an older answer's calls are not read (left out, as `tool_call_conversation` would).
        acts = _asked_calls(message) if i > request and (room is None or room > 0) else []
        if acts:
            content = with_tool_calls(turn["content"] if turn else None, acts, max_chars=room)
            room = None if room is None else room - len(content)
            out.append({"role": "assistant", "content": content})
            acted = True
        elif turn is not None:
            out.append(turn)
        said += turn is not None
        if said >= turns:
            break
    # No call since the request: the answer's context, as `guard_history` gives it (an answer's prefill kept whole).
    return out[::-1] if acted else guard_history(messages, turns)


def _asked_calls(message: BaseMessage) -> list[tuple[str, Mapping[str, Any] | str]]:
    """The ``(name, arguments)`` of every call an earlier answer asked for (`answer_tool_calls`)."""
    if not isinstance(message, AIMessage):
        return []
    return [(str(call.get("name") or ""), tool_arguments(call)) for call in answer_tool_calls(message)]


class _RunCalls:
    """`call_history` of the messages read so far, kept as `input_items` goes (never walking back over them): an
    earlier answer's calls are judged in the context they were judged in when asked (a check allowed then is not
    asked again, and a clause split over two answers of a client's history is read whole too: rt71j F2)."""

    def __init__(self, turns: int, budget: int | None) -> None:
        self.turns, self.budget = turns, budget
        self.plain: deque[dict[str, str]] = deque(maxlen=max(turns, 1))  # the latest text turns (`_turn`)
        self.before: list[dict[str, str]] | None = None  # ``plain`` at the latest user message (none yet: None)
        self.since: list[tuple[dict[str, str] | None, str | None]] = []  # after it: (text turn, calls rendered)
        self.acted = False  # a call since the latest user message

    def add(self, message: BaseMessage) -> None:
        turn = _turn(message)
        if turn is not None:
            self.plain.append(turn)
        if _role(message) == "user":
            self.before, self.since, self.acted = list(self.plain), [], False
        elif self.before is not None and self.turns > 0:
            acts = _asked_calls(message)
            if acts or turn is not None:
                text = turn["content"] if turn else None
                rendered = with_tool_calls(text, acts, max_chars=calls_context_room(self.budget)) if acts else None
                self.since.append((turn, rendered))
                self.acted = self.acted or bool(acts)

    def context(self) -> list[dict[str, str]] | None:
        """What a call of the next message is read after, as `call_history` reads the messages so far; ``None``
        where no call was asked for since the user's latest message (`guard_history`'s reading, as before)."""
        if not self.acted or self.before is None:
            return None
        out: list[dict[str, str]] = []
        said, room = 0, calls_context_room(self.budget)
        for turn, acts in reversed(self.since):
            if acts is not None and (room is None or room > 0):
                out.append({"role": "assistant", "content": acts})  # past ``room``: left out by the check anyway
                room = None if room is None else room - len(acts)
            elif turn is not None:
                out.append(turn)
            said += turn is not None
            if said >= self.turns:
                return out[::-1]
        for turn in reversed(self.before):
            out.append(turn)
            said += 1
            if said >= self.turns:
                break
        return out[::-1]


def tool_arguments(tool_call: Mapping[str, Any]) -> Mapping[str, Any] | str:
    """A tool call's arguments as a mapping (or the raw JSON text when it is not an object). A string argument that
    is itself JSON holding a ``\\u`` escape is given parsed, decoded, as the tool reads it when it ``json.loads``
    it (rt58e F5: `arguments_parsed`)."""
    args = tool_call.get("args")
    if isinstance(args, Mapping):
        return arguments_parsed(args)
    if isinstance(args, str):
        try:  # a key written twice: as written (a parse keeps its last value, the text holds both)
            parsed = json.loads(args, object_pairs_hook=pairs_once)
        except (ValueError, RecursionError):
            return args
        return arguments_parsed(parsed) if isinstance(parsed, Mapping) else args
    if args is None:
        return {}
    try:
        return str(args)
    except RecursionError:  # a list nested deeper than Python's recursion limit: its JSON, written from a stack
        return "".join(_json_parts(args))


def input_items(
    messages: Sequence[BaseMessage],
    turns: int = DEFAULT_HISTORY_TURNS,
    *,
    screen_system: bool = False,
    budget: int | None = None,
) -> list[Item]:
    """Everything the model is about to read, by role (see the module docstring). ``budget``: the guard's
    ``max_chars``, which an earlier answer's tool calls are rendered until past (`output_items`).

    User turns, and system and developer messages, become prompt checks and assistant turns response
    checks (text) and tool-call checks, each with the earlier turns as history; `ToolMessage`s become
    tool-result checks (untrusted, alone), marked as the client's input (`AS_INPUT`: decided no looser than a
    prompt), as is what an earlier answer quotes; a run of consecutive user turns is judged once more, joined
    (`_UserRun`). Empty texts are skipped, and so is a ``system`` message that opens the list (the application's
    prompt) unless ``screen_system``. Linear in the number of messages.
    """
    items: list[Item] = []
    history: list[dict[str, str]] = []  # the user/assistant turns (and judged system text) before message i
    answered: dict[str, str] = {}  # the tool calls asked for before message i, id to name
    run = _UserRun()  # the consecutive user turns ending at message i - 1
    acted = _RunCalls(turns, budget)  # the calls asked for since the latest user turn, before message i
    for i, message in enumerate(messages):
        context = history[-turns:] if turns > 0 else []
        system = system_role(message)
        if (system is None and _role(message) == "user") or _is_tool_output(message):
            run.add(message, context, i)
        elif system is None and not _dropped_answer(message) and (joined := run.end()) is not None:
            items.append(joined)
        if i == 0 and system == "system" and not screen_system:
            continue  # the application's prompt
        if (labeled := label_item(message, answered)) is not None:
            labeled.index = i
            items.append(labeled)
        if isinstance(message, AIMessage):
            # Only an answer's calls, which are judged as calls below: tool_calls a client's history puts on
            # another turn (convert_to_messages keeps them there) are judged nowhere, and must exempt nothing.
            answered.update(_call_names(message))
        if _is_tool_output(message):
            text = tool_text(message)
            if text.strip():
                name = getattr(message, "name", None) or "tool"
                conversation = untrusted_conversation(text, "tool output")
                label = f"tool result of {name}"
                items.append(Item(Stage.TOOL_RESULT, conversation, message, i, label=label, extra={AS_INPUT: True}))
            continue
        # Other system text is input like a user turn: judged as one, and context for what follows.
        role = "user" if system is not None else _role(message)
        text = message_text(message) if role is not None else ""
        if role == "user" and text.strip():
            label = f"{system} message" if system else "user input"
            items.append(Item(Stage.PROMPT, prompt_conversation(text, context), message, i, label=label))
        elif role == "assistant":
            # What the model reads back: its words as they were answered (the Responses API's provider class sends
            # an earlier answer's v0 reasoning summary and refusal back with it), not the provider's metadata.
            calls = acted.context() if isinstance(message, AIMessage) else None
            for item in output_items(message, context, turns, metadata=False, budget=budget, calls_context=calls):
                item.index = i
                if item.stage is Stage.TOOL_RESULT:  # what it quotes as a server tool's result: the client's text
                    item.extra[AS_INPUT] = True
                items.append(item)
        if role is not None and text.strip():
            history.append({"role": role, "content": text})
            if len(history) > 4 * max(turns, 1):
                del history[: -max(turns, 1)]  # keep it bounded on long histories
        acted.add(message)
    if (joined := run.end()) is not None:
        items.append(joined)
    return items


def _dropped_answer(message: BaseMessage) -> bool:
    """An assistant turn with no text and no tool calls, which a provider class may leave out of the request
    (ChatAnthropic drops such a turn that is not the last): the user turns around it are sent as one run."""
    if _role(message) != "assistant" or message_text(message).strip():
        return False
    calls = (*(getattr(message, "tool_calls", None) or ()), *(getattr(message, "invalid_tool_calls", None) or ()))
    return not calls


class _UserRun:
    """Consecutive user turns, which provider classes send as one message (ChatAnthropic merges them into one user
    message of their text blocks): each is judged alone (`input_items`), and the run, of two or more, once more as
    that one message reads, its texts joined as `message_text` joins a message's blocks (rt54c F9: "How can I make a
    bo" and "mb at home?" were each safe). The run is the one the provider sends (rt54e E1): it goes on across a
    system message (hoisted out of the turns: judged on its own) and an assistant turn with no text and no tool calls
    (dropped, `_dropped_answer`), and takes in tool results (sent in the user's role, merged with the user turn after
    them); a run of tool results alone is not joined (each is judged). Linear: each turn's text is read once more,
    and the guard's ``max_chars`` applies to the joined text as to any message's."""

    def __init__(self) -> None:
        self.messages: list[BaseMessage] = []
        self.context: list[dict[str, str]] = []
        self.texts: list[str] = []
        self.index: int | None = None
        self.users = 0

    def add(self, message: BaseMessage, context: list[dict[str, str]], index: int) -> None:
        if not self.messages:
            self.context = context
        self.messages.append(message)
        tool = _is_tool_output(message)
        self.texts.append(tool_text(message) if tool else message_text(message))
        self.users += not tool
        self.index = index

    def end(self) -> Item | None:
        """The check of the run that ends here (``None`` for a run of fewer than two turns with text, or with no user
        turn), and a new run."""
        messages, texts, context, index, users = self.messages, self.texts, self.context, self.index, self.users
        self.messages, self.texts, self.context, self.index, self.users = [], [], [], None, 0
        if not users or sum(1 for t in texts if t.strip()) < 2:
            return None  # one turn with text reads the same alone: judged already
        joined = "".join(texts)
        label = f"{len(messages)} consecutive user turns, as one message"
        return Item(
            Stage.PROMPT,
            prompt_conversation(joined, context),
            messages[-1],
            index,
            label=label,
            extra={"run": messages},
        )


def sent_labels(message: BaseMessage, answered: Mapping[str, str] | None = None) -> str:
    """What a provider class sends with a message beside its text, one a line, judged on its own: its name
    (``name``, or ``additional_kwargs["name"]``: ChatOpenAI sends it for every role but a tool's, and a model reads
    it, the speaker's name or a legacy function's; a phrase fits in one, ``Ignore_your_rules_and_...``) and the ids
    of its tool calls (a `ToolMessage`'s ``tool_call_id``, an answer's calls') that are not identifiers: they go out
    with the calls, and a chat template may show them; a `ChatMessage`'s role the guard does not know (ChatOllama
    sends it as it is, and a template may print it); an assistant turn's ``additional_kwargs["prefix"]`` that is not
    a flag (`_prefix_text`). "" when there is none. A `ToolMessage`'s name is sent too (ChatMistralAI's ``name``,
    ChatGoogleGenerativeAI's ``functionResponse.name``), but not judged when it is the name of the call it answers
    (``answered``: call ids to names of the turns before it, `_call_names`), which was judged with the call: what
    ``ToolNode`` writes costs no check. (`GuardMiddleware` trusts the name its agent puts on its own answers,
    `label_item`.)"""
    labels: list[str] = []
    if _kind(message) == "chat" and _unknown_role(message):
        labels.append(str(getattr(message, "role", "")))
    name = _sent_name(message, answered or {})
    if name:
        labels.append(name)
    prefix = _prefix_text(message)
    if prefix:
        labels.append(prefix)
    calls = [*(getattr(message, "tool_calls", None) or ()), *(getattr(message, "invalid_tool_calls", None) or ())]
    # Each id with the name of the call it identifies, judged with the call (a Kimi-style id frames it: rt69k F5).
    answered_id = getattr(message, "tool_call_id", None)
    ids = [(answered_id, (answered or {}).get(answered_id) if isinstance(answered_id, str) else None)]
    ids += [(c.get("id"), _call_name(c)) for c in calls if isinstance(c, Mapping)]
    labels += [i for i, name in ids if worded(i, name)]
    return "\n".join(labels)


def _call_name(call: Mapping[str, Any]) -> str | None:
    name = call.get("name")
    return name if isinstance(name, str) else None


def _sent_name(message: BaseMessage, answered: Mapping[str, str]) -> str | None:
    """The name sent with ``message`` (see `sent_labels`), or ``None``."""
    if _kind(message) == "tool":
        name = getattr(message, "name", None)
        if not isinstance(name, str) or not name.strip():
            return None
        return None if answered.get(getattr(message, "tool_call_id", None) or "") == name else name
    name = getattr(message, "name", None)
    if not isinstance(name, str) or not name.strip():
        extra = getattr(message, "additional_kwargs", None)
        name = extra.get("name") if isinstance(extra, Mapping) else None
    return name if isinstance(name, str) and name.strip() else None


def _prefix_text(message: BaseMessage) -> str:
    """An assistant turn's ``additional_kwargs["prefix"]``, which ChatMistralAI sends as it is: Mistral's API reads
    a flag there, a compatible server may read anything. A string is judged as it is, an object or a list as its
    JSON; a flag, a number or nothing carries no words ("")."""
    extra = getattr(message, "additional_kwargs", None) if _kind(message) == "ai" else None
    prefix = extra.get("prefix") if isinstance(extra, Mapping) else None
    if isinstance(prefix, str):
        return prefix if prefix.strip() else ""
    if prefix is None or isinstance(prefix, (bool, int, float)):
        return ""
    try:
        return json.dumps(prefix, ensure_ascii=False, default=str)
    except RecursionError:  # nested deeper than Python's recursion limit: the same text, written from a stack
        return "".join(_json_parts(prefix))


def _call_names(message: BaseMessage) -> dict[str, str]:
    """The tool calls an answer asks for, id to name (what a `ToolMessage` after it answers)."""
    calls = [*(getattr(message, "tool_calls", None) or ()), *(getattr(message, "invalid_tool_calls", None) or ())]
    return {
        c["id"]: c["name"]
        for c in calls
        if isinstance(c, Mapping) and isinstance(c.get("id"), str) and isinstance(c.get("name"), str)
    }


def label_item(message: BaseMessage, answered: Mapping[str, str] | None = None) -> Item | None:
    """The check of what is sent with ``message`` beside its text (`sent_labels`), or ``None``."""
    labels = sent_labels(message, answered)
    return Item(Stage.PROMPT, prompt_conversation(labels), message, label="name of a message") if labels else None


def prompt_items(prompts: Sequence[str]) -> list[Item]:
    """Plain-text LLM prompts (``on_llm_start``): each one is the user's input."""
    return [
        Item(Stage.PROMPT, prompt_conversation(p), None, i, label="prompt") for i, p in enumerate(prompts) if p.strip()
    ]


def output_items(
    message: BaseMessage,
    context: Sequence[BaseMessage] | Sequence[Mapping[str, str]],
    turns: int = DEFAULT_HISTORY_TURNS,
    *,
    text: bool = True,
    tool_calls: bool | Collection[str] = True,
    answers: Collection[str] = (),
    metadata: bool = True,
    sources: bool | None = None,
    budget: int | None = None,
    labels: bool = False,
    own_name: str | None = None,
    calls_context: Sequence[Mapping[str, str]] | None = None,
) -> list[Item]:
    """The model's answer: its words as a response check (`answer_text`: with its reasoning, refusal and
    transcript), the text it quotes as an untrusted-content check, and each tool call it asks for as an action.

    ``context``: the messages the model saw (LangChain messages or guard dicts). ``metadata``: read the
    ``response_metadata`` the consumer reads too (`source_text`; off for an earlier turn the model reads back,
    which no provider class sends). ``sources``: judge what the answer quotes (`source_text`; default: with the
    text). ``budget``: the guard's ``max_chars``, what `source_text` reads at most (default `DEFAULT_MAX_CHARS`) and
    what a tool call is rendered until past (none given: rendered whole; a smaller bound than the guard's would hand
    back a cut call judged as if whole). ``answers``: the structured
    output's schema tools, whose calls are the answer: judged whatever ``tool_calls`` says, marked `AS_ANSWER`.
    ``labels``: judge what is sent with the answer beside its text too (`label_item`: its name, which ChatOpenAI reads
    from the server's ``message.name`` and sends back next turn, worded call ids, a ``prefix``; rt69d F3), but the
    name the application gives its agent's answers (``own_name``: ``create_agent(name=...)``). Off where the caller
    judges labels itself (`input_items`, `GuardMiddleware`). ``calls_context``: what its tool calls are read after,
    where ``context`` is guard dicts (`call_history` of the messages; default: the history its text is read after);
    from LangChain messages it is `call_history`'s.
    """
    history = _as_history(context, turns)
    items: list[Item] = []
    if labels:
        bare = message.model_copy(update={"name": None}) if own_name and message.name == own_name else message
        labeled = label_item(bare)
        if labeled is not None:
            items.append(replace(labeled, message=message))
    body = answer_text(message)
    if text and body.strip():
        # Response moderation reads an answer *to* a user turn (the official format): an answer with
        # no user turn before it (a client's history that starts with one) follows an empty one.
        before = (
            history if any(m.get("role") == "user" for m in history) else [{"role": "user", "content": ""}, *history]
        )
        items.append(Item(Stage.RESPONSE, response_conversation(before, body), message, label="model response"))
    quoted = (
        source_text(message, DEFAULT_MAX_CHARS if budget is None else budget, metadata=metadata)
        if (text if sources is None else sources)
        else ""
    )
    if quoted.strip():
        # Quoted source text and server tool outputs come from outside: judged alone, as a tool's result is.
        conversation = untrusted_conversation(quoted, "quoted source")
        items.append(Item(Stage.TOOL_RESULT, conversation, message, label="sources of the model response"))
    if (tool_calls or answers) and (asked := answer_tool_calls(message)):
        # After the calls the model asked for since the request too (rt71j F2), not only the text turns.
        if calls_context is not None:
            acted = [dict(m) for m in calls_context]
        elif context and isinstance(context[0], BaseMessage):
            acted = call_history(context, turns, budget)  # type: ignore[arg-type]
        else:
            acted = history
        for call in asked:
            name = str(call.get("name") or "")
            as_answer = name in answers
            if not as_answer and not _call_judged(name, tool_calls):
                continue
            # A structured output's call is the answer: read after the history its text would be read after (the
            # run's earlier calls are actions, judged as such; an earlier call the operator's tool-call policy let
            # run blocked the safe answer after it: tests/langchain/test_lc_rt57t_structured_stage.py).
            items.append(
                Item(
                    Stage.TOOL_CALL,
                    tool_call_conversation(
                        name, tool_arguments(call), history if as_answer else acted, max_chars=budget
                    ),
                    message,
                    tool_call=call,
                    label=f"tool call {name}",
                    extra={AS_ANSWER: True} if as_answer else {},
                )
            )
        if (joined := joined_calls_item(message, acted, tool_calls, answers, budget)) is not None:
            items.append(joined)
    return items


def _call_judged(name: str, tool_calls: bool | Collection[str]) -> bool:
    """Is a call to ``name`` judged as an action, by an integration's ``check_tool_calls`` switch?"""
    return bool(tool_calls) and (isinstance(tool_calls, bool) or name in tool_calls)


def joined_calls_item(
    message: BaseMessage,
    history: Sequence[Mapping[str, str]],
    tool_calls: bool | Collection[str] = True,
    answers: Collection[str] = (),
    budget: int | None = None,
) -> Item | None:
    """The answer's text and the calls it asks for (those ``tool_calls`` judges; a structured output's schema call is
    the answer, judged as one) read as one action after ``history`` (`answer_calls_conversation`), or ``None`` where
    that is one call alone. A clause split over two parallel calls, or over the text and a call, ran when each call
    was judged alone (rt71b F1); a block withholds every call of the answer."""
    calls = [
        (name, tool_arguments(call))
        for call in answer_tool_calls(message)
        if (name := str(call.get("name") or "")) not in answers and _call_judged(name, tool_calls)
    ]
    if not calls:
        return None
    joined = answer_calls_conversation(answer_text(message), calls, history, max_chars=budget)
    return None if joined is None else Item(Stage.TOOL_CALL, joined, message, label="tool calls of the model response")


def _as_history(context: Sequence[Any], turns: int) -> list[dict[str, str]]:
    if context and isinstance(context[0], BaseMessage):
        return guard_history(context, turns)
    turns_given = [dict(m) for m in context]
    # The assistant turns that end them (core's `answer_prefill`): the answer's start, kept whatever ``turns`` says.
    before, _ = answer_prefill(turns_given)
    keep = max(turns, len(turns_given) - len(before))
    return turns_given[-keep:] if keep > 0 else []


#: Content blocks of a tool the provider runs itself (OpenAI's built-in web search with ``output_version="v1"``):
#: never in ``tool_calls``, and not text (`_TOOL_CALL_KINDS`).
_SERVER_CALLS = Kinds({"server_tool_call", "server_tool_call_chunk"})
#: Where a tool-call block keeps its arguments: LangChain's ``args``, Anthropic's ``input``, OpenAI's ``arguments``.
_ARG_KEYS = ("args", "input", "arguments")


def answer_tool_calls(message: Any) -> list[Mapping[str, Any]]:
    """Every tool call an answer (or a streamed chunk of one) asks for, each ``{"name", "args", ...}``:

    - ``tool_calls``, and ``invalid_tool_calls`` (arguments that did not parse: the tool never runs them,
      but their text streams to the consumer and stays in the answer);
    - the legacy ``additional_kwargs["function_call"]`` (OpenAI's ``functions`` API), which LangChain keeps
      out of ``tool_calls``;
    - the Responses API's actions (`ACTION_KINDS`: ``apply_patch_call``, ``computer_call``, ``mcp_approval_request``...),
      as content blocks (``responses/v1``; a v1 ``non_standard`` block's value) and among
      ``additional_kwargs["tool_outputs"]`` (``v0``), each ``{"name", "args", ...}`` (`action_call`);
    - ``server_tool_call`` content blocks (`_SERVER_CALLS`);
    - every other tool-call content block (`_TOOL_CALL_KINDS`: ``tool_call``, Anthropic's ``tool_use``, the
      Responses API's ``function_call``, ...), ``{"name", "args", "id", "index", "type", "block": True}``,
      unless it mirrors a call above (`_mirrored`): a provider class sends the block, whatever
      ``tool_calls`` says, so a block in a client's history with ``tool_calls`` empty is a call too;
    - the raw ``additional_kwargs["tool_calls"]`` entries the calls came from (`_raw_calls`): what they say beyond
      the call they mirror, and the whole of one that mirrors none.
    """
    parsed: list[Mapping[str, Any]] = [
        *(getattr(message, "tool_calls", None) or ()),
        *(getattr(message, "invalid_tool_calls", None) or ()),
    ]
    calls = list(parsed)
    extra = getattr(message, "additional_kwargs", None)
    legacy = extra.get("function_call") if isinstance(extra, Mapping) else None
    if isinstance(legacy, Mapping):
        calls.append({"name": legacy.get("name"), "args": legacy.get("arguments"), "type": "function_call"})
    elif legacy is not None:
        calls += _carried_call(legacy)  # a list of calls, a string: no provider class's shape, judged whole
    # ``output_version="v0"`` keeps the Responses API's actions (a patch, a computer action, an MCP approval request)
    # among the server tools' outputs: calls the app or the provider carries out (rt54b F3).
    outputs = extra.get("tool_outputs") if isinstance(extra, Mapping) else None
    if isinstance(outputs, (list, tuple)):
        calls += [call for output in outputs if (call := action_call(output)) is not None]
    known: dict[Any, _Twins] = {}
    for call in [*parsed, *(getattr(message, "tool_call_chunks", None) or ())]:
        if isinstance(call, Mapping):
            # An id that is no identifier goes to the consumer with the call, and back to the model: its words judged.
            name = _call_name(call)  # judged with the call: a Kimi-style id framing it is no phrase (rt69k F5)
            worded = {k: call[k] for k in ("id", "index") if _said_beside("id", call.get(k), name)}
            if worded:
                calls.append(_call_of(call, worded))
            if call.get("id") is not None:
                known.setdefault(("id", call["id"]), _Twins()).add(call)
            if call.get("index") is not None:
                known.setdefault(("index", call["index"]), _Twins()).add(call)
            else:  # a parsed call has no index: an id-less block is matched on its name and arguments alone
                known.setdefault(("index", None), _Twins()).add(call)
    # Argument text as streamed that writes a key twice: LangChain's parse keeps the last value, the text holds
    # both, and the consumer gets the text: judged as written (unparsed calls' text is, with them: `tool_arguments`).
    for call in getattr(message, "tool_call_chunks", None) or ():
        if isinstance(call, Mapping) and isinstance(call.get("args"), str) and beyond_its_parse(call["args"]):
            calls.append({**call, "type": "tool_call"})
    raw = extra.get("tool_calls") if isinstance(extra, Mapping) else None
    if isinstance(raw, (list, tuple)):
        calls += _raw_calls(raw, known)
    elif isinstance(raw, Mapping):
        # One entry, or entries by key (``{"0": {...}}``): no provider class's shape, each judged as an entry.
        calls += _raw_calls([raw] if "function" in raw else list(raw.values()), known)
    elif raw is not None:
        calls += _carried_call(raw)
    content = getattr(message, "content", None)
    if not isinstance(content, (list, tuple)):
        return calls
    merged_into_text: list[Mapping[str, Any]] = []
    for block in content:
        if (
            isinstance(block, Mapping)
            and block.get("type") == "non_standard"
            and isinstance(block.get("value"), Mapping)
        ):
            block = block["value"]  # a v1 answer's provider block: ChatAnthropic sends it as that block
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind in _SERVER_CALLS:
            calls.append(block)
            calls += [_call_of(block, args) for args in _promoted(block)]
        elif kind in _TOOL_CALL_KINDS:
            calls += [c for c in _block_calls(block) if not _mirrored(c, known)]
        elif kind == "text" and isinstance(block, Mapping) and not block.keys() <= _TEXT_BLOCK_KEYS:
            merged_into_text.append(block)
    if merged_into_text:
        calls += _text_block_calls(merged_into_text, parsed, known)
    return calls


#: The keys of an answer's text block read elsewhere: its text (`block_text`) and what it quotes (`_quoted`).
_TEXT_BLOCK_KEYS = _TEXT_KEYS | {"citations", "annotations", "reference", "json"}


def _text_block_calls(
    blocks: Sequence[Mapping[str, Any]], parsed: Sequence[Any], known: Mapping[Any, _Twins]
) -> list[dict[str, Any]]:
    """The calls of an answer's text blocks that carry more than their text (`_TEXT_BLOCK_KEYS`). LangChain's sum of
    a stream merges a call block into the text block of the same index (``merge_lists``): a ``tool_call_chunk``'s
    args, a ``tool_use``'s input, a ``function_call``'s arguments, and any other key, the consumer gets it all (rt49a
    H2). Each block's other keys are judged as a call (`_block_calls`), unless it is a parsed call already judged
    (name and arguments, whatever the merged id: ``ChatOpenAI(output_version="v1")`` merges its first call into the
    text every time); one that says nothing (an id, a signature) is no call."""
    judged: set[tuple[str, str]] = set()
    for call in parsed:
        if isinstance(call, Mapping):
            judged |= _call_keys(call) or set()
    calls: list[dict[str, Any]] = []
    for block in blocks:
        rest = {k: v for k, v in block.items() if k not in ("type", "text", "cache_control")}
        for call in _block_calls({**rest, "type": "tool_call"}):
            if call["args"] is None and not call["name"]:
                continue  # only labels: nothing beside the text
            keys = _call_keys(call)
            if (keys is not None and not keys.isdisjoint(judged)) or _mirrored(call, known):
                continue
            calls.append(call)
    return calls


def _carried_call(value: Any) -> list[dict[str, Any]]:
    """A ``function_call`` or ``tool_calls`` value of a type no provider class writes, judged whole as one call: its
    strings (`_strings`), when it has any."""
    text = "\n".join(t for t in _strings(value) if t.strip())
    return [{"name": "", "args": text, "type": "function_call"}] if text else []


#: A v1 block's ``extras`` that ChatAnthropic sends (`_convert_from_v1_to_anthropic`): an MCP call's tool and
#: server names, a tool call's toolset and caller. (``partial_json`` too: a server call's arguments as streamed.)
_PROMOTED_EXTRAS = ("tool_name", "server_name", "toolset_name", "caller")
#: The ``extras`` `_promoted` judges as arguments already: the promoted names and the streamed ``partial_json``.
_PROMOTED = frozenset({*_PROMOTED_EXTRAS, "partial_json"})


def _promoted(block: Mapping[str, Any]) -> list[Any]:
    """The arguments a tool-call block's ``extras`` carry to the wire: ``partial_json`` (ChatAnthropic sends it as
    the call's ``input``) and the promoted names (`_PROMOTED_EXTRAS`), judged as the call's arguments."""
    extras = block.get("extras")
    if not isinstance(extras, Mapping):
        return []
    values: list[Any] = []
    partial = extras.get("partial_json")
    if isinstance(partial, str) and partial.strip():
        values.append(partial)
    named = {k: extras[k] for k in _PROMOTED_EXTRAS if extras.get(k)}
    if isinstance(named.get("caller"), Mapping) and not _passed_text(named["caller"]):
        del named["caller"]  # ``{"type": "direct"}``: Anthropic's own word (its ``tool_id`` is read as a key's value)
    if named:
        values.append(named)
    return values


def _call_of(block: Mapping[str, Any], args: Any) -> dict[str, Any]:
    """A tool-call block's call with these arguments."""
    # The Responses API's ``id`` is its output item's; ``call_id`` is the call's (``tool_calls``' id).
    call_id = block.get("call_id") or block.get("id")
    return {
        "name": block.get("name"),
        "args": args,
        "id": call_id,
        "index": block.get("index"),
        "type": block.get("type"),
        "block": True,
    }


#: What a parsed call carries of a raw ``additional_kwargs["tool_calls"]`` entry (OpenAI's and Mistral's shape):
#: its labels (judged when not identifiers, `_raw_rest`) and its ``function``'s name and arguments.
_RAW_LABELS = frozenset({"id", "index", "type"})
_RAW_FUNCTION = frozenset({"name", "arguments"})


def _raw_calls(raw: Sequence[Any], known: Mapping[Any, _Twins]) -> list[dict[str, Any]]:
    """The raw ``additional_kwargs["tool_calls"]`` entries of an answer as calls to judge. ChatMistralAI keeps them
    beside the parsed calls, and the consumer gets both: an entry no parsed call mirrors
    (`_mirrored`: LangChain could not parse it, or parsed it to an empty call) is judged whole, as the call it names
    (`_raw_call`); one that mirrors a call adds only what it says beyond it (`_raw_rest`: another key, an id with
    words), as one more call, and nothing at all when it says nothing more: an ordinary answer costs no check."""
    calls: list[dict[str, Any]] = []
    for entry in raw:
        function = entry.get("function") if isinstance(entry, Mapping) else None
        if not isinstance(function, Mapping):
            function = {}
        name = function.get("name")
        call = {
            "name": name if isinstance(name, str) else "",
            "args": function.get("arguments"),
            "id": entry.get("id") if isinstance(entry, Mapping) else None,
            "index": entry.get("index") if isinstance(entry, Mapping) else None,
            "type": "function_call",
        }
        if not isinstance(entry, Mapping) or not _mirrored(call, known):
            calls.append(_raw_call(entry))
        elif rest := _raw_rest(entry):
            calls.append({**call, "args": rest})
    return calls


def worded(label: Any, call_name: str | None = None) -> TypeGuard[str]:
    """Whether a label (an id, an index, a status) is words rather than an identifier: judged then. ``call_name``:
    the name of the call an id identifies, judged with the call (`joined_words`)."""
    return isinstance(label, str) and bool(label.strip()) and not identifier(label, call_name)


def _raw_rest(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What a raw tool-call entry says beyond the parsed call it mirrors: its other keys, its ``function``'s other
    keys, and labels (``id``, ``type``, ``index``) that are not identifiers (a call's id goes to the consumer, and
    back to the model with the call)."""
    rest: dict[str, Any] = {}
    function = entry.get("function")
    name = _call_name(function) if isinstance(function, Mapping) else None  # judged with the call (rt69k F5)
    for key, value in entry.items():
        if key in _RAW_LABELS:
            if worded(value, name):
                rest[key] = value
        elif key == "function" and isinstance(value, Mapping):
            others = {k: v for k, v in value.items() if k not in _RAW_FUNCTION}
            if others:
                rest[key] = others
        elif value not in (None, "", {}, []):
            rest[key] = value
    return rest


def _raw_call(entry: Any) -> dict[str, Any]:
    """An ``additional_kwargs["tool_calls"]`` entry as a call: the name it gives, the whole entry as its arguments."""
    function = entry.get("function") if isinstance(entry, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    args = entry if isinstance(entry, Mapping) else str(entry)
    return {"name": name if isinstance(name, str) else "", "args": args, "type": "function_call"}


def _block_calls(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A tool-call block as calls: one per distinct arguments value (a block with both ``args`` and
    ``arguments`` has both judged, whichever one the provider class sends). An action of the Responses API
    (`ACTION_KINDS`) is one call, of all it carries (`action_call`)."""
    action = action_call(block)
    if action is not None:
        return [{**action, "index": block.get("index"), "block": True}]
    values: list[Any] = []
    for key in _ARG_KEYS:
        value = block.get(key)
        if value is not None and not _among(value, values):
            values.append(value)
    partial = block.get("partial_json")
    streamed = isinstance(partial, str) and bool(partial.strip()) and values in ([], [{}])
    if streamed:
        values = [partial]  # an Anthropic block's streamed arguments: ChatAnthropic sends them parsed, as its input
    # Any other text the block carries (a ``namespace``, a provider's own key) goes to the model with it:
    # judged as the call's arguments too, one more call (an unknown key fails towards judging).
    # A structured value (Anthropic's ``caller``, sent as it is) counts when it holds words (`_passed_text`).
    name = _call_name(block)
    others = {k: v for k, v in block.items() if not (streamed and k == "partial_json") and _said_beside(k, v, name)}
    if others:
        values.append(others)
    values += [v for v in _promoted(block) if not _among(v, values)]
    return [_call_of(block, args) for args in values or [None]]


def _among(value: Any, values: list[Any]) -> bool:
    """``value in values``, also for values nested deeper than Python's recursion limit (compared as `_canonical`
    texts then; a value that has none is among only itself, so it is judged once more, never left out)."""
    try:
        return value in values
    except RecursionError:
        key = _canonical(value)
        return any(v is value or (key and _canonical(v) == key) for v in values)


#: The labels of a tool-call block judged when they are no identifiers (`_block_calls`).
_CALL_LABELS = frozenset({"id", "call_id", "tool_call_id", "index", "status"})


def _said_beside(key: str, value: Any, call_name: str | None = None) -> bool:
    """Whether a tool-call block's ``key`` (not the name or the arguments) carries words the model or the consumer
    gets with the call: any text, and a structured value holding words (`_passed_text`, a v1 block's ``extras``
    too); a label (id, call id, index, status) only when it is no identifier, as a raw entry's (`_raw_rest`); other
    bookkeeping never. ``call_name``: the call's name, judged with it (`joined_words`)."""
    if key in _CALL_KEYS:
        return False
    if key == "extras":  # a v1 block's provider fields, streamed to the consumer with the call: their text
        rest = {k: v for k, v in value.items() if k not in _PROMOTED} if isinstance(value, Mapping) else {}
        return any(text.strip() for text in _strings(rest))
    if key in _NOT_TEXT:
        return key in _CALL_LABELS and worded(value, call_name)
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, (Mapping, list)) and bool(_passed_text(value))


#: The keys of a tool-call block that `_block_calls` reads as the call itself.
_CALL_KEYS = frozenset({"name", *_ARG_KEYS})


def beyond_its_parse(text: str) -> bool:
    """May argument ``text`` say more than LangChain's parse of it? True unless it is strict JSON writing no key
    twice: a parse keeps a repeated key's last value, and ``parse_partial_json`` completes text that is not closed
    (and drops what it cannot complete), while the consumer gets the text as written."""
    if not text.strip():
        return False  # no arguments: nothing a parse could drop
    try:
        json.loads(text, strict=False, object_pairs_hook=pairs_once)
    except (ValueError, RecursionError):
        return True
    return False


def _parsed_args(args: Any) -> Any:
    """Arguments as `_mirrored` compares them: text parsed (text writing a key twice says more than its parse: kept
    as written), ``None`` as no arguments."""
    if isinstance(args, str):
        try:
            args = json.loads(args, strict=False, object_pairs_hook=pairs_once) if args.strip() else {}
        except (ValueError, RecursionError):
            return args
    return {} if args is None else args


def _same_args(a: Any, b: Any) -> bool:
    return a == b or _parsed_args(a) == _parsed_args(b)


def _same_call(other: Mapping[str, Any], call: Mapping[str, Any]) -> bool:
    return (other.get("name") or "") == (call.get("name") or "") and _same_args(other.get("args"), call.get("args"))


#: `_canonical` of a value equal to nothing, not even itself (a float NaN, as ``==`` compares it): matches no call.
_UNEQUAL = ""


def _canonical(value: Any, *, fresh: bool = False) -> str | None:
    """A text two values share exactly when they are equal (``==``), for what JSON holds (mappings with string keys,
    lists, tuples, strings, numbers, booleans, ``None``): calls are matched by a lookup, not each with each. ``None``
    for anything else or past ``DEFAULT_MAX_CHARS`` items (compared with ``==`` then). Written without recursion.

    As ``==``: ``1``, ``1.0`` and ``True`` are one number; a mapping's order does not count; a NaN inside a list or
    mapping equals only itself (Python compares identity first), a NaN alone equals nothing (`_UNEQUAL`), nor does
    a value holding a NaN with ``fresh`` (just parsed: no other value holds its NaN, and once it is dropped another
    one may take its place in memory)."""
    if type(value) is float and value != value:
        return _UNEQUAL
    parts: list[str] = []
    stack: list[tuple[str | None, Any]] = [(None, value)]  # (a closing token, or None and a value to write)
    for _ in range(DEFAULT_MAX_CHARS):
        if not stack:
            return "".join(parts)
        token, item = stack.pop()
        kind = type(item)
        if token is not None:
            parts.append(token)
        elif kind is str:
            parts.append(repr(item))
        elif kind is bool or kind is int:
            parts.append(f"#{int(item):x}")  # hex: Python caps the decimal digits an int may print
        elif kind is float:
            if item != item:
                if fresh:
                    return _UNEQUAL
                parts.append(f"n{id(item):x}")
            elif math.isinf(item):
                parts.append(f"#{item}")
            else:
                parts.append(f"#{int(item):x}" if item.is_integer() else f"#{item.hex()}")
        elif item is None:
            parts.append("N")
        elif kind is list or kind is tuple:
            parts.append("[" if kind is list else "(")
            stack.append(("]" if kind is list else ")", None))
            for v in reversed(item):
                stack += [(",", None), (None, v)]
        elif kind is dict and all(type(k) is str for k in item):
            parts.append("{")
            stack.append(("}", None))
            for k in sorted(item, reverse=True):
                stack += [(",", None), (None, item[k]), (f"{k!r}:", None)]
        else:
            return None
    return None


def _call_keys(call: Mapping[str, Any]) -> set[tuple[str, str]] | None:
    """A call's name with its arguments as written and as parsed (`_canonical`), the lookups `_Twins` matches on
    (``None``: not JSON's, compared with ``==``)."""
    args = call.get("args")
    name, written = _canonical(call.get("name") or ""), _canonical(args)
    parsed = _canonical(_parsed_args(args), fresh=isinstance(args, str))
    if name is None or written is None or parsed is None:
        return None
    return {(name, t) for t in ("w" + written if written else "", "p" + parsed if parsed else "") if t}


class _Twins:
    """The calls of an answer that share one id (or one index): what `_mirrored` compares a block's call with. Each is
    read once (`_call_keys`), so an answer of many calls and blocks with one id costs a lookup per block, not a
    comparison (and a parse of its arguments) with each call."""

    def __init__(self) -> None:
        self.calls: list[Mapping[str, Any]] = []
        self._keys: set[tuple[str, str]] | None = None
        self._odd: list[Mapping[str, Any]] = []  # calls with what is not JSON's (`_canonical`): compared with ``==``

    def add(self, call: Mapping[str, Any]) -> None:
        self.calls.append(call)
        self._keys = None

    def mirror(self, call: Mapping[str, Any]) -> bool:
        """Is one of these calls ``call`` (same name, same arguments as written or as parsed: `_same_call`)?"""
        keys = _call_keys(call)
        if keys is None:
            return any(_same_call(other, call) for other in self.calls)
        if self._keys is None:
            self._keys, self._odd = set(), []
            for other in self.calls:
                found = _call_keys(other)
                if found is None:
                    self._odd.append(other)
                else:
                    self._keys |= found
        return not keys.isdisjoint(self._keys) or any(_same_call(other, call) for other in self._odd)


def _mirrored(call: Mapping[str, Any], known: Mapping[Any, _Twins]) -> bool:
    """Is this block's call one already in ``tool_calls``, ``invalid_tool_calls`` or ``tool_call_chunks``
    (same id, or same index for an id-less streamed piece; same name; same arguments)? LangChain keeps a
    ``tool_call`` block (``output_version="v1"``), Anthropic's ``tool_use`` and the Responses API's
    ``function_call`` beside the parsed call: judged once. A block that differs from its call is judged too."""
    key = ("id", call["id"]) if call.get("id") is not None else ("index", call.get("index"))
    try:
        twins = known.get(key)
    except TypeError:  # an id that is a list or a mapping: no parsed call has it
        return False
    if twins is not None and twins.mirror(call):
        return True
    # An id-less block (v1 streams name only the index) mirrors a parsed call of the same name and arguments.
    unnamed = known.get(("index", None)) if call.get("id") is None else None
    return unnamed is not None and unnamed.mirror(call)


def is_update_pairs(update: Any) -> bool:
    """``[("messages", [...]), ...]``: a ``Command`` update as (channel, value) pairs, which LangGraph takes."""
    return (
        isinstance(update, (list, tuple))
        and bool(update)
        and all(isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str) for t in update)
    )


def command_messages(update: Any) -> list[Any]:
    """What a ``Command``'s ``update`` writes to the messages, in every form LangGraph takes: a mapping's
    ``"messages"``, the ``"messages"`` pairs of a list of (channel, value) pairs, or, in a graph whose state
    is the list of messages itself, the update itself (a message or a list of them)."""
    if isinstance(update, Mapping):
        written: Any = [update.get("messages")]
    elif is_update_pairs(update):
        written = [value for key, value in update if key == "messages"]
    elif isinstance(update, (list, tuple, BaseMessage)):
        written = [update]
    else:
        written = [getattr(update, "messages", None)]
    return [entry for w in written for entry in (w if isinstance(w, (list, tuple)) else [w] if w else [])]


def tool_result_messages(result: Any) -> list[tuple[Any, BaseMessage]]:
    """Every message a tool's result writes to the state, each with the entry it is in the result (the
    message itself, or the dict LangGraph would read as one). A result is a `ToolMessage`, a LangGraph
    ``Command`` (every message its ``update`` writes, `command_messages`, whatever its type: a handoff writes
    AI and human turns too), or a list of those (`ToolNode` takes one). Duck-typed: no langgraph import here."""
    out: list[tuple[Any, BaseMessage]] = []
    for part in result if isinstance(result, (list, tuple)) else [result]:
        if isinstance(part, BaseMessage):
            out.append((part, part))
            continue
        if not hasattr(part, "update") or not hasattr(part, "goto"):
            continue  # not a Command
        for entry in command_messages(part.update):
            try:
                out.append((entry, entry if isinstance(entry, BaseMessage) else convert_to_messages([entry])[0]))
            except (ValueError, TypeError, NotImplementedError):
                continue  # not a message: LangGraph refuses to write it too
    return out


def tool_result_commands(result: Any) -> list[Any]:
    """The LangGraph ``Command``s in a tool's result (the result itself, or the parts of a list; duck-typed)."""
    parts = result if isinstance(result, (list, tuple)) else [result]
    return [part for part in parts if hasattr(part, "update") and hasattr(part, "goto")]


def command_rest(command: Any, *, sends: bool = True) -> list[Any]:
    """What a ``Command`` hands the graph besides the messages of its ``update`` (`command_messages`): every other
    value its update writes (a custom state key, ``structured_response``; in any form LangGraph takes: a mapping,
    (channel, value) pairs, an object's other fields), and, with ``sends``, the payload of each ``Send`` in its
    ``goto`` (the input the node it names is scheduled with), whatever graph it goes to (``Command.PARENT`` too)."""
    update: Any = getattr(command, "update", None)
    rest: list[Any] = []
    if isinstance(update, Mapping):
        rest += [value for key, value in update.items() if key != "messages"]
    elif is_update_pairs(update):
        rest += [value for key, value in update if key != "messages"]
    elif update is not None and not isinstance(update, (list, tuple, BaseMessage, str)):
        rest += _object_update(command, update)
    goto: Any = getattr(command, "goto", None) if sends else None
    for target in goto if isinstance(goto, (list, tuple)) else [goto]:
        if type(target).__name__ == "Send" and hasattr(target, "arg"):  # duck-typed: no langgraph import here
            rest.append(target.arg)
    return rest


def _object_update(command: Any, update: Any) -> list[Any]:
    """What an object ``update`` writes besides ``messages``: the (key, value) pairs LangGraph itself writes
    (``Command._update_as_tuples``: every annotated key of the class, read with ``getattr``, so class defaults,
    ``ClassVar`` values and properties too: rt59f F1, they are not in the instance's fields), else the object's own
    fields (`object_fields`) where LangGraph's reading is not there."""
    as_pairs = getattr(command, "_update_as_tuples", None)
    if callable(as_pairs):
        try:
            pairs = list(as_pairs())
        except Exception:  # noqa: BLE001 - LangGraph refuses the update itself: it writes nothing from it
            pairs = []
        if not (len(pairs) == 1 and pairs[0][0] == "__root__"):
            return [value for key, value in pairs if key != "messages"]
    written = getattr(update, "messages", None)
    return [value for value in object_fields(update, DEFAULT_MAX_CHARS) if value is not written]


def command_rest_text(command: Any, budget: int) -> str:
    """What a ``Command`` a tool returned writes besides its messages (`command_rest`), judged as the tool's output:
    read as its artifact is (`artifact_text`), all of it or `InputTooLarge`."""
    rest = command_rest(command)
    return artifact_text(rest, budget) if rest else ""


def opaque_output(result: Any) -> bool:
    """Does a tool's result carry an artifact, another state key's value or a ``Send`` payload that is not a string?
    The async hooks read such a result on a worker thread whatever its size: `_screening.built_off_loop` sizes strings,
    mappings, lists, messages and dataclasses, not bytes (decoded to read) nor other objects (read by their fields):
    15,000 slotted objects in an artifact held the loop 0.2 s. (A thread hop costs far less than the tool call.)"""
    found = [getattr(m, "artifact", None) for _, m in tool_result_messages(result)]
    found += [value for command in tool_result_commands(result) for value in command_rest(command)]
    return any(value is not None and not isinstance(value, str) for value in found)


def tool_labels(message: BaseMessage, tool: str | None = None) -> str:
    """What a message a tool wrote carries beside its text, one a line: what a provider class sends with it
    (`sent_labels`: its name, its ids that are words; not a `ToolMessage`'s name that is its ``tool``'s), and its
    own ``id`` when it is words (the consumer reads it on every stream)."""
    answered = {str(getattr(message, "tool_call_id", "") or ""): tool} if tool else None
    own = getattr(message, "id", None)
    labels = sent_labels(message, answered)
    return "\n".join(t for t in (labels, own if worded(own) else "") if t)


def tool_output_text(message: BaseMessage, budget: int, *, tool: str | None = None, labels: bool = False) -> str:
    """What a message a tool wrote says, judged as untrusted tool output: its text, an AI turn's tool calls
    (`answer_tool_calls`), and a `ToolMessage`'s ``artifact`` (`artifact_text`, up to ``budget``); with ``labels``,
    its name and ids too (`tool_labels`; ``tool``: the name of the tool that wrote it, not judged as a name)."""
    calls = [(str(c.get("name") or ""), tool_arguments(c)) for c in answer_tool_calls(message)]
    text = with_tool_calls(tool_text(message, budget), calls)
    named = tool_labels(message, tool) if labels else ""
    artifact = artifact_text(getattr(message, "artifact", None), budget)
    return "\n".join(t for t in (text, named, artifact) if t)


def artifact_text(artifact: Any, budget: int) -> str:
    """What a consumer can read in a tool's artifact (``response_format="content_and_artifact"``: raw results the app
    shows, which the model never reads), one text a line, read as an interrupt's payload is (`object_text`): strings
    through mappings (keys too) and containers, the fields, attributes and slots of any object (a dataclass, a
    pydantic model with its computed fields, a document's ``page_content`` and ``metadata``), a table or an array by
    its labels and values (a DataFrame's column and row labels and cells, rt59d F4; numbers carry no text), the repr
    of an object with none; a message as its text and labels; bytes as the text they hold, media bytes as none
    (`_bytes_text`, a blob's rule); a file a block or a ``data:`` URL carries as the text it holds (`payload_leaf`).
    Walked without recursion and only until past ``budget`` characters (every item counts at least one): a walk cut
    short returns a text past ``budget``, which the guard's ``max_chars`` refuses (`InputTooLarge`), or raises it
    itself where what it read is shorter (a million zeros, then a sentence: never judged as its start)."""
    text, whole = object_text([artifact], budget, payload_leaf)
    if not whole and len(text) <= budget:  # past ``budget`` already, the guard refuses it (`InputTooLarge`) by size
        raise InputTooLarge(f"a tool's output holds over {budget} characters or items: it cannot be judged whole")
    return text


def payload_leaf(item: Any) -> Any:
    """An item of what an application reads from outside the conversation (a tool's artifact, an interrupt's payload,
    a client's resume value) read its own way (`object_text`): bytes by the blob rule, a message as its text and labels,
    a document as its ``page_content`` and ``metadata`` (and its ``id``, when it is words), and a file as the text it
    holds, whichever way it is encoded: a ``data:`` URL, a block's ``base64``, ``data`` or ``file_data``
    (`_file_reading`; rt63d F1: a text file in a resume value was judged as its base64 while the tool decoded it)."""
    if isinstance(item, str):
        return _file_reading(item) if data_url(item) is not None else None
    if isinstance(item, _BYTES):
        return _bytes_text(item) or ""
    if isinstance(item, BaseMessage):
        return "\n".join(t for t in (message_text(item), sent_labels(item)) if t)
    if isinstance(getattr(item, "page_content", None), str):
        own = getattr(item, "id", None)
        return [item.page_content, getattr(item, "metadata", None), own if worded(own) else None]
    if isinstance(item, Mapping) and _holds_file(item):
        return _FileBlock(item)
    return None


def _holds_file(block: Mapping[Any, Any]) -> bool:
    """Does ``block`` keep encoded data under a data key (`DATA_KEYS`): a file block, a provider's ``source``?"""
    try:
        return any(isinstance(block.get(key), str) for key in DATA_KEYS)
    except Exception:  # noqa: BLE001 - a mapping that fails to read: walked as any other
        return False


class _FileBlock(Mapping[Any, Any]):
    """A mapping that keeps a file, as `object_text` walks it: every key and value as they are, but the data under a
    data key read as the text it holds (`_file_reading`). Lazy, so that the walk's own bound holds (a block with a
    million keys costs what the walk visits)."""

    def __init__(self, block: Mapping[Any, Any]) -> None:
        self._block = block

    def __getitem__(self, key: Any) -> Any:
        value = self._block[key]
        if key in DATA_KEYS and isinstance(value, str) and data_url(value) is None:
            return _file_reading(value, self._block, key)
        return value  # a data: URL too: the walk's leaf reads it (`payload_leaf`)

    def __iter__(self) -> Any:
        return iter(self._block)

    def __len__(self) -> int:
        return len(self._block)


def _file_reading(value: str, block: Mapping[str, Any] | None = None, key: str = "") -> str:
    """A file's encoded data (a ``data:`` URL, or a block's data under ``key``) as its reader may take it: the text
    its bytes hold, read as a message's block is (`_leaf_text`: text media decoded in its charset, other media when
    its bytes are text all the same), and the string itself unless it is the base64 of a text (`_encodes_text`: it
    spells no words then). Words under a data key are read as they are: an application may show them undecoded."""
    decoded = _leaf_text(value, block, key)
    spelled = None if decoded and _encodes_text(value) else value
    return "\n".join(dict.fromkeys(t for t in (spelled, decoded) if t))


_LINE_BREAKS = re.compile(r"[\r\n]")


def _encodes_text(value: str) -> bool:
    """Is ``value`` (a ``data:`` URL's body) one base64 token, line breaks aside, of bytes that are text
    (`bytes_as_text`, by their own start: no label makes noise text)?"""
    parsed = data_url(value)
    if parsed is not None:
        if not parsed.base64:
            return False  # percent-encoded: its words show through
        value = parsed.body  # percent-decoded (`data_url`)
    value = _LINE_BREAKS.sub("", value)
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)  # unpadded too
    except (binascii.Error, ValueError):
        return False
    return bytes_as_text(raw) is not None


def call_key(name: Any, call_id: Any, args: Any) -> str | None:
    """A fingerprint of a tool call (its name, id and arguments as given: no text kept), or ``None`` for arguments
    that cannot be written out. A call the guard heard a guarded model call produce is matched by it when it is about
    to run; any other (a client's ``Command(goto="tools")`` or ``Send``, an edited call) is the client's input."""
    try:
        data = json.dumps([str(name or ""), str(call_id or ""), args], ensure_ascii=False, sort_keys=True, default=repr)
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


def _resume_map(value: Any) -> bool:
    """``Command(resume={interrupt_id: value, ...})``: every key an interrupt's id (32 hex digits, LangGraph's)."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and len(k) == 32 and all(c in "0123456789abcdef" for c in k) for k in value)
    )


def resume_values(command: Any) -> list[Any]:
    """The values a LangGraph ``Command(resume=...)`` (the run's input, a client's) answers interrupts with: the
    value, or each value of a map from interrupt ids. Empty for anything else (duck-typed: no langgraph import)."""
    if type(command).__name__ != "Command" or not hasattr(command, "goto"):
        return []
    value = getattr(command, "resume", None)
    if value is None:
        return []
    return list(value.values()) if _resume_map(value) else [value]
