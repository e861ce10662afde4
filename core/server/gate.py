"""The ASGI gate in front of the app: auth, body and concurrency limits, request metrics."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from .metrics import Metrics
from .schemas import ApiError, ModerationRequest, error_json
from .service import Service
from .stream_protocol import CLOSE_UNAUTHORIZED, CLOSE_UNAVAILABLE

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
METRIC_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/moderate", "/v1/stream",
                           "/health", "/metrics"})


class Gate:
    """Pure ASGI middleware: auth, body limit, concurrency limit and request metrics, before FastAPI
    parses anything (so a 401 or 413 never costs a JSON parse)."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, max_concurrency: int,
                 body_timeout_s: float | None, metrics: Metrics, service: Service | None = None) -> None:
        self.app = app
        self.service = service  # for the /v1/moderate fast path
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics
        self.in_flight = 0
        self.streams = 0

    def _authorized(self, scope: Mapping[str, Any]) -> bool:
        if self.api_key is None:
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Awaitable[Any]], send: Callable[..., Awaitable[Any]]) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        label = path if path in METRIC_PATHS else "other"
        status_holder = {"status": 500}
        start = time.perf_counter()

        async def send_recording(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        async def answer(response: Response, reason: str) -> None:
            self.metrics.rejected.labels(reason).inc()
            await response(scope, receive, send_recording)

        try:
            if path in OPEN_PATHS:
                await self.app(scope, receive, send_recording)
                return
            if not self._authorized(scope):
                await answer(error_json(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                         "authentication_error", {"WWW-Authenticate": "Bearer"}), "auth")
                return
            headers = dict(scope.get("headers", ()))
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await answer(self._too_big(), "body_size")
                return
            if self.in_flight >= self.max_concurrency:
                await answer(error_json(503, "server busy: too many concurrent requests", "overloaded",
                                         {"Retry-After": "1"}), "overload")
                return
            self.in_flight += 1
            self.metrics.in_flight.inc()
            try:
                try:
                    body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
                except asyncio.TimeoutError:
                    await answer(error_json(408, "request body arrived too slowly", "request_timeout"), "slow_client")
                    return
                if body is None:
                    await answer(self._too_big(), "body_size")
                    return
                fast = await self._moderate_fast(scope, headers, body) if path == "/v1/moderate" else None
                if fast is not None:
                    await fast(scope, receive, send_recording)
                    return
                await self.app(scope, self._replay(body, receive), send_recording)
            finally:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
        finally:
            self.metrics.requests.labels(label, str(status_holder["status"])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)

    async def _moderate_fast(self, scope: Mapping[str, Any], headers: Mapping[bytes, bytes], body: bytes) -> Response | None:
        """A well-formed ``POST /v1/moderate``, answered without FastAPI's routing, dependency solving and
        re-validation of the response: the same `Service.moderate`, in about half the time (0.21 vs 0.39 ms).
        ``None`` sends the request down the FastAPI route, which answers anything malformed the usual way."""
        if self.service is None or scope.get("method") != "POST":
            return None
        content_type = headers.get(b"content-type", b"application/json")
        if not content_type.split(b";")[0].strip().lower().endswith(b"json"):
            return None
        try:
            request = ModerationRequest.model_validate_json(body)
        except ValidationError:
            return None
        try:
            result = await self.service.moderate(request)
        except ApiError as exc:
            return error_json(exc.status, exc.message, exc.kind, exc.headers)
        return Response(result.model_dump_json(), media_type="application/json")

    def _too_big(self) -> JSONResponse:
        return error_json(413, f"request body exceeds {self.max_body_bytes} bytes", "request_too_large")

    async def _read_body(self, receive: Any) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[Mapping[str, Any]]]:
        sent = False

        async def replay() -> Mapping[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the real channel: it reports the disconnect

        return replay

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self._authorized(scope) or self.streams >= self.max_concurrency:
            unauthorized = not self._authorized(scope)
            self.metrics.rejected.labels("auth" if unauthorized else "overload").inc()
            first = await receive()  # websocket.connect
            if first["type"] != "websocket.connect":
                return
            # Refuse the handshake: uvicorn answers HTTP 403. (The "websocket.http.response" extension
            # could send a 401 body, but uvicorn then logs a spurious handshake error per refusal.)
            await send({"type": "websocket.close", "code": CLOSE_UNAUTHORIZED if unauthorized else CLOSE_UNAVAILABLE})
            return
        self.streams += 1
        self.metrics.streams.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.streams -= 1
            self.metrics.streams.dec()

