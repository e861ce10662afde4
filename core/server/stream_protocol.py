"""``WS /v1/stream``: the remote stream moderation session protocol (the StreamMonitor contract over a
WebSocket), its frames and its close codes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from ..errors import GuardTimeout, GuardViolation, InputTooLarge, QwenGuardError
from ..formats.content import clean_text
from ..formats.prompts import normalize_messages
from ..policy import Decision, quoted
from ..streaming.debounce import DEFAULT_WINDOW
from ..streaming.monitor_core import DEFAULT_CHECK_EVERY, DEFAULT_CONTEXT, DEFAULT_MIN_SEGMENT
from ..verdict import Risk
from .connections import ClientStalled, abort_connection_later, sent_within
from .limits import LARGE_BODY_BYTES, LimitExceeded, Limits
from .schemas import ApiError, Message, client_error, error_text
from .service import Service, judged_within, too_large_message
from .turns import NoTurn, client_address

T = TypeVar("T")

logger = logging.getLogger("qwenguard.server")

# WebSocket close codes of /v1/stream. 1000 also ends a session after a violation event.
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_IDLE_TIMEOUT = 4408
CLOSE_UNAVAILABLE = 4503

#: How long an ended session's socket waits for the client to answer its close (the closing handshake, a round trip)
#: before it is cut off. Its slot was given back as the close was sent, and a socket kept a head deadline for an
#: answer that never came let one address hold every socket of --max-connections with ended sessions (rt68b F2).
CLOSE_LINGER_S = 1.0


class SessionEnd(Exception):
    def __init__(self, code: int, message: str = "", kind: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.kind = code, message, kind


async def stream_session(ws: WebSocket, service: Service) -> None:
    """One remote stream moderation session (the StreamMonitor contract over a WebSocket).

    Client → server (JSON text frames)::

        {"type": "open", "messages": [...] | "prompt": "...", "policy": {...}, "holdback": 4, ...}  first
        {"type": "feed", "text": "next delta"}
        {"type": "finish"}                        (or {"type": "close"} to abandon the stream)

    ``open`` takes the local monitor's options (holdback, window, screen_prompt, check_every,
    min_segment, context) and an optional ``policy`` (``Policy.to_dict()``), which can only make the
    server's policy stricter (`Policy.tightened`; the operator's policy is pinned). A client may lower
    ``window`` (the stop rule) and raise ``min_segment`` (fewer window checks), not the other way; what
    one Gen window check reads (``check_every``, ``context``) is the server's (close 4400 otherwise).
    Server → client: ``{"type": "opened", "prompt_decision": ...}``; one ``{"type": "released",
    "text": ...}`` per feed; ``{"type": "finished", "text": ...}``; or ``{"type": "violation",
    "decision": {...}, "released": <all text released>}`` and the session ends. Frames may also carry
    ``"tokens"`` (per-token verdicts, when the server has a Stream model), ``"flags"`` (allowed but
    flagged decisions: at most `MAX_FLAGS_PER_FRAME` a frame, ``"flags_omitted"`` counting the rest) and
    ``"decision"`` (the guard failed and the policy fails open).

    Limits (the server's `Limits`): the ``open`` frame must come within ``head_timeout_s``; a session
    that feeds no text for ``stream_idle_timeout_s`` (empty feeds do not count) or lives longer than
    ``stream_max_session_s`` is closed 4408; the prompt (``max_messages``) and the prompt plus all text
    fed (``max_chars``) are bounded, and so is each frame (``max_body_bytes``), past which 1009; so are the
    guard windows a session's checks plan (the stream's bound, `formats.windows.StreamPieces`: a stream of
    label lines), past which 1009 too, with nothing more released.
    Text is cleaned by the content rule (`clean_text`) before the guard sees it, so what is released
    is the cleaned text.

    Every frame the server sends must be taken within the session's time: its lifetime left, and never
    longer than ``stream_idle_timeout_s``; a client that stops reading is cut off there (the socket reset,
    its slot freed), the error frame and close included.

    Close codes: 1000 done (also after a violation), 1009 too big, 4400 bad request, 4408 idle or
    too long, 4503 guard unavailable, 1011 internal error; an error frame ``{"type": "error",
    "error": {...}}`` precedes every error close (with 4503, ``error.type`` is ``"timeout"`` when the guard
    missed its deadline, else ``"guard_unavailable"``).
    """
    await ws.accept()
    monitor: Any = None
    opener: Any = None
    clock = _Clock(service)
    inbox = _Inbox(ws)
    try:
        guard, prompt, options = await _receive(
            inbox, service, clock.open_wait(), client_address(ws.scope), lambda raw: _opened(service, raw)
        )
        chars = _Budget(service, prompt)
        try:
            opener = guard.astream(prompt, **options)
            # The prompt's check (unless it runs beside the answer) is watched like any work: a client that
            # hangs up mid-check stops it and frees its slot at once (rt56d F1: it judged on for nobody).
            monitor = await inbox.work(opener.__aenter__(), clock.lifetime_left())
        except GuardViolation as v:
            service.metrics.decision(v.decision)
            await _send(
                ws,
                clock,
                {
                    "type": "violation",
                    "decision": wire_decision(v.decision),
                    "released": "",
                    "prompt_decision": wire_decision(v.decision),
                },
            )
            raise SessionEnd(CLOSE_NORMAL) from None
        except InputTooLarge as exc:  # a prompt past the guard's window bound: 1009, as a feed past it (rt70d F2)
            raise _too_big(exc) from exc
        except QwenGuardError as exc:  # before ValueError: a VerdictParseError is one, and its message stays here
            raise _unavailable(exc) from exc
        except (TypeError, ValueError, OverflowError) as exc:  # Overflow: a holdback of 10**30
            raise SessionEnd(CLOSE_BAD_REQUEST, str(exc), "invalid_request_error") from exc
        report = _Report(monitor)
        await _send(ws, clock, {"type": "opened", **report.update()})
        clock.progress()
        while True:
            msg = await _receive(inbox, service, clock.next_wait(), client_address(ws.scope), _later_frame(service))
            kind = msg.get("type")
            try:
                if kind == "feed":
                    text = msg.get("text")
                    if not isinstance(text, str):
                        raise SessionEnd(CLOSE_BAD_REQUEST, "feed needs a string 'text'", "invalid_request_error")
                    text = clean_text(text, keep_lone_cr=True)  # a last CR may be half a CRLF: the monitor holds it
                    chars.spend(len(text))
                    if text:
                        clock.progress()
                    released = await inbox.work(monitor.afeed(text), clock.lifetime_left())
                    await _send(ws, clock, {"type": "released", "text": released, **report.update()})
                elif kind == "finish":
                    released = await inbox.work(monitor.afinish(), clock.lifetime_left())
                    await _send(ws, clock, {"type": "finished", "text": released, **report.update()})
                    raise SessionEnd(CLOSE_NORMAL)
                elif kind == "close":
                    raise SessionEnd(CLOSE_NORMAL)
                else:
                    raise SessionEnd(CLOSE_BAD_REQUEST, f"unknown frame type {quoted(kind)}", "invalid_request_error")
            except GuardViolation as v:
                service.metrics.decision(v.decision)
                await _send(
                    ws,
                    clock,
                    {
                        "type": "violation",
                        "decision": wire_decision(v.decision),
                        "released": monitor.released,
                        **report.update(final=True),
                    },
                )
                raise SessionEnd(CLOSE_NORMAL) from None
            except InputTooLarge as exc:  # over the operator's bound on the session's guard windows: refused
                raise _too_big(exc) from exc
            except QwenGuardError as exc:
                raise _unavailable(exc) from exc
    except SessionEnd as end:
        if end.code == CLOSE_TOO_BIG:  # counted as /v1/moderate counts its 413: the work asked was past the limits
            service.metrics.rejected.labels("work_size").inc()
        if not await _goodbye(ws, clock, end.code, None if end.code == CLOSE_NORMAL else (end.message, end.kind)):
            service.metrics.rejected.labels("client_stalled").inc()
    except WebSocketDisconnect:
        pass  # the client left mid-stream: release the monitor below
    except ClientStalled:  # cut off for not reading, counted as the HTTP routes count it (rt65n F3)
        service.metrics.rejected.labels("client_stalled").inc()
    except Exception as exc:  # noqa: BLE001 - one broken session must not take the server down
        logger.warning("stream session failed: %s", type(exc).__name__)
        if not await _goodbye(ws, clock, CLOSE_INTERNAL, ("internal error", "internal_error")):
            service.metrics.rejected.labels("client_stalled").inc()
    finally:
        inbox.close()
        if opener is not None:
            try:
                await opener.__aexit__(None, None, None)
            except Exception:  # noqa: BLE001 - the monitor may already have raised its violation
                pass


def _too_big(exc: InputTooLarge) -> SessionEnd:
    """Close 1009: the session's text is past a guard limit (said as `/v1/moderate` says it: `too_large_message`)."""
    return SessionEnd(CLOSE_TOO_BIG, too_large_message(exc), "request_too_large")


def wire_decision(decision: Decision) -> dict[str, Any]:
    """A decision as a frame carries it: `Decision.to_dict`, its guard error by type only, as `/v1/moderate` sends
    it (`client_error`). The message can hold the model's raw output or an upstream's address (rt70d F1)."""
    out = decision.to_dict()
    out["error"] = client_error(decision.error)
    return out


def _unavailable(exc: QwenGuardError) -> SessionEnd:
    """Close 4503: the guard could not answer; a missed deadline says so (the client flags "timeout")."""
    kind = "timeout" if isinstance(exc, GuardTimeout) else "guard_unavailable"
    return SessionEnd(CLOSE_UNAVAILABLE, f"guard unavailable: {type(exc).__name__}", kind)


def _open_args(service: Service, msg: Mapping[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    unknown = sorted(str(k) for k in msg if k not in _OPEN_KEYS)
    if unknown:  # refused, not dropped: a misspelt "policy" would leave a client's stricter policy out unsaid
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise SessionEnd(CLOSE_BAD_REQUEST, f"open takes no field {shown}", "invalid_request_error")
    guard = copy.copy(service.guard)  # shares backends and cache; this session's policy and listeners are its own
    # Its decisions counted as the HTTP routes count their checks: a session's verdicts and guard errors (its 4503
    # closes) never reached /metrics (rt66f F2).
    guard.listeners = [*guard.listeners, service.metrics.heard]
    if msg.get("policy") is not None:
        try:
            guard.policy = service.policy_for(msg["policy"])
        except ApiError as exc:
            raise SessionEnd(CLOSE_BAD_REQUEST, exc.message, exc.kind) from exc
    if "messages" in msg and "prompt" in msg:
        raise SessionEnd(CLOSE_BAD_REQUEST, "open takes 'prompt' or 'messages', not both", "invalid_request_error")
    if "messages" in msg:
        prompt: Any = msg["messages"]
        if isinstance(prompt, list):
            _check(service.limits.check_messages, prompt)
        try:
            # The routes' message schema: tool calls judged as the assistant's actions, any other field with
            # a value refused rather than dropped unjudged.
            if isinstance(prompt, list):
                prompt = _judged_turns(service, prompt)
            prompt = normalize_messages(prompt)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise SessionEnd(
                CLOSE_BAD_REQUEST, f"invalid message: {where}: {first['msg']}", "invalid_request_error"
            ) from None
        except (TypeError, ValueError) as exc:
            raise SessionEnd(CLOSE_BAD_REQUEST, str(exc), "invalid_request_error") from exc
        # Lone CRs kept: the prompt is checked whole, read as a terminal shows it too, as check_prompt reads it.
        prompt = [{"role": m["role"], "content": clean_text(m["content"], keep_lone_cr=True)} for m in prompt]
    elif isinstance(msg.get("prompt"), str):
        prompt = clean_text(msg["prompt"], keep_lone_cr=True)
    else:
        raise SessionEnd(
            CLOSE_BAD_REQUEST, "open needs 'prompt' (a string) or 'messages' (a list)", "invalid_request_error"
        )
    # Values are checked by the monitor itself (ValueError/TypeError: close 4400), as for local streams.
    options = {k: msg[k] for k in _SESSION_OPTIONS if k in msg}
    options["max_windows_in_flight"] = service.limits.stream_max_windows_in_flight  # the operator's, not the client's
    if "screen_prompt" in options and not isinstance(options["screen_prompt"], bool):
        raise SessionEnd(CLOSE_BAD_REQUEST, "screen_prompt must be true or false", "invalid_request_error")
    for name, server, lower_ok, raise_ok, why in _CLIENT_BOUNDS:
        value = options.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            if (value < server and not lower_ok) or (value > server and not raise_ok):
                raise SessionEnd(
                    CLOSE_BAD_REQUEST, f"{name}={quoted(value)}: {why.format(server)}", "invalid_request_error"
                )
    return guard, prompt, options


#: Session options a client may move only one way from the server's, or not at all:
#: (name, the server's, may lower, may raise, why).
_CLIENT_BOUNDS = (
    # The stop rule is part of what the operator's policy blocks: a longer run of unsafe tokens before a
    # stop would loosen it (a huge one switches the Stream model's stops off).
    (
        "window",
        DEFAULT_WINDOW,
        True,
        False,
        "a client may only make the stop rule stricter (1 to {} consecutive flagged tokens, the server's rule)",
    ),
    # What one Gen window check reads is the server's. Less context has each check judge its segment nearly
    # alone (context 0: "Mix ammonium" fed in two segments was never seen whole, and the answer went out);
    # shorter segments multiply the checks (check_every 1: one check per character, 146 times the text
    # judged); more of either has every check read more (a billion characters of context: the whole answer
    # so far, a thousand times the work).
    (
        "check_every",
        DEFAULT_CHECK_EVERY,
        False,
        False,
        "each window check judges segments of at most {} characters, the server's; a client may not change it",
    ),
    (
        "context",
        DEFAULT_CONTEXT,
        False,
        False,
        "each window check shows {} characters of earlier text, the server's; a client may not change it",
    ),
    # Shorter segments closed at sentence ends would multiply the checks; longer ones only join sentences.
    (
        "min_segment",
        DEFAULT_MIN_SEGMENT,
        False,
        True,
        "a client may only make window checks fewer (min_segment of at least {}, the server's)",
    ),
)


def _judged_turns(service: Service, messages: list[Any]) -> list[dict[str, str]]:
    """The ``open`` frame's messages as the guard reads them, rendering no further than the session's ``max_chars``
    (`judged_within`: a tool call of thousands of floats is refused after that many characters), each validated
    as it comes."""
    validated = (Message.model_validate(m) for m in messages)
    try:
        return judged_within(service.limits, validated, service.limits.max_chars, "the stream session")[0]
    except LimitExceeded as exc:
        raise SessionEnd(CLOSE_TOO_BIG, str(exc), "request_too_large") from exc


def _check(check: Any, *args: Any) -> None:
    try:
        check(*args)
    except LimitExceeded as exc:
        raise SessionEnd(CLOSE_TOO_BIG, str(exc), "request_too_large") from exc


class _Budget:
    """Characters a session may carry: its prompt and every delta fed, together (``max_chars``)."""

    def __init__(self, service: Service, prompt: Any) -> None:
        self.limits = service.limits
        self.used = len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)
        _check(self.limits.check_chars, self.used, "the stream session")

    def spend(self, chars: int) -> None:
        self.used += chars
        _check(self.limits.check_chars, self.used, "the stream session")


class _Clock:
    """A session's deadlines: the ``open`` frame, idleness (time since text last arrived), lifetime."""

    def __init__(self, service: Service) -> None:
        limits = service.limits
        self.started = self.last_text = time.monotonic()
        self.open_timeout = limits.head_timeout_s
        self.idle = limits.stream_idle_timeout_s
        self.lifetime = limits.stream_max_session_s

    def progress(self) -> None:
        self.last_text = time.monotonic()

    def open_wait(self) -> tuple[float, str]:
        wait = self.open_timeout if self.idle is None else min(self.open_timeout, self.idle)
        return wait, f"no 'open' frame within {wait} s"

    def lifetime_left(self) -> tuple[float | None, str]:
        """How long the session's work may still run (its lifetime applies while the guard works too)."""
        if self.lifetime is None:
            return None, ""
        left = self.started + self.lifetime - time.monotonic()
        return max(left, 0.0), f"stream session lasted its limit of {self.lifetime} s"

    def send_wait(self) -> float | None:
        """How long one frame to the client may wait to go out: the lifetime left, never longer than the idle
        timeout. A client that stopped reading held its session past both limits, in the send (rt65f F1)."""
        waits = [] if self.idle is None else [self.idle]
        if self.lifetime is not None:
            waits.append(max(self.started + self.lifetime - time.monotonic(), 0.0))
        return min(waits) if waits else None

    def next_wait(self) -> tuple[float | None, str]:
        """How long the next frame may take to come, and why; negative once the deadline passed (how long ago)."""
        now = time.monotonic()
        waits: list[tuple[float, str]] = []
        if self.idle is not None:
            waits.append((self.last_text + self.idle - now, f"no text fed for {self.idle} s"))
        if self.lifetime is not None:
            waits.append((self.started + self.lifetime - now, f"stream session lasted its limit of {self.lifetime} s"))
        if not waits:
            return None, ""
        return min(waits)  # negative once passed: how long ago (`_Inbox.receive` refuses frames kept since)


_SESSION_OPTIONS = ("holdback", "window", "screen_prompt", "check_every", "min_segment", "context")
#: Every field an open frame may hold.
_OPEN_KEYS = frozenset(("type", "prompt", "messages", "policy", *_SESSION_OPTIONS))


def token_verdict_dict(token: Any) -> dict[str, Any]:
    """A per-token verdict of a Stream model (`TransformersStream.TokenVerdict`) as JSON."""
    probs = getattr(token, "probs", None) or {}
    return {
        "token": getattr(token, "token", None),
        "index": getattr(token, "index", None),
        "risk": Risk(token.risk).value,
        "category": getattr(token, "category", None),
        "probs": {Risk(r).value: round(float(p), 6) for r, p in probs.items()},
        "start": getattr(token, "start", None),
        "end": getattr(token, "end", None),
    }


#: Flags one frame reports at most (about 250 KB); the rest are counted (``flags_omitted``). A Stream model
#: flags every run of two non-safe tokens, so one large feed of controversial text under a policy that allows
#: it could fill a frame past what a client accepts (4 MiB by default) and fail a healthy session.
MAX_FLAGS_PER_FRAME = 1024


class _Report:
    """What a session reports beyond released text: new per-token verdicts, new flags, and a
    fail-open guard error (``decision`` of an allowed monitor)."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor
        self.flags_sent = 0
        self.decision_sent = False
        self.prompt_sent = False

    def update(self, *, final: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        take = getattr(self.monitor, "take_token_verdicts", None)
        tokens = take() if take is not None else []
        if tokens:
            out["tokens"] = [token_verdict_dict(t) for t in tokens]
        flags = getattr(self.monitor, "flags", [])
        if len(flags) > self.flags_sent:
            new = flags[self.flags_sent :]
            out["flags"] = [wire_decision(d) for d in new[:MAX_FLAGS_PER_FRAME]]
            if len(new) > MAX_FLAGS_PER_FRAME:
                out["flags_omitted"] = len(new) - MAX_FLAGS_PER_FRAME
            self.flags_sent = len(flags)
        # The prompt's decision, once there is one: at `opened` when the prompt is screened first, in a later
        # frame when it is screened beside the answer (`Guard(parallel_input=True)`). A client that failed over
        # before it came screens the prompt again on the next replica.
        prompt_decision = getattr(self.monitor, "prompt_decision", None)
        if prompt_decision is not None and not self.prompt_sent:
            out["prompt_decision"] = wire_decision(prompt_decision)
            self.prompt_sent = True
        decision = getattr(self.monitor, "decision", None)
        if decision is not None and not final and not self.decision_sent:
            out["decision"] = wire_decision(decision)
            self.decision_sent = True
        return out


class _Inbox:
    """The client's frames, read one at a time, also while the guard works on the last one: a client that
    hangs up mid-work stops that work at once (its slot freed). Frames that arrive meanwhile are kept for the
    next `receive`, up to `FRAMES_AHEAD`, and the socket is read on behind them: a hang-up behind a frame sent
    ahead ends the work too (it went unread until the work was done: 11-14 s for nobody, rt50b F5). Past that
    many, the socket waits (the client's sends wait with it) until the session catches up."""

    #: Frames kept while the guard works (each at most ``--max-body-bytes``).
    FRAMES_AHEAD = 2

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._next: asyncio.Future[Any] | None = None
        self._ahead: collections.deque[tuple[float, Any]] = collections.deque()  # (when it came, the message)

    def _reading(self) -> asyncio.Future[Any]:
        if self._next is None:
            self._next = asyncio.ensure_future(self.ws.receive())
        return self._next

    async def receive(self, wait: tuple[float | None, str]) -> Any:
        """The next ASGI message; `SessionEnd` 4408 past ``wait``'s timeout."""
        timeout, why = wait
        if self._ahead:
            # A frame kept while the guard worked counts as it came: one that came past the wait is refused, or a
            # client sending empty feeds back to back always had one kept and its session outlived both limits
            # (rt65f); one that came in time is the client's, however long the work took (rt65n F1: a feed sent on
            # time was refused as idle after a Stream model slower than the idle timeout, and the finish with it).
            came, message = self._ahead.popleft()
            if timeout is not None and came > time.monotonic() + timeout:
                raise SessionEnd(CLOSE_IDLE_TIMEOUT, why, "timeout")
            return message
        if timeout is not None and timeout <= 0:
            raise SessionEnd(CLOSE_IDLE_TIMEOUT, why, "timeout")
        reading = self._reading()
        done, _ = await asyncio.wait({reading}, timeout=timeout)
        if not done:
            raise SessionEnd(CLOSE_IDLE_TIMEOUT, why, "timeout")
        self._next = None
        return reading.result()

    async def work(self, job: Any, deadline: tuple[float | None, str]) -> Any:
        """Await the guard's ``job`` while watching the socket: a disconnect cancels it
        (`WebSocketDisconnect`), and so does the session's ``deadline`` (`SessionEnd` 4408)."""
        timeout, why = deadline
        task = asyncio.ensure_future(job)
        ends = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if ends is None else max(ends - time.monotonic(), 0.0)
                reading = self._reading() if len(self._ahead) < self.FRAMES_AHEAD else None
                waiting = {task} if reading is None else {task, reading}
                done, _ = await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    return task.result()
                if not done:
                    raise SessionEnd(CLOSE_IDLE_TIMEOUT, why, "timeout")
                assert reading is not None
                self._next = None
                message = reading.result()  # a frame came first: kept for `receive`, unless it is the end
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                self._ahead.append((time.monotonic(), message))
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def close(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.cancel()


# A frame after 'open' holds its type and, for a feed, the text; nothing else is read. Anything else (padding
# a session never reads and no budget counts: 1 MB of nested lists is a second of parsing on the loop) is
# refused before it is parsed: the frame must match this shape, checked in one linear scan.
_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_FRAME_PAIR = rf'[ \t\n\r]*"(?:type|text)"[ \t\n\r]*:[ \t\n\r]*{_JSON_STRING}[ \t\n\r]*'
_PLAIN_FRAME = re.compile(rf"[ \t\n\r]*\{{(?:{_FRAME_PAIR}(?:,{_FRAME_PAIR})*|[ \t\n\r]*)\}}[ \t\n\r]*", re.DOTALL)


async def _receive(
    inbox: _Inbox, service: Service, wait: tuple[float | None, str], client: str, read: Callable[[str], T]
) -> T:
    """The next frame, as ``read`` takes it (`_opened`, `_later_frame`). A large one is read off the loop, as the
    HTTP routes read large bodies, in one of `ParseTurns`' turns: its JSON parse, and an open frame's messages
    and policy (validated, tool calls rendered: 90 ms for 40,000 floats of arguments), hold the GIL for all of
    their run, so reads in several threads at once held the loop as long as reads on it."""
    message = await inbox.receive(wait)
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text")
    if raw is None:
        raise SessionEnd(CLOSE_BAD_REQUEST, "frames must be JSON text", "invalid_request_error")
    if len(raw) <= LARGE_BODY_BYTES:
        return read(raw)
    try:
        # Watched: a client that hangs up while its frame waits for a turn or is read ends the session at once.
        work = service.parsing.in_thread(client, service.request_timeout_s, read, raw)
        result: T = await inbox.work(work, (None, ""))
        return result
    except NoTurn:
        raise SessionEnd(CLOSE_UNAVAILABLE, "server busy: too many large frames waiting", "overloaded") from None


def _opened(service: Service, raw: str) -> tuple[Any, Any, dict[str, Any]]:
    """The open frame's guard, prompt and session options (`_open_args`)."""
    msg = _read_frame(raw, service.limits, True)
    if msg.get("type") != "open":
        raise SessionEnd(CLOSE_BAD_REQUEST, "the first frame must be {'type': 'open', ...}", "invalid_request_error")
    return _open_args(service, msg)


def _later_frame(service: Service) -> Callable[[str], dict[str, Any]]:
    return lambda raw: _read_frame(raw, service.limits, False)


def _read_frame(raw: str, limits: Limits, first: bool) -> dict[str, Any]:
    """One frame's JSON object, checked before it is parsed: its size, the open frame's messages (counted),
    a later frame's shape (`_PLAIN_FRAME`). `SessionEnd` when it is refused."""
    max_bytes = limits.max_body_bytes
    encoded = raw.encode("utf-8", "surrogatepass")
    if len(encoded) > max_bytes:
        raise SessionEnd(CLOSE_TOO_BIG, f"frame exceeds {max_bytes} bytes", "request_too_large")
    if first:  # the open frame's messages, counted before parsing them
        _check(limits.precheck_one_conversation, encoded)
    elif not _PLAIN_FRAME.fullmatch(raw):
        raise SessionEnd(
            CLOSE_BAD_REQUEST,
            "a frame after 'open' holds only 'type' and 'text', both strings",
            "invalid_request_error",
        )
    try:
        data = json.loads(raw)
    except ValueError:
        raise SessionEnd(CLOSE_BAD_REQUEST, "frame is not valid JSON", "invalid_request_error") from None
    except RecursionError:  # nesting deeper than the parser's stack: malformed input, not a server fault
        raise SessionEnd(CLOSE_BAD_REQUEST, "frame is nested too deeply", "invalid_request_error") from None
    if not isinstance(data, dict):
        raise SessionEnd(CLOSE_BAD_REQUEST, "frame must be a JSON object", "invalid_request_error")
    return data


async def _send(ws: WebSocket, clock: _Clock, data: Mapping[str, Any]) -> None:
    """One frame to the client, taken within the session's time (`_Clock.send_wait`), else `ClientStalled`
    (the connection cut off)."""
    await sent_within(ws.send_json(data), clock.send_wait())


async def _goodbye(ws: WebSocket, clock: _Clock, code: int, error: tuple[str, str] | None) -> bool:
    """The error frame (``error``: message and type) and the close, each bounded as every frame is (`_send`);
    False when the client was cut off for not taking them. Then the client has `CLOSE_LINGER_S` (at most as long
    as for an ``open`` frame) to answer the close: uvicorn closes the socket by waiting to flush it, which for a
    client that stopped reading is for as long as it keeps the socket open."""
    try:
        if error is not None:
            message, kind = error
            frame = {"type": "error", "error": {"message": error_text(message), "type": kind, "code": code}}
            await _send(ws, clock, frame)
        await sent_within(ws.close(code), clock.send_wait())
    except ClientStalled:
        return False
    except Exception:  # noqa: BLE001 - the peer may be gone
        pass
    abort_connection_later(min(CLOSE_LINGER_S, clock.open_wait()[0]))
    return True
