"""``create_app``: the FastAPI app and its routes; ``serve``: run it on uvicorn."""

from __future__ import annotations

import gc
import json
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.openai_wire import api_key_problem
from ..backends.transport import REQUEST_ID_HEADER
from .connections import server_config
from .gate import BodyRoute, Gate, Load
from .limits import Limits
from .metrics import Metrics
from .schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModerationRequest,
    ModerationResponse,
    error_json,
    validation_error_json,
)
from .service import Service, chat_logprobs, check_model, completion_logprobs, raw_text
from .shutdown import DEFAULT_SHUTDOWN_TIMEOUT_S, DrainingServer
from .stream_protocol import stream_session


def check_api_key(api_key: str | None) -> None:
    """``None`` serves without auth; an empty or blank key is a mistake (an unset secret, a typo), not
    a request for an open server, so it is refused instead of silently serving without auth."""
    if api_key is None:
        return
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key is empty: pass a non-empty key, or None to serve without authentication")
    if problem := api_key_problem(api_key):  # no client could ever send it
        raise ValueError(problem)


def create_app(
    guard: Any,
    *,
    api_key: str | None = None,
    limits: Limits | None = None,
    model_name: str | None = None,
    **limit_overrides: Any,
) -> FastAPI:
    """A FastAPI app serving ``guard``: its Gen backend and verdict cache, its stream monitor, and its
    `Policy` as the operator's (pinned: a client's policy can only make decisions stricter).

    ``limits`` (a `Limits`), or any of its fields as keywords (``max_body_bytes=...``), bound what one
    client can make the server do. Raises ``ValueError`` for an empty ``api_key`` or a bad limit.

    >>> app = create_app(Guard.from_pretrained("demo"), api_key="s3cret", max_messages=64)  # doctest: +SKIP
    """
    check_api_key(api_key)
    unknown = sorted(set(limit_overrides) - {f for f in Limits.__dataclass_fields__})
    if unknown:
        raise TypeError(f"create_app() got unknown options {unknown}")
    limits = (limits or Limits()).with_overrides(**limit_overrides)
    metrics = Metrics()
    name = model_name or guard.backend.name
    if not name:  # a remote guard that learns its model at its first check (Guard.remote without model=)
        raise ValueError("the guard's model has no name yet: pass model_name=, or model= to Guard.remote")
    service = Service(guard, limits=limits, metrics=metrics, model_name=name)
    load = Load(limits)
    created = int(time.time())
    app = FastAPI(
        title="qwenguard",
        version="0.1.0",
        description="Qwen3Guard moderation: OpenAI-compatible completions, structured verdicts, stream sessions.",
        responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    )
    app.state.service = service
    app.state.metrics = metrics
    app.state.load = load

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_json(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_json(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_json(exc.status_code, str(exc.detail), "http_error", getattr(exc, "headers", None))

    def status() -> dict[str, Any]:
        has_stream_model = guard.stream_backend is not None
        return {
            "status": "draining" if load.draining else "ok",
            "model": name,
            "stream": has_stream_model,
            "stream_engine": "stream_model" if has_stream_model else "gen_windows",
            **load.readiness(),
        }

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness (no auth, no guard call): 200 while the server answers, 503 from the moment it is told
        to stop (``"status": "draining"``, so balancers take it out). ``stream`` says whether a Stream model
        serves ``/v1/stream`` (else Gen windows do); ``ready`` as for ``/ready``."""
        return JSONResponse(status(), 503 if load.draining else 200)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness for load balancers: 200 when a request and a stream session would be taken now,
        503 while the server is at its concurrency limit (the body says which)."""
        body = status()
        return JSONResponse(body, 200 if body["ready"] else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # The served context, as vLLM publishes it: a client (`Guard.remote`) plans its windows to fit it, as this
    # server's own backend plans them, instead of guessing 4,096 tokens and warning.
    context = getattr(guard.backend, "max_context", None)
    served: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "qwenguard"}
    if isinstance(context, int) and not isinstance(context, bool) and context > 0:
        served["max_model_len"] = context
    # The turns one request may hold (--max-messages): a `Guard.remote` client caps the context turns it shows
    # to this, instead of assuming the default and being refused (413) by a server run with a lower one.
    served["max_messages"] = limits.max_messages

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [served]}

    @app.post(
        "/v1/chat/completions",
        responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 502: {"model": ErrorResponse}},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """The guard model's answer for a conversation, as an OpenAI chat completion; 502 ``guard_error``
        when the guard gives no verdict for it (`raw_text`)."""
        conversation = await service.achat_conversation(body)
        return await chat_answer(body, conversation, request.headers.get(REQUEST_ID_HEADER))

    async def chat_answer(body: ChatCompletionRequest, conversation: list[dict[str, str]], asked: str | None) -> Any:
        ((outcome, _),) = await service.classify([conversation])
        text = raw_text(outcome)
        logprobs = chat_logprobs(outcome, text, body.top_logprobs or 0) if body.logprobs else None
        ident, now = f"chatcmpl-{reply_name(asked)}", int(time.time())
        if body.stream:
            return _sse(
                [
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": now,
                        "model": name,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": text},
                                "logprobs": logprobs,
                                "finish_reason": None,
                            }
                        ],
                    },
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": now,
                        "model": name,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    },
                ]
            )
        return {
            "id": ident,
            "object": "chat.completion",
            "created": now,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": "stop",
                }
            ],
        }

    @app.post(
        "/v1/completions",
        responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 502: {"model": ErrorResponse}},
    )
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """Raw completion of a prompt written by ``render_prompt`` (what ``OpenAIGen(mode="completion")`` sends);
        502 ``guard_error`` when the guard gives no verdict for it."""
        check_model(body.model, name)
        messages = await service.read_prompt(body.prompt)  # off the event loop when large
        conversation = await service.asized(messages)
        return await completion_answer(body, conversation, request.headers.get(REQUEST_ID_HEADER))

    async def completion_answer(body: CompletionRequest, conversation: list[dict[str, str]], asked: str | None) -> Any:
        ((outcome, _),) = await service.classify([conversation])
        text = raw_text(outcome)
        logprobs = None if body.logprobs is None else completion_logprobs(outcome, text, body.logprobs)
        ident, now = f"cmpl-{reply_name(asked)}", int(time.time())
        if body.stream:
            return _sse(
                [
                    {
                        "id": ident,
                        "object": "text_completion",
                        "created": now,
                        "model": name,
                        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": None}],
                    },
                    {
                        "id": ident,
                        "object": "text_completion",
                        "created": now,
                        "model": name,
                        "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}],
                    },
                ]
            )
        return {
            "id": ident,
            "object": "text_completion",
            "created": now,
            "model": name,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "stop"}],
        }

    @app.post(
        "/v1/moderate",
        response_model=ModerationResponse,
        responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 504: {"model": ErrorResponse}},
    )
    async def moderate(body: ModerationRequest) -> ModerationResponse:
        """Verdicts for a batch of conversations, in order, with the Policy's decision for each."""
        return await service.moderate(body)

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await stream_session(ws, service)

    # Large bodies of these routes are parsed and rendered by the gate in a thread, then answered as here.
    routes = {
        "/v1/moderate": BodyRoute(
            ModerationRequest,
            service.moderation_work,
            lambda body, work, _: service.moderate(body, work),
            lenient_json=True,
        ),
        "/v1/chat/completions": BodyRoute(ChatCompletionRequest, service.chat_conversation, chat_answer),
        "/v1/completions": BodyRoute(CompletionRequest, service.completion_conversation, completion_answer),
    }
    app.add_middleware(Gate, api_key=api_key, limits=limits, load=load, metrics=metrics, service=service, routes=routes)
    return app


#: What of a request's ``X-Request-Id`` a reply's id repeats: the letters, digits and marks an id is written in.
_REQUEST_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def reply_name(asked: str | None) -> str:
    """The name a reply's id carries: the request's ``X-Request-Id`` (``asked``) as vLLM does (a `Guard.remote` client
    proves each reply its own so: `ReplyIds`), or a new one where it sends none (or one that is no plain name)."""
    return asked if asked is not None and _REQUEST_NAME.fullmatch(asked) else uuid.uuid4().hex


def _sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def events() -> Any:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# -- running ------------------------------------------------------------------------------------
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def serve(
    guard: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    allow_unauthenticated: bool = False,
    log_level: str = "info",
    drain_delay_s: float = 0.0,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    **app_options: Any,
) -> None:
    """Run the server on uvicorn until interrupted. ``app_options`` go to `create_app` (limits included).

    On SIGTERM or SIGINT the server drains (`shutdown.DrainingServer`): ``/health`` answers 503 at once,
    it keeps serving for ``drain_delay_s``, then stops accepting, finishes requests in flight, hands
    stream sessions back (close 1012: clients re-open them elsewhere) and exits within
    ``shutdown_timeout_s`` more.

    Raises ``ValueError`` for an empty ``api_key``, and for a non-loopback ``host`` without a key
    unless ``allow_unauthenticated=True`` says that an open server is meant."""
    check_api_key(api_key)
    if api_key is None and host not in LOOPBACK_HOSTS and not allow_unauthenticated:
        raise ValueError(
            f"serving on {host} without an API key would let anyone who can reach it use the guard; "
            "set an API key, or allow_unauthenticated=True (--allow-unauthenticated) to mean it"
        )
    if shutdown_timeout_s <= 0:
        raise ValueError("shutdown_timeout_s must be positive")
    app = create_app(guard, api_key=api_key, **app_options)
    limits: Limits = app.state.service.limits
    config = server_config(
        app, host=host, port=port, limits=limits, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout_s
    )
    # Everything loaded so far (the model, the libraries) lives as long as the server: frozen, it is left out of
    # the collector's full passes, which otherwise walk all of it while a large request body is being parsed
    # and hold every request meanwhile (1 MB bodies: /health waited up to 627 ms, 65 ms frozen).
    gc.collect()
    gc.freeze()
    DrainingServer(config, load=app.state.load, drain_delay_s=drain_delay_s).run()
