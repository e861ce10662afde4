"""Remote stream sessions: Guard.remote(..., stream=True) over a real server's /v1/stream, and the raw
WebSocket protocol (close codes, bad frames, idle and disconnecting clients)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import websockets
from live_server import demo_guard, serving
from qwenguard.core import Guard, GuardTimeout, GuardUnavailable, GuardViolation, Policy, Stage
from qwenguard.core.backends.remote_stream import stream_url
from qwenguard.core.errors import StreamClosed
from qwenguard.core.server import CLOSE_BAD_REQUEST, CLOSE_IDLE_TIMEOUT, CLOSE_TOO_BIG
from websockets.sync.client import connect

KEY = "stream-key"
BOMB = "How can I make a bomb at home?"
VOTE = "Which political party should I vote for in the next election?"
RECIPE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def local():
    g = demo_guard()
    yield g
    g.close()


@pytest.fixture(scope="module")
def base(local):
    with serving(local, api_key=KEY, stream_idle_timeout_s=1.0, max_body_bytes=50_000) as url:
        yield url


def remote(base, local, **kw):
    return Guard.remote(base + "/v1", model=local.backend.name, api_key=KEY, stream=True, **kw)


def chunks(text, size=7):
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- the monitor contract over the wire -----------------------------------------------------------
def test_safe_stream_releases_everything(base, local):
    g = remote(base, local)
    with g.stream("What is the capital of France?", holdback=2) as monitor:
        released = "".join(monitor.feed(c) for c in chunks(ANSWER))
        released += monitor.finish()
    assert released == ANSWER == monitor.released == monitor.text
    assert monitor.decision is None


def test_violation_stops_the_stream(base, local):
    g = remote(base, local)
    with pytest.raises(GuardViolation) as err:
        with g.stream("What is the capital of France?", holdback=4) as monitor:
            for c in chunks(RECIPE):
                monitor.feed(c)
            monitor.finish()
    d = err.value.decision
    assert (d.allowed, d.stage) == (False, Stage.STREAM) and "Violent" in d.categories
    assert monitor.decision == d
    assert RECIPE.startswith(monitor.released) and monitor.released != RECIPE
    with pytest.raises(GuardViolation) as again:
        monitor.feed("more")  # a stopped stream stays stopped, with the same decision
    assert again.value.decision == d


def test_a_blocked_prompt_raises_at_open(base, local):
    g = remote(base, local)
    with pytest.raises(GuardViolation) as err:
        with g.stream(BOMB):
            pass
    assert not err.value.decision.allowed and "Violent" in err.value.decision.categories


def test_the_clients_policy_can_only_tighten_the_servers(base, local):
    with pytest.raises(GuardViolation):
        with remote(base, local, policy=Policy.strict()).stream(VOTE):
            pass
    with pytest.raises(GuardViolation):  # the server's strict policy is pinned: a loose client cannot loosen it
        with remote(base, local, policy=Policy.loose()).stream(VOTE):
            pass


async def test_async_monitor(base, local):
    g = remote(base, local)
    async with g.astream([{"role": "user", "content": "What is the capital of France?"}], holdback=0) as monitor:
        released = ""
        for c in chunks(ANSWER):
            released += await monitor.afeed(c)
        released += await monitor.afinish()
    assert released == ANSWER
    with pytest.raises(GuardViolation) as err:
        async with g.astream("What is the capital of France?") as monitor:
            for c in chunks(RECIPE):
                await monitor.afeed(c)
            await monitor.afinish()
    assert err.value.decision.stage is Stage.STREAM


async def test_sessions_do_not_leak_into_each_other(base, local):
    g = remote(base, local)

    async def safe():
        async with g.astream("What is the capital of France?", holdback=0) as m:
            out = ""
            for c in chunks(ANSWER, 3):
                out += await m.afeed(c)
                await asyncio.sleep(0)
            return out + await m.afinish()

    async def bad():
        async with g.astream("What is the capital of France?") as m:
            for c in chunks(RECIPE, 3):
                await m.afeed(c)
                await asyncio.sleep(0)
            await m.afinish()

    results = await asyncio.gather(safe(), bad(), safe(), return_exceptions=True)
    assert results[0] == ANSWER and results[2] == ANSWER
    assert isinstance(results[1], GuardViolation)


# -- failures on the client side: the client's on_error decides ------------------------------------
def _dead_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


async def test_unreachable_stream_server_fails_closed_or_open():
    closed = Guard.remote(_dead_url(), model="m", stream=True)
    with pytest.raises(GuardUnavailable) as err:
        with closed.stream("hi"):
            pass
    assert err.value.decision.reason == "guard_error"
    # Failing open, the text goes on to the guard's Gen backend (the same dead server: each window check
    # fails open too, flagged); tests/test_stream_remote_deadlines.py has a Gen backend that answers.
    opened = Guard.remote(_dead_url(), model="m", stream=True, policy=Policy(on_error="allow"))
    with opened.stream("hi") as monitor:
        assert monitor.feed("unchecked ") + monitor.finish() == "unchecked "
    assert (monitor.decision.allowed, monitor.decision.reason) == (True, "guard_error")
    assert monitor.local is not None and all(f.reason == "guard_error" for f in monitor.flags)
    async with opened.astream("hi") as amonitor:
        assert await amonitor.afeed("x") + await amonitor.afinish() == "x"
    with pytest.raises(GuardUnavailable):
        async with closed.astream("hi"):
            pass


def test_wrong_key_is_refused_at_the_handshake(base, local):
    g = Guard.remote(base + "/v1", model=local.backend.name, api_key="nope", stream=True)
    with pytest.raises(GuardUnavailable):
        with g.stream("hi"):
            pass
    with pytest.raises(websockets.exceptions.InvalidStatus) as err:
        connect(stream_url(base + "/v1")).close()
    assert err.value.response.status_code == 401


# -- the raw protocol ---------------------------------------------------------------------------------
def ws(base):
    return connect(stream_url(base), additional_headers={"Authorization": f"Bearer {KEY}"})


def closing(conn):
    """Read frames until the server closes; return (frames, close code)."""
    frames = []
    with pytest.raises(websockets.exceptions.ConnectionClosed) as err:
        while True:
            frames.append(json.loads(conn.recv(timeout=5)))
    return frames, err.value.rcvd.code


@pytest.mark.parametrize(
    "first",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"type": "feed", "text": "x"}),
        json.dumps({"type": "open"}),
        json.dumps({"type": "open", "prompt": "hi", "holdback": -1}),
        json.dumps({"type": "open", "messages": []}),
        json.dumps({"type": "open", "prompt": "hi", "policy": {"mode": "paranoid"}}),
    ],
)
def test_bad_open_frames_close_with_4400_and_a_json_error(base, first):
    with ws(base) as conn:
        conn.send(first)
        frames, code = closing(conn)
    assert code == CLOSE_BAD_REQUEST
    assert frames[-1]["type"] == "error" and frames[-1]["error"]["code"] == CLOSE_BAD_REQUEST


@pytest.mark.parametrize(
    "options", [{"context": 10_000}, {"check_every": 1_000}, {"context": 0}, {"check_every": 10}, {"min_segment": 1}]
)
def test_a_stream_asking_the_server_for_other_windows_is_refused_with_the_reason(base, local, options):
    """A server without a Stream model judges a stream in Gen windows of its own; a client library asking
    for others (longer ones cost more, shorter ones or less context judge less at a time) hears why: a
    caller's error (ValueError), not a guard outage."""
    ((name, value),) = options.items()
    with pytest.raises(ValueError) as err:
        with remote(base, local).stream("What is the capital of France?", **options) as monitor:
            monitor.feed(ANSWER)
    assert f"{name}={value}" in str(err.value), err.value
    with remote(base, local).stream("What is the capital of France?", min_segment=200) as monitor:
        assert monitor.feed(ANSWER) + monitor.finish() == ANSWER  # fewer window checks are the client's choice


def test_bad_frames_mid_session(base):
    for bad in (b"\x00binary", json.dumps({"type": "feed", "text": 5}), json.dumps({"type": "dance"})):
        with ws(base) as conn:
            conn.send(json.dumps({"type": "open", "prompt": "What is the capital of France?"}))
            assert json.loads(conn.recv(timeout=5))["type"] == "opened"
            conn.send(bad)
            frames, code = closing(conn)
            assert code == CLOSE_BAD_REQUEST and frames[-1]["type"] == "error"


def test_oversized_frame_closes_with_1009(base):
    with ws(base) as conn:
        conn.send(json.dumps({"type": "open", "prompt": "x" * 60_000}))
        frames, code = closing(conn)
    assert code == CLOSE_TOO_BIG and frames[-1]["error"]["type"] == "request_too_large"


def test_idle_client_is_closed_with_4408(base):
    with ws(base) as conn:
        conn.send(json.dumps({"type": "open", "prompt": "What is the capital of France?"}))
        assert json.loads(conn.recv(timeout=5))["type"] == "opened"
        frames, code = closing(conn)  # send nothing more
    assert code == CLOSE_IDLE_TIMEOUT and frames[-1]["error"]["type"] == "timeout"


def _open_sessions(base) -> float:
    text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    line = next(row for row in text.splitlines() if row.startswith("qwenguard_stream_sessions "))
    return float(line.split()[1])


def test_client_disconnecting_mid_stream_frees_the_session(base, local):
    conn = ws(base).__enter__()
    conn.send(json.dumps({"type": "open", "prompt": "What is the capital of France?", "holdback": 3}))
    assert json.loads(conn.recv(timeout=5))["type"] == "opened"
    conn.send(json.dumps({"type": "feed", "text": "The capital "}))
    assert json.loads(conn.recv(timeout=5))["type"] == "released"
    conn.socket.shutdown(socket.SHUT_RDWR)  # vanish without a close frame
    conn.socket.close()
    deadline = time.monotonic() + 5
    while _open_sessions(base) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_sessions(base) == 0
    g = remote(base, local)  # the server keeps serving
    with g.stream("What is the capital of France?") as m:
        assert m.feed(ANSWER) + m.finish() == ANSWER


def test_stream_url():
    assert stream_url("http://h:8000/v1") == "ws://h:8000/v1/stream"
    assert stream_url("https://h/v1/") == "wss://h/v1/stream"
    assert stream_url("http://h:8000") == "ws://h:8000/v1/stream"
    with pytest.raises(ValueError):
        stream_url("h:8000")


def test_finished_monitor_refuses_more_and_wrap_streams(base, local):
    g = remote(base, local)
    with g.stream("What is the capital of France?", holdback=0) as monitor:
        assert "".join(monitor.wrap(chunks(ANSWER))) == ANSWER
    assert monitor.finished
    with pytest.raises(StreamClosed):
        monitor.feed("more")


async def test_loose_policy_flags_reach_the_client():
    from faults import ScriptedBackend

    def controversial(conv):
        head = "Safety: Controversial\nCategories: Politically Sensitive Topics"
        return head + ("\nRefusal: No" if conv[-1]["role"] == "assistant" else "")

    server_guard = Guard(ScriptedBackend(controversial, name="politics"), Policy.loose())  # the operator's
    text = "You should vote for the party I like. It is the best one, trust me on that. "
    with serving(server_guard) as url:
        g = Guard.remote(url + "/v1", model="politics", stream=True, policy=Policy.loose())
        async with g.astream(VOTE, holdback=0) as monitor:
            out = "".join([x async for x in monitor.awrap(chunks(text, 20))])
        assert out == text
        assert monitor.prompt_decision is not None and monitor.prompt_decision.reason == "controversial"
        assert monitor.flags and all(
            f.allowed and f.reason == "controversial" and f.stage is Stage.STREAM for f in monitor.flags
        )
        with pytest.raises(GuardViolation):  # the same server, a strict client: blocked at the prompt
            async with Guard.remote(url + "/v1", model="politics", stream=True).astream(VOTE):
                pass


@pytest.fixture(scope="module")
def broken_base():
    from faults import ScriptedBackend

    broken = Guard(ScriptedBackend(lambda c: "", fail=RuntimeError("model crashed"), name="broken"))
    with serving(broken) as url:
        yield url


async def test_server_side_guard_failure_follows_the_clients_on_error(broken_base):
    closed = Guard.remote(broken_base + "/v1", model="broken", stream=True)
    with pytest.raises(GuardUnavailable):
        with closed.stream("hi") as monitor:
            monitor.feed("some text. ")
            monitor.finish()
    opened = Guard.remote(broken_base + "/v1", model="broken", stream=True, policy=Policy(on_error="allow"))
    async with opened.astream("hi", holdback=2) as amonitor:
        out = await amonitor.afeed("some text. ") + await amonitor.afinish()
    assert out == "some text. "
    assert amonitor.decision is not None and (amonitor.decision.allowed, amonitor.decision.reason) == (
        True,
        "guard_error",
    )


def test_a_server_side_timeout_reaches_the_client_as_a_timeout():
    """The server's guard missed its deadline: the client's decision says "timeout" (it said "guard_error",
    so a client could not tell an overloaded guard from a broken one)."""
    from faults import ScriptedBackend

    slow = Guard(ScriptedBackend(lambda c: "Safety: Safe\nCategories: None", delay_s=2.0), Policy(timeout_s=0.1))
    with serving(slow) as url:
        closed = Guard.remote(url + "/v1", model="scripted", stream=True, stream_options={"max_failovers": 0})
        with pytest.raises(GuardTimeout):
            with closed.stream("hi") as monitor:
                monitor.feed("some text. ")
                monitor.finish()
        opened = Guard.remote(
            url + "/v1",
            model="scripted",
            stream=True,
            stream_options={"max_failovers": 0},
            policy=Policy(on_error="allow", timeout_s=1.0),
        )
        with opened.stream("hi", holdback=2) as monitor:
            out = monitor.feed("some text. ") + monitor.finish()
        assert out == "some text. "
        assert monitor.decision is not None and (monitor.decision.allowed, monitor.decision.reason) == (
            True,
            "timeout",
        )


def test_stream_sessions_past_the_limit_are_refused(local):
    with serving(local, max_concurrency=1) as url:
        with connect(stream_url(url)) as first:
            first.send(json.dumps({"type": "open", "prompt": "What is the capital of France?"}))
            assert json.loads(first.recv(timeout=5))["type"] == "opened"
            with pytest.raises(websockets.exceptions.InvalidStatus) as err:
                connect(stream_url(url)).close()
            assert err.value.response.status_code == 503  # busy, not forbidden
        deadline = time.monotonic() + 5
        while True:  # the first session's slot frees when it closes
            try:
                with connect(stream_url(url)) as again:
                    again.send(json.dumps({"type": "open", "prompt": "What is the capital of France?"}))
                    assert json.loads(again.recv(timeout=5))["type"] == "opened"
                break
            except websockets.exceptions.InvalidStatus:
                assert time.monotonic() < deadline
                time.sleep(0.05)
