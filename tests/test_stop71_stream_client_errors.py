"""Stop 71: a stream client's own errors are the client's, on the client and on the server.

1. `Guard.remote(urls=[a, b], stream=True)` put a replica in cooldown when that replica refused the CLIENT's own
   input (close 1009, text past the server's limits; close 4400, a bad request): one caller sending a too-large
   text took a healthy replica out of rotation for every other stream of the process, and could cycle every
   replica out so. Only the replica's own faults cool it down now.
2. A stream session closed 1009 (text past ``max_chars``, a frame past ``max_body_bytes``, a prompt past the
   guard's window bound) was not counted in ``qwenguard_rejected_total{reason="work_size"}``, where
   `/v1/moderate`'s 413 is: an operator's dashboard missed them.

The servers are real (uvicorn on 127.0.0.1, the demo guard through transformers); which replica served a session
is read from each server's own count of the WebSocket sessions it was asked for."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_server import demo_guard, running
from qwenguard.core import Guard, InputTooLarge
from qwenguard.core.server import create_app
from test_server_hostile import frames_until_close, guarded, ws_url
from websockets.sync.client import connect

MAX_CHARS = 20_000
MAX_BODY_BYTES = 100_000
#: Past the servers' ``max_chars``, within their ``max_body_bytes``.
TOO_LONG = "a" * (MAX_CHARS + 1)
#: A prompt of 200 forged turns: more guard windows than the demo's ``max_windows`` (256) allows (rt70d F2).
FORGED = "".join(f"USER: question {i}?\nASSISTANT: answer {i}.\n" for i in range(200))
PROMPT = "What is the capital of France?"
ANSWER = "The capital of France is Paris. "
#: Normal sessions run after a refusal: with both replicas up, taken in turn, each gets some.
NORMAL_SESSIONS = 4
TIMEOUT = 120


class Counted:
    """An ASGI app that counts the WebSocket sessions it is asked for, then serves them with ``app``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sessions = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            self.sessions += 1
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def guard() -> Iterator[Guard]:
    """The demo guard, served by every replica of this module."""
    guard = demo_guard(cache_size=0)
    try:
        yield guard
    finally:
        guard.close()


@pytest.fixture(scope="module")
def replicas(guard) -> Iterator[list[tuple[str, Counted]]]:
    """Two replicas of one service, each counting its sessions."""
    apps = [Counted(create_app(guard, max_chars=MAX_CHARS, max_body_bytes=MAX_BODY_BYTES)) for _ in range(2)]
    with running(apps[0]) as a, running(apps[1]) as b:
        yield [(a, apps[0]), (b, apps[1])]


@pytest.fixture(scope="module")
def served_replicas(guard) -> Iterator[list[str]]:
    """Two replicas run as ``qwenguard serve`` runs them (`server_config`: WebSocket frames capped at twice
    ``--max-body-bytes``), with ``--max-body-bytes 8192``."""
    with guarded(guard, max_body_bytes=8192) as a, guarded(guard, max_body_bytes=8192) as b:
        yield [a, b]


def _client(replicas: list[tuple[str, Counted]]) -> Guard:
    # A cooldown far longer than the test: a replica cooled down would serve none of the normal sessions.
    urls = [url + "/v1" for url, _ in replicas]
    return Guard.remote(urls, model="demo", stream=True, cache_size=0, stream_options={"cooldown_s": 600})


def _counts(replicas: list[tuple[str, Counted]]) -> list[int]:
    return [app.sessions for _, app in replicas]


def _refuser(replicas: list[tuple[str, Counted]], before: list[int]) -> int:
    """The replica that served the one session since ``before``."""
    grew = [i for i, (b, a) in enumerate(zip(before, _counts(replicas), strict=True)) if a > b]
    assert len(grew) == 1 and sum(_counts(replicas)) == sum(before) + 1, (before, _counts(replicas))
    return grew[0]


def _normal_sessions(guard: Guard) -> None:
    for _ in range(NORMAL_SESSIONS):
        with guard.stream(PROMPT) as monitor:
            assert monitor.feed(ANSWER) + monitor.finish() == ANSWER


async def _anormal_sessions(guard: Guard) -> None:
    for _ in range(NORMAL_SESSIONS):
        async with guard.astream(PROMPT) as monitor:
            assert await monitor.afeed(ANSWER) + await monitor.afinish() == ANSWER


def _assert_still_served(replicas: list[tuple[str, Counted]], refuser: int, before: list[int]) -> None:
    after = _counts(replicas)
    assert sum(after) - sum(before) == NORMAL_SESSIONS, (before, after)
    assert after[refuser] > before[refuser], (
        f"replica {refuser} refused the caller's own text and served none of the next {NORMAL_SESSIONS} sessions "
        f"(sessions before {before}, after {after}): it was cooled down as if it had failed"
    )


# -- 1: a client's own error does not cool a healthy replica down -----------------------------------------------------
def test_a_too_large_prompt_does_not_take_its_replica_out_of_rotation(replicas):
    """The attack: one caller opens a stream whose prompt is past the servers' ``max_chars`` (close 1009). The
    replica that refused it served none of the process's next sessions (cooled down for ``cooldown_s``)."""
    guard = _client(replicas)
    try:
        before = _counts(replicas)
        with pytest.raises(InputTooLarge, match="max-chars"):
            guard.stream(TOO_LONG).open()
        refuser = _refuser(replicas, before)
        before = _counts(replicas)
        _normal_sessions(guard)
        _assert_still_served(replicas, refuser, before)
    finally:
        guard.close()


def test_a_feed_past_max_chars_does_not_take_its_replica_out_of_rotation(replicas):
    """The same through a feed: the session opened, then one delta took it past ``max_chars`` (close 1009)."""
    guard = _client(replicas)
    try:
        before = _counts(replicas)
        with guard.stream(PROMPT) as monitor, pytest.raises(InputTooLarge, match="max-chars"):
            monitor.feed(TOO_LONG)
        refuser = _refuser(replicas, before)
        before = _counts(replicas)
        _normal_sessions(guard)
        _assert_still_served(replicas, refuser, before)
    finally:
        guard.close()


def test_a_bad_request_does_not_take_its_replica_out_of_rotation(replicas):
    """A session option the server refuses (close 4400, ``check_every`` is the server's): the caller's error."""
    guard = _client(replicas)
    try:
        before = _counts(replicas)
        with pytest.raises(ValueError, match="check_every"):
            guard.stream(PROMPT, check_every=7).open()
        refuser = _refuser(replicas, before)
        before = _counts(replicas)
        _normal_sessions(guard)
        _assert_still_served(replicas, refuser, before)
    finally:
        guard.close()


async def test_the_async_twin_keeps_the_replica_in_rotation_too(replicas):
    """Async: a prompt past the guard's window bound (close 1009 after the guard planned its windows)."""
    guard = _client(replicas)
    try:
        before = _counts(replicas)
        with pytest.raises(InputTooLarge, match="max_windows"):
            await guard.astream(FORGED).aopen()
        refuser = _refuser(replicas, before)
        before = _counts(replicas)
        await _anormal_sessions(guard)
        _assert_still_served(replicas, refuser, before)
    finally:
        await guard.aclose()


def _verdicts(url: str) -> float:
    """The verdicts the server at ``url`` counted (every risk): it judged a session's text."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^qwenguard_verdicts_total\{[^}]*\} (\S+)$", text, re.MULTILINE))


def test_a_frame_cut_off_by_the_protocol_does_not_take_its_replica_out_of_rotation(served_replicas):
    """An opening frame past twice ``--max-body-bytes``: the protocol closes 1009 with no error frame (rt70i F1),
    and the caller gets `InputTooLarge`. Both replicas still judge the next sessions."""
    guard = Guard.remote(
        [url + "/v1" for url in served_replicas],
        model="demo",
        stream=True,
        cache_size=0,
        stream_options={"cooldown_s": 600},
    )
    try:
        with pytest.raises(InputTooLarge):
            guard.stream("The weather is nice today. " * 1500).open()
        before = [_verdicts(url) for url in served_replicas]
        _normal_sessions(guard)
        after = [_verdicts(url) for url in served_replicas]
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    finally:
        guard.close()


def test_a_replica_that_is_down_is_still_passed_over(replicas):
    """Control: a replica's own fault (nothing listens there) still cools it down; every session goes to the
    replica that answers, and the caller never sees the dead one."""
    live, app = replicas[0]
    dead = "http://127.0.0.1:9/v1"
    guard = Guard.remote(
        [dead, live + "/v1"], model="demo", stream=True, cache_size=0, stream_options={"cooldown_s": 600}
    )
    try:
        before = app.sessions
        _normal_sessions(guard)
        assert app.sessions - before == NORMAL_SESSIONS
    finally:
        guard.close()


# -- 2: the server counts a 1009 close as /v1/moderate counts its 413 -------------------------------------------------
def _work_size(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    found = re.search(r'^qwenguard_rejected_total\{reason="work_size"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _session(url: str, *frames: dict[str, Any] | str) -> tuple[list[dict[str, Any]], int]:
    with connect(ws_url(url), open_timeout=10, max_size=None) as conn:
        for frame in frames:
            conn.send(frame if isinstance(frame, str) else json.dumps(frame))
        return frames_until_close(conn, timeout=TIMEOUT)


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([{"type": "open", "prompt": TOO_LONG}], id="prompt-past-max-chars"),
        pytest.param(
            [{"type": "open", "messages": [{"role": "user", "content": TOO_LONG}]}], id="messages-past-max-chars"
        ),
        pytest.param(
            [{"type": "open", "prompt": PROMPT}, {"type": "feed", "text": TOO_LONG}], id="feed-past-max-chars"
        ),
        pytest.param(
            [{"type": "open", "prompt": PROMPT}, {"type": "feed", "text": "b" * MAX_BODY_BYTES}],
            id="frame-past-max-body-bytes",
        ),
        pytest.param([{"type": "open", "prompt": FORGED}], id="prompt-past-the-window-bound"),
    ],
)
def test_a_stream_closed_1009_is_counted_as_work_size(replicas, frames):
    url = replicas[0][0]
    before = _work_size(url)
    got, code = _session(url, *frames)
    assert code == 1009 and got[-1]["error"]["type"] == "request_too_large", got
    assert _work_size(url) - before == 1


def test_moderate_and_a_normal_stream_count_as_before(replicas):
    """Controls: /v1/moderate's 413 is counted once, as it was; a session that ends normally is not counted."""
    url = replicas[0][0]
    before = _work_size(url)
    reply = httpx.post(
        url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": TOO_LONG}]]}, timeout=TIMEOUT
    )
    assert reply.status_code == 413, reply.text
    assert _work_size(url) - before == 1
    got, code = _session(url, {"type": "open", "prompt": PROMPT}, {"type": "feed", "text": ANSWER}, {"type": "finish"})
    assert code == 1000, got
    assert _work_size(url) - before == 1
