"""`RemoteStream`: stream moderation sessions on a qwenguard server (``WS /v1/stream``).

``Guard.remote(url, model=..., stream=True)`` gives ``guard.stream(prompt)`` / ``guard.astream(prompt)``
monitors with the same contract as local streaming: ``feed(delta)`` returns the text safe to release
and raises `GuardViolation` (stage ``stream``) on a violation, ``finish()`` releases the rest, and
``released`` / ``text`` / ``decision`` / ``close()`` behave the same. The client's Policy travels
with the session (the server may pin its own; see the server's documentation).

One WebSocket per monitor (sessions are sticky to one server replica). Every call has a deadline: opening
the session (which screens the prompt) within ``Policy.timeout_for(Stage.PROMPT)``, each ``feed`` and
``finish`` within ``Policy.timeout_for(Stage.STREAM)`` (capped by ``RemoteStream(reply_timeout_s=...)``),
however slowly the server drips its bytes. When the server cannot be reached, fails or misses the
deadline, the client's ``Policy.on_error`` decides: fail closed raises `GuardUnavailable` (`GuardTimeout`
for a missed deadline); fail open releases the rest unchecked and records a flagged ``guard_error`` /
``timeout`` decision in ``monitor.decision``.

Cancellation (async): cancelling ``afeed``/``afinish`` never loses the exchange in flight; the next call
completes it first (`CancelSafeLane`). A sync call interrupted by ``KeyboardInterrupt`` closes the monitor.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

from ..errors import (
    GuardTimeout,
    GuardUnavailable,
    GuardViolation,
    MissingDependency,
    QwenGuardError,
    StreamClosed,
)
from ..formats.content import clean_text
from ..policy import Action, Decision
from ..streaming.cancel_safe import CancelSafeLane
from ..verdict import Risk, Stage, Verdict

__all__ = ["RemoteStream", "RemoteStreamMonitor", "AsyncRemoteStreamMonitor", "decision_from_dict", "stream_url"]

DEFAULT_OPEN_TIMEOUT_S = 5.0
DEFAULT_REPLY_TIMEOUT_S = 30.0
#: How long a graceful close waits for the server's close frame (a failed connection is aborted at once).
CLOSE_TIMEOUT_S = 1.0
#: Frames at least this big are sent under a watchdog: a peer that stops reading cannot block `send` forever.
WATCHDOG_FRAME_BYTES = 64 * 1024


def _websockets() -> Any:
    try:
        import websockets
    except ImportError as exc:  # pragma: no cover
        raise MissingDependency.for_extra("remote", "websockets") from exc
    return websockets


def stream_url(base_url: str) -> str:
    """``http://host:8000/v1`` → ``ws://host:8000/v1/stream`` (``https`` → ``wss``)."""
    url = base_url.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url[len("https://"):]
    elif url.startswith("http://"):
        url = "ws://" + url[len("http://"):]
    elif not url.startswith(("ws://", "wss://")):
        raise ValueError(f"base_url must be an http(s) or ws(s) URL, got {base_url!r}")
    if not url.endswith("/v1"):
        url += "/v1"
    return url + "/stream"


def decision_from_dict(data: Mapping[str, Any]) -> Decision:
    """Rebuild a `Decision` from ``Decision.to_dict()`` output (as the server sends it)."""
    verdict = None
    if data.get("risk") is not None:
        verdict = Verdict(Risk(data["risk"]), tuple(data.get("categories") or ()), data.get("refusal"),
                          latency_ms=float(data.get("latency_ms") or 0.0))
    return Decision(bool(data["allowed"]), Action(data["action"]), Stage(data["stage"]), str(data["reason"]),
                    verdict, data.get("error"), data.get("offset"), bool(data.get("cached", False)))


class RemoteStream:
    """The stream backend of a remote guard: opens monitors over ``WS {base_url}/stream``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                 reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S) -> None:
        self.url = stream_url(base_url)
        self.name = f"remote-stream:{self.url}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.open_timeout_s = open_timeout_s
        self.reply_timeout_s = reply_timeout_s

    def __repr__(self) -> str:
        return f"RemoteStream({self.url!r})"

    def open_remote_monitor(self, guard: Any, prompt: str | Sequence[Mapping[str, Any]], **options: Any) -> RemoteStreamMonitor:
        return RemoteStreamMonitor(self, guard, prompt, **options)

    def open_remote_async_monitor(self, guard: Any, prompt: str | Sequence[Mapping[str, Any]], **options: Any) -> AsyncRemoteStreamMonitor:
        return AsyncRemoteStreamMonitor(self, guard, prompt, **options)

    def close(self) -> None:  # connections belong to monitors
        pass


#: Monitor options a session may set; the server validates the values like a local monitor does.
SESSION_OPTIONS = ("holdback", "window", "screen_prompt", "check_every", "min_segment", "context")


class _Session:
    """The protocol logic, written once; the sync and async monitors only move frames."""

    def __init__(self, backend: RemoteStream, guard: Any, prompt: Any, **options: Any) -> None:
        unknown = sorted(set(options) - set(SESSION_OPTIONS))
        if unknown:
            raise TypeError(f"remote streams do not support options {unknown}; known: {list(SESSION_OPTIONS)}")
        if prompt is None:
            raise TypeError("prompt is None; pass the user's prompt or the conversation")
        self.backend = backend
        self.guard = guard
        self.policy = guard.policy
        self.text = ""
        self._released_parts: list[str] = []
        #: The violation (or fail-open guard error) that ended checking, else None.
        self.decision: Decision | None = None
        #: The prompt's Decision, as the server reported it.
        self.prompt_decision: Decision | None = None
        #: Allowed-but-flagged stream decisions (loose controversial, ignored categories).
        self.flags: list[Decision] = []
        self._tokens: list[dict[str, Any]] = []  # per-token verdicts, when the server has a Stream model
        self._state = "open"  # open | finished | closed | violated | failed
        self._degraded = False  # fail-open after a guard error: text passes unchecked
        # Opening screens the prompt (unless told not to): its budget and its failures are the prompt's.
        self._open_stage = Stage.PROMPT if options.get("screen_prompt", True) is not False else Stage.STREAM
        frame: dict[str, Any] = {"type": "open", "policy": guard.policy.to_dict(),
                                 **{k: v for k, v in options.items() if v is not None}}
        # The one content rule before anything leaves the process: a lone surrogate cannot even be
        # encoded for the wire, and the server judges exactly the text this monitor releases.
        if isinstance(prompt, str):
            frame["prompt"] = clean_text(prompt)
        else:
            frame["messages"] = [_clean_message(m) for m in prompt]
        self._open_frame = json.dumps(frame, ensure_ascii=False)

    # -- the monitor's read-only view -------------------------------------------------------
    @property
    def released(self) -> str:
        """All text released so far."""
        if len(self._released_parts) > 1:
            self._released_parts = ["".join(self._released_parts)]
        return self._released_parts[0] if self._released_parts else ""

    @property
    def held(self) -> str:
        """Text fed but not released yet."""
        return self.text[len(self.released):]

    @property
    def finished(self) -> bool:
        return self._state == "finished"

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def take_token_verdicts(self) -> list[dict[str, Any]]:
        """Per-token verdicts (as dicts) received since the last call; empty without a Stream model."""
        out, self._tokens = self._tokens, []
        return out

    def _release(self, text: str) -> str:
        if text:
            self._released_parts.append(text)
        return text

    # -- frames in --------------------------------------------------------------------------
    def _emit(self, decision: Decision) -> None:
        emit = getattr(self.guard, "_emit", None)
        if emit is not None:
            emit(decision)

    def _violation(self, reply: Mapping[str, Any]) -> GuardViolation:
        self.decision = decision_from_dict(reply["decision"])
        self._state = "violated"
        self._emit(self.decision)
        return GuardViolation(self.decision)

    def _absorb(self, reply: Mapping[str, Any]) -> None:
        self._tokens.extend(reply.get("tokens") or ())
        self.flags.extend(decision_from_dict(d) for d in reply.get("flags") or ())
        if reply.get("decision") and reply.get("type") != "violation":
            self.decision = decision_from_dict(reply["decision"])  # the server went on fail-open

    def _on_opened(self, raw: str | bytes) -> None:
        reply = self._parse(raw)
        if reply.get("prompt_decision"):
            self.prompt_decision = decision_from_dict(reply["prompt_decision"])
        if reply.get("type") == "violation":
            raise self._violation(reply)
        if reply.get("type") != "opened":
            raise self._server_error(reply)
        self._absorb(reply)

    def _on_reply(self, raw: str | bytes, expect: str) -> str:
        reply = self._parse(raw)
        self._absorb(reply)
        kind = reply.get("type")
        if kind == "violation":
            released = str(reply.get("released") or "")
            if released.startswith(self.released):
                self._release(released[len(self.released):])
            raise self._violation(reply)
        if kind != expect:
            raise self._server_error(reply)
        out = self._release(str(reply.get("text") or ""))
        if expect == "finished":
            self._state = "finished"
        return out

    def _parse(self, raw: str | bytes) -> dict[str, Any]:
        try:
            reply = json.loads(raw)
        except ValueError:
            raise GuardUnavailable("the stream server sent a frame that is not JSON") from None
        if not isinstance(reply, dict):
            raise GuardUnavailable("the stream server sent a frame that is not an object")
        return reply

    @staticmethod
    def _server_error(reply: Mapping[str, Any]) -> QwenGuardError:
        err = reply.get("error") if isinstance(reply.get("error"), Mapping) else {}
        kind, message = err.get("type", reply.get("type")), err.get("message", "unexpected frame")
        if kind == "invalid_request_error":
            return _BadRequest(f"stream server refused the session: {message}")
        return GuardUnavailable(f"stream server error ({kind}): {message}")

    # -- deadlines ----------------------------------------------------------------------------
    def _deadline(self, stage: Stage) -> _Deadline:
        """The budget of one call: the policy's for ``stage``, capped by the backend's reply timeout."""
        budgets = [b for b in (self.policy.timeout_for(stage), self.backend.reply_timeout_s) if b is not None]
        return _Deadline(min(budgets) if budgets else None)

    # -- failures and state -----------------------------------------------------------------
    def _fail(self, exc: BaseException, stage: Stage = Stage.STREAM, *, timed_out: bool = False) -> str:
        """A guard error: raise (fail closed) or go on unchecked (fail open). Returns text to release."""
        if isinstance(exc, _BadRequest):
            self._state = "closed"
            raise ValueError(str(exc)) from None
        timed_out = timed_out or isinstance(exc, (TimeoutError, asyncio.TimeoutError, GuardTimeout))
        decision = self.policy.decide_error(stage, exc, timeout=timed_out)
        self.decision = decision
        self._emit(decision)
        if not decision.allowed:
            self._state = "failed"
            cls = GuardTimeout if timed_out else GuardUnavailable
            raise cls(f"the stream guard failed and the policy fails closed: {exc}", decision) from exc
        self._degraded = True
        return self._release_unchecked()

    def _release_unchecked(self) -> str:
        return self._release(self.held)

    def _check_feedable(self) -> None:
        if self._state == "open":
            return
        if self._state == "violated" and self.decision is not None:
            raise GuardViolation(self.decision)
        if self._state == "failed" and self.decision is not None:
            raise GuardUnavailable(f"the stream guard failed and the policy fails closed: {self.decision.error}", self.decision)
        raise StreamClosed(f"this stream monitor is {self._state}; open a new one with guard.stream(...)")

    def _feed_frame(self, delta: str) -> str | None:
        """The frame for ``delta`` (``None`` when nothing is left of it); the text joins ``self.text``."""
        self._check_feedable()
        delta = clean_text(delta)
        if not delta:
            return None
        self.text += delta
        return json.dumps({"type": "feed", "text": delta}, ensure_ascii=False)

    def _errors(self) -> tuple[type[BaseException], ...]:
        """What a failed exchange raises: our own errors, socket and protocol errors, timeouts."""
        websockets = _websockets()
        return (QwenGuardError, OSError, TimeoutError, asyncio.TimeoutError, websockets.exceptions.WebSocketException)


def _check_delta(delta: object) -> str:
    if not isinstance(delta, str):
        raise TypeError(f"delta must be str, got {type(delta).__name__}")
    return delta


class _Deadline:
    """A point in time a call must be done by (``None``: no deadline)."""

    __slots__ = ("at",)

    def __init__(self, budget_s: float | None) -> None:
        self.at = None if budget_s is None else time.monotonic() + budget_s

    def left(self, cap: float | None = None) -> float | None:
        """Seconds left (at least a millisecond, so a zero never means "no timeout"), at most ``cap``."""
        if self.at is None:
            return cap
        left = max(0.001, self.at - time.monotonic())
        return left if cap is None else min(left, cap)

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


def _clean_message(message: Any) -> Any:
    if not isinstance(message, Mapping):
        return message  # the server refuses it with a clear error
    out = dict(message)
    if isinstance(out.get("content"), str):
        out["content"] = clean_text(out["content"])
    return out


class _BadRequest(QwenGuardError):
    """The server refused the session's parameters (a caller bug, not a guard outage)."""


class RemoteStreamMonitor(_Session):
    """Sync monitor over one WebSocket. Use as a context manager (``with guard.stream(p) as m:``)."""

    _ws: Any = None
    _opened = False

    def open(self) -> RemoteStreamMonitor:
        """Connect and screen the prompt (idempotent; ``__enter__`` and the first `feed` call it)."""
        if self._opened:
            return self
        self._opened = True
        from websockets.sync.client import connect

        stage = self._open_stage
        deadline = self._deadline(stage)
        try:
            # __enter__ marks the connection as managed here (websockets >= 17 warns otherwise);
            # this monitor closes it in close()/__exit__.
            self._ws = connect(self.backend.url, additional_headers=self.backend.headers,
                               open_timeout=deadline.left(self.backend.open_timeout_s),
                               close_timeout=CLOSE_TIMEOUT_S, max_size=None).__enter__()
            self._send(self._open_frame, deadline)
            self._on_opened(self._ws.recv(timeout=deadline.left()))
        except GuardViolation:
            self._close_ws()
            raise
        except self._errors() as exc:
            self._abort_ws()
            self._fail(exc, stage, timed_out=deadline.expired)
        except BaseException:
            self._abandon()
            raise
        return self

    def __enter__(self) -> RemoteStreamMonitor:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, frame: str, deadline: _Deadline) -> None:
        ws = self._ws
        if deadline.at is None or len(frame) < WATCHDOG_FRAME_BYTES:
            ws.send(frame)  # small frames fit the socket buffer: send does not block
            return
        watchdog = threading.Timer(deadline.left() or 0.0, _shutdown, (ws.socket,))
        watchdog.daemon = True
        watchdog.start()
        try:
            ws.send(frame)
        finally:
            watchdog.cancel()

    def _exchange(self, frame: str, expect: str) -> str:
        if self._degraded:
            return self._release_unchecked()
        deadline = self._deadline(Stage.STREAM)
        try:
            self._send(frame, deadline)
            return self._on_reply(self._ws.recv(timeout=deadline.left()), expect)
        except GuardViolation:
            self._close_ws()
            raise
        except self._errors() as exc:
            self._abort_ws()
            return self._fail(exc, timed_out=deadline.expired)
        except BaseException:
            self._abandon()
            raise

    def feed(self, delta: str) -> str:
        """Send ``delta``; return the text now safe to release. Raises `GuardViolation` on a violation."""
        delta = _check_delta(delta)
        self.open()
        frame = self._feed_frame(delta)
        return self._exchange(frame, "released") if frame is not None else ""

    def finish(self) -> str:
        """End of the stream: the rest of the text, once judged."""
        self.open()
        self._check_feedable()
        out = self._exchange(json.dumps({"type": "finish"}), "finished")
        self._state = "finished"
        self._close_ws()
        return out

    def wrap(self, deltas: Iterable[str]) -> Iterator[str]:
        """Yield the released text of each delta of ``deltas``, then the rest (stops on a violation)."""
        for delta in deltas:
            if out := self.feed(delta):
                yield out
        if out := self.finish():
            yield out

    def _abandon(self) -> None:
        """Interrupted mid-exchange (KeyboardInterrupt): where the protocol stands is unknown, so the
        monitor closes and releases nothing more."""
        if self._state == "open":
            self._state = "closed"
        self._abort_ws()

    def _close_ws(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _abort_ws(self) -> None:
        """Drop the connection without a closing handshake (the server misbehaved or failed)."""
        ws = self._ws
        if ws is not None:
            _shutdown(ws.socket)
            self._close_ws()

    def close(self) -> None:
        """Stop the session and close its WebSocket."""
        if self._state == "open":
            self._state = "closed"
        self._close_ws()


class AsyncRemoteStreamMonitor(_Session):
    """Async monitor over one WebSocket (``async with guard.astream(p) as m:``)."""

    _ws: Any = None
    _opened = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lane = CancelSafeLane()

    async def aopen(self) -> AsyncRemoteStreamMonitor:
        """Async twin of `RemoteStreamMonitor.open`."""
        if not self._opened:
            await self._lane.run("open", self._open_work)
        return self

    async def _open_work(self) -> str:
        if self._opened:
            return ""
        self._opened = True
        from websockets.asyncio.client import connect

        async def handshake() -> str | bytes:
            self._ws = await connect(self.backend.url, additional_headers=self.backend.headers,
                                     open_timeout=self.backend.open_timeout_s, close_timeout=CLOSE_TIMEOUT_S,
                                     max_size=None)
            await self._ws.send(self._open_frame)
            return await self._ws.recv()

        stage = self._open_stage
        deadline = self._deadline(stage)
        try:
            self._on_opened(await asyncio.wait_for(handshake(), deadline.left()))
        except GuardViolation:
            await self._aclose_ws()
            raise
        except self._errors() as exc:
            self._abort_ws()
            if self._state != "closed":  # closed meanwhile: nothing to decide
                self._fail(exc, stage, timed_out=deadline.expired)
        return ""

    async def __aenter__(self) -> AsyncRemoteStreamMonitor:
        return await self.aopen()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _aexchange(self, frame: str, expect: str) -> str:
        if self._degraded:
            return self._release_unchecked()
        ws = self._ws

        async def exchange() -> str | bytes:
            await ws.send(frame)
            return await ws.recv()

        deadline = self._deadline(Stage.STREAM)
        try:
            return self._on_reply(await asyncio.wait_for(exchange(), deadline.left()), expect)
        except GuardViolation:
            await self._aclose_ws()
            raise
        except self._errors() as exc:
            self._abort_ws()
            if self._state == "closed":  # closed while the exchange ran: nothing more is released
                return ""
            return self._fail(exc, timed_out=deadline.expired)

    async def afeed(self, delta: str) -> str:
        """Async twin of `RemoteStreamMonitor.feed`."""
        delta = _check_delta(delta)
        return await self._lane.run("feed", lambda: self._feed_work(delta))

    async def _feed_work(self, delta: str) -> str:
        await self._open_work()
        frame = self._feed_frame(delta)
        return await self._aexchange(frame, "released") if frame is not None else ""

    async def afinish(self) -> str:
        """Async twin of `RemoteStreamMonitor.finish`."""
        return await self._lane.run("finish", self._finish_work)

    async def _finish_work(self) -> str:
        await self._open_work()
        self._check_feedable()
        out = await self._aexchange(json.dumps({"type": "finish"}), "finished")
        if self._state == "closed":
            return ""
        self._state = "finished"
        await self._aclose_ws()
        return out

    async def awrap(self, deltas: AsyncIterable[str] | Iterable[str]) -> AsyncIterator[str]:
        """Async twin of `RemoteStreamMonitor.wrap`."""
        if isinstance(deltas, AsyncIterable):
            async for delta in deltas:
                if out := await self.afeed(delta):
                    yield out
        else:
            for delta in deltas:
                if out := await self.afeed(delta):
                    yield out
        if out := await self.afinish():
            yield out

    async def _aclose_ws(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                await ws.close()
            except Exception:  # noqa: BLE001
                pass

    def _abort_ws(self) -> None:
        ws, self._ws = self._ws, None
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def aclose(self) -> None:
        """Stop the session and close its WebSocket. An exchange still in flight is abandoned."""
        if self._state == "open":
            self._state = "closed"
        if self._lane.busy:
            self._abort_ws()  # the exchange in flight sees the monitor closed and releases nothing
        else:
            await self._aclose_ws()

    def close(self) -> None:
        """Mark the session stopped and drop its connection (use `aclose` for a graceful close)."""
        if self._state == "open":
            self._state = "closed"
        self._abort_ws()


def _shutdown(sock: Any) -> None:
    """Shut a socket down: any call blocked on it returns at once with an error."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass
