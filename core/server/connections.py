"""The connection layer under the app: how uvicorn is configured, and a guard against idle and slow sockets.

uvicorn (0.54) bounds idle time only *between* requests (``timeout_keep_alive``), and its own timer is
cancelled by the first byte of the next request. Nothing bounds how long a client may take to send a
request head, a connection that never sends anything is kept forever, and the httptools parser keeps
any amount of header bytes (uvicorn issue #157, still open). ASGI middleware cannot help: it runs only
once a head is complete. So `guarded_protocol` subclasses uvicorn's own HTTP protocol class and adds
three things, all measured at the socket:

- a *head deadline*: a request head must be complete within ``head_timeout_s`` of the connection
  opening (or of the previous response, plus ``keep_alive_s``), else the connection is closed
  (with a 408 when part of a head had arrived);
- a *head size cap* (httptools; h11 has ``h11_max_incomplete_event_size``): 431 past it;
- a *connection budget*: at most ``max_connections`` open sockets. At the limit a new connection
  takes the place of a socket of the address that holds the most: one the server already ended and keeps
  only to flush to a client that does not read it (closed with an answer unsent that the client has taken
  none of since, or a stream session's close sent), else the oldest one only waiting for a head (idle or
  dripping), so a flood of idle sockets cannot lock out a client that is actually sending a request, and a
  client still reading a closed answer keeps it; when every socket is busy with a request, the new one gets a
  503 and is closed.

Bodies that arrive too slowly are the gate's business (`Gate`: 408 past ``request_timeout_s``), and
WebSocket sessions the stream protocol's (idle and lifetime limits). So are answers a client does not read:
uvicorn's send waits for the socket to drain without end, so each is bounded (`sent_within`), and a client
that does not take one in time is cut off (`abort_connection`), its slot freed. Its close waits to flush without
end too: a socket closed by anyone (uvicorn included) is reset a head deadline later if it is still open then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
import weakref
from collections import Counter
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any

from .limits import Limits
from .metrics import SERVED_PATHS
from .turns import client_address


def _plain_response(status: int, reason: str, message: str, extra_headers: str = "") -> bytes:
    body = message.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n{extra_headers}"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_RESPONSES = {
    408: _plain_response(408, "Request Timeout", "request head arrived too slowly"),
    431: _plain_response(431, "Request Header Fields Too Large", "request head is too large"),
    503: _plain_response(503, "Service Unavailable", "server busy: too many connections", "retry-after: 1\r\n"),
}


#: The socket whose bytes the guarded protocol is reading. The tasks uvicorn starts for what it reads (a request's,
#: a pipelined one's after it, a stream session's) are created meanwhile and keep it, since a task copies the
#: context it is created in: so the app can cut off the connection it serves (`abort_connection`).
_CONNECTION: ContextVar[asyncio.WriteTransport | None] = ContextVar("qwenguard_connection", default=None)


class ClientStalled(Exception):
    """A client did not take what the server sent within its deadline. ``cut_off``: its connection was cut off
    (`abort_connection`; else the app is served without `guarded_protocol`, which has no socket to cut)."""

    def __init__(self, message: str, *, cut_off: bool) -> None:
        super().__init__(message)
        self.cut_off = cut_off


def abort_connection() -> bool:
    """Cut off the connection the current request or stream session came on, at once: the socket is reset and
    what waits to be written is dropped. A close would wait for a client that stopped reading to read it, for
    as long as it keeps the socket open. ``False`` when there is none to cut (the app served without
    `guarded_protocol`)."""
    transport = _CONNECTION.get()
    if transport is None:
        return False
    _reset(transport)
    return True


def abort_connection_later(delay: float) -> None:
    """Cut off the current connection ``delay`` seconds from now, unless it is closed by then (then this does
    nothing): a stream session's socket after its close, which uvicorn closes by waiting to flush."""
    transport = _CONNECTION.get()
    if transport is not None:
        asyncio.get_running_loop().call_later(delay, _reset, transport)


def _reset(transport: asyncio.WriteTransport) -> None:
    """Abort ``transport`` with a reset (RST): a plain abort closes the socket, whose FIN waits in the kernel behind
    what the client never read, up to 4 MB of it, for minutes. Nothing to do once the socket is closed (the timer of
    `abort_connection_later` after a session that ended normally). A transport that is only closing is still reset:
    its close waits to flush what a client that stopped reading never takes."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        if sock.fileno() < 0:
            return  # closed: uvloop's stand-in socket raises ValueError (not OSError) on a closed descriptor
        with contextlib.suppress(OSError, ValueError):  # closed in between
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def unsent_bytes() -> int:
    """How many bytes of what the current connection was sent wait in the server, not yet taken by its socket: more
    than none once the kernel's buffers are full, so a client that does not read what it was sent. 0 when there is
    no connection to look at (the app served without `guarded_protocol`)."""
    transport = _CONNECTION.get()
    if transport is None or transport.is_closing():
        return 0
    return int(transport.get_write_buffer_size())


def pipelined_answers() -> int:
    """How many answers in a row the current connection was sent while more requests waited behind them (HTTP
    pipelining: sent before the answer ahead of them). 0 when there is no connection to look at."""
    transport = _CONNECTION.get()
    protocol = None if transport is None else transport.get_protocol()
    return int(getattr(protocol, "pipelined_answers", 0))


class _ResettingTransport:
    """A guarded connection's transport as uvicorn's protocols use it (the HTTP one, and the WebSocket one it hands
    the socket to), whose close resets the socket ``linger`` seconds later unless it is gone by then (`_reset`).

    uvicorn closes a socket by waiting to flush it, for a client that never reads for as long as it keeps the
    socket open; it closes from a dozen places (a response with ``Connection: close``, its keep-alive timeout, a
    shutdown, the WebSocket closing handshake, our refusals and evictions). One address filled --max-connections
    with such sockets, in_flight 0 and /ready true, and every other client got 503 (rt68b F1). Wrapping the
    transport catches every close, uvicorn's own included."""

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop, linger: float) -> None:
        self._transport = transport
        self._loop = loop
        self._linger = linger
        self._reset_timer: asyncio.TimerHandle | None = None
        self._gone = False  # the connection is lost: a close now (uvicorn's, in its connection_lost) resets nothing
        #: When the server closed the connection (the loop's clock), ``None`` while open.
        self.closed_at: float | None = None
        #: What waited unsent in the server when it closed the connection: less now, the client is reading it.
        self.unsent_at_close = 0
        #: The budget took this connection for a newcomer (reset or closed it): no other newcomer counts on it.
        self.taken = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        if self.closed_at is None and not self._gone:
            self.closed_at = self._loop.time()
            self.unsent_at_close = self._transport.get_write_buffer_size()
            # Whatever waits unsent now: an answer under way goes on being written after the close (an eviction).
            self._reset_timer = self._loop.call_later(self._linger, _reset, self._transport)
        self._transport.close()

    def unread_since_close(self) -> bool:
        """Closed with something unsent that the client has taken none of since: a client still reading an answer
        (``Connection: close`` from urllib, HTTP/1.0, our 429s and 503s) takes from it, and keeps its socket."""
        if self.closed_at is None or self._gone:
            return False
        unsent = self._transport.get_write_buffer_size()
        return 0 < unsent and unsent >= self.unsent_at_close

    def forget(self) -> None:
        """The connection is gone: no reset to come, none scheduled by a close after this."""
        self._gone = True
        if self._reset_timer is not None:
            self._reset_timer.cancel()
            self._reset_timer = None


def _ended_since(connection: Any) -> float | None:
    """When the server ended ``connection`` (closed it, or sent its WebSocket close), ``None`` while it has not."""
    closed_at = getattr(getattr(connection, "transport", None), "closed_at", None)
    if closed_at is not None:
        return float(closed_at)
    close_sent_at = getattr(connection, "close_sent_at", None)
    return None if close_sent_at is None else float(close_sent_at)


def _ended_unread(connection: Any) -> bool:
    """The server ended ``connection`` and keeps its socket only for a client that does not read what is left: closed
    with an answer unsent that the client has taken none of since (`_ResettingTransport.unread_since_close`), or a
    stream session whose close was sent. Not one the budget already took for another newcomer."""
    transport = getattr(connection, "transport", None)
    if not isinstance(transport, _ResettingTransport) or transport.taken:
        return False
    if transport.closed_at is not None:
        return transport.unread_since_close()
    return getattr(connection, "close_sent_at", None) is not None and not transport.is_closing()


async def sent_within(send: Awaitable[Any], timeout: float | None) -> None:
    """Await ``send`` (a response message or a frame going out) for at most ``timeout`` seconds (``None``: no
    bound). Past it the connection is cut off (`abort_connection`) and `ClientStalled` raised: uvicorn's send
    waits for the socket to drain, and a client that stops reading held a request's slot, or a stream
    session, for as long as it kept the socket open (rt65f F1, F2).

    A send that need not wait goes out even with no time left: its first step runs before the wait looks."""
    if timeout is None:
        await send
        return
    sending = asyncio.ensure_future(send)
    try:
        done, _ = await asyncio.wait({sending}, timeout=max(timeout, 0.0))
    except BaseException:
        sending.cancel()
        raise
    if done:
        sending.result()
        return
    cut_off = abort_connection()
    sending.cancel()
    await asyncio.wait({sending})
    raise ClientStalled(f"the client took nothing sent within {timeout:.3g} s", cut_off=cut_off)


def _peer(connection: Any) -> str:
    """The client address a connection counts for (`client_address`: IPv6 by /64)."""
    return client_address({"client": getattr(connection, "client", None)})


def guarded_protocol(limits: Limits, base: type | None = None) -> type:
    """uvicorn's HTTP protocol class (httptools, else h11) with the head deadline, the head size cap
    and the connection budget of ``limits``. Pass the result as ``uvicorn.Config(http=...)``."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        base = AutoHTTPProtocol

    class GuardedHTTPProtocol(base):  # type: ignore[misc, valid-type]
        head_timeout_s = limits.head_timeout_s
        keep_alive_s = limits.keep_alive_s
        max_head_bytes = limits.max_head_bytes
        max_connections = limits.connection_budget()

        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _waiting_since = 0.0
        _refused = False  # answered and closing: the rest of what the client sent is ignored
        pipelined_answers = 0  # answers in a row sent with more requests waiting behind them (`pipelined_answers`)

        # -- the head deadline ------------------------------------------------------------
        def connection_made(self, transport: Any) -> None:
            # Every close of the socket, by uvicorn or by us, resets it a head deadline later if it cannot flush.
            super().connection_made(_ResettingTransport(transport, self.loop, self.head_timeout_s))
            self._requests: weakref.WeakSet[Any] = weakref.WeakSet()  # each request read (httptools' cycles)
            self._arm(self.head_timeout_s)
            if len(self.connections) > self.max_connections:
                self._make_room()

        def on_response_complete(self) -> None:
            self.pipelined_answers = self.pipelined_answers + 1 if getattr(self, "pipeline", None) else 0
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(self.keep_alive_s + self.head_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)
            self.transport.forget()  # after uvicorn's: it closes the transport again on a clean loss (rt68m F3)
            # uvicorn tells only the newest request it read that the client left: one served ahead of pipelined
            # ones waited on, for its answer to drain or for a hang-up it never heard of, without end.
            for cycle in list(self._requests):
                if not cycle.response_complete:
                    cycle.disconnected = True
                    cycle.message_event.set()

        def handle_websocket_upgrade(self, *args: Any) -> None:
            self._disarm()  # the socket is the WebSocket protocol's now
            super().handle_websocket_upgrade(*args)

        def _waiting_for_head(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or cycle.response_complete

        def _arm(self, delay: float) -> None:
            self._disarm()
            self._head_bytes = 0
            self._waiting_since = self.loop.time()
            self._head_timer = self.loop.call_later(delay, self._head_deadline)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_deadline(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or not self._waiting_for_head():
                return  # a request is being served; on_response_complete arms the next deadline
            self._refuse(408 if self._head_bytes else None)

        def _refuse(self, status: int | None) -> None:
            self._refused = True
            if not self.transport.is_closing():
                if status is not None:
                    self.transport.write(_RESPONSES[status])
                self.transport.close()

        # -- the head size cap (httptools parser callbacks; h11 enforces its own) ----------
        def on_message_begin(self) -> None:
            # Each head counts alone: pipelined heads parsed before an answer were added up, and nine requests of
            # an 8 KB header each, sent in one write, got 431 (rt67b F2). 1: something arrived (a timeout is a 408).
            self._head_bytes = 1
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count_head(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_head(len(name) + len(value))
            super().on_header(name, value)

        def _count_head(self, size: int) -> None:
            self._head_bytes += size
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431)

        def on_headers_complete(self) -> None:
            if not self._refused:
                super().on_headers_complete()
                if getattr(self, "cycle", None) is not None:
                    self._requests.add(self.cycle)

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._waiting_for_head():
                self._head_bytes = max(self._head_bytes, 1)  # something arrived: a timeout is a 408
            reading = _CONNECTION.set(self.transport)  # for the tasks started for what it holds (`abort_connection`)
            try:
                super().data_received(data)
            finally:
                _CONNECTION.reset(reading)

        # -- the connection budget ------------------------------------------------------------
        def _make_room(self) -> None:
            # A socket of the address that holds the most, of those the budget may take: one the server ended that is
            # kept only to flush to a client that does not read it (rt68b F1, F2), else one only waiting for a head,
            # the oldest first. A client still reading a closed answer is not taken: an address that filled the
            # budget with idle sockets reset every honest Connection: close answer read at its pace (rt68m F1).
            counts = Counter(_peer(c) for c in self.connections)
            ended = [c for c in self.connections if c is not self and _ended_unread(c)]
            idle = [
                c
                for c in self.connections
                if isinstance(c, GuardedHTTPProtocol)
                and c is not self
                and c._waiting_for_head()
                and not c.transport.is_closing()
            ]
            if ended or idle:
                ended_set = set(ended)

                def rank(c: Any) -> tuple[int, bool, float]:
                    since = _ended_since(c) if c in ended_set else c._waiting_since
                    return (counts[_peer(c)], c in ended_set, -(since or 0.0))

                taken = max([*ended, *idle], key=rank)
                # Taken once: connections accepted in one turn all arrive before any leaves (asyncio), and each
                # newcomer took the same one again, letting the rest past the budget (rt68m F2).
                taken.transport.taken = True
                if taken in ended_set:
                    _reset(taken.transport)
                else:
                    taken._refuse(None)
                return
            hog = self._hog_request()
            if hog is not None:
                # A pipelining one may be part way through an answer: no 503 into the middle of it.
                hog._refuse(503 if hog._body_pending() else None)
            else:
                self._refuse(503)

        def _body_pending(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is not None and not cycle.response_complete and bool(getattr(cycle, "more_body", False))

        def _pipelining(self) -> bool:
            """Requests wait behind the one being served: sent before its answer, as only a pipelining client does."""
            return bool(getattr(self, "pipeline", None))

        def _hog_request(self) -> GuardedHTTPProtocol | None:
            """At the budget with no idle socket: a request whose body is still arriving, or one with requests
            pipelined behind it, from the client address that holds the most sockets, when that is more than the
            newcomer's address holds (the most recent of them): each address's turns to send a body are sockets the
            budget never takes back, and one address (or a few) that filled the rest of it with idle stream sessions
            and waiting bodies locked every other client out until the deadline (rt50e F4); one that pipelined
            thousands of GETs of /health on every socket, served with no turn, kept them busy as long (rt68b F3)."""
            counts = Counter(_peer(c) for c in self.connections)
            pending = [
                c
                for c in self.connections
                if isinstance(c, GuardedHTTPProtocol) and c is not self and not c.transport.is_closing()
                if c._body_pending() or c._pipelining()
            ]
            if not pending:
                return None
            worst = max(pending, key=lambda c: (counts[_peer(c)], c._waiting_since))
            return worst if counts[_peer(worst)] > counts[_peer(self)] + 1 else None

    GuardedHTTPProtocol.__qualname__ = GuardedHTTPProtocol.__name__ = f"Guarded{base.__name__}"
    return GuardedHTTPProtocol


#: The most frames of a client's one WebSocket connection read in one turn of the event loop, and the most bytes.
#: uvicorn parses all that one read holds (256 KB: 43,000 empty frames of 6 bytes, ~1 µs of the loop per byte), and
#: a socket kept full took every turn: /health waited 40-57 s behind one client's flood of pongs (rt66n F1).
FRAMES_PER_TURN = 16
BYTES_PER_TURN = 64 * 1024

#: The smallest frame a client sends (masked, empty): the most frames ``n`` bytes can complete is about ``n / 6``.
_SMALLEST_FRAME = 6
#: The largest share parsed at once while a large frame arrives (the shares double up to it while no frame ends):
#: shares of a few frames' bytes would take a megabyte frame in 10,000 steps.
_LARGEST_SHARE = 4096

#: Frames that do nothing (an unsolicited pong, an empty fragment that does not end its message) a client may send
#: between two messages, and fragments one message may have: past either, the connection is closed 1008. They cost
#: the loop as any frame does, and the message's size limit counts payload only, so a message that never ended
#: took empty fragments, and memory, without end (rt66n F1).
IDLE_FRAMES = 32
MESSAGE_FRAGMENTS = 1024


def websocket_protocol() -> type:
    """uvicorn's websockets-sansio protocol (the one `server_config` serves), with these changes:

    - the handshake is marked done once a denial response (the ASGI "websocket.http.response" extension: our
      401/429/503 refusals) is on the wire. Without it uvicorn logs "ASGI callable returned without completing
      handshake" at ERROR for every refusal (fixed the same way upstream in Kludex/uvicorn#3138, open at 0.54;
      wsproto already behaves so);
    - the socket is not read while what was written to it waits over the transport's high-water mark (the
      client is not reading). uvicorn answers every ping with a pong written at once, whatever waits unread: a
      client that sent pings and read nothing grew the server's memory as fast as it sent (rt66f F1: 200 MB in
      15 s), for as long as its session lived. Its pings now wait in the socket, and the session's limits end it;
    - what one read holds is parsed `FRAMES_PER_TURN` frames or `BYTES_PER_TURN` bytes at a time, one share per
      turn of the event loop, the socket not read meanwhile; and no further while a message waits for the app,
      as uvicorn stops reading for one (it parsed on to the end of the read, queueing every message);
    - a connection that sends more than `IDLE_FRAMES` frames that do nothing between two messages, or a message
      in more than `MESSAGE_FRAGMENTS` fragments, is closed 1008 (rt66n F1).
    """
    from uvicorn.protocols.websockets.websockets_sansio_impl import (
        WebSocketsSansIOProtocol,
    )
    from websockets.protocol import OPEN

    class DenialAwareWebSocketProtocol(WebSocketsSansIOProtocol):
        _output_unread = False  # the transport's buffer is over its high-water mark
        _turn_scheduled = False  # a share of `_unparsed` is to be parsed on the loop's next turn
        _idle_frames = 0  # frames that did nothing since the last message
        _fragments = 0  # fragments of the message being received

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._unparsed = bytearray()  # what was read and not yet parsed, the socket not read meanwhile

        #: When the session's close was sent (the loop's clock): the socket is kept only for the client's answer,
        #: and `guarded_protocol`'s budget takes it back first (rt68b F2).
        close_sent_at: float | None = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._unparsed.clear()
            super().connection_lost(exc)
            forget = getattr(self.transport, "forget", None)  # `_ResettingTransport`: no reset to come
            if forget is not None:
                forget()  # after uvicorn's, which closes the transport again (rt68m F3)

        # -- what is read, a share per turn ---------------------------------------------------
        def data_received(self, data: bytes) -> None:
            self._unparsed += data
            if self._turn_scheduled or self._parsing_held():
                self._sync_reading()
                return
            self._parse_turn()

        def _parsing_held(self) -> bool:
            """A message waits for the app (uvicorn's pause), or the client is not reading what was written."""
            return self.read_paused or self._output_unread

        def _parse_turn(self) -> None:
            """Parse a turn's share of what was read; the rest on the loop's next turn, so that others get theirs."""
            self._turn_scheduled = False
            if self.transport.is_closing():
                self._unparsed.clear()
                return
            frames = size = unfinished = 0  # unfinished: the last share's size when it ended no frame
            reading = _CONNECTION.set(self.transport)  # for the session's task, started at the handshake
            try:
                while self._unparsed and frames < FRAMES_PER_TURN and size < BYTES_PER_TURN:
                    if self._parsing_held():
                        break
                    fewest = (FRAMES_PER_TURN - frames) * _SMALLEST_FRAME  # at most the frames left in the turn
                    share = min(BYTES_PER_TURN - size, max(fewest, min(2 * unfinished, _LARGEST_SHARE)))
                    chunk = bytes(self._unparsed[:share])
                    del self._unparsed[:share]
                    size += len(chunk)
                    self.conn.receive_data(chunk)
                    ended = len(self.conn.events)
                    frames += ended
                    unfinished = 0 if ended else len(chunk)
                    if self.conn.parser_exc is not None:
                        self.handle_parser_exception()
                    else:
                        self.handle_events()
                    if self.transport.is_closing():
                        self._unparsed.clear()
                        return
            finally:
                _CONNECTION.reset(reading)
            self._sync_reading()

        def _sync_reading(self) -> None:
            """Read the socket only while nothing read waits to be parsed and nothing holds parsing; parse what
            waits on the next turn once nothing holds it."""
            if self.transport.is_closing():
                return
            if self._unparsed or self._parsing_held():
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
            if self._unparsed and not self._parsing_held() and not self._turn_scheduled:
                self._turn_scheduled = True
                self.loop.call_soon(self._parse_turn)

        # -- frames that do nothing ------------------------------------------------------------
        def handle_text(self, event: Any) -> None:
            self._start_message(event)
            super().handle_text(event)

        def handle_bytes(self, event: Any) -> None:
            self._start_message(event)
            super().handle_bytes(event)

        def handle_cont(self, event: Any) -> None:
            self._fragments += 1
            if self._fragments > MESSAGE_FRAGMENTS:
                self._refuse_frames(f"a message in more than {MESSAGE_FRAGMENTS} fragments")
                return
            if not event.data and not event.fin:
                self._count_idle()
            super().handle_cont(event)

        def _start_message(self, event: Any) -> None:
            self._fragments = 1
            if not event.data and not event.fin:
                self._count_idle()

        def send_receive_event_to_app(self) -> None:
            self._idle_frames = 0
            super().send_receive_event_to_app()

        def handle_pong(self, event: Any) -> None:
            expected = self.pending_ping_payload
            if expected is not None and bytes(event.data) == expected:
                self._idle_frames = 0  # the answer to the server's keepalive ping
            else:
                self._count_idle()
            super().handle_pong(event)

        def _count_idle(self) -> None:
            self._idle_frames += 1
            if self._idle_frames > IDLE_FRAMES:
                self._refuse_frames(f"more than {IDLE_FRAMES} frames that do nothing")

        def _refuse_frames(self, reason: str) -> None:
            """Close the connection 1008 for frames it sends to do nothing; what it sends after is not read."""
            if self.transport.is_closing():
                return
            if self.conn.state is OPEN and not self.close_sent:
                self.conn.fail(1008, reason)
                self.handle_parser_exception()  # the app told (disconnect 1008), the close frame written
            else:  # before the handshake's answer, or after the close was sent
                self.transport.close()
            self._unparsed.clear()

        # -- flow control and the handshake ------------------------------------------------------
        def pause_writing(self) -> None:
            super().pause_writing()
            self._output_unread = True
            self.transport.pause_reading()

        def resume_writing(self) -> None:
            super().resume_writing()
            self._output_unread = False
            self._sync_reading()

        async def receive(self) -> Any:
            message = await super().receive()
            self._sync_reading()  # uvicorn resumed reading once its queue is empty: what waits unparsed first
            return message

        async def send(self, message: Any) -> None:
            await super().send(message)
            if self.close_sent and self.close_sent_at is None:
                self.close_sent_at = self.loop.time()
            self._sync_reading()  # uvicorn resumes reading once the close is sent
            if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
                self.handshake_complete = True

    return DenialAwareWebSocketProtocol


#: The request methods uvicorn's access line shows as sent; any other token (h11 passes one through) is "OTHER".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"})


class QueryStringFilter(logging.Filter):
    """Drops query strings, unknown paths and unknown methods from uvicorn's log lines: a client can put anything
    in a request line, and logs must never carry request content. (Bodies are never logged at all.) A path the
    server does not answer is logged as ``/other`` (rt53a F8), whatever its form: absolute (``http://x/...``) or
    without a slash, as h11 passes them through (rt53e F2); a method that is no HTTP method as ``OTHER``."""

    _QUERY = re.compile(r"\?[^\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            if record.name == "uvicorn.access" and len(args) == 5:  # (client, method, path, http version, status)
                client, method, path, version, status = args
                args = (client, method if method in _METHODS else "OTHER", _path(str(path)), version, status)
            elif isinstance(record.msg, str) and '"WebSocket %s"' in record.msg and len(args) >= 2:
                args = (args[0], _path(str(args[1])), *args[2:])
            record.args = tuple(self._QUERY.sub("?…", a) if isinstance(a, str) and "?" in a else a for a in args)
        return True


def _path(target: str) -> str:
    """A request target as the log shows it: a served path as it is, any other ``/other``; a query as ``?…``."""
    path, question_mark, _ = target.partition("?")
    return (path if path in SERVED_PATHS else "/other") + ("?…" if question_mark else "")


def _install_log_filter() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        log = logging.getLogger(name)
        if not any(isinstance(f, QueryStringFilter) for f in log.filters):
            log.addFilter(QueryStringFilter())


def server_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    log_level: str = "info",
    **uvicorn_options: Any,
) -> Any:
    """The ``uvicorn.Config`` that `serve` runs: the guarded HTTP protocol, WebSocket frames capped at
    the body limit and never compressed, no trust in ``X-Forwarded-For`` (per-client limits count TCP peers), and log lines
    without query strings."""
    import uvicorn

    limits = limits or Limits()
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "http": guarded_protocol(limits),
        "ws": websocket_protocol(),
        # twice the frame limit: frames between the two get the session's JSON error and close 1009,
        # larger ones are cut off by the protocol (1009 without the error frame) before they are buffered
        "ws_max_size": 2 * limits.max_body_bytes,
        # No permessage-deflate: a frame of padding compresses a thousandfold, and the server inflated it on the
        # event loop (1 KB sent, 990 KB inflated and parsed: /health 44x slower beside 8 such sessions).
        "ws_per_message_deflate": False,
        "timeout_keep_alive": limits.keep_alive_s,
        "h11_max_incomplete_event_size": limits.max_head_bytes,
        "proxy_headers": False,
        "server_header": False,
        **uvicorn_options,
    }
    config = uvicorn.Config(app, **options)
    _install_log_filter()  # after Config: it applies uvicorn's logging config
    return config
