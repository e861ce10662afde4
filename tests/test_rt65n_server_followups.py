"""rt65n, a second look at the server's bounded sends (rt65f).

F1: a ``/v1/stream`` client whose feeds came on time was closed 4408 "no text fed" when the server's own work on a
feed took longer than ``--stream-idle-timeout``: the next feed, kept while the guard worked, was refused as idle,
and the ``finish`` behind it lost. A frame kept counts as it came now. F2: ``/v1/moderate``'s 422 copied a client's
unknown key whole into its ``loc`` (400,000 characters back). F3 (in tests/test_rt65f_nonreaders.py): a stream
session cut off for not reading went uncounted in the metrics.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from faults import ScriptedBackend, keyword_verdict
from qwenguard.core import Guard
from qwenguard.core.backends import transformers_stream
from test_rt65f_nonreaders import live
from websockets.sync.client import connect

IDLE_S = 1.0


@pytest.fixture
def slow_stream_guard(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo Stream model, each scoring step 1.3 idle timeouts long (a busy GPU): the fault injected."""
    real = transformers_stream.StreamSession._adrive

    async def slow(self: Any, plan: Any, timeout: Any) -> Any:
        await asyncio.sleep(1.3 * IDLE_S)
        return await real(self, plan, timeout)

    monkeypatch.setattr(transformers_stream.StreamSession, "_adrive", slow)
    backend = transformers_stream.TransformersStream.load("demo-stream", device="cpu")
    yield Guard(ScriptedBackend(keyword_verdict), stream_backend=backend, cache_size=0)
    backend.close()


def test_feeds_sent_in_time_are_not_idle_while_the_server_works(slow_stream_guard: Guard) -> None:
    with live(slow_stream_guard, stream_idle_timeout_s=IDLE_S, stream_max_session_s=None) as (port, _):
        with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=30) as conn:
            conn.send(json.dumps({"type": "open", "prompt": "Tell me a story."}))
            assert json.loads(conn.recv(timeout=30))["type"] == "opened"
            parts = [f"Part {i}: the river ran down to the sea. " for i in range(3)]
            for part in parts:  # well within the idle limit, one after another
                conn.send(json.dumps({"type": "feed", "text": part}))
            conn.send(json.dumps({"type": "finish"}))
            frames = []
            while not frames or frames[-1]["type"] not in ("finished", "error", "violation"):
                frames.append(json.loads(conn.recv(timeout=60)))
    assert [f["type"] for f in frames] == ["released"] * 3 + ["finished"], frames  # before: released, error 4408
    assert "".join(f["text"] for f in frames) == "".join(parts)


def test_an_unknown_keys_name_is_quoted_briefly_in_a_422() -> None:
    key = "\u0085" * 400_000
    with live() as (port, _):
        body = {"conversations": [[{"role": "user", "content": "hi"}]], key: 1}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/moderate", json=body, timeout=30)
    assert reply.status_code == 422, reply.text
    assert len(reply.content) < 5_000, len(reply.content)  # before: 802,143 bytes
    assert "400,000 characters" in reply.text
