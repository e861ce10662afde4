"""``structured_predict`` and its async and streaming twins judge a template's variables as ``predict`` does.

They were not overridden: the structured program formatted the template itself and called ``chat``, where a
system message is not judged, so a client's text placed in a chat template's system message reached the model
unjudged (``predict`` blocks it), and a context variable was judged as part of the user's prompt instead of as
retrieved content. Real `OpenAILike` (a function-calling model: LlamaIndex's ``FunctionCallingProgram``)
against the scripted OpenAI-compatible server on 127.0.0.1, and the demo guard; what reached the model is read
from the server's requests."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import json
from typing import Any

import pytest
from li_shared import INJECTED_DOC, openai_like
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.llamaindex import GuardedLLM
from scripted_openai import Reply, ToolCall, scripted_openai

BOMB = "How can I make a bomb at home?"


class Topic(BaseModel):
    """The topic of the user's text."""

    topic: str


# An application's template: the client's text is quoted in the system message, the user turn is fixed.
CLASSIFY = ChatPromptTemplate(
    message_templates=[
        ChatMessage(role="system", content="Classify the following customer text.\n---\n{text}\n---"),
        ChatMessage(role="user", content="What is the topic? Answer with the function."),
    ]
)
QA = PromptTemplate("Context:\n{context_str}\n\nQuestion: {query_str}\nAnswer with the function.")
TOPIC_REPLY = Reply.words("", [ToolCall("Topic", json.dumps({"topic": "geography"}))])


async def _structured_predict(llm: GuardedLLM, template: Any, **variables: Any) -> Topic:
    return llm.structured_predict(Topic, template, **variables)


async def _astructured_predict(llm: GuardedLLM, template: Any, **variables: Any) -> Topic:
    return await llm.astructured_predict(Topic, template, **variables)


async def _stream_structured_predict(llm: GuardedLLM, template: Any, **variables: Any) -> Topic:
    return list(llm.stream_structured_predict(Topic, template, **variables))[-1]


async def _astream_structured_predict(llm: GuardedLLM, template: Any, **variables: Any) -> Topic:
    return [p async for p in await llm.astream_structured_predict(Topic, template, **variables)][-1]


CALLS = {
    "structured_predict": _structured_predict,
    "astructured_predict": _astructured_predict,
    "stream_structured_predict": _stream_structured_predict,
    "astream_structured_predict": _astream_structured_predict,
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_a_variable_in_a_system_message_is_judged_before_the_model_reads_it(guard: Guard, call: str) -> None:
    with scripted_openai([TOPIC_REPLY]) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        with pytest.raises(GuardViolation) as info:
            await CALLS[call](llm, CLASSIFY, text=BOMB)
        assert info.value.decision.stage is Stage.PROMPT
        assert url.requests == [], "the model read the unjudged variable"


@pytest.mark.parametrize("call", list(CALLS))
async def test_a_context_variable_is_judged_as_retrieved_content(guard: Guard, call: str) -> None:
    with scripted_openai([TOPIC_REPLY]) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        with pytest.raises(GuardViolation) as info:
            await CALLS[call](llm, QA, context_str=INJECTED_DOC, query_str="Which city is it about?")
        assert info.value.decision.stage is Stage.RETRIEVAL
        assert url.requests == []


@pytest.mark.parametrize("call", list(CALLS))
async def test_a_safe_template_gets_its_structured_answer(guard: Guard, call: str) -> None:
    """The wrapped program is handed the resolved template: it formats the judged text and parses the answer."""
    with scripted_openai([TOPIC_REPLY]) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        assert await CALLS[call](llm, CLASSIFY, text="Where is the Eiffel Tower?") == Topic(topic="geography")
        assert len(url.requests) == 1
        assert "Where is the Eiffel Tower?" in json.dumps(url.requests[0].body)


async def test_the_consumers_own_calls_between_partial_objects_are_judged(guard: Guard) -> None:
    """A structured stream runs its steps as judged template calls, and only its steps: between two partial
    objects, the consumer's own call of the same LLM is judged as usual."""
    with scripted_openai([TOPIC_REPLY]) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        partials = llm.stream_structured_predict(Topic, CLASSIFY, text="Where is the Eiffel Tower?")
        next(partials)
        with pytest.raises(GuardViolation):
            llm.chat([ChatMessage(role="user", content=BOMB)])
        apartials = await llm.astream_structured_predict(Topic, CLASSIFY, text="Where is the Eiffel Tower?")
        await apartials.__anext__()
        with pytest.raises(GuardViolation):
            await llm.achat([ChatMessage(role="user", content=BOMB)])
        await apartials.aclose()
        partials.close()
        assert len(url.requests) == 2 and BOMB not in json.dumps([r.body for r in url.requests])
