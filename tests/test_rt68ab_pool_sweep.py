"""rt68g: three ways the checks' connection pool still lost its connections for good (after 950ee42).

F1: a check cancelled once, just after its new connection connected (before httpcore counts the request on it), left
that connection NEW in the pool, used by no request and never closed; one cancelled as it was given a connection
while queued left that one CONNECTING (encode/httpcore#1093). With ``max_concurrency=1`` every later check waited for
a connection out to its deadline. The cancellations here are made where they landed, by a request's ``trace`` hook
(httpx's public hook into httpcore), on the client the checks send with, against a real engine on loopback.

F2: the ``/models`` read takes no check's slot but took one of the pool's ``max_concurrency`` connections: with
``max_concurrency=1`` and a ``/models`` that hangs behind a proxy, every check timed out, though the docs say such a
``/models`` fails no check.

F3: a ``transport=`` the caller passes was not wrapped: stream sessions stopped by violations kept its connections
(the rt67s2 leak), and every later check waited out its deadline.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from faults import ScriptedBackend, keyword_verdict
from live_server import QuietHandler, http_serving
from qwenguard.core import Guard, Policy, Risk
from qwenguard.core.backends.openai_gen import OpenAIGen
from test_remote_model_discovery import BOMB, Replica
from test_rt68r_remote_pool import astopped_sessions, pool_of, settled, stopped_sessions
from test_server_hostile import guarded

ANSWER = '{"verdict": "Safety: Safe"}'  # what the engine answers every GET: a request answered reads it whole
CANCELS = 3  # more than the pool's connections (max_concurrency=1, and one for /models): each one kept is one lost
# Only a guard against a hang: a connection the pool lost makes the next request wait this long, then fail.
POOL_WAIT_S = 5.0


class Engine(QuietHandler):
    """Answers every GET with `ANSWER`; ``close`` (a class attribute) says Connection: close after each reply."""

    close = False

    def do_GET(self) -> None:
        body = ANSWER.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class ClosingEngine(Engine):
    close = True


@pytest.fixture(params=["default transport", "transport given"])
def route(request) -> str:
    return request.param


def checks_client(url: str, route: str) -> httpx.AsyncClient:
    """The client `OpenAIGen` sends its checks with (``max_concurrency=1``): its own transport, or one given."""
    given = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1)) if route == "transport given" else None
    gen = OpenAIGen(url + "/v1", model="guard", max_concurrency=1, transport=given)
    return gen._make_client()  # type: ignore[no-any-return]


def client_pool(client: httpx.AsyncClient) -> Any:
    node: Any = client._transport
    while not hasattr(node, "_pool"):
        node = next(iter(node._routes.values())) if hasattr(node, "_routes") else node._transport
    return node._pool


def cancelling(callers: list[asyncio.Future[Any]], event: str) -> Any:
    """A request's ``trace`` hook that cancels ``callers[0]`` once, as httpcore reports ``event``: an app's timeout, a
    stream stopped by a violation, landing there."""

    async def hook(name: str, info: dict[str, Any]) -> None:
        if name == event:
            callers[0].cancel()

    return hook


async def assert_still_answered(client: httpx.AsyncClient, url: str) -> None:
    pool = client_pool(client)
    assert [c for c in pool.connections if not c.is_idle()] == [], pool.connections  # none left unused for good
    response = await client.get(url, extensions={"timeout": {"pool": POOL_WAIT_S}})
    assert (response.status_code, response.text) == (200, ANSWER)


async def test_checks_cancelled_as_their_new_connection_connects_leave_no_connection_behind(route):
    with http_serving(Engine) as base:
        url = base + "/v1/models"
        client = checks_client(base, route)
        try:
            for _ in range(CANCELS):
                callers: list[asyncio.Future[Any]] = []
                hook = cancelling(callers, "connection.connect_tcp.complete")
                callers.append(asyncio.ensure_future(client.get(url, extensions={"trace": hook})))
                (outcome,) = await asyncio.gather(*callers, return_exceptions=True)
                assert isinstance(outcome, asyncio.CancelledError), outcome
            await assert_still_answered(client, url)
        finally:
            await client.aclose()


async def test_a_queued_check_cancelled_as_it_is_given_a_connection_leaves_no_connection_behind(route):
    with http_serving(ClosingEngine) as base:
        url = base + "/v1/models"
        client = checks_client(base, route)
        try:
            await client.get(url)  # the default transport makes its pool on its first request
            pool = client_pool(client)
            for _ in range(CANCELS):
                # The last holder's connection is closed (Connection: close): the pool gives the queued check a new
                # one, and the check is cancelled then.
                callers: list[asyncio.Future[Any]] = []
                hook = cancelling(callers, "http11.response_closed.complete")
                holders = []
                for i in range(pool._max_connections):
                    last = i == pool._max_connections - 1
                    request = client.build_request("GET", url, extensions={"trace": hook} if last else {})
                    holders.append(await client.send(request, stream=True))
                callers.append(queued := asyncio.ensure_future(client.get(url)))
                for _ in range(1000):  # until the pool has it queued
                    if any(r.is_queued() for r in pool._requests):
                        break
                    await asyncio.sleep(0)
                assert any(r.is_queued() for r in pool._requests)
                await holders.pop().aclose()
                (outcome,) = await asyncio.gather(queued, return_exceptions=True)
                assert isinstance(outcome, asyncio.CancelledError), outcome
                for holder in holders:
                    await holder.aclose()
            await assert_still_answered(client, url)
        finally:
            await client.aclose()


# -- F2: a /models that hangs, max_concurrency=1 ---------------------------------------------------------------------


@pytest.mark.parametrize("calls", ["sync", "async"])
@pytest.mark.parametrize("tls", ["default", "verify=False"])
def test_a_models_route_that_hangs_fails_no_check_with_max_concurrency_1(calls, tls):
    replica = Replica("guard")
    with replica.running():
        replica.hold = threading.Event()  # /models never answers while the checks run
        options: dict[str, Any] = {"verify": False} if tls == "verify=False" else {}
        guard = Guard.remote(
            replica.url, model="guard", max_concurrency=1, cache_size=0, policy=Policy(timeout_s=4), **options
        )
        try:
            if calls == "sync":
                decisions = [guard.check_prompt(f"{BOMB} ({i})") for i in range(2)]
            else:

                async def run() -> list[Any]:
                    return list(await asyncio.gather(*(guard.acheck_prompt(f"{BOMB} ({i})") for i in range(2))))

                decisions = asyncio.run(run())
        finally:
            replica.hold.set()
            guard.close()
    # Judged by the engine, not a timeout (fail closed here; let through unjudged under on_error="allow").
    assert [(d.risk, d.allowed, d.reason) for d in decisions] == [(Risk.UNSAFE, False, "unsafe")] * 2, decisions
    assert replica.gets == 1


# -- F3: the caller's own transport= ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with guarded(Guard(ScriptedBackend(keyword_verdict)), model_name="guard", max_streams_per_client=1) as url:
        yield url


def remote_with_own_transport(base: str) -> Guard:
    own = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    return Guard.remote(
        base + "/v1", model="guard", max_concurrency=1, cache_size=0, policy=Policy(timeout_s=5.0), transport=own
    )


def assert_pool_whole(guard: Guard) -> None:
    pool = settled(guard)
    assert [r.request.url.path for r in pool._requests] == []  # no check kept its connection
    assert all(c.is_idle() for c in pool_of(guard).connections), pool.connections


def test_async_sessions_stopped_one_after_another_keep_a_given_transports_connections(base):
    guard = remote_with_own_transport(base)
    try:
        asyncio.run(astopped_sessions(guard))
        assert_pool_whole(guard)
    finally:
        guard.close()


def test_sync_sessions_stopped_one_after_another_keep_a_given_transports_connections(base):
    guard = remote_with_own_transport(base)
    try:
        stopped_sessions(guard)
        assert_pool_whole(guard)
    finally:
        guard.close()
