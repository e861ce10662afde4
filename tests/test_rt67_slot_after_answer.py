"""A client one request at a time on one kept-alive connection is never refused for its own last request.

Found by CI (38d744a, ``test_present_clients_get_whole_answers_on_one_connection``): with ``max_concurrency=1``
a ``/v1/moderate`` sent right after a streamed chat answer got 503 "server busy". uvicorn serves a
connection's next request as soon as the last response is complete, while that request's task still winds
down (a streamed answer's teardown takes a few turns of the event loop); the gate gave the slot back only
when the task ended. Under load (three busy processes beside the test) 44 of 200 such pairs got 503.

Here the wind-down is made long and certain: the response class's call, once the answer is out, waits for the
test to have the next request's answer (at most `LINGER_S`). Before the fix the next request found the slot
(``max_concurrency=1``: 503) or its client's turn (``max_requests_per_client=1``: it waited out the linger)
still taken."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from faults import ScriptedBackend
from qwenguard.core import Guard
from starlette.responses import Response, StreamingResponse
from stream_judges import _answer
from test_server_hostile import guarded

#: How long an answered request's task may wind down: far longer than serving a request.
LINGER_S = 5.0

FIRST = {
    "stream": {"model": "guard", "stream": True, "messages": [{"role": "user", "content": "The capital of Italy?"}]},
    "chat": {"model": "guard", "messages": [{"role": "user", "content": "The capital of Spain?"}]},
}
NEXT = {"conversations": [[{"role": "user", "content": "Hi"}]]}


def lingering(monkeypatch: pytest.MonkeyPatch, cls: type[Response], answered: threading.Event) -> list[bool]:
    """``cls``'s call winds down after its answer is out until ``answered`` (or `LINGER_S`); per call, whether
    ``answered`` came (``False``: the linger ran out)."""
    original = cls.__call__
    outcomes: list[bool] = []

    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        await original(self, scope, receive, send)
        if scope.get("path") != "/v1/chat/completions":
            return
        ends = time.monotonic() + LINGER_S
        while not answered.is_set() and time.monotonic() < ends:
            await asyncio.sleep(0.01)
        outcomes.append(answered.is_set())

    monkeypatch.setattr(cls, "__call__", call)
    return outcomes


@pytest.mark.parametrize("first", ["stream", "chat"])
@pytest.mark.parametrize("limit", ["max_concurrency", "max_requests_per_client"])
def test_next_request_on_the_connection_is_served_while_the_last_winds_down(
    monkeypatch: pytest.MonkeyPatch, first: str, limit: str
) -> None:
    answered = threading.Event()
    outcomes = lingering(monkeypatch, StreamingResponse if first == "stream" else Response, answered)
    with guarded(Guard(ScriptedBackend(_answer)), model_name="guard", **{limit: 1}) as base:
        with httpx.Client(timeout=20) as client:
            reply = client.post(base + "/v1/chat/completions", json=FIRST[first])
            following = client.post(base + "/v1/moderate", json=NEXT)
            answered.set()
            again = client.post(base + "/v1/moderate", json=NEXT)
    assert reply.status_code == 200
    assert following.status_code == 200, following.text
    assert following.json()["results"][0]["risk"] == "safe"
    assert outcomes == [True], "the next request waited for the last one's task to end"
    assert again.status_code == 200
