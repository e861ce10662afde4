"""What both framework integrations share."""

from __future__ import annotations

import json
import re
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any, Generic, TypeVar

from qwenguard.core import Guard
from qwenguard.core.errors import InputTooLarge
from qwenguard.core.formats.media import SNIFF_BYTES, base64_as_text, bytes_as_text

__all__ = [
    "Kinds",
    "BOOKKEEPING_KEYS",
    "Bounded",
    "IDENTIFIER",
    "LABEL_KEYS",
    "NO_FIELDS",
    "MEDIA_TYPE",
    "SEALED",
    "SEALED_KEYS",
    "opaque",
    "pairs_once",
    "reply_strings",
    "require_guard",
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
#: A media type (``image/png``, ``application/vnd.api+json``) under a label key: no words either.
MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,63}/[A-Za-z0-9][\w.+-]{0,63}")
#: A signature or encrypted data a provider checks, when it is one base64 token (of any length): no words. A phrase
#: (spaces, underscores) is text.
SEALED = re.compile(r"[A-Za-z0-9+/=]+")

K = TypeVar("K")
V = TypeVar("V")


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
#: Keys whose value is opaque when it is one base64 token (`SEALED`): signatures and encrypted data.
SEALED_KEYS = frozenset({"signature", "encrypted_content", "encrypted_index", "redactedContent"})
#: Keys whose value is media data (base64, or a ``data:`` URL): judged only when its bytes are text.
#: Objects whose attributes are no data: a class's, a module's, a function's are its code.
NO_FIELDS = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
_MEDIA_KEYS = frozenset({"data", "base64", "b64_json", "file_data", "partial_image_b64"})
_BASE64 = re.compile(r"[A-Za-z0-9+/=\r\n]+")
#: Keys whose value is a media type: one there is a label (`MEDIA_TYPE`).
_MEDIA_TYPE_KEYS = frozenset({"mime_type", "mimeType", "media_type", "mediaType", "content_type", "contentType"})


def pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` refusing an object that writes a key twice (a parse keeps its last
    value; the text, which the model and the consumer read, holds both)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key written twice")
    return found


def opaque(key: str, text: str) -> bool:
    """A label or an id (`LABEL_KEYS`) that is one identifier, or a signature (`SEALED_KEYS`) that is one base64
    token: no words a model reads. As LangChain's reader leaves them out (``_opaque``)."""
    if key in _MEDIA_TYPE_KEYS and MEDIA_TYPE.fullmatch(text) is not None:
        return True
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
            return None  # a link (the guard fetches nothing); a data: URL is read above
    return text


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
    with ``model_dump``), one string an item: through mappings' values and lists, but provider bookkeeping
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
            stack.extend(reversed([(v, str(k), content) for k, v in islice(kept, room)]))
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
