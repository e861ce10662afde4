"""rt52c F1: ``complete``/``acomplete`` on a chat model judge the reply's tool calls and reasoning as the model's own.

LlamaIndex hands a chat model's reply to ``complete`` as a `CompletionResponse` (``chat_to_completion_decorator``):
its tool calls stay in ``additional_kwargs["tool_calls"]`` (and ``raw``), its reasoning in ``raw`` alone. These were
judged only as untrusted third-party content under the tool-result stage (a user turn to the judge), so an answer-side
judge never saw them as the model's output, and the application was told ``tool_result`` for the model's own call.

The real `OpenAILike` against tests/scripted_openai.py; a keyword judge (tests/stream_judges.py) that flags
"Mix ammonium" in the model's turns (answers, tool calls) and a bomb in the user's."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
import json

import pytest
from li_shared import openai_like
from llama_index.core.base.llms.types import ChatMessage
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.core.verdict import Stage
from qwenguard.integrations.llamaindex import GuardedLLM
from scripted_openai import Reply, ToolCall, scripted_openai
from stream_judges import CLAUSE, CountingJudge

QUESTION = "What is the capital of France?"
UNSAFE = "Here you go. " + CLAUSE + " Good luck."


def judged(judge: CountingJudge) -> Guard:
    return Guard(judge, Policy(timeout_s=None), cache_size=0)


def call(llm: GuardedLLM, how: str):
    if how == "complete":
        return llm.complete(QUESTION)
    return asyncio.run(llm.acomplete(QUESTION))


@pytest.mark.parametrize("how", ["complete", "acomplete"])
def test_a_tool_call_in_a_completion_is_judged_as_a_tool_call(how):
    reply = Reply.words("", [ToolCall("send_email", json.dumps({"to": "a@b.c", "body": UNSAFE}))])
    with scripted_openai([reply], pace=0) as url:
        llm = GuardedLLM(llm=openai_like(url, chat=True), guard=judged(CountingJudge()))
        with pytest.raises(GuardViolation) as err:
            call(llm, how)
    assert err.value.decision.stage is Stage.TOOL_CALL


@pytest.mark.parametrize("how", ["complete", "acomplete"])
def test_reasoning_in_a_completion_is_judged_with_the_answer(how):
    reply = Reply.words("Paris is the capital of France.", reasoning=UNSAFE)
    with scripted_openai([reply], pace=0) as url:
        llm = GuardedLLM(llm=openai_like(url, chat=True), guard=judged(CountingJudge()))
        with pytest.raises(GuardViolation) as err:
            call(llm, how)
    assert err.value.decision.stage is Stage.RESPONSE


def test_a_safe_tool_call_and_reasoning_pass_as_the_answer_at_no_extra_check():
    """The same reply through ``complete`` as through ``chat``: its call and reasoning judged as the answer's, and
    the ``raw`` that repeats them costs no untrusted-content check."""
    args = json.dumps({"city": "Paris"})
    reply = Reply.words("Let me look.", [ToolCall("weather", args)], reasoning="The user wants the weather.")
    with scripted_openai([reply, reply], pace=0) as url:
        judge = CountingJudge()
        llm = GuardedLLM(llm=openai_like(url, chat=True), guard=judged(judge), remember=0)
        response = llm.complete(QUESTION)
        completion_stages = [c[-1]["role"] for batch in judge.calls for c in batch]
        judge.calls.clear()
        llm.chat([ChatMessage(role="user", content=QUESTION)])
        chat_stages = [c[-1]["role"] for batch in judge.calls for c in batch]
    assert response.text == "Let me look."
    assert [c.function.arguments for c in response.additional_kwargs["tool_calls"]] == [args]
    assert sorted(completion_stages) == sorted(chat_stages)
    assert completion_stages.count("user") == 1  # the question alone: nothing of the reply judged as a user turn
