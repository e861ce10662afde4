"""The protocol side of a remote stream session, written once for the sync and async monitors of
`remote_stream`: the frames a session sends, how replies become released text, and how a session is
rebuilt on another replica after its replica died or restarted (failover).

Failover. A session lives on one replica. When that replica goes away mid-session (the connection
drops or is refused, it closes with 1001/1012/1013/1014 or 4503, a balancer answers 502/503/504 or a
replica 429 at the handshake, or, with several replica URLs, it misses its share of the deadline), the
monitor opens a new session on another replica (or again through the balancer) and replays the prompt
and all text fed so far, then the interrupted call (one feed frame per `REPLAY_CHUNK_CHARS` characters:
the cost is once per failover and O(text)). The prompt is screened once: a re-opened session does not
screen it again, once a replica reported the prompt's decision (one that screens it beside the answer, or
goes away before its verdict, judged nothing of it: the next replica screens it). The release rule is the
point of it all: the client has released a prefix R of the text; each server session reports what it released, i.e. judged, as a prefix of the text fed to it, and
the client releases only what lies beyond R *and* inside the current session's judged prefix. So text
the new session has not judged is never released, whatever the old session had judged, and a
violation found in the replayed text stops the stream as any violation does. When no replica answers
within the call's deadline, the policy's ``on_error`` decides, as without failover. Re-opens go at once
to a replica the call has not tried yet; once every one refused, they back off (`_Session._reopen_pause`).
A release flagged ``guard_error``/``timeout`` (a replica whose guard failed and whose operator fails open
let the text out unjudged) is a replica failure too (`_Session._refuse_unjudged`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from typing import Any

from ..errors import (
    GuardTimeout,
    GuardUnavailable,
    GuardViolation,
    InputTooLarge,
    MissingDependency,
    QwenGuardError,
    StreamClosed,
)
from ..formats.content import clean_text
from ..formats.overstrike import crlf_joined
from ..policy import Action, Decision
from ..streaming.debounce import DEFAULT_WINDOW, Debounce
from ..streaming.monitor_core import DEFAULT_KEEP_TOKEN_VERDICTS, check_stream_options
from ..verdict import Risk, Stage, Verdict
from .openai_gen import NO_OPENAI_API
from .openai_wire import error_text, retry_after
from .replicas import attempt_budget
from .transport import without_password

__all__ = [
    "REOPEN_CLOSE_CODES",
    "REPLAY_CHUNK_CHARS",
    "SESSION_OPTIONS",
    "MalformedFrame",
    "callers_error",
    "decision_from_dict",
    "frame_too_big",
    "parse_frame",
    "reopen_worthy",
    "server_too_big",
]

#: Monitor options a session may set; the server validates the values like a local monitor does.
#: ``max_windows_in_flight`` stays here: it bounds the local fallback (`_judge_locally`); the server's sessions run
#: its operator's ``--stream-max-windows-in-flight``. A `qwenguard serve` chained to another passes its own (rt70i F2).
SESSION_OPTIONS = (
    "holdback",
    "window",
    "screen_prompt",
    "check_every",
    "min_segment",
    "context",
    "max_windows_in_flight",
)
#: Of `SESSION_OPTIONS`, those this client keeps to itself: never sent in the open frame.
_LOCAL_ONLY_OPTIONS = ("max_windows_in_flight",)
#: Of `SESSION_OPTIONS`, those the local fallback takes (its prompt is judged already: no ``screen_prompt``).
_FALLBACK_OPTIONS = ("holdback", "check_every", "min_segment", "context", "max_windows_in_flight")
#: Replayed text goes in frames of at most this many characters (32 KB of UTF-8 at most: far below any
#: sane frame limit of a server).
REPLAY_CHUNK_CHARS = 8192
#: Close codes that mean "this replica is going away or cannot serve now; re-open elsewhere":
#: 1001 going away, 1006 dropped (no close frame), 1012 service restart (what a draining qwenguard or
#: uvicorn sends), 1013 try again later, 1014 bad gateway, 4503 guard unavailable on that replica.
REOPEN_CLOSE_CODES = frozenset({1001, 1006, 1012, 1013, 1014, 4503})
#: Close codes that refuse the caller's own session (`callers_error`): 1009 its text past the server's limits,
#: 4400 a bad request.
CALLER_CLOSE_CODES = frozenset({1009, 4400})
#: Handshake answers worth a re-open, through one URL too (after a backoff): busy or draining (503),
#: per-client limit (429), a replica that failed (500), a balancer with no replica behind it or one that
#: died (502, 504); the statuses HTTP checks retry. Any other refusal (401 another key, 404 mid-upgrade, a
#: 3xx) is that replica's answer: with several replicas the session tries each untried one once, as a
#: check does, and never the same one again.
REOPEN_STATUS = frozenset({429, 500, 502, 503, 504})
FINISH_FRAME = json.dumps({"type": "finish"})
#: Flags one frame may carry (the server's `stream_protocol.MAX_FLAGS_PER_FRAME`) and one session keeps; the
#: rest are counted in ``flags_omitted``, as the server counts what it leaves out. A kept flag is a few
#: hundred bytes to a few KB (its ``error`` cut to `MAX_ERROR_CHARS`, up to 32 category names): a session
#: keeps tens of MB of them at most, whatever its frames carry (measured: +32 MB with 4 MiB frames), where an
#: honest session flags at most every other token of a Stream model.
MAX_FLAGS_PER_FRAME = 1024
MAX_SESSION_FLAGS = 4 * MAX_FLAGS_PER_FRAME
#: A server's error text kept in a decision (the HTTP path cuts messages alike, `openai_wire.error_text`).
MAX_ERROR_CHARS = 300
#: Names (a reason, a category) are a few words: longer is no name the protocol sends.
_MAX_NAME_CHARS = 64
#: Distinct categories one decision may name (the official list has nine).
_MAX_CATEGORIES = 32
#: A server frame as received, or already parsed (the async monitor parses large ones in a worker thread).
Frame = str | bytes | dict[str, Any]


def websockets_module() -> Any:
    try:
        import websockets
    except ImportError as exc:  # pragma: no cover
        raise MissingDependency.for_extra("remote", "websockets") from exc
    return websockets


class MalformedFrame(GuardUnavailable):
    """A server frame that does not follow the protocol: a guard error (the policy's ``on_error``)."""


def parse_frame(raw: str | bytes) -> dict[str, Any]:
    """A server frame's JSON object; anything else is the server's fault (`GuardUnavailable`)."""
    try:
        reply = json.loads(raw)
    except ValueError:
        raise GuardUnavailable("the stream server sent a frame that is not JSON") from None
    except RecursionError:  # nested deeper than the parser's stack
        raise MalformedFrame("the stream server sent a frame nested too deeply") from None
    if not isinstance(reply, dict):
        raise GuardUnavailable("the stream server sent a frame that is not an object")
    return reply


def decision_from_dict(data: Any) -> Decision:
    """Rebuild a `Decision` from ``Decision.to_dict()`` output (as the server sends it).

    Anything else (not an object, a field missing, a value out of its enum) is the server's fault:
    `GuardUnavailable`, which the policy's ``on_error`` decides, never a bare ``KeyError``."""
    if not isinstance(data, Mapping):
        raise MalformedFrame(f"the stream server sent a decision that is not an object: {type(data).__name__}")
    try:
        verdict = None
        if data.get("risk") is not None:
            refusal = data.get("refusal")
            if refusal is not None and not isinstance(refusal, bool):
                raise ValueError(f"refusal {type(refusal).__name__}")
            verdict = Verdict(
                Risk(data["risk"]),
                _categories(data.get("categories")),
                refusal,
                latency_ms=float(data.get("latency_ms") or 0.0),
            )
        error = data.get("error")
        return Decision(
            bool(data["allowed"]),
            Action(data["action"]),
            Stage(data["stage"]),
            _name(data["reason"], "reason"),
            verdict,
            None if error is None else str(error)[:MAX_ERROR_CHARS],
            _offset(data.get("offset"), "offset"),
            bool(data.get("cached", False)),
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise MalformedFrame(f"the stream server sent a malformed decision ({_what(exc)})") from None


def _name(value: Any, what: str) -> str:
    """A short name the protocol sends (a reason, a category); ``ValueError`` for anything else."""
    if not isinstance(value, str) or len(value) > _MAX_NAME_CHARS:
        raise ValueError(f"{what} that is not a short string")
    return value


def _categories(value: Any) -> tuple[str, ...]:
    """A decision's categories: distinct short names, in order (a model that repeats one names it once)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise TypeError("categories that are not a list")
    names = tuple(dict.fromkeys(_name(c, "category") for c in value))
    if len(names) > _MAX_CATEGORIES:
        raise ValueError(f"{len(names)} categories")
    return names


def _offset(value: Any, what: str) -> int | None:
    """A character offset (``None``: none); ``ValueError`` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} that is not a character offset")
    return value


def _count(value: Any, what: str) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{what} that is not an integer")


def _probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("a probability that is not a number")
    return float(value)


def _what(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def reopen_worthy(exc: BaseException, *, several: bool) -> bool:
    """Whether a failed exchange should be retried on a new session elsewhere (see the module docs).

    A missed attempt deadline counts only with several replica URLs: through one URL the retry could
    land on the same slow replica."""
    ws = websockets_module().exceptions
    if isinstance(exc, _ReplicaUnavailable):
        return True
    if isinstance(exc, Redirected):
        return several  # another replica, once: `_reopen_pause`
    if frame_too_big(exc):
        return False  # the same session replayed would send the same frame
    if isinstance(exc, ws.ConnectionClosed):
        return exc.rcvd is None or exc.rcvd.code in REOPEN_CLOSE_CODES
    if isinstance(exc, ws.InvalidStatus):
        return exc.response.status_code in REOPEN_STATUS or several  # the latter: `_reopen_pause` decides
    if isinstance(exc, ws.InvalidMessage):  # the connection ended during the handshake
        return True
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, GuardTimeout)):
        return several
    return isinstance(exc, OSError)  # refused, reset, broken pipe


def _refused_by_this_replica(exc: BaseException) -> bool:
    """A handshake refusal that asking the same replica again would only repeat (see `REOPEN_STATUS`)."""
    ws = websockets_module().exceptions
    if isinstance(exc, Redirected):
        return True
    return isinstance(exc, ws.InvalidStatus) and exc.response.status_code not in REOPEN_STATUS


def handshake_retry_after(exc: BaseException) -> float | None:
    """The ``Retry-After`` (seconds) of a refused handshake (429, 503: busy, full, draining), if it sent one."""
    if not isinstance(exc, websockets_module().exceptions.InvalidStatus):
        return None
    return retry_after(exc.response.headers.get("Retry-After"))


def frame_too_big(exc: BaseException) -> bool:
    """Whether the client closed the connection (1009) because a server frame exceeded ``max_frame_bytes``: its
    1009 came first. The server's own 1009, echoed, is its refusal of the client's frame (`server_too_big`)."""
    ws = websockets_module().exceptions
    if not isinstance(exc, ws.ConnectionClosed):
        return False
    return exc.sent is not None and exc.sent.code == 1009 and exc.rcvd_then_sent is not True


def server_too_big(exc: BaseException) -> bool:
    """Whether the server closed the connection 1009 first: the client's text was past its limits. A frame past twice
    ``--max-body-bytes`` (the server's WebSocket ``max_size``) is cut off by the protocol with no error frame."""
    ws = websockets_module().exceptions
    if not isinstance(exc, ws.ConnectionClosed):
        return False
    return exc.rcvd is not None and exc.rcvd.code == 1009 and exc.rcvd_then_sent is not False


def callers_error(exc: BaseException) -> bool:
    """Whether the server refused the caller's own session: its text past the server's limits (error frame
    ``request_too_large``, close 1009) or a bad request (``invalid_request_error``, close 4400). Another replica
    would refuse it alike, and the replica is healthy: it stays in rotation for the process's other sessions."""
    if isinstance(exc, (_BadRequest, InputTooLarge)):
        return True
    ws = websockets_module().exceptions
    if not isinstance(exc, ws.ConnectionClosed) or exc.rcvd is None:
        return False
    # The server's close came first; a 1009 of the client's own (a server frame past max_frame_bytes) is not it.
    return exc.rcvd.code in CALLER_CLOSE_CODES and exc.rcvd_then_sent is not False


class Deadline:
    """A point in time a call (or one attempt of it) must be done by (``None``: no deadline)."""

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

    def share(self, *, another_follows: bool) -> Deadline:
        """One attempt's deadline: half the time left when another attempt can follow, else all of it."""
        if self.at is None:
            return self
        return Deadline(attempt_budget(self.at - time.monotonic(), None, another_follows=another_follows))


class _BadRequest(QwenGuardError):
    """The server refused the session's parameters (a caller bug, not a guard outage)."""


class _ReplicaUnavailable(GuardUnavailable):
    """The replica's guard failed (error frame 4503): another replica may serve the session."""


class Redirected(GuardUnavailable):
    """The connection is not the one asked for: a session is judged only by the server asked, as a check is.
    Defence in depth: the client does not follow a handshake's 3xx (`remote_stream._connect_without_redirects`);
    should a websockets version follow one anyway, the session is refused here. Another replica, once."""


def refuse_redirect(ws: Any, url: str) -> None:
    """Raise `Redirected` unless ``ws`` (a connection just opened) was opened at ``url`` itself; before a
    frame is sent, so nothing of the conversation reaches the server redirected to."""
    from websockets.headers import build_host
    from websockets.uri import parse_uri

    asked = parse_uri(url)
    request = getattr(ws, "request", None)
    opened = (request.headers.get("Host"), request.path) if request is not None else None
    if opened != (build_host(asked.host, asked.port, asked.secure), asked.resource_name):
        raise Redirected(
            f"the stream server at {without_password(url)} redirected the session (to {opened}); a session is judged "
            "only by the "
            "server asked, as a check is: point the client at the server itself"
        )


class _ReplicaTimeout(_ReplicaUnavailable, GuardTimeout):
    """The replica's guard missed its deadline (error frame 4503, type "timeout")."""


class _Session:
    """The protocol logic of one monitor; the sync and async monitors only move frames."""

    def __init__(self, backend: Any, guard: Any, prompt: Any, **options: Any) -> None:
        unknown = sorted(set(options) - set(SESSION_OPTIONS))
        if unknown:
            raise TypeError(f"remote streams do not support options {unknown}; known: {list(SESSION_OPTIONS)}")
        if prompt is None:
            raise TypeError("prompt is None; pass the user's prompt or the conversation")
        check_stream_options({k: options[k] for k in _LOCAL_ONLY_OPTIONS if k in options})  # no server checks them
        self.backend = backend
        self.guard = guard
        self.policy = guard.policy
        self.text = ""
        self._cr_held = False  # the last delta ended in a CR, not sent yet (`_feed_frame`)
        self._released_parts: list[str] = []
        # Characters released: what is out is always a prefix of `text`, so this is all a call needs (the
        # joined string is built only when `released` is read).
        self._released_len = 0
        #: The violation (or fail-open guard error) that ended checking, else None.
        self.decision: Decision | None = None
        #: The prompt's Decision, as the server reported it.
        self.prompt_decision: Decision | None = None
        #: Allowed-but-flagged stream decisions (loose controversial, ignored categories).
        self.flags: list[Decision] = []
        #: Flags the server counted but did not send (at most 1024 a frame: `stream_protocol.MAX_FLAGS_PER_FRAME`),
        #: and those this client did not keep (past `MAX_FLAGS_PER_FRAME` in a frame or `MAX_SESSION_FLAGS`).
        self.flags_omitted = 0
        self._server_flags = 0  # of `flags`, those the server sent (a fail-open's own are not capped)
        #: Times this session was re-opened on another replica (or again through the balancer).
        self.failovers = 0
        self._flag_keys: set[tuple[Any, ...]] = set()
        # Per-token verdicts, when the server has a Stream model: the last ones only, as a local monitor keeps
        # them (a server that sends millions cannot make the client hold them).
        self._tokens: deque[dict[str, Any]] = deque(maxlen=DEFAULT_KEEP_TOKEN_VERDICTS)
        self._tokens_upto = -1  # end offset of the last token verdict kept
        # Of a re-opened session, the token verdicts that end by here were reported before the failover (the replay
        # reports them again): not kept twice. Never applied within one server session, where the tokens of one
        # multi-byte character share its span and all count (`_check_tokens`).
        self._replayed_upto = -1
        self._last_index: int | None = None  # the server's index of the last token verdict read (`_absorb`)
        # The stop rule over the server's own token verdicts (`_check_tokens`): the server's window is at most
        # the one asked for (a client may only lower it), DEFAULT_WINDOW otherwise.
        window = options.get("window")
        usable = isinstance(window, int) and not isinstance(window, bool) and window >= 1
        self._debounce = Debounce(window if usable and isinstance(window, int) else DEFAULT_WINDOW)
        self._run_starts: deque[int | None] = deque(maxlen=self._debounce.window)
        # Where the first run of token verdicts that this client's policy blocks starts, and its decision: no
        # text from there on may be released (`_refuse_blocked_release`).
        self._token_block: Decision | None = None
        # Where the last token verdicts start that may yet flag their run again (`Debounce.pending`): a token of a
        # category new to an allowed run decides nothing alone, and is not released before the next decides it.
        self._token_hold: int | None = None
        self._judged = 0  # characters the current server session released, i.e. judged
        self._ever_opened = False
        self._state = "open"  # open | finished | closed | violated | failed
        # Why the server refused the session's text (over its limits: close 1009): every later call raises it again,
        # as a local monitor's does.
        self._refused: InputTooLarge | None = None
        # After the server failed and the policy failed open: a local monitor judging the rest in Gen windows
        # on the guard's Gen backend (`_judge_locally`), instead of releasing it unchecked.
        self.local: Any = None
        self._local_flags = 0  # of the local monitor's flags, how many this session has taken
        self._options = {k: v for k, v in options.items() if k in _FALLBACK_OPTIONS}
        self._messages = prompt
        # Opening screens the prompt (unless told not to): its budget and its failures are the prompt's.
        self._open_stage = Stage.PROMPT if options.get("screen_prompt", True) is not False else Stage.STREAM
        frame: dict[str, Any] = {
            "type": "open",
            "policy": guard.policy.to_dict(),
            **{k: v for k, v in options.items() if v is not None and k not in _LOCAL_ONLY_OPTIONS},
        }
        # The one content rule before anything leaves the process: a lone surrogate cannot even be
        # encoded for the wire, and the server judges exactly the text this monitor releases.
        if isinstance(prompt, str):
            frame["prompt"] = clean_text(prompt, keep_lone_cr=True)  # checked whole, as check_prompt reads it
        else:
            frame["messages"] = [_clean_message(m) for m in prompt]
        self._open_frame = json.dumps(frame, ensure_ascii=False)
        # A re-opened session does not screen the prompt again: it was judged, and its decision stands.
        self._reopen_frame = json.dumps({**frame, "screen_prompt": False}, ensure_ascii=False)

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
        return self.text[self._released_len :]

    @property
    def finished(self) -> bool:
        return self._state == "finished"

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def take_token_verdicts(self) -> list[dict[str, Any]]:
        """Per-token verdicts (as dicts) received since the last call; empty without a Stream model."""
        out = list(self._tokens)
        self._tokens.clear()
        return out

    def _release(self, text: str) -> str:
        if text:
            self._released_parts.append(text)
            self._released_len += len(text)
        return text

    def _release_upto(self, end: int) -> str:
        """Release the text up to ``end`` beyond what is already out (nothing when ``end`` is behind it)."""
        start = self._released_len
        return self._release(self.text[start:end]) if end > start else ""

    def _released_since(self, mark: int) -> str:
        """The text released after the first ``mark`` characters (what one call returns)."""
        return self.text[mark : self._released_len]

    # -- frames out -----------------------------------------------------------------------
    def _rebuild(self, expect: str) -> Generator[str, Frame, None]:
        """The frames of a session on a new connection, fed the replies (what they release joins
        ``released`` as it comes: a replay that fails part-way keeps what it released).

        ``expect="opened"`` is the first open. Otherwise (failover) the session is re-opened and the text
        fed so far is replayed; ``"finished"`` then finishes it."""
        # A re-open screens the prompt again unless a replica reported its decision: a replica that screens the
        # prompt beside the answer, or went away before its verdict, judged nothing of it.
        reply = yield self._reopen_frame if self.prompt_decision is not None else self._open_frame
        self._on_opened(reply)
        for start in range(0, len(self.text), REPLAY_CHUNK_CHARS):
            chunk = self.text[start : start + REPLAY_CHUNK_CHARS]
            reply = yield json.dumps({"type": "feed", "text": chunk}, ensure_ascii=False)
            self._on_reply(reply, "released")
        if expect == "finished":
            reply = yield FINISH_FRAME
            self._on_reply(reply, "finished")

    def _feed_frame(self, delta: str) -> str | None:
        """The frame for ``delta`` (``None`` when nothing is left of it); the text joins ``self.text``."""
        self._check_feedable()
        # As the local monitor releases it (`crlf_joined`): a CR at its end waits for the next delta, so a CRLF cut
        # between two deltas stays a CRLF, and the server is sent (and this replays) only text with no lone CR.
        delta, self._cr_held = crlf_joined(clean_text(delta, keep_lone_cr=True), self._cr_held)
        if not delta:
            return None
        self.text += delta
        return json.dumps({"type": "feed", "text": delta}, ensure_ascii=False)

    def _end_cr_frame(self) -> str | None:
        """At the answer's end, the frame for a CR still held (a lone one: a line feed, as a local monitor ends)."""
        held, self._cr_held = self._cr_held, False
        if not held:
            return None
        self.text += "\n"
        return json.dumps({"type": "feed", "text": "\n"}, ensure_ascii=False)

    # -- frames in --------------------------------------------------------------------------
    def _emit(self, decision: Decision) -> None:
        emit = getattr(self.guard, "_emit", None)
        if emit is not None:
            emit(decision)

    def _violation(self, decision: Decision) -> GuardViolation:
        self.decision = decision
        self._state = "violated"
        self._emit(self.decision)
        return GuardViolation(self.decision)

    def _take_prompt_decision(self, reply: Mapping[str, Any]) -> None:
        """The prompt's decision, when the frame carries it; one that does not allow the prompt stops the stream
        here, as a local monitor's gate does at open (`monitor_core._gate`), whatever else the frame says (a
        server that reports a blocked prompt and goes on releasing contradicts itself)."""
        if not reply.get("prompt_decision"):
            return
        decision = decision_from_dict(reply["prompt_decision"])
        if decision.allowed or reply.get("type") == "violation":
            self.prompt_decision = decision
            return
        if decision.reason in ("guard_error", "timeout"):
            # That replica's guard failed (fail closed): another may judge the prompt, else the policy decides.
            # Not recorded as the prompt's decision, so that a re-open screens the prompt again.
            cls = _ReplicaTimeout if decision.reason == "timeout" else _ReplicaUnavailable
            raise cls(f"the stream server could not judge the prompt: {decision.error}")
        self.prompt_decision = decision
        raise self._violation(decision)

    def _absorb(self, reply: Mapping[str, Any]) -> None:
        for name in ("tokens", "flags"):
            if not isinstance(reply.get(name) or [], list):
                raise MalformedFrame(f"the stream server sent {name!r} that is not a list")
        tokens = reply.get("tokens") or []
        # Each token is at least one byte of the text fed, a character at most four: no honest frame has more
        # (bounded from the characters, so that no feed pays for encoding its text on the stream's hot path).
        if len(tokens) > 4 * len(self.text):
            raise MalformedFrame(
                f"the stream server sent {len(tokens):,} token verdicts for {len(self.text):,} characters of text fed"
            )
        # Only the last ones are kept: an honest frame has at most as many (the server keeps no more either).
        # Each is read into a fresh dict of its scalar fields: what the session holds is bounded by the count.
        full = len(tokens) >= DEFAULT_KEEP_TOKEN_VERDICTS  # a frame that may have left its first tokens out
        for position, token in enumerate(self._token(t) for t in tokens[-DEFAULT_KEEP_TOKEN_VERDICTS:]):
            index, end = token["index"], token["end"]
            gap = index is not None and self._last_index is not None and index != self._last_index + 1
            if gap and full and position == 0:
                # The tokens this frame left out (an honest server keeps the last 2,048 of a long feed): no run spans
                # them. Only there: a gap anywhere else is no honest server's, and breaks no run.
                self._restart_run()
            self._last_index = index
            self._check_tokens(token)
            if end is not None and end <= self._replayed_upto:
                continue  # reported again by a replayed session: kept once
            self._replayed_upto = -1
            if end is not None:
                self._tokens_upto = max(self._tokens_upto, end)
            self._tokens.append(token)
        omitted = reply.get("flags_omitted")
        if isinstance(omitted, int) and not isinstance(omitted, bool) and omitted > 0:
            self.flags_omitted += omitted
        flags = reply.get("flags") or []
        self.flags_omitted += max(0, len(flags) - MAX_FLAGS_PER_FRAME)  # more than the server ever sends
        for data in flags[:MAX_FLAGS_PER_FRAME]:
            flag = decision_from_dict(data)
            key = (flag.stage, flag.reason, flag.offset, flag.risk, flag.categories)
            if key in self._flag_keys:
                continue  # reported again by a replayed session
            if self._server_flags >= MAX_SESSION_FLAGS:
                self.flags_omitted += 1
                continue
            self._flag_keys.add(key)
            self._server_flags += 1
            self.flags.append(flag)

    def _token(self, data: Any) -> dict[str, Any]:
        """A per-token verdict as the server sends it (`stream_protocol.token_verdict_dict`), read into its
        scalar fields only (anything else in it is dropped); a shape it never has is `MalformedFrame`: not an
        object, a ``risk`` out of its enum, a span that is not inside the text fed, a long category."""
        if not isinstance(data, Mapping):
            raise MalformedFrame(f"the stream server sent a token verdict that is not an object: {type(data).__name__}")
        try:
            risk = Risk(data.get("risk"))
            start, end = _offset(data.get("start"), "start"), _offset(data.get("end"), "end")
            if end is not None and (end > len(self.text) or (start is not None and start > end)):
                raise ValueError(f"a span {start}..{end} outside the {len(self.text):,} characters fed")
            category = data.get("category")
            probs = data.get("probs")
            if probs is not None and (not isinstance(probs, Mapping) or len(probs) > len(Risk)):
                raise ValueError("probs that are not one number per risk")
            return {
                "token": _count(data.get("token"), "token"),
                "index": _count(data.get("index"), "index"),
                "risk": risk.value,
                "category": None if category is None else _name(category, "category"),
                "probs": None if probs is None else {Risk(r).value: _probability(p) for r, p in probs.items()},
                "start": start,
                "end": end,
            }
        except (TypeError, ValueError, OverflowError) as exc:
            raise MalformedFrame(f"the stream server sent a malformed token verdict ({_what(exc)})") from None

    def _restart_run(self) -> None:
        """Token verdicts from here on are not adjacent to those before (a new server session, or tokens the
        server left out of its frames): the stop rule's run starts afresh."""
        self._debounce.reset()
        self._run_starts.clear()
        self._token_hold = None

    def _check_tokens(self, token: Mapping[str, Any]) -> None:
        """The local monitor's stop rule (`Debounce`, this client's policy) over the server's token verdicts, in
        order: a run it blocks marks where released text must stop (`_refuse_blocked_release`). The server's
        policy is at least as strict as this client's (a client's policy can only tighten it) and its window
        at most this one, so an honest server never releases text such a run covers."""
        self._run_starts.append(token["start"])
        flag = self._debounce.push(token["risk"], token["category"])
        pending = self._debounce.pending
        self._token_hold = self._run_starts[-pending] if pending and pending <= len(self._run_starts) else None
        if flag is None or self._token_block is not None or not self.policy.enabled(Stage.STREAM):
            return
        start = self._run_starts[0] if len(self._run_starts) == self._debounce.window else None
        if start is None:
            return  # a span the server did not give: nothing to hold it to
        # Judged as the local monitor judges it: every category of the run so far (`Debounce` flags again where
        # a run this policy let through takes on a category it was not judged with, for a window of tokens).
        decision = self.policy.decide(Verdict(flag.risk, flag.categories), Stage.STREAM)
        if not decision.allowed:
            self._token_block = Decision(
                decision.allowed, decision.action, Stage.STREAM, decision.reason, decision.verdict, offset=start
            )

    def _on_opened(self, raw: Frame) -> None:
        reply = self._parse(raw)
        with _server_frame():
            self._opened_frame(reply)

    def _refuse_unjudged(self, reply: Mapping[str, Any]) -> None:
        """A replica whose own guard failed, under an operator policy that fails open, releases what it could
        not judge flagged ``guard_error`` / ``timeout``. That is not a verdict: it counts as the replica
        failing, so another replica judges the text (failover), or the client's own policy decides."""
        reported = [*(reply.get("flags") or ()), reply.get("decision"), reply.get("prompt_decision")]
        for data in reported:
            if isinstance(data, Mapping) and data.get("allowed") and data.get("reason") in ("guard_error", "timeout"):
                cls = _ReplicaTimeout if data.get("reason") == "timeout" else _ReplicaUnavailable
                raise cls(
                    f"the stream server could not judge the text (its guard failed: {data.get('error')}) and let it "
                    "out flagged; a release no guard judged is not taken"
                )

    def _opened_frame(self, reply: Mapping[str, Any]) -> None:
        self._refuse_unjudged(reply)
        self._take_prompt_decision(reply)
        if reply.get("type") == "violation":
            raise self._violation(decision_from_dict(reply.get("decision")))
        if reply.get("type") != "opened":
            raise self._server_error(reply)
        # A new server session: its token verdicts count from the start again, and those of the text replayed
        # were reported by the session before (`_absorb`).
        self._replayed_upto, self._last_index = self._tokens_upto, None
        self._restart_run()
        self._absorb(reply)
        self._ever_opened = True
        self._judged = 0

    def _on_reply(self, raw: Frame, expect: str) -> str:
        reply = self._parse(raw)
        with _server_frame():
            return self._reply_frame(reply, expect)

    def _reply_frame(self, reply: Mapping[str, Any], expect: str) -> str:
        self._refuse_unjudged(reply)
        self._take_prompt_decision(reply)  # screened beside the answer, it comes later than `opened`
        self._absorb(reply)
        kind = reply.get("type")
        if kind == "violation":
            # The whole frame is read before anything of it is released: a malformed one releases nothing.
            decision = decision_from_dict(reply.get("decision"))
            judged = reply.get("released")
            if isinstance(judged, str) and self.text.startswith(judged):
                block = self._token_block
                self._release_upto(
                    len(judged) if block is None or block.offset is None else min(len(judged), block.offset)
                )
            raise self._violation(decision)
        if kind != expect:
            raise self._server_error(reply)
        text = reply.get("text")
        if text is not None and not isinstance(text, str):
            raise MalformedFrame(f"the stream server sent a {kind!r} frame whose text is not a string")
        out = self._accept(text or "", final=expect == "finished")
        if expect == "finished":
            self._state = "finished"
        return out

    def _accept(self, text: str, final: bool = False) -> str:
        """The server session released (judged) ``text`` next: release what of it lies beyond ours, short of token
        verdicts that may yet flag their run again (`_token_hold`) unless the answer is ``final``."""
        end = self._judged + len(text)
        if self.text[self._judged : end] != text:
            raise GuardUnavailable("the stream server released text that was not fed to it")
        self._refuse_blocked_release(end)
        self._judged = end
        if self._state == "closed":
            return ""  # closed (aclose) while a re-open was under way: nothing more comes out
        hold = self._token_hold
        return self._release_upto(end if final or hold is None else min(end, hold))

    def _refuse_blocked_release(self, end: int) -> None:
        """Release up to ``end`` only if no token run this client's policy blocks starts before it
        (`_check_tokens`). One that does is the violation a local monitor raises on those same token verdicts
        (its stop rule, its policy), so it is raised as such, not as a guard error: ``on_error="allow"`` must not
        let out text the server's own verdicts block. Nothing of the frame is released."""
        block = self._token_block
        if block is not None and block.offset is not None and end > max(block.offset, self._released_len):
            raise self._violation(block)

    @staticmethod
    def _parse(raw: Frame) -> dict[str, Any]:
        return raw if isinstance(raw, dict) else parse_frame(raw)

    @staticmethod
    def _server_error(reply: Mapping[str, Any]) -> QwenGuardError:
        error = reply.get("error")
        err: Mapping[str, Any] = error if isinstance(error, Mapping) else {}
        kind, message = err.get("type", reply.get("type")), err.get("message", "unexpected frame")
        if kind == "invalid_request_error":
            return _BadRequest(f"stream server refused the session: {message}")
        if kind == "request_too_large":  # past the server's limits: the caller's error, as a local stream's (rt70d F2)
            return _upstream_too_large(f"stream server refused the text as too large: {message}")
        if kind == "timeout":  # the replica's guard missed its deadline (another may not)
            return _ReplicaTimeout(f"stream server error ({kind}): {message}")
        if kind == "guard_unavailable" or err.get("code") == 4503:
            return _ReplicaUnavailable(f"stream server error ({kind}): {message}")
        return GuardUnavailable(f"stream server error ({kind}): {message}")

    # -- deadlines and failover ---------------------------------------------------------------
    def _deadline(self, stage: Stage) -> Deadline:
        """The budget of one call: the policy's for ``stage``, capped by the backend's reply timeout."""
        budgets = [b for b in (self.policy.timeout_for(stage), self.backend.reply_timeout_s) if b is not None]
        return Deadline(min(budgets) if budgets else None)

    def _attempt(self, deadline: Deadline, reopens: int) -> Deadline:
        """The deadline of one attempt of a call (see `Deadline.share`)."""
        another = self.backend.replicas.several and reopens < self.backend.max_failovers
        return deadline.share(another_follows=another)

    def _may_reopen(self, exc: BaseException, deadline: Deadline, reopens: int) -> bool:
        return (
            self._state == "open"
            and self.local is None
            and reopens < self.backend.max_failovers
            and self.failovers < self.backend.max_session_failovers
            and not deadline.expired
            and reopen_worthy(exc, several=self.backend.replicas.several)
        )

    def _reopen_pause(self, deadline: Deadline, reopens: int, tried: list[str], exc: BaseException) -> float | None:
        """Seconds to wait before the next re-open of a call that has re-opened ``reopens`` times, after ``exc``.

        None while a replica this call has not tried remains, nor before the first re-open (through a
        balancer it lands on another replica). After that every replica refused (restarting, draining,
        full, or a balancer with none up for a moment): wait ``backoff_s``, doubling, so the moment passes
        within the deadline instead of the call failing closed at once. A handshake refused with
        ``Retry-After`` waits at least what the server asked (a full `qwenguard serve`: 1 s; a draining
        one: 0), as `OpenAIGen` does. ``None``: the wait would outlast the deadline (a call without one: a
        ``Retry-After`` past ``max_backoff_s``); give up now, the server's refusal is the answer, not a
        timeout after sleeping."""
        if self.backend.replicas.untried(tried):
            return 0.0
        if _refused_by_this_replica(exc):
            return None  # a 401, a 404: worth another replica only, and every one was tried
        left = deadline.left()
        hint = handshake_retry_after(exc)
        if hint is not None and (hint > self.backend.max_backoff_s if left is None else hint >= left):
            return None
        delay = 0.0 if reopens == 0 else min(self.backend.max_backoff_s, self.backend.backoff_s * 2 ** (reopens - 1))
        delay = max(delay, hint or 0.0)  # "not before": waiting longer still honours it
        return None if left is not None and delay > 0 and delay >= left else delay

    # -- failures and state -----------------------------------------------------------------
    def _fail(self, exc: BaseException, stage: Stage = Stage.STREAM, *, timed_out: bool = False) -> str:
        """A guard error: raise (fail closed), or fail open and judge the rest here (`_judge_locally`)."""
        if isinstance(exc, _BadRequest):
            self._state = "closed"
            raise ValueError(str(exc)) from None
        if server_too_big(exc):  # no error frame came: the protocol cut the frame off (rt70i F1)
            reason = getattr(getattr(exc, "rcvd", None), "reason", "")
            too_large = _upstream_too_large(
                "stream server closed the session 1009 (message too big): a frame past its --max-body-bytes"
                + (f" ({reason[:MAX_ERROR_CHARS]})" if reason else "")
            )
            too_large.__cause__ = exc
            exc = too_large
        if isinstance(exc, InputTooLarge):  # refused, not judged: never on_error's to let through
            self._state, self._refused = "closed", exc
            raise exc
        if frame_too_big(exc):
            limit = getattr(self.backend, "max_frame_bytes", None)
            too_big = GuardUnavailable(
                f"the stream server sent a frame larger than max_frame_bytes={limit:,} bytes "
                f"(RemoteStream(max_frame_bytes=...)); the connection was closed (1009)"
            )
            too_big.__cause__ = exc
            exc = too_big
        elif isinstance(exc, websockets_module().exceptions.InvalidStatus):
            # As a check's error says it: where, the status, and the server's own words (its fix, for a 401).
            status = exc.response.status_code
            why = error_text(bytes(exc.response.body or b""))
            if 300 <= status < 400:  # as a check says it (`OpenAIGen._status_error`)
                where_to = exc.response.headers.get("Location")
                why = f"redirects are not followed (Location {where_to!r})" + (f": {why}" if why else "")
            elif status == 404 or (status == 403 and not why and not self._sends_key()):
                # No stream route at this URL: a Starlette app (qwenguard serve) refuses an unknown WebSocket
                # path with a bare 403, which read as a refused key where none was sent (rt69f F1).
                why = f"{why}; {NO_OPENAI_API}" if why else NO_OPENAI_API
            urls = list(getattr(self.backend, "urls", ()))
            where = (
                f"stream server at {without_password(urls[0])}"
                if len(urls) == 1
                else f"the last of {len(urls)} stream replicas"
            )
            refused = GuardUnavailable(f"{where} refused the session: HTTP {status}" + (f": {why}" if why else ""))
            refused.__cause__ = exc
            exc = refused
        timed_out = timed_out or isinstance(exc, (TimeoutError, asyncio.TimeoutError, GuardTimeout))
        decision = self.policy.decide_error(stage, exc, timeout=timed_out)
        self.decision = decision
        self._emit(decision)
        if not decision.allowed:
            self._state = "failed"
            cls = GuardTimeout if timed_out else GuardUnavailable
            why = str(exc) or type(exc).__name__  # a bare TimeoutError says nothing
            raise cls(f"the stream guard failed and the policy fails closed: {why}", decision) from exc
        if stage is Stage.PROMPT:
            self.prompt_decision = decision
        else:
            self.flags.append(decision)
        self._judge_locally()
        return ""

    def _sends_key(self) -> bool:
        """Whether the handshake carries credentials (an ``Authorization`` header, from ``api_key`` or ``headers``)."""
        headers = getattr(self.backend, "headers", None) or {}
        return any(name.lower() == "authorization" for name in headers)

    # -- after a fail-open: the rest judged here ----------------------------------------------
    def _local_monitor(self) -> Any:
        """The core monitor class of this flavour (`StreamMonitor` or `AsyncStreamMonitor`)."""
        raise NotImplementedError

    def _judge_locally(self) -> None:
        """The server is given up on and the policy failed open: the text not released yet and the rest of the
        answer are judged in Gen windows on the guard's Gen backend (a local core monitor), as a local stream
        that failed open goes on. Only the failed call's text could have gone out unchecked; none does here."""
        guard = copy.copy(self.guard)  # shares the Gen backend, cache and listeners; no stream backend
        guard.stream_backend = None
        monitor = self._local_monitor()(
            guard, self._messages, screen_prompt=False, parallel_input=False, **self._options
        )
        monitor.take_over(self.released, self.held, self.decision, cr_held=self._cr_held)
        self._cr_held = False  # a CR not sent yet: the local monitor holds it now
        self.local = monitor

    def _local_outcome(self, out: str) -> str:
        self._take_local_flags()
        return self._release(out)

    def _local_stop(self, exc: BaseException) -> None:
        """The local monitor stopped the stream (a violation, or a check that failed closed)."""
        self._take_local_flags()
        decision = getattr(exc, "decision", None)
        if isinstance(exc, GuardViolation):
            self._state, self.decision = "violated", decision
        elif isinstance(exc, GuardUnavailable):
            self._state, self.decision = "failed", decision
        elif self.local.closed:
            self._state = "closed"

    def _take_local_flags(self) -> None:
        """The local monitor's new flags (checks failed open, loose controversial text) are this session's."""
        fresh = self.local.flags[self._local_flags :]
        self._local_flags += len(fresh)
        self.flags.extend(fresh)

    def _check_feedable(self) -> None:
        if self._state == "open":
            return
        if self._refused is not None:
            raise self._refused
        if self._state == "violated" and self.decision is not None:
            raise GuardViolation(self.decision)
        if self._state == "failed" and self.decision is not None:
            raise GuardUnavailable(
                f"the stream guard failed and the policy fails closed: {self.decision.error}", self.decision
            )
        raise StreamClosed(f"this stream monitor is {self._state}; open a new one with guard.stream(...)")

    def _errors(self) -> tuple[type[BaseException], ...]:
        """What a failed exchange raises: our own errors, socket and protocol errors, timeouts."""
        websockets = websockets_module()
        return (QwenGuardError, OSError, TimeoutError, asyncio.TimeoutError, websockets.exceptions.WebSocketException)


def _upstream_too_large(message: str) -> InputTooLarge:
    """The stream server's refusal of the text as too large: its limits, not this process's (`InputTooLarge.upstream`:
    a `qwenguard serve` chained to it does not say them to its own clients as its own)."""
    refused = InputTooLarge(message)
    refused.upstream = True
    return refused


@contextlib.contextmanager
def _server_frame() -> Iterator[None]:
    """Reading one server frame: a shape the protocol does not define is `MalformedFrame`, never a bare
    ``KeyError``/``TypeError`` past the policy."""
    try:
        yield
    except QwenGuardError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise MalformedFrame(f"the stream server sent a malformed frame ({_what(exc)})") from None


def check_delta(delta: object) -> str:
    if not isinstance(delta, str):
        raise TypeError(f"delta must be str, got {type(delta).__name__}")
    return delta


def _clean_message(message: Any) -> Any:
    if not isinstance(message, Mapping):
        return message  # the server refuses it with a clear error
    out = dict(message)
    if isinstance(out.get("content"), str):
        out["content"] = clean_text(out["content"], keep_lone_cr=True)  # checked whole, as check_prompt reads it
    return out
