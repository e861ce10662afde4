"""A streamed answer is held to the guard's ``max_chars`` (red team rt55b, F3). A check longer than that is refused
before any work (`InputTooLarge`); a stream was judged window after window without end: one 8M-character delta made
31,498 window checks with ``Guard(max_chars=100_000)``. Now the stream stops with `InputTooLarge` at the bound, and
what it held is never released."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from qwenguard.core import Guard, InputTooLarge, StreamClosed
from stream_judges import CountingJudge

sys.path.insert(0, str(Path(__file__).parent / "langchain"))

SENTENCE = "Paris is the capital of France. "
LIMIT = 20_000


@pytest.fixture
def guard():
    g = Guard(CountingJudge(), max_chars=LIMIT)
    yield g
    g.close()


def test_one_delta_past_the_bound_is_refused_before_any_check(guard):
    with guard.stream("Tell me about Paris.", screen_prompt=False) as monitor:
        with pytest.raises(InputTooLarge, match="max_chars=20,000"):
            monitor.feed(SENTENCE * 1_000)  # 32,000 characters
        assert guard.backend.answer_checks == 0 and monitor.released == ""
        with pytest.raises(StreamClosed):
            monitor.feed(SENTENCE)


def test_a_stream_that_grows_past_the_bound_stops_there_and_releases_nothing_more(guard):
    released = ""
    with guard.stream("Tell me about Paris.", screen_prompt=False) as monitor:
        with pytest.raises(InputTooLarge):
            for _ in range(1_000):
                released += monitor.feed(SENTENCE)
        assert len(monitor.released) <= LIMIT and released == monitor.released
        checks = guard.backend.answer_checks
        with pytest.raises(StreamClosed):
            monitor.finish()
    assert guard.backend.answer_checks == checks  # no window of the rest was judged
    assert checks <= LIMIT // len(SENTENCE) + 2


def test_the_async_monitor_stops_at_the_bound_too(guard):
    async def run() -> str:
        async with guard.astream("Tell me about Paris.", screen_prompt=False) as monitor:
            out = ""
            with pytest.raises(InputTooLarge):
                for _ in range(1_000):
                    out += await monitor.afeed(SENTENCE)
            return out

    out = asyncio.run(run())
    assert len(out) <= LIMIT


def test_an_answer_within_the_bound_streams_whole(guard):
    with guard.stream("Tell me about Paris.", screen_prompt=False) as monitor:
        text = "".join(monitor.feed(SENTENCE) for _ in range(LIMIT // len(SENTENCE))) + monitor.finish()
    assert text == SENTENCE * (LIMIT // len(SENTENCE))


def test_a_langchain_holding_path_ends_the_stream_with_the_error(guard):
    from lc_fakes import scripted
    from qwenguard.integrations.langchain import guard_output

    chain = scripted(SENTENCE * 1_000) | guard_output(guard)
    seen = ""
    with pytest.raises(InputTooLarge):
        for chunk in chain.stream("Tell me about Paris."):
            seen += chunk.text if hasattr(chunk, "text") else str(chunk)
    assert len(seen) <= LIMIT


@pytest.mark.parametrize("engine", ["pipelined", "gate"])
def test_a_callback_handlers_stream_stops_at_the_bound_too(guard, engine):
    """rt55d (after F3): a plain callback cannot hold text, but it stops the stream: the pipelined engine judged a
    32,000-character answer in ~6,000 checks under max_chars=20,000 and let it all through."""
    from langchain_core.messages import AIMessage
    from lc_fakes import ScriptedChatModel
    from qwenguard.integrations.langchain import GuardCallbackHandler

    model = ScriptedChatModel(messages=iter([AIMessage(SENTENCE * 1_000)]))
    seen = ""
    with pytest.raises(InputTooLarge):
        for chunk in model.stream(
            "Tell me about Paris.", config={"callbacks": [GuardCallbackHandler(guard, stream_engine=engine)]}
        ):
            seen += chunk.text
    assert len(seen) <= LIMIT


def test_an_async_callback_handlers_stream_stops_at_the_bound_too(guard):
    from langchain_core.messages import AIMessage
    from lc_fakes import ScriptedChatModel
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler

    async def run() -> str:
        model = ScriptedChatModel(messages=iter([AIMessage(SENTENCE * 1_000)]))
        seen = ""
        config = {"callbacks": [AsyncGuardCallbackHandler(guard)]}
        async for chunk in model.astream("Tell me about Paris.", config=config):
            seen += chunk.text
        return seen

    with pytest.raises(InputTooLarge):
        asyncio.run(run())
