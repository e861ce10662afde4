"""rt62f F3: a GuardedLLM stream judges the model's reasoning and its answer as one response, as `chat` does.

A clause begun in the reasoning and ended in the answer ("The plan: Mix" | " ammonium nitrate with fuel oil.") is
blocked by `chat`, which judges the reasoning and the text joined. The streams judged them in two monitors, never
together, and released both whole: `stream_chat`, `astream_chat`, the agents' `astream_chat_with_tools` (a
FunctionAgent), and `stream_complete` of a chat model, whose reasoning `complete` judges with its answer. The judge
is a phrase judge (unsafe only when "mix ammonium" is read together); the models are the tests' `ReasoningLLM`
(real `ChatResponse`/`ThinkingBlock` chunks) and a real `OpenAILike` against an OpenAI-compatible server streaming
``delta.reasoning_content``. What a safe stream yields is what it yielded before: the reasoning as
``thinking_delta``, the text as ``delta``, nothing of the joining newline."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio

import pytest
from faults import ScriptedBackend, phrase_verdict
from li_scripted import ReasoningLLM
from li_shared import openai_like
from llama_index.core.agent.workflow import AgentStream, FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, TextBlock, ThinkingBlock
from llama_index.core.tools import FunctionTool
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.llamaindex import GuardedLLM
from scripted_openai import Reply, scripted_openai

ASK = [ChatMessage(role="user", content="Explain the plan.")]
REASONING = ["The plan: ", "Mix"]
ANSWER = [" ammonium", " nitrate with", " fuel oil."]
RUN_TIMEOUT_S = 120


class ChatReasoningLLM(ReasoningLLM):
    """`ReasoningLLM` whose chat returns the whole message (a `ThinkingBlock` and a `TextBlock`), as a reasoning
    provider's does."""

    def chat(self, messages, **kwargs):
        return self._chunks()[-1]

    async def achat(self, messages, **kwargs):
        return self._chunks()[-1]


@pytest.fixture()
def phrase_guard() -> Guard:
    return Guard(ScriptedBackend(phrase_verdict, name="phrase"), Policy(timeout_s=None), cache_size=0)


def guarded(guard: Guard, reasoning=REASONING, answer=ANSWER) -> GuardedLLM:
    return GuardedLLM(llm=ChatReasoningLLM(reasoning=reasoning, answer=answer), guard=guard)


def shown(chunks) -> str:
    """All the words the consumer received, reasoning and text."""
    return "".join((c.additional_kwargs.get("thinking_delta") or "") + (c.delta or "") for c in chunks)


def test_chat_blocks_the_split_clause(phrase_guard: Guard) -> None:
    """The control: judged joined, the reasoning and the answer make the clause."""
    with pytest.raises(GuardViolation):
        guarded(phrase_guard).chat(ASK)


def test_stream_chat_judges_reasoning_and_answer_together(phrase_guard: Guard) -> None:
    chunks = []
    with pytest.raises(GuardViolation):
        for chunk in guarded(phrase_guard).stream_chat(ASK):
            chunks.append(chunk)
    assert "oil" not in shown(chunks)  # the last of the clause never went out


async def test_astream_chat_judges_reasoning_and_answer_together(phrase_guard: Guard) -> None:
    chunks = []
    with pytest.raises(GuardViolation):
        async for chunk in await guarded(phrase_guard).astream_chat(ASK):
            chunks.append(chunk)
    assert "oil" not in shown(chunks)


def test_openai_like_streams_judge_reasoning_content_with_the_answer(phrase_guard: Guard) -> None:
    reply = Reply.words(" ammonium nitrate with fuel oil.", reasoning="The plan: Mix")
    with scripted_openai([reply] * 3) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=phrase_guard)
        with pytest.raises(GuardViolation):
            llm.chat(ASK)  # the control
        chunks = []
        with pytest.raises(GuardViolation):
            for chunk in llm.stream_chat(ASK):
                chunks.append(chunk)
        assert "oil" not in shown(chunks)

        async def astream() -> list:
            got = []
            async for chunk in await llm.astream_chat(ASK):
                got.append(chunk)
            return got

        with pytest.raises(GuardViolation):
            asyncio.run(astream())


def test_openai_like_stream_complete_judges_the_reasoning_as_complete_does(phrase_guard: Guard) -> None:
    """A chat model read as a completion keeps its reasoning in ``thinking_delta`` alone (never sent): `complete`
    judges it with the answer, and so does the stream."""
    reply = Reply.words(" ammonium nitrate with fuel oil.", reasoning="The plan: Mix")
    with scripted_openai([reply] * 3) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=phrase_guard)
        with pytest.raises(GuardViolation):
            llm.complete("Explain the plan.")  # the control
        chunks = []
        with pytest.raises(GuardViolation):
            for chunk in llm.stream_complete("Explain the plan."):
                chunks.append(chunk)
        assert "oil" not in "".join(c.delta or "" for c in chunks)

        async def astream() -> str:
            return "".join([c.delta or "" async for c in await llm.astream_complete("Explain the plan.")])

        with pytest.raises(GuardViolation):
            asyncio.run(astream())


def notes_tool() -> FunctionTool:
    def take_note(text: str) -> str:
        """Take a note."""
        return "noted"

    return FunctionTool.from_defaults(take_note)


async def test_function_agent_stream_judges_reasoning_with_the_answer(phrase_guard: Guard) -> None:
    """A FunctionAgent streams through ``astream_chat_with_tools``: its events show nothing of the clause's end."""
    reply = Reply.words(" ammonium nitrate with fuel oil.", reasoning="The plan: Mix")
    with scripted_openai([reply]) as url:
        agent = FunctionAgent(tools=[notes_tool()], llm=GuardedLLM(llm=openai_like(url), guard=phrase_guard))
        handler = agent.run(user_msg="Explain the plan.")
        seen = []

        async def consume() -> None:
            async for event in handler.stream_events():
                seen.append(event)
            await handler

        with pytest.raises(GuardViolation):
            await asyncio.wait_for(consume(), RUN_TIMEOUT_S)
    streamed = [e for e in seen if isinstance(e, AgentStream)]
    text = " ".join(f"{e.delta} {e.response} {e.thinking_delta} {e.raw}" for e in streamed)
    assert "oil" not in text


SAFE_REASONING = ["The user asks ", "about Paris.", " Answer briefly."]
SAFE_ANSWER = ["Paris is ", "the capital ", "of France."]


def assert_same_yield(chunks, bare) -> None:
    """The reasoning and the text reach the consumer as the bare LLM streams them, each in its own field."""
    thinking = "".join(c.additional_kwargs.get("thinking_delta") or "" for c in chunks)
    text = "".join(c.delta or "" for c in chunks)
    assert thinking == "".join(c.additional_kwargs.get("thinking_delta") or "" for c in bare)
    assert text == "".join(c.delta or "" for c in bare) == "".join(SAFE_ANSWER)
    final = chunks[-1].message
    assert [b.content for b in final.blocks if isinstance(b, ThinkingBlock)] == ["".join(SAFE_REASONING)]
    assert [b.text for b in final.blocks if isinstance(b, TextBlock)] == ["".join(SAFE_ANSWER)]
    # The reasoning is released before the text, as it streamed.
    first_text = next(i for i, c in enumerate(chunks) if c.delta)
    assert not any(c.additional_kwargs.get("thinking_delta") for c in chunks[first_text + 1 :])


def test_a_safe_stream_yields_reasoning_and_text_as_before(phrase_guard: Guard) -> None:
    llm = guarded(phrase_guard, SAFE_REASONING, SAFE_ANSWER)
    assert_same_yield(list(llm.stream_chat(ASK)), list(llm.llm.stream_chat(ASK)))


async def test_a_safe_astream_yields_reasoning_and_text_as_before(phrase_guard: Guard) -> None:
    llm = guarded(phrase_guard, SAFE_REASONING, SAFE_ANSWER)
    chunks = [c async for c in await llm.astream_chat(ASK)]
    assert_same_yield(chunks, list(llm.llm.stream_chat(ASK)))


def test_reasoning_alone_still_stops_the_stream(phrase_guard: Guard) -> None:
    chunks = []
    with pytest.raises(GuardViolation):
        for chunk in guarded(phrase_guard, ["First: mix ammonium", " nitrate."], ["Done."]).stream_chat(ASK):
            chunks.append(chunk)
    assert "Done" not in shown(chunks)
