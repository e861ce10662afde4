"""rt52c F5: a CodeActAgent over `GuardedLLM` wrapping an LLM without tool calling works as over the bare LLM.

`GuardedLLM` is a `FunctionCallingLLM` whatever it wraps, and CodeActAgent asks any such LLM for the tool calls of
every answer (``get_tool_calls_from_response(..., error_on_no_tool_call=False)``); the wrapper raised a TypeError
for a wrapped local model (a `CustomLLM`: LlamaCPP, a HuggingFace model), so every step failed after the model had
answered. Real CodeActAgent, a real `CustomLLM` (tests/llamaindex/li_scripted.py), the demo guard."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio

import pytest
from li_scripted import ScriptedLLM, words
from llama_index.core.agent.workflow import CodeActAgent
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, TextBlock, ToolCallBlock
from qwenguard.integrations.llamaindex import GuardedLLM

ANSWER = "Paris is the capital of France."


def run(llm) -> str:
    ran: list[str] = []

    def execute(code: str) -> dict:
        ran.append(code)
        return {"output": "ok"}

    agent = CodeActAgent(code_execute_fn=execute, llm=llm, tools=[])

    async def go() -> str:
        return str(await agent.run(user_msg="What is the capital of France?"))

    answer = asyncio.run(asyncio.wait_for(go(), 60))
    assert not ran
    return answer


def test_a_codeact_agent_over_a_guarded_plain_llm_answers_as_over_the_bare_one(patient_guard):
    bare = run(ScriptedLLM(chunks=words(ANSWER)))
    guarded = run(GuardedLLM(llm=ScriptedLLM(chunks=words(ANSWER)), guard=patient_guard))
    assert guarded == bare
    assert ANSWER in guarded


def test_the_tool_calls_of_a_plain_llm_are_its_tool_call_blocks(guard):
    llm = GuardedLLM(llm=ScriptedLLM(chunks=words(ANSWER)), guard=guard)
    plain = ChatResponse(message=ChatMessage(role="assistant", content=ANSWER))
    assert llm.get_tool_calls_from_response(plain, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="at least one tool call"):
        llm.get_tool_calls_from_response(plain)  # as LlamaIndex's own classes say it
    blocks = [
        TextBlock(text="Let me look."),
        ToolCallBlock(tool_call_id="c1", tool_name="weather", tool_kwargs={"city": "Paris"}),
        ToolCallBlock(tool_call_id="c2", tool_name="clock", tool_kwargs='{"zone": "CET"'),  # text, cut short
    ]
    calls = llm.get_tool_calls_from_response(ChatResponse(message=ChatMessage(role="assistant", blocks=blocks)))
    assert [(c.tool_id, c.tool_name, c.tool_kwargs) for c in calls] == [
        ("c1", "weather", {"city": "Paris"}),
        ("c2", "clock", {"zone": "CET"}),
    ]
