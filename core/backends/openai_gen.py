"""`OpenAIGen`: Qwen3Guard-Gen behind an OpenAI-compatible HTTP server (vLLM, SGLang, qwenguard serve).

Two wire modes:

- ``mode="chat"`` posts the conversation to ``{base_url}/chat/completions`` and lets the server apply
  the checkpoint's chat template (what vLLM and SGLang serve).
- ``mode="completion"`` posts ``render_prompt(conversation)`` to ``{base_url}/completions``, for
  servers whose chat templates drift (Ollama, llama.cpp): the prompt is then byte for byte the
  official one (DESIGN.md decision 1).

Each conversation is one request; a batch runs its requests concurrently, at most
``max_concurrency`` at a time per client. Connection errors, 429 and 5xx are retried with
exponential backoff (honouring ``Retry-After``); other 4xx never are. The ``timeout`` of a call is a
deadline for the whole batch, retries included.

Errors, per the backend protocol (`qwenguard.core.backends.base`): an answer that does not parse, or a
request the server refused (4xx, or 5xx after the retries), is that conversation's
`VerdictParseError` / `GuardUnavailable`; a deadline, or a server that cannot be reached at all,
raises `GuardTimeout` / `GuardUnavailable` for the whole call.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import (
    GuardTimeout,
    GuardUnavailable,
    MissingDependency,
    QwenGuardError,
    VerdictParseError,
)
from ..formats.prompts import (
    SAFETY_LABELS,
    moderation_mode,
    normalize_messages,
    parse_verdict,
    render_prompt,
)
from ..verdict import Risk, Verdict
from .base import Conversation, Outcome

__all__ = [
    "OpenAIGen",
    "RemoteHTTPError",
    "parse_logprobs",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_READ_TIMEOUT_S",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_TOKENS",
]

#: Connecting to a healthy server on a LAN takes milliseconds; a few seconds means it is not there.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: One guard answer is ~10 tokens; a GPU server under load still answers within seconds.
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 5.0
DEFAULT_MAX_CONCURRENCY = 16
#: Answers are 8-14 tokens (research/qwen3guard.md §2.3); 48 leaves room for several categories.
DEFAULT_MAX_TOKENS = 48

Mode = Literal["chat", "completion"]
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


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


class RemoteHTTPError(GuardUnavailable):
    """The guard server answered with an HTTP error. ``status`` is the code, ``retry_after`` its hint (s)."""

    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in _RETRY_STATUS


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(response: Any) -> str:
    """The server's error text, short (the body may echo the request, so cap it)."""
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
        text = str(msg)
    except Exception:  # noqa: BLE001 - any non-JSON body
        text = response.text
    return text[:300]


def parse_logprobs(choice: Mapping[str, Any]) -> dict[Risk, float] | None:
    """P(safe/controversial/unsafe) from the logprobs of the token that names the label.

    Reads both the chat shape (``logprobs.content[i].top_logprobs = [{token, logprob}]``) and the
    completion shape (``logprobs.tokens`` + ``logprobs.top_logprobs = [{token: logprob}]``). The
    label position is the first token after the text ``"Safety:"``; the candidates there whose text
    starts a label are renormalised over the three labels. ``None`` when the server sent no logprobs
    or the position cannot be found.
    """
    lp = choice.get("logprobs")
    if not isinstance(lp, Mapping):
        return None
    steps: list[tuple[str, dict[str, float]]] = []
    if isinstance(lp.get("content"), list):
        for item in lp["content"]:
            if not isinstance(item, Mapping):
                return None
            tops = {str(t.get("token", "")): float(t.get("logprob", -math.inf))
                    for t in item.get("top_logprobs") or [] if isinstance(t, Mapping)}
            tops.setdefault(str(item.get("token", "")), float(item.get("logprob", -math.inf)))
            steps.append((str(item.get("token", "")), tops))
    elif isinstance(lp.get("tokens"), list):
        top_list = lp.get("top_logprobs") or [None] * len(lp["tokens"])
        chosen = lp.get("token_logprobs") or [None] * len(lp["tokens"])
        for tok, tops, own in zip(lp["tokens"], top_list, chosen):
            cand = {str(k): float(v) for k, v in (tops or {}).items() if v is not None}
            if own is not None:
                cand.setdefault(str(tok), float(own))
            steps.append((str(tok), cand))
    else:
        return None
    text = ""
    for token, candidates in steps:
        if text.strip().endswith("Safety:"):
            scores: dict[Risk, float] = {}
            for cand, logprob in candidates.items():
                piece = cand.strip()
                if not piece:
                    continue
                matches = [r for r, lab in SAFETY_LABELS.items() if lab.startswith(piece)]
                if len(matches) == 1:
                    r = matches[0]
                    scores[r] = max(scores.get(r, -math.inf), logprob)
            if not scores:
                return None
            top = max(scores.values())
            exps = {r: math.exp(scores[r] - top) if r in scores else 0.0 for r in SAFETY_LABELS}
            total = sum(exps.values())
            return {r: e / total for r, e in exps.items()}
        text += token
    return None


@dataclass
class _Request:
    path: str
    body: dict[str, Any]
    mode: str  # moderation mode: "prompt" or "response"


class _Deadline:
    def __init__(self, timeout: float | None) -> None:
        self.end = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        left = self.left()
        return left is not None and left <= 0


class OpenAIGen:
    """Remote Qwen3Guard-Gen over the OpenAI API (chat or completion mode).

    >>> backend = OpenAIGen("http://127.0.0.1:8000/v1", model="Qwen/Qwen3Guard-Gen-4B")   # doctest: +SKIP
    >>> guard = Guard(backend)                                                           # doctest: +SKIP

    ``transport`` / ``async_transport`` are handed to httpx (fault injection in tests, proxies).
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        mode: Mode = "chat",
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        logprobs: bool = False,
        headers: Mapping[str, str] | None = None,
        transport: Any = None,
        async_transport: Any = None,
    ) -> None:
        if mode not in ("chat", "completion"):
            raise ValueError(f"mode must be 'chat' or 'completion', got {mode!r}")
        if not isinstance(model, str) or not model:
            raise ValueError("model must be the served model name, e.g. 'Qwen/Qwen3Guard-Gen-4B'")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {base_url!r}")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        httpx = _httpx()
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.mode: Mode = mode
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = max_concurrency
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.requests_sent = 0  # attempts on the wire, retries included (observable in tests/figures)
        self._headers = {"Accept": "application/json", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._limits = limits
        self._client = httpx.Client(headers=self._headers, timeout=self._timeout, limits=limits, transport=transport)
        self._async_transport = async_transport
        # An httpx.AsyncClient (and a Semaphore) belongs to the event loop that first used it; keep
        # one per loop, dropped with the loop.
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"OpenAIGen({self.base_url!r}, model={self.model!r}, mode={self.mode!r})"

    # -- requests -----------------------------------------------------------------------------
    def _build(self, conversation: Conversation) -> _Request:
        msgs = normalize_messages(conversation)
        mode = moderation_mode(msgs)
        body: dict[str, Any] = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens}
        if self.mode == "chat":
            body["messages"] = msgs
            if self.logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = 5
            return _Request("/chat/completions", body, mode)
        body["prompt"] = render_prompt(msgs)
        if self.logprobs:
            body["logprobs"] = 5
        return _Request("/completions", body, mode)

    def _read(self, req: _Request, payload: Any, elapsed_ms: float) -> Outcome:
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"] if self.mode == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            return VerdictParseError("the server's reply has no choices[0] text", raw=str(payload)[:300])
        try:
            verdict = parse_verdict(text, mode=req.mode, model=self.name)
        except VerdictParseError as exc:
            return exc
        probs = parse_logprobs(choice) if self.logprobs else None
        return Verdict(verdict.risk, verdict.categories, verdict.refusal, verdict.raw, elapsed_ms, self.name, probs)

    def _status_error(self, response: Any) -> RemoteHTTPError:
        return RemoteHTTPError(
            f"guard server answered HTTP {response.status_code}: {_error_message(response)}",
            response.status_code,
            _retry_after(response.headers.get("retry-after")),
        )

    # -- retry policy (tenacity), written once for both I/O paths ------------------------------
    def _retry_kwargs(self, deadline: _Deadline) -> dict[str, Any]:
        tenacity = _tenacity()
        httpx = _httpx()

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, RemoteHTTPError):
                return exc.retryable
            # A read timeout means the server is slow, not gone: retrying would double its load.
            return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.ReadTimeout)

        def wait(state: Any) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            hint = getattr(exc, "retry_after", None)
            delay = hint if hint is not None else min(self.max_backoff_s, self.backoff_s * 2 ** (state.attempt_number - 1))
            left = deadline.left()
            return delay if left is None else max(0.0, min(delay, left))

        def stop(state: Any) -> bool:
            return state.attempt_number > self.max_retries or deadline.expired()

        return {"retry": tenacity.retry_if_exception(retryable), "wait": wait, "stop": stop, "reraise": True}

    def _attempt_timeout(self, deadline: _Deadline) -> Any:
        left = deadline.left()
        if left is None:
            return self._timeout
        if left <= 0:
            raise GuardTimeout("guard server did not answer within the deadline")
        httpx = _httpx()
        return httpx.Timeout(min(left, self._timeout.read or left), connect=min(left, self._timeout.connect or left))

    def _translate(self, exc: BaseException, deadline: _Deadline) -> QwenGuardError:
        httpx = _httpx()
        if isinstance(exc, QwenGuardError):
            return exc
        if isinstance(exc, httpx.TimeoutException) or deadline.expired():
            err: QwenGuardError = GuardTimeout(f"guard server at {self.base_url} timed out: {type(exc).__name__}")
        else:
            err = GuardUnavailable(f"guard server at {self.base_url} unreachable: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err

    # -- sync ---------------------------------------------------------------------------------
    def _post(self, req: _Request, deadline: _Deadline) -> Outcome:
        tenacity = _tenacity()
        start = time.perf_counter()
        try:
            for attempt in tenacity.Retrying(**self._retry_kwargs(deadline)):
                with attempt:
                    self.requests_sent += 1
                    response = self._client.post(self.base_url + req.path, json=req.body,
                                                 timeout=self._attempt_timeout(deadline))
                    if response.status_code >= 400:
                        raise self._status_error(response)
                    payload = response.json()
        except RemoteHTTPError as exc:
            return exc  # the server refused this conversation: its own outcome, not the batch's
        except ValueError as exc:  # a 2xx body that is not JSON
            return VerdictParseError(f"the server's reply is not JSON: {exc}")
        except Exception as exc:  # noqa: BLE001 - translated at the boundary
            raise self._translate(exc, deadline) from exc
        return self._read(req, payload, (time.perf_counter() - start) * 1000)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="qwenguard-remote")
            return self._pool

    def classify(self, conversations: Sequence[Conversation], *, timeout: float | None = None) -> list[Outcome]:
        """Classify each conversation (one request each, concurrently). See the module docstring for errors."""
        self._check_open()
        requests = [self._build(c) for c in conversations]
        deadline = _Deadline(timeout)
        if len(requests) <= 1:
            return [self._post(r, deadline) for r in requests]
        futures = [self._executor().submit(self._post, r, deadline) for r in requests]
        results: list[Outcome] = []
        for fut in futures:
            results.append(fut.result())  # re-raises a whole-call failure (timeout, unreachable)
        return results

    # -- async --------------------------------------------------------------------------------
    def _async_client(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        pair = self._aclients.get(loop)
        if pair is None:
            httpx = _httpx()
            client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, limits=self._limits,
                                       transport=self._async_transport)
            pair = self._aclients[loop] = (client, asyncio.Semaphore(self.max_concurrency))
        return pair

    async def _apost(self, req: _Request, deadline: _Deadline) -> Outcome:
        tenacity = _tenacity()
        client, sem = self._async_client()
        start = time.perf_counter()
        try:
            async for attempt in tenacity.AsyncRetrying(**self._retry_kwargs(deadline)):
                with attempt:
                    async with sem:
                        self.requests_sent += 1
                        response = await client.post(self.base_url + req.path, json=req.body,
                                                     timeout=self._attempt_timeout(deadline))
                    if response.status_code >= 400:
                        raise self._status_error(response)
                    payload = response.json()
        except RemoteHTTPError as exc:
            return exc
        except ValueError as exc:
            return VerdictParseError(f"the server's reply is not JSON: {exc}")
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, deadline) from exc
        return self._read(req, payload, (time.perf_counter() - start) * 1000)

    async def aclassify(self, conversations: Sequence[Conversation], *, timeout: float | None = None) -> list[Outcome]:
        """Async twin of `classify`."""
        self._check_open()
        requests = [self._build(c) for c in conversations]
        deadline = _Deadline(timeout)
        tasks = [asyncio.ensure_future(self._apost(r, deadline)) for r in requests]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout))
        except asyncio.TimeoutError:
            raise GuardTimeout(f"guard server at {self.base_url} did not answer within {timeout} s") from None
        finally:
            for t in tasks:
                t.cancel()

    # -- lifecycle ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise GuardUnavailable("the remote guard backend is closed")

    def close(self) -> None:
        self._closed = True
        self._client.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        pair = self._aclients.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            await pair[0].aclose()
        self.close()
