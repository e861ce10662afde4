"""The qwenguard server: a Guard's backends behind HTTP, for app servers that call one guard box.

``create_app(guard)`` builds a FastAPI app; ``serve(guard)`` runs it on uvicorn; the CLI is
``qwenguard serve --model demo``. Endpoints:

- ``POST /v1/chat/completions`` — OpenAI-compatible, answered like vLLM answers for a Gen model: the
  assistant message is the guard model's raw text (``Safety: ...`` / ``Categories: ...`` /
  ``Refusal: ...``), so the official ``openai`` client and `OpenAIGen` both work against it.
- ``POST /v1/completions`` — raw completion for a prompt rendered by `render_prompt` (what
  ``OpenAIGen(mode="completion")`` sends). The server reads the conversation back out of the prompt
  and checks that rendering it again gives the same bytes, so the local backend sees exactly what
  the client rendered; any other prompt is a 400 (this is a guard server, not a general LLM).
- ``GET /v1/models``; ``POST /v1/moderate`` — structured verdicts and decisions (schema in
  ``/openapi.json``); ``WS /v1/stream`` — remote stream moderation sessions (see `_stream_session`).
- ``GET /health`` (liveness) and ``GET /ready`` (readiness: 503 at the concurrency limit), both without
  auth, for load balancers; ``GET /metrics`` (Prometheus, one registry per app).

Security model (``docs/security.md``): the guard's `Policy` is the operator's and is pinned (a client's
policy can only make decisions stricter, `Policy.tightened`); a bearer token when ``api_key`` is set
(401 otherwise, compared in constant time; an empty key is refused at start-up); every request,
stream session and connection is bounded by the operator's `Limits` (body bytes, conversations,
messages, characters, concurrency, stream sessions per client, deadlines for heads, bodies, idle and
long sessions, open sockets). Request and response text is never logged, nor are query strings.
"""

from __future__ import annotations

from ..errors import MissingDependency

try:  # one clear message when the extra is missing, before any submodule imports fastapi
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency.for_extra("server", exc.name or "fastapi") from exc

from .app import check_api_key, create_app, serve
from .connections import guarded_protocol, server_config
from .limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_CONVERSATIONS,
    DEFAULT_MAX_MESSAGES,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_STREAM_IDLE_TIMEOUT_S,
    LimitExceeded,
    Limits,
)
from .service import conversation_from_prompt, policy_from_dict
from .stream_protocol import (
    CLOSE_BAD_REQUEST,
    CLOSE_IDLE_TIMEOUT,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNAVAILABLE,
    token_verdict_dict,
)

__all__ = [
    "CLOSE_BAD_REQUEST",
    "CLOSE_IDLE_TIMEOUT",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_TOO_BIG",
    "CLOSE_UNAUTHORIZED",
    "CLOSE_UNAVAILABLE",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_CONVERSATIONS",
    "DEFAULT_MAX_MESSAGES",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_STREAM_IDLE_TIMEOUT_S",
    "LimitExceeded",
    "Limits",
    "check_api_key",
    "conversation_from_prompt",
    "create_app",
    "guarded_protocol",
    "policy_from_dict",
    "serve",
    "server_config",
    "token_verdict_dict",
]
