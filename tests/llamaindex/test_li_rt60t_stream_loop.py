"""An async guarded stream never holds the event loop for per-chunk reading that grows with one delta (rt60 leftover,
Fixer T).

`GuardedLLM`'s async streams watched each piece of the answer for escapes a parser decodes (`ReadingHold.watch`, its
scan following the piece literal by literal) on the event loop: one delta of 900,000 characters of quoted prose
(``He said "Paris" and [x].`` over and over: a model's long quoting answer, or a hostile one) held the loop 90-160 ms
against 15-20 ms for the same guarded stream read on a worker thread. Each test is the attack with a loop-lag probe
beside it, compared in the same run with the loop left idle, the same stream unguarded, and the guarded sync stream on
a worker thread (`loop_lag.compare`); then the held-text contract with pieces past the off-loop size: order kept, a
piece watched before the monitor may release any of it.
"""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

from typing import Any

import pytest
from li_scripted import ScriptedLLM
from llama_index.core.base.llms.types import ChatMessage
from loop_lag import compare, in_thread
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations._off_loop import OFF_LOOP_SIZE
from qwenguard.integrations.llamaindex import GuardedLLM
from test_li_rt59a_loop_stalls import RemoteJudge

#: One delta of quoted prose, under the guard's default ``max_chars`` (1,000,000).
QUOTED = ('He said "Paris" and [x]. ' * 40_000)[:900_000]
MESSAGES = [ChatMessage(role="user", content="Tell me about Paris.")]
PROMPT = "Tell me about Paris."


def llm(chunks: list[str], guarded: bool) -> Any:
    inner = ScriptedLLM(chunks=chunks)
    return GuardedLLM(llm=inner, guard=Guard(backend=RemoteJudge())) if guarded else inner


async def adrain(stream: Any) -> list[str]:
    return [item.delta or "" async for item in await stream]


STREAMS = {
    "astream_chat": (lambda llm: adrain(llm.astream_chat(MESSAGES)), lambda llm: list(llm.stream_chat(MESSAGES))),
    "astream_complete": (
        lambda llm: adrain(llm.astream_complete(PROMPT)),
        lambda llm: list(llm.stream_complete(PROMPT)),
    ),
}


@pytest.mark.parametrize("how", list(STREAMS))
async def test_one_huge_delta_of_quoted_prose_is_watched_off_the_loop(how):
    arun, run = STREAMS[how]

    async def guarded() -> None:
        assert "".join(await arun(llm([QUOTED], True))) == QUOTED  # judged safe, handed over whole

    async def unguarded() -> None:
        await arun(llm([QUOTED], False))

    failure = await compare(guarded, unguarded, in_thread(lambda: run(llm([QUOTED], True))))
    assert failure is None, failure


def pieces(text: str) -> list[str]:
    """``text`` in pieces past the off-loop size, and small ones between them."""
    size = OFF_LOOP_SIZE + 5_000
    return [p for i in range(0, len(text), size) for p in (text[i : i + size], " ")]


@pytest.mark.parametrize("how", list(STREAMS))
async def test_pieces_read_off_the_loop_keep_their_order(how):
    text = "".join(f'Line {i}: he said "Paris" [{i}]. ' for i in range(8_000))
    assert len(text) > 8 * OFF_LOOP_SIZE
    assert "".join(await STREAMS[how][0](llm(pieces(text), True))) == "".join(pieces(text))


@pytest.mark.parametrize("how", list(STREAMS))
async def test_an_escape_in_a_long_piece_is_held_and_its_reading_judged(how):
    # A JSON answer whose escapes decode to the unsafe clause, after long quoted padding: the piece is watched (off the
    # loop) before the monitor may release any of it, so nothing from the first escape on goes out, and the reading
    # blocks the answer.
    clause = "".join(f"\\u{ord(c):04x}" if c.isalpha() else c for c in "Mix ammonium nitrate with fuel oil.")
    padding = "".join(f"he said 'Paris' [{i}]. " for i in range(3_000))
    answer = '{"pad": "' + padding + '", "answer": "' + clause + '"}'
    released: list[str] = []

    async def run() -> None:
        stream = llm(pieces(answer), True)
        gen = await (stream.astream_chat(MESSAGES) if how == "astream_chat" else stream.astream_complete(PROMPT))
        async for item in gen:
            released.append(item.delta or "")

    with pytest.raises(GuardViolation):
        await run()
    assert "\\u" not in "".join(released)


def test_the_sync_streams_are_unchanged():
    # The sync twins watch where they run (a worker thread of the caller's): the same text, whole.
    for how in STREAMS:
        assert "".join(item.delta or "" for item in STREAMS[how][1](llm([QUOTED[:60_000]], True))) == QUOTED[:60_000]
