"""rt53e F1, F3, F9: what 73ac0ba's side-channel fix (rt53a) left open.

F1: a model from LangChain's ``init_chat_model(..., configurable_fields=...)`` (its ``_ConfigurableModel``: the real
model is built per call from the keyword arguments it was given and its queued operations) kept its own handlers
(``callbacks=[ui]`` given to ``init_chat_model``, or ``.with_config(callbacks=[ui])`` on it), and so did a
``configurable_alternatives`` alternative the call's config selects (only the default was looked into): the handler
heard the blocked clause token by token (``GuardedChatModel.stream``) or whole in ``on_llm_end`` (``agent.invoke``).

F3: with ``ModelRetryMiddleware`` inside ``GuardMiddleware``, an unstreamed answer judged (and blocked) inside the held
model call was retried: the model ran ``max_retries`` more times, each answer thrown away. One model call now, as
when streamed.

F9: a blocked call's tokens were counted by no ``get_usage_metadata_callback()`` (the real model runs out of its
sight, the wrapper's run ends in the stop): they are told to the usage counters on the wrapper's run, with no text.

Real ChatOpenAI (``init_chat_model(..., model_provider="openai")``) against the scripted OpenAI server; the oracle
judge flags "Mix ammonium" (tests/stream_judges.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRetryMiddleware
from langchain.chat_models import init_chat_model
from langchain_core.callbacks import UsageMetadataCallbackHandler, get_usage_metadata_callback
from langchain_core.runnables import ConfigurableField
from lc_heard import (  # noqa: F401 - clause_judge_guard, scripted_reply_url: the fixtures judge_guard, url
    QUESTION,
    REPLY,
    SAFE,
    Recorder,
    chat,
    clause_judge_guard,
    drain,
    heard_only_safe,
    scripted_reply_url,
)
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware
from scripted_openai import Reply, ScriptedURL, scripted_openai

REFUSAL = "blocked by the safety guard"


def no_clause(texts: list[str]) -> bool:
    return all("Mix" not in t and "ammonium" not in t for t in texts)


def configurable(url: str, **kwargs: Any) -> Any:
    """``init_chat_model`` with a field picked per call: LangChain's ``_ConfigurableModel``."""
    return init_chat_model(
        "m",
        model_provider="openai",
        base_url=url,
        api_key="k",
        max_retries=0,
        configurable_fields=("temperature",),
        **kwargs,
    )


async def adrain(stream: AsyncIterator[Any]) -> str:
    released = ""
    try:
        async for chunk in stream:
            released += chunk.text
    except GuardViolation:
        pass
    return released


# -- F1: init_chat_model(configurable_fields=...) and configurable_alternatives ------------------------------------
@pytest.mark.parametrize("how", ["init_chat_model(callbacks=)", "init_chat_model().with_config(callbacks=)"])
def test_configurable_init_chat_model_handler_hears_only_released_chunks(
    url: ScriptedURL, judge_guard: Guard, how: str
) -> None:
    ui = Recorder()
    if how == "init_chat_model(callbacks=)":
        model = configurable(url, streaming=True, callbacks=[ui])
    else:
        model = configurable(url, streaming=True).with_config(callbacks=[ui])
    assert type(model).__name__ == "_ConfigurableModel"
    released = drain(
        GuardedChatModel(model, judge_guard).stream(QUESTION, config={"configurable": {"temperature": 0.25}})
    )
    assert released == SAFE.strip()
    assert heard_only_safe(ui.tokens)  # before: "...Paris. Mix ammonium nitrate with fuel oil, ..."
    assert ui.tokens == released  # it hears the wrapper's run: what the guard released
    assert url.requests[-1].body.get("temperature") == 0.25  # the configurable field still reaches the model


def test_configurable_init_chat_model_handler_async(url: ScriptedURL, judge_guard: Guard) -> None:
    ui = Recorder()
    model = configurable(url, streaming=True, callbacks=[ui])
    released = asyncio.run(adrain(GuardedChatModel(model, judge_guard).astream(QUESTION)))
    assert heard_only_safe(ui.tokens)
    assert ui.tokens == released == SAFE.strip()


@pytest.mark.parametrize("selected", ["b", "a"])
def test_selected_alternatives_handler_hears_only_released_chunks(
    url: ScriptedURL, judge_guard: Guard, selected: str
) -> None:
    ui_a, ui_b = Recorder(), Recorder()
    model = chat(url, streaming=True, callbacks=[ui_a]).configurable_alternatives(
        ConfigurableField(id="llm"), default_key="a", b=chat(url, streaming=True, callbacks=[ui_b])
    )
    released = drain(GuardedChatModel(model, judge_guard).stream(QUESTION, config={"configurable": {"llm": selected}}))
    assert released == SAFE.strip()
    chosen, other = (ui_b, ui_a) if selected == "b" else (ui_a, ui_b)
    assert heard_only_safe(chosen.tokens)  # before (b selected): the whole clause, token by token
    assert chosen.tokens == released
    assert other.tokens == "" and other.ends == []  # the alternative not selected hears nothing, as before


def test_configurable_model_on_an_agent_hears_no_blocked_answer(url: ScriptedURL, judge_guard: Guard) -> None:
    models, caller = Recorder(), Recorder()
    agent = create_agent(
        configurable(url, callbacks=[models]), [], middleware=[GuardMiddleware(judge_guard, exit_behavior="replace")]
    )
    out = agent.invoke({"messages": [("user", QUESTION)]}, {"callbacks": [caller]})
    assert REFUSAL in out["messages"][-1].text
    # Before: the model's own handler had the blocked answer whole in on_llm_end.
    assert no_clause(models.ends) and no_clause(caller.ends)
    assert heard_only_safe(models.tokens)


def test_configurable_model_handler_still_hears_a_safe_answer(judge_guard: Guard) -> None:
    ui = Recorder()
    with scripted_openai([Reply.words(SAFE.strip())]) as safe_url:
        model = configurable(safe_url, streaming=True).with_config(callbacks=[ui])
        released = drain(GuardedChatModel(model, judge_guard).stream(QUESTION))
        answer = GuardedChatModel(configurable(safe_url, callbacks=[ui]), judge_guard).invoke(QUESTION)
    assert released == answer.text == SAFE.strip()
    assert ui.tokens == SAFE.strip()  # streamed once; the invoke streams nothing
    assert ui.ends == [SAFE.strip(), SAFE.strip()]  # each run's end, once


# -- F3: a retry middleware inside the guard does not re-run a blocked unstreamed answer -------------------------
@pytest.mark.parametrize("asynchronous", [False, True])
def test_retry_inside_the_guard_does_not_rerun_a_blocked_answer(
    url: ScriptedURL, judge_guard: Guard, asynchronous: bool
) -> None:
    agent = create_agent(
        chat(url),
        [],
        middleware=[
            GuardMiddleware(judge_guard, exit_behavior="replace"),
            ModelRetryMiddleware(max_retries=2, initial_delay=0.0),
        ],
    )
    given: Any = {"messages": [("user", QUESTION)]}
    out = asyncio.run(agent.ainvoke(given)) if asynchronous else agent.invoke(given)
    assert REFUSAL in out["messages"][-1].text
    assert no_clause([m.text for m in out["messages"]])
    assert len(url.requests) == 1  # before: 3 (the first answer and one per retry, each thrown away)


class FailsOnce(AgentMiddleware):
    """A model call that fails once (a dropped connection), between the retry and the model."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise ConnectionError("dropped")
        return handler(request)


def test_retry_inside_the_guard_still_retries_a_model_failure(judge_guard: Guard) -> None:
    with scripted_openai([Reply.words(SAFE.strip())]) as safe_url:
        fails = FailsOnce()
        agent = create_agent(
            chat(safe_url),
            [],
            middleware=[GuardMiddleware(judge_guard), ModelRetryMiddleware(max_retries=1, initial_delay=0), fails],
        )
        out = agent.invoke({"messages": [("user", QUESTION)]})
        assert fails.failed and len(safe_url.requests) == 1
    assert out["messages"][-1].text == SAFE.strip()


# -- F9: a blocked call's tokens are counted, once, with no text ---------------------------------------------------
def billed_once() -> int:
    with scripted_openai([Reply.words(REPLY)]) as bare_url, get_usage_metadata_callback() as bare:
        chat(bare_url, stream_usage=True).invoke(QUESTION)
    total = bare.usage_metadata["m"]["total_tokens"]
    assert total > 0
    return total


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "agent.invoke", "agent.ainvoke"])
def test_blocked_call_usage_is_counted_once(url: ScriptedURL, judge_guard: Guard, how: str) -> None:
    once = billed_once()
    caller = Recorder()
    config: Any = {"callbacks": [caller]}
    with get_usage_metadata_callback() as counter:
        if how in ("invoke", "ainvoke"):
            guarded = GuardedChatModel(chat(url, stream_usage=True), judge_guard)
            with pytest.raises(GuardViolation):
                if how == "invoke":
                    guarded.invoke(QUESTION, config)
                else:
                    asyncio.run(guarded.ainvoke(QUESTION, config))
        else:
            agent = create_agent(
                chat(url, stream_usage=True), [], middleware=[GuardMiddleware(judge_guard, exit_behavior="replace")]
            )
            given: Any = {"messages": [("user", QUESTION)]}
            out = agent.invoke(given, config) if how == "agent.invoke" else asyncio.run(agent.ainvoke(given, config))
            assert REFUSAL in out["messages"][-1].text
    assert counter.usage_metadata["m"]["total_tokens"] == once  # before: {} (counted by no one)
    assert no_clause(caller.ends) and caller.tokens == ""  # the blocked text reached no handler


def test_blocked_call_usage_counted_by_a_counter_in_callbacks(url: ScriptedURL, judge_guard: Guard) -> None:
    once = billed_once()
    counter = UsageMetadataCallbackHandler()
    with pytest.raises(GuardViolation):
        GuardedChatModel(chat(url, stream_usage=True), judge_guard).invoke(QUESTION, {"callbacks": [counter]})
    assert counter.usage_metadata["m"]["total_tokens"] == once
