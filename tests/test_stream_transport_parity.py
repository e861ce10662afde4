"""Stream sessions reach the servers as checks do (`RemoteStream` against `OpenAIGen`): the same proxy from the
environment, the same extra headers, the same TLS settings, and nothing new once the guard is closed.

What an audit saw before: with only ``HTTPS_PROXY`` set and a guard at ``http://``, checks went direct and
streams went to the proxy (websockets prefers the HTTPS proxy even for ``ws://``); with only ``ALL_PROXY``
the reverse (websockets ignores it); ``Guard.remote(headers=...)`` reached checks only (a gateway asking for
its key refused every stream, 403) and ``stream_options={"headers": ...}`` was a TypeError; a private CA
could be given to checks only (a custom httpx transport), ``verify=`` was a TypeError; and after
``guard.close()`` checks were refused while new stream sessions still connected.

Real servers on 127.0.0.1: a qwenguard server (uvicorn, plain or TLS with a test CA from ``trustme``), a
gateway in front of it, and an HTTP proxy in a thread that records what it is asked.
"""

from __future__ import annotations

import importlib.util
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from faults import ScriptedBackend
from live_server import running, serving
from qwenguard.core import Guard, GuardUnavailable, Policy
from qwenguard.core.backends.remote_stream import RemoteStream
from qwenguard.core.server import create_app

PROMPT = "Tell me about Paris."
ANSWER = "Paris is the capital of France. "
ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "WS_PROXY", "WSS_PROXY", "SOCKS_PROXY", "REQUEST_METHOD")


def safe(conversation) -> str:
    return "Safety: Safe\nCategories: None" + ("\nRefusal: No" if conversation[-1]["role"] == "assistant" else "")


def scripted() -> Guard:
    return Guard(ScriptedBackend(safe))


@pytest.fixture(autouse=True)
def no_proxy_or_ca_from_the_machine(monkeypatch):
    """Each test sets the environment it describes, nothing else."""
    for name in ENV + ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# -- a proxy that records what it is asked --------------------------------------------------------------
class RecordingProxy:
    """An HTTP proxy on 127.0.0.1 that records the request line of everything it is asked. ``tunnel=False``:
    refuses all (403); ``tunnel=True``: opens ``CONNECT`` tunnels (and refuses the rest)."""

    def __init__(self, *, tunnel: bool) -> None:
        self.tunnel = tunnel
        self.asked: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode()
            self.asked.append(line)
            method, target, _ = line.split(" ", 2)
            if not (self.tunnel and method == "CONNECT"):
                client.sendall(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 13\r\nConnection: close\r\n\r\nproxy refused"
                )
                return
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._pipe(client, upstream)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        while True:
            ready, _, _ = select.select([a, b], [], [], 30)
            if not ready:
                return
            for source in ready:
                data = source.recv(65536)
                if not data:
                    return
                (b if source is a else a).sendall(data)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress (close alone does not)
        except OSError:
            pass
        self._sock.close()
        self._accepting.join(10)

    def checks(self, port: int) -> list[str]:
        """What the checks' client asked for the server at ``port`` (absolute-form requests)."""
        return [line for line in self.asked if line.split(" ")[1].startswith(f"http://127.0.0.1:{port}/")]

    def tunnels(self, port: int) -> list[str]:
        return [line for line in self.asked if line.startswith(f"CONNECT 127.0.0.1:{port} ")]


@contextmanager
def recording_proxy(*, tunnel: bool = False) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(tunnel=tunnel)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving(scripted()) as url:
        yield url


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def remote(url: str, **options: Any) -> Guard:
    options.setdefault("policy", Policy(timeout_s=10))
    return Guard.remote(url + "/v1", model="scripted", stream=True, **options)


def streamed(guard: Guard) -> str:
    with guard.stream(PROMPT) as monitor:
        return monitor.feed(ANSWER) + monitor.finish()


async def astreamed(guard: Guard) -> str:
    async with guard.astream(PROMPT) as monitor:
        return await monitor.afeed(ANSWER) + await monitor.afinish()


# -- 1. proxies from the environment ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "environment",
    [{"HTTPS_PROXY": "{proxy}"}, {"HTTP_PROXY": "{proxy}", "NO_PROXY": "gateway.internal,*"}],
    ids=["https proxy, http guard", "no_proxy star among names"],
)
def test_streams_go_direct_where_checks_go_direct(server, monkeypatch, environment):
    """Only HTTPS_PROXY set, a guard at http://: checks go direct, and so do streams (before: the stream went to
    the HTTPS proxy, which refused it, and failed closed). ``NO_PROXY=gateway.internal,*``: httpx bypasses every
    proxy for "*" among other names, so checks go direct; so do streams (before: the standard library's
    reading proxied them, and they failed)."""
    with recording_proxy() as proxy:
        for name, value in environment.items():
            monkeypatch.setenv(name, value.format(proxy=proxy.url))
        guard = remote(server)
        try:
            assert guard.check_prompt(PROMPT).allowed
            assert streamed(guard) == ANSWER
        finally:
            guard.close()
        assert proxy.asked == []


async def test_an_https_proxy_is_not_taken_by_streams_to_an_http_guard_async(server, monkeypatch):
    with recording_proxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        guard = remote(server)
        try:
            assert (await guard.acheck_prompt(PROMPT)).allowed
            assert await astreamed(guard) == ANSWER
        finally:
            await guard.aclose()
        assert proxy.asked == []


def test_all_proxy_carries_streams_as_it_carries_checks_sync(server, monkeypatch):
    """Only ALL_PROXY set: the check goes to the proxy (which refuses it), and so does the stream, which
    fails closed on the proxy's refusal (before: it went direct, past the proxy the checks go through)."""
    with recording_proxy() as proxy:
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        guard = remote(server)
        try:
            decision = guard.check_prompt(PROMPT)
            with pytest.raises(GuardUnavailable, match="proxy"):
                streamed(guard)
        finally:
            guard.close()
        assert decision.reason == "guard_error" and "403" in str(decision.error)
        assert proxy.checks(port_of(server)) and proxy.tunnels(port_of(server))


async def test_all_proxy_carries_streams_as_it_carries_checks_async(server, monkeypatch):
    with recording_proxy() as proxy:
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        guard = remote(server)
        try:
            decision = await guard.acheck_prompt(PROMPT)
            with pytest.raises(GuardUnavailable, match="proxy"):
                await astreamed(guard)
        finally:
            await guard.aclose()
        assert decision.reason == "guard_error"
        assert proxy.checks(port_of(server)) and proxy.tunnels(port_of(server))


@pytest.mark.skipif(importlib.util.find_spec("python_socks") is not None, reason="python-socks is installed")
def test_a_socks_proxy_without_python_socks_is_a_clear_guard_error(server, monkeypatch):
    """ALL_PROXY is a SOCKS proxy and python-socks is absent: the session is a guard error that says what to
    install, as the check's says (socksio), not an ImportError from inside websockets (before: the stream
    ignored ALL_PROXY and went direct)."""
    monkeypatch.setenv("ALL_PROXY", "socks5://user:secret@127.0.0.1:9")
    guard = remote(server)
    try:
        assert not guard.check_prompt(PROMPT).allowed
        with pytest.raises(GuardUnavailable, match="python-socks is not installed") as raised:
            streamed(guard)
    finally:
        guard.close()
    assert "secret" not in str(raised.value)


# -- 2. extra headers ---------------------------------------------------------------------------------
class Gateway:
    """In front of a qwenguard server: refuses HTTP requests and WebSocket handshakes without its key
    (``X-Gateway-Key: gw``, 403), and records the ``Authorization`` values of each handshake."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.handshake_authorizations: list[list[bytes]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope.get("headers") or []
            if scope["type"] == "websocket":
                self.handshake_authorizations.append([v for k, v in headers if k == b"authorization"])
            if (b"x-gateway-key", b"gw") not in headers:
                if scope["type"] == "websocket":
                    await receive()
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 403, "headers": []})
                await send({"type": "http.response.body", "body": b"gateway: no key"})
                return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, Gateway]]:
    """A gateway asking for its key, in front of a server asking for ``api_key="s3cret"``."""
    gate = Gateway(create_app(scripted(), api_key="s3cret"))
    with running(gate) as url:
        yield url, gate


def test_extra_headers_reach_stream_handshakes_sync(gateway):
    """``Guard.remote(headers=...)`` passes the gateway with checks and streams alike; the ``Authorization``
    of ``api_key`` wins over one in ``headers``, on the handshake as on checks (before: 403 on the stream)."""
    url, gate = gateway
    before = len(gate.handshake_authorizations)
    guard = remote(url, api_key="s3cret", headers={"X-Gateway-Key": "gw", "Authorization": "Bearer wrong"})
    try:
        assert guard.check_prompt(PROMPT).allowed
        assert streamed(guard) == ANSWER
    finally:
        guard.close()
    assert gate.handshake_authorizations[before:] == [[b"Bearer s3cret"]]


async def test_extra_headers_reach_stream_handshakes_async(gateway):
    url, gate = gateway
    guard = remote(url, api_key="s3cret", headers={"X-Gateway-Key": "gw"})
    try:
        assert (await guard.acheck_prompt(PROMPT)).allowed
        assert await astreamed(guard) == ANSWER
    finally:
        await guard.aclose()


def test_the_api_key_wins_over_an_authorization_header_in_any_case(gateway):
    """``headers={"authorization": ...}`` beside ``api_key``: httpx sent both headers on checks, and the server
    read the wrong one (401); the key's wins for checks and streams alike."""
    url, _ = gateway
    guard = remote(url, api_key="s3cret", headers={"X-Gateway-Key": "gw", "authorization": "Bearer wrong"})
    try:
        assert guard.check_prompt(PROMPT).reason == "safe"
        assert streamed(guard) == ANSWER
    finally:
        guard.close()


@pytest.mark.parametrize(
    "headers, says",
    [
        ({"X-Gateway-Key": "café"}, "visible ASCII"),  # checks: UnicodeEncodeError at every request; streams sent it
        ({"X Gateway": "gw"}, "not an HTTP token"),  # checks: a protocol error at every request; streams sent it
        ({"X-Gateway-Key": "gw\r\nX-Injected: 1"}, "no line breaks"),
    ],
)
def test_a_header_no_request_can_carry_is_refused_when_the_guard_is_built(headers, says):
    """Before: accepted; every check then failed (flagged, under on_error="allow") while the stream handshake
    went out with it: the two clients disagreed on the same setting."""
    with pytest.raises(ValueError, match=says):
        Guard.remote("http://127.0.0.1:9/v1", model="scripted", headers=headers, stream=True)
    with pytest.raises(ValueError, match=says):
        RemoteStream("http://127.0.0.1:9/v1", headers=headers)


@pytest.mark.parametrize("name", ["Host", "upgrade", "Sec-WebSocket-Key"])
def test_a_header_the_handshake_sets_itself_is_refused_for_streams(name):
    """websockets would send it twice (a broken handshake at every session): refused when the guard is built."""
    with pytest.raises(ValueError, match="the WebSocket handshake sets it"):
        Guard.remote("http://127.0.0.1:9/v1", model="scripted", headers={name: "x"}, stream=True)
    Guard.remote("http://127.0.0.1:9/v1", model="scripted", headers={name: "x"}).close()  # checks: httpx's own


def test_stream_options_and_remote_stream_take_headers(gateway, server):
    """Streams on their own servers (checks elsewhere) take their headers from ``stream_options``, or from
    ``RemoteStream(headers=...)`` (before: TypeError for both)."""
    url, _ = gateway
    guard = Guard.remote(
        server + "/v1",
        model="scripted",
        stream=[url + "/v1"],
        stream_options={"headers": {"X-Gateway-Key": "gw"}, "api_key": "s3cret"},
        policy=Policy(timeout_s=10),
    )
    try:
        assert streamed(guard) == ANSWER
    finally:
        guard.close()
    backend = RemoteStream(url + "/v1", api_key="s3cret", headers={"X-Gateway-Key": "gw"})
    guard = Guard(ScriptedBackend(safe), Policy(timeout_s=10), stream_backend=backend)
    assert streamed(guard) == ANSWER


# -- 3. TLS with a private CA -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_ca() -> Any:
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(private_ca, tmp_path_factory) -> Iterator[str]:
    """A qwenguard server over TLS, its certificate issued by the test CA (trusted by nothing else)."""
    folder = tmp_path_factory.mktemp("tls")
    cert = private_ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(scripted()),
        log_level="warning",
        ws="websockets-sansio",
        lifespan="off",
        ssl_certfile=str(folder / "cert.pem"),
        ssl_keyfile=str(folder / "key.pem"),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the TLS test server did not start"
        time.sleep(0.01)
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def ca_file(private_ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    private_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(params=["path", "context"])
def verify(request, ca_file) -> Any:
    return ca_file if request.param == "path" else ssl.create_default_context(cafile=ca_file)


def test_a_private_ca_given_once_verifies_checks_and_streams_sync(tls_server, verify):
    """``Guard.remote(verify=<CA bundle or SSLContext>)``: the check and the ``wss://`` session both trust
    the private CA (before: TypeError; checks took a CA only through a custom httpx transport)."""
    guard = remote(tls_server, verify=verify)
    try:
        assert guard.check_prompt(PROMPT).allowed
        assert streamed(guard) == ANSWER
    finally:
        guard.close()


async def test_a_private_ca_given_once_verifies_checks_and_streams_async(tls_server, verify):
    guard = remote(tls_server, verify=verify)
    try:
        assert (await guard.acheck_prompt(PROMPT)).allowed
        assert await astreamed(guard) == ANSWER
    finally:
        await guard.aclose()


def test_a_remote_stream_takes_verify(tls_server, ca_file):
    """``RemoteStream(verify=...)`` on its own; without it the private CA is not trusted (fails closed)."""
    trusted = Guard(
        ScriptedBackend(safe), Policy(timeout_s=10), stream_backend=RemoteStream(tls_server, verify=ca_file)
    )
    assert streamed(trusted) == ANSWER
    untrusted = Guard(ScriptedBackend(safe), Policy(timeout_s=10), stream_backend=RemoteStream(tls_server))
    with pytest.raises(GuardUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        streamed(untrusted)


def test_verify_keeps_the_proxy_of_the_environment(tls_server, ca_file, monkeypatch):
    """A private CA behind an HTTPS proxy: with ``verify=``, checks still go through the proxy the
    environment names (an httpx client given a transport would not), and so do streams: both tunnel
    through it and both trust the CA."""
    with recording_proxy(tunnel=True) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        guard = remote(tls_server, verify=ca_file)
        try:
            assert guard.check_prompt(PROMPT).allowed
            assert streamed(guard) == ANSWER
        finally:
            guard.close()
    # At least one tunnel for the checks (/models, then the check) and one for the stream session.
    assert len(proxy.tunnels(port_of(tls_server))) >= 2
    assert proxy.asked == proxy.tunnels(port_of(tls_server))


# -- 4. after close -----------------------------------------------------------------------------------
class Sessions:
    """Counts the WebSocket handshakes that reach the app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            self.count += 1
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def counted() -> Iterator[tuple[str, Sessions]]:
    sessions = Sessions(create_app(scripted()))
    with running(sessions) as url:
        yield url, sessions


def test_no_new_stream_session_after_close_sync(counted):
    """After ``guard.close()`` a check is a guard error ("the remote guard backend is closed"); a new stream
    session is refused the same way, without connecting (before: it connected and released the answer)."""
    url, sessions = counted
    guard = remote(url)
    guard.close()
    decision = guard.check_prompt(PROMPT)
    assert decision.reason == "guard_error" and "the remote guard backend is closed" in str(decision.error)
    before = sessions.count
    with pytest.raises(GuardUnavailable, match="the remote guard backend is closed"):
        streamed(guard)
    assert sessions.count == before


async def test_no_new_stream_session_after_close_async(counted):
    url, sessions = counted
    guard = remote(url)
    await guard.aclose()
    decision = await guard.acheck_prompt(PROMPT)
    assert decision.reason == "guard_error" and "the remote guard backend is closed" in str(decision.error)
    before = sessions.count
    with pytest.raises(GuardUnavailable, match="the remote guard backend is closed"):
        await astreamed(guard)
    assert sessions.count == before


def test_a_monitor_open_at_close_is_refused_at_its_next_feed_sync(counted):
    """A monitor opened before ``guard.close()`` gets the same guard error at its next ``feed`` (before: it
    went on releasing text after the guard was closed)."""
    url, _ = counted
    guard = remote(url)
    with guard.stream(PROMPT) as monitor:
        monitor.feed("One. ")
        guard.close()
        with pytest.raises(GuardUnavailable, match="the remote guard backend is closed"):
            monitor.feed("Two. ")
        assert monitor.closed
        assert monitor.decision is not None and monitor.decision.reason == "guard_error"


async def test_a_monitor_open_at_close_is_refused_at_its_next_feed_async(counted):
    url, _ = counted
    guard = remote(url)
    async with guard.astream(PROMPT) as monitor:
        await monitor.afeed("One. ")
        await guard.aclose()
        with pytest.raises(GuardUnavailable, match="the remote guard backend is closed"):
            await monitor.afeed("Two. ")
        assert monitor.closed


def test_after_close_a_fail_open_stream_is_flagged_as_a_check_is(counted):
    """Under ``on_error="allow"`` a check after close passes flagged as a guard error; a stream session does
    the same: its prompt decision is that flagged guard error (before: the session ran on the server)."""
    url, sessions = counted
    guard = remote(url, policy=Policy(timeout_s=10, on_error="allow"))
    guard.close()
    check = guard.check_prompt(PROMPT)
    assert check.allowed and check.reason == "guard_error"
    before = sessions.count
    with guard.stream(PROMPT) as monitor:
        monitor.feed(ANSWER)
        monitor.finish()
    assert monitor.prompt_decision is not None
    assert monitor.prompt_decision.reason == "guard_error" and monitor.prompt_decision.allowed
    assert "the remote guard backend is closed" in str(monitor.prompt_decision.error)
    assert sessions.count == before
