"""`RemoteStream`: stream moderation sessions on a qwenguard server (``WS /v1/stream``).

``Guard.remote(url, model=..., stream=True)`` gives ``guard.stream(prompt)`` / ``guard.astream(prompt)``
monitors with the same contract as local streaming: ``feed(delta)`` returns the text safe to release
and raises `GuardViolation` (stage ``stream``) on a violation, ``finish()`` releases the rest, and
``released`` / ``text`` / ``decision`` / ``close()`` behave the same. The client's Policy travels
with the session (the server may pin its own; see the server's documentation).

One WebSocket per monitor: a session lives on one server replica. Every call has a deadline: opening
the session (which screens the prompt) within ``Policy.timeout_for(Stage.PROMPT)``, each ``feed`` and
``finish`` within ``Policy.timeout_for(Stage.STREAM)`` (capped by ``RemoteStream(reply_timeout_s=...)``),
however slowly the server drips its bytes. When the replica dies or restarts mid-session, the session
is re-opened on another replica (or again through the balancer) and the text so far replayed, within
the same deadline, and nothing the new session has not judged is released (`stream_session`;
docs/scaling.md). When no replica answers in time, or the failure is not one a replica change can
cure, the client's ``Policy.on_error`` decides: fail closed raises `GuardUnavailable` (`GuardTimeout`
for a missed deadline); fail open records a flagged ``guard_error`` / ``timeout`` decision in
``monitor.decision`` (and ``monitor.flags``, or ``monitor.prompt_decision`` when opening failed) and
judges the text not released yet, and the rest of the answer, in Gen windows on the guard's Gen
backend (a local core monitor, ``monitor.local``), as a local stream that fails open goes on: the
server's failure does not let the rest out unchecked.

Cancellation (async): cancelling ``afeed``/``afinish`` never loses the exchange in flight; the next call
completes it first (`CancelSafeLane`). A sync call interrupted by ``KeyboardInterrupt`` closes the monitor.

The connection follows the contract of the checks' HTTP client (`OpenAIGen`, httpx), so that a stream and
a check to the same server take the same route: the same extra ``headers`` on the handshake (the
``Authorization`` of ``api_key`` wins over one in ``headers``); the proxy httpx would pick from the
environment for the equivalent ``http(s)://`` URL (`proxy_for`: ``HTTP_PROXY`` for ``ws://``,
``HTTPS_PROXY`` for ``wss://``, ``ALL_PROXY`` for both, ``NO_PROXY`` bypassing), never websockets' own
choice (which prefers the HTTPS proxy even for ``ws://`` and ignores ``ALL_PROXY``); and one ``verify``
(httpx's meaning: a bool, a CA bundle path, an ``ssl.SSLContext``) for ``wss://``. ``close()`` refuses
new sessions as a closed `OpenAIGen` refuses checks.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

from ..errors import GuardTimeout, GuardUnavailable, GuardViolation, MissingDependency, QwenGuardError
from ..streaming.cancel_safe import CancelSafeLane
from ..streaming.misuse import AsyncOnly, SyncOnly
from ..verdict import Stage
from .openai_wire import request_headers
from .replicas import DEFAULT_COOLDOWN_S, Replicas, base_urls
from .send_watchdog import send_deadline, shutdown_socket
from .stream_session import (
    FINISH_FRAME,
    SESSION_OPTIONS,
    Deadline,
    Frame,
    _Session,
    callers_error,
    check_delta,
    decision_from_dict,
    parse_frame,
    refuse_redirect,
    websockets_module,
)
from .transport import SecretMask, Verify, proxy_for, ssl_context, without_password

__all__ = [
    "DEFAULT_MAX_FAILOVERS",
    "DEFAULT_MAX_SESSION_FAILOVERS",
    "DEFAULT_MAX_FRAME_BYTES",
    "SESSION_OPTIONS",
    "AsyncRemoteStreamMonitor",
    "RemoteStream",
    "RemoteStreamMonitor",
    "decision_from_dict",
    "stream_url",
]

DEFAULT_OPEN_TIMEOUT_S = 5.0
DEFAULT_REPLY_TIMEOUT_S = 30.0
#: Re-opens one call may make (each on another replica while there is one) before the policy decides.
DEFAULT_MAX_FAILOVERS = 3
#: Re-opens one session may make in all. Each replays the text so far, so replicas that fail now and then
#: (a loaded fail-open server flagging a release as a timeout) would otherwise multiply the judging work
#: with the answer's length; past it the policy decides, as when no replica answers.
DEFAULT_MAX_SESSION_FAILOVERS = 8
#: Wait before a re-open once every replica refused in this call (doubling, at most `DEFAULT_MAX_BACKOFF_S`).
DEFAULT_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 2.0
#: How long a graceful close waits for the server's close frame (a failed connection is aborted at once).
CLOSE_TIMEOUT_S = 1.0
#: The largest frame the client accepts from a stream server (the WebSocket ``max_size``); a larger one
#: closes the connection (1009) and is a guard error, decided by the policy's ``on_error``. What an honest
#: server (`qwenguard.core.server.stream_protocol`) puts in one frame: released text, or a ``violation``
#: frame's copy of all text released, at most the session's ``max_chars`` (200,000 characters by default)
#: at up to 6 bytes each as JSON: 1.2 MB; per-token verdicts of a Stream model, at most 2048 per frame (the
#: server's monitor keeps no more between two frames, `DEFAULT_KEEP_TOKEN_VERDICTS`, so not one per
#: character of the session), about 160 bytes each: under 1 MB; flags, about 250 bytes each, at most 1024 a
#: frame (`stream_protocol.MAX_FLAGS_PER_FRAME`; a Stream model flags every run of two non-safe tokens): 256 KB. 4 MiB
#: is above the sum for a default-configured server. Every byte accepted is parsed, and on a GIL build the
#: parse of one frame holds the interpreter (`_received`): the bound also bounds that pause (4 MiB of tiny
#: JSON values: about 0.1 to 0.3 s; nested empty lists, which the GC slows, up to about 1 s). Raise it
#: (``RemoteStream(max_frame_bytes=...)``) for a server run with a larger ``--max-chars``.
DEFAULT_MAX_FRAME_BYTES = 4 << 20
#: Frames larger than this are parsed in a worker thread (`_received`); smaller ones where they are read.
PARSE_INLINE_BYTES = 256 << 10


def stream_url(base_url: str) -> str:
    """``http://host:8000/v1`` → ``ws://host:8000/v1/stream`` (``https`` → ``wss``)."""
    url = base_url.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    elif url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif not url.startswith(("ws://", "wss://")):
        raise ValueError(f"base_url must be an http(s) or ws(s) URL, got {base_url!r}")
    if not url.endswith("/v1"):
        url += "/v1"
    return url + "/stream"


#: Headers the WebSocket handshake sets itself; a second one (``headers={"Host": ...}``) would break it.
HANDSHAKE_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "content-length",
        "transfer-encoding",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
#: What a closed backend answers, the words of a closed `OpenAIGen`.
CLOSED = "the remote guard backend is closed"


@functools.cache
def _not_following(connector: type) -> type:
    """``connector`` (a websockets class that follows a handshake's 3xx) made to take the 3xx as the answer."""

    class NoRedirects(connector):  # type: ignore[misc]
        def process_redirect(self, exc: Exception) -> Exception | str:
            return exc  # the 3xx itself: a refused handshake (`stream_session.reopen_worthy`)

    return NoRedirects


def _connect_without_redirects(url: str, **options: Any) -> Any:
    """websockets' sync ``connect``, never following a handshake's redirect (checks never do: a session is
    judged only by the server asked, and a redirect would carry ``headers`` to whatever host it names).
    websockets 17 follows redirects (its ``reconnect`` class); 15 and 16 do not."""
    from websockets.sync import client

    following = getattr(client, "reconnect", None)
    if following is None or not hasattr(following, "process_redirect"):
        return client.connect(url, **options)
    return _not_following(following)(url, **options).connect()


def _aconnect_without_redirects(url: str, **options: Any) -> Any:
    """The asyncio twin of `_connect_without_redirects` (websockets' asyncio ``connect`` follows them)."""
    from websockets.asyncio.client import connect

    return _not_following(connect)(url, **options)


async def _received(ws: Any) -> Frame:
    """The next frame of ``ws``; one over `PARSE_INLINE_BYTES` comes back parsed, by a worker thread.

    On a free-threaded build the caller's loop runs on meanwhile. On a GIL build json's C parser holds the
    GIL throughout, so the loop still waits out one frame's parse: `DEFAULT_MAX_FRAME_BYTES` bounds that."""
    raw: str | bytes = await ws.recv()
    if len(raw) <= PARSE_INLINE_BYTES:
        return raw
    return await asyncio.to_thread(parse_frame, raw)


class RemoteStream:
    """The stream backend of a remote guard: opens monitors over ``WS {base_url}/stream``.

    ``base_url`` may be a list of replicas: a session opens on the one with the fewest of this client's
    sessions, and fails over to another (at most ``max_failovers`` re-opens per call and
    ``max_session_failovers`` per session; once every replica
    refused in a call, re-opens wait ``backoff_s``, doubling up to ``max_backoff_s``, or the refusal's
    ``Retry-After``, within the deadline). A replica that failed is passed over for ``cooldown_s``; one that
    refused the caller's own text or request (close 1009, 4400: `callers_error`) did not fail, and is not.
    ``max_frame_bytes``: the largest frame accepted from the server (`DEFAULT_MAX_FRAME_BYTES`); a larger
    one ends the session as a guard error (the policy's ``on_error`` decides), and is not re-opened for.

    As the checks' client (`OpenAIGen`) does: ``headers`` go on every handshake (the ``Authorization`` built
    from ``api_key`` replaces one in ``headers``; the handshake's own, such as ``Host`` or ``Upgrade``, are
    refused: ``ValueError``); the proxy is the one httpx takes from the environment for the same server
    (`proxy_for`), read at each connection; ``verify`` (httpx's meaning, `ssl_context`) checks a ``wss://``
    server's certificate (None: websockets' default, the system's CAs). A SOCKS proxy needs
    ``python-socks``: without it a session is a guard error saying so (`MissingDependency`), as a check is.

    ``close()`` refuses what comes next, as a closed `OpenAIGen` refuses checks: opening a session, and the
    next ``feed``/``finish`` of a monitor opened before, are a guard error ("the remote guard backend is
    closed", decided by the policy's ``on_error``: `GuardUnavailable` by default) and that monitor's
    connection is closed; an exchange already in flight in another thread or task completes. Closing a
    monitor stays each monitor's own job (``with`` / ``async with``)."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        api_key: str | None = None,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        max_failovers: int = DEFAULT_MAX_FAILOVERS,
        max_session_failovers: int = DEFAULT_MAX_SESSION_FAILOVERS,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        headers: Mapping[str, str] | None = None,
        verify: Verify | None = None,
    ) -> None:
        if not isinstance(max_frame_bytes, int) or isinstance(max_frame_bytes, bool) or max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be a positive int of bytes, got {max_frame_bytes!r}")
        if max_failovers < 0 or max_session_failovers < 0:
            raise ValueError("max_failovers and max_session_failovers must be >= 0")
        if backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        given = base_urls(base_url, schemes=("http://", "https://", "ws://", "wss://"))
        urls = tuple(dict.fromkeys(stream_url(u) for u in given))  # "http://a/v1" and "ws://a" are one replica
        self.replicas = Replicas(urls, cooldown_s=cooldown_s)
        self.url = urls[0]
        self.urls = urls
        self.name = f"remote-stream:{self.url}" if len(urls) == 1 else f"remote-stream:{list(urls)}"
        self.headers = _handshake_headers(headers, api_key)
        #: Masks the client's credentials in what it makes of a server's refusal or error (rt61c F3).
        self.mask = SecretMask(api_key, headers, given)
        #: The TLS context of ``wss://`` connections (None: websockets' default).
        self.ssl = None if verify is None else ssl_context(verify)
        self.open_timeout_s = open_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.max_failovers = max_failovers
        self.max_session_failovers = max_session_failovers
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_frame_bytes = max_frame_bytes
        self._closed = False

    def __repr__(self) -> str:
        shown = [without_password(u) for u in self.urls]  # a URL's password never in a repr (rt51d F8)
        return f"RemoteStream({shown[0] if len(shown) == 1 else shown!r})"

    def open_remote_monitor(
        self, guard: Any, prompt: str | Sequence[Mapping[str, Any]], **options: Any
    ) -> RemoteStreamMonitor:
        return RemoteStreamMonitor(self, guard, prompt, **options)

    def open_remote_async_monitor(
        self, guard: Any, prompt: str | Sequence[Mapping[str, Any]], **options: Any
    ) -> AsyncRemoteStreamMonitor:
        return AsyncRemoteStreamMonitor(self, guard, prompt, **options)

    def connect_options(self, url: str) -> dict[str, Any]:
        """What websockets' ``connect`` is given for ``url`` besides limits: headers, TLS and the proxy.
        Raises `GuardUnavailable` once closed, `MissingDependency` when the proxy cannot be used."""
        self.check_open()
        options: dict[str, Any] = {"additional_headers": self.headers}
        if self.ssl is not None and url.startswith("wss://"):
            options["ssl"] = self.ssl  # websockets refuses a context for ws://
        proxy = proxy_for(url)
        if proxy is not None and proxy.startswith("socks") and importlib.util.find_spec("python_socks") is None:
            raise MissingDependency(
                f"python-socks is not installed: the stream server {without_password(url)} is reached through the SOCKS "
                "proxy "
                f"{without_password(proxy)} (from the environment, as the checks' httpx reads it); "
                f"pip install python-socks"
            )
        options["proxy"] = proxy  # None: direct, never websockets' own reading of the environment
        return options

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        """Raise `GuardUnavailable` once `close` was called."""
        if self._closed:
            raise GuardUnavailable(CLOSED)

    def close(self) -> None:
        """Refuse new sessions and the next exchange of open monitors (see the class docstring); each
        monitor still closes its own connection."""
        self._closed = True


def _masked(mask: SecretMask, exc: BaseException) -> BaseException:
    """``exc`` with no credential of the client in the text a guard error makes of it (`_Session._fail`: the
    decision's error, the fail-closed message): a server or gateway that echoes the key it was sent (rt61c F3)."""
    if not mask:
        return exc
    if isinstance(exc, websockets_module().exceptions.InvalidStatus):
        response = exc.response
        text = bytes(response.body or b"").decode("utf-8", "replace")
        if mask.shows_in(text):
            response.body = mask.text(text).encode()  # the refusal's body is read for its message
        return exc  # type: ignore[no-any-return]  # websockets' class, imported lazily, reads as Any
    if not mask.shows_in(str(exc)):
        return exc
    if isinstance(exc, QwenGuardError):
        return mask.error(exc)
    kind = GuardTimeout if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) else GuardUnavailable
    masked = kind(mask.text(f"{type(exc).__name__}: {exc}"))
    masked.__cause__ = exc
    return masked


def _handshake_headers(headers: Mapping[str, str] | None, api_key: str | None) -> dict[str, str]:
    """What a check sends (`request_headers`), less the headers the handshake sets itself."""
    for name in headers or {}:
        if isinstance(name, str) and name.lower() in HANDSHAKE_HEADERS:
            raise ValueError(f"a stream session cannot send its own {name!r} header: the WebSocket handshake sets it")
    return request_headers(headers, api_key)


class RemoteStreamMonitor(_Session, SyncOnly):
    """Sync monitor over one WebSocket. Use as a context manager (``with guard.stream(p) as m:``)."""

    _ws: Any = None
    _endpoint: str | None = None
    _opened = False

    def open(self) -> RemoteStreamMonitor:
        """Connect and screen the prompt (idempotent; ``__enter__`` and the first `feed` call it)."""
        if self._opened:
            return self
        self._opened = True
        stage = self._open_stage
        self._call(self._deadline(stage), stage, None, "opened")
        return self

    def __enter__(self) -> RemoteStreamMonitor:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one call: an attempt on the session's connection, then re-opens elsewhere ---------------
    def _fail(self, exc: BaseException, stage: Stage = Stage.STREAM, *, timed_out: bool = False) -> str:
        return super()._fail(_masked(self.backend.mask, exc), stage, timed_out=timed_out)

    def _call(self, deadline: Deadline, stage: Stage, frame: str | None, expect: str) -> str:
        """Send ``frame`` on the open session (``None``: open one) and return what its reply releases;
        when the replica fails, re-open on another and replay (`stream_session`), within ``deadline``."""
        tried: list[str] = []
        reopens = 0
        pause = 0.0
        # What the call returns is all it released, also by attempts that failed part-way (a replay that
        # released some text, then lost its replica): that text is out, and the caller must get it.
        mark = self._released_len
        if self.backend.closed:  # as a closed OpenAIGen refuses a check: a guard error, the policy decides
            self._close_ws()
            self._fail(GuardUnavailable(CLOSED), stage)
            return self._released_since(mark)
        while True:
            try:
                if pause:
                    time.sleep(pause)  # every replica refused: wait out the moment (within the deadline)
                attempt = self._attempt(deadline, reopens)
                if frame is not None:
                    self._send(frame, attempt)
                    self._on_reply(self._ws.recv(timeout=attempt.left()), expect)
                else:
                    self._drive(self._rebuild(expect), attempt, tried)
                return self._released_since(mark)
            except GuardViolation:
                self._close_ws()
                raise
            except self._errors() as exc:
                if self._endpoint is not None:
                    tried.append(self._endpoint)
                    if not callers_error(exc):  # a refusal of the caller's own text is no fault of the replica
                        self.backend.replicas.failed(self._endpoint)
                self._abort_ws()
                wait = (
                    self._reopen_pause(deadline, reopens, tried, exc)
                    if self._may_reopen(exc, deadline, reopens)
                    else None
                )
                if wait is None:
                    self._fail(exc, stage, timed_out=deadline.expired)
                    return self._released_since(mark)
                pause = wait
                reopens += 1
                self.failovers += 1 if self._ever_opened else 0
                frame = None  # from now on: a new session, replayed
            except BaseException:
                self._abandon()
                raise

    def _drive(self, steps: Generator[str, Frame, None], attempt: Deadline, tried: list[str]) -> None:
        """Connect to a replica and run ``steps`` (frames out, replies in) on it."""
        url = self.backend.replicas.pick(exclude=tried)
        options = self.backend.connect_options(url)  # closed, or an unusable proxy: no replica is blamed
        # __enter__ marks the connection as managed here (websockets >= 17 warns otherwise);
        # this monitor closes it in close()/__exit__.
        self._endpoint = url
        self.backend.replicas.acquire(url)
        self._ws = _connect_without_redirects(
            url,
            **options,
            open_timeout=attempt.left(self.backend.open_timeout_s),
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=self.backend.max_frame_bytes,
        ).__enter__()
        refuse_redirect(self._ws, url)
        frame = next(steps)
        while True:
            self._send(frame, attempt)
            reply = self._ws.recv(timeout=attempt.left())
            try:
                frame = steps.send(reply)
            except StopIteration:
                self.backend.replicas.succeeded(url)
                return

    def _send(self, frame: str, deadline: Deadline) -> None:
        # Every send has the deadline, small frames too: a replica that sends its replies ahead of time and
        # stops reading fills the socket buffers one small frame after another (a replay is many frames).
        with send_deadline(self._ws.socket, deadline.at):
            self._ws.send(frame)

    def _local_monitor(self) -> Any:
        from ..streaming.monitor import StreamMonitor

        return StreamMonitor

    def _exchange(self, frame: str, expect: str) -> str:
        return self._call(self._deadline(Stage.STREAM), Stage.STREAM, frame, expect)

    def _locally(self, call: Any) -> str:
        try:
            out = call(self.local)
        except BaseException as exc:
            self._local_stop(exc)
            raise
        return self._local_outcome(out)

    def feed(self, delta: str) -> str:
        """Send ``delta``; return the text now safe to release. Raises `GuardViolation` on a violation."""
        delta = check_delta(delta)
        self.open()
        frame = self._feed_frame(delta)
        if self.local is not None:  # fed as written: it holds a last CR itself
            return self._locally(lambda m: m.feed(delta))
        return "" if frame is None else self._exchange(frame, "released")

    def finish(self) -> str:
        """End of the stream: the rest of the text, once judged."""
        self.open()
        self._check_feedable()
        out = ""
        if self.local is None:
            if (tail := self._end_cr_frame()) is not None:
                out = self._exchange(tail, "released")
            out += self._exchange(FINISH_FRAME, "finished")
        if self.local is not None:  # failed open (now or before): the rest is judged here
            out += self._locally(lambda m: m.finish())
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
        if self.local is not None:
            self.local.close()

    def _forget_ws(self) -> Any:
        ws, self._ws = self._ws, None
        if self._endpoint is not None:
            self.backend.replicas.release(self._endpoint)
            self._endpoint = None
        return ws

    def _close_ws(self) -> None:
        ws = self._forget_ws()
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _abort_ws(self) -> None:
        """Drop the connection without a closing handshake (the server misbehaved or failed)."""
        ws = self._ws
        if ws is not None:
            shutdown_socket(ws.socket)
        self._close_ws()

    def close(self) -> None:
        """Stop the session and close its WebSocket."""
        if self._state == "open":
            self._state = "closed"
        self._close_ws()
        if self.local is not None:
            self.local.close()


class AsyncRemoteStreamMonitor(_Session, AsyncOnly):
    """Async monitor over one WebSocket (``async with guard.astream(p) as m:``)."""

    _ws: Any = None
    _endpoint: str | None = None
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
        stage = self._open_stage
        await self._acall(self._deadline(stage), stage, None, "opened")
        return ""

    async def __aenter__(self) -> AsyncRemoteStreamMonitor:
        return await self.aopen()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _fail(self, exc: BaseException, stage: Stage = Stage.STREAM, *, timed_out: bool = False) -> str:
        return super()._fail(_masked(self.backend.mask, exc), stage, timed_out=timed_out)

    async def _acall(self, deadline: Deadline, stage: Stage, frame: str | None, expect: str) -> str:
        """Async twin of `RemoteStreamMonitor._call`."""
        tried: list[str] = []
        reopens = 0
        pause = 0.0
        mark = self._released_len  # the call returns all it released (see `RemoteStreamMonitor._call`)
        if self.backend.closed:
            await self._aclose_ws()
            self._fail(GuardUnavailable(CLOSED), stage)
            return self._released_since(mark)
        while True:
            try:
                if pause:
                    await asyncio.sleep(pause)
                    if self._state == "closed":  # closed during the wait: nothing more is released
                        return self._released_since(mark)
                attempt = self._attempt(deadline, reopens)
                if frame is not None:
                    reply = await asyncio.wait_for(self._send_recv(self._ws, frame), attempt.left())
                    self._on_reply(reply, expect)
                else:
                    await asyncio.wait_for(self._adrive(self._rebuild(expect), tried), attempt.left())
                return self._released_since(mark)
            except GuardViolation:
                await self._aclose_ws()
                raise
            except self._errors() as exc:
                if self._endpoint is not None:
                    tried.append(self._endpoint)
                    if not callers_error(exc):  # a refusal of the caller's own text is no fault of the replica
                        self.backend.replicas.failed(self._endpoint)
                self._abort_ws()
                if self._state == "closed":  # closed while the exchange ran: nothing more is released
                    return self._released_since(mark)
                wait = (
                    self._reopen_pause(deadline, reopens, tried, exc)
                    if self._may_reopen(exc, deadline, reopens)
                    else None
                )
                if wait is None:
                    self._fail(exc, stage, timed_out=deadline.expired)
                    return self._released_since(mark)
                pause = wait
                reopens += 1
                self.failovers += 1 if self._ever_opened else 0
                frame = None

    @staticmethod
    async def _send_recv(ws: Any, frame: str) -> Frame:
        await ws.send(frame)
        return await _received(ws)

    async def _adrive(self, steps: Generator[str, Frame, None], tried: list[str]) -> None:
        url = self.backend.replicas.pick(exclude=tried)
        options = self.backend.connect_options(url)
        self._endpoint = url
        self.backend.replicas.acquire(url)
        self._ws = await _aconnect_without_redirects(
            url,
            **options,
            open_timeout=self.backend.open_timeout_s,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=self.backend.max_frame_bytes,
        )
        if self._state == "closed":  # aclose() ran while connecting: found no connection to drop
            raise ConnectionAbortedError("the monitor was closed")
        refuse_redirect(self._ws, url)
        frame = next(steps)
        while True:
            await self._ws.send(frame)
            reply = await _received(self._ws)
            try:
                frame = steps.send(reply)
            except StopIteration:
                self.backend.replicas.succeeded(url)
                return

    def _local_monitor(self) -> Any:
        from ..streaming.monitor import AsyncStreamMonitor

        return AsyncStreamMonitor

    async def _aexchange(self, frame: str, expect: str) -> str:
        return await self._acall(self._deadline(Stage.STREAM), Stage.STREAM, frame, expect)

    async def _alocally(self, call: Any) -> str:
        try:
            out = await call(self.local)
        except BaseException as exc:
            self._local_stop(exc)
            raise
        return self._local_outcome(out)

    async def afeed(self, delta: str) -> str:
        """Async twin of `RemoteStreamMonitor.feed`."""
        delta = check_delta(delta)
        return await self._lane.run("feed", lambda: self._feed_work(delta))

    async def _feed_work(self, delta: str) -> str:
        await self._open_work()
        frame = self._feed_frame(delta)
        if self.local is not None:  # fed as written: it holds a last CR itself
            return await self._alocally(lambda m: m.afeed(delta))
        return "" if frame is None else await self._aexchange(frame, "released")

    async def afinish(self) -> str:
        """Async twin of `RemoteStreamMonitor.finish`."""
        return await self._lane.run("finish", self._finish_work)

    async def _finish_work(self) -> str:
        await self._open_work()
        self._check_feedable()
        out = ""
        if self.local is None:
            if (tail := self._end_cr_frame()) is not None:
                out = await self._aexchange(tail, "released")
            out += await self._aexchange(FINISH_FRAME, "finished")
        if self.local is not None and self._state == "open":  # failed open: the rest is judged here
            out += await self._alocally(lambda m: m.afinish())
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

    def _forget_ws(self) -> Any:
        ws, self._ws = self._ws, None
        if self._endpoint is not None:
            self.backend.replicas.release(self._endpoint)
            self._endpoint = None
        return ws

    async def _aclose_ws(self) -> None:
        ws = self._forget_ws()
        if ws is not None:
            try:
                await ws.close()
            except Exception:  # noqa: BLE001
                pass

    def _abort_ws(self) -> None:
        ws = self._forget_ws()
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
        if self.local is not None:
            self.local.close()

    def close(self) -> None:
        """Mark the session stopped and drop its connection (use `aclose` for a graceful close)."""
        if self._state == "open":
            self._state = "closed"
        self._abort_ws()
        if self.local is not None:
            self.local.close()
