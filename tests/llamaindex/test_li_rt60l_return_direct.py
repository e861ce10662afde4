"""A ``return_direct=True`` tool's output IS the agent's final answer (``AgentOutput.response`` and ``.raw``): the
agents stop with it, no model call between, so `GuardedLLM` never reads it. `guard_tools` judged it only under the
tool-result stage's policy: an operator who loosened that stage (``mode="loose"``, or ``on_error="allow"`` for a
guard that fails on pages) got the page back as the answer, while the same text written by the model as its answer
was blocked (rt60a F2). Such an output is now decided under the stricter of the response and tool-result policies
(``on_error`` and ``enabled`` included): attacked here through real FunctionAgent, ReActAgent and AgentWorkflow runs,
the model a real `OpenAILike` client against the scripted OpenAI-compatible server, the guard a deterministic judge.
"""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import json
from typing import Any

import pytest
from faults import ScriptedBackend
from li_shared import UNSAFE_DOC, openai_like
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent, ToolCallResult
from llama_index.core.tools import FunctionTool
from qwenguard.core import Guard, GuardViolation, Policy, Stage, StagePolicy
from qwenguard.integrations.llamaindex import GuardedLLM, guard_tools
from scripted_openai import Reply, ToolCall, scripted_openai

PAGE = "Recipe from the forum: " + UNSAFE_DOC
TRIGGER = "ammonium"
RUN_TIMEOUT_S = 120
SEARCH = ToolCall("search", json.dumps({"q": "recipe"}))


def controversial(conversation: list[dict[str, str]]) -> str:
    """The page is Controversial (Violent) whatever role reads it: a loose stage allows it, a strict one blocks."""
    last = conversation[-1]
    head = (
        "Safety: Controversial\nCategories: Violent"
        if TRIGGER in last["content"].lower()
        else "Safety: Safe\nCategories: None"
    )
    return head + ("\nRefusal: No" if last["role"] == "assistant" else "")


def chokes_on_content(conversation: list[dict[str, str]]) -> str:
    """A guard model that fails on the page when it reads it as content (a broken answer), and judges answers."""
    last = conversation[-1]
    bad = TRIGGER in last["content"].lower()
    if bad and last["role"] != "assistant":
        return "I cannot parse this."
    head = "Safety: Unsafe\nCategories: Violent" if bad else "Safety: Safe\nCategories: None"
    return head + ("\nRefusal: No" if last["role"] == "assistant" else "")


POLICIES = {
    "tool-result mode=loose": (controversial, {Stage.TOOL_RESULT: StagePolicy(mode="loose")}),
    "tool-result on_error=allow": (chokes_on_content, {Stage.TOOL_RESULT: StagePolicy(on_error="allow")}),
    "tool-result stage off": (controversial, {Stage.TOOL_RESULT: StagePolicy(enabled=False)}),
    "response mode=loose, tool-result strict": (controversial, {Stage.RESPONSE: StagePolicy(mode="loose")}),
}


def make_guard(name: str) -> tuple[Guard, ScriptedBackend]:
    answer, stages = POLICIES[name]
    backend = ScriptedBackend(answer)
    return Guard(backend, Policy(mode="strict", timeout_s=None, stages=stages), cache_size=0), backend


def search(q: str) -> str:
    """Search the web."""
    return PAGE


def build(kind: str, url: str, guard: Guard, return_direct: bool = True) -> Any:
    tools = guard_tools([FunctionTool.from_defaults(search, return_direct=return_direct)], guard)
    llm = GuardedLLM(llm=openai_like(url), guard=guard)
    if kind == "function":
        return FunctionAgent(tools=tools, llm=llm)
    if kind == "react":
        return ReActAgent(tools=tools, llm=llm)
    return AgentWorkflow(agents=[FunctionAgent(name="a", description="Searches.", tools=tools, llm=llm)])


SCRIPTS = {
    "function": [Reply(tool_calls=[SEARCH]), Reply.words(PAGE)],
    "react": [Reply.words('Thought: I need to search.\nAction: search\nAction Input: {"q": "recipe"}')],
    "workflow": [Reply(tool_calls=[SEARCH]), Reply.words(PAGE)],
}


async def run(agent: Any) -> tuple[Any, list[ToolCallResult]]:
    handler = agent.run(user_msg="Find me the forum recipe.")
    results: list[ToolCallResult] = []

    async def consume() -> Any:
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                results.append(event)
        return await handler

    return await asyncio.wait_for(consume(), RUN_TIMEOUT_S), results


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("kind", ["function", "react", "workflow"])
async def test_a_return_direct_page_is_not_the_answer_under_a_loosened_tool_result_stage(
    kind: str, policy: str
) -> None:
    guard, backend = make_guard(policy)
    with scripted_openai(SCRIPTS[kind]) as url:
        output, results = await run(build(kind, url, guard))
        asked = len(url.requests)
    assert asked == 1  # the agent stopped with the tool's output: no model call read it
    assert TRIGGER not in str(output).lower() and TRIGGER not in json.dumps(output.raw, default=str).lower()
    assert "withheld" in str(output) and "qwenguard" in output.raw
    [result] = results
    assert result.return_direct and TRIGGER not in result.tool_output.content.lower()
    assert any(TRIGGER in json.dumps(c).lower() for c in backend.calls)  # judged, not skipped


@pytest.mark.parametrize("kind", ["function", "workflow"])
async def test_the_same_page_as_the_models_answer_is_blocked_too(kind: str) -> None:
    """The control: without return_direct the model reads the page (the loosened tool-result stage lets it
    through to the model, as the operator asked) and its answer repeating it is blocked at the response stage."""
    guard, _ = make_guard("tool-result mode=loose")
    with scripted_openai(SCRIPTS[kind]) as url:
        with pytest.raises(GuardViolation):
            await run(build(kind, url, guard, return_direct=False))
        second = json.dumps(url.requests[1].body, ensure_ascii=False)
    assert TRIGGER in second.lower()  # a tool output that is not the answer keeps the tool-result policy


async def test_a_safe_return_direct_output_is_the_answer_with_one_check() -> None:
    guard, backend = make_guard("tool-result mode=loose")
    safe = "The forum post is about sourdough bread."

    def lookup(q: str) -> str:
        """Search the web."""
        return safe

    tools = guard_tools([FunctionTool.from_defaults(lookup, return_direct=True)], guard)
    with scripted_openai([Reply(tool_calls=[ToolCall("lookup", json.dumps({"q": "bread"}))])]) as url:
        agent = FunctionAgent(tools=tools, llm=GuardedLLM(llm=openai_like(url), guard=guard))
        before = len(backend.calls)
        handler = agent.run(user_msg="Find the bread post.")
        output = await asyncio.wait_for(handler, RUN_TIMEOUT_S)
    assert str(output) == safe and output.raw == safe
    judged = [c for batch in backend.calls[before:] for c in batch]
    assert sum(safe in json.dumps(c) for c in judged) == 1  # the answer's one check


def test_sync_calls_decide_a_return_direct_output_as_the_answer() -> None:
    guard, _ = make_guard("tool-result on_error=allow")
    [tool] = guard_tools([FunctionTool.from_defaults(search, return_direct=True)], guard)
    output = tool.call(q="recipe")
    assert TRIGGER not in output.content.lower() and "withheld" in output.content
    assert TRIGGER not in json.dumps(output.raw_output).lower()
    [plain] = guard_tools([FunctionTool.from_defaults(search)], guard)
    assert plain.call(q="recipe").content == PAGE  # not the answer: the tool-result stage's on_error="allow"
