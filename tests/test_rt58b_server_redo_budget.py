"""rt58b F3: `qwenguard serve --max-windows-per-request` bounds "the request's windows in all", but a conversation whose
answer with its context was no verdict is judged once more on its turns alone (`Service._without_context`), and that
second backend call ran after the request's bound was reset: planned with no bound at all (7 + 7 windows under a cap of
8). The model's answer is broken by a fault injected into the demo backend (a hostile context does it to the real
model); the windows each backend call plans are counted where the backend plans them."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from qwenguard.core import Guard
from qwenguard.core.errors import VerdictParseError
from qwenguard.core.server.app import create_app

ANSWER = " ".join(f"Sentence {i} about the weather in Paris and the museums there." for i in range(150))
BODY = {"conversations": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": ANSWER}]]}


@pytest.fixture(scope="module")
def counted():
    """The demo guard whose answers with context are no verdict, and the windows each backend call planned."""
    guard = Guard.from_pretrained("demo", cache_size=0)
    backend = guard.backend
    planned: list[int] = []
    plan = backend._plan

    def counting_plan(*args: Any) -> Any:
        flat, spans = plan(*args)
        planned.append(len(flat))
        return flat, spans

    classify = backend.aclassify

    async def context_breaks(conversations, *, timeout=None):
        out = await classify(conversations, timeout=timeout)
        return [
            VerdictParseError("no Safety line") if len(c) > 1 and c[0]["content"].strip() else o
            for c, o in zip(conversations, out)
        ]

    backend._plan = counting_plan
    backend.aclassify = context_breaks
    yield guard, planned
    guard.close()


def _post(guard: Guard, cap: int) -> httpx.Response:
    app = create_app(guard, max_windows_per_request=cap)

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post("/v1/moderate", json=BODY)

    return asyncio.run(post())


def test_the_turns_judged_alone_count_against_the_requests_windows(counted):
    guard, planned = counted
    planned.clear()
    reply = _post(guard, 8)
    assert sum(planned) <= 8, planned
    assert reply.status_code == 413, reply.text  # refused, never the first answers left to a fail-open policy


def test_within_the_bound_the_turns_are_still_judged_alone(counted):
    guard, planned = counted
    planned.clear()
    reply = _post(guard, 64)
    assert reply.status_code == 200, reply.text
    assert len(planned) == 2 and sum(planned) <= 64, planned  # the first call, then the turns alone
