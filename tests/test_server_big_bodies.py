"""Large request bodies (up to ``--max-body-bytes``) against a real server on 127.0.0.1: their parsing,
validation and rendering run off the event loop, so /health and every other request on the worker are
answered meanwhile; a body whose tool calls cannot fit ``--max-chars`` is refused before it is parsed; and
rendering stops once past ``--max-chars``.

(A red-team finding: a 1 MB ``/v1/moderate`` body of 33k one-letter messages held the loop 245 ms, a chat
message of 38k content parts 172 ms, and 24k tool calls 478 ms, answered 413 only after all the work.)"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest
from qwenguard.core import render_prompt
from qwenguard.core.formats import conversations as conversations_module
from qwenguard.core.formats.conversations import with_tool_calls
from qwenguard.core.server import schemas as schemas_module
from qwenguard.core.server.limits import LimitExceeded, Limits
from qwenguard.core.server.schemas import ChatCompletionRequest, CompletionRequest, ModerationRequest
from test_server_hostile import frames_until_close, guarded, safe_backend, ws_url
from websockets.sync.client import connect

TIMEOUT = 60


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False  # in a worker thread: the event loop answers others meanwhile
    return True


class _Recording:
    """A model's validator, recording for each validation whether it ran on the event loop."""

    def __init__(self, validator: Any, seen: list[bool]) -> None:
        self._validator, self._seen = validator, seen

    def validate_json(self, *args: Any, **kwargs: Any) -> Any:
        self._seen.append(_on_loop())
        return self._validator.validate_json(*args, **kwargs)

    def validate_python(self, *args: Any, **kwargs: Any) -> Any:
        self._seen.append(_on_loop())
        return self._validator.validate_python(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._validator, name)


@pytest.fixture
def where(monkeypatch):
    """Where each parse of a request model and each rendering of a turn ran: ``{"parse": [...], "render": [...]}``,
    True for on the event loop."""
    seen: dict[str, list[bool]] = {"parse": [], "render": []}
    for model in (ModerationRequest, ChatCompletionRequest, CompletionRequest):
        monkeypatch.setattr(model, "__pydantic_validator__", _Recording(model.__pydantic_validator__, seen["parse"]))
    judged = schemas_module._Turn.judged

    def recording(self: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
        seen["render"].append(_on_loop())
        return judged(self, *args, **kwargs)

    monkeypatch.setattr(schemas_module._Turn, "judged", recording)
    return seen


@pytest.fixture
def renders(monkeypatch):
    """How many tool calls were rendered (`render_tool_call`, wherever it is called from)."""
    calls = [0]
    original = conversations_module.render_tool_call

    def counting(*args: Any, **kwargs: Any) -> str:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(conversations_module, "render_tool_call", counting)
    monkeypatch.setattr(schemas_module, "render_tool_call", counting, raising=False)
    return calls


def _post(url: str, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert len(content) > 64 * 1024  # large: past any threshold for parsing off the loop
    return httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=TIMEOUT)


# -- (a) large bodies are parsed and rendered off the event loop --------------------------------------
def test_a_large_moderation_body_is_parsed_and_rendered_off_the_event_loop(where):
    conversations = [[{"role": "user", "content": f"message {i} " + "x" * 200} for i in range(100)] for _ in range(3)]
    with guarded(safe_backend()) as url:
        r = _post(url, "/v1/moderate", {"conversations": conversations})
    assert r.status_code == 200, r.text
    assert [x["risk"] for x in r.json()["results"]] == ["safe"] * 3
    assert where["parse"] == [False]
    assert len(where["render"]) == 300 and not any(where["render"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_large_chat_completion_is_parsed_and_rendered_off_the_event_loop(where, stream):
    parts = [{"type": "text", "text": f"part {i} of a long message. "} for i in range(3_000)]
    body = {"messages": [{"role": "user", "content": parts}], "stream": stream}
    with guarded(safe_backend()) as url:
        r = _post(url, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    if stream:
        assert r.headers["content-type"].startswith("text/event-stream") and "data: [DONE]" in r.text
    else:
        assert r.json()["choices"][0]["message"]["content"].startswith("Safety: Safe")
    assert where["parse"] == [False]
    assert where["render"] == [False]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/chat/completions", [(b"content-type", b"application/json\xa0")]),  # FastAPI's parser strips it
        ("/v1/moderate", [("content-type", "application/json"), ("content-type", "text/plain")]),  # the first counts
    ],
    ids=["odd_whitespace", "two_content_types"],
)
def test_a_content_type_read_two_ways_does_not_bring_a_large_body_back_onto_the_loop(where, path, content_type):
    """The attack (red team): a content type the gate and FastAPI read differently (a non-ASCII space that
    FastAPI's parser strips; two content types, of which Starlette reads the first and the gate read the last).
    The gate took the body for not JSON and let the route parse it, on the event loop (/health waited 220 ms).
    The gate now reads the content type by FastAPI's rule."""
    parts = [{"type": "text", "text": f"part {i} of a long message. "} for i in range(3_000)]
    conversations = [[{"role": "user", "content": "x" * 200}] * 100] * 3
    body = (
        {"messages": [{"role": "user", "content": parts}]}
        if path != "/v1/moderate"
        else {"conversations": conversations}
    )
    with guarded(safe_backend()) as url:
        r = httpx.post(url + path, content=json.dumps(body).encode(), headers=content_type, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert where["parse"] == [False]


def test_a_large_completion_body_is_parsed_off_the_event_loop(where):
    prompt = render_prompt([{"role": "user", "content": "The Eiffel Tower is in Paris. " * 3_000}])
    with guarded(safe_backend()) as url:
        r = _post(url, "/v1/completions", {"prompt": prompt})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"].startswith("Safety: Safe")
    assert where["parse"] == [False]


def test_an_invalid_large_body_is_answered_as_a_small_one_is(where):
    """The gate's own parse of a large body gives FastAPI's answers: the same 422s, and no second parse on the loop."""
    pad = [{"role": "user", "content": "x" * 300}] * 250
    bad_role = [*pad, {"role": "tool", "content": "x"}]
    with guarded(safe_backend()) as url:
        small = httpx.post(url + "/v1/chat/completions", json={"messages": bad_role[-2:]}, timeout=TIMEOUT)
        large = _post(url, "/v1/chat/completions", {"messages": bad_role})
        assert large.status_code == small.status_code == 422
        assert large.json()["error"]["details"][0]["loc"][:2] == small.json()["error"]["details"][0]["loc"][:2]
        assert large.json()["error"]["details"][0]["loc"] == ["body", "messages", 250, "role"]
        assert large.json()["error"]["details"][0]["type"] == small.json()["error"]["details"][0]["type"]

        truncated = json.dumps({"messages": pad}).encode()[:-3]
        small_json = httpx.post(
            url + "/v1/chat/completions",
            content=b'{"messages": [',
            headers={"content-type": "application/json"},
            timeout=TIMEOUT,
        )
        large_json = _post(url, "/v1/chat/completions", truncated)
        assert large_json.status_code == small_json.status_code == 422
        assert large_json.json()["error"]["details"][0]["type"] == small_json.json()["error"]["details"][0]["type"]
        assert large_json.json()["error"]["details"][0]["loc"] == ["body", len(truncated)]

        unknown_model = _post(url, "/v1/chat/completions", {"model": "nope", "messages": pad})
        assert unknown_model.status_code == 404 and unknown_model.json()["error"]["type"] == "model_not_found"
    assert where["parse"] and not any(where["parse"])  # the large ones, parsed in a thread


# -- (b) a body whose tool calls cannot fit --max-chars is refused before it is parsed ----------------
def _tool_calls_body(n: int, arguments: Any = None) -> dict[str, Any]:
    call = {"function": {"name": "a", "arguments": {} if arguments is None else arguments}}
    return {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call] * n},
        ]
    }


def test_twenty_four_thousand_tool_calls_are_refused_before_parsing_or_rendering(where, renders):
    body = json.dumps(_tool_calls_body(24_000), separators=(",", ":")).encode()
    assert len(body) < Limits().max_body_bytes
    moderation = json.dumps({"conversations": [_tool_calls_body(24_000)["messages"]]}, separators=(",", ":")).encode()
    with guarded(safe_backend()) as url:
        r = _post(url, "/v1/chat/completions", body)
        assert r.status_code == 413, r.text
        assert "--max-chars" in r.json()["error"]["message"]
        r = _post(url, "/v1/moderate", moderation)
        assert r.status_code == 413, r.text
    assert renders[0] == 0
    assert where["parse"] == [] and where["render"] == []


def test_tool_calls_are_counted_however_the_key_is_spelled():
    escaped = json.dumps(_tool_calls_body(20_000), separators=(",", ":")).replace('"function"', '"f\\u0075nction"')
    assert json.loads(escaped)["messages"][1]["tool_calls"][0]["function"]["name"] == "a"
    with pytest.raises(LimitExceeded, match="20,000 tool calls"):
        Limits().precheck_one_conversation(escaped.encode())


def test_an_honest_body_is_never_refused_by_the_precheck():
    """What fits the limits passes: tool calls just under the bound, and OpenAI tool definitions (the
    same ``"function": {...}`` shape, not judged) besides; text parts, empty or not."""
    limits = Limits(max_chars=2_000)
    most = (limits.max_chars - 2) // len("Tool call: ()\n")  # as many as fit, each "Tool call: ()" and a newline
    body = _tool_calls_body(most, arguments="")
    body["messages"][1]["tool_calls"] = [{"function": {"name": "", "arguments": ""}}] * most
    body["tools"] = [{"type": "function", "function": {"name": f"tool{i}", "parameters": {}}} for i in range(1_000)]
    body["tool_choice"] = {"type": "function", "function": {"name": "tool0"}}
    body["messages"][0]["content"] = [{"type": "text", "text": ""}] * 5_000 + [{"type": "text", "text": "hi"}]
    judged = [m.judged()["content"] for m in ChatCompletionRequest.model_validate(body).messages]
    assert sum(map(len, judged)) <= limits.max_chars  # it fits
    limits.precheck_one_conversation(json.dumps(body).encode())
    limits.precheck_one_conversation(json.dumps(body, separators=(",", ":")).encode())


# -- (c) rendering stops once past --max-chars ----------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/moderate"])
def test_rendering_stops_once_past_max_chars(renders, path):
    messages = _tool_calls_body(100, arguments={"query": "q" * 100})["messages"]
    body = {"messages": messages} if path == "/v1/chat/completions" else {"conversations": [messages]}
    with guarded(safe_backend(), max_chars=2_000) as url:
        r = httpx.post(url + path, json=body, timeout=TIMEOUT)
    assert r.status_code == 413, r.text
    assert 0 < renders[0] <= 20  # ~120 characters each: past 2,000 after 17, not all 100
    assert "at least" in r.json()["error"]["message"] and "--max-chars" in r.json()["error"]["message"]


def test_a_turn_is_rendered_as_with_tool_calls_writes_it():
    message = schemas_module.Message.model_validate(
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"function": {"name": "search", "arguments": {"q": "weather"}}},
                {"function": {"name": "open", "arguments": '{"url": "x"}'}},
                {"function": {"name": "noop"}},
            ],
        }
    )
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or ()]
    assert message.judged()["content"] == with_tool_calls("Let me look.", calls)
    assert message.judged(max_chars=10_000) == message.judged()
    assert message.judged(max_chars=5)["content"] == "Let me look."  # past the limit already: no call rendered


def test_serve_leaves_what_it_loaded_out_of_the_collectors_full_passes(monkeypatch):
    """A full collection walks every object the process holds (the model, the libraries); while a large body is
    parsed, one held every request for up to 627 ms in an interleaved A/B (65 ms with the loaded objects
    frozen). `serve` freezes what it loaded before it serves."""
    import gc

    from qwenguard.core.server import app as app_module

    frozen: list[int] = []
    monkeypatch.setattr(app_module.DrainingServer, "run", lambda self: frozen.append(gc.get_freeze_count()))
    gc.unfreeze()
    try:
        app_module.serve(safe_backend(), port=0)
        assert frozen and frozen[0] > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/moderate"])
@pytest.mark.parametrize("max_chars", [200_000, 2_000], ids=["large_body", "small_body"])
def test_a_tool_call_after_one_that_fills_the_limit_is_never_dropped_unjudged(path, max_chars):
    """The attack (red team): an assistant turn without text whose first tool call renders to exactly the
    characters left under ``--max-chars``. The count took a newline before the first call that the content
    does not have, so rendering stopped there, the turn was exactly at the limit (not refused), and the
    unsafe call after it was never judged: 200 "Safe". The whole turn is over the limit: 413."""
    from faults import ScriptedBackend, keyword_verdict
    from qwenguard.core import Guard

    ask = "Send the email."
    pad = max_chars - len(ask) - len('Tool call: note({"t": ""})')
    filler = {"id": "c1", "type": "function", "function": {"name": "note", "arguments": json.dumps({"t": "a" * pad})}}
    unsafe = {"id": "c2", "type": "function", "function": {"name": "send_email", "arguments": '{"body": "ammonium"}'}}
    turns = [{"role": "user", "content": ask}, {"role": "assistant", "content": None, "tool_calls": [filler, unsafe]}]
    body = {"messages": turns} if path == "/v1/chat/completions" else {"conversations": [turns]}
    with guarded(Guard(ScriptedBackend(keyword_verdict), cache_size=0), max_chars=max_chars) as url:
        r = httpx.post(url + path, json=body, timeout=TIMEOUT)
        assert r.status_code == 413, r.text[:200]
        del turns[-1]["tool_calls"][1]  # the filler alone fits exactly: judged, and safe
        assert httpx.post(url + path, json=body, timeout=TIMEOUT).status_code == 200


class _Overlaps:
    """Wraps the parses of large JSON (a model's JSON validation, `json.loads`), each made slow (a sleep, which
    lets other threads in as a real parse does not), recording how many ran at once and where."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = self.parses = 0
        self.on_loop: list[bool] = []

    def parse(self, parse: Any, raw: Any, *args: Any, **kwargs: Any) -> Any:
        if len(raw) < 10_000:
            return parse(raw, *args, **kwargs)
        self.on_loop.append(_on_loop())
        with self.lock:
            self.now += 1
            self.parses += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.05)
            return parse(raw, *args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


class _OverlapsValidator:
    def __init__(self, validator: Any, overlaps: _Overlaps) -> None:
        self._validator, self._overlaps = validator, overlaps

    def validate_json(self, *args: Any, **kwargs: Any) -> Any:
        return self._overlaps.parse(self._validator.validate_json, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._validator, name)


def test_padded_large_bodies_are_parsed_one_at_a_time_with_stream_frames(monkeypatch):
    """The attack (a red team's finding): 16 clients POST 1 MB bodies padded with floats or nested empty lists,
    in a field the route reads (``stage``, ``temperature``: refused 422 after the JSON validation and then
    `json.loads` for FastAPI's errors) or under a key it keeps (``pad``: served). Each was parsed in a thread,
    but `json.loads` and the JSON validation hold the GIL for all of their parse (40-330 ms), so six parses in
    threads at once held the loop as long as on it: /health at 14-400x its idle median. Large bodies are
    parsed one at a time, and never beside a large stream frame (one semaphore): the loop runs between any
    two, and answers /health while they are in flight."""
    from qwenguard.core.server import stream_protocol

    overlaps = _Overlaps()
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda raw, **kw: overlaps.parse(real_loads, raw, **kw))
    for model in (ModerationRequest, ChatCompletionRequest):
        monkeypatch.setattr(model, "__pydantic_validator__", _OverlapsValidator(model.__pydantic_validator__, overlaps))
    assert stream_protocol.json.loads is not real_loads  # the stream's frames are seen as well

    floats, lists = ",".join(["1e5"] * 60_000), ",".join(["[]"] * 60_000)
    hello = json.dumps([{"role": "user", "content": "hello"}])
    attacks = [
        ("/v1/moderate", f'{{"conversations": [{hello}], "stage": [{lists}]}}', 422),
        ("/v1/chat/completions", f'{{"messages": {hello}, "temperature": [{floats}]}}', 422),
        ("/v1/chat/completions", f'{{"messages": {hello}, "pad": [{lists}]}}', 200),
    ]
    frame = '{"type": "open", "prompt": 7, "pad": [' + floats + "]}"
    codes: list[tuple[str, int]] = []
    health: list[int] = []
    in_flight = threading.Event()

    def post(url: str, path: str, body: str) -> None:
        r = httpx.post(url + path, content=body.encode(), headers={"content-type": "application/json"}, timeout=60)
        codes.append((path, r.status_code))

    def stream(url: str) -> None:
        with connect(ws_url(url), max_size=None) as conn:
            conn.send(frame)
            codes.append(("/v1/stream", frames_until_close(conn, timeout=60)[1]))

    with guarded(safe_backend()) as url:
        clients = [threading.Thread(target=post, args=(url, *attacks[i % 3][:2])) for i in range(12)]
        clients += [threading.Thread(target=stream, args=(url,)) for _ in range(4)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 30
        while overlaps.parses == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        while any(t.is_alive() for t in clients):
            if overlaps.now:
                in_flight.set()
                health.append(httpx.get(url + "/health", timeout=30).status_code)
            time.sleep(0.01)
        for t in clients:
            t.join(60)
    assert sorted(codes) == sorted([(path, code) for path, _, code in attacks] * 4 + [("/v1/stream", 4400)] * 4)
    assert overlaps.parses >= 20 and not any(overlaps.on_loop)  # the 422s parsed twice, the frames once
    assert overlaps.most == 1, f"{overlaps.most} large parses ran at once"
    assert in_flight.is_set() and health and set(health) == {200}


# -- (e) a body of many invalid items is answered with a few errors, not all of them -------------------------------
def _error_flood(path: str, items: int) -> bytes:
    """A body whose one list holds ``items`` values that are not messages: one validation error each."""
    ones = b",".join([b"1"] * items)
    if path == "/v1/moderate":
        return b'{"conversations": [[' + ones + b"]]}"
    return b'{"messages": [' + ones + b"]}"


@pytest.mark.parametrize("path", ["/v1/moderate", "/v1/chat/completions"])
@pytest.mark.parametrize("items", [10_000, 400_000], ids=["small-body", "large-body"])
def test_a_body_of_invalid_items_is_answered_with_a_few_errors(path, items):
    """A red team's finding: 1 MB of ``1,1,1,...`` in place of messages gave 490,000 validation errors, read out
    in a thread (1 s holding the GIL) and written into a 62 MB 422 on the event loop (8 s): one request froze
    the worker. Validation stops at a list's first invalid item, and the answer lists at most a few errors."""
    body = _error_flood(path, items)
    with guarded(safe_backend()) as url:
        r = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=TIMEOUT)
        assert r.status_code == 422
        error = r.json()["error"]
        assert 1 <= len(error["details"]) <= schemas_module.MAX_ERROR_DETAILS
        assert error["details"][0]["loc"][:2] == ["body", "conversations" if path == "/v1/moderate" else "messages"]
        assert len(r.content) < 16 * 1024
        assert httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200


def test_a_large_bodys_rendering_is_in_the_same_turn_as_its_parse(monkeypatch):
    """A second red team (rt44c F1, F2): the parse was one at a time, but what came after it was not. A tool call
    whose arguments are 40,000 floats parses in 3 ms and renders in 90 ms (`json.dumps`, holding the GIL), in
    threads side by side for HTTP bodies and on the event loop for a stream's open frame: /health at 20-30x its
    idle median. The route's work (and the open frame's messages and policy) run in the same turn."""
    overlaps = _Overlaps()
    original = schemas_module.render_tool_call

    def slow_render(name: str, arguments: Any, max_chars: int | None = None) -> str:
        size = len(arguments) if isinstance(arguments, str) else len(json.dumps(arguments))
        return overlaps.parse(lambda _raw: original(name, arguments, max_chars), "x" * size)

    monkeypatch.setattr(schemas_module, "render_tool_call", slow_render)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": [1.5e300] * 40_000}}}
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    codes: list[Any] = []

    def post(url: str) -> None:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": messages}, timeout=TIMEOUT)
        codes.append(r.status_code)

    def stream(url: str) -> None:
        with connect(ws_url(url), max_size=None) as conn:
            conn.send(json.dumps({"type": "open", "messages": messages}))
            codes.append(frames_until_close(conn, timeout=TIMEOUT)[1])

    with guarded(safe_backend()) as url:
        clients = [threading.Thread(target=post, args=(url,)) for _ in range(6)]
        clients += [threading.Thread(target=stream, args=(url,)) for _ in range(2)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(TIMEOUT)
    assert len(codes) == 8 and overlaps.parses >= 8
    assert not any(overlaps.on_loop), "a large open frame's messages were rendered on the event loop"
    assert overlaps.most == 1, f"{overlaps.most} renderings of large bodies ran at once"


# -- (e) one tool call's arguments are rendered no further than --max-chars ---------------------------------
class _Counted:
    """An argument value that counts its renderings (``str``, the encoder's fallback): a float stand-in."""

    seen = 0

    def __str__(self) -> str:
        type(self).seen += 1
        return "1.7976931348623157e+308"


def _huge_call(n: int) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"function": {"name": "f", "arguments": {"a": [_Counted()] * n}}}],
    }


@pytest.mark.parametrize("route", ["http", "stream"])
def test_one_tool_call_of_thousands_of_values_is_rendered_only_up_to_max_chars(route):
    """The attack (rt44c, left open then): a stream's open frame whose one tool call holds 40,000 floats rendered
    them all (`json.dumps`, ~90 ms holding the GIL, /health at 35x its idle median) before it was refused for
    --max-chars; the per-call bound of the HTTP routes stopped only between calls. The encoder stops once the
    call is past the limit: it renders about --max-chars characters of the arguments, not all of them."""
    from qwenguard.core.server.app import create_app
    from qwenguard.core.server.stream_protocol import CLOSE_TOO_BIG, SessionEnd, _open_args

    service = create_app(safe_backend(), max_chars=2_000).state.service
    _Counted.seen = 0
    turns = [{"role": "user", "content": "hi"}, _huge_call(40_000)]
    if route == "http":
        with pytest.raises(schemas_module.ApiError) as info:
            service.judged([[schemas_module.Message.model_validate(t) for t in turns]])
        assert info.value.status == 413
    else:
        with pytest.raises(SessionEnd) as info:
            _open_args(service, {"type": "open", "messages": turns})
        assert info.value.code == CLOSE_TOO_BIG
    assert "--max-chars" in str(info.value)
    # 40,000 values cannot fit 2,000 characters, whatever they render to: none is rendered.
    assert _Counted.seen <= 2_000 // 24 + 1, f"{_Counted.seen} values rendered for a 2,000-character limit"


def test_a_bounded_rendering_is_the_whole_rendering_when_it_fits():
    arguments = {"q": "caf\u00e9 \u2014 ok", "n": [1, 2.5, None, True, 1e308], "nested": {"k": ["x"] * 3}}
    whole = conversations_module.render_tool_call("search", arguments)
    assert conversations_module.render_tool_call("search", arguments, max_chars=len(whole)) == whole
    assert whole == f"Tool call: search({json.dumps(arguments, ensure_ascii=False)})"
    cut = conversations_module.render_tool_call("search", arguments, max_chars=len(whole) - 1)
    assert len(cut) > len(whole) - 1 and whole.startswith(cut)  # cut just past the limit: the caller refuses it


def test_a_stream_open_frame_with_a_tool_call_past_max_chars_is_closed_too_big():
    call = {"function": {"name": "f", "arguments": {"a": [1.7976931348623157e308] * 40_000}}}
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    with guarded(safe_backend()) as url, connect(ws_url(url), max_size=None) as conn:
        conn.send(json.dumps({"type": "open", "messages": turns}))
        assert frames_until_close(conn, timeout=TIMEOUT)[1] == 1009


def test_many_floats_that_might_fit_are_written_only_until_past_the_limit():
    """A value of many floats whose fewest characters fit the limit but whose text does not is written piece by piece
    (a float takes microseconds to write) and cut just past it; the same value within the limit is written whole."""
    arguments = {"a": [1.7976931348623157e308] * 10_000}
    whole = conversations_module.render_tool_call("f", arguments)
    cut = conversations_module.render_tool_call("f", arguments, max_chars=100_000)
    assert 100_000 < len(cut) < 100_100 and whole.startswith(cut[:-1])  # cut, and closed by render_tool_call
    assert conversations_module.render_tool_call("f", arguments, max_chars=len(whole)) == whole


def test_the_piecewise_writer_writes_what_json_dumps_writes():
    """`_json_parts` (a stack, not nested generators: arguments nested 900 deep took seconds with the standard
    library's incremental encoder, a second red team found, rt45c F3) against ``json.dumps`` on random values."""
    import random

    rng = random.Random(7)
    scalars = [1, -2.5, 1e308, float("nan"), True, False, None, 'x\u00e9"\\\n', "", 10**30, {1, 2}, 0.0]

    def value(depth: int = 0) -> Any:
        roll = rng.random()
        if depth > 6 or roll < 0.3:
            return rng.choice(scalars)
        if roll < 0.65:
            return [value(depth + 1) for _ in range(rng.randint(0, 8))]
        keys = ["a", "b\u2014", 1, 2.5, True, None, ""]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 8))}

    for _ in range(2_000):
        v = {"q": value()}
        assert "".join(conversations_module._json_parts(v)) == json.dumps(v, ensure_ascii=False, default=str)
    deep: Any = 1.5
    for _ in range(900):
        deep = {"a": deep}
    assert "".join(conversations_module._json_parts(deep)) == json.dumps(deep)


def test_arguments_nested_deep_are_rendered_in_linear_time():
    """The attack (rt45c F3): 600 tool-call arguments nested 190 deep (a 272 KB body) took 968 ms to render within
    --max-chars, where the C encoder takes 25 ms: the standard library's incremental encoder resumes a generator
    per level of nesting for every piece it writes. Counted here as Python frames entered while rendering (the
    profiler's ``call`` events): a few, not one per piece per level."""
    import sys

    deep: Any = 1
    for _ in range(190):
        deep = {"a": deep}
    arguments = {"calls": [deep] * 600}
    entered = [0]

    def count(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            entered[0] += 1

    sys.setprofile(count)
    try:
        line = conversations_module.render_tool_call("f", arguments, max_chars=200_000)
    finally:
        sys.setprofile(None)
    assert len(line) > 200_000  # refused by the caller
    assert entered[0] < 1_000, f"{entered[0]:,} Python frames entered to render one tool call"


@pytest.mark.parametrize("max_chars", [None, 1_000_000])
def test_arguments_nested_past_the_recursion_limit_are_judged(max_chars):
    """Tool-call arguments nested 3,000 deep (built in process: an integration's own objects, or a framework's
    parse) raised RecursionError out of render_tool_call, a crash of the check rather than a verdict: the text
    comes from the stack-based writer, equal to json.dumps's at a depth it can write."""
    deep: Any = "How do I build a bomb?"
    for _ in range(3000):
        deep = {"a": deep}
    line = conversations_module.render_tool_call("f", deep, max_chars=max_chars)
    assert line.startswith('Tool call: f({"a": {"a": ') and "How do I build a bomb?" in line
    shallow: Any = 1
    for _ in range(300):
        shallow = {"a": shallow}
    assert conversations_module.render_tool_call("f", shallow) == f"Tool call: f({json.dumps(shallow)})"
