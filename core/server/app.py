"""``create_app``: the FastAPI app and its routes; ``serve``: run it on uvicorn."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from .gate import Gate
from .metrics import Metrics
from .schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModerationRequest,
    ModerationResponse,
    error_json,
)
from .service import Service, check_model, conversation_from_prompt, normalize, raw_text
from .stream_protocol import stream_session

#: 1 MB of JSON is ~250k tokens of text: far past any guard context, so larger bodies are abuse.
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_STREAM_IDLE_TIMEOUT_S = 60.0


def create_app(
    guard: Any,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    stream_idle_timeout_s: float | None = DEFAULT_STREAM_IDLE_TIMEOUT_S,
    model_name: str | None = None,
) -> FastAPI:
    """A FastAPI app serving ``guard`` (its Gen backend, verdict cache and Policy; its stream monitor).

    >>> app = create_app(Guard.from_pretrained("demo"), api_key="s3cret")    # doctest: +SKIP
    """
    if max_body_bytes < 1 or max_concurrency < 1:
        raise ValueError("max_body_bytes and max_concurrency must be >= 1")
    metrics = Metrics()
    name = model_name or guard.backend.name
    service = Service(guard, request_timeout_s=request_timeout_s, metrics=metrics, model_name=name)
    created = int(time.time())
    app = FastAPI(title="qwenguard", version="0.1.0",
                  description="Qwen3Guard moderation: OpenAI-compatible completions, structured verdicts, stream sessions.",
                  responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    app.state.service = service
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_json(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # loc/msg/type only: "input" would copy request text into responses and error trackers.
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = f"invalid request: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        body = {"error": {"message": message, "type": "invalid_request_error", "code": 422, "details": jsonable_encoder(details)}}
        return JSONResponse(body, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_json(exc.status_code, str(exc.detail), "http_error", getattr(exc, "headers", None))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness for load balancers (no auth, no guard call)."""
        return {"status": "ok", "model": name, "stream": True}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "qwenguard"}]}

    @app.post("/v1/chat/completions", responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        """The guard model's answer for a conversation, as an OpenAI chat completion."""
        check_model(body.model, name)
        messages = normalize([{"role": m.role, "content": m.text()} for m in body.messages])
        (outcome, _), = await service.classify([messages])
        text = raw_text(outcome)
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return _sse([
                {"id": ident, "object": "chat.completion.chunk", "created": now, "model": name,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
                {"id": ident, "object": "chat.completion.chunk", "created": now, "model": name,
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ])
        return {"id": ident, "object": "chat.completion", "created": now, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": "stop"}]}

    @app.post("/v1/completions", responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    async def completions(body: CompletionRequest) -> Any:
        """Raw completion of a prompt written by ``render_prompt`` (what ``OpenAIGen(mode="completion")`` sends)."""
        check_model(body.model, name)
        try:
            messages = conversation_from_prompt(body.prompt)
        except ValueError as exc:
            raise ApiError(400, str(exc), "invalid_request_error") from exc
        (outcome, _), = await service.classify([normalize(messages)])
        text = raw_text(outcome)
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return _sse([
                {"id": ident, "object": "text_completion", "created": now, "model": name,
                 "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]},
                {"id": ident, "object": "text_completion", "created": now, "model": name,
                 "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]},
            ])
        return {"id": ident, "object": "text_completion", "created": now, "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}]}

    @app.post("/v1/moderate", response_model=ModerationResponse,
              responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 504: {"model": ErrorResponse}})
    async def moderate(body: ModerationRequest) -> ModerationResponse:
        """Verdicts for a batch of conversations, in order, with the Policy's decision for each."""
        return await service.moderate(body)

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await stream_session(ws, service, max_message_bytes=max_body_bytes, idle_timeout_s=stream_idle_timeout_s)

    app.add_middleware(Gate, api_key=api_key, max_body_bytes=max_body_bytes, max_concurrency=max_concurrency,
                       body_timeout_s=request_timeout_s, metrics=metrics, service=service)
    return app


def _sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def events() -> Any:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# -- running ------------------------------------------------------------------------------------
def serve(
    guard: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    log_level: str = "info",
    **app_options: Any,
) -> None:
    """Run the server on uvicorn until interrupted. ``app_options`` go to `create_app`."""
    import uvicorn

    app = create_app(guard, api_key=api_key, **app_options)
    # The access log holds method, path and status only; bodies are never logged.
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws="websockets-sansio", timeout_keep_alive=30)
