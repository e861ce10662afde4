"""rt53a F1, F2, F9: who else hears the real model's run.

F1: handlers attached to the wrapped model itself (``ChatOpenAI(callbacks=[...])``, the classic streaming-to-the-UI
pattern; ``model.with_config(callbacks=[...])``; ``model.with_listeners(on_end=...)``) heard every raw token of an
answer the guard blocked, and the blocked answer whole at the run's end: LangChain adds a model's own handlers to
each of its runs, the one out of sight too. They are moved to the wrapper's run now, and hear what the guard let
through.

F2 / F9: handlers a configure hook adds (``collect_runs()``, ``get_usage_metadata_callback()``, a tracer registered
with ``register_configure_hook``) were added to the real model's run too: a run collector recorded the blocked answer,
a third-party tracer heard each raw token, and the usage counter counted every guarded call twice.

Real ChatOpenAI against the scripted OpenAI server; the oracle judge flags "Mix ammonium" (tests/stream_judges.py).
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.documents import Document
from langchain_core.tools import tool
from langchain_core.tracers.context import collect_runs, register_configure_hook
from langchain_core.tracers.schemas import Run
from lc_fakes import INJECTION, store_of
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
from qwenguard.integrations.langchain import GuardedChatModel, GuardedRetriever, GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from stream_judges import CountingJudge


# -- F1: handlers on the wrapped model ------------------------------------------------------------------------
def test_streaming_handler_on_the_wrapped_model_hears_only_released_chunks(url: str, judge_guard: Guard) -> None:
    ui = Recorder()
    model = chat(url, streaming=True, callbacks=[ui])
    released = drain(GuardedChatModel(model, judge_guard).stream(QUESTION))
    assert heard_only_safe(released)
    assert heard_only_safe(ui.tokens)  # before: the whole clause, token by token
    assert ui.tokens == released  # it hears the wrapper's run: what the guard let through, as it was released
    assert ui.ends == []  # the run ended in the stop, with no answer


def test_streaming_handler_on_the_wrapped_model_async(url: str, judge_guard: Guard) -> None:
    ui = Recorder()
    model = chat(url, streaming=True, callbacks=[ui])

    async def run() -> str:
        released = ""
        try:
            async for chunk in GuardedChatModel(model, judge_guard).astream(QUESTION):
                released += chunk.text
        except GuardViolation:
            pass
        return released

    released = asyncio.run(run())
    assert heard_only_safe(ui.tokens)
    assert ui.tokens == released


def test_handler_bound_with_config_hears_no_blocked_answer(url: str, judge_guard: Guard) -> None:
    ui = Recorder()
    model = chat(url, streaming=True).with_config(callbacks=[ui])
    with pytest.raises(GuardViolation):
        GuardedChatModel(model, judge_guard).invoke(QUESTION)
    assert heard_only_safe(ui.tokens)
    assert all(heard_only_safe(end) for end in ui.ends)


def test_listener_on_the_wrapped_model_sees_the_wrappers_run(url: str, judge_guard: Guard) -> None:
    ended: list[Run] = []
    model = chat(url).with_listeners(on_end=ended.append)
    with pytest.raises(GuardViolation):
        GuardedChatModel(model, judge_guard).invoke(QUESTION)
    text = "".join(str(run.outputs) + str(run.error) for run in ended)
    assert "Mix" not in text and "ammonium" not in text  # before: the whole blocked answer in run.outputs
    # A safe answer still reaches the listener, once, at the wrapper's run's end.
    ended.clear()
    with scripted_openai([Reply.words(SAFE.strip())]) as safe_url:
        answer = GuardedChatModel(chat(safe_url).with_listeners(on_end=ended.append), judge_guard).invoke(QUESTION)
    assert answer.text == SAFE.strip()
    assert len(ended) == 1
    assert SAFE.strip() in str(ended[0].outputs)


def test_handler_on_an_agents_model_hears_only_released_chunks(url: str, judge_guard: Guard) -> None:
    ui = Recorder()
    agent = create_agent(chat(url, streaming=True, callbacks=[ui]), [], middleware=[GuardMiddleware(judge_guard)])
    consumer = ""
    for message, _ in agent.stream({"messages": [{"role": "user", "content": QUESTION}]}, stream_mode="messages"):
        if message.type == "AIMessageChunk":
            consumer += message.text
    assert heard_only_safe(consumer)
    assert heard_only_safe(ui.tokens)  # before: every raw token of the blocked answer
    assert ui.tokens == consumer


def test_wrappers_own_callbacks_and_the_models_both_hear(url: str, judge_guard: Guard) -> None:
    mine, models = Recorder(), Recorder()
    with scripted_openai([Reply.words(SAFE.strip())]) as safe_url:
        guarded = GuardedChatModel(chat(safe_url, callbacks=[models]), judge_guard, callbacks=[mine])
        assert "".join(c.text for c in guarded.stream(QUESTION)) == SAFE.strip()
    assert mine.tokens == models.tokens == SAFE.strip()


# -- F2 / F9: configure hooks ---------------------------------------------------------------------------------
def runs_text(runs: list[Run]) -> str:
    return "".join(str(run.outputs) + str(run.events) for run in runs)


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_run_collector_records_only_the_wrappers_run(url: str, judge_guard: Guard, mode: str) -> None:
    guarded = GuardedChatModel(chat(url), judge_guard)
    with collect_runs() as collector:
        if mode == "invoke":
            with pytest.raises(GuardViolation):
                guarded.invoke(QUESTION)
        else:
            drain(guarded.stream(QUESTION))
    recorded = runs_text(collector.traced_runs)
    assert "Mix" not in recorded and "ammonium" not in recorded  # before: the ChatOpenAI run, the clause in it
    assert [run.name for run in collector.traced_runs] == ["GuardedChatModel"]


_TRACER: ContextVar[BaseCallbackHandler | None] = ContextVar("rt53a_third_party_tracer", default=None)
register_configure_hook(_TRACER, inheritable=True)


def test_configure_hook_tracer_hears_only_released_chunks(url: str, judge_guard: Guard) -> None:
    tracer = Recorder()
    token = _TRACER.set(tracer)
    try:
        released = drain(GuardedChatModel(chat(url), judge_guard).stream(QUESTION))
    finally:
        _TRACER.reset(token)
    assert heard_only_safe(tracer.tokens)  # before: every raw token, twice over (the real run and the wrapper's)
    assert tracer.tokens == released


def test_configure_hook_tracer_on_a_streamed_agent(url: str, judge_guard: Guard) -> None:
    tracer = Recorder()
    agent = create_agent(chat(url), [], middleware=[GuardMiddleware(judge_guard)])
    token = _TRACER.set(tracer)
    try:
        list(agent.stream({"messages": [{"role": "user", "content": QUESTION}]}, stream_mode="messages"))
    finally:
        _TRACER.reset(token)
    assert heard_only_safe(tracer.tokens)


def test_usage_is_counted_once(judge_guard: Guard) -> None:
    with scripted_openai([Reply.words("Paris is the capital of France.")]) as safe_url:
        with get_usage_metadata_callback() as bare:
            chat(safe_url, stream_usage=True).invoke("hi")
        once = bare.usage_metadata["m"]["total_tokens"]
        assert once > 0
        runs = {
            "invoke": lambda: GuardedChatModel(chat(safe_url, stream_usage=True), judge_guard).invoke("hi"),
            "stream": lambda: list(GuardedChatModel(chat(safe_url, stream_usage=True), judge_guard).stream("hi")),
            "agent": lambda: create_agent(
                chat(safe_url, stream_usage=True), [], middleware=[GuardMiddleware(judge_guard)]
            ).invoke({"messages": [{"role": "user", "content": "hi"}]}),
        }
        for name, run in runs.items():
            with get_usage_metadata_callback() as counter:
                run()
            assert counter.usage_metadata["m"]["total_tokens"] == once, name  # before: twice


def test_run_collector_misses_the_dropped_document(guard: Guard) -> None:
    store = store_of(
        [Document("Paris is the capital of France."), Document(INJECTION), Document("The Eiffel Tower is in Paris.")]
    )
    with collect_runs() as collector:
        kept = GuardedRetriever.wrap(store.as_retriever(search_kwargs={"k": 3}), guard).invoke(QUESTION)
    assert all(INJECTION not in d.page_content for d in kept) and kept
    assert "Ignore all" not in runs_text(collector.traced_runs)


@tool
def fetch(q: str) -> str:
    """Fetch a page."""
    return INJECTION


def test_run_collector_misses_the_withheld_tool_result(guard: Guard) -> None:
    script = [Reply.words("", tool_calls=[ToolCall("fetch", '{"q": "x"}')]), Reply.words("Done.")]
    with scripted_openai(script) as tool_url:
        agent = create_agent(chat(tool_url), [fetch], middleware=[GuardMiddleware(guard)])
        with collect_runs() as collector:
            out = agent.invoke({"messages": [{"role": "user", "content": "fetch it"}]})
    assert "Ignore all" not in repr(out)
    assert "Ignore all" not in runs_text(collector.traced_runs)


# -- F2 (agent.invoke): an answer nobody streamed is judged before the model call's run ends ----------------------
@pytest.mark.parametrize("asynchronous", [False, True])
def test_agent_invoke_blocked_answer_reaches_no_handler(url: str, judge_guard: Guard, asynchronous: bool) -> None:
    caller, models = Recorder(), Recorder()
    agent = create_agent(chat(url, callbacks=[models]), [], middleware=[GuardMiddleware(judge_guard)])
    given = {"messages": [{"role": "user", "content": QUESTION}]}
    config: Any = {"callbacks": [caller]}
    with collect_runs() as collector:
        out = asyncio.run(agent.ainvoke(given, config)) if asynchronous else agent.invoke(given, config)
    assert "blocked by the safety guard" in out["messages"][-1].text
    assert all("Mix" not in m.text and "ammonium" not in m.text for m in out["messages"])
    # Before: the model call's run ended with the whole answer (judged only after it), and every handler on it
    # (the caller's, the model's own, the run collector) had it in on_llm_end.
    for heard in (caller, models):
        assert heard.tokens == "" and all("Mix" not in end and "ammonium" not in end for end in heard.ends)
    recorded = runs_text(collector.traced_runs)
    assert "Mix" not in recorded and "ammonium" not in recorded


def test_agent_invoke_blocked_answer_with_error_raises(url: str, judge_guard: Guard) -> None:
    caller = Recorder()
    agent = create_agent(chat(url), [], middleware=[GuardMiddleware(judge_guard, exit_behavior="error")])
    with pytest.raises(GuardViolation):
        agent.invoke({"messages": [{"role": "user", "content": QUESTION}]}, {"callbacks": [caller]})
    assert all("ammonium" not in end for end in caller.ends)


def test_agent_invoke_safe_answer_judged_once() -> None:
    judge = CountingJudge()
    guard = Guard(judge)
    with scripted_openai([Reply.words(SAFE.strip())]) as safe_url:
        agent = create_agent(chat(safe_url), [], middleware=[GuardMiddleware(guard)])
        out = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]})
    assert out["messages"][-1].text == SAFE.strip()
    assert judge.answer_checks == 1  # in the held call: not judged again after it


@pytest.mark.parametrize(
    "shape",
    ["with_retry", "with_fallbacks", "configurable_fields", "bind_then_with_config", "nested_guards"],
)
def test_handler_on_a_model_inside_other_wrappers_hears_only_released_chunks(
    url: str, judge_guard: Guard, shape: str
) -> None:
    from langchain_core.runnables import ConfigurableField

    ui = Recorder()
    base = chat(url, streaming=True, callbacks=[ui])
    model: Any = {
        "with_retry": lambda: base.with_retry(stop_after_attempt=1),
        "with_fallbacks": lambda: chat(url, streaming=True).with_fallbacks([base]).with_config(callbacks=[ui]),
        "configurable_fields": lambda: base.configurable_fields(temperature=ConfigurableField(id="temperature")),
        "bind_then_with_config": lambda: chat(url, streaming=True).bind(temperature=0).with_config(callbacks=[ui]),
        "nested_guards": lambda: GuardedChatModel(base, judge_guard),
    }[shape]()
    released = drain(GuardedChatModel(model, judge_guard).stream(QUESTION))
    assert heard_only_safe(ui.tokens)
    assert ui.tokens == released
