"""The OpenAI API's shapes as a guard client reads them: HTTP errors and ``Retry-After``, and label
probabilities from the logprobs of chat and completion answers (as vLLM and SGLang send them)."""

from __future__ import annotations

import email.utils
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import GuardTimeout, GuardUnavailable
from ..formats.prompts import SAFETY_LABELS
from ..verdict import Risk

__all__ = [
    "RemoteHTTPError",
    "RemoteTimeout",
    "TIMEOUT_ERROR",
    "server_timed_out",
    "api_key_problem",
    "header_problem",
    "request_headers",
    "retry_after",
    "error_message",
    "error_text",
    "error_type",
    "parse_logprobs",
    "read_logprobs",
    "MALFORMED_LOGPROBS",
    "RETRY_STATUS",
    "NO_VERDICT_ERROR",
]

#: Statuses worth retrying: overload (429) and server-side failures. (A 502 whose error type is
#: `NO_VERDICT_ERROR` is no failure: the server's answer, "no verdict", as a 200 that does not parse; a 504 is
#: the server out of time, a `RemoteTimeout`, never retried on the same URL.)
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: The error type of qwenguard serve's 504 (its ``--timeout`` passed: the guard did not answer in time).
TIMEOUT_ERROR = "timeout"
#: The error type of qwenguard serve's 502 for a conversation its guard gave no verdict for (docs/server.md).
NO_VERDICT_ERROR = "guard_error"


class RemoteHTTPError(GuardUnavailable):
    """The guard server answered with an HTTP error. ``status`` is the code, ``retry_after`` its hint (s)."""

    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in RETRY_STATUS


class RemoteTimeout(RemoteHTTPError, GuardTimeout):
    """The server answered that it ran out of time (HTTP 504, or an error of type ``"timeout"``): a slow server,
    as a read timeout shows one. Never retried on the same URL (retrying would double its load; rt61c F2);
    another replica may be tried, and the check's reason is ``"timeout"``."""

    @property
    def retryable(self) -> bool:
        return False


def server_timed_out(status: int, body: bytes) -> bool:
    """Whether an error reply says the server ran out of time: a gateway's 504, or an error body whose
    ``error.type`` is ``"timeout"`` (qwenguard serve's 504 for its ``--timeout``)."""
    return status == 504 or (status >= 400 and error_type(body) == TIMEOUT_ERROR)


def api_key_problem(key: object) -> str | None:
    """What makes ``key`` unusable as a Bearer token (``Authorization`` is an ASCII header: a newline left by
    a secret file, a space or a non-ASCII character fails every request), or None when it is fine."""
    if not isinstance(key, str) or not key.strip():
        return "api_key is empty"
    if key != key.strip():
        return "api_key has leading or trailing whitespace (a newline read from a secret file?)"
    if not all(33 <= ord(c) <= 126 for c in key):
        return "api_key may hold only visible ASCII characters (it is sent in an HTTP header)"
    return None


#: The characters of an HTTP header name (RFC 9110 ``token``).
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def header_problem(name: str, value: str) -> str | None:
    """What makes ``name: value`` unsendable as an HTTP header (httpx and websockets each refuse some such
    headers in their own way, at every request: checks and streams would disagree), or None when it is fine."""
    if not name or not set(name) <= _TOKEN_CHARS:
        return f"header name {name!r} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
    if not all(c == "\t" or 32 <= ord(c) <= 126 for c in value):
        return f"header {name!r} may hold only visible ASCII, spaces and tabs (no line breaks)"
    return None


def request_headers(headers: Mapping[str, str] | None, api_key: str | None) -> dict[str, str]:
    """``headers`` with ``Authorization: Bearer <api_key>`` in place of any ``Authorization`` among them,
    whatever its case (httpx would send both; ``""`` is no key): what checks and stream handshakes both send.
    ``TypeError``/``ValueError`` now for what no request could carry (`header_problem`, `api_key_problem`)."""
    if api_key and (problem := api_key_problem(api_key)):
        raise ValueError(problem)
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"headers must map str to str, got {name!r}: {type(value).__name__}")
        if problem := header_problem(name, value):
            raise ValueError(problem)
        if not (api_key and name.lower() == "authorization"):
            out[name] = value
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, OSError):  # a date past what datetime holds: no usable hint
        return None


def error_message(response: Any) -> str:
    """The server's error text, short (the body may echo the request, so cap it)."""
    try:
        body = response.json()
    except Exception:  # noqa: BLE001 - any non-JSON body
        return _cut(str(response.text), None)
    return _error_of(body)


def error_text(body: bytes, scrub: Callable[[str], str] | None = None) -> str:
    """`error_message` of a body already read (at most a bounded prefix of it: see `OpenAIGen`). ``scrub`` (the
    client's credential mask) runs before the text is cut short: a secret echoed across the cut was shown in part
    (rt61e F3)."""
    try:
        data = json.loads(body)
    except ValueError:  # not JSON, not UTF-8, or cut short
        return _cut(body[:_ERROR_READ].decode("utf-8", "replace"), scrub)
    return _error_of(data, scrub)


def error_type(body: bytes) -> str | None:
    """The ``error.type`` of an error body already read (``"guard_error"``: qwenguard serve's guard gave no
    verdict for the conversation), or None when it has none."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    return kind if isinstance(kind, str) else None


#: How much of an error is read for its message, masked, then cut to `_ERROR_CHARS`: the bytes of a body that is not
#: JSON, the characters of a JSON one's message (the mask's work stays bounded; a secret past it is cut off whole).
_ERROR_READ = 65_536
#: How long a server's error message is kept.
_ERROR_CHARS = 300


def _cut(text: str, scrub: Callable[[str], str] | None) -> str:
    """``text`` masked (``scrub``), then cut to `_ERROR_CHARS`: masked first, a secret is never cut in part."""
    if scrub is not None:
        text = scrub(text[:_ERROR_READ])
    return text[:_ERROR_CHARS]


def _error_of(body: Any, scrub: Callable[[str], str] | None = None) -> str:
    err = body.get("error", body) if isinstance(body, dict) else body
    msg = err.get("message", err) if isinstance(err, dict) else err
    return _cut(str(msg), scrub)


def parse_logprobs(choice: Mapping[str, Any], *, max_steps: int | None = None) -> dict[Risk, float] | None:
    """P(safe/controversial/unsafe) from the logprobs of the token that names the label.

    Reads both the chat shape (``logprobs.content[i].top_logprobs = [{token, logprob}]``) and the
    completion shape (``logprobs.tokens`` + ``logprobs.top_logprobs = [{token: logprob}]``). The
    label position is the first token after the text ``"Safety:"``; the candidates there whose text
    starts a label are renormalised over the three labels. ``None`` when the server sent no logprobs
    or the position cannot be found within the first ``max_steps`` tokens (an honest answer has at most
    the request's ``max_tokens``; a reply with millions of steps is not read past them), and when the steps
    read are not the API's shape (`read_logprobs` raises for those instead).

    Linear in the steps read: only the last characters of the text so far are kept, never the whole text.
    """
    try:
        return read_logprobs(choice, max_steps=max_steps)
    except MALFORMED_LOGPROBS:
        return None


#: What `read_logprobs` raises for logprobs not in the API's shape.
MALFORMED_LOGPROBS = (ValueError, TypeError, OverflowError, AttributeError)


def read_logprobs(choice: Mapping[str, Any], *, max_steps: int | None = None) -> dict[Risk, float] | None:
    """`parse_logprobs`, strict: logprobs that are there but not in the API's shape (a logprob that is not a
    number, an int past float's range, steps or candidates that are not lists or objects) raise one of
    `MALFORMED_LOGPROBS` instead of reading as none. Only the steps read (``max_steps``) are looked at."""
    lp = choice.get("logprobs")
    if lp is None or isinstance(lp, list):  # a list: TGI's completions declare one (no tokens to place it by)
        return None
    if not isinstance(lp, Mapping):
        raise ValueError(f"logprobs that are not an object: {type(lp).__name__}")
    steps = _steps(lp)
    if steps is None:
        return None
    tail = ""  # the text so far without its trailing whitespace: its last len(_LABEL) characters
    gap = False  # whether whitespace follows `tail` in the text
    for step in steps if max_steps is None else itertools.islice(steps, max_steps):
        if step is None:
            return None
        token, candidates = step
        if tail == _LABEL:  # the text so far, stripped, ends with "Safety:"
            return _label_probs(candidates)
        body = token.rstrip()
        if body:  # any whitespace stands for the gap: the label has none, so which one does not matter
            tail = (tail + " " + body if gap else tail + body)[-len(_LABEL) :]
            gap = len(body) < len(token)
        elif token:
            gap = True
    return None


_LABEL = "Safety:"
_Step = tuple[str, dict[str, float]]


def _steps(lp: Mapping[str, Any]) -> Iterator[_Step | None] | None:
    """The (token, candidates) of each step, read lazily (``None`` for a step that is not an object)."""
    if isinstance(lp.get("content"), list):
        return (_chat_step(item) for item in lp["content"])
    if isinstance(lp.get("tokens"), list):
        tokens = lp["tokens"]
        top_list = lp.get("top_logprobs") or itertools.repeat(None)
        chosen = lp.get("token_logprobs") or itertools.repeat(None)
        return (_completion_step(tok, tops, own) for tok, tops, own in zip(tokens, top_list, chosen))
    return None


def _logprob(value: Any) -> float:
    """A logprob as the API sends it: a JSON number; ``null`` is none (-inf: TGI writes a non-finite one so).
    ``ValueError`` for anything else (``"abc"``, ``{}``, a bool), ``OverflowError`` for an int past float's range."""
    if value is None:
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a logprob that is not a number: {type(value).__name__}")
    return float(value)


def _chat_step(item: Any) -> _Step | None:
    if not isinstance(item, Mapping):
        return None
    tops = {
        str(t.get("token", "")): _logprob(t.get("logprob", -math.inf))
        for t in item.get("top_logprobs") or []
        if isinstance(t, Mapping)
    }
    tops.setdefault(str(item.get("token", "")), _logprob(item.get("logprob", -math.inf)))
    return str(item.get("token", "")), tops


def _completion_step(tok: Any, tops: Any, own: Any) -> _Step:
    if tops is not None and not isinstance(tops, Mapping):
        raise ValueError(f"top_logprobs entry that is not an object: {type(tops).__name__}")
    cand = {str(k): _logprob(v) for k, v in (tops or {}).items() if v is not None}
    if own is not None:
        cand.setdefault(str(tok), _logprob(own))
    return str(tok), cand


def _label_probs(candidates: Mapping[str, float]) -> dict[Risk, float] | None:
    """The label probabilities from the candidates at the label position, renormalised."""
    scores: dict[Risk, float] = {}
    for candidate, logprob in candidates.items():
        piece = candidate.strip()
        if not piece:
            continue
        matches = [r for r, lab in SAFETY_LABELS.items() if lab.startswith(piece)]
        if len(matches) == 1:
            if math.isnan(logprob) or logprob == math.inf:
                return None  # a broken engine's number (NaN probabilities would sink a report): no probabilities
            r = matches[0]
            scores[r] = max(scores.get(r, -math.inf), logprob)
    if not scores:
        return None
    top = max(scores.values())
    if top == -math.inf:  # every label impossible: nothing to normalise
        return None
    exps = {r: math.exp(scores[r] - top) if r in scores else 0.0 for r in SAFETY_LABELS}
    total = sum(exps.values())
    return {r: e / total for r, e in exps.items()}
