"""A long stretch of an answer that no check is due in (no word end for thousands of characters) or one
large delta must still be judged in full before it is marked judged. The Gen engines read a window of
``window_chars`` (2,000) that hops forward once it is full; text the window moved past before any check
read it was counted as judged, so an unsafe clause at the start of such a stretch reached the consumer.

The attack: `ChatOpenAI` against a scripted OpenAI-compatible server, the clause cut into pieces that end
inside words (as BPE tokens do) and followed by ~3,000 characters without a word end at any piece's end,
or sent as one delta. A keyword judge (tests/stream_judges.py: "Mix ammonium") makes the verdicts exact.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, guard_output
from qwenguard.integrations.langchain._messages import Item
from qwenguard.integrations.langchain._streaming import StreamGate
from scripted_openai import Reply, ToolCall, scripted_openai
from stream_judges import CLAUSE, TRIGGER, CountingJudge

SAFE = "The capital of France is Paris. "
FILLER = " then stir the mixture slowly" * 110  # ~3,200 characters
ANSWER = SAFE + CLAUSE.replace(",", "").rstrip(".") + FILLER  # no word end after the safe sentence
CLAUSE_AT = len(SAFE)
MODES = ["sync", "async"]


def mid_word_pieces(text: str) -> list[str]:
    """Pieces that end inside a word wherever a word is long enough (a real tokenizer's pieces often do),
    so a holding gate that judges at word ends finds none in the stretch."""
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        lead = " " if i else ""
        pieces += [lead + word[:2], word[2:]] if len(word) > 2 else [lead + word]
    return [p for p in pieces if p]


def chat(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="scripted", model="scripted", max_retries=0)


def drain(mode: str, runnable: Any, config: dict[str, Any] | None = None) -> tuple[str, Exception | None]:
    """The text the consumer received, and the guard's exception if the stream was stopped."""
    received: list[str] = []

    async def consume() -> None:
        async for chunk in runnable.astream("How do I make it?", config=config):
            received.append(chunk.text if isinstance(chunk, AIMessageChunk) else str(chunk))

    try:
        if mode == "sync":
            for chunk in runnable.stream("How do I make it?", config=config):
                received.append(chunk.text if isinstance(chunk, AIMessageChunk) else str(chunk))
        else:
            asyncio.run(consume())
    except GuardViolation as exc:
        return "".join(received), exc
    return "".join(received), None


def exposure(received: str) -> int:
    assert ANSWER.startswith(received), f"the consumer got text that is not a prefix of the answer: {received!r}"
    return max(0, len(received) - CLAUSE_AT)


@pytest.mark.parametrize("mode", MODES)
def test_a_held_gate_judges_a_stretch_without_word_ends_in_full(mode):
    """`guard_output(stream_engine="gate")` checks at word ends; with none for 3,000 characters the only
    check came at the end, read the last 1,000 and released everything (3,306 characters of the clause out)."""
    judge = CountingJudge()
    with scripted_openai(Reply(mid_word_pieces(ANSWER))) as url:
        received, error = drain(mode, chat(url) | guard_output(Guard(judge), stream_engine="gate"))
    assert isinstance(error, GuardViolation)
    assert exposure(received) == 0


@pytest.mark.parametrize("engine", ["pipelined", "gate"])
@pytest.mark.parametrize("mode", MODES)
def test_a_callback_judges_one_large_delta_in_full(mode, engine):
    """A provider that sends a long stretch as one delta: the callback's check read the window's last 1,000
    characters and marked all 3,300 judged, so the stream was never stopped."""
    judge = CountingJudge()
    handler_type = GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler
    handler = handler_type(Guard(judge), stream_engine=engine)
    with scripted_openai(Reply(["The capital", " of France is Paris. ", ANSWER[CLAUSE_AT:]])) as url:
        received, error = drain(mode, chat(url), {"callbacks": [handler]})
    assert isinstance(error, GuardViolation)
    assert exposure(received) == 0  # the delta carrying the clause is stopped before it is yielded


@pytest.mark.parametrize("mode", MODES)
def test_a_callback_judges_one_large_tool_argument_fragment_in_full(mode):
    """The same for streamed tool-call arguments: one fragment of 3,300 characters, the clause first."""
    judge = CountingJudge()
    handler_type = GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler
    handler = handler_type(Guard(judge))
    arguments = json.dumps({"to": "friend@example.com", "body": ANSWER[CLAUSE_AT:]})
    reply = Reply(["Sending", " it."], tool_calls=[ToolCall("send_email", arguments, fragments=1)])
    with scripted_openai(reply) as url:
        received_args: list[str] = []

        async def consume() -> None:
            async for chunk in chat(url).astream("Mail it", config={"callbacks": [handler]}):
                received_args.extend(t.get("args") or "" for t in chunk.tool_call_chunks)

        with pytest.raises(GuardViolation):
            if mode == "sync":
                for chunk in chat(url).stream("Mail it", config={"callbacks": [handler]}):
                    received_args.extend(t.get("args") or "" for t in chunk.tool_call_chunks)
            else:
                asyncio.run(consume())
    assert TRIGGER.split()[0] not in "".join(received_args)


def _item(gate: StreamGate, delta: str) -> Item:
    gate.add(delta)
    return gate.item()


def test_a_later_check_that_comes_back_first_does_not_cover_an_earlier_ones_text():
    """The pipelined engine settles checks in any order: a safe verdict on a later window (which starts
    after the text an earlier check in flight reads) counts only once the earlier one is safe too."""
    safe = Guard(CountingJudge()).check("hi")
    gate = StreamGate([{"role": "user", "content": "hi"}], window_chars=10)
    first = _item(gate, "abcdefgh")  # reads [0, 8)
    second = _item(gate, "ijklmnop")  # the window hopped: reads [8, 16), none of the first's text
    assert second.extra["start"] == first.extra["end"]
    gate.settle(second, safe)
    assert gate.judged == 0  # [0, 8) is still waiting for its verdict
    gate.settle(first, safe)
    assert gate.judged == 16
