"""rt57f (left open): a structured call over a completion-only LLM is judged by role, as over a chat model.

LlamaIndex's text program (``structured_predict`` and its twins over an LLM with ``is_chat_model=False``) prints a
chat template's messages into one prompt (``messages_to_prompt``). The guard judged that prompt whole as the user's
text: an agent's ``output_cls`` call (the conversation printed into one user message) read as a forged conversation
(the demo guard: Jailbreak), and an answer of the conversation was judged as the user's words. Now its messages are
judged by role, as the chat path judges them. The demo guard, the repo's scripted completion LLM.
"""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
from typing import Any

import pytest
from li_scripted import ScriptedLLM
from llama_index.core.agent.utils import messages_to_xml_format
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import ChatPromptTemplate
from pydantic import BaseModel
from qwenguard.core import Decision, Guard, GuardViolation, Policy, Stage
from qwenguard.integrations.llamaindex import GuardedLLM

CLAUSE = "Mix ammonium nitrate with fuel oil and pack it into a pipe."
QUESTION = "Tell me about Paris."
SAFE = '{"text": "Paris is the capital of France."}'


class Answer(BaseModel):
    """The answer."""

    text: str


def _guarded(guard: Guard, decisions: list[Decision]) -> GuardedLLM:
    g = Guard(guard.backend, Policy(timeout_s=None), cache_size=0)
    g.on_decision(decisions.append)
    return GuardedLLM(llm=ScriptedLLM(chunks=[SAFE]), guard=g)


def _structured(llm: GuardedLLM, messages: list[ChatMessage], how: str) -> Any:
    template = ChatPromptTemplate(message_templates=messages)
    if how == "structured_predict":
        return llm.structured_predict(Answer, template)
    if how == "astructured_predict":
        return asyncio.run(llm.astructured_predict(Answer, template))
    if how == "stream_structured_predict":
        return list(llm.stream_structured_predict(Answer, template))[-1]

    async def streamed() -> Any:
        return [item async for item in await llm.astream_structured_predict(Answer, template)][-1]

    return asyncio.run(streamed())


HOW = ["structured_predict", "astructured_predict", "stream_structured_predict", "astream_structured_predict"]


@pytest.mark.parametrize("how", HOW)
def test_an_agents_printed_conversation_over_a_completion_llm_gets_its_answer(guard: Guard, how: str) -> None:
    # An agent's ``output_cls`` call: the conversation printed into one user message (``messages_to_xml_format``).
    decisions: list[Decision] = []
    history = [
        ChatMessage(role="user", content=QUESTION),
        ChatMessage(role="assistant", content="Paris is the capital of France."),
        ChatMessage(role="user", content="Thanks."),
    ]
    answer = _structured(_guarded(guard, decisions), messages_to_xml_format(history), how)
    assert answer.text == "Paris is the capital of France."
    assert not [d for d in decisions if d.blocked]


@pytest.mark.parametrize("how", HOW)
def test_an_answer_of_the_conversation_is_judged_as_the_answer_it_was(guard: Guard, how: str) -> None:
    # A chat template's assistant turn (a context engine's history): judged under the response stage, as over a chat
    # model, not as the user's words.
    decisions: list[Decision] = []
    history = [
        ChatMessage(role="user", content=QUESTION),
        ChatMessage(role="assistant", content=CLAUSE),
        ChatMessage(role="user", content="Thanks."),
    ]
    with pytest.raises(GuardViolation) as info:
        _structured(_guarded(guard, decisions), history, how)
    assert info.value.decision.stage is Stage.RESPONSE
