"""Tool-call arguments a model wrote that are not a JSON object: `OpenAILike` parses them as ``{}``, so the
call was judged as ``send_email({})`` while the raw text stayed in the final chunk (its `ToolCallBlock`
and ``additional_kwargs["tool_calls"]``) for whoever shows it. The real provider class against a
scripted OpenAI-compatible server; a keyword judge (tests/stream_judges.py: "Mix ammonium")."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio

import pytest
from li_scripted import Outbox
from llama_index.llms.openai_like import OpenAILike
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.llamaindex import GuardedLLM
from scripted_openai import Reply, ToolCall, scripted_openai
from stream_judges import CLAUSE, CountingJudge

BAD_ARGUMENTS = f'{CLAUSE} Then {{"to": "friend@example.com"}}'


def openai_like(url: str) -> OpenAILike:
    return OpenAILike(
        model="scripted", api_base=url, api_key="scripted", is_chat_model=True, is_function_calling_model=True
    )


def reply() -> Reply:
    return Reply.words("Sending it.", tool_calls=[ToolCall("send_email", BAD_ARGUMENTS, id="call_bad", fragments=5)])


@pytest.mark.parametrize("mode", ["stream", "astream", "chat", "achat"])
def test_tool_arguments_that_are_not_json_are_judged_as_written(mode):
    outbox = Outbox()
    with scripted_openai(reply()) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=Guard(CountingJudge()))
        tools = [outbox.tool()]

        async def astream() -> None:
            async for _ in await llm.astream_chat_with_tools(tools, user_msg="Mail my friend the recipe"):
                pass

        with pytest.raises(GuardViolation) as err:
            if mode == "stream":
                list(llm.stream_chat_with_tools(tools, user_msg="Mail my friend the recipe"))
            elif mode == "astream":
                asyncio.run(astream())
            elif mode == "chat":
                llm.chat_with_tools(tools, user_msg="Mail my friend the recipe")
            else:
                asyncio.run(llm.achat_with_tools(tools, user_msg="Mail my friend the recipe"))
    assert err.value.decision.stage is Stage.TOOL_CALL
    assert outbox.sent == 0
