"""``GuardedLLM.predict_and_call`` / ``apredict_and_call`` run the calls of the model's answer and hand the application
the tools' outputs as the response, no model reading them first (rt67e F2): a hostile page came back to the app
unjudged, and from `guard_tools` judged under the tool-result stage alone, while a ``return_direct`` tool's output (the
same path to the user) is decided under the stricter of the response and tool-result policies (rt60a F2). Attacked
here through the real ``FunctionCallingLLM`` path (a real ``MockFunctionCallingLLM`` that calls the tool) and the
ReAct path LlamaIndex takes for an LLM without tool calling (`ScriptedLLM` writing the action)."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import json
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import UNSAFE_CLAUSE, ScriptedLLM
from llama_index.core.agent.react import ReActChatFormatter, ReActOutputParser
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from qwenguard.core import Guard, GuardViolation, Policy, Stage, StagePolicy
from qwenguard.integrations.llamaindex import GuardedLLM, guard_tools

PAGE = "Page text: " + UNSAFE_CLAUSE
QUESTION = "Summarise https://example.com"
HOWS = ["sync", "async"]


def fetch_page(url: str) -> str:
    """Fetch a web page."""
    return PAGE if "evil" in url else "Page text: Paris is the capital of France."


def broken_fetch(url: str) -> str:
    """Fetch a web page."""
    raise RuntimeError("could not parse the page: " + UNSAFE_CLAUSE)


def controversial(conversation: list[dict[str, str]]) -> str:
    """The page is Controversial (Violent) whatever role reads it: a loose stage allows it, a strict one blocks."""
    last = conversation[-1]
    bad = "ammonium" in last["content"]
    head = "Safety: Controversial\nCategories: Violent" if bad else "Safety: Safe\nCategories: None"
    return head + ("\nRefusal: No" if last["role"] == "assistant" else "")


def _calling(*urls: str, name: str = "fetch_page") -> MockFunctionCallingLLM:
    """A function-calling model whose answer calls ``name`` once per url."""
    blocks = [ToolCallBlock(tool_call_id=f"c{i}", tool_name=name, tool_kwargs={"url": u}) for i, u in enumerate(urls)]
    return MockFunctionCallingLLM(
        response_generator=lambda messages, **kw: ChatMessage(role="assistant", blocks=blocks)
    )


def _predict_and_call(llm: GuardedLLM, how: str, tools: list[Any], **options: Any) -> Any:
    if how == "sync":
        return llm.predict_and_call(tools, user_msg=QUESTION, **options)
    return asyncio.run(llm.apredict_and_call(tools, user_msg=QUESTION, **options))


def _keyword_guard() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict), Policy(timeout_s=None))


def _unsafe_reached(error: BaseException) -> bool:
    """Whether the clause is in what the app gets of the error: its text, or anything chained to it."""
    while error is not None:
        if "ammonium" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@pytest.mark.parametrize("how", HOWS)
def test_a_hostile_page_is_not_handed_to_the_app_as_the_response(how: str) -> None:
    guard = _keyword_guard()
    llm = GuardedLLM(llm=_calling("https://evil.example"), guard=guard)
    with pytest.raises(GuardViolation) as raised:
        _predict_and_call(llm, how, [FunctionTool.from_defaults(fn=fetch_page)])
    assert not _unsafe_reached(raised.value)


@pytest.mark.parametrize("how", HOWS)
def test_a_loosened_tool_result_stage_does_not_let_the_answer_through(how: str) -> None:
    """`guard_tools` let the page through under a loose tool-result stage; the response stage blocks it."""
    guard = Guard(
        ScriptedBackend(controversial),
        Policy(timeout_s=None, stages={Stage.TOOL_RESULT: StagePolicy(mode="loose")}),
    )
    llm = GuardedLLM(llm=_calling("https://evil.example"), guard=guard)
    with pytest.raises(GuardViolation) as raised:
        _predict_and_call(llm, how, guard_tools([FunctionTool.from_defaults(fn=fetch_page)], guard))
    assert not _unsafe_reached(raised.value)


@pytest.mark.parametrize("how", HOWS)
def test_parallel_calls_are_judged_as_the_joined_response(how: str) -> None:
    guard = _keyword_guard()
    llm = GuardedLLM(llm=_calling("https://example.com", "https://evil.example"), guard=guard)
    with pytest.raises(GuardViolation) as raised:
        _predict_and_call(llm, how, [FunctionTool.from_defaults(fn=fetch_page)], allow_parallel_tool_calls=True)
    assert not _unsafe_reached(raised.value)


@pytest.mark.parametrize("how", HOWS)
def test_error_on_tool_error_does_not_carry_the_tools_text_out(how: str) -> None:
    """``error_on_tool_error=True``: the tools' outputs (here an error quoting the page) in a ValueError's text."""
    guard = _keyword_guard()
    llm = GuardedLLM(llm=_calling("https://example.com", name="broken_fetch"), guard=guard)
    with pytest.raises(GuardViolation) as raised:
        _predict_and_call(llm, how, [FunctionTool.from_defaults(fn=broken_fetch)], error_on_tool_error=True)
    assert not _unsafe_reached(raised.value)


@pytest.mark.parametrize("how", HOWS)
def test_a_safe_page_is_the_response_unchanged(how: str) -> None:
    guard = _keyword_guard()
    llm = GuardedLLM(llm=_calling("https://example.com"), guard=guard)
    response = _predict_and_call(llm, how, [FunctionTool.from_defaults(fn=fetch_page)])
    assert response.response == "Page text: Paris is the capital of France."


@pytest.mark.parametrize("how", HOWS)
def test_the_react_path_of_a_model_without_tool_calling_is_judged_too(how: str) -> None:
    """LlamaIndex runs one ReAct step for an LLM without tool calling and hands back the outputs joined (its
    ReActAgent needs the formatter and parser given: it refuses None)."""
    action = json.dumps({"url": "https://evil.example"})
    scripted = ScriptedLLM(chunks=[f"Thought: I need the page.\nAction: fetch_page\nAction Input: {action}\n"])
    llm = GuardedLLM(llm=scripted, guard=_keyword_guard())
    react = {"react_chat_formatter": ReActChatFormatter.from_defaults(), "output_parser": ReActOutputParser()}
    with pytest.raises(GuardViolation) as raised:
        _predict_and_call(llm, how, [FunctionTool.from_defaults(fn=fetch_page)], **react)
    assert not _unsafe_reached(raised.value)
