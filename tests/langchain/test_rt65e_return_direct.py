"""rt65e F2: a ``return_direct`` tool's result is the run's answer, and is decided as one.

``create_agent`` ends the run with a ``return_direct`` tool's result: no model call reads it, the user gets it as the
final message. `GuardMiddleware` decided it under the tool-result stage alone: a tool-result stage loosened for the
pages a model reads (``LOOSE_RESULTS`` ignores Violent) let a planted page through as the answer, although the
response stage blocks that text; and with ``check_tool_results=False`` it was not judged at all. Now it is decided
under the response stage too, the stricter of the two taken (as LlamaIndex decides one: rt60a F2), whenever
``check_output`` is on. Counted in characters of the run's final message.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.tools import tool
from lc_fakes import LOOSE_RESULTS, SAFE_ANSWER, UNSAFE_CLAUSE, keyword_guard, scripted, tool_call
from qwenguard.integrations.langchain import GuardMiddleware

MODES = ["sync", "async"]
WORD = "ammonium"
QUESTION = {"messages": [("user", "Tell me about fertilizer storage.")]}


def _lookup(page: str, *, return_direct: bool = True) -> Any:
    @tool(return_direct=return_direct)
    def lookup(topic: str) -> str:
        """Look a topic up in the wiki."""
        return page  # a page someone planted, say

    return lookup


def _run(agent: Any, mode: str) -> dict[str, Any]:
    return agent.invoke(QUESTION) if mode == "sync" else asyncio.run(agent.ainvoke(QUESTION))


def _agent(page: str, *, return_direct: bool = True, policy: Any = LOOSE_RESULTS, **options: Any) -> tuple[Any, Any]:
    guard, _ = keyword_guard(policy)
    model = scripted(tool_call("lookup", {"topic": "fertilizer"}), SAFE_ANSWER)
    tools = [_lookup(page, return_direct=return_direct)]
    return create_agent(model, tools, middleware=[GuardMiddleware(guard, **options)]), model


@pytest.mark.parametrize("mode", MODES)
def test_a_loosened_tool_result_stage_does_not_let_a_return_direct_answer_through(mode: str) -> None:
    agent, _ = _agent(UNSAFE_CLAUSE)
    out = _run(agent, mode)
    assert all(WORD not in str(m.content) for m in out["messages"])
    assert "withheld by the safety guard" in out["messages"][-1].content


@pytest.mark.parametrize("mode", MODES)
def test_a_return_direct_answer_is_judged_with_tool_results_unchecked(mode: str) -> None:
    agent, _ = _agent(UNSAFE_CLAUSE, policy=None, check_tool_results=False)
    out = _run(agent, mode)
    assert all(WORD not in str(m.content) for m in out["messages"])
    assert "withheld by the safety guard" in out["messages"][-1].content


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_return_direct_answer_reaches_the_user(mode: str) -> None:
    page = "Store fertilizer in a cool, dry place."
    agent, _ = _agent(page, check_tool_results=False)
    assert _run(agent, mode)["messages"][-1].content == page


@pytest.mark.parametrize("mode", MODES)
def test_a_page_the_model_reads_keeps_the_loosened_tool_result_stage(mode: str) -> None:
    # Not the answer: the model reads it, and its answer is judged as the answer.
    agent, model = _agent(UNSAFE_CLAUSE, return_direct=False)
    out = _run(agent, mode)
    assert WORD in "".join(str(m.content) for m in model.seen[-1])
    assert out["messages"][-1].content == SAFE_ANSWER
