"""rt52d F2: `GuardedChatModel` called directly passes the caller's config on to the model it wraps.

The held model built the inner call's config from the ambient config only, which ``BaseChatModel.invoke`` /
``stream`` never set (only a chain step does): ``guarded.invoke(x, config={"configurable": ...})`` and
``with_config(configurable=...)`` ran the inner model with its defaults (a configurable model name, temperature,
alternative), silently. Real ChatOpenAI against the scripted OpenAI server (the request says which model was asked),
langchain-core's configurable fake, the demo guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField
from langchain_openai import ChatOpenAI
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel
from scripted_openai import scripted_openai

CONFIG: Any = {"configurable": {"model": "configured-model"}}


async def _astream(runnable: Any, value: Any, config: Any = None) -> list[Any]:
    return [chunk async for chunk in runnable.astream(value, config)]


CALLS: dict[str, Callable[[Any, Any], Any]] = {
    "invoke": lambda runnable, value: runnable.invoke(value, CONFIG),
    "ainvoke": lambda runnable, value: asyncio.run(runnable.ainvoke(value, CONFIG)),
    "stream": lambda runnable, value: list(runnable.stream(value, CONFIG)),
    "astream": lambda runnable, value: asyncio.run(_astream(runnable, value, CONFIG)),
    "batch": lambda runnable, value: runnable.batch([value], CONFIG),
    "with_config.invoke": lambda runnable, value: runnable.with_config(CONFIG).invoke(value),
    "with_config.stream": lambda runnable, value: list(runnable.with_config(CONFIG).stream(value)),
}


def _configurable(url: str) -> Any:
    llm = ChatOpenAI(base_url=url, api_key="x", model="default-model", max_retries=0)
    return llm.configurable_fields(model_name=ConfigurableField(id="model"))


@pytest.mark.parametrize("mode", sorted(CALLS))
def test_the_callers_configurable_reaches_the_wrapped_model(guard, mode):
    """The user's action: one guarded model, the model name chosen per request."""
    with scripted_openai(SAFE_ANSWER) as url:
        guarded = GuardedChatModel(_configurable(url), guard)
        CALLS[mode](guarded, "What is the capital of France?")
        assert [r.body["model"] for r in url.requests] == ["configured-model"]


def test_in_a_chain_too(guard):
    with scripted_openai(SAFE_ANSWER) as url:
        chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | GuardedChatModel(_configurable(url), guard)
        chain.invoke({"q": "What is the capital of France?"}, CONFIG)
        assert [r.body["model"] for r in url.requests] == ["configured-model"]


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_the_configured_models_answer_is_still_judged(guard, mode):
    model = FakeListChatModel(responses=[SAFE_ANSWER]).configurable_fields(responses=ConfigurableField(id="responses"))
    config: Any = {"configurable": {"responses": [UNSAFE_CLAUSE]}}
    guarded = GuardedChatModel(model, guard)
    with pytest.raises(GuardViolation):
        if mode == "invoke":
            guarded.invoke("Tell me.", config)
        else:
            list(guarded.stream("Tell me.", config))


@pytest.mark.parametrize("mode", ["stream", "astream"])
@pytest.mark.parametrize("answer", [SAFE_ANSWER, UNSAFE_CLAUSE])
def test_a_model_that_does_not_stream_streams_through_the_guard(guard, mode, answer):
    """A wrapped model whose ``stream`` yields its whole answer as one message (``disable_streaming=True``, or the
    configured ChatOpenAI above): the guarded stream failed on it (a message where a chunk was expected)."""
    with scripted_openai(answer) as url:
        llm = ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0, disable_streaming=True)
        guarded = GuardedChatModel(llm, guard)
        ask = "What is the capital of France?"
        if answer == UNSAFE_CLAUSE:
            with pytest.raises(GuardViolation):
                list(guarded.stream(ask)) if mode == "stream" else asyncio.run(_astream(guarded, ask))
            return
        chunks = list(guarded.stream(ask)) if mode == "stream" else asyncio.run(_astream(guarded, ask))
        assert "".join(c.text for c in chunks) == SAFE_ANSWER
