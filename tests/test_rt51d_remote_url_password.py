"""rt51d F8: a password in a guard server's URL (``Guard.remote("http://svc:PASSWORD@host/v1")``: httpx sends it
as basic auth, e.g. to a proxy in front of vLLM) was written into every guard error (``decision.error``, which
listeners, audit logs and the integrations' messages carry), into log lines and reprs. It is masked wherever the
URL is shown (``http://svc:***@host/v1``), and still sent.

Real HTTP: nothing listening (a replica down during a restart), and `tests/engines.py`'s engine.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

import engines
import pytest
from qwenguard.core import Guard, Policy
from qwenguard.core.backends.transport import without_password
from qwenguard.core.errors import GuardUnavailable

PW = "s3cretPW0rd"


@pytest.fixture
def logs(caplog) -> pytest.LogCaptureFixture:
    """Every log line, httpx's own included (it logs each request's URL at INFO)."""
    caplog.set_level(logging.DEBUG)
    return caplog


def _no_password(*texts: object) -> None:
    for text in texts:
        assert PW not in str(text), text


@contextmanager
def authed_engine(**settings: object) -> Iterator[tuple[engines.RecordingEngine, list[str]]]:
    """`engines.RecordingEngine` that also records each POST's ``Authorization`` header."""
    engine = engines.RecordingEngine(**settings)  # type: ignore[arg-type]
    seen: list[str] = []

    class Handler(engines._EngineHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization", ""))
            super().do_POST()

    Handler.engine = engine
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    engine.url = f"http://svc:{PW}@127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield engine, seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_replica_down_during_a_restart_shows_no_password_in_the_decision(logs):
    port = engines.free_port()  # nothing listens
    url = f"http://svc:{PW}@127.0.0.1:{port}/v1"
    named = Guard.remote(url, model="m", max_context=4096, max_retries=0, policy=Policy(on_error="block"))
    learning = Guard.remote(url, max_context=4096, max_retries=0)  # the model name is read from /models
    other = engines.free_port()
    while other == port:  # the OS may hand the same free port out twice: one replica, not two
        other = engines.free_port()
    two = Guard.remote([url, f"http://svc:{PW}@127.0.0.1:{other}/v1"], model="m", max_context=4096)
    try:
        decisions = [g.check_prompt("hello") for g in (named, learning, two)]
    finally:
        for g in (named, learning, two):
            g.close()
    for d in decisions:
        assert d.error and "http://svc:***@127.0.0.1:" in d.error, d.error
        _no_password(d.error, d.to_dict())
    assert "unreachable" in decisions[0].error and "cannot list the models" in decisions[1].error
    assert "2 replicas" in decisions[2].error
    _no_password(*logs.messages)


def test_a_token_given_as_the_urls_user_name_is_not_shown(logs):
    """Services that take a token as the URL's user name (``https://TOKEN@host``): a replica down showed it whole."""
    url = f"http://{PW}@127.0.0.1:{engines.free_port()}/v1"  # nothing listens
    guard = Guard.remote(url, model="m", max_context=4096, max_retries=0)
    try:
        decision = guard.check_prompt("hello")
        shown = repr(guard.backend)
    finally:
        guard.close()
    assert decision.error and "http://***@127.0.0.1:" in decision.error, decision.error
    _no_password(decision.error, decision.to_dict(), shown, *logs.messages)


def test_an_engine_refusing_a_prompt_is_named_without_the_password_which_it_still_receives(logs):
    secret = "Basic " + base64.b64encode(f"svc:{PW}".encode()).decode()
    with authed_engine(n_ctx=40) as (engine, seen):  # every prompt is past its context: 400, naming it
        guard = Guard.remote(engine.url, model="guard", max_context=4096, max_retries=0, cache_size=0)
        try:
            refused = guard.check_prompt("hello")
        finally:
            guard.close()
    assert seen and all(auth == secret for auth in seen)  # the request carried the real credentials
    assert refused.error and "svc:***@" in refused.error, refused.error
    _no_password(refused.error, *logs.messages)
    assert any("svc:***@" in m for m in logs.messages), logs.messages  # the engine's small context was logged, masked


def test_an_engine_publishing_no_context_is_logged_without_the_password(logs):
    with authed_engine() as (engine, seen):
        guard = Guard.remote(engine.url, max_retries=0, cache_size=0)  # no model=, no max_context=
        try:
            assert guard.check_prompt("How do I build a pipe bomb?").reason == "unsafe"  # a real verdict
            names = [t.name for t in threading.enumerate()]
            shown = [repr(guard.backend), repr(guard.backend.replicas)]
        finally:
            guard.close()
    assert seen
    assert any("publishes no context" in m and "svc:***@" in m for m in logs.messages), logs.messages
    assert any("HTTP Request: POST http://127.0.0.1:" in m for m in logs.messages)  # httpx's line: no userinfo
    _no_password(*logs.messages, *names, *shown)
    assert "svc:***@" in shown[0] and "svc:***@" in shown[1]


@pytest.mark.parametrize(
    "url",
    [
        f"http://svc:{PW}@127.0.0.1:8000/v1/chat/completions",  # the route, not the base URL
        f"http://svc:{PW}@127.0.0.1:99999/v1",  # a bad port
        f"http://svc:{PW}@[::1/v1",  # a broken IPv6 literal
        f"http://svc:{PW}@127.0.0.1:8000/v1?x=1",  # a query
    ],
)
def test_a_mistyped_base_url_is_refused_without_showing_its_password(url):
    with pytest.raises(ValueError) as refused:
        Guard.remote(url, model="m")
    _no_password(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"http://svc:{PW}@[::1]:8000/v1", "http://svc:***@[::1]:8000/v1"),  # brackets kept (were dropped)
        (f"https://svc:{PW}@Guard.Internal/v1", "https://svc:***@Guard.Internal/v1"),
        (f"http://:{PW}@h:1/v1", "http://:***@h:1/v1"),  # no user: was "None:***@"
        (f"socks5://u:{PW}@proxy:1080", "socks5://u:***@proxy:1080"),
        ("http://u@h/v1", "http://***@h/v1"),
        (f"https://{PW}@h/v1", "https://***@h/v1"),  # a token as the user name: was shown whole
        ("http://h:8000/v1", "http://h:8000/v1"),
    ],
)
def test_without_password_masks_the_password_or_a_lone_user_name(url, shown):
    assert without_password(url) == shown


def test_a_stream_clients_repr_and_refusal_show_no_password():
    """The stream side of rt51d F8: `RemoteStream`'s repr and a refused session's guard error printed the URL
    with its password."""
    from qwenguard.core.backends.remote_stream import RemoteStream

    stream = RemoteStream(f"ws://svc:{PW}@127.0.0.1:9/v1/stream")
    assert PW not in repr(stream) and "svc:***@127.0.0.1:9" in repr(stream)
    guard = Guard.remote(f"http://svc:{PW}@127.0.0.1:9/v1", model="guard", stream=True, policy=Policy(timeout_s=5))
    try:
        with pytest.raises(GuardUnavailable) as failed, guard.stream("Hi") as monitor:
            monitor.feed("Hello there.")
            monitor.finish()
        assert PW not in str(failed.value) and PW not in repr(guard.stream_backend)
    finally:
        guard.close()
