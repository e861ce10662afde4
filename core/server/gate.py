"""The ASGI gate in front of the app: auth, body, concurrency and stream-session limits, request metrics."""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import hmac
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from .connections import ClientStalled, pipelined_answers, sent_within, unsent_bytes
from .limits import LARGE_BODY_BYTES, LimitExceeded, Limits
from .metrics import SERVED_PATHS, Metrics
from .schemas import ApiError, ModerationRequest, error_json, validation_error_json
from .service import REQUEST_CLIENT, REQUEST_DEADLINE, Service
from .stream_protocol import CLOSE_UNAUTHORIZED, CLOSE_UNAVAILABLE
from .turns import ClientTurns, NoTurn, ParseTurns, QueueFull, client_address

OPEN_PATHS = frozenset({"/health", "/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
_Model = TypeVar("_Model", bound=BaseModel)

#: The most open-path answers a connection is sent in a row while more of its requests wait behind them (pipelined):
#: the next one ends it (`_closing_when_behind`). Balancers and browsers send one request at a time.
OPEN_PATHS_PIPELINED = 8

#: How long a stream handshake waits for a session slot before 503/429: long enough for the last session of a client
#: that closed it to give its slot back, short enough that a busy server still answers at once to a balancer.
STREAM_SLOT_WAIT_S = 0.25


@dataclass(frozen=True)
class BodyRoute:
    """A JSON route whose large bodies the gate serves itself, as the route would (`Gate._off_loop`): the
    body is parsed into ``model`` and ``work(request)`` (the route's synchronous part: size checks,
    rendering) is done in a thread, then ``answer(request, work, asked)`` (the guard's call; ``asked``: the request's
    ``X-Request-Id``, which a reply's id repeats) on the event loop.

    ``lenient_json``: a body without a content type, or with any ``...json`` one, is read as JSON (as the
    ``/v1/moderate`` fast path reads it); else only what FastAPI reads as JSON is."""

    model: type[BaseModel]
    work: Callable[[Any], Any]
    answer: Callable[[Any, Any, str | None], Awaitable[Any]]
    lenient_json: bool = False

    def reads(self, headers: Mapping[bytes, bytes]) -> bool:
        """Whether the route reads a body sent with these headers as JSON."""
        return json_content(headers, lenient=self.lenient_json)


def first_headers(scope: Mapping[str, Any]) -> dict[bytes, bytes]:
    """A request's headers by lower-case name, the first of repeated ones, as Starlette's ``headers.get``
    reads them (a ``dict`` of the list keeps the last: two content types would be read two ways)."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        headers.setdefault(name, value)
    return headers


def json_content(headers: Mapping[bytes, bytes], *, lenient: bool = False) -> bool:
    """Whether a body with these headers is read as JSON, by FastAPI's own rule (its content type parsed as
    ``email.message`` parses it: ``application/json`` or ``application/...+json``, parameters and odd
    whitespace aside), so that the gate and the route never read one body two ways. ``lenient`` (the
    ``/v1/moderate`` fast path): no content type, or any ``.../...json``, is JSON too."""
    value = headers.get(b"content-type")
    if not value:
        return lenient
    message = email.message.Message()
    message["content-type"] = value.decode("latin-1")
    if lenient:
        return message.get_content_type().endswith("json")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_json_body(model: type[_Model], body: bytes) -> _Model:
    """``body`` as a FastAPI route reads it, and its errors as FastAPI reports them (`RequestValidationError`
    under ``"body"``, or 400). The model's JSON validation first (`validate_json_body`: fast, and its Python
    validators let other threads in); where that fails, FastAPI's own way (`parse_json_body_as_fastapi`)."""
    request = validate_json_body(model, body)
    return request if request is not None else parse_json_body_as_fastapi(model, body)


def validate_json_body(model: type[_Model], body: bytes) -> _Model | None:
    """``body`` validated as ``model`` from its JSON; ``None`` when it is not valid so."""
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None


def parse_json_body_as_fastapi(model: type[_Model], body: bytes) -> _Model:
    """``body`` read as FastAPI reads it (`json.loads`, then validating the result), for FastAPI's errors or,
    rarely, what the JSON validation did not accept (a lone surrogate)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}
        raise RequestValidationError([error]) from None
    except Exception:  # noqa: BLE001 - what FastAPI answers for a body it cannot read (nested too deeply)
        raise HTTPException(400, "There was an error parsing the body") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _response(result: Any) -> Response:
    """What a route returned, as FastAPI would send it."""
    if isinstance(result, Response):
        return result
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json")
    return JSONResponse(result)


class Load:
    """What the server is doing now: requests in flight, stream sessions and turns per client address, and
    whether it is draining (shutting down: `shutdown.DrainingServer`)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_flight = 0
        self.streams = 0
        self.streams_by_client: Counter[str] = Counter()
        self.draining = False
        # Per client address: turns to send a request body, and turns to be served (see `ClientTurns`).
        # As many may wait as send: a request waiting for a body turn has sent its head, so its socket is not
        # idle and is never evicted for a newcomer; unbounded waiters let one address hold every socket.
        self.body_turns = ClientTurns(limits.max_bodies_per_client, max_waiting=limits.max_bodies_per_client)
        self.work_turns = ClientTurns(limits.requests_per_client, max_waiting=limits.requests_per_client)
        self._stream_freed: asyncio.Event | None = None  # set (and dropped) when a stream session's slot is given back

    def stream_slot_freed(self) -> asyncio.Event:
        """An event set when the next stream session's slot is given back."""
        if self._stream_freed is None:
            self._stream_freed = asyncio.Event()
        return self._stream_freed

    def free_stream_slot(self, client: str) -> None:
        """Give back a stream session's slot held by ``client``, waking the handshakes that wait for one."""
        self.streams -= 1
        self.streams_by_client[client] -= 1
        if self.streams_by_client[client] <= 0:
            del self.streams_by_client[client]
        if self._stream_freed is not None:
            self._stream_freed.set()
            self._stream_freed = None

    def readiness(self) -> dict[str, Any]:
        """For load balancers: whether a new request or stream session would be taken now."""
        requests_free = self.in_flight < self.limits.max_concurrency and not self.draining
        streams_free = self.streams < self.limits.streams and not self.draining
        return {
            "ready": requests_free and streams_free,
            "accepting_requests": requests_free,
            "accepting_streams": streams_free,
            "draining": self.draining,
        }


class Gate:
    """Pure ASGI middleware: auth, body limit, concurrency limits and request metrics, before FastAPI
    parses anything (so a 401 or 413 never costs a JSON parse)."""

    def __init__(
        self,
        app: Any,
        *,
        api_key: str | None,
        limits: Limits,
        load: Load,
        metrics: Metrics,
        service: Service | None = None,
        routes: Mapping[str, BodyRoute] | None = None,
    ) -> None:
        self.app = app
        self.service = service  # for the /v1/moderate fast path
        # Large bodies are parsed one at a time, and never beside a large stream frame (`_parse_large`).
        self.parsing = service.parsing if service is not None else ParseTurns()
        self.routes = dict(routes or {})  # for large bodies (`_off_loop`)
        self.api_key = api_key.encode() if api_key is not None else None
        self.limits = limits
        self.load = load
        self.metrics = metrics

    def _authorized(self, scope: Mapping[str, Any]) -> bool:
        if self.api_key is None:
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Awaitable[Any]], send: Callable[..., Awaitable[Any]]
    ) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        label = path if path in SERVED_PATHS else "other"
        # "done": what the request holds (its slot, its client's turn), each given back once, as its answer is
        # complete or when the request ends, whichever comes first (`_hold`).
        status_holder: dict[str, Any] = {"status": 500, "started": False, "complete": False, "done": []}
        start = time.perf_counter()
        load = self.load
        timeout = self.limits.request_timeout_s
        # When the answer must be out (`sent_within`): the body's deadline, then the request's. A client that
        # does not read it is cut off, its slot freed; it held a slot for as long as it kept its socket (rt65f F2).
        status_holder["sends_by"] = None if timeout is None else time.monotonic() + timeout

        async def send_recording(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Before the send: uvicorn's receive says http.disconnect once the response is complete,
                # which is no hang-up (`_while_connected`).
                status_holder["complete"] = True
                # The slot and turn are free before the last bytes go: a client that has its answer may send its next
                # request on this connection at once, and uvicorn serves it while this request's task still winds
                # down (a streamed answer's teardown takes a few turns of the loop): under load the next request
                # found the slot still taken, a 503 for a client one request at a time (the CI of 38d744a).
                for give_back in status_holder["done"]:
                    give_back()
            sends_by = status_holder["sends_by"]
            await sent_within(send(message), None if sends_by is None else sends_by - time.monotonic())

        def sent_within_head_deadline() -> None:
            # A refusal is a few hundred bytes: a client that has not taken it within the head deadline is cut off.
            # One that pipelines requests it never reads got 429 after 429 on a socket no limit counts (it holds no
            # turn, waits for no head, sends no body), each stuck in its send until the request deadline: one
            # address held every socket of the budget and other clients got 503 "too many connections" (rt67b F1).
            refuse_by = time.monotonic() + self.limits.head_timeout_s
            sends_by = status_holder["sends_by"]
            status_holder["sends_by"] = refuse_by if sends_by is None else min(sends_by, refuse_by)

        async def answer(response: Response, reason: str) -> None:
            self.metrics.rejected.labels(reason).inc()
            sent_within_head_deadline()
            await response(scope, receive, send_recording)

        try:
            if path in OPEN_PATHS:
                # The open paths hold no turn and no slot, so their answers are bounded as refusals are, and a
                # connection is served only a few pipelined (`_closing_when_behind`): GETs of /health pipelined by the
                # thousand and never read held every socket of the budget for the request deadline (rt68b F3). Not a
                # turn: a balancer probes /health from the address it forwards every client's requests from, and its
                # probe must not wait behind their work.
                sent_within_head_deadline()
                await self.app(scope, receive, _closing_when_behind(send_recording))
                return
            if not self._authorized(scope):
                await answer(
                    error_json(
                        401,
                        "missing or wrong API key (send 'Authorization: Bearer <key>')",
                        "authentication_error",
                        {"WWW-Authenticate": "Bearer"},
                    ),
                    "auth",
                )
                return
            headers = first_headers(scope)
            length = headers.get(b"content-length")
            if length is not None:
                # Blanks around the value are no part of it (RFC 9110's optional whitespace, which the HTTP parser
                # passes on after the digits): "56 " was refused as a body over the limit (rt64d F1).
                length = length.strip(b" \t")
                if not length.isdigit():
                    await answer(error_json(400, "invalid Content-Length", "invalid_request_error"), "bad_length")
                    return
                # A count longer than any limit is over it (no int() of thousands of digits, which Python refuses);
                # leading zeros are no part of its size (rt64k F3: "0000000000000000056" was a false 413)
                length = length.lstrip(b"0") or b"0"
                if len(length) > 18 or int(length) > self.limits.max_body_bytes:
                    await answer(self._too_big(), "body_size")
                    return
            # The body is received before the request takes one of the `max_concurrency` slots (which are for
            # work): a client that sends bodies a byte at a time holds its own turns to send, never the slots.
            client = client_address(scope)
            try:
                try:
                    body = await asyncio.wait_for(self._receive_in_turn(receive, client), self.limits.request_timeout_s)
                except asyncio.TimeoutError:
                    await answer(error_json(408, "request body arrived too slowly", "request_timeout"), "slow_client")
                    return
                except QueueFull:
                    limit = self.limits.max_bodies_per_client
                    await answer(
                        error_json(
                            429,
                            f"this client already sends {limit} request bodies (--max-bodies-per-client) and as many "
                            "more wait for a turn",
                            "rate_limit_exceeded",
                            {"Retry-After": "1", "Connection": "close"},
                        ),
                        "client_bodies",
                    )
                    return
                if body is None:
                    await answer(self._too_big(), "body_size")
                    return
                if load.in_flight >= self.limits.max_concurrency:
                    await answer(self._busy(), "overload")
                    return
                # One deadline from here: the wait for a turn counts against the work's time (`Service.time_left`),
                # and the answer is sent by it.
                sends_by = None if timeout is None else time.monotonic() + timeout
                REQUEST_DEADLINE.set(sends_by)
                REQUEST_CLIENT.set(client)
                status_holder["sends_by"] = sends_by  # the answer's too: from the body's deadline to the request's
                # One client address is served at most `requests_per_client` requests at once; its next ones
                # wait for one of its own to finish, so it cannot hold every slot and keep others out.
                try:
                    if not await self._work_turn(client, timeout, receive):
                        status_holder["status"] = 499  # the client hung up while it waited: nothing to answer
                        self.metrics.rejected.labels("client_gone").inc()
                        return
                    end_turn = _hold(status_holder, lambda: load.work_turns.release(client))
                    try:
                        served = await self._serve(
                            scope, receive, send_recording, answer, path, headers, body, status_holder
                        )
                        if not served:
                            status_holder["status"] = 499  # the client hung up while it was served: work stopped
                            self.metrics.rejected.labels("client_gone").inc()
                    finally:
                        end_turn()
                except NoTurn as exc:
                    why = (
                        "as many more already wait for a turn"
                        if isinstance(exc, QueueFull)
                        else "this one's turn did not come within the deadline"
                    )
                    await answer(
                        error_json(
                            429,
                            f"this client already has {self.limits.requests_per_client} requests being served "
                            f"(--max-requests-per-client) and {why}",
                            "rate_limit_exceeded",
                            # Closed after it: a client pipelining more requests than its turns gets one refusal
                            # and must come again on a socket the connection budget counts (rt67b F1).
                            {"Retry-After": "1", "Connection": "close"},
                        ),
                        "client_requests",
                    )
            except asyncio.CancelledError:
                # Cancelled at the end of a graceful shutdown (`DrainingServer`, past shutdown_timeout_s):
                # a 503 sends the check to another replica (HAProxy's retry-on, the client's retry), where
                # uvicorn would answer 500.
                if not load.draining or status_holder["started"]:
                    raise
                await answer(
                    error_json(
                        503,
                        "server shutting down: send the request to another replica",
                        "overloaded",
                        {"Retry-After": "0", "Connection": "close"},
                    ),
                    "draining",
                )
        except ClientStalled as exc:  # a refusal's or an answer's
            status_holder["status"] = 499  # its answer was never taken: nobody got it
            self.metrics.rejected.labels("client_stalled").inc()
            if exc.cut_off:
                await _until_gone(receive)  # uvicorn must know, or it answers the request again (a 500)
        finally:
            self.metrics.requests.labels(label, str(status_holder["status"])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)

    async def _work_turn(self, client: str, timeout: float | None, receive: Any) -> bool:
        """Take one of ``client``'s turns to be served (`NoTurn` when none comes); ``False`` when the client
        hung up while it waited. A request that waits is watched for the client leaving, so one that was
        given up on neither keeps its place (the client's retry would get 429) nor gets judged for nobody."""
        turns = self.load.work_turns
        if turns.free(client):
            await turns.acquire(client)
            return True
        taking = asyncio.ensure_future(turns.acquire(client, timeout))
        leaving = asyncio.ensure_future(receive())  # the body is in: what comes next is http.disconnect
        try:
            await asyncio.wait({taking, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if not taking.done() and leaving.result().get("type") != "http.disconnect":
                await taking  # not a hang-up (nothing else should come): wait for the turn alone
        except BaseException:
            taking.cancel()  # a turn handed over at this moment is passed on (`ClientTurns`)
            leaving.cancel()
            raise
        if taking.done() and not _hung_up(leaving):  # the turn came; a client seen gone at that moment is not served
            leaving.cancel()
            taking.result()  # raises NoTurn
            return True
        taking.cancel()
        with contextlib.suppress(asyncio.CancelledError, NoTurn):
            await taking
        if not taking.cancelled() and taking.exception() is None:
            turns.release(client)  # the turn came just as the client left
        return False

    @staticmethod
    async def _while_connected(receive: Any, serve: Callable[[Any], Awaitable[None]], sent: Mapping[str, Any]) -> bool:
        """``serve(rest)`` (``rest``: the request's channel after its body) while the connection is watched: a
        client that hangs up cancels it, its guard work stopped and its slot and turn freed at once (``False``);
        it judged on for nobody and another client got 503 meanwhile (rt56d F2). The watch is the one reader of
        ``receive`` now (the body is in: what comes next is http.disconnect); ``rest`` hands ``serve`` what it read."""
        leaving = asyncio.ensure_future(receive())
        await asyncio.sleep(0)  # a client already gone (uvicorn saw it leave) is read now: no work starts for it
        if _hung_up(leaving):
            return False

        async def rest() -> Any:
            return await asyncio.shield(leaving)  # a reader cancelled (Starlette's is_disconnected) leaves it be

        work = asyncio.ensure_future(serve(rest))
        try:
            await asyncio.wait({work, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done() and (sent["complete"] or not _hung_up(leaving)):
                await work  # the response was sent whole (or nothing came that says the client left)
        except BaseException:
            work.cancel()  # cancelled itself (a shutdown past its grace): the work ends first, its slot freed
            leaving.cancel()
            with contextlib.suppress(BaseException):
                await work
            raise
        if work.done():
            leaving.cancel()
            work.result()
            return True
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return False

    async def _serve(
        self,
        scope: Any,
        receive: Any,
        send: Any,
        answer: Any,
        path: str,
        headers: Mapping[bytes, bytes],
        body: bytes,
        sent: Mapping[str, Any],
    ) -> bool:
        """Serve a request whose body is in: in one of the ``max_concurrency`` slots, or 503 when all are taken.
        ``False`` when its client hung up meanwhile (`_while_connected`: the work was stopped)."""
        load = self.load
        if load.in_flight >= self.limits.max_concurrency:  # others took the last slots while this one waited
            await answer(self._busy(), "overload")
            return True
        if body and json.detect_encoding(body).startswith(("utf-16", "utf-32")):
            # json.loads reads UTF-16 and UTF-32 too, but the byte prechecks count ASCII keys: such a body was
            # parsed and rendered in full before its size was refused, at ten times the work (rt50b F6).
            message = "a request body must be JSON in UTF-8 (RFC 8259), not UTF-16 or UTF-32"
            await answer(error_json(400, message, "invalid_request_error"), "bad_encoding")
            return True
        # The slot is taken here, with no wait since the check above: requests arriving together never all pass it.
        load.in_flight += 1
        self.metrics.in_flight.inc()

        def free_slot() -> None:
            load.in_flight -= 1
            self.metrics.in_flight.dec()

        end_slot = _hold(sent, free_slot)
        try:
            return await self._while_connected(
                receive, lambda rest: self._work(scope, rest, send, answer, path, headers, body), sent
            )
        finally:
            end_slot()

    async def _work(
        self, scope: Any, receive: Any, send: Any, answer: Any, path: str, headers: Mapping[bytes, bytes], body: bytes
    ) -> None:
        """A served request's work, in its slot: a large body off the loop, `/v1/moderate`'s fast path, else the app."""
        route = self.routes.get(path)
        try:
            if (
                route is not None
                and len(body) > LARGE_BODY_BYTES
                and scope.get("method") == "POST"
                and route.reads(headers)
            ):
                asked = headers.get(b"x-request-id", b"").decode("latin-1") or None
                reply = await self._off_loop(route, path, body, client_address(scope), asked)
                await reply(scope, receive, send)
                return
            self._precheck(path, body)
        except LimitExceeded as exc:
            await answer(error_json(413, str(exc), "request_too_large"), "work_size")
            return
        fast = await self._moderate_fast(scope, headers, body) if path == "/v1/moderate" else None
        if fast is not None:
            await fast(scope, receive, send)
            return
        await self.app(scope, self._replay(body, receive), send)

    def _precheck(self, path: str, body: bytes) -> None:
        """Refuse (`LimitExceeded`) a body that cannot fit the limits, counted on its bytes before parsing it."""
        if path == "/v1/chat/completions":
            self.limits.precheck_one_conversation(body)
        elif path == "/v1/moderate":
            self.limits.precheck_content(body)

    async def _off_loop(self, route: BodyRoute, path: str, body: bytes, client: str, asked: str | None) -> Response:
        """A large body's request, answered as its route would answer it, with the CPU work on the body (the
        precheck, the parse and validation, the rendering and size checks) in a thread: the event loop
        meanwhile serves other requests, and /health. Raises `LimitExceeded` when the precheck refuses it."""
        try:
            request, work = await self._read_large(route, path, body, client)
            return _response(await route.answer(request, work, asked))
        except NoTurn:
            return self._busy()
        except ApiError as exc:
            return error_json(exc.status, exc.message, exc.kind, exc.headers)
        except RequestValidationError as exc:
            return validation_error_json(exc.errors())
        except HTTPException as exc:
            return error_json(exc.status_code, str(exc.detail), "http_error", exc.headers)

    async def _read_large(self, route: BodyRoute, path: str, body: bytes, client: str) -> tuple[Any, Any]:
        """A large body, prechecked, parsed (`parse_json_body`) and worked on (the route's rendering and size
        checks) in a thread (`ParseTurns.in_thread`), in one of `ParseTurns`' turns: one large body or stream frame at a time server-wide,
        the clients waiting taking turns. Each step holds the GIL for all of its run (1 MB of floats or nested
        lists padded under any key: 40-330 ms to parse; a tool call's 40,000 floats of arguments, 90 ms to render),
        so steps in several threads at once held the loop as long as steps on it; the loop runs between any two.
        The wait counts against the request's deadline (`NoTurn`: 503); a client that hangs up leaves the line."""

        def read() -> tuple[Any, Any]:
            self._precheck(path, body)
            request = validate_json_body(route.model, body)
            if request is None:  # FastAPI's way, for its errors
                request = parse_json_body_as_fastapi(route.model, body)
            return request, route.work(request)

        deadline = REQUEST_DEADLINE.get()
        # A client that hangs up meanwhile returns at once; the thread keeps the turn until it ends (`ParseTurns.in_thread`).
        return await self.parsing.in_thread(
            client, None if deadline is None else max(0.0, deadline - time.monotonic()), read
        )

    async def _moderate_fast(
        self, scope: Mapping[str, Any], headers: Mapping[bytes, bytes], body: bytes
    ) -> Response | None:
        """A well-formed ``POST /v1/moderate``, answered without FastAPI's routing, dependency solving and
        re-validation of the response: the same `Service.moderate`, in about half the time (0.21 vs 0.39 ms).
        ``None`` sends the request down the FastAPI route, which answers anything malformed the usual way."""
        if self.service is None or scope.get("method") != "POST":
            return None
        if not json_content(headers, lenient=True):
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

    async def _receive_in_turn(self, receive: Any, client: str) -> bytes | None:
        async with self.load.body_turns.turn(client):
            return await self._read_body(receive)

    @staticmethod
    def _busy() -> JSONResponse:
        return error_json(
            503, "server busy: too many concurrent requests", "overloaded", {"Retry-After": "1", "Connection": "close"}
        )

    def _too_big(self) -> JSONResponse:
        return error_json(413, f"request body exceeds {self.limits.max_body_bytes} bytes", "request_too_large")

    async def _read_body(self, receive: Any) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
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
            message: Mapping[str, Any] = await receive()  # then the real channel: it reports the disconnect
            return message

        return replay

    # -- WebSocket sessions ---------------------------------------------------------------------
    def _stream_refusal(self, scope: Mapping[str, Any], client: str) -> tuple[int, int, str, str, str] | None:
        """(HTTP status, close code, error type, message, metric reason) when a session must be refused."""
        if not self._authorized(scope):
            return 401, CLOSE_UNAUTHORIZED, "authentication_error", "missing or wrong API key", "auth"
        if self.load.draining:
            return (
                503,
                CLOSE_UNAVAILABLE,
                "overloaded",
                "server shutting down: open the session on another replica",
                "draining",
            )
        if self.load.streams >= self.limits.streams:
            return 503, CLOSE_UNAVAILABLE, "overloaded", "server busy: too many stream sessions", "overload"
        if self.load.streams_by_client[client] >= self.limits.streams_per_client:
            return (
                429,
                CLOSE_UNAVAILABLE,
                "rate_limit_exceeded",
                f"this client already holds {self.limits.streams_per_client} stream sessions",
                "client_streams",
            )
        return None

    async def _stream_refusal_after_wait(self, scope: Mapping[str, Any], client: str) -> tuple[Any, ...] | None:
        """`_stream_refusal`, waiting up to `STREAM_SLOT_WAIT_S` for a session slot when only slots are wanting.
        A client's close handshake is answered by the protocol before its session's task has read the close, so a
        client running sessions one after another could open the next one before the last gave its slot back and
        was refused now and then (rt67a F1, seen again in CI under load)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_SLOT_WAIT_S
        while True:
            refusal = self._stream_refusal(scope, client)
            left = deadline - loop.time()
            if refusal is None or refusal[4] not in ("overload", "client_streams") or left <= 0:
                return refusal
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin TimeoutError before 3.11
                await asyncio.wait_for(self.load.stream_slot_freed().wait(), left)

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        load = self.load
        client = client_address(scope)
        refusal = await self._stream_refusal_after_wait(scope, client)
        if refusal is not None:
            status, code, kind, message, reason = refusal
            self.metrics.rejected.labels(reason).inc()
            first = await receive()  # websocket.connect
            if first["type"] == "websocket.connect":
                # A draining replica: come back at once (through a balancer, to another one), as HTTP does.
                retry = "0" if reason == "draining" else "1"
                await _deny_handshake(scope, send, status, code, kind, message, retry)
            return
        load.streams += 1
        load.streams_by_client[client] += 1
        self.metrics.streams.inc()

        def free_slot() -> None:
            load.free_stream_slot(client)
            self.metrics.streams.dec()

        # The session's slot is given back once it is over for its client: its close sent, or the client's read,
        # as an HTTP request's is once its answer is complete. The client may open its next session at once, while
        # this one's task still winds down (the monitor's exit): a client running its sessions one after another
        # was refused 429 (one session a client) or 503 (one in all) now and then (rt67a F1).
        ended = _hold({"complete": False, "done": []}, free_slot)

        async def sending(message: Mapping[str, Any]) -> None:
            try:
                await send(message)
            finally:
                # Given back whether the close went out or found the client gone (a client that sent {"type":
                # "close"} and closed its socket: uvicorn answered its close frame, and this one raised; rt67s2 F1).
                if message["type"] == "websocket.close":
                    ended()

        async def receiving() -> Any:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                ended()
            return message

        try:
            await self.app(scope, receiving, sending)
        finally:
            ended()


async def _until_gone(receive: Any) -> None:
    """Read a cut-off request's channel until it says http.disconnect (what was left of its body before)."""
    while (await receive()).get("type") != "http.disconnect":
        pass


def _closing_when_behind(send: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """``send`` with ``Connection: close`` added to an answer that starts while the connection's earlier answers
    still wait in the server (`unsent_bytes`: the client does not take them), or after `OPEN_PATHS_PIPELINED` sent
    with more requests pipelined behind them (`pipelined_answers`; the buffers hold hundreds of small answers, each
    served at the loop's cost). The connection ends after it, the requests behind unanswered (a pipelining client
    sends them again, RFC 9112 9.3.2), and a closed connection whose client does not read is cut off within the
    head deadline, the first one the connection budget takes back."""

    async def closing_when_behind(message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start" and (unsent_bytes() or pipelined_answers() >= OPEN_PATHS_PIPELINED):
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)

    return closing_when_behind


def _hold(request: Mapping[str, Any], give_back: Callable[[], None]) -> Callable[[], None]:
    """``give_back`` run once: by the request's complete answer (its ``"done"`` list) or by the returned call,
    whichever comes first; a hold taken after the answer went out is given back by the call alone."""
    given = False

    def once() -> None:
        nonlocal given
        if not given:
            given = True
            give_back()

    if not request["complete"]:
        request["done"].append(once)
    return once


def _hung_up(leaving: asyncio.Future[Any]) -> bool:
    """Whether the watch of a request's channel read that the client left."""
    if leaving.cancelled() or not leaving.done() or leaving.exception() is not None:
        return False
    message: Mapping[str, Any] = leaving.result()
    return message.get("type") == "http.disconnect"


async def _deny_handshake(
    scope: Mapping[str, Any], send: Any, status: int, code: int, kind: str, message: str, retry_after: str
) -> None:
    """Refuse a WebSocket handshake with an honest HTTP status and a JSON error body, through the ASGI
    "websocket.http.response" extension where the server has it (uvicorn does); else close (HTTP 403)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": code})
        return
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    headers = [(b"content-type", b"application/json")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    elif status in (429, 503):
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
