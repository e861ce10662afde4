"""What one client may make the server do: the operator's limits, their defaults, and the size checks.

Every limit bounds work or held resources per request, per session or per connection, so that no
single client can freeze the server or hold it for others. The defaults below are the documented
ones (``docs/security.md``); ``qwenguard serve`` has a flag for each.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

from ..policy import MAX_TIMEOUT_S
from ..streaming.gen_windows import MAX_WINDOWS_IN_FLIGHT

#: 1 MB of JSON is ~250k tokens of text: far past any guard context, so larger bodies are abuse.
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_REQUEST_TIMEOUT_S = 30.0
#: Conversations one ``/v1/moderate`` call may carry.
DEFAULT_MAX_CONVERSATIONS = 256
#: Messages in one conversation. The guard judges the last turn; context beyond a few dozen turns
#: falls outside any Qwen3Guard context window anyway, and every message costs tokenizer work.
DEFAULT_MAX_MESSAGES = 256
#: Characters of content per request (all conversations) or per stream session (prompt and all
#: text fed): ~50k tokens, more than one full 32k context of the largest Qwen3Guard model.
DEFAULT_MAX_CHARS = 200_000
#: Guard windows one request may need over all its conversations (each conversation is bounded by the backend's
#: ``max_windows``, 256; forged-turn and read-as-seen windows included). 4 per conversation at the most
#: conversations; 200,000 characters of prose need about 50. Past it: 413 before any model work.
DEFAULT_MAX_WINDOWS_PER_REQUEST = 1024
DEFAULT_MAX_STREAMS_PER_CLIENT = 16
#: Request bodies one client address may be sending at once; more wait for a turn (a body sent at a normal
#: pace arrives in milliseconds, so only a client dripping bodies ever waits).
DEFAULT_MAX_BODIES_PER_CLIENT = 16
DEFAULT_STREAM_IDLE_TIMEOUT_S = 60.0
DEFAULT_STREAM_MAX_SESSION_S = 600.0
DEFAULT_HEAD_TIMEOUT_S = 10.0
#: Longer than httpx's 5 s pool expiry, so a client never reuses a socket the server is closing.
DEFAULT_KEEP_ALIVE_S = 10.0
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_MAX_CONNECTIONS = 1024
#: Descriptors kept free for the process itself (model files, logs, the listening socket).
FD_RESERVE = 128
#: Above this many bytes, a request body (or a stream frame) is parsed, validated and rendered in a thread
#: (`gate.Gate._off_loop`), not on the event loop: a megabyte of small JSON objects (messages, content parts,
#: tool calls) is hundreds of milliseconds of work, during which the loop would answer nothing else, /health
#: included. Below it, the work takes a few milliseconds: less than is worth a thread.
LARGE_BODY_BYTES = 32 * 1024
#: Gen-window checks one stream session runs at once: a local stream's default.
DEFAULT_STREAM_MAX_WINDOWS_IN_FLIGHT = MAX_WINDOWS_IN_FLIGHT


#: Limits that ``None`` turns off.
_NO_LIMIT_OK = frozenset(
    {
        "request_timeout_s",
        "max_streams",
        "max_streams_per_client",
        "max_requests_per_client",
        "stream_idle_timeout_s",
        "stream_max_session_s",
    }
)
#: The longest finite time limit: the per-check budget's ceiling (`policy.MAX_TIMEOUT_S`), far
#: past any sane setting and short of the event loop's and threading's own limits.
MAX_SECONDS = MAX_TIMEOUT_S


class LimitExceeded(ValueError):
    """A request or session is larger than the operator allows (HTTP 413, WebSocket close 1009)."""


@dataclass(frozen=True)
class Limits:
    """The operator's limits (see each default's constant). ``None`` disables a time limit."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S
    max_conversations: int = DEFAULT_MAX_CONVERSATIONS
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_chars: int = DEFAULT_MAX_CHARS
    max_windows_per_request: int = DEFAULT_MAX_WINDOWS_PER_REQUEST
    #: Stream sessions at once (``None``: as many as ``max_concurrency``).
    max_streams: int | None = None
    #: Stream sessions at once from one client address (``None``: 16, or half of `streams` when that is
    #: smaller, so one client never holds every session of a small server).
    max_streams_per_client: int | None = None
    #: Request bodies arriving at once from one client address (more wait for a turn, within the deadline).
    max_bodies_per_client: int = DEFAULT_MAX_BODIES_PER_CLIENT
    #: Requests served at once for one client address (``None``: half of ``max_concurrency``); more wait for
    #: one of that client's own to finish, within the deadline, so one client never holds every slot.
    max_requests_per_client: int | None = None
    #: A stream session that feeds no text for this long is closed (4408).
    stream_idle_timeout_s: float | None = DEFAULT_STREAM_IDLE_TIMEOUT_S
    #: A stream session lives at most this long (4408).
    stream_max_session_s: float | None = DEFAULT_STREAM_MAX_SESSION_S
    #: Gen-window checks one stream session runs at once (sessions without a Stream model); the rest of its
    #: text waits and is judged in longer segments. Not a client option: the server's, for every session.
    stream_max_windows_in_flight: int = DEFAULT_STREAM_MAX_WINDOWS_IN_FLIGHT
    #: A request head (and a stream's ``open`` frame) must arrive within this long.
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    #: Open sockets; lowered automatically under a small ``ulimit -n`` (see `connection_budget`).
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in _NO_LIMIT_OK:
                continue
            # NaN passed `value <= 0`: the server started, then every request was a 500 (--timeout nan) or every
            # connection hung unanswered (--head-timeout nan) in the event loop's call_later (rt53d F5).
            seconds = f.name.endswith("_s")
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
                or (seconds and value > MAX_SECONDS)
            ):
                most = f" of seconds, at most {MAX_SECONDS:.0e}" if seconds else ""
                none = " (None: no limit)" if f.name in _NO_LIMIT_OK else ""
                raise ValueError(f"{f.name} must be a positive, finite number{most}{none}, got {value!r}")
            if str(f.type).startswith("int") and not isinstance(value, int):  # a count: 2.5 sessions is a typo
                raise ValueError(f"{f.name} must be a positive integer, got {value!r}")

    @property
    def streams(self) -> int:
        return self.max_concurrency if self.max_streams is None else self.max_streams

    @property
    def streams_per_client(self) -> int:
        if self.max_streams_per_client is not None:
            return self.max_streams_per_client
        return min(DEFAULT_MAX_STREAMS_PER_CLIENT, max(1, self.streams // 2))

    @property
    def requests_per_client(self) -> int:
        if self.max_requests_per_client is not None:
            return self.max_requests_per_client
        return max(1, self.max_concurrency // 2)

    def connection_budget(self) -> int:
        """``max_connections``, lowered to leave `FD_RESERVE` descriptors free under ``ulimit -n``."""
        try:
            import resource

            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ImportError, OSError, ValueError):  # pragma: no cover - not on POSIX
            return self.max_connections
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - FD_RESERVE))

    def with_overrides(self, **overrides: Any) -> Limits:
        return dataclasses.replace(self, **overrides)

    # -- size checks (pure; routes turn LimitExceeded into 413 or close 1009) -------------------
    def check_conversations(self, conversations: Sequence[Sequence[Mapping[str, Any]]]) -> None:
        """Raise `LimitExceeded` for too many conversations, messages or characters."""
        self.check_counts(conversations)
        self.check_chars(sum(_chars(m) for conversation in conversations for m in conversation))

    def check_counts(self, conversations: Sequence[Sized]) -> None:
        """Raise `LimitExceeded` for too many conversations, or messages in one."""
        if len(conversations) > self.max_conversations:
            raise LimitExceeded(
                f"{len(conversations)} conversations in one request; this server accepts at most "
                f"{self.max_conversations} (--max-conversations)"
            )
        for conversation in conversations:
            self.check_message_count(len(conversation))

    def check_messages(self, messages: Sequence[Mapping[str, Any]]) -> None:
        self.check_message_count(len(messages))

    def check_message_count(self, count: int) -> None:
        if count > self.max_messages:
            raise LimitExceeded(
                f"a conversation of {count} messages; this server accepts at most "
                f"{self.max_messages} per conversation (--max-messages)"
            )

    def precheck_one_conversation(self, body: bytes) -> None:
        """Before parsing a body that holds one conversation (a chat completion, a stream's ``open``
        frame): parsing thousands of messages costs the event loop more than refusing them."""
        self.check_message_count(count_role_keys(body))
        self.precheck_content(body)

    def precheck_content(self, body: bytes) -> None:
        """Before parsing a body of messages (any route's): refuse one whose tool calls and text parts
        alone cannot fit in ``max_chars``, so 24,000 tool calls are never parsed, validated and rendered
        only to be refused after.

        The bound is a floor of the characters the body's turns carry once rendered (`_Turn.judged`):
        each tool call (``"function": {...}``) adds at least ``Tool call: ()`` (`MIN_TOOL_CALL_CHARS`),
        each text field with a non-empty string at least one character, and these are disjoint spans
        of the rendering (a ``"function"`` or ``"text"`` key nested in a call's arguments is rendered
        in them, key and all). `UNJUDGED_ALLOWANCE` such objects are allowed for outside what is
        judged, so an honest body is never refused here: it is refused later when it is too large,
        after rendering at most ``max_chars`` (`Service.judged`). Empty text parts have no floor, and
        are bounded only by the body's size (parsed off the event loop: `LARGE_BODY_BYTES`)."""
        calls, texts = count_function_objects(body), count_text_fields(body)
        floor = MIN_TOOL_CALL_CHARS * (calls - UNJUDGED_ALLOWANCE) + texts
        if floor > self.max_chars:
            raise LimitExceeded(
                f"request carries {calls:,} tool calls and {texts:,} text fields: at least {floor:,} "
                f"characters of content; this server accepts at most {self.max_chars:,} (--max-chars)"
            )

    def check_chars(self, total: int, what: str = "request", *, at_least: bool = False) -> None:
        """``at_least``: ``total`` was counted until past the limit, not to the end."""
        if total > self.max_chars:
            raise LimitExceeded(
                f"{what} carries {'at least ' if at_least else ''}{total:,} characters of content; this server "
                f"accepts at most {self.max_chars:,} (--max-chars)"
            )


def _json_key(name: str) -> str:
    """A regex for the JSON object key ``name`` (and its colon), each letter as itself or as a
    ``\\uXXXX`` escape (``"r\\u006fle"`` parses as ``"role"`` too; hex digits in either case). Inside
    a JSON string a quote is escaped (``\\"``), so this matches object keys only."""
    letters = []
    for letter in name:
        code = "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{ord(letter):04x}")
        letters.append(f"(?:{re.escape(letter)}|\\\\u{code})")
    return '"' + "".join(letters) + '"\\s*:'


#: A ``"role":`` key in JSON text, however spelled (`_json_key`): every message has one, so the count is
#: at least the number of messages.
_ROLE_KEY = re.compile(_json_key("role").encode())
#: A ``"function":`` key whose value is an object with keys: every tool call has one.
_FUNCTION_OBJECT = re.compile((_json_key("function") + '\\s*\\{\\s*"').encode())
#: A ``"text":`` key whose value is a non-empty string: every content part with text has one.
_TEXT_FIELD = re.compile((_json_key("text") + '\\s*"(?!")').encode())
#: The fewest characters a tool call adds to its turn's rendered text (`render_tool_call`: an empty name
#: and empty arguments).
MIN_TOOL_CALL_CHARS = len("Tool call: ()")
#: ``"function"`` objects and ``"text"`` fields that a valid body may carry outside what is judged: in a
#: chat request's other fields (``tools``, of which OpenAI accepts 128, ``tool_choice``, a JSON schema
#: in ``response_format``); the precheck's floor leaves ``13 * 1024`` characters for them (or for 13 times as
#: many text fields). Everywhere else the schemas refuse fields that are not judged (422).
UNJUDGED_ALLOWANCE = 1024


def count_role_keys(body: bytes) -> int:
    """How many ``"role":`` keys a JSON body holds: at least its messages, counted before parsing it."""
    return len(_ROLE_KEY.findall(body))


def count_function_objects(body: bytes) -> int:
    """How many ``"function": {...}`` objects a JSON body holds: at least its tool calls."""
    return len(_FUNCTION_OBJECT.findall(body))


def count_text_fields(body: bytes) -> int:
    """How many ``"text":`` keys with a non-empty string a JSON body holds: at least its content parts
    with text."""
    return len(_TEXT_FIELD.findall(body))


def _chars(message: Mapping[str, Any]) -> int:
    content = message.get("content") if isinstance(message, Mapping) else None
    return len(content) if isinstance(content, str) else 0
