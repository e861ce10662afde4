"""rt62c F1-F3: under `GuardCallbackHandler`, one blocked input stops only what its own failure discards.

- F2: an agent's ``batch`` run from a chain step (one input blocked, ``return_exceptions=True``) refused the tools
  of the other inputs with the blocked one's stop: their prompts were judged safe, their results delivered. The
  block was kept for the whole outer call (its root run).
- F3: a model input blocked inside a tool (a research tool summarising a fetched page), its failure written as the
  tool's message by ``ToolRetryMiddleware(on_failure="continue")``: every later tool call of the agent run was
  refused with that old stop.
- F1: a chat model's ``batch`` inside a chain step: the inputs after a blocked one were refused unasked (the stop
  was kept for the parent run, shared by every item; a batch item is no retry).

Kept: a branch of a call that raised reaches no tool after it (here an ``abatch`` that raised, and a gather a step
caught: their orphaned branches go on), and the same request asked again in the same place gets the same stop.
`ChatOpenAI` against the scripted server, real ``create_agent``, a phrase judge; sync and async handlers.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from faults import ScriptedBackend, phrase_verdict
from langchain.agents import create_agent
from langchain.agents.middleware import ToolRetryMiddleware
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from lc_fakes import UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler
from scripted_openai import Reply, ToolCall, scripted_openai

GUARD = Guard(ScriptedBackend(phrase_verdict, name="phrase"), cache_size=0)
MODES = ["sync", "async"]
BAD = {"messages": [{"role": "user", "content": f"How do I do this: {UNSAFE_CLAUSE}"}]}
PARIS = {"messages": [{"role": "user", "content": "Tell me about Paris."}]}
OSLO = {"messages": [{"role": "user", "content": "Tell me about Oslo."}]}


def _handler(mode: str) -> Any:
    return AsyncGuardCallbackHandler(GUARD) if mode == "async" else GuardCallbackHandler(GUARD)


def _chat(url: str, mode: str) -> ChatOpenAI:
    extra: dict[str, Any] = {"http_async_client": httpx.AsyncClient()} if mode == "async" else {}
    return ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0, **extra)


def _lookup_tool(ran: list[str]) -> Any:
    @tool
    def lookup(city: str) -> str:
        """Look a city up."""
        ran.append(city)
        return f"{city} is a city."

    return lookup


def _looks_up(city: str) -> Reply:
    return Reply(tool_calls=[ToolCall("lookup", json.dumps({"city": city}))])


def _batch_step(runnable: Any, mode: str, **options: Any) -> RunnableLambda:
    """A chain step that fans its inputs out over ``runnable`` (the usual map step of a chain or a graph node)."""
    if mode == "async":

        async def astep(inputs: list[Any], config: Any) -> list[Any]:
            return await runnable.abatch(inputs, {**config, **options.get("config", {})}, **options.get("kw", {}))

        return RunnableLambda(astep)
    return RunnableLambda(
        lambda inputs, config: runnable.batch(inputs, {**config, **options.get("config", {})}, **options.get("kw", {}))
    )


def _run(step: Any, inputs: Any, mode: str) -> Any:
    config = {"callbacks": [_handler(mode)]}
    if mode == "async":
        return asyncio.run(step.ainvoke(inputs, config))
    return step.invoke(inputs, config)


# -- F2 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_blocked_input_in_an_agent_batch_leaves_the_other_inputs_tools_running(mode: str) -> None:
    """The attack's victim: two users' safe questions batched with a blocked one in a chain step; each safe agent
    looks its city up and answers; the blocked one gets its stop."""
    ran: list[str] = []
    # One input at a time (the scripted server answers in request order); the blocked input asks nothing.
    script = [_looks_up("Paris"), Reply.words("Done."), _looks_up("Oslo"), Reply.words("Done.")]
    with scripted_openai(script) as url:
        agent = create_agent(_chat(url, mode), [_lookup_tool(ran)])
        step = _batch_step(agent, mode, config={"max_concurrency": 1}, kw={"return_exceptions": True})
        out = _run(step, [BAD, PARIS, OSLO], mode)
    assert isinstance(out[0], GuardViolation) and out[0].decision.stage is Stage.PROMPT
    assert [o["messages"][-1].content for o in out[1:]] == ["Done.", "Done."]
    assert ran == ["Paris", "Oslo"]  # before: [] and three GuardViolations


def test_an_orphaned_item_of_an_abatch_that_raised_reaches_no_tool() -> None:
    """Kept: ``abatch`` without ``return_exceptions`` raises at the block while the other items go on (a gather
    cancels nothing); their results are discarded with the call, and their tools are refused."""
    ran: list[str] = []

    async def scenario() -> None:
        # The safe items' models answer after the call raised; they ask for tools then.
        with scripted_openai([_looks_up("Paris"), _looks_up("Oslo")], first_delay=0.3) as url:
            agent = create_agent(_chat(url, "async"), [_lookup_tool(ran)])
            step = _batch_step(agent, "async")
            with pytest.raises(GuardViolation):
                await step.ainvoke([PARIS, BAD, OSLO], {"callbacks": [_handler("async")]})
            await _others_done()
            assert len(url.requests) == 2  # both safe items asked their model, after the call had raised

    asyncio.run(scenario())
    assert ran == []


async def _others_done() -> None:
    """Wait until every other task of this loop (the orphaned branches) has finished."""
    me = asyncio.current_task()
    while others := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
        await asyncio.wait(others)


def test_a_branch_a_step_orphaned_by_catching_the_block_reaches_no_tool() -> None:
    """Kept: a step gathers the model and a slower branch on the same input and catches the stop; the branch goes on
    after the step ended, and its tool, whose result nobody reads, is refused."""
    ran: list[str] = []

    async def scenario() -> str:
        async def prepare(question: str) -> dict[str, str]:
            await asyncio.sleep(0.3)  # a lookup first: the step has caught the block by now
            return {"city": question[-12:]}

        with scripted_openai("unused") as url:
            chat = _chat(url, "async")
            branch = RunnableLambda(prepare) | _lookup_tool(ran)

            async def step(question: str) -> str:
                try:
                    await asyncio.gather(chat.ainvoke(question), branch.ainvoke(question))
                except GuardViolation:
                    return "Refused."
                return "Answered."

            answer = await RunnableLambda(step).ainvoke(
                BAD["messages"][0]["content"], {"callbacks": [_handler("async")]}
            )
            await _others_done()
            assert url.requests == []
            return answer

    assert asyncio.run(scenario()) == "Refused."
    assert ran == []


# -- F3 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_tool_failure_written_as_its_message_does_not_refuse_the_later_tools(mode: str) -> None:
    """The research tool's helper model reads a fetched page holding the clause: blocked, and the middleware writes
    the failure as the tool's message, as the docs describe. The next step's lookup is judged on its own, and runs."""
    ran: list[str] = []
    script = [
        Reply(tool_calls=[ToolCall("research", json.dumps({"topic": "fertiliser storage"}))]),
        _looks_up("Paris"),
        Reply.words("Paris is the capital of France."),
    ]
    with scripted_openai(script) as url:
        chat = _chat(url, mode)

        @tool
        def research(topic: str) -> str:
            """Research a topic with a helper model."""
            page = f"Forum post: {UNSAFE_CLAUSE}"  # a fetched page
            return str(chat.invoke([("system", "Summarise."), ("user", f"{topic}: {page}")]).content)

        @tool
        async def aresearch(topic: str) -> str:
            """Research a topic with a helper model."""
            page = f"Forum post: {UNSAFE_CLAUSE}"
            return str((await chat.ainvoke([("system", "Summarise."), ("user", f"{topic}: {page}")])).content)

        aresearch.name = "research"
        tools = [aresearch if mode == "async" else research, _lookup_tool(ran)]
        agent = create_agent(chat, tools, middleware=[ToolRetryMiddleware(max_retries=0, on_failure="continue")])
        result = _run(agent, PARIS, mode)
        assert len(url.requests) == 3  # the helper model was never asked
    messages = [m for m in result["messages"] if m.type == "tool"]
    assert "GuardViolation" in str(messages[0].content)  # the research failure, written as its message
    assert messages[1].content == "Paris is a city."  # before: refused with the research's prompt stop
    assert ran == ["Paris"] and result["messages"][-1].content == "Paris is the capital of France."


# -- F1 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_chat_models_batch_in_a_step_asks_the_inputs_after_a_blocked_one(mode: str) -> None:
    """The docs: a chat model's ``batch`` stops only the blocked input. Inside a chain step it refused every input
    after it unasked (the third here)."""
    script = [Reply.words("Paris is in France."), Reply.words("Rome is in Italy.")]
    with scripted_openai(script) as url:
        step = _batch_step(_chat(url, mode), mode, config={"max_concurrency": 1}, kw={"return_exceptions": True})
        out = _run(step, ["Where is Paris?", f"Explain: {UNSAFE_CLAUSE}", "Where is Rome?"], mode)
        assert len(url.requests) == 2  # the blocked input was not sent; the third was
    assert isinstance(out[0], AIMessage) and out[0].content == "Paris is in France."
    assert isinstance(out[1], GuardViolation) and out[1].decision.stage is Stage.PROMPT
    assert isinstance(out[2], AIMessage) and out[2].content == "Rome is in Italy."


@pytest.mark.parametrize("mode", MODES)
def test_the_same_request_asked_again_in_a_step_gets_the_same_stop(mode: str) -> None:
    """Kept: a fallback of one's own in a step (the stopped answer's request asked again) is refused unasked, while
    another question in the same step is asked."""
    unsafe_answer = Reply.words(f"Sure. {UNSAFE_CLAUSE}")
    with scripted_openai([unsafe_answer, Reply.words("Rome is in Italy.")]) as url:
        chat = _chat(url, mode)

        def step(question: str) -> list[str]:
            answers = []
            for asked in (question, question, "Where is Rome?"):
                try:
                    answers.append(str(chat.invoke(asked).content))
                except GuardViolation:
                    answers.append("[stopped]")
            return answers

        async def astep(question: str) -> list[str]:
            answers = []
            for asked in (question, question, "Where is Rome?"):
                try:
                    answers.append(str((await chat.ainvoke(asked)).content))
                except GuardViolation:
                    answers.append("[stopped]")
            return answers

        out = _run(RunnableLambda(astep if mode == "async" else step), "How do I store fertiliser?", mode)
        assert len(url.requests) == 2  # the repeat was refused before the provider was asked
    assert out == ["[stopped]", "[stopped]", "Rome is in Italy."]
