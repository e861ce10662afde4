"""rt67d F2: provider-aware middleware sees the guarded model's provider, not the guard's wrapper.

`HeldBackChatModel` (the model `GuardMiddleware` runs) and `GuardedChatModel` reported ``ls_provider`` as their class
name (``_get_ls_params`` not forwarded). ``ProviderToolSearchMiddleware`` listed after the guard (the order the docs
recommend for other middleware) refused every model call ("requires a provider with server-side tool search, but got
'heldbackchatmodel'"), and a ``SummarizationMiddleware`` given the docs' guarded summarizer never matched the
provider's reported token count, so its ``("tokens", N)`` trigger never fired. Both wrappers now report the wrapped
model's parameters.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ProviderToolSearchMiddleware, SummarizationMiddleware
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, ScriptedChatModel, keyword_guard, mailer
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware

MODES = ["sync", "async"]
SUMMARY = "The user asked about Paris."


class OpenAIShaped(ScriptedChatModel):
    """A scripted model that reports itself as OpenAI's (as ``ChatOpenAI`` does) and records the tools it was bound,
    and whose answers report the provider's token usage (``reported`` total tokens)."""

    bound: list[list[Any]] = []
    reported: int = 0

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o", "ls_model_type": "chat"}

    def bind_tools(self, tools: Any, **kwargs: Any) -> "OpenAIShaped":
        self.bound.append(list(tools))
        return self

    def _chunks(self, messages: list[BaseMessage]) -> Iterator[ChatGenerationChunk]:
        yield from super()._chunks(messages)
        if self.reported:
            usage = {"input_tokens": self.reported - 100, "output_tokens": 100, "total_tokens": self.reported}
            meta = {"model_provider": "openai"}
            yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage, response_metadata=meta))


def openai_shaped(*replies: Any, reported: int = 0) -> OpenAIShaped:
    return OpenAIShaped(messages=iter(replies), seen=[], bound=[], reported=reported)


def _run(agent: Any, inputs: Any, mode: str, config: Any = None) -> dict[str, Any]:
    if mode == "sync":
        return agent.invoke(inputs, config)
    return asyncio.run(agent.ainvoke(inputs, config))


@pytest.mark.parametrize("mode", MODES)
def test_tool_search_listed_after_the_guard_defers_the_tools_it_is_given(mode: str) -> None:
    guard, _ = keyword_guard()
    send_email, sent = mailer()
    model = openai_shaped(SAFE_ANSWER)
    search = ProviderToolSearchMiddleware(searchable_tools=[send_email])
    agent = create_agent(model, [send_email], middleware=[GuardMiddleware(guard), search])
    result = _run(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, mode)
    assert result["messages"][-1].text == SAFE_ANSWER
    tools = model.bound[-1]
    assert {"type": "tool_search"} in tools  # OpenAI's server-side search, bound to the real model
    assert [t.extras for t in tools if getattr(t, "name", None) == "send_email"] == [{"defer_loading": True}]
    assert sent == []


@pytest.mark.parametrize("mode", MODES)
def test_a_guarded_summarizer_fires_on_the_providers_reported_tokens(mode: str) -> None:
    """The docs' guarded summarizer (``SummarizationMiddleware(GuardedChatModel(model, guard))``) with a trigger on
    reported tokens: the thread's answer reported 5,000 tokens, so its next turn is summarized first."""
    guard, _ = keyword_guard()
    agent_model = openai_shaped("Paris is the capital of France, on the Seine.", SAFE_ANSWER, reported=5000)
    summarizer = openai_shaped(SUMMARY)
    summarize = SummarizationMiddleware(
        GuardedChatModel(summarizer, guard), trigger=("tokens", 4000), keep=("messages", 1)
    )
    agent = create_agent(agent_model, [], middleware=[GuardMiddleware(guard), summarize], checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t"}}
    _run(agent, {"messages": [HumanMessage("Tell me about Paris.")]}, mode, thread)
    result = _run(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, mode, thread)
    assert result["messages"][-1].text == SAFE_ANSWER
    assert len(summarizer.seen) == 1  # the summarizer ran, once
    read = repr(agent_model.seen[-1])
    assert SUMMARY in read and "on the Seine" not in read  # the turn's model read the summary, not the history
