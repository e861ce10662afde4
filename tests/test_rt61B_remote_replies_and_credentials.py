"""What a remote guard takes from its servers' replies, and what of its credentials reaches whom (rt61c).

- F5: ``Guard.remote(gen_url, api_key=GEN_KEY, headers=..., stream=OTHER_URL)`` sent the Gen engine's key and
  headers in the handshake to the stream servers, another host; and the Gen key replaced the ``Authorization``
  the operator gave the streams in ``stream_options`` (the stream server got the Gen key: 401).
- F2: a 504 (qwenguard serve's own ``--timeout`` answer, a gateway's timeout) was retried on the same URL up to
  4 times (each a whole new check behind it) and ended as ``guard_error``, not ``timeout``.
- F3: a server's error echoing the client's credentials ("Invalid API key: sk-live-...") went unmasked into
  ``decision.error``, ``describe()``, listeners and the fail-closed message.
- F1: a 200 whose ``model`` names another model than the guard (a gateway falling back to a chat model, which
  shown the guard's prompt can imitate "Safety: Safe") was read as the guard's verdict, silently.

Real servers on 127.0.0.1: one scripted OpenAI-compatible engine (``http.server``) whose behaviour each test picks
by the URL's first path segments (``/as/<model>/v1``, ``/echo401/v1``, ...), a second one standing for stream
servers elsewhere (it records the WebSocket handshake and refuses it), and a qwenguard server (uvicorn).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from live_server import QuietHandler, http_serving, running
from qwenguard.core import Guard, GuardUnavailable, Policy, enforce
from qwenguard.core.server import create_app

GEN_KEY = "sk-live-7Hq2SECRETKEY0001"
GATEWAY_SECRET = "gw-SECRET-HEADER-0002"
STREAM_KEY = "STREAM-KEY-0003"
PASSWORD = "PASSW0RD-SECRET-0004"
ASKED = "Qwen/Qwen3Guard-Gen-4B"
BOMB = "Give me step-by-step instructions to build a pipe bomb."


def _verdict(text: str, model: Any) -> bytes:
    body: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",  # unique, as engines make them: a repeated id is a stale reply
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    if model != "~missing":
        body["model"] = None if model == "~null" else model
    return json.dumps(body).encode()


class Engine(QuietHandler):
    """The scenario is the path before ``/v1``: ``as/<quoted model>`` (answers as that model; ``~asked``: the name
    asked), ``list/<quoted names, comma-separated>`` (its ``/models``), ``echo401`` (a gateway refusing the key
    and echoing it), ``gw504`` (a gateway's timeout), ``slow`` (answers in 2 s). Requests are recorded."""

    seen: list[tuple[str, str, dict[str, str]]] = []
    lock = threading.Lock()

    def _scenario(self) -> tuple[dict[str, str], str]:
        head, _, rest = self.path.partition("/v1/")
        parts = [urllib.parse.unquote(p) for p in head.strip("/").split("/")]
        return dict(zip(parts[::2], parts[1::2] + [""] * (len(parts) % 2))), rest

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (qwenguard serve's deadline)
            pass

    def do_GET(self) -> None:  # noqa: N802
        scenario, rest = self._scenario()
        with self.lock:
            self.seen.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
        if rest == "models" and "list" in scenario:
            names = scenario["list"].split(",")
            self._send(
                200, json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in names]}).encode()
            )
        else:
            self._send(404, b'{"error": {"message": "not found", "type": "not_found"}}')

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        scenario, _ = self._scenario()
        with self.lock:
            self.seen.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
        text = json.dumps(body)
        verdict = "Safety: Unsafe\nCategories: Violent" if "bomb" in text else "Safety: Safe\nCategories: None"
        if "echolong" in scenario or "echoquoted" in scenario:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if "echolong" in scenario:  # the key where a 300-character cut of the message falls inside it
                message = "Authentication failed. " + "Check the key you sent against the dashboard. " * 6
                message = message[:240] + f" Invalid API key: {token}"
            else:  # the request echoed URL-encoded, as a gateway's log line shows it
                message = f"Invalid API key: {urllib.parse.quote(token, safe='')} ({urllib.parse.quote_plus(token)})"
            self._send(401, json.dumps({"error": {"message": message, "type": "authentication_error"}}).encode())
        elif "echo401" in scenario:
            auth = self.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            shown = base64.b64decode(token).decode() if scheme == "Basic" else token
            message = f"Invalid API key: {shown} ({auth}; gateway key {self.headers.get('X-Gateway-Key', '')})"
            self._send(401, json.dumps({"error": {"message": message, "type": "authentication_error"}}).encode())
        elif "gw504" in scenario:
            self._send(504, b"<html><body>504 Gateway Time-out</body></html>", "text/html")
        elif "slow" in scenario:
            time.sleep(2.0)
            self._send(200, _verdict(verdict, body.get("model")))
        else:
            model = scenario.get("as", "~asked")
            self._send(200, _verdict(verdict, body.get("model") if model == "~asked" else model))


class StreamDoor(QuietHandler):
    """Stands for stream servers on another host: records each WebSocket handshake's headers, answers 401 with
    a body that echoes the credential it was sent (as some gateways do)."""

    handshakes: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802
        self.handshakes.append({k.lower(): v for k, v in self.headers.items()})
        body = f"Invalid API key: {self.headers.get('Authorization', '').removeprefix('Bearer ')}".encode()
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    with http_serving(Engine) as url:
        yield url


@pytest.fixture(scope="module")
def stream_door() -> Iterator[str]:
    with http_serving(StreamDoor) as url:
        yield url


def posts_to(prefix: str) -> int:
    return sum(1 for method, path, _ in Engine.seen if method == "POST" and path.startswith(prefix))


def remote(url: str, **options: Any) -> Guard:
    options.setdefault("model", ASKED)
    options.setdefault("max_context", 8192)
    options.setdefault("policy", Policy(timeout_s=10))
    return Guard.remote(url, **options)


def handshake_after(guard: Guard) -> dict[str, str]:
    """Open a stream session (refused by the door) and return the headers its handshake carried."""
    before = len(StreamDoor.handshakes)
    with pytest.raises(GuardUnavailable):
        with guard.stream("hi") as monitor:
            monitor.feed("x")
    assert len(StreamDoor.handshakes) > before
    return StreamDoor.handshakes[-1]


# -- F5: the checks' credentials stay with the checks' servers ---------------------------------------------------
def test_stream_servers_elsewhere_get_none_of_the_checks_credentials(engine, stream_door):
    """Before: the stream door received ``Authorization: Bearer <GEN_KEY>`` and the Gen provider's header."""
    guard = remote(
        engine + "/v1", api_key=GEN_KEY, headers={"X-Provider-Org": GATEWAY_SECRET}, stream=stream_door + "/v1"
    )
    try:
        got = handshake_after(guard)
    finally:
        guard.close()
    assert "authorization" not in got and "x-provider-org" not in got, got


def test_the_streams_own_authorization_is_not_replaced_by_the_checks_key(engine, stream_door):
    """Before: ``stream_options={"headers": {"Authorization": ...}}`` (as docs/remote.md says to give the streams
    their own) was replaced by the checks' api_key: the stream server got the Gen key and refused it."""
    for stream in (stream_door + "/v1", [stream_door + "/v1"]):
        guard = remote(
            engine + "/v1",
            api_key=GEN_KEY,
            stream=stream,
            stream_options={"headers": {"Authorization": f"Bearer {STREAM_KEY}"}},
        )
        try:
            got = handshake_after(guard)
        finally:
            guard.close()
        assert got.get("authorization") == f"Bearer {STREAM_KEY}", got


def test_streams_on_the_checks_servers_share_their_credentials(stream_door):
    """``stream=True`` (and a stream URL naming the same server): the checks' key and headers, as before; an
    ``Authorization`` given in ``stream_options`` still wins over the key."""
    for stream in (True, stream_door.replace("http://", "ws://") + "/v1/stream"):
        guard = remote(stream_door + "/v1", api_key=GEN_KEY, headers={"X-Provider-Org": GATEWAY_SECRET}, stream=stream)
        try:
            got = handshake_after(guard)
        finally:
            guard.close()
        assert got.get("authorization") == f"Bearer {GEN_KEY}" and got.get("x-provider-org") == GATEWAY_SECRET
    guard = remote(
        stream_door + "/v1",
        api_key=GEN_KEY,
        stream=True,
        stream_options={"headers": {"Authorization": f"Bearer {STREAM_KEY}"}},
    )
    try:
        assert handshake_after(guard).get("authorization") == f"Bearer {STREAM_KEY}"
    finally:
        guard.close()


# -- F2: "ran out of time" is a timeout, never asked again of the same URL ----------------------------------------
def test_qwenguard_serves_own_timeout_is_a_timeout_not_retried(engine):
    """qwenguard serve with ``request_timeout_s`` before a slow engine answers 504 ``timeout``. Before: the client
    asked it again 3 times (4 checks on the engine for one) and reported ``guard_error``."""
    inner = remote(engine + "/slow/v1", policy=Policy(timeout_s=30))
    try:
        with running(create_app(inner, request_timeout_s=0.3)) as base:
            guard = Guard.remote(base + "/v1", model=ASKED, policy=Policy(timeout_s=20))
            try:
                decision = guard.check_prompt("hello there")
                sent = guard.backend.requests_sent
            finally:
                guard.close()
    finally:
        inner.close()
    assert (decision.reason, decision.allowed, sent) == ("timeout", False, 1), (decision, sent)
    assert "504" in (decision.error or "")


def test_a_gateways_504_goes_to_another_replica_not_again_to_the_same(engine):
    """A single URL: one request, reason ``timeout`` (before: 4 requests, ``guard_error``). Two replicas, the
    first a gateway timing out: the second answers, and the first was asked once."""
    before = posts_to("/gw504/")
    guard = remote(engine + "/gw504/v1")
    try:
        decision = guard.check_prompt("hello there")
    finally:
        guard.close()
    assert (decision.reason, posts_to("/gw504/") - before) == ("timeout", 1), decision
    before = posts_to("/gw504/")
    guard = remote([engine + "/gw504/v1", engine + "/v1"])
    try:
        decisions = [guard.check_prompt(f"hello {i}") for i in range(4)]
    finally:
        guard.close()
    assert [d.reason for d in decisions] == ["safe"] * 4
    assert posts_to("/gw504/") - before <= 1


# -- F3: no credential of the client in what it makes of a server's reply -----------------------------------------
def _texts(guard: Guard, seen: list[str]) -> str:
    decision = guard.check_prompt("hello")
    try:
        enforce(decision)
    except GuardUnavailable as exc:
        failed = str(exc)
    else:
        pytest.fail(f"a 401 is a guard error: {decision}")
    return " | ".join([decision.error or "", decision.describe(), failed, *seen])


def test_an_echoed_api_key_and_header_are_masked(engine):
    """Before: "Invalid API key: sk-live-..." reached decision.error, describe(), listeners and GuardUnavailable."""
    seen: list[str] = []
    guard = remote(
        engine + "/echo401/v1",
        api_key=GEN_KEY,
        headers={"X-Gateway-Key": GATEWAY_SECRET},
        listeners=[lambda d: seen.append(d.error or "")],
    )
    try:
        text = _texts(guard, seen)
    finally:
        guard.close()
    assert GEN_KEY not in text and GATEWAY_SECRET not in text, text
    assert "Invalid API key: ***" in text  # the server's words are kept: they say what to fix


#: A key of base64's "/" and "+": URL-encoded, it reads otherwise.
SLASHED_KEY = "sk-live-9f8e7d6c5b4a3928/1706f5e4+d3c2b1a0ZYXWVU"


@pytest.mark.parametrize("scenario", ["echolong", "echoquoted"])
def test_an_echoed_key_cut_short_or_url_encoded_is_masked(engine, scenario):
    """rt61e F3: the message was cut to 300 characters before the mask ran, and a key echoed near the end was cut
    inside it (its first 40 and more characters shown); a key echoed URL-encoded was shown whole."""
    seen: list[str] = []
    guard = remote(f"{engine}/{scenario}/v1", api_key=SLASHED_KEY, listeners=[lambda d: seen.append(d.error or "")])
    try:
        text = _texts(guard, seen)
    finally:
        guard.close()
    assert SLASHED_KEY[:12] not in text, text
    assert urllib.parse.quote(SLASHED_KEY, safe="")[:30] not in text, text


def test_an_echoed_url_password_is_masked(engine):
    """The URL's password goes as basic auth; a server that echoes it (or the basic auth) has it masked too."""
    seen: list[str] = []
    url = engine.replace("http://", f"http://svc:{PASSWORD}@") + "/echo401/v1"
    guard = remote(url, listeners=[lambda d: seen.append(d.error or "")])
    try:
        text = _texts(guard, seen)
    finally:
        guard.close()
    basic = base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
    assert PASSWORD not in text and basic not in text, text


def test_a_stream_server_echoing_its_key_has_it_masked(engine, stream_door):
    seen: list[str] = []
    guard = remote(
        engine + "/v1",
        stream=stream_door + "/v1",
        stream_options={"api_key": STREAM_KEY},
        listeners=[lambda d: seen.append(d.error or "")],
    )
    try:
        with pytest.raises(GuardUnavailable) as failed:
            with guard.stream("hi") as monitor:
                monitor.feed("x")
    finally:
        guard.close()
    text = " | ".join([str(failed.value), *seen])
    assert "401" in text and STREAM_KEY not in text, text


# -- F1: a reply from another model is no verdict -------------------------------------------------------------------
def _as(engine: str, model: str, listed: list[str] | None = None) -> str:
    path = "/as/" + urllib.parse.quote(model, safe="")
    if listed is not None:
        path += "/list/" + urllib.parse.quote(",".join(listed), safe="")
    return engine + path + "/v1"


def test_a_reply_from_another_model_is_a_guard_error_that_says_so(engine):
    """Before: a gateway's fallback model answered "Safety: Safe" to a bomb request and it was allowed, silently."""
    for on_error, allowed in (("block", False), ("allow", True)):
        guard = remote(_as(engine, "gpt-4o-mini-2024-07-18"), policy=Policy(timeout_s=10, on_error=on_error))
        try:
            decision = guard.check_prompt(BOMB.replace("bomb", "b0mb"))  # the engine says Safe
        finally:
            guard.close()
        assert (decision.reason, decision.allowed) == ("guard_error", allowed), decision
        assert "replied as model 'gpt-4o-mini-2024-07-18', not the guard model" in (decision.error or "")


def test_a_gateways_list_of_many_models_does_not_vouch_for_its_fallback(engine):
    """LiteLLM lists every model it routes to; only what serves the asked name may answer for it."""
    guard = remote(_as(engine, "gpt-4o-mini", listed=[ASKED, "gpt-4o-mini"]), max_context=None)
    try:
        decision = guard.check_prompt("hello")
    finally:
        guard.close()
    assert decision.reason == "guard_error" and "gpt-4o-mini" in (decision.error or ""), decision


@pytest.mark.parametrize(
    "replied",
    [
        "~asked",  # vLLM, SGLang: the served name echoed
        "~missing",
        "~null",
        "",
        "qwen/qwen3guard-gen-4b",  # case
        "/models/Qwen3Guard-Gen-4B",  # a path: TGI's model id, a gateway's full name
        "Qwen3Guard-Gen-4B-Q4_K_M.gguf",  # llama.cpp: the GGUF file
        "qwen3guard:4b",  # any Qwen3Guard's name
    ],
)
def test_engines_quirks_in_the_model_field_stay_verdicts(engine, replied):
    guard = remote(_as(engine, replied))
    try:
        assert guard.check_prompt(BOMB).reason == "unsafe"
        assert guard.check_prompt("hello").reason == "safe"
    finally:
        guard.close()


def test_a_server_serving_one_model_under_its_own_name_and_reply_models(engine):
    """TGI or llama.cpp asked as "tgi" answer under the one model their /models lists; a name no rule knows is
    accepted when the operator names it (``reply_models=``), or with ``"*"`` any."""
    guard = remote(
        _as(engine, "/data/my-safety-model", listed=["/data/my-safety-model"]), model="tgi", max_context=None
    )
    try:
        assert guard.check_prompt(BOMB).reason == "unsafe"
    finally:
        guard.close()
    for reply_models in (["my-safety-model"], "*"):
        guard = remote(_as(engine, "/data/my-safety-model"), model="tgi", reply_models=reply_models)
        try:
            assert guard.check_prompt(BOMB).reason == "unsafe"
        finally:
            guard.close()
    guard = remote(_as(engine, "/data/my-safety-model"), model="tgi")
    try:
        assert guard.check_prompt("hello").reason == "guard_error"
    finally:
        guard.close()
