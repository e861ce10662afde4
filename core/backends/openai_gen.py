"""`OpenAIGen`: Qwen3Guard-Gen behind an OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp, transformers
serve, qwenguard serve), judged as the local guard judges (docs/remote.md).

What goes on the wire (DESIGN.md decision 2; `qwenguard.core.formats.content`):

- ``mode="chat"`` posts to ``{base_url}/chat/completions`` the conversation with every message's content
  passed through `prepare_content` (cleaned; special-token strings and line-initial turn labels broken
  with U+200B), so the engine's chat template and tokenizer cannot turn content into control tokens, then
  NFC (`remote_plan.wire_content`: the form the client counted, which engines reading raw text read too).
- ``mode="completion"`` posts to ``{base_url}/completions`` the prompt's **token ids** when the client has
  the checkpoint's tokenizer (``tokenizer=``): exactly the ids the local guard runs. An engine that refuses
  ids (``transformers serve``: 400 "prompt must be a string") gets the text instead, from then on. Without
  a tokenizer the text is `render_prompt` (the official prompt, content neutralised), in NFC.
- A check becomes several requests when the local guard would judge several windows: the text before a
  forged turn label is judged alone, and input longer than the engine's context is split into
  overlapping windows (`remote_plan`); the worst verdict wins.

Deadlines and failures: all requests run on the client's own event loop (`remote_loop`), one connection
pool for sync and async callers on any loop, at most ``max_concurrency`` requests in flight, a freed slot
going to the calls waiting in turn (`fair_slots`: one call's hundred windows hold no other call back). The
``timeout`` of a call is a deadline for all of it, retries included, enforced on that loop (a server that
drips one byte a second is cut off at the deadline), and each attempt must be answered within
``connect_timeout_s + read_timeout_s`` in total; a call without a deadline waits for its slot while the requests
in flight are answered, and gives up once none was for that bound (`_slot`). Requests settle one by one: those
answered keep their verdicts, those past the deadline come back as `GuardTimeout` and are cancelled, which closes their
connections (engines such as vLLM then abort them). Connection errors, 429 and 5xx are retried with
exponential backoff (honouring ``Retry-After``); other 4xx never are on the same URL, nor is a server's "out of
time" (a 504, an error of type ``timeout``: `RemoteTimeout`), which is a timeout, as a read timeout is.

A reply is this request's only when its ``id`` is not the one read last on its connection (a late duplicate of that
reply: `transport.ReplyIds`); a reply to an earlier request of the same body (a caching gateway's) is its verdict. A
connection is kept alive only after a 200 (the late answer an error stood for may follow it), and once the engine has
shown ids, only after a reply with an id of its own. ``keep_alive=False`` gives every request a connection of its own
(an engine without ids).

A reply whose ``model`` names another model than the guard (a gateway's fallback to a chat model) is no verdict
(`_replied_as_guard`; ``reply_models=`` names others to accept), and no text built from a reply or an error shows
a credential the client holds (`SecretMask`: ``api_key``, ``headers=`` values, a URL's password).

Replicas (docs/scaling.md): ``base_url`` may be a list of replicas of one model. A check is idempotent,
so an attempt that fails on one replica (connection refused or dropped, 429, 5xx, or no answer within
its share of the deadline: half the time left while another replica remains untried) is retried at once
on a replica this request has not tried yet, then with backoff; a replica that failed is passed over
for a while (`replicas.Replicas`). New requests go to the replica with the fewest in flight. A reply
that is not a verdict (a 200 that does not parse or is cut, and qwenguard serve's 502 ``guard_error``: a
`VerdictParseError`; any other status but 429 and 5xx, such as a 404 from a replica mid-upgrade) is tried
once on each replica not yet tried, never twice on one; only
a verdict counts as a replica's success (docs/remote.md, "What counts as an answer"). The context read
from ``/models`` is the first replica's that is large enough to use (`_served_max_model_len`); the model's
name, when not given, is the one model the first replica that names one lists there (a replica that names
none is passed over; one that lists several is an error), learned again once when a replica answers 404
"model not found" and no replica gives a verdict for it (a rolling upgrade to another name).

An engine whose context is smaller than the one planned for: an answer that counts fewer prompt tokens
(``usage.prompt_tokens``) than its request must have had (`remote_plan.WireCheck.least_tokens`) judged a cut
prompt (Ollama cuts silently), and a 400 naming the context (vLLM, SGLang, llama.cpp) refused it: neither is a
verdict, and the check is planned again for the context the engine showed, which every later check uses
(`_cut`, `_run`); a check that ends without a whole verdict is blocked on an Unsafe said of a cut prompt
(`_unsafe_kept`). Whether the engine counts prompts as the official template and tokenizer do is asked once,
when an answer first leaves it open (`_settle`).

Errors, per the backend protocol (`qwenguard.core.backends.base`): an answer that does not parse, a request
the server refused (4xx, or 5xx after the retries), or a request past the deadline is that conversation's
`VerdictParseError` / `GuardUnavailable` / `GuardTimeout`; when no conversation of a call got through
(server unreachable, or nothing answered in time) the call raises that error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from ..errors import (
    GuardTimeout,
    GuardUnavailable,
    InputTooLarge,
    MissingDependency,
    QwenGuardError,
    VerdictParseError,
)
from ..formats.prompts import parse_verdict, render_prompt
from ..formats.windows import (
    CALL_WINDOW_ACCOUNT,
    CALL_WINDOW_BUDGET,
    DEFAULT_MAX_WINDOW_TOKENS,
    DEFAULT_MAX_WINDOWS,
    DEFAULT_WINDOW_OVERLAP,
    WindowAccount,
    over_call_budget,
)
from ..verdict import Risk, Verdict, worst
from .after_fork import fork_safe_lock
from .base import Conversation, Outcome
from .context_shown import ContextRefused, PromptCut, SmallerContext, Unsure, context_named, prompt_tokens
from .fair_slots import CALLER, FairSlots
from .openai_wire import (
    MALFORMED_LOGPROBS,
    NO_VERDICT_ERROR,
    RETRY_STATUS,
    RemoteHTTPError,
    RemoteTimeout,
    error_text,
    error_type,
    parse_logprobs,
    read_logprobs,
    request_headers,
    retry_after,
    server_timed_out,
)
from .plan_pool import planning_pool, planning_size
from .remote_loop import LoopThread
from .remote_plan import (
    MAX_REQUEST_MESSAGES,
    UNPUBLISHED_CONTEXT,
    ByteCounter,
    CheckPlan,
    RemotePlanner,
    WireCheck,
    wire_content,
    wire_text,
)
from .replicas import Replicas, attempt_budget, base_urls
from .transport import (
    REQUEST_ID_HEADER,
    LeftoverCheck,
    ReplyIds,
    SecretMask,
    checks_transport,
    credentials_apart,
    request_digest_of,
    request_name,
    without_password,
)

__all__ = [
    "OpenAIGen",
    "ServedModelUnknown",
    "NO_OPENAI_API",
    "RemoteHTTPError",
    "parse_logprobs",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_READ_TIMEOUT_S",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_REPLY_BYTES",
]

logger = logging.getLogger("qwenguard")

#: Connecting to a healthy server on a LAN takes milliseconds; a few seconds means it is not there.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: One guard answer is ~10 tokens; a GPU server under load still answers within seconds. A limit on the
#: whole answer, not per byte.
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 5.0
DEFAULT_MAX_CONCURRENCY = 16
#: Answers are 8-14 tokens (research/qwen3guard.md §2.3); the longest with its end token is 51 of the Qwen3
#: tokenizer: at 48 an engine cut it (finish_reason "length": a guard error, rt49d R5).
DEFAULT_MAX_TOKENS = 64
#: The most bytes of one reply the client reads. A verdict reply is a few hundred bytes; with logprobs (5
#: candidates a step, with their ``bytes``, as vLLM sends them) about 1 KB a step, so a whole ``max_tokens``
#: (48) of steps, which no verdict needs, is under 64 KB (`tests/test_remote_hostile_replies.py` measures
#: one). 256 KiB leaves a wide margin and bounds what a faulty engine can make each request hold and parse:
#: JSON of tiny values inflates ~30x into Python objects, and ``json.loads`` holds the GIL (8 MiB of ``[]``
#: was +234 MB and a 1.8 s pause of the caller's own loop; 256 KiB is ~30x less). Raise it
#: (``max_reply_bytes=``) for an engine with a larger ``max_tokens`` and logprobs.
DEFAULT_MAX_REPLY_BYTES = 256 << 10
#: Replies larger than this (only with a raised ``max_reply_bytes``) are parsed in a worker thread, as
#: stream frames are (`remote_stream.PARSE_INLINE_BYTES`): the client's loop runs its other requests'
#: I/O meanwhile on a free-threaded build; on a GIL build the parse still holds the interpreter, and
#: ``max_reply_bytes`` bounds that pause.
_PARSE_INLINE_BYTES = 256 << 10
#: Of an error reply (4xx/5xx, a redirect) only this much is read: its message is cut to 300 characters.
_ERROR_BODY_BYTES = 64 << 10
#: The most choices of one reply that are read. A guard answers one (``n=1``); an engine that ignores ``n`` sends a
#: few. A reply of 20,000 empty choices (80 KB) rendered the whole reply for each, and froze the client's loop, every
#: check of the client and their deadlines for a minute (rt68a F1): one with more is no verdict.
_MAX_CHOICES = 16
#: Of a reply that is no verdict, at most this much is shown, masked before it is cut (a secret is never cut in part).
_RAW_CHARS = 300
#: The most parts of a chat choice's content that are read, where it is a list of parts (`_content_text`), as the
#: most choices of a reply are (`_MAX_CHOICES`): a verdict is a few lines.
_MAX_CONTENT_PARTS = 16
#: The header of qwenguard serve's 502 ``guard_error`` that carries a Controversial the guard read all the same
#: (`qwenguard.core.server.service.READABLE_HEADER`; `OpenAIGen._readable_of`).
READABLE_HEADER = "X-Qwenguard-Readable"
#: The most characters one character of a credential takes in a form `SecretMask` masks (URL-quoted: a 4-byte
#: UTF-8 character is 12, a "%" of a quoted password 3; JSON-escaped: an astral character is 12; base64 less).
_MASKED_FORM_CHARS = 12
#: Beyond a call's deadline, how long a caller waits for the loop to hand back what it has (it normally
#: answers at the deadline itself; this only covers a loop that is stuck).
_GRACE_S = 2.0
#: Planning a check without a tokenizer is string work whose cost hangs on what the text holds, not its size: 7,990
#: characters of prose plan in ~1.5 ms, of bidi controls, zero-width characters, markup and ``USER:`` labels in 0.6 s,
#: and 8 such characters in up to 1.8 ms (each hidden place and forged label is another reading, another window). The
#: client's loop carries every caller's I/O (eight such prompts at once froze it for seconds: rt63b F1), so a check is
#: planned on it only when it is cheap by construction: at most this many characters and `_INLINE_PLAN_MESSAGES`
#: messages in all, each of `_PLAIN_TEXT` only, which nothing reads otherwise, judged as one window (measured at most
#: 0.6 ms for 1,000 characters; 2,000: 1.1 ms). Everything else goes to the planning pool (a hop of ~25 µs).
_INLINE_PLAN_CHARS = 1_000
_INLINE_PLAN_MESSAGES = 2
#: Plain prose: no markup, entity, label colon, line break, control or non-ASCII character.
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9 .,?!']*")
#: A tokenizer's ``model_max_length`` above this is the "no limit" placeholder, not a context.
_SANE_CONTEXT = 10_000_000
#: A context a replica publishes at ``/models`` must hold the guard prompt and at least this many tokens of
#: text (as the client counts them: bytes without the tokenizer), or it is ignored: a replica publishing 65
#: would make every check a guard error (``max_context=`` given by the caller is always used).
_MIN_SERVED_ROOM = 256
#: How long a client waits before it reads a ``/models`` that gave no model list again: refused (a 401, a 404) or
#: failed without an answer (a dropped connection, a timeout: rt61f F5).
_MODELS_REREAD_S = 60.0

#: How many times one call plans a check again after an engine cut its prompt (each time for a smaller context).
_MAX_REPLANS = 3

Mode = Literal["chat", "completion"]
_Error = TypeVar("_Error", bound=QwenGuardError)
_IDS_REFUSED = frozenset({400, 422})


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency.for_extra("remote", "httpx") from exc
    return httpx


def _tenacity() -> Any:
    try:
        import tenacity
    except ImportError as exc:  # pragma: no cover
        raise MissingDependency.for_extra("remote", "tenacity") from exc
    return tenacity


#: The advice of a URL where no OpenAI API answers: a route that is not there (HTTP 404), a page that is not
#: JSON (a web app's). The commonest cause is the base URL's path: ``/v1`` twice, or a wrong prefix (rt69f F1).
NO_OPENAI_API = (
    "no OpenAI-compatible API at this URL: check the base URL (it should end in /v1 once, e.g. http://host:8000/v1)"
)


class ServedModelUnknown(QwenGuardError):
    """No model name was given and the server's ``/models`` does not name exactly one. ``reason`` says what
    it lists; ``models``: the names listed (None when no list could be read); ``status``: the HTTP status of a
    reply that held no list. A 401/403 is a key missing or wrong: its advice is the key, not a model name
    (naming the model, every check was a 401 guard error instead: rt50a F14). ``no_api``: the URL answers no
    OpenAI API at all (a 404, a reply that is not JSON): its advice is the base URL, as a model name would
    only turn the error into a 404 on every check (rt69f F1)."""

    def __init__(
        self, reason: str, models: Sequence[str] | None = None, *, status: int | None = None, no_api: bool = False
    ) -> None:
        if self.needs_key_for(status):
            advice = "pass the server's API key (Guard.remote(..., api_key=KEY))"
        elif no_api:
            advice = NO_OPENAI_API
        else:
            advice = "pass the served model's name (Guard.remote(..., model=NAME))"
        super().__init__(f"{reason}: {advice}")
        self.reason = reason
        self.models = None if models is None else tuple(models)
        self.status = status
        self.no_api = no_api

    @staticmethod
    def needs_key_for(status: int | None) -> bool:
        return status in (401, 403)

    @property
    def needs_key(self) -> bool:
        """The server refused the client (HTTP 401/403): the API key is missing or wrong."""
        return self.needs_key_for(self.status)


#: A model list named in an error: its first names, each cut (a /models reply may list thousands).
_NAMED_MODELS = 10
_NAME_CHARS = 100


def _named(models: Sequence[str]) -> str:
    names = [m[:_NAME_CHARS] for m in models[:_NAMED_MODELS]]
    return repr(names)[:-1] + (f", ... ({len(models) - _NAMED_MODELS} more)]" if len(models) > _NAMED_MODELS else "]")


def _model_list(status: int, content: bytes | None) -> list[Any] | None:
    """The ``data`` list of a ``/models`` reply, or None when the reply holds none."""
    if status != 200 or content is None:
        return None
    try:
        entries = json.loads(content)["data"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return entries if isinstance(entries, list) else None


#: The least ``max_tokens`` a client asks for: a response check's "Safety: Safe\nCategories: None\nRefusal: No" is 12
#: Qwen3 tokens, and its end one more (with 8, the prompt verdict's least, every response check was cut: rt65j F5).
_LEAST_MAX_TOKENS = 13
#: The most: five times the longest verdict (51 tokens with its end, `DEFAULT_MAX_TOKENS`). A verdict is a few lines;
#: a larger budget only takes room from the prompt (every request reserves it), and 4,096, as a chat app sets it, left
#: none under the context of an engine that publishes none: every check a guard error before any request (rt63b F4).
_MOST_MAX_TOKENS = 256


class _LateCopy(Exception):
    """A reply that is no answer to its request (`ReplyIds`: a late copy, another request's reply): asked again at
    once (`OpenAIGen._exchange`); past the pool's idle connections, a dropped connection for the retries.
    ``elsewhere``: asked again as such (an id read on another connection, a named URL's reply without one)."""

    def __init__(self, message: str, *, elsewhere: bool = False) -> None:
        super().__init__(message)
        self.elsewhere = elsewhere


#: How long a check waits for the answer to the tokenizer question (`OpenAIGen._ids_read_alike`): an engine answers a
#: prompt "Hi" in milliseconds; one that does not within this has the checks go as text meanwhile.
_IDS_QUESTION_WAIT_S = 1.0

#: Why a choice ended, other than its stop: not a verdict (a provider's filter cut it, the model called a tool).
_NOT_A_VERDICT_ENDS = frozenset({"content_filter", "tool_calls", "function_call"})
#: The ends that say the model finished its answer: "stop" (OpenAI, vLLM, SGLang, llama.cpp, Ollama), TGI's
#: "eos_token" and "stop_sequence", "eos", and none given. Any other end ("length"; vLLM's and SGLang's "abort",
#: vLLM's "error": the engine stopped the request) leaves a text that may be a part of the verdict (rt57d F1).
_WHOLE_ENDS = frozenset({"stop", "eos", "eos_token", "stop_sequence", ""})


def _cut_short(end: object, max_tokens: int) -> str | None:
    """Why a choice's ``finish_reason`` shows its text may be a part of the verdict, or None for a normal end."""
    if end is None or (isinstance(end, str) and end.strip().lower() in _WHOLE_ENDS):
        return None
    if not isinstance(end, str):  # a list or an object: no engine ends so, and no normal end (rt68j F3)
        return f"ended with a finish_reason that is not a string ({type(end).__name__}): not a normal end"
    if end == "length":
        return f"was cut at max_tokens={max_tokens} (finish_reason 'length'): the verdict may be incomplete"
    return f"ended with finish_reason {str(end)[:40]!r}, not a normal end: the verdict may be incomplete"


def _content_text(content: list[Any], limit: int) -> tuple[str, str | None]:
    """The text of a chat choice's content sent as a list of parts (``[{"type": "text", "text": "Safety: ..."}]``, as
    some gateways send it; ``output_text`` parts as the Responses API names them; a part that is a string stands as
    it is), joined as the answer the guard wrote, and why it may not be that answer whole (None: whole). A part that
    is no text (an image, a refusal, an object without text) is left out and makes the answer read as a cut one is
    (`_cut_short`: only a first line saying Unsafe stands): refused whole, an Unsafe beside a refusal part was a
    guard error, and on_error="allow" let it through (rt69m F3). At most `_MAX_CONTENT_PARTS` parts and ``limit``
    characters are read (the reply's own bound, ``max_reply_bytes``): past them the text is cut too."""
    texts: list[str] = []
    size = 0
    odd = None
    for part in content[:_MAX_CONTENT_PARTS]:
        if (
            isinstance(part, Mapping)
            and part.get("type") in ("text", "output_text")
            and isinstance(part.get("text"), str)
        ):
            part = part["text"]
        if not isinstance(part, str):
            odd = odd or "has a content part that is not text: not a guard's whole answer"
            continue
        texts.append(part)
        size += len(part)
        if size > limit:
            return "".join(texts)[:limit], f"has content parts longer than {limit:,} characters: cut"
    if len(content) > _MAX_CONTENT_PARTS:
        return "".join(texts), f"has {len(content):,} content parts (more than {_MAX_CONTENT_PARTS} are not read): cut"
    return "".join(texts), odd


def _not_a_guards_answer(choice: Any) -> str | None:
    """What in a choice shows that no guard wrote it, or None. A Qwen3Guard-Gen answers its verdict and nothing
    else: a choice with tool calls, reasoning (a chat model behind an engine's reasoning parser, which moves
    ``<think>`` out of the content) or a filter's stop is no verdict, whatever its content says (rt53d F6)."""
    if not isinstance(choice, Mapping):
        return None
    # Only a string is looked up: a list's or an object's TypeError (unhashable) dropped the whole reply's
    # readable, a sibling choice's Unsafe with it (rt68j F3); `_cut_short` says such an end is no normal one.
    if isinstance(end := choice.get("finish_reason"), str) and end in _NOT_A_VERDICT_ENDS:
        return f"ended with finish_reason {end!r}: not a verdict"
    message = choice.get("message")
    if not isinstance(message, Mapping):
        return None
    if message.get("tool_calls") or message.get("function_call"):
        return "holds tool calls: a guard model makes none (is the served model a Qwen3Guard?)"
    for field in ("reasoning_content", "reasoning", "reasoning_details"):
        # Any shape that holds something: a gateway's list or object of reasoning parts (OpenRouter's
        # ``reasoning_details``) was read as a guard's answer when only a string counted (rt70e note).
        value = message.get(field)
        if value.strip() if isinstance(value, str) else value:  # null, "", [] and {} say no reasoning
            return f"holds {field}: a guard model does not think (is the served model a Qwen3Guard?)"
    return None


#: What a model's name may end with that names its file or quantisation, not the model: llama.cpp reports the
#: GGUF file ("Qwen3Guard-Gen-4B-Q4_K_M.gguf"), split files ("-00001-of-00002"), and engines' quantised builds.
_NAME_SUFFIXES = re.compile(
    r"(?:[-_.](?:i?q\d\w*|f16|f32|fp16|bf16|fp8|int4|int8|w4a16|w8a8|awq|gptq|gguf|mlx|\d+bit|\d{5}-of-\d{5}))+$"
)


def model_key(name: str) -> str:
    """``name`` as reply names are compared (`OpenAIGen._replied_as_guard`): its last path segment, in lower
    case, without ``.gguf`` and quantisation suffixes ("/models/Qwen3Guard-Gen-4B-Q8_0.gguf": "qwen3guard-gen-4b")."""
    last = name.strip().replace("\\", "/").rstrip("/").rpartition("/")[2].lower()
    return _NAME_SUFFIXES.sub("", last.removesuffix(".gguf")) or last


def _names_a_qwen3guard(name: str) -> bool:
    return "qwen3guard" in re.sub(r"[-_ .]", "", name.lower())


def _served_model(
    url: str, status: int, content: bytes | None, entries: list[Any] | None, scrub: Callable[[str], str]
) -> str:
    """The one model a replica lists at ``/models``; `ServedModelUnknown` for several, none, or no list (its
    reason masked by ``scrub``, the client's credential mask, before it is cut)."""
    where = f"{url}/models"
    if entries is None:
        no_api = status == 404  # no such route: the base URL's path is wrong
        if status != 200:
            why = f"HTTP {status}: {error_text(content or b'', scrub)}"
        elif content is None:
            why = "its reply is larger than max_reply_bytes"
        elif not _is_json(content):  # a web app's page: no OpenAI API here at all
            why, no_api = "its reply is not JSON", True
        else:  # JSON with no usable list: an OpenAI API that lists none, whose model's name may still be known
            why = "its reply is not an OpenAI model list"
        raise ServedModelUnknown(f"cannot list the models at {where} ({why})", status=status, no_api=no_api)
    ids = [e.get("id") if isinstance(e, Mapping) else None for e in entries]
    names = [i for i in ids if isinstance(i, str) and i]
    if len(names) < len(ids):
        raise ServedModelUnknown(f"cannot list the models at {where} (a model without an id)")
    if len(names) != 1:
        raise ServedModelUnknown(f"{url} serves {len(names)} models {_named(names)}", names)
    return names[0]


#: Error types and codes with which engines say "no such model" (vLLM: NotFoundError; OpenAI, qwenguard serve:
#: model_not_found): a 404 naming one is a refused name, not a missing route.
_MODEL_NOT_FOUND = frozenset({"model_not_found", "NotFoundError", "not_found_error"})


def _is_json(content: bytes) -> bool:
    """Whether a reply's body is JSON at all (an OpenAI API's is, whatever it holds; a web app's page is not)."""
    try:
        json.loads(content)
    except ValueError:  # not UTF-8 included
        return False
    except RecursionError:  # JSON nested deeper than the parser's stack
        return True
    return True


def _model_not_found(status: int, body: bytes) -> bool:
    """Whether an error reply says the model asked for is not served (404 with a "not found" error type or
    code, under ``error`` or at the top level, as older vLLM sends it)."""
    if status != 404:
        return False
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    err = data.get("error")
    fields = [data, err] if isinstance(err, dict) else [data]
    return any(isinstance(f.get(k), str) and f[k] in _MODEL_NOT_FOUND for f in fields for k in ("type", "code"))


def _cheap_to_plan(conversations: Sequence[Conversation]) -> bool:
    """Whether a call's windows are cheap to plan on the client's loop by construction (`_INLINE_PLAN_CHARS`)."""
    messages = chars = 0
    for conversation in conversations:
        for message in conversation:
            messages += 1
            content = message.get("content") if isinstance(message, Mapping) else None
            if messages > _INLINE_PLAN_MESSAGES or not isinstance(content, str):
                return False
            chars += len(content)
            if chars > _INLINE_PLAN_CHARS or not _PLAIN_TEXT.fullmatch(content):
                return False
    return True


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # the outcome is read: no "exception was never retrieved" when no check waited


def _unsafe_kept(cut: _Error, answer: Outcome) -> _Error:
    """``cut`` carrying the Unsafe its answer said (a verdict, or one a reply that is none carries: `_read`), with no
    category (the engine read a part of the text, or may have, and no ignored category may excuse it), as what the
    policy blocks on when the check ends without a whole verdict (`Policy.decide_error`): a Safe or Controversial
    answer to a cut prompt is never read (rt57d F2)."""
    if (unsafe := _uncategorised_unsafe(answer)) is not None:
        cut.readable = unsafe
    return cut


def _uncategorised_unsafe(answer: Outcome) -> Verdict | None:
    """The Unsafe ``answer`` says (a verdict, or one a reply that is none carries: `_read`), with no category."""
    unsafe = answer if isinstance(answer, Verdict) and answer.risk is Risk.UNSAFE else _cut_unsafe(answer)
    return None if unsafe is None else Verdict(Risk.UNSAFE, (), None, unsafe.raw, unsafe.latency_ms, unsafe.model)


def _cut_unsafe(outcome: Outcome) -> Verdict | None:
    """The Unsafe an outcome that is no verdict carries as ``readable``, or None: said of a cut prompt
    (`_unsafe_kept`), or whole by a choice beside one that is no verdict (`OpenAIGen._read`)."""
    readable = getattr(outcome, "readable", None)
    return readable if isinstance(readable, Verdict) and readable.risk is Risk.UNSAFE else None


def _read_risk(outcome: Outcome) -> Verdict | None:
    """The verdict other than Safe an outcome that is no verdict carries as ``readable``, or None: an Unsafe said of a
    cut prompt (`_unsafe_kept`), or what the choices read whole beside one that is no verdict said (`OpenAIGen._read`:
    a Controversial too). As a missing window, what is missing can only add risk to it (rt68a F3)."""
    readable = getattr(outcome, "readable", None)
    return readable if isinstance(readable, Verdict) and readable.risk is not Risk.SAFE else None


class _AttemptTimeout(GuardTimeout):
    """One attempt was not answered within its share of the deadline (retried on another replica)."""


class _Deadline:
    def __init__(self, timeout: float | None) -> None:
        self.end = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        left = self.left()
        return left is not None and left <= 0


class _Wire:
    """The client's loop thread and what lives on it: the HTTP connection pool and the in-flight limit."""

    def __init__(self, name: str, make_client: Any, max_concurrency: int) -> None:
        self.thread = LoopThread(name)
        self._make_client = make_client
        self._max_concurrency = max_concurrency
        self.client: Any = None
        self.in_flight: FairSlots | None = None
        self.reply_ids = ReplyIds()  # the last reply id read on each connection: late duplicates (rt64e F1)
        self.answered = 0  # requests the engine answered (any status): progress, for calls queued for a slot (`_slot`)
        self.lookup: asyncio.Future[None] | None = None  # the /models read in progress (`OpenAIGen._context`)
        self.lookup_slow = False  # a check waited for it a while in vain: the others plan without it meanwhile
        self.probe: asyncio.Future[None] | None = None  # the template question in progress (`OpenAIGen._settle`)
        self.ids_probe: asyncio.Future[None] | None = None  # the tokenizer question in progress (`_ids_read_alike`)
        self.ids_question_slow = False  # a check waited for its answer in vain: checks go as text until it is in

    def ready(self) -> None:
        """Create the loop-bound objects (called on the loop)."""
        if self.client is None:
            self.client = self._make_client()
            self.in_flight = FairSlots(self._max_concurrency)

    async def _aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def close(self) -> None:
        self.thread.stop(self._aclose)


def _content_encoding(response: Any) -> str:
    """The reply's ``Content-Encoding`` when it names anything but ``identity`` (all its headers, joined),
    else ``""``: the client reads replies as sent and never inflates one."""
    values = response.headers.get_list("content-encoding")
    codings = [c.strip().lower() for v in values for c in v.split(",")]
    return ", ".join(values) if any(c not in ("", "identity") for c in codings) else ""


async def _whole(content: bytes) -> Any:
    yield content


def _load_encoder(tokenizer: Any) -> Any:
    if tokenizer is None:
        return None
    from ..formats.encoding import ConversationEncoder

    if isinstance(tokenizer, (str, Path)):
        from .hf_tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    return ConversationEncoder(tokenizer)


def _message_cap_of(entry: Mapping[str, Any]) -> int | None:
    """The turns one request may hold: the ``max_messages`` a ``/models`` entry publishes (`qwenguard serve`'s
    --max-messages), else for `qwenguard serve` (``owned_by: "qwenguard"``: a server older than the field) the default
    it starts with; None (no cap) for any other engine, and for an entry not found."""
    value = entry.get("max_messages")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return MAX_REQUEST_MESSAGES if entry.get("owned_by") == "qwenguard" else None


class OpenAIGen:
    """Remote Qwen3Guard-Gen over the OpenAI API (chat or completion mode).

    >>> backend = OpenAIGen("http://127.0.0.1:8000/v1", model="Qwen/Qwen3Guard-Gen-4B")   # doctest: +SKIP
    >>> guard = Guard(backend)                                                           # doctest: +SKIP

    ``tokenizer``: the served checkpoint's tokenizer (hub id, directory, ``"demo"``, or a loaded tokenizer):
    exact token counts, windows equal to the local guard's, token ids in completion mode.
    ``max_context``: the engine's context in tokens; else read from ``/models`` (``max_model_len``, as vLLM
    and SGLang publish it), else 4,096 (`UNPUBLISHED_CONTEXT`; the tokenizer's ``model_max_length`` when smaller).
    ``model``: the served model's name; when omitted, the first check learns it from ``/models`` (the one
    model the first replica that names one lists; several: `ServedModelUnknown`; none anywhere: the same),
    in the request that reads the context, and ``name`` is ``""`` until then. A learned name that no replica
    serves any more (404 "model not found", no verdict) is learned again by the next check.
    ``transport``: an ``httpx.AsyncBaseTransport`` (fault injection in tests, proxies).
    ``reply_models``: names a reply's ``model`` field may carry besides those `_replied_as_guard` accepts (``"*"``:
    any), for an engine that answers under a name of its own.
    ``keep_alive=False``: every check request on a connection of its own (closed after its reply), for a proxy that
    may forward a second answer to one request with an id of its own, which `ReplyIds` cannot tell from an answer.
    ``base_url`` may be a list: replicas of the same model, with failover between them (module docs).
    """

    #: What a check of a closed client answers (`Guard` says it too, before any work).
    CLOSED = "the remote guard backend is closed"

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        model: str | None = None,
        api_key: str | None = None,
        mode: Mode = "chat",
        tokenizer: Any = None,
        max_context: int | None = None,
        window_overlap: int = DEFAULT_WINDOW_OVERLAP,
        max_window_tokens: int = DEFAULT_MAX_WINDOW_TOKENS,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        logprobs: bool = False,
        headers: Mapping[str, str] | None = None,
        transport: Any = None,
        async_transport: Any = None,
        reply_models: str | Sequence[str] | None = None,
        keep_alive: bool = True,
    ) -> None:
        if mode not in ("chat", "completion"):
            raise ValueError(f"mode must be 'chat' or 'completion', got {mode!r}")
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(
                "model must be the served model name, e.g. 'Qwen/Qwen3Guard-Gen-4B' (or None: the one the server lists)"
            )
        urls = base_urls(base_url)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        # rt53d Lows: `True` passed as 1 token, and a budget under the shortest verdict made every safe answer a cut
        # one (a guard error); "yes" read as logprobs on.
        if (
            not isinstance(max_tokens, int)
            or isinstance(max_tokens, bool)
            or not _LEAST_MAX_TOKENS <= max_tokens <= _MOST_MAX_TOKENS
        ):
            raise ValueError(
                f"max_tokens must be an int from {_LEAST_MAX_TOKENS} to {_MOST_MAX_TOKENS}: the guard's answer, not a "
                f"chat reply (the shortest verdict is 7 Qwen3 tokens and its end; the default {DEFAULT_MAX_TOKENS} "
                f"holds the longest, 51; every request reserves max_tokens of the engine's context), got {max_tokens!r}"
            )
        if not isinstance(logprobs, bool):
            raise TypeError(f"logprobs must be True or False, got {logprobs!r}")
        if not isinstance(keep_alive, bool):
            raise TypeError(f"keep_alive must be True or False, got {keep_alive!r}")
        if max_context is not None and (not isinstance(max_context, int) or max_context <= max_tokens + 16):
            raise ValueError(f"max_context must be an int of tokens above max_tokens + 16, got {max_context!r}")
        # NaN passed every comparison (rt53d, left by helper J): finite, and positive.
        if not all(
            isinstance(t, (int, float)) and math.isfinite(t) and t > 0 for t in (connect_timeout_s, read_timeout_s)
        ):
            raise ValueError(
                f"connect_timeout_s and read_timeout_s must be positive, finite numbers of seconds, got "
                f"{connect_timeout_s!r} and {read_timeout_s!r}"
            )
        if not all(isinstance(b, (int, float)) and math.isfinite(b) and b >= 0 for b in (backoff_s, max_backoff_s)):
            raise ValueError(
                f"backoff_s and max_backoff_s must be finite numbers >= 0, got {backoff_s!r}, {max_backoff_s!r}"
            )
        if not isinstance(max_reply_bytes, int) or isinstance(max_reply_bytes, bool) or max_reply_bytes < 1:
            raise ValueError(f"max_reply_bytes must be a positive int of bytes, got {max_reply_bytes!r}")
        if isinstance(reply_models, str):
            reply_models = [reply_models]
        if reply_models is not None and not all(isinstance(n, str) and n.strip() for n in reply_models):
            raise TypeError(f"reply_models must be model names (or '*': any), got {reply_models!r}")
        httpx = _httpx()
        transport = transport if transport is not None else async_transport
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(
                "transport must be an httpx.AsyncBaseTransport: requests run on the client's own event loop"
            )
        self.replicas = Replicas(urls)
        self.base_url = urls[0]
        self.base_urls = urls
        # A URL's user and password go as the basic auth httpx would make of them, and the request goes to the URL
        # without them: httpx's own log line ("HTTP Request: POST http://svc:PASSWORD@...", INFO) and errors never
        # see them. Messages show the URL with the password masked (`_show`).
        apart = {u: credentials_apart(u) for u in urls}
        self._target = {u: bare for u, (bare, _) in apart.items()}
        self._auth: dict[str, Any] = {u: auth for u, (_, auth) in apart.items() if auth is not None}
        self.model = model  # None: learned from /models at the first check (`_served_max_model_len`)
        # The names a reply may carry in its "model" field besides the one asked (`_replied_as_guard`, rt61c F1):
        # the operator's, and what /models said the asked name serves (`_note_listed`).
        self.reply_models = tuple(reply_models or ())
        self._any_reply_model = "*" in self.reply_models
        self._reply_keys = {model_key(n) for n in self.reply_models if n != "*"}
        self._listed_keys: set[str] = set()
        self._replied_ok: set[str] = set()  # reply names accepted already: the hot path is one set lookup
        # Every credential this client holds, masked in whatever text it builds from a reply or an error (rt61c F3).
        self._mask = SecretMask(api_key, headers, urls)
        # How far past a cut a credential the mask knows may reach, in any form it masks (`_shown`).
        given = [api_key or "", *(v for v in (headers or {}).values() if isinstance(v, str)), *urls]
        self._secret_reach = _MASKED_FORM_CHARS * max(map(len, given), default=0)
        self.name = model or ""
        self._model_given = model is not None
        # A learned name refused (404 model not found) with no verdict: learn it again at the next check
        # (`_refused`); the old name is still sent meanwhile, never None.
        self._stale = False
        self._refused_name: str | None = None  # the last name forgotten: not forgotten twice in a row
        self.mode: Mode = mode
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = max_concurrency
        self.max_tokens = max_tokens
        self.max_reply_bytes = max_reply_bytes
        self.logprobs = logprobs
        self.keep_alive = keep_alive
        self.max_context = max_context
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.requests_sent = 0  # attempts on the wire, retries included (observable in tests/figures)
        self.planner = RemotePlanner(
            encoder=_load_encoder(tokenizer),
            max_new_tokens=max_tokens,
            window_overlap=window_overlap,
            max_window_tokens=max_window_tokens,
            max_windows=max_windows,
        )
        self._fallback_context = min(self._tokenizer_context() or UNPUBLISHED_CONTEXT, UNPUBLISHED_CONTEXT)
        self._said_fallback = False
        # The server is `qwenguard serve` (its /models entry says so): it windows a long input itself, as the local
        # guard does, so no context needs to be given and none is warned about (`_served_max_model_len`).
        self._windowing_server = False
        # Turns a request may show: what `qwenguard serve` publishes in /models (its --max-messages; else
        # `MAX_REQUEST_MESSAGES`), once it said it is qwenguard's. No cap for any other engine (vLLM, SGLang...: a
        # cap there cut context the local guard shows, rt56e F1), nor for a server whose /models is not read (the
        # llama.cpp and Ollama recipes give model= and max_context=: capped, a request 150 exchanges back was judged
        # remotely and not locally, rt68a F4). A qwenguard serve shown more refuses it (413): `InputTooLarge`.
        self._message_cap: int | None = None
        self._said_unlisted = False  # a /models read still pending was logged (`_context`)
        self._served_context: int | None = None  # learned from /models: 0 = listed without one, None = not read
        # /models refused (a 401, a 404: no model list): why; and when a /models that gave no list (refused, or
        # failed unanswered: a dropped connection, a timeout) is read again: a server that failed it at the first
        # check (not up yet, a key added later) is read again then, one read per back-off at most.
        self._models_refusal: str | None = None
        self._models_reread_at = 0.0
        self._verdicts_seen = False  # a check got a verdict: a server refusing /models serves checks all the same
        # The least served context worth planning with: the guard prompt of a reply (the longer template,
        # counted as the planner counts), _MIN_SERVED_ROOM tokens of text and the answer.
        counter = self.planner.encoder if self.planner.encoder is not None else ByteCounter()
        template = len(counter.encode([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]))
        self._context_floor = template + _MIN_SERVED_ROOM + max_tokens
        self._ignored_contexts: set[str] = set()  # replicas whose published context was too small (logged)
        self._ids_accepted: bool | None = None  # completion mode: does the engine take token ids?
        # Completion mode: does the engine count a prompt's text as the client's tokenizer does (`_ask_ids`)? Ids of
        # another vocabulary read as gibberish there, which a guard may well call safe (rt53d F2).
        self._ids_agree: bool | None = None
        self._cut_context: int | None = None  # the least context a replica showed by cutting a prompt (`_cut`)
        # Whether the engine counts a prompt as the local guard renders it (the official template and tokenizer):
        # None until an answer counts fewer tokens than that and not fewer than its messages (`_settle`).
        self._counts_our_template: bool | None = None
        self._too_small: set[int] = set()  # contexts shown that cannot hold the guard prompt (logged once each)
        self._warned_no_logprobs = False
        self._said_leftover = False  # a reply with bytes past it was logged as a warning (`_leftover`)
        self._said_duplicate = False  # a reply read twice on its connection was logged as a warning (`_duplicate`)
        # Replies uncompressed: a verdict is a few hundred bytes, and a compressed body is inflated a whole
        # network chunk at a time (up to ~1000x; nested encodings multiply it) before max_reply_bytes can
        # count it. A server that compresses anyway is refused unread (`_compressed`).
        # "" as no key: an engine without auth (an unset variable; a server that wants one says 401).
        headers_ = {"Accept": "application/json", "Accept-Encoding": "identity", **request_headers(headers, api_key)}
        timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)

        def make_client() -> Any:
            from .pool_guard import slot_keeping

            # Redirects are never followed (httpx's default, made explicit): a verdict comes from the
            # engine asked, and a 3xx is a guard error (`_post`), whatever its body says. Without a transport given,
            # httpx's default one (its TLS, the environment's proxies) whose cancelled checks give their connection
            # back to the pool, with one connection more than max_concurrency for the /models read (which takes no
            # check's slot: `checks_transport`; httpcore kept some for good: rt67s2 F2, rt68g F1-F2). A transport
            # given is wrapped alike (`slot_keeping`; its pool, its size: rt68g F3).
            route = checks_transport(True, max_connections=max_concurrency) if transport is None else transport
            return httpx.AsyncClient(
                headers=headers_, timeout=timeout, transport=slot_keeping(route), follow_redirects=False
            )

        self._make_client = make_client
        self._wire: _Wire | None = None
        self._wire_lock = fork_safe_lock(self, "_wire_lock")  # a forked child starts its own wire (`_start`)
        self._closed = False

    def __repr__(self) -> str:
        shown = [self._show(u) for u in self.base_urls]
        where = shown[0] if len(shown) == 1 else shown
        return f"OpenAIGen({where!r}, model={self.model!r}, mode={self.mode!r})"

    def _show(self, url: str) -> str:
        """``url`` as errors, logs and reprs show it: without its password (``http://svc:***@host/v1``). Decisions
        carry their error's text to listeners, audit logs and integrations' messages; requests keep the real URL."""
        return self.replicas.shown.get(url) or without_password(url)

    def _auth_of(self, url: str) -> dict[str, Any]:
        """The ``auth`` of a request to ``url``: its user and password, when it has them (else the client's)."""
        auth = self._auth.get(url)
        return {} if auth is None else {"auth": auth}

    def _scrub(self, text: str) -> str:
        """``text`` (an HTTP library's message, a server's reply) with each replica URL's password masked, wherever
        it shows it, and every other credential the client holds (`SecretMask`: ``api_key``, ``headers=`` values)."""
        for real, shown in self.replicas.shown.items():
            if real != shown:
                secret = urlsplit(real).netloc.rpartition("@")[0]  # "user:password"
                text = text.replace(real, shown).replace(secret + "@", secret.split(":", 1)[0] + ":***@")
        return self._mask.text(text)

    def _shown(self, value: object) -> str:
        """``value`` (a reply, a choice) as an error shows it: masked (`_scrub`), then cut to `_RAW_CHARS`. Only a
        window of its first `_RAW_CHARS` characters and as many as a credential may take is masked (each reply is
        rendered a bounded number of times, `_MAX_CHOICES`, and the mask's work is bounded too). A credential may
        straddle the window's end: cut there, it is no whole secret and goes unmasked (masking the first 64 KiB, a
        3,000-character token echoed 22 times showed 130 characters of it: rt68j F4). So of a longer text only
        what its first `_RAW_CHARS` characters read masked alike, alone and in the window, is shown: a credential
        that starts in them ends in the window, and one cut at their end is masked in the window only."""
        text = str(value)
        window = _RAW_CHARS + self._secret_reach
        shown = self._scrub(text[:window])
        if len(text) > window:
            shown = os.path.commonprefix([shown, self._scrub(text[:_RAW_CHARS])])
        return shown[:_RAW_CHARS]

    @property
    def _where(self) -> str:
        shown = [self._show(u) for u in self.base_urls]
        return shown[0] if len(shown) == 1 else f"{len(shown)} replicas ({', '.join(shown)})"

    @property
    def tokenizer(self) -> Any:
        return None if self.planner.encoder is None else self.planner.encoder.tokenizer

    def _tokenizer_context(self) -> int | None:
        length = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(length, int) and self.max_tokens + 16 < length < _SANE_CONTEXT:
            return length
        return None

    # -- what goes on the wire ----------------------------------------------------------------
    def _body(self, check: WireCheck, as_ids: bool) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens}
        if self.mode == "chat":
            body["messages"] = [{"role": m["role"], "content": wire_content(m["content"])} for m in check.messages]
            if self.logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = 5
            return "/chat/completions", body
        body["prompt"] = (
            list(check.ids) if as_ids and check.ids is not None else wire_text(render_prompt(list(check.messages)))
        )
        if self.logprobs:
            body["logprobs"] = 5
        return "/completions", body

    def _read(self, mode: str, payload: Any, elapsed_ms: float) -> Outcome:
        """The verdict of a 200 reply. Every choice must be a whole verdict: one that did not end normally
        (`_cut_short`: cut at ``max_tokens``, ``finish_reason: "length"``, or aborted) may have lost its categories
        or its label; several choices (an engine that ignores ``n=1``) are judged by the worst of them, as windows
        are. A reply with a choice that is no verdict is a `VerdictParseError`, which carries as ``readable`` the
        Unsafe another choice said whole: as a missing window, a missing choice can only add risk (rt63b F3)."""
        replied = payload.get("model") if isinstance(payload, Mapping) else None
        if (
            isinstance(replied, str)
            and replied
            and replied not in self._replied_ok
            and not self._replied_as_guard(replied)
        ):
            # A gateway's fallback to a general chat model, which shown the guard's prompt can imitate "Safety: Safe":
            # its answer is no verdict (rt61c F1).
            return VerdictParseError(
                f"the engine replied as model {replied[:100]!r}, not the guard model {self.model!r}: a gateway "
                f"routing to another model? (if that model is the guard, pass reply_models=[{replied[:100]!r}])"
            )
        choices = payload.get("choices") if isinstance(payload, Mapping) else None
        if not isinstance(choices, list) or not choices:
            return VerdictParseError("the server's reply has no choices", raw=self._shown(payload))
        verdicts: list[Verdict] = []
        errors: list[VerdictParseError] = []
        if len(choices) > _MAX_CHOICES:
            errors.append(
                VerdictParseError(
                    f"the server's reply has {len(choices):,} choices (a guard answers one; more than {_MAX_CHOICES} "
                    f"is no verdict)"
                )
            )
        # Every choice is read before any is given up on: a choice cut, garbled or empty beside a whole "Unsafe"
        # dropped that Unsafe, and on_error="allow" let the content through (rt63b F3). Of a reply with too many,
        # the first `_MAX_CHOICES`: what they say whole stands as readable, as of any reply that is no verdict.
        for i, choice in enumerate(choices[:_MAX_CHOICES]):
            try:
                verdict, error = self._read_choice(i, choice, mode, elapsed_ms)
            except (ValueError, TypeError, OverflowError, AttributeError, RecursionError) as exc:
                # One malformed choice is that choice's error, never the reply's: caught by `_answer`, it dropped
                # what the other choices said whole (rt68j F3).
                why = f"the server's reply choices[{i}] is not a verdict: {type(exc).__name__}: {exc}"
                verdict, error = None, VerdictParseError(why[:300])
            if verdict is not None:
                verdicts.append(verdict)
            if error is not None:
                errors.append(error)
        if errors:
            if verdicts:  # what the policy decides on before on_error (`Policy.decide_error`): an Unsafe blocks
                # whatever on_error says, a Controversial under a strict policy (rt63g F3: only an Unsafe rode it).
                errors[0].readable = worst(verdicts)
            return errors[0]
        return verdicts[0] if len(verdicts) == 1 else worst(verdicts)

    def _read_choice(
        self, i: int, choice: Any, mode: str, elapsed_ms: float
    ) -> tuple[Verdict | None, VerdictParseError | None]:
        """One choice of a reply: the verdict it says, and the error that makes the reply no verdict (either, or
        both: a whole verdict whose logprobs are not in the API's shape)."""
        try:
            text = choice["message"]["content"] if self.mode == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            # The choice shown, not the whole reply: rendered for each choice, a reply of many was quadratic (rt68a F1).
            return None, VerdictParseError(f"the server's reply has no choices[{i}] text", raw=self._shown(choice))
        parts_cut: str | None = None
        if isinstance(text, list) and self.mode == "chat":
            # Content as a list of text parts (some gateways send it so) is the answer they hold: refused as no text,
            # it was a guard error, and on_error="allow" let through what the engine called Unsafe (rt69b F3).
            text, parts_cut = _content_text(text, self.max_reply_bytes)
        parsed: Verdict | VerdictParseError
        try:
            parsed = parse_verdict(text, mode=mode, model=self.name)
        except VerdictParseError as exc:
            parsed = exc
        # A choice cut short (at max_tokens, or aborted: `_cut_short`) may have lost its categories or its label,
        # and one no guard would write (`_not_a_guards_answer`) is no verdict: neither is read, unless its first
        # line says Unsafe, which stands as the local guard reads it (the rest garbled: rt49d R2), with no
        # category, since the ones it names may be cut ("PII, Violent" to "PII") and no policy's ignored category
        # may excuse it (rt49e F1). A model that kept writing after "Safety: Unsafe" was a guard error here and
        # blocked locally; allowed under on_error="allow" (rt53c F1; rt53e F6 for the other endings). An aborted
        # "Unsafe\nCategories: Violent" was read whole, and an ignored Violent allowed it (rt57d F1).
        odd = _not_a_guards_answer(choice) or _cut_short(choice.get("finish_reason"), self.max_tokens) or parts_cut
        if odd is not None:
            if not (isinstance(parsed, Verdict) and parsed.risk is Risk.UNSAFE):
                return None, VerdictParseError(f"the server's reply choices[{i}] {odd}", raw=str(text)[:300])
            parsed = Verdict(Risk.UNSAFE, (), None, parsed.raw, model=self.name)
        if isinstance(parsed, VerdictParseError):
            return None, parsed
        # An honest answer has at most max_tokens steps: a reply with millions is not read past them.
        try:
            probs = read_logprobs(choice, max_steps=self.max_tokens) if self.logprobs else None
        except MALFORMED_LOGPROBS as exc:
            # A malformed reply, as one whose text does not parse; its text was read whole all the same: the verdict
            # goes with the error, without probabilities (they decide nothing), and an Unsafe blocks (rt63b F3).
            verdict = Verdict(parsed.risk, parsed.categories, parsed.refusal, parsed.raw, elapsed_ms, self.name)
            return verdict, VerdictParseError(
                f"the server's reply choices[{i}] has logprobs not in the API's shape ({type(exc).__name__}: "
                f"{str(exc)[:120]})"
            )
        if self.logprobs and choice.get("logprobs") is None and not self._warned_no_logprobs:
            # Ollama's /v1/completions sends none when not streamed: the verdict stands, without scores.
            self._warned_no_logprobs = True
            logger.warning(
                "qwenguard: logprobs=True, but the guard server's %s answers carry no logprobs: verdicts come "
                "without probabilities%s",
                self.mode,
                " (Ollama sends them only in chat mode: mode='chat')" if self.mode == "completion" else "",
            )
        return Verdict(parsed.risk, parsed.categories, parsed.refusal, parsed.raw, elapsed_ms, self.name, probs), None

    def _replied_as_guard(self, replied: str) -> bool:
        """Whether a reply's ``model`` names the guard model: the name asked or one given in ``reply_models``, or
        what ``/models`` said serves it, compared by `model_key` (vLLM and SGLang echo the name asked, TGI reports
        its model id, gateways an alias's full name, llama.cpp the GGUF file); or any Qwen3Guard's name."""
        key = model_key(replied)
        ok = (
            self._any_reply_model
            or _names_a_qwen3guard(replied)
            or (self.model is not None and key == model_key(self.model))
            or key in self._reply_keys
            or key in self._listed_keys
        )
        if ok and len(self._replied_ok) < 64:  # names once accepted: no work per reply (a few, bounded)
            self._replied_ok.add(replied)
        return ok

    def _note_listed(self, entries: list[Any] | None) -> None:
        """What a ``/models`` list says may answer for the model asked: the one model a server serving one lists
        (TGI, llama.cpp, under whatever name), and the asked entry's ``root`` (vLLM: the checkpoint behind an
        alias). A gateway's list of many models adds only the asked entry's: its other models are no guard."""
        if not entries:
            return
        for entry in entries:
            if not isinstance(entry, Mapping):
                continue
            if len(entries) == 1 or entry.get("id") == self.model:
                for field in ("id", "root"):
                    if isinstance(entry.get(field), str) and entry[field]:
                        self._listed_keys.add(model_key(entry[field]))

    def _status_error(
        self, response: Any, body: bytes, url: str, unread: str = ""
    ) -> RemoteHTTPError | VerdictParseError:
        """The error of a reply other than 200. qwenguard serve's 502 ``guard_error`` is its answer "no verdict
        for this conversation": a `VerdictParseError`, as a 200 that does not parse (tried on replicas not
        yet tried, never again on this one), so that the client's policy applies, and its `Guard` judges the
        turn again without its context; a Controversial it says it read all the same (`READABLE_HEADER`) goes
        with it as ``readable``. A 502 of any other kind (a proxy's) stays a retryable error."""
        status = response.status_code
        # A gateway may echo the key it was sent (rt61c F3): masked before the message is cut (rt61e F3).
        why = self._scrub(unread) if unread else error_text(body, self._scrub)
        if status == 502 and error_type(body) == NO_VERDICT_ERROR:
            error = VerdictParseError(f"guard server at {self._show(url)} answered HTTP 502 {NO_VERDICT_ERROR}: {why}")
            error.readable = self._readable_of(response.headers.get(READABLE_HEADER))
            return error
        if status == 400 and not unread and (context := context_named(body)) is not None:
            return ContextRefused(self._show(url), context, why)
        if status < 400:
            note = "only HTTP 200 carries a verdict"
            if 300 <= status < 400:
                note += f"; redirects are not followed (Location {response.headers.get('location')!r})"
            why = f"{note}: {why}" if why else note
        if server_timed_out(status, body):
            # The server ran out of time (a gateway's 504, qwenguard serve's --timeout): a slow server, as a read
            # timeout shows one; never asked again on this URL (rt61c F2).
            return RemoteTimeout(
                f"guard server at {self._show(url)} answered HTTP {status} (out of time): {why}", status
            )
        if status == 404 and not _model_not_found(status, body):  # no such route, not a model refused
            why = f"{why}; {NO_OPENAI_API}" if why else NO_OPENAI_API
        return RemoteHTTPError(
            f"guard server at {self._show(url)} answered HTTP {status}: {why}",
            status,
            retry_after(response.headers.get("retry-after")),
        )

    def _readable_of(self, header: str | None) -> Verdict | None:
        """The Controversial a qwenguard serve's 502 ``guard_error`` says it read (`READABLE_HEADER`), or None. Taken
        from any server: a readable can only add risk (`Policy.decide_error`), and a hostile one can answer
        "Unsafe" anyway. Its categories only as the guard's labels name them (short, at most a few)."""
        if not header or len(header) > 4096:
            return None
        try:
            said = json.loads(header)
        except (ValueError, RecursionError):
            return None
        if not isinstance(said, Mapping) or said.get("risk") != "controversial":
            return None
        categories = said.get("categories")
        if not isinstance(categories, list) or not all(isinstance(c, str) and len(c) <= 100 for c in categories):
            categories = []
        return Verdict(Risk.CONTROVERSIAL, tuple(dict.fromkeys(categories[:16])), None, header, model=self.name)

    async def _body_of(
        self, response: Any, url: str, limit: int, *, strict: bool, into: list[bytes] | None = None
    ) -> bytes:
        """Read ``response``'s body, at most ``limit`` bytes, chunk by chunk, as sent (``aiter_raw``: httpx
        inflates nothing). Past it: ``strict`` raises `VerdictParseError` without reading further (the
        connection is closed); otherwise the body is cut there (an error reply, read only for its message).
        A compressed body is refused before a byte of it is read (`_compressed`). ``into``: the list the chunks
        are read into (`LeftoverCheck.chunks`)."""
        encoding = _content_encoding(response)
        if encoding:
            raise self._compressed(self._show(url), encoding)
        declared = response.headers.get("content-length")
        if strict and declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large(url, f"declares {int(declared):,} bytes")
        chunks: list[bytes] = [] if into is None else into
        size = 0
        # A body a transport handed over whole (``httpx.Response(json=...)``) is in memory already, read once.
        raw = _whole(response.content) if response.is_stream_consumed else response.aiter_raw()
        async for chunk in raw:
            size += len(chunk)
            if size > limit:
                if strict:
                    raise self._too_large(url, f"exceeds {limit:,} bytes")
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _leftover(self, check: LeftoverCheck, url: str) -> None:
        """Says that a reply came with bytes past it, whose connection `LeftoverCheck` closed: kept alive, they were
        the next request's reply, a stale "Safe" for another text (rt57d F3)."""
        leftover = check.leftover
        if leftover:
            (logger.debug if self._said_leftover else logger.warning)(
                "qwenguard: guard server at %s sent %d bytes past its reply (a second reply to one request?); the "
                "connection is closed, not reused: those bytes are no other request's answer",
                self._show(url),
                leftover,
            )
            self._said_leftover = True

    @staticmethod
    def _compressed(url: str, encoding: str) -> VerdictParseError:
        return VerdictParseError(
            f"guard server at {url} sent a reply with Content-Encoding {encoding!r} although the client asks for "
            f"'Accept-Encoding: identity'; a compressed reply is not read (it can inflate ~1000x before "
            f"max_reply_bytes counts it): turn compression off for the guard's route (a proxy's gzip?)"
        )

    def _too_large(self, url: str, what: str) -> VerdictParseError:
        return VerdictParseError(
            f"guard server at {self._show(url)} sent a reply that {what}, more than max_reply_bytes={self.max_reply_bytes:,} "
            f"(a verdict is a few hundred bytes); not read further"
        )

    # -- retry policy (tenacity) --------------------------------------------------------------
    @property
    def _max_attempts(self) -> int:
        return max(self.max_retries, len(self.base_urls) - 1) + 1  # every replica gets its try

    def _retry_kwargs(self, deadline: _Deadline, tried: list[str]) -> dict[str, Any]:
        tenacity = _tenacity()
        httpx = _httpx()
        replicas = self.replicas

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, RemoteHTTPError):
                # 429/5xx: retried. Any other status (404 from a replica mid-upgrade, 401 from one with another
                # key, a 3xx): once on each replica this request has not tried, never twice on one.
                return exc.retryable or replicas.untried(tried)
            if isinstance(exc, VerdictParseError):
                # A 200 that is not a verdict: that replica's answer; another replica may give one.
                return replicas.untried(tried)
            if isinstance(exc, (httpx.ReadTimeout, _AttemptTimeout)):
                # A slow server is not a gone one: retrying it would double its load. Another replica may answer.
                return replicas.untried(tried)
            return isinstance(exc, httpx.TransportError)

        def wait(state: Any) -> float:
            if replicas.untried(tried):
                return 0.0  # a replica this request has not tried: at once
            exc = state.outcome.exception() if state.outcome is not None else None
            hint = getattr(exc, "retry_after", None)
            delay: float = (
                hint if hint is not None else min(self.max_backoff_s, self.backoff_s * 2 ** (state.attempt_number - 1))
            )
            left = deadline.left()
            return delay if left is None else max(0.0, min(delay, left))

        def stop(state: Any) -> bool:
            if state.attempt_number >= self._max_attempts or deadline.expired():
                return True
            if replicas.untried(tried):
                return False
            # A server asking for a longer wait than the call may still take (no deadline: than max_backoff_s)
            # is answered now: sleeping to the deadline would only turn its answer into a timeout.
            exc = state.outcome.exception() if state.outcome is not None else None
            hint = getattr(exc, "retry_after", None)
            left = deadline.left()
            return hint is not None and hint > (self.max_backoff_s if left is None else left)

        return {"retry": tenacity.retry_if_exception(retryable), "wait": wait, "stop": stop, "reraise": True}

    def _translate(self, exc: BaseException) -> QwenGuardError:
        httpx = _httpx()
        if isinstance(exc, QwenGuardError):
            return exc
        if isinstance(exc, httpx.TimeoutException):
            err: QwenGuardError = GuardTimeout(f"guard server at {self._where} timed out: {type(exc).__name__}")
        else:
            err = GuardUnavailable(
                f"guard server at {self._where} unreachable: {type(exc).__name__}: {self._scrub(str(exc))}"
            )
        err.__cause__ = exc
        return err

    # -- on the loop --------------------------------------------------------------------------
    async def _post(
        self,
        wire: _Wire,
        check: WireCheck,
        as_ids: bool,
        deadline: _Deadline,
        start: float,
        seen: list[Verdict],
        whole: list[Verdict],
    ) -> Verdict:
        """One logical request, retried (on another replica first, when there is one); its verdict, or raises.
        ``seen`` gathers what answers that are no verdict read (`_read_risk`: the Unsafe of a cut prompt, a choice's
        whole Controversial), whatever the later attempts end in; ``whole``, of those, what was read of the whole
        prompt, which the verdict of a later attempt is merged with (`_send`), as a cut prompt's Unsafe is not.

        Only a verdict counts as a replica's success. A replica that answers without one (a 200 that does
        not parse, a 4xx other than 429) is asked nothing more by this request; when another replica then
        gives the verdict, it is passed over for a while (``Replicas.failed``), as one that failed."""
        path, body = self._body(check, as_ids)
        httpx = _httpx()
        assert wire.in_flight is not None
        named = request_name()  # each attempt's X-Request-Id starts so: an engine echoing it names its answers
        verdict: Verdict | None = None
        tried: list[str] = []
        refused: list[str] = []  # answered, but not with a verdict
        name_refused = False  # a replica said this model is not served there (404 model not found)
        try:
            async for attempt in _tenacity().AsyncRetrying(**self._retry_kwargs(deadline, tried)):
                with attempt:
                    async with self._slot(wire, deadline):
                        url = self.replicas.pick(exclude=tried if self.replicas.untried(tried) else refused)
                        tried.append(url)
                        another = len(tried) < self._max_attempts and self.replicas.untried(tried)
                        limit = attempt_budget(
                            deadline.left(), self.connect_timeout_s + self.read_timeout_s, another_follows=another
                        )
                        self.requests_sent += 1
                        try:
                            with self.replicas.using(url):
                                # The body is read within the same attempt limit, at most max_reply_bytes of it.
                                status, content = await asyncio.wait_for(
                                    self._exchange(wire, self._target[url] + path, body, url, named), limit
                                )
                        except asyncio.TimeoutError:
                            self.replicas.failed(url)
                            raise _AttemptTimeout(
                                f"guard server at {self._show(url)} did not answer within {limit:.3g} s "
                                f"(this attempt's share of the deadline, at most connect_timeout_s "
                                f"+ read_timeout_s)"
                            ) from None
                        except httpx.TransportError:
                            self.replicas.failed(url)
                            raise
                        except VerdictParseError:  # a reply past max_reply_bytes
                            refused.append(url)
                            raise
                    if isinstance(status, RemoteHTTPError):
                        name_refused = name_refused or _model_not_found(status.status, content)
                        if status.retryable or isinstance(status, RemoteTimeout):
                            self.replicas.failed(url)
                        else:
                            refused.append(url)
                        raise status
                    if isinstance(status, VerdictParseError):  # the server's answer: no verdict
                        refused.append(url)
                        if (read := _read_risk(status)) is not None:  # qwenguard serve's 502 read it whole
                            seen.append(read)
                            whole.append(read)
                        if isinstance(status, SmallerContext):
                            self._cut(url, status.context)
                        raise status
                    elapsed = (time.perf_counter() - start) * 1000
                    least = check.least_tokens(as_ids)
                    answered: Outcome | Unsure
                    if len(content) > _PARSE_INLINE_BYTES:
                        answered = await asyncio.to_thread(self._answer, check.mode, content, elapsed, url, least)
                    else:
                        answered = self._answer(check.mode, content, elapsed, url, least)
                    if isinstance(answered, Unsure):
                        # Its Unsafe stands whatever the template question does, the deadline ending this request
                        # while it waits for the question included (rt63b F2).
                        if (unsafe := _uncategorised_unsafe(answered.outcome)) is not None:
                            seen.append(unsafe)
                        outcome = await self._settle(wire, url, answered, deadline)
                    else:
                        outcome = answered
                    if not isinstance(outcome, Verdict):
                        refused.append(url)
                        if (read := _read_risk(outcome)) is not None:  # kept whatever the next replica answers
                            seen.append(read)
                            # Read of the whole prompt: not a cut one's (`PromptCut`), nor one that may be (an
                            # `Unsure` answer `_settle` could not tell), whose Unsafe a whole verdict stands over.
                            if not isinstance(outcome, SmallerContext) and (
                                not isinstance(answered, Unsure) or outcome is answered.outcome
                            ):
                                whole.append(read)
                        if isinstance(outcome, SmallerContext):
                            self._cut(url, outcome.context)
                        raise outcome
                    self.replicas.succeeded(url)
                    self._verdicts_seen = True
                    for other in refused:
                        self.replicas.failed(other)
                    verdict = outcome
        except BaseException:  # the deadline's cancellation included: the name was refused, no verdict came
            if name_refused:
                self._refused(body["model"])
            raise
        assert verdict is not None
        return verdict

    @asynccontextmanager
    async def _slot(self, wire: _Wire, deadline: _Deadline) -> AsyncIterator[None]:
        """Holds one of the ``max_concurrency`` slots for an attempt. A call with a deadline waits within it. One
        without (``timeout=None``) waits while the requests in flight are being answered, however long the queue;
        once none of them was answered for an attempt's bound (``connect_timeout_s + read_timeout_s``), the engine
        takes requests and answers none, and the call is a `GuardTimeout` (before, the n-th check waited n /
        max_concurrency times that bound: 160 checks at once, ~5 min each; rt64e F2). A bound on the wait alone
        timed out checks queued behind a busy, healthy engine, which a fail-open policy then let through
        unjudged (rt64l F2)."""
        assert wire.in_flight is not None
        stall_s = None if deadline.end is not None else self.connect_timeout_s + self.read_timeout_s
        async with AsyncExitStack() as held:
            try:
                await held.enter_async_context(wire.in_flight.slot(stall_s, lambda: wire.answered))
            except TimeoutError:
                raise GuardTimeout(
                    f"no request to the guard server at {self._where} could be sent: none of the "
                    f"max_concurrency={self.max_concurrency} requests in flight was answered in {stall_s:.3g} s "
                    "(connect_timeout_s + read_timeout_s, the bound of an attempt of a call without a deadline)"
                ) from None
            yield

    def _answer(
        self, mode: str, content: bytes, elapsed_ms: float, url: str = "", least: tuple[int, int] = (0, 0)
    ) -> Outcome | Unsure:
        """The verdict of a 200 body, or the `VerdictParseError` saying why it is none: whatever the body
        holds, an answer that is no verdict is that replica's answer (tried on another), never "unreachable".
        ``least``: the prompt tokens the request must have had (`WireCheck.least_tokens`); an answer counting
        fewer is a `PromptCut` (carrying its Unsafe, if it said so: `_unsafe_kept`), or `Unsure` while the engine's
        template is not known."""
        try:
            payload = json.loads(content)
        except ValueError as exc:  # a 200 body that is not JSON (not UTF-8 included)
            return VerdictParseError(f"the server's reply is not JSON ({exc}): {NO_OPENAI_API}")
        except RecursionError:  # nested deeper than the parser's stack
            return VerdictParseError("the server's reply is JSON nested too deeply to be a verdict")
        kept = prompt_tokens(payload)
        floor, full = least
        outcome: Outcome
        try:
            outcome = self._read(mode, payload, elapsed_ms)
        except (ValueError, TypeError, OverflowError, AttributeError, RecursionError) as exc:
            outcome = VerdictParseError(f"the server's reply is not a verdict: {type(exc).__name__}: {exc}"[:300])
        if kept is not None and kept < floor:  # a cut prompt's answer is no verdict; only its Unsafe is kept
            return _unsafe_kept(PromptCut(self._show(url), kept, floor), outcome)
        if kept is None or kept >= full or self._counts_our_template is False:
            return outcome
        if self._counts_our_template:
            return _unsafe_kept(PromptCut(self._show(url), kept, full), outcome)
        return Unsure(outcome, kept, full)

    async def _exchange(
        self, wire: _Wire, target: str, body: dict[str, Any], url: str, named: str
    ) -> tuple[Any, bytes]:
        """One POST (`_post_once`), its ``X-Request-Id`` ``named`` and a suffix of its own. A reply that is no
        answer to it (`ReplyIds`: a late copy, another request's reply) is asked again at once, on another
        connection (its own is closed), until one that is not idle in the pool, whatever retries are left: a new
        connection holds no late copy, and a gateway whose ids repeat is told apart only by such a copy (rt64n F2:
        with ``max_retries=0`` its first repeat was a guard error, let through by a fail-open policy; rt64o F1: four
        idle connections holding copies were too). A reply to an earlier try of ``named`` is its answer too."""
        # Each connection idle in the pool (at most max_concurrency) may hold a copy: once one is seen none is kept
        # alive past a reply (`ReplyIds`), so each is skipped once and the last try goes on a new connection.
        again = 0  # times asked again for a reply whose id was read on another connection (`ReplyIds.read`)
        for _ in range(self.max_concurrency + 1):
            try:
                return await self._post_once(wire, target, body, url, named, again)
            except _LateCopy as copy:
                again += 1 if (again or copy.elsewhere) else 0
                continue
        try:
            return await self._post_once(wire, target, body, url, named, again)
        except _LateCopy as copy:
            raise _httpx().RemoteProtocolError(str(copy)) from None

    async def _post_once(
        self, wire: _Wire, target: str, body: dict[str, Any], url: str, named: str, again: int = 0
    ) -> tuple[Any, bytes]:
        """One POST: ``(200, body)``, or ``(error, what of its body was read)`` for any other status
        (`_status_error`; a 2xx other than 200 or a 3xx is not a verdict either); the body read at most
        ``max_reply_bytes``."""
        # A connection holding bytes past this reply is closed, not reused (`LeftoverCheck`; rt57d F3).
        check = LeftoverCheck(wire.reply_ids, named=named, url=url, again=again)
        check.reuse = self.keep_alive
        headers = {REQUEST_ID_HEADER: f"{named}-{secrets.token_hex(4)}"}
        request = wire.client.build_request("POST", target, json=body, headers=headers, extensions={"trace": check})
        # Noted as it goes out, not as its answer is read: a gateway stores the engine's answer to an ask that times
        # out here, and hands it to the next request of this body, naming this one (`ReplyIds.ask`; rt66m F1).
        check.asked = await request_digest_of(request)
        wire.reply_ids.ask(named, check.asked)
        try:
            async with aclosing(await wire.client.send(request, stream=True, **self._auth_of(url))) as response:
                check.response = response
                if response.status_code != 200:
                    # A compressed error body is not read (`_compressed`): its status still says what happened.
                    encoding = _content_encoding(response)
                    head = (
                        b""
                        if encoding
                        else await self._body_of(
                            response, url, min(_ERROR_BODY_BYTES, self.max_reply_bytes), strict=False
                        )
                    )
                    unread = f"body not read: Content-Encoding {encoding!r}" if encoding else ""
                    wire.answered += 1  # the engine answered: calls queued for a slot wait on (`_slot`)
                    # Its connection is not kept alive (`LeftoverCheck`, as the body's last chunk is read): an error
                    # carries no id, and the late answer it stands for would be the next request's reply (rt66c F1).
                    return self._status_error(response, head, url, unread), head
                # Read into the check's chunks: as the last one is read, the check sees whether the reply's id proves
                # it this request's (`ReplyIds`), and keeps its connection alive only then.
                # Progress for calls queued for a slot (`_slot`) once the engine's answer is in, or refused for its
                # size (rt64q F1), never at its headers alone: headers and a body that never ends held a queue of
                # checks an attempt bound each in turn (rt65c F2).
                try:
                    content = await self._body_of(response, url, self.max_reply_bytes, strict=True, into=check.chunks)
                except VerdictParseError:
                    wire.answered += 1
                    raise
                wire.answered += 1
                if check.fresh is False:
                    raise self._duplicate(url, check.ident, elsewhere=check.elsewhere)
                return 200, content
        finally:
            self._leftover(check, url)

    def _duplicate(self, url: str, ident: str | None, *, elsewhere: bool = False) -> _LateCopy:
        """A reply that is no answer to this request (`ReplyIds`: its id read before, or naming another request),
        which is asked again on another connection (`_exchange`; rt64e F1, rt65c F1)."""
        shown = self._show(url)
        (logger.debug if self._said_duplicate else logger.warning)(
            "qwenguard: guard server at %s sent a reply that answers no request in flight on its connection (id %r: "
            "read before, or naming another request; a late copy: a proxy's retry, an engine's bug, a balancer "
            "handing it on; or ids that repeat); the connection is closed, and the request asked again on another",
            shown,
            self._scrub(str(ident))[:100],
        )
        self._said_duplicate = True
        return _LateCopy(
            f"guard server at {shown} sent a reply that is not this request's answer (id "
            f"{self._scrub(str(ident))[:100]!r}: read before, or naming another request): a late copy",
            elsewhere=elsewhere,
        )

    async def _send(self, wire: _Wire, check: WireCheck, deadline: _Deadline) -> tuple[Outcome, bool]:
        """One request of a check → (outcome, whether it failed on the transport: unreachable or late)."""
        as_ids = (
            check.ids is not None and self._ids_accepted is not False and await self._ids_read_alike(wire, deadline)
        )
        start = time.perf_counter()
        # Read risk of answers that are no verdict (an Unsafe said of a cut prompt: rt57d F2; a Controversial read whole
        # beside a garbled choice: rt68a F3): stands when no attempt gives a verdict.
        seen: list[Verdict] = []
        # Of those, what a replica read of the whole prompt: merged into the verdict a later attempt gives, as windows
        # are; replica B's Safe replaced replica A's Unsafe said beside a garbled choice, allowed (rt72e F1).
        whole: list[Verdict] = []

        async def ask() -> Verdict:
            try:
                verdict = await self._post(wire, check, as_ids, deadline, start, seen, whole)
            except RemoteHTTPError as exc:
                if not (as_ids and exc.status in _IDS_REFUSED):
                    raise
                # The engine may not take token ids (transformers serve: "prompt must be a string"):
                # send the text, and if that is answered, send text from now on.
                verdict = await self._post(wire, check, False, deadline, start, seen, whole)
                if self._ids_accepted is None:
                    self._ids_accepted = False
                    logger.info("qwenguard: %s refuses token ids (%s); sending prompt text", self._where, exc)
            else:
                if as_ids:
                    self._ids_accepted = True
            # `worst` keeps an Unsafe's own categories (none, when read from its first line), the rest beneath it.
            return worst([verdict, *whole]) if whole else verdict

        def failed(error: QwenGuardError, transport: bool) -> tuple[Outcome, bool]:
            if seen:  # what an engine read of this request: merged with the error's own, never replacing it
                error.readable = worst(seen + [r for r in (_read_risk(error),) if r is not None])
            return error, transport and not seen

        try:
            # The deadline is enforced here, on the loop: cancelling the request closes its connection.
            return await asyncio.wait_for(ask(), deadline.left()), False
        except RemoteTimeout as exc:
            return failed(exc, True)  # late, as a read timeout is: the policy's timeout
        except RemoteHTTPError as exc:
            if exc.status == 413:  # too large for the server: the caller's error, as locally, never on_error's
                refused = InputTooLarge(f"{exc} (the server's size limits: split the text or raise them)")
                refused.upstream = True
                return refused, False
            return failed(exc, False)  # the server refused this request: its own outcome
        except VerdictParseError as exc:
            return failed(exc, False)  # a reply that is no verdict: its own outcome
        except asyncio.TimeoutError:
            return failed(GuardTimeout(f"guard server at {self._where} did not answer within the deadline"), True)
        except Exception as exc:  # noqa: BLE001 - translated at the boundary
            return failed(self._translate(exc), True)

    async def _judge(self, wire: _Wire, plan: CheckPlan, deadline: _Deadline) -> tuple[Outcome, bool]:
        """All requests of one check, combined as the local guard combines windows."""
        if plan.error is not None:
            return plan.error, False
        start = time.perf_counter()
        answers = await asyncio.gather(*(self._send(wire, c, deadline) for c in plan.checks))
        verdicts = [o for o, _ in answers if isinstance(o, Verdict)]
        errors = [(o, transport) for o, transport in answers if not isinstance(o, Verdict)]
        elapsed = (time.perf_counter() - start) * 1000
        # A missing window makes the check a guard error carrying what was read (below), even beside an Unsafe
        # window: an ignore list excusing that Unsafe's categories let the unread window through as read (rt68i F1).
        # What a window that is no verdict read (`_read_risk`) counts with the others: an Unsafe's categories (none,
        # when cut) are merged, so that no ignored category of another window may excuse it; the windows below the
        # top are kept beneath it (`worst`).
        read = [r for o, _ in errors if (r := _read_risk(o)) is not None]
        if verdicts and not errors:
            top = worst(verdicts + read)
            return replace(top, latency_ms=elapsed, model=self.name), False
        # A cut prompt first: the check is planned again for the context the engine showed (`_run`).
        error, transport = next(((o, t) for o, t in errors if isinstance(o, SmallerContext)), errors[0])
        if isinstance(error, QwenGuardError):
            # What the policy may block on (rt53f F2): what the windows that are no verdict read (an Unsafe of a cut
            # prompt, with no category; a choice's whole Unsafe or Controversial beside one that is none: rt63b F3),
            # merged with the windows read: never replaced by them (another window's Safe overwrote a Controversial
            # read whole, and on_error="allow" let it through under a strict policy: rt68a F3). `worst` keeps an
            # Unsafe's own categories, the rest beneath it.
            if verdicts or read:
                error.readable = worst(verdicts + read)
        return error, transport and not verdicts

    def _naming(self) -> bool:
        """Whether the model's name must be read from ``/models``: not given, and not learned or refused."""
        return not self._model_given and (self.model is None or self._stale)

    def _unlearned(self) -> bool:
        """Whether ``/models`` must be read: for the model's name, or for the context when neither is known."""
        return self._naming() or (
            self.max_context is None and self._served_context is None and time.monotonic() >= self._models_reread_at
        )

    def _refused(self, name: str) -> None:
        """A request got no verdict and a replica answered 404 "model not found" for ``name``: when it was
        learned, the next check learns it again (the replicas now serve another: a rolling upgrade). Not twice
        in a row for one name: a server that lists a name and refuses it would cost a ``/models`` read per check."""
        if self._model_given or name != self.model or name == self._refused_name:
            return
        self._refused_name = name
        self._stale = True
        logger.warning(
            "qwenguard: the learned model name %r is refused (404 model not found); reading /models again", name
        )

    async def _context(self, wire: _Wire, deadline: _Deadline) -> int:
        """The engine's context: given, or learned once from ``/models``, or the fallback. The model's name,
        when not given, is learned from the same reply first (raises when it cannot be).

        One read at a time: the checks that come while it runs take its outcome (its error included) instead
        of each reading ``/models`` again in turn; a check after a failed read reads it again (for the context
        alone: once `_MODELS_REREAD_S` passed, `_served_max_model_len`). With the name
        known, a check waits for the read only a while (a quarter of its deadline, at most the connect timeout),
        then plans for the fallback context while the read goes on."""
        pending = False
        if self._unlearned():
            lookup = wire.lookup
            if lookup is None or lookup.done():
                lookup = wire.lookup = asyncio.ensure_future(self._learn(wire, self._shared_deadline()))
                lookup.add_done_callback(_retrieved)
                wire.lookup_slow = False
            naming, wait = self._naming(), deadline.left()
            if not naming:
                # The read only sizes windows, and the fallback context is safe (a smaller context shows in the
                # engine's answers): a /models that hung failed every check though the engine answered them
                # (rt49c M4).
                # Once a check has waited so in vain, the others of this read do not wait at all.
                wait = (
                    0
                    if wire.lookup_slow
                    else min(self.connect_timeout_s, (self.connect_timeout_s * 4 if wait is None else wait) / 4)
                )
            try:
                # Shielded: a check cancelled or past its own deadline does not end the others' read.
                await asyncio.wait_for(asyncio.shield(lookup), wait)
            except asyncio.TimeoutError:
                if lookup.done():
                    lookup.result()  # it ended as this check's wait did: its outcome
                elif naming:
                    raise GuardTimeout(
                        f"guard server at {self._where} did not list its models within the deadline"
                    ) from None
                else:
                    pending = wire.lookup_slow = True
                if pending and not self._said_unlisted:
                    self._said_unlisted = True
                    logger.warning(
                        "qwenguard: guard server at %s has not listed its models (for its context) within %.3g s: "
                        "planning for %d tokens meanwhile; pass max_context= the engine's context",
                        self._where,
                        wait,
                        self._fallback_context,
                    )
        context = self.max_context if self.max_context is not None else self._served_context
        if not context:
            context = self._fallback_context
            if not pending and not self._said_fallback and not self._windowing_server:
                self._say_fallback(context)
        return context if self._cut_context is None else min(context, self._cut_context)

    def _say_fallback(self, context: int) -> None:
        """Once: the fallback context is planned for because the server does not say its own, and where the figure
        comes from. Only once ``/models`` answered with a model list and no context, or refused while the server
        answers checks: a server not reached, or refusing everything (no API key, a wrong path), has its own error
        to show, and advice about the context there sent a newcomer after the wrong fix (rt61a F1)."""
        if self._served_context == 0:
            why = "publishes no context (max_model_len)"
        elif self._models_refusal is not None and self._verdicts_seen:
            why = f"does not list its models ({self._models_refusal}) but answers checks"
        else:
            return
        self._said_fallback = True
        if context == self._tokenizer_context():  # the caller's tokenizer gave it (docs/remote.md): not a mistake
            logger.info(
                "qwenguard: guard server at %s %s: planning for %d tokens, the tokenizer's model_max_length; pass "
                "max_context= if the engine's context is smaller",
                self._where,
                why,
                context,
            )
            return
        logger.warning(
            "qwenguard: guard server at %s %s and none was given: planning for %d tokens (the default for an engine "
            "that does not say); pass max_context= the engine's context (Ollama: num_ctx; llama.cpp: -c per slot)",
            self._where,
            why,
            context,
        )

    def _shared_deadline(self) -> _Deadline:
        """The bound of a read the checks that come meanwhile share (``/models``, the template question): an
        attempt's bound per replica, its own. The deadline of the check that happened to start it ended it for all
        of them: a stage with a short timeout failed every other check waiting (rt49c H1)."""
        return _Deadline((self.connect_timeout_s + self.read_timeout_s) * len(self.base_urls))

    async def _settle(self, wire: _Wire, url: str, unsure: Unsure, deadline: _Deadline) -> Outcome:
        """The outcome of an answer that counted fewer tokens than the official prompt has: a `PromptCut` when the
        engine counts the official prompt (so it cut this one), else the answer. Which, is asked once per client
        with the shortest check, whose count is nearly all template; checks that come meanwhile wait for it. When the
        question fails or misses the deadline, an Unsafe the answer said stands as ``readable`` (`_unsafe_kept`: cut
        or not, its text was judged Unsafe): a 503 to the question dropped it, and on_error="allow" let the text
        through (rt63b F2; `_post` keeps it in ``seen`` too, for a deadline that ends the request first)."""
        if self._counts_our_template is None:
            probe = wire.probe
            if probe is None or probe.done():
                probe = wire.probe = asyncio.ensure_future(self._ask_template(wire, url, self._shared_deadline()))
                probe.add_done_callback(_retrieved)
            try:
                await asyncio.wait_for(asyncio.shield(probe), deadline.left())
            except asyncio.TimeoutError:
                late = GuardTimeout(f"guard server at {self._show(url)} did not answer within the deadline")
                return _unsafe_kept(late, unsure.outcome)
            except Exception as exc:  # noqa: BLE001 - this answer's outcome: unknown whether it was cut
                why = (
                    f"guard server at {self._show(url)} read {unsure.kept} tokens of a prompt of {unsure.full} or more "
                    f"as the official template counts; asking whether it cut the prompt failed: {self._scrub(str(exc))}"
                )
                return _unsafe_kept(VerdictParseError(why[:400]), unsure.outcome)
        if self._counts_our_template:
            return _unsafe_kept(PromptCut(self._show(url), unsure.kept, unsure.full), unsure.outcome)
        return unsure.outcome

    async def _ask_hi(
        self, wire: _Wire, url: str, deadline: _Deadline, *, ids: bool = False
    ) -> tuple[WireCheck, int | None]:
        """The shortest check (a prompt "Hi", planned with ids when ``ids``), sent to ``url`` as text once, bounded as
        an attempt is (an engine that drips its answer keeps no check waiting), and the engine's count of it."""
        context = await self._context(wire, deadline)
        plan = await asyncio.to_thread(self.planner.plan, [{"role": "user", "content": "Hi"}], context, ids=ids)
        if plan.error is not None or not plan.checks or (ids and plan.checks[0].ids is None):
            raise plan.error or GuardUnavailable("no request to ask with")
        check = plan.checks[0]
        path, body = self._body(check, False)
        self.requests_sent += 1
        assert wire.in_flight is not None
        try:
            async with wire.in_flight.slot():
                status, content = await asyncio.wait_for(
                    self._exchange(wire, self._target[url] + path, body, url, request_name()),
                    self.connect_timeout_s + self.read_timeout_s,
                )
        except (asyncio.TimeoutError, _httpx().TransportError):
            self.replicas.failed(url)  # the next question (and check) goes elsewhere first
            raise
        if not isinstance(status, int):
            raise status
        return check, prompt_tokens(json.loads(content))

    async def _ids_read_alike(self, wire: _Wire, deadline: _Deadline) -> bool:
        """Whether token ids may go on the wire: the engine counts a prompt's text as the client's tokenizer does.
        Asked once per client (`_ask_ids`); a check waits for the answer at most `_IDS_QUESTION_WAIT_S`, and once one
        waited in vain, none waits again: until the answer is in, checks go as text, which any engine reads with its
        own tokenizer (a replica that never answered held every check to its deadline: rt53e F7). A question that
        failed is asked again by a later check."""
        if self._ids_agree is None:
            probe = wire.ids_probe
            if probe is None or probe.done():
                probe = wire.ids_probe = asyncio.ensure_future(self._ask_ids(wire, self._shared_deadline()))
                probe.add_done_callback(_retrieved)
            if not wire.ids_question_slow:
                left = deadline.left()
                wait = _IDS_QUESTION_WAIT_S if left is None else min(_IDS_QUESTION_WAIT_S, left / 2)
                try:
                    await asyncio.wait_for(asyncio.shield(probe), wait)
                except asyncio.TimeoutError:
                    wire.ids_question_slow = True
                except Exception:  # noqa: BLE001 - unknown yet: this check goes as text
                    pass
        return bool(self._ids_agree)

    async def _ask_ids(self, wire: _Wire, deadline: _Deadline) -> None:
        """Sends the shortest check (a prompt "Hi") as text and sets `_ids_agree` from the engine's count of it: the
        number of ids the client's tokenizer makes of it, or the tokenizer is not the served model's (rt53d F2)."""
        check, counted = await self._ask_hi(wire, url := self.replicas.pick(exclude=[]), deadline, ids=True)
        assert check.ids is not None
        ids = check.ids
        if counted is None:  # an engine that counts nothing cannot tell: the ids stand, as before
            self._ids_agree = True
            return
        self._ids_agree = counted == len(ids)
        if not self._ids_agree:
            logger.warning(
                "qwenguard: guard server at %s counts %d tokens for a prompt that the tokenizer given to the client "
                "makes %d: it is not the served model's tokenizer, and token ids of it would read as other words "
                "there. Sending prompt text instead (the engine tokenizes it); pass the served checkpoint's "
                "tokenizer (tokenizer=) for exact windows",
                self._show(url),
                counted,
                len(ids),
            )

    async def _ask_template(self, wire: _Wire, url: str, deadline: _Deadline) -> None:
        """Sends the shortest check (a prompt "Hi") as text and sets `_counts_our_template` from its count."""
        check, kept = await self._ask_hi(wire, url, deadline)
        if kept is None:
            raise VerdictParseError("its answer counted no prompt tokens")
        full = check.least_tokens(False)[1]
        self._counts_our_template = kept >= full
        if kept * 2 < full:  # not a few tokens of template drift: the guard's task and categories are not there
            logger.warning(
                "qwenguard: guard server at %s counts %d prompt tokens for the shortest check, whose official prompt "
                "has at least %d: its chat template is not Qwen3Guard's, and the model may never see the guard's "
                "task (an Ollama Modelfile or GGUF without the official template). Serve the official template, or "
                "use mode='completion' with the checkpoint's tokenizer",
                self._show(url),
                kept,
                full,
            )
        logger.info(
            "qwenguard: guard server at %s counts %d prompt tokens for the shortest check (the official prompt has "
            "at least %d): %s",
            self._show(url),
            kept,
            full,
            "its prompts are checked against the official prompt's length"
            if self._counts_our_template
            else "its template or tokenizer is not the official one; prompts are checked against their text",
        )

    def _cut(self, url: str, kept: int) -> None:
        """A replica cut a prompt to ``kept`` tokens: its context is smaller than the one planned for, whatever
        was given or published. Checks are planned for ``kept`` from now on (the engine read that many and
        answered, so a prompt of ``kept - max_tokens`` fits), unless that cannot hold the guard prompt."""
        if kept < self._context_floor:
            if kept not in self._too_small:
                self._too_small.add(kept)
                logger.warning(
                    "qwenguard: guard server at %s holds %d tokens of prompt, fewer than the guard prompt needs "
                    "(at least %d, counted %s): every long check is a guard error until its context is raised%s",
                    self._show(url),
                    kept,
                    self._context_floor,
                    "by its tokenizer" if self.planner.encoder is not None else "as UTF-8 bytes",
                    "" if self.planner.encoder is not None else " or the tokenizer is given (tokenizer=: exact counts)",
                )
            return
        if self._cut_context is not None and kept >= self._cut_context:
            return
        self._cut_context = kept
        logger.warning(
            "qwenguard: guard server at %s cut a prompt to %d tokens (it judged only part of the text): planning "
            "for a context of %d tokens from now on; pass max_context=%d, or raise the engine's context "
            "(Ollama: num_ctx or OLLAMA_CONTEXT_LENGTH; llama.cpp: -c)",
            self._show(url),
            kept,
            kept,
            kept,
        )

    async def _learn(self, wire: _Wire, deadline: _Deadline) -> None:
        self._served_context = await self._served_max_model_len(wire, deadline)

    async def _served_max_model_len(self, wire: _Wire, deadline: _Deadline) -> int | None:
        """``max_model_len`` from ``/models`` of the first replica that answers (replicas serve one model): ``0``
        when it lists none, ``None`` when no replica answered with a model list (asked again once
        `_MODELS_REREAD_S` passed, whether it was refused, a 401 or a 404, or not answered at all).

        A published context below ``_context_floor`` (too small for the guard prompt of a reply and
        `_MIN_SERVED_ROOM` tokens of text, as this client counts them) cannot be the served context of a
        guard model: it would make every check a guard error. It is ignored (logged once per replica) and
        the next replica is asked; when none publishes a usable one, the fallback context is used.

        Without a model name, the first replica that names exactly one model names it (`_served_model`). A
        replica whose reply names none (a 404 or 401, a 200 that is no model list, an empty list) is passed
        over for the next: a proxy that does not route ``/models`` must not hide the replicas that do. One
        that lists several is `ServedModelUnknown` at once (the caller must pick). Replicas that would name
        different models are not compared: the first name wins, and a replica that refuses it fails over
        like any 404. When no replica names one: `ServedModelUnknown` with the first reason when one answered
        (`GuardTimeout` when another was still unanswered at the deadline), else unreachable
        (`GuardUnavailable`, `GuardTimeout` at the deadline); the next check asks again."""
        httpx = _httpx()
        tried: list[str] = []
        answered = False  # a replica answered with a model list
        refusal: str | None = None  # the first answer that held none (a 401, a 404, a page that is no list)
        naming = self._naming()
        unnamed: ServedModelUnknown | None = None  # the first reply that named no model
        unreachable = False
        failure: BaseException | str = "no replica was asked"
        while self.replicas.untried(tried) and not deadline.expired():
            url = self.replicas.pick(exclude=tried)
            tried.append(url)
            limit = attempt_budget(
                deadline.left(),
                self.connect_timeout_s + self.read_timeout_s,
                another_follows=self.replicas.untried(tried),
            )
            try:
                status, content = await asyncio.wait_for(self._get_models(wire, url), limit)
            except (asyncio.TimeoutError, httpx.HTTPError) as exc:
                self.replicas.failed(url)
                failure, unreachable = exc, True
                continue
            if status in RETRY_STATUS:
                failure, unreachable = f"{self._show(url)}/models answered HTTP {status}", True
                continue
            listed = _model_list(status, content)
            answered = answered or listed is not None
            if listed is None and refusal is None:
                refusal = f"/models answered HTTP {status}" if status != 200 else "/models answered no model list"
            self._note_listed(listed)
            if naming:
                try:
                    name = _served_model(self._show(url), status, content, listed, self._scrub)
                except ServedModelUnknown as exc:
                    if exc.models is not None and len(exc.models) > 1:
                        raise  # several models: which one is the guard is the caller's to say
                    unnamed = unnamed or exc
                    continue
                self.model = self.name = name
                self._stale = naming = False
                if self.max_context is not None:
                    self._published_context(listed)  # the context is given: the name was wanted, and a cap on turns
                    return 0
            if listed is None:
                continue  # no model list: the next replica's may hold the context
            value = self._published_context(listed)
            if value == 0 or value >= self._context_floor:
                return value
            if self._windowing_server:
                return 0  # its own windows fit its model: the fallback plans the requests, quietly
            if url not in self._ignored_contexts:
                self._ignored_contexts.add(url)
                logger.warning(
                    "qwenguard: %s publishes max_model_len=%d, too small for the guard prompt and %d tokens of "
                    "text (at least %d); ignored (pass max_context= to use it)",
                    self._show(url),
                    value,
                    _MIN_SERVED_ROOM,
                    self._context_floor,
                )
        if naming:
            if unnamed is not None and not (unreachable and deadline.expired()):
                raise unnamed  # a replica answered: its reason says what to pass
            if deadline.expired():
                raise GuardTimeout(f"guard server at {self._where} did not list its models within the deadline")
            why = failure if isinstance(failure, str) else f"{type(failure).__name__}: {self._scrub(str(failure))}"
            cause = None if isinstance(failure, str) else failure
            raise GuardUnavailable(f"cannot list the models of the guard server at {self._where} ({why})") from cause
        if answered:
            self._models_refusal = None
            return 0
        # Read again after the back-off, not on every check: a proxy may never route it, refusing it or dropping
        # the connection (a check then waited for the failing read, twice, before each verdict: rt61f F5). Only
        # a refusal is named in the fallback's advice: a server not reached has its own error (`_say_fallback`).
        if refusal is not None:
            self._models_refusal = refusal
        self._models_reread_at = time.monotonic() + _MODELS_REREAD_S
        return None

    def _published_context(self, entries: list[Any] | None) -> int:
        """The ``max_model_len`` of this client's model in a ``/models`` list; ``0`` when there is none. What its entry
        says of the server is learned meanwhile: `qwenguard serve` or not, and its cap on turns (`_message_cap_of`)."""
        try:
            entries = entries or []
            entry = next((e for e in entries if e.get("id") == self.model), entries[0] if len(entries) == 1 else {})
            value = entry.get("max_model_len")
            self._windowing_server = entry.get("owned_by") == "qwenguard"
            self._message_cap = _message_cap_of(entry)
        except (TypeError, AttributeError):
            return 0
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    async def _get_models(self, wire: _Wire, url: str) -> tuple[int, bytes | None]:
        """``GET /models``: its status and body (``None``: larger than ``max_reply_bytes``, not read further)."""
        check = LeftoverCheck()  # a connection holding bytes past this reply is closed, not reused (rt57d F3)
        # Nor one after it at all: a list carries no reply id (`ReplyIds`), and its late copy (a proxy writing every
        # reply twice) was the first check's "answer", which put the connection one reply behind: the next check, a
        # bomb prompt, read the first check's "Safe" (rt64p F1). A list is read once a client, or on a re-learn.
        check.reuse = False
        try:
            async with wire.client.stream(
                "GET", self._target[url] + "/models", extensions={"trace": check}, **self._auth_of(url)
            ) as response:
                check.response = response
                try:
                    return response.status_code, await self._body_of(response, url, self.max_reply_bytes, strict=True)
                except VerdictParseError:
                    return response.status_code, None
        finally:
            self._leftover(check, url)

    async def _plan(
        self,
        conversations: list[Conversation],
        context: int,
        deadline: _Deadline,
        budget: int | None = None,
        account: WindowAccount | None = None,
    ) -> list[CheckPlan]:
        """Each conversation's requests; `InputTooLarge` for the whole call past ``budget`` windows in all, or past
        what is left of the caller's ``account`` (`window_budget`: over several calls)."""
        want_ids = (
            self.mode == "completion"
            and self.planner.encoder is not None
            and self._ids_accepted is not False
            and self._ids_agree is not False
        )

        abandoned = threading.Event()  # the caller left: planning stops at its next window

        def work() -> list[CheckPlan]:
            plan = self.planner.plan
            plans: list[CheckPlan] = []
            windows = 0
            for c in conversations:
                plans.append(
                    plan(
                        c,
                        context,
                        ids=want_ids,
                        deadline=deadline.end,
                        abandoned=abandoned,
                        max_messages=self._message_cap,
                    )
                )
                windows += len(plans[-1].checks)
                if (too_many := over_call_budget(windows, budget)) is not None:
                    raise too_many
                if account is not None and (too_many := account.charge(len(plans[-1].checks))) is not None:
                    raise too_many
            return plans

        if self.planner.encoder is None and _cheap_to_plan(conversations):
            return work()
        size = planning_size(conversations)  # its cost to plan: text outside ASCII weighs more (rt64h F2)
        # Tokenizer work, and string work on text that may be hostile (`_INLINE_PLAN_CHARS`), stays off the loop, on
        # the local guard's planning threads: shortest first, one kept for short work, a plan whose caller left
        # stopped or never started. In asyncio's pool, first come first served, a few abandoned near-max_chars checks
        # held every thread past a short check's deadline (rt49c M5).
        job = planning_pool().submit(size, work)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job), deadline.left())
        except asyncio.TimeoutError:
            raise GuardTimeout("the deadline passed while the windows waited to be planned") from None
        finally:
            if not job.done():
                abandoned.set()
                job.cancel()

    async def _run(
        self,
        conversations: list[Conversation],
        deadline: _Deadline,
        budget: int | None = None,
        account: WindowAccount | None = None,
    ) -> list[Outcome]:
        """`_judged`, with every credential the client holds masked in its errors' texts (rt61c F3)."""
        try:
            outcomes = await self._judged(conversations, deadline, budget, account)
        except QwenGuardError as exc:
            self._mask.error(exc)  # in place: raised as it is
            raise
        if self._mask:
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    self._mask.error(outcome)
        return outcomes

    async def _judged(
        self,
        conversations: list[Conversation],
        deadline: _Deadline,
        budget: int | None = None,
        account: WindowAccount | None = None,
    ) -> list[Outcome]:
        wire = self._wire
        assert wire is not None
        CALLER.set(object())  # this call's requests take free slots in turn with other calls' (`FairSlots`)
        wire.ready()
        context = await self._context(wire, deadline)
        plans = await self._plan(conversations, context, deadline, budget, account)
        results = await asyncio.gather(*(self._judge(wire, p, deadline) for p in plans))
        for _ in range(_MAX_REPLANS):
            # A check judged on a cut prompt is planned again, whole, for the smaller context it showed.
            again = [i for i, (outcome, _) in enumerate(results) if isinstance(outcome, SmallerContext)]
            smaller = await self._context(wire, deadline)
            if not again or smaller >= context:
                break
            context = smaller
            replans = await self._plan([conversations[i] for i in again], context, deadline, budget, account)
            redone = await asyncio.gather(*(self._judge(wire, p, deadline) for p in replans))
            for i, (outcome, transport) in zip(again, redone):
                # A whole verdict of the replanned check stands; without one, what the first attempt read stands
                # (`_read_risk`: an Unsafe said of the cut prompt, or a Controversial another replica read whole
                # before the refusal: dropped, a later 503 stood alone, rt68j F2), merged with what the replanned
                # check read: as a missing window, it can only add risk.
                read = _read_risk(results[i][0])
                if read is not None and isinstance(outcome, QwenGuardError):
                    outcome.readable = worst([read] + [r for r in (_read_risk(outcome),) if r is not None])
                    transport = False
                results[i] = (outcome, transport)
        failed = [o for o, transport in results if transport and isinstance(o, BaseException)]
        if results and len(failed) == len(results):
            raise failed[0]  # nothing got through: the call as a whole failed
        return [o for o, _ in results]

    # -- the two entry points -----------------------------------------------------------------
    def _start(self) -> _Wire:
        self._check_open()
        with self._wire_lock:
            if self._wire is not None and self._wire.thread.inherited:
                # A forked child (gunicorn --preload, multiprocessing "fork") has no loop thread: its calls
                # waited for a thread that does not exist, to the deadline or forever. It starts its own.
                self._wire = None
            if self._wire is None:
                self._wire = _Wire(
                    f"qwenguard-remote[{self.model or self._show(self.base_url)}]",
                    self._make_client,
                    self.max_concurrency,
                )
                # A client dropped without close() still stops its thread and closes its pool.
                weakref.finalize(self, self._wire.close)
            return self._wire

    def classify(self, conversations: Sequence[Conversation], *, timeout: float | None = None) -> list[Outcome]:
        """Classify each conversation. See the module docstring for requests, deadlines and errors."""
        wire = self._start()
        if not conversations:
            return []
        budget = CALL_WINDOW_BUDGET.get()  # the caller's: the run goes to the client's own loop thread
        account = CALL_WINDOW_ACCOUNT.get()  # the caller's call's, over its backend calls (`window_budget`)
        outcomes: list[Outcome] = self._result(
            wire.thread.submit(self._run(list(conversations), _Deadline(timeout), budget, account)), timeout, "answer"
        )
        return outcomes

    async def aclassify(self, conversations: Sequence[Conversation], *, timeout: float | None = None) -> list[Outcome]:
        """Async twin of `classify`; cancelling it cancels the requests."""
        wire = self._start()
        if not conversations:
            return []
        budget = CALL_WINDOW_BUDGET.get()  # the caller's: the run goes to the client's own loop thread
        account = CALL_WINDOW_ACCOUNT.get()
        future = wire.thread.submit(self._run(list(conversations), _Deadline(timeout), budget, account))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), None if timeout is None else timeout + _GRACE_S)
        except asyncio.TimeoutError:
            raise GuardTimeout(f"guard server at {self._where} did not answer within {timeout} s") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", None)  # Python 3.11+
            if not self._closed or (cancelling is not None and cancelling()):
                raise  # our caller was cancelled
            raise GuardUnavailable("the remote guard backend was closed during the call") from None
        finally:
            future.cancel()

    def served_model(self, *, timeout: float | None = None) -> str:
        """The served model's name: given, or learned now from ``/models`` (blocking; checks learn it
        themselves). Raises `ServedModelUnknown`, or `GuardUnavailable` when no replica answers."""
        if self.model is not None and not self._naming():
            return self.model
        wire = self._start()

        async def learn() -> str:
            wire.ready()
            try:
                await self._context(wire, _Deadline(timeout))
            except QwenGuardError as exc:
                self._mask.error(exc)
                raise
            assert self.model is not None
            return self.model

        return str(self._result(wire.thread.submit(learn()), timeout, "list its models"))

    def _result(self, future: concurrent.futures.Future[Any], timeout: float | None, what: str) -> Any:
        """The outcome of work submitted to the wire's thread, waited for from a caller's thread: past ``timeout``
        (and a grace) a `GuardTimeout` saying the server did not ``what``; cancelled by close, `GuardUnavailable`."""
        try:
            return future.result(None if timeout is None else timeout + _GRACE_S)
        except concurrent.futures.TimeoutError:
            raise GuardTimeout(f"guard server at {self._where} did not {what} within {timeout} s") from None
        except concurrent.futures.CancelledError:
            raise GuardUnavailable("the remote guard backend was closed during the call") from None
        finally:
            future.cancel()  # no-op when done; else stops the requests (their connections close)

    # -- lifecycle ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise GuardUnavailable(self.CLOSED)

    def close(self) -> None:
        """Cancel what is in flight, close the connections, stop the client's loop thread."""
        self._closed = True
        with self._wire_lock:
            wire = self._wire
        if wire is not None:
            wire.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)  # joining the loop thread must not block the caller's loop
