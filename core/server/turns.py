"""Turns per client address: at most ``limit`` holders at once for each address, the rest wait in order.

The gate keeps two: turns to send a request body (a client dripping bodies waits behind its own drips) and
turns to be served (a client sending more checks at once than its share waits for one of its own to finish,
so it never holds every slot). A waiting request holds nothing; a turn is handed from the holder that
leaves to the oldest waiter of the same address, so waiters are served in order and none can be skipped.
``max_waiting`` bounds the waiters per address (each holds a request body in memory): past it a request is
refused at once.

Written here rather than with `asyncio.Semaphore`: a turn must be given up cleanly by a waiter that times
out or is cancelled at the moment it is handed one (it passes the turn on), on every Python this supports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from ..streaming.task_ends import mark_read

T = TypeVar("T")


class NoTurn(Exception):
    """A turn was not given: the address has too many waiting (`QueueFull`) or none came in time (`TurnTimeout`)."""


class QueueFull(NoTurn):
    """The address already has ``max_waiting`` requests waiting for a turn."""


class TurnTimeout(NoTurn):
    """No turn came within the wait allowed."""


class ClientTurns:
    """At most ``limit`` turns held at once per client address, and at most ``max_waiting`` waiting for one
    (``None``: no bound)."""

    def __init__(self, limit: int, max_waiting: int | None = None) -> None:
        if limit < 1 or (max_waiting is not None and max_waiting < 0):
            raise ValueError("limit must be >= 1 and max_waiting >= 0")
        self.limit = limit
        self.max_waiting = max_waiting
        self._held: Counter[str] = Counter()
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def held(self, client: str) -> int:
        return self._held[client]

    def waiting(self, client: str) -> int:
        return len(self._waiting.get(client, ()))

    @contextlib.asynccontextmanager
    async def turn(self, client: str, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold one of ``client``'s turns for the block. Raises `QueueFull` when ``max_waiting`` already wait,
        `TurnTimeout` when no turn came within ``timeout`` seconds (``None``: as long as it takes)."""
        await self.acquire(client, timeout)
        try:
            yield
        finally:
            self.release(client)

    def free(self, client: str) -> bool:
        """Whether ``client`` would get a turn at once."""
        return self._held[client] < self.limit and not self._waiting.get(client)

    async def acquire(self, client: str, timeout: float | None = None) -> None:
        """Take one of ``client``'s turns (see `turn`); the caller must `release` it."""
        if self.free(client):
            self._held[client] += 1
            return
        if self.max_waiting is not None and self.waiting(client) >= self.max_waiting:
            raise QueueFull(f"{self.waiting(client)} requests of this client already wait for a turn")
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(ticket)
        try:
            # `asyncio.wait` never cancels the ticket, so after it the ticket says plainly whether a turn came.
            await asyncio.wait({ticket}, timeout=timeout)
        except asyncio.CancelledError:
            self._give_up(client, ticket)
            raise
        if not ticket.done():
            self._give_up(client, ticket)
            raise TurnTimeout(f"no turn within {timeout} s")

    def _give_up(self, client: str, ticket: asyncio.Future[None]) -> None:
        """Leave the queue; a turn handed over at this very moment is passed on, not lost."""
        if ticket.done():
            self.release(client)
            return
        ticket.cancel()
        queue = self._waiting.get(client)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(ticket)
            if not queue:
                del self._waiting[client]

    def release(self, client: str) -> None:
        """Give a turn back: to the oldest waiter of ``client``, if any."""
        queue = self._waiting.get(client)
        while queue:
            ticket = queue.popleft()
            if not ticket.done():
                ticket.set_result(None)  # the turn goes to this waiter: the count held stays as it is
                if not queue:
                    del self._waiting[client]
                return
        self._waiting.pop(client, None)
        self._held[client] -= 1
        if self._held[client] <= 0:
            del self._held[client]


class ParseTurns:
    """One large request body or stream frame worked on at a time, server-wide (its JSON parse, its rendering:
    each holds the GIL for all of its run), and one waiting request per client address at a time: the clients
    that wait take turns, so a client with many large requests in flight delays another's by one each, not by
    all of its own (a single first-come queue made a legitimate 196 KB request wait 4 s behind 60 attackers)."""

    def __init__(self) -> None:
        self._lines = ClientTurns(1)
        self._one = asyncio.Semaphore(1)

    @contextlib.asynccontextmanager
    async def turn(self, client: str, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold the turn for the block; `TurnTimeout` when the client's own line gave none within ``timeout``."""
        async with self._lines.turn(client, timeout), self._one:
            yield

    async def in_thread(self, client: str, timeout: float | None, read: Callable[..., T], *args: Any) -> T:
        """``read(*args)`` in a thread, in a turn (`TurnTimeout` when none came within ``timeout``). Cancelled while
        it waits (the client hung up), it leaves the line; cancelled while its thread runs, it returns at once, and
        the thread, which cannot be stopped, keeps the turn until it ends: two large parses never run at once,
        whoever left."""
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def in_turn() -> T:
            async with self.turn(client, timeout):
                started.set_result(None)
                return await asyncio.to_thread(read, *args)

        task = asyncio.ensure_future(in_turn())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not started.done():
                task.cancel()  # still waiting: a turn handed over at this moment is passed on (`ClientTurns`)
            _LEFT.add(task)  # kept referenced until its thread ends
            task.add_done_callback(_LEFT.discard)
            task.add_done_callback(mark_read)  # a parse error of a client that left is nobody's to report
            raise


#: Parses whose caller left while their thread ran (`ParseTurns.in_thread`).
_LEFT: set[asyncio.Future[Any]] = set()


def client_address(scope: Mapping[str, Any]) -> str:
    """The client a per-client limit counts: the TCP peer's address (``X-Forwarded-For`` is not trusted: see
    `server_config`). An IPv4 peer seen on a dual-stack socket (``::ffff:127.0.0.1``) is its IPv4 address, and
    an IPv6 peer is its /64 network (what one host or site is given), so one host cannot count as two clients,
    or as 2^64, by switching addresses."""
    client = scope.get("client")
    if not client:
        return "unknown"
    host = str(client[0])
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # without an IPv6 zone ("fe80::1%eth0")
    except ValueError:
        return host  # a Unix socket path or a test client's name
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
