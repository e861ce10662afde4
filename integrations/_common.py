"""What both framework integrations share."""

from __future__ import annotations

import json
import re
import threading
import types
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, unquote_plus, urlsplit

from qwenguard.core import Decision, Guard, QwenGuardError, enforce
from qwenguard.core.errors import InputTooLarge
from qwenguard.core.formats.media import SNIFF_BYTES, base64_as_text, bytes_as_text

__all__ = [
    "Kinds",
    "BOOKKEEPING_KEYS",
    "Bounded",
    "IDENTIFIER",
    "identifier",
    "joined_words",
    "LABEL_KEYS",
    "NO_FIELDS",
    "MEDIA_TYPE",
    "ACTION_KINDS",
    "REPLY_FIELDS",
    "SEALED",
    "SEALED_KEYS",
    "action_call",
    "link_text",
    "opaque",
    "pairs_once",
    "reply_actions",
    "reply_strings",
    "require_guard",
    "guard_scope",
]


class Kinds(frozenset[object]):
    """The words a field may name (a block's ``type``, a message's role): a value that cannot be hashed (a client's
    JSON may put a list or an object there) is none of them, where a frozenset raises TypeError out of the check."""

    def __contains__(self, value: object) -> bool:
        try:
            return frozenset.__contains__(self, value)
        except TypeError:
            return False


#: An id or label a provider class sends that is no text a model reads as words (up to 64 letters, digits, ``_.:-``):
#: a tool call's id, a content block's type.
IDENTIFIER = re.compile(r"[\w.:-]{1,64}", re.ASCII)
#: What joins the parts of an identifier (`joined_words`).
_JOINERS = re.compile(r"[-_.:]+")
#: The frame of a Kimi-style call id (``functions.send_email:0``): the words inside it are the call's tool's name.
_CALL_ID_FRAME = re.compile(r"^functions\.|:\d+$")
#: Keys whose value is an id (free text a provider or a model picks), where a phrase written as one identifier is words.
_ID_KEYS = frozenset({"id", "call_id", "tool_call_id", "tool_use_id"})
#: A media type (``image/png``, ``application/vnd.api+json``) under a label key: no words either.
MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,63}/[A-Za-z0-9][\w.+-]{0,63}")
#: A signature or encrypted data a provider checks, when it is one base64 token (of any length): no words. A phrase
#: (spaces, underscores) is text.
SEALED = re.compile(r"[A-Za-z0-9+/=]+")

K = TypeVar("K")
V = TypeVar("V")


def stop_of(decision: Decision) -> QwenGuardError:
    """What `enforce` raises for a blocked ``decision``, to raise where no other exception is being handled: marked as
    raised ``from None`` already, so that it says so wherever it is raised again."""
    try:
        enforce(decision)
    except QwenGuardError as stop:
        stop.__cause__ = None  # sets __suppress_context__, as ``raise stop from None`` does
        return stop
    raise AssertionError("an allowed decision has no stop")


def require_guard(guard: object) -> Guard:
    """``guard`` itself, or a clear `TypeError` when it is not a `qwenguard.core.Guard`."""
    if not isinstance(guard, Guard):
        raise TypeError(
            f"guard must be a qwenguard.core.Guard (e.g. Guard.from_pretrained('demo')), got {type(guard).__name__}"
        )
    return guard


class Bounded(Generic[K, V]):
    """A map that forgets its oldest entries past ``maxsize``: per-event state of a handler shared by every
    request, whose end event may never come (a stream nobody reads to the end, a cancelled request). Read with
    `get` only: another request may evict an entry between a membership test and an index."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._data.get(key, default)

    def pop(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            return self._data.pop(key, default)

    def keys(self) -> list[K]:
        """The keys now, oldest first (a copy: entries may go while the caller reads it)."""
        with self._lock:
            return list(self._data)


# -- a provider's reply object: the text it carries -----------------------------------------------
#: Provider bookkeeping in a reply, never judged whatever it holds: usage, timings, HTTP headers and boto's request
#: record, the answer's own tokens (``logprobs``: judged as its text), the provider's own safety ratings and content
#: filter results, the app's stop sequence echoed back, the guard's record. As LangChain's ``response_metadata``
#: is read (``_METADATA_NOT_TEXT``), but ``metadata``, which is Bedrock's last stream event (its ``trace`` too).
BOOKKEEPING_KEYS = frozenset(
    {
        "usage",
        "token_usage",
        "usage_metadata",
        "usageMetadata",
        "headers",
        "ResponseMetadata",
        "metrics",
        "amazon-bedrock-invocationMetrics",
        "performanceConfig",
        "logprobs",
        "logprobs_result",
        "logprobsResult",
        "safety_ratings",
        "safetyRatings",
        "prompt_filter_results",
        "content_filter_results",
        "incomplete_details",
        "stop_sequence",
        "qwenguard",
    }
)
#: Keys whose value labels or links (an id, a model name, a role, a finish reason, a block's kind, a date): one
#: identifier there is no text a model reads (`IDENTIFIER`); anything else under them is judged.
LABEL_KEYS = frozenset(
    {
        "id",
        "type",
        "index",
        "role",
        "object",
        "status",
        "model",
        "model_name",
        "model_id",
        "model_provider",
        "model_version",
        "modelVersion",
        "responseId",
        "system_fingerprint",
        "service_tier",
        "finish_reason",
        "block_reason",
        "blockReason",
        "finishReason",
        "stop_reason",
        "stopReason",
        "done_reason",
        "output_version",
        "created",
        "created_at",
        "expires_at",
        "user",
        "call_id",
        "tool_call_id",
        "tool_use_id",
        "toolUseId",
        "file_id",
        "container_id",
        "reference_audio_id",
        "mime_type",
        "mimeType",
        "media_type",
        "format",
        "encoding",
        "detail",
    }
)
#: The field names of the reply formats (OpenAI's Responses API and Chat Completions, Anthropic's Messages, Bedrock's
#: Converse, Gemini's, JSON Schema's): the format's own words, not a sender's. `reply_strings` judges every other key
#: of a reply as text (rt54b F5): a third-party MCP server names a tool's parameters, a gateway can add any key, and the
#: consumer reads them, as a later call sends them back to the model.
REPLY_FIELDS = frozenset(
    """
revised_prompt output_format quality size
$defs $ref $schema acknowledged_safety_checks action actions adaptive additionalModelResponseFields
additionalProperties allOf amount annotation annotation_index annotations anyOf approval_request_id approve
arguments attributes audio background batch between_tools blockReasonMessage block_reason_message bucketOwner button
bytes cachePoint cache_miss_reason cache_missed_input_tokens cache_write_tokens cached_tokens call_id caller
caller_id candidates categories category category_applied_input_types category_scores choices citation
citationMetadata citationSources citation_metadata citation_sources citations citationsContent cited_text
clear_thinking_20251015 clear_tool_uses_20250919 code codeExecutionResult code_execution code_execution_result
command commands compact_20260112 compact_threshold completed_at completion_tokens confidenceScores
confidence_scores const container container_id content content_block content_index content_parts context_management
conversation coordinate created created_at created_by currency custom data default definitions deleted delta depth
description detail diagnostics diff disabled document documentChar documentChunk documentIndex documentPage
document_ids document_index document_title duration effort enabled encrypted_content encrypted_index
encrypted_stdout end end_block_index end_char_index end_index end_page_number enum env environment
ephemeral_1h_input_tokens ephemeral_5m_input_tokens error error_code error_message examples executableCode
executable_code execution exit_code expires_at explanation fileData fileUri file_data file_id file_type file_uri
file_url filename filter fingerprint finish_reason first_id flagged format from function functionCall
functionResponse function_call function_response groundingChunkIndices groundingChunks groundingMetadata
groundingSupports grounding_chunk_indices grounding_chunks grounding_metadata grounding_supports guardContent
guardrail has_more high id image image_input image_url include include_obfuscation incomplete_details index
inlineData inline_data input input_audio input_schema input_tokens input_tokens_details instructions is_file_update
item item_id items json keys language last_id license lines location logprob logprobs logs low max maxItems
maxLength max_output_length max_output_tokens max_side_length_pixels max_tool_calls maximum media_type medium
message metadata minItems minLength minimum mode model modelOutput model_version moderation modifiers name namespace
new_lines new_start not nullable num_lines object old_lines old_start oneOf operation outcome output output_index
output_tokens output_tokens_details outputs page_age parallel_tool_calls param parsed_output part partial_image_b64
partial_image_index partial_json parts path paths pattern patternProperties pdf_input pending_safety_checks phase
policy previous_response_id prompt promptFeedback prompt_cache_breakpoint prompt_cache_key prompt_cache_options
prompt_cache_retention prompt_feedback prompt_tokens properties queries query reason reasoning reasoningContent
reasoningText reasoning_content reasoning_tokens redactedContent ref refusal region renderedContent rendered_content
repeat request_id required response response_id result results retrievedContext retrieved_at retrieved_context
return_code role s3Location safety_identifier schema score scroll_amount scroll_direction scroll_x scroll_y
searchEntryPoint search_entry_point search_result_index segment sequence_number server_label server_tools
service_tier signature skills source sourceContent sources start start_block_index start_char_index start_coordinate
start_index start_line start_page_number status stderr stdout stopReason stop_details stop_reason stop_sequence
store stream stream_options strict structured_outputs summary summary_index supported system_fingerprint tab_id
target temperature text thinking thinking_delta thinking_tokens thought thoughtSignature thought_signature
thought_signatures timeout_ms title token toolResult toolUse toolUseId tool_call_id tool_calls tool_choice tool_id
tool_name tool_references tool_use_id tools toolset_name top_logprobs top_p total_lines total_tokens trace
transcript truncation ttl type types unsupported uri url url_citation usage user value variables verbosity version
video web webSearchQueries web_search web_search_queries working_directory x xhigh y
""".split()
)
#: Keys whose value is opaque when it is one base64 token (`SEALED`): signatures and encrypted data.
SEALED_KEYS = frozenset({"signature", "encrypted_content", "encrypted_index", "redactedContent"})
#: Keys whose value is media data (base64, or a ``data:`` URL): judged only when its bytes are text.
#: Objects whose attributes are no data: a class's, a module's, a function's are its code.
NO_FIELDS = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
_MEDIA_KEYS = frozenset({"data", "base64", "b64_json", "file_data", "partial_image_b64"})
_BASE64 = re.compile(r"[A-Za-z0-9+/=\r\n]+")
#: Keys whose value is a media type: one there is a label (`MEDIA_TYPE`).
_MEDIA_TYPE_KEYS = frozenset({"mime_type", "mimeType", "media_type", "mediaType", "content_type", "contentType"})
#: The keys `reply_strings` leaves out as a format's words.
_FORMAT_KEYS = REPLY_FIELDS | BOOKKEEPING_KEYS | LABEL_KEYS | SEALED_KEYS | _MEDIA_KEYS | _MEDIA_TYPE_KEYS


#: Output items of OpenAI's Responses API that are actions, as a function call is one (rt54b F3): the application
#: applies an ``apply_patch_call``'s ``operation`` to its files, types or clicks a ``computer_call``'s ``action`` on its
#: computer, runs a ``local_shell_call``'s or ``shell_call``'s command and a ``custom_tool_call``'s input, and the
#: provider runs the MCP tool an ``mcp_approval_request`` names once the application approves it. Judged as tool
#: calls (`action_call`), under the operator's tool-call policy, never as text.
ACTION_KINDS = Kinds(
    {
        "apply_patch_call",
        "computer_call",
        "mcp_approval_request",
        "local_shell_call",
        "shell_call",
        "custom_tool_call",
    }
)
#: An action item's labels: its kind (the call's name when it names none), its ids, its status and its stream index.
_ACTION_LABELS = frozenset({"type", "name", "id", "call_id", "status", "index"})


def action_call(item: Any) -> dict[str, Any] | None:
    """An action item (`ACTION_KINDS`) as the tool call it is: ``{"name", "args", "id", "type"}``, its name the one it
    gives (an MCP tool's) or its kind (``apply_patch``, ``computer``, ``shell``...), its arguments all it carries
    but its labels (an ``operation``, an ``action``, a command, an MCP server's label, pending safety checks;
    ``arguments`` written as JSON text read as what they hold). ``None`` for anything else."""
    if not isinstance(item, Mapping) or item.get("type") not in ACTION_KINDS:
        return None
    kind = str(item["type"])
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        name = kind.removesuffix("_call")
    args: dict[str, Any] = {}
    for key, value in item.items():
        if key in _ACTION_LABELS and (key != "name" or value == name):
            if key in ("type", "name") or not isinstance(value, str) or IDENTIFIER.fullmatch(value):
                continue  # a label; one with words is an argument like the rest
        if key == "arguments" and isinstance(value, str):
            try:
                parsed = json.loads(value, object_pairs_hook=pairs_once)
            except (ValueError, RecursionError):
                parsed = value
            value = parsed if isinstance(parsed, Mapping) else value
        args[str(key)] = value
    call_id = item.get("call_id") or item.get("id")
    return {"name": name, "args": args, "id": call_id if isinstance(call_id, str) else None, "type": kind}


def reply_actions(value: Any, budget: int) -> list[dict[str, Any]]:
    """The action items (`ACTION_KINDS`) a provider's reply object holds, anywhere in it (a response's ``raw``, a
    message's ``additional_kwargs``), each once, as tool calls (`action_call`). Walked without recursion, through
    the items `reply_strings` walks, and only ``budget`` items: past it `InputTooLarge`."""
    calls: list[dict[str, Any]] = []
    seen: set[str] = set()
    stack: list[Any] = [value]
    steps = 0
    while stack:
        steps += 1
        if steps > budget:
            raise InputTooLarge(f"the provider's reply holds over {budget} items: its actions cannot all be found")
        item = stack.pop()
        if isinstance(item, Mapping):
            call = action_call(item)
            if call is not None:
                key = json.dumps(call, sort_keys=True, default=repr)
                if key not in seen:
                    seen.add(key)
                    calls.append(call)
                continue
            stack.extend(reversed(list(islice(item.values(), budget))))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(list(islice(item, budget))))
        elif callable(getattr(item, "model_dump", None)):  # OpenAI's Response, a LlamaIndex block...
            stack.append(item.model_dump())
        elif not isinstance(item, (str, bytes, bytearray, memoryview, NO_FIELDS)) and (
            fields := getattr(item, "__dict__", None)
        ):
            stack.append(dict(fields))
    return calls


def pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` refusing an object that writes a key twice (a parse keeps its last
    value; the text, which the model and the consumer read, holds both)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key written twice")
    return found


def joined_words(text: str, call_name: str | None = None) -> bool:
    """Whether an identifier reads as a phrase: three or more words of two or more letters joined by ``-_.:``
    (``Mix-ammonium-nitrate-with-fuel-oil``, up to 64 characters: rt69d F2). A UUID, ``call_abc123``, ``toolu_01A``,
    a Kimi-style ``functions.send_email:0`` (its frame aside: the tool's name) do not. Nor does a Kimi-style id
    whose framed name is ``call_name``, the name of the call it identifies, judged with the call
    (``functions.get_current_weather:0``: rt69k F5); any other framed name is read as words."""
    rest = _CALL_ID_FRAME.sub("", text)
    if call_name and rest != text and rest == call_name:
        return False
    parts = _JOINERS.split(rest)
    return sum(1 for part in parts if len(part) >= 2 and part.isascii() and part.isalpha()) >= 3


def identifier(text: str, call_name: str | None = None) -> bool:
    """An id (a tool call's, a block's) that is one identifier and no phrase (`joined_words`; ``call_name``: the
    name of the call it identifies, where known): no words a model reads. A block's kind, a model's name, a status
    are identifiers by their shape alone (`IDENTIFIER`): ``server_tool_call_chunk``, ``claude-3-5-sonnet-latest``."""
    return IDENTIFIER.fullmatch(text) is not None and not joined_words(text, call_name)


def opaque(key: str, text: str) -> bool:
    """A label or an id (`LABEL_KEYS`) that is one identifier (an id: no phrase, `identifier`), or a signature
    (`SEALED_KEYS`) that is one base64 token: no words a model reads. As LangChain's reader leaves them out
    (``_opaque``)."""
    if key in _MEDIA_TYPE_KEYS and MEDIA_TYPE.fullmatch(text) is not None:
        return True
    if key in _ID_KEYS:
        return identifier(text)
    if key in LABEL_KEYS:
        return IDENTIFIER.fullmatch(text) is not None
    return key in SEALED_KEYS and SEALED.fullmatch(text) is not None


def _reply_leaf(text: str, key: str, content: bool) -> str | None:
    """The text of one string of a reply under ``key`` (``None``: no text). ``content``: inside text that held JSON
    (a tool's arguments), where keys are the model's own, not the provider's schema: every string is text.

    Media data (a base64 ``data:`` URL, a long base64 value under a media key) is read as its bytes: text when they
    are text, none when they are media. Only what is base64 all through is media: prose that merely starts like a
    data URL, or sits under a media key, is text as written."""
    if not content:
        body = _base64_body(text, key)
        if body is not None:
            return base64_as_text(body)  # media bytes, unless they are text all the same
        if opaque(key, text):
            return None
        if key == "url" and "://" in text[:16] and not any(c.isspace() for c in text):
            return link_text(text) or None  # a link: the words its path spells (`link_text`); a data: URL is above
    return text


#: What a link's path, query and fragment spell words with: read as spaces (`link_text`).
_LINK_SEPARATORS = re.compile(r"[-_+/=&;,.~:]+")
#: A word of a link: two letters at least, in any script.
_LINK_WORD = re.compile(r"[^\W\d_]{2}")


def link_text(url: str) -> str:
    """The words a web link spells (rt54b F2): its path, query and fragment (and a user name before the host),
    percent-decoded, with ``-``, ``_``, ``+``, ``/``, ``=``, ``&`` and dots read as spaces. A page's address is
    chosen by whoever publishes the page, as its title is, and
    ``https://x.example/Mix-ammonium-nitrate-with-fuel-oil`` spells a sentence the consumer reads and a later call
    sends back to the model. The scheme and the host are left out (an address: the guard fetches nothing), and so
    is a link that spells no word or one short one (``""``: ``/a/b``, a page's id). A string that is no link is its
    text as written.

    >>> link_text("https://x.example/How-to%20bake_bread?lang=en#step-2")
    'How to bake bread lang en step 2'
    >>> link_text("https://x.example/p/3f9a1c")
    ''
    """
    try:
        parts = urlsplit(url)
        user = " ".join(p for p in (parts.username, parts.password) if p)
    except ValueError:
        return url
    spelled = [unquote(user), unquote(parts.path), unquote_plus(parts.query), unquote(parts.fragment)]
    words = _LINK_SEPARATORS.sub(" ", " ".join(p for p in spelled if p)).split()
    # No word (``/a/b``), or one short one (``/watch``, ``/3f9a1c``: a page's id), is no phrase: left out with the host.
    # One long token is read (``/MixAmmoniumNitrate...``, a sentence in a script written without spaces).
    if not any(_LINK_WORD.search(w) for w in words) or (len(words) == 1 and words[0].isascii() and len(words[0]) <= 24):
        return ""
    return " ".join(words)


def _base64_body(text: str, key: str) -> str | None:
    """The base64 a string carries as media data: a ``data:...;base64,`` URL's payload, or a long value under a media
    key; ``None`` when it is not base64 all through (then it is text)."""
    if text[:5].lower() == "data:" and ";base64," in text[:4096].lower():
        body = text[text.find(",") + 1 :]
    elif key in _MEDIA_KEYS and len(text) > 256:
        body = text
    else:
        return None
    return body if _BASE64.fullmatch(body) else None


def _json_container(text: str) -> Any:
    """What ``text`` holds when it is a JSON object or array (a tool call's arguments as sent), else ``None``."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        # Objects as their keys and values in order, duplicates included: a parser keeps a repeated key's last
        # value, but the text holds both, and the model and the consumer read both.
        value = json.loads(stripped, object_pairs_hook=lambda pairs: [part for pair in pairs for part in pair])
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def reply_strings(value: Any, budget: int, known: Callable[[str], bool] = lambda text: False) -> list[str]:
    """The text of a provider's reply object (a response's ``raw``: a mapping, a list, a pydantic model or an object
    with ``model_dump``), one string an item: through mappings' keys (but the formats' field names, `REPLY_FIELDS`)
    and values and lists, but provider bookkeeping
    (`BOOKKEEPING_KEYS`), labels and signatures (`opaque`), media data, and the strings ``known`` says were judged
    already (the answer's text). A string holding JSON is read as what it holds, keys too. Walked without recursion
    and only until past ``budget`` (a text counts its length, anything else one): a walk cut short raises
    `InputTooLarge`, since what is left must not go out unjudged."""
    texts: list[str] = []
    total = 0
    # (item, its key, inside JSON text: content, not the provider's schema)
    stack: list[tuple[Any, str, bool]] = [(value, "", False)]
    while stack and total <= budget:
        item, key, content = stack.pop()
        total += 1
        room = budget - total + 1  # items beyond it cannot be reached before the walk stops
        if isinstance(item, str):
            text = _reply_leaf(item, key, content)
            if text is None or not text.strip() or known(text):
                continue
            if (parsed := _json_container(text)) is not None:
                stack.append((parsed, key, True))
                continue
            texts.append(text)
            total += len(text) - 1
        elif isinstance(item, Mapping):
            # Bookkeeping is dropped before the cut: entries past it must count, and overflow the walk, not vanish.
            kept = ((k, v) for k, v in item.items() if str(k) not in BOOKKEEPING_KEYS)
            for k, v in reversed(list(islice(kept, room))):
                stack.append((v, str(k), content))
                if not content and str(k) not in _FORMAT_KEYS:
                    stack.append((str(k), "", True))  # a key no format names: words (inside JSON text, already read)
        elif isinstance(item, (list, tuple, set, frozenset)):
            # Items keep their list's key: Bedrock's message lists its tool calls' ids under "tool_call_id". (Inside
            # JSON text an object is the list of its keys and values, `_json_container`.)
            stack.extend(reversed([(v, key, content) for v in islice(item, room)]))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            text = bytes_as_text(bytes(item[: room + SNIFF_BYTES]))
            if text:
                stack.append((text, key, content))
        elif callable(getattr(item, "model_dump", None)):  # OpenAI's ChatCompletion, Anthropic's Message...
            stack.append((item.model_dump(), key, content))
        elif not isinstance(item, NO_FIELDS) and (fields := getattr(item, "__dict__", None)):
            stack.append((dict(fields), key, content))  # a dataclass's or a SimpleNamespace's fields
    if stack or total > budget:
        raise InputTooLarge(f"the provider's reply is over {budget} characters of text: it cannot be judged whole")
    return texts


# What a remembered allow answers for: a guard object (not its id, which a later guard may take) under a policy. Policies
# are frozen but not hashable: each guard keeps the latest few it was seen with, the same object or an equal one.
_SCOPES: weakref.WeakKeyDictionary[Any, list[tuple[Any, bytes]]] = weakref.WeakKeyDictionary()
_SCOPES_LOCK = threading.Lock()
_POLICIES_KEPT = 16


def guard_scope(guard: Any) -> bytes | None:
    """A token of ``guard`` under its policy as it stands (``guard.policy``, compared with ``==``): what the checks an
    integration remembers as allowed answer for (LangChain's `AllowedChecks`, LlamaIndex's `GuardedLLM` memory), so a
    changed policy or another guard judges again. ``None`` once the guard is closed: every check is then a guard error,
    decided by ``Policy.on_error`` (docs/api.md), never an allow remembered before (rt62b F1-F3)."""
    cache = getattr(guard, "cache", None)
    if cache is None or getattr(cache, "closed", True):  # `Guard.close` closes its verdict cache
        return None
    policy = guard.policy
    try:
        with _SCOPES_LOCK:
            known = _SCOPES.get(guard)
            if known is None:
                known = _SCOPES[guard] = []
            for held, token in known:
                if held is policy:
                    return token
            for i, (held, token) in enumerate(known):
                if held == policy:
                    known[i] = (policy, token)  # found by identity from now on
                    return token
            token = uuid.uuid4().bytes
            known.append((policy, token))
            del known[:-_POLICIES_KEPT]  # a policy dropped here is only judged again
            return token
    except TypeError:  # a guard that cannot be weakly referenced: nothing is remembered for it
        return None
