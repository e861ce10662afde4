"""A held model's raw stream reaches none of the caller's callbacks, however the model is wrapped.

`GuardedChatModel` and the middleware run the real model with no callbacks, so that handlers, tracers and
``astream_events`` see the judged stream only. A bound model (``bind_tools``, ``with_structured_output``,
``bind``, ``with_retry``) merged the caller's handlers back in from the ambient run config, and they got every
raw token and tool-call argument before the verdict. Real `ChatOpenAI` against the scripted server; a keyword
judge (tests/stream_judges.py: "Mix ammonium").
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from stream_judges import CLAUSE, CountingJudge

REPLY = f"The capital of France is Paris. {CLAUSE} Then wait."
MODES = ["sync", "async"]
#: The model runs as a step of a chain, as in an app: the chain's run config is the ambient one.
PROMPT = ChatPromptTemplate.from_messages([("user", "{question}")])
QUESTION = {"question": "Tell me about Paris"}


class Answer(BaseModel):
    """The answer."""

    text: str


@tool
def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    return "sent"


def chat(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="scripted", model="scripted", max_retries=0)


class Tokens(BaseCallbackHandler):
    """A UI or tracer handler: every token any run reports."""

    def __init__(self) -> None:
        self.text = ""

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.text += token


WRAPS = {
    "bind_tools": lambda m, g: GuardedChatModel(m, g).bind_tools([send_email]),
    "with_structured_output": lambda m, g: GuardedChatModel(m, g).with_structured_output(Answer),
    "bind": lambda m, g: GuardedChatModel(m.bind(temperature=0), g),
    "with_retry": lambda m, g: GuardedChatModel(m.with_retry(stop_after_attempt=1), g),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wrap", [k for k in WRAPS if k != "with_structured_output"])
def test_a_callers_handler_never_sees_the_raw_stream_of_a_bound_model(wrap, mode):
    handler = Tokens()
    with scripted_openai(REPLY) as url:
        chain = PROMPT | WRAPS[wrap](chat(url), Guard(CountingJudge()))
        config = {"callbacks": [handler]}

        async def drain() -> None:
            async for _ in chain.astream(QUESTION, config=config):
                pass

        with pytest.raises(GuardViolation):
            if mode == "sync":
                for _ in chain.stream(QUESTION, config=config):
                    pass
            else:
                asyncio.run(drain())
    assert "ammonium" not in handler.text and "Mix" not in handler.text, handler.text


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_astream_events_show_no_raw_text_of_a_bound_model(wrap):
    """``astream_events`` v2 (v1 alike): the inner ChatOpenAI run's ``on_chat_model_stream`` events carried
    the clause before the stop."""
    reply = (
        Reply.words(REPLY)
        if wrap != "with_structured_output"
        else Reply(tool_calls=[ToolCall("dict", f'{{"text": "{CLAUSE}"}}')])
    )
    seen: list[str] = []
    with scripted_openai(reply) as url:
        chain = PROMPT | WRAPS[wrap](chat(url), Guard(CountingJudge()))

        async def events() -> None:
            async for event in chain.astream_events(QUESTION, version="v2"):
                chunk = event["data"].get("chunk")
                if chunk is not None:
                    seen.append(str(getattr(chunk, "content", "")) + str(getattr(chunk, "tool_call_chunks", "")))

        with pytest.raises(GuardViolation):
            asyncio.run(events())
    assert not any("ammonium" in s for s in seen), seen


def test_an_agents_tool_arguments_reach_no_event_before_the_verdict():
    email = ToolCall("send_email", f'{{"to": "a@b.c", "body": "{CLAUSE}"}}', fragments=6)
    seen: list[str] = []
    with scripted_openai([Reply(tool_calls=[email]), Reply.words("Done.")]) as url:
        agent = create_agent(chat(url), [send_email], middleware=[GuardMiddleware(Guard(CountingJudge()))])

        async def events() -> None:
            async for event in agent.astream_events(
                {"messages": [{"role": "user", "content": "Mail it"}]}, version="v2"
            ):
                chunk = event["data"].get("chunk")
                if chunk is not None and hasattr(chunk, "tool_call_chunks"):
                    seen.extend(t.get("args") or "" for t in chunk.tool_call_chunks)

        asyncio.run(events())
    assert "ammonium" not in "".join(seen), seen


def test_a_held_model_in_a_chain_still_takes_the_callers_configurable_fields():
    """Out of sight of the caller's handlers, not of its configuration."""
    with scripted_openai("The capital of France is Paris.") as url:
        configurable = chat(url).configurable_fields(model_name=ConfigurableField(id="model"))
        chain = PROMPT | GuardedChatModel(configurable.bind(temperature=0), Guard(CountingJudge()))
        chain.invoke(QUESTION, config={"configurable": {"model": "chosen"}})
        assert url.requests[-1].body["model"] == "chosen"
