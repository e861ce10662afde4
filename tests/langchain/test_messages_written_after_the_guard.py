"""Messages another middleware writes after `GuardMiddleware.before_model` judged the state (a red team's finding,
rt43a F3).

`before_model` hooks run in list order: with the guard listed first, `SummarizationMiddleware` then replaced the
history with a summary its own model wrote, and the agent's model read it unjudged (a summary of a client's
history can carry what the history did; a summary model can be made to write it). A middleware that rewrites
the request's messages in its own ``wrap_model_call`` (context it adds) is the same case. The model call now
judges the messages it is given; what was judged before hits the verdict cache. The judge is the keyword guard
(unsafe when the judged turn says "ammonium").
"""

import asyncio
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, SummarizationMiddleware
from langchain_core.messages import HumanMessage
from lc_fakes import CITY_HISTORY, SAFE_ANSWER, UNSAFE_CLAUSE, scripted
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware

WORD = "ammonium"
MODES = ["sync", "async"]
HISTORY = CITY_HISTORY


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"))


def summarizing(summary: str) -> SummarizationMiddleware:
    return SummarizationMiddleware(scripted(summary), trigger=("messages", 3), keep=("messages", 1))


class AddsContext(AgentMiddleware):
    """Adds a retrieved page before the question in its own model call (to the request, not the state)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.page = page

    def _with_page(self, request: Any) -> Any:
        *earlier, question = request.messages
        return request.override(messages=[*earlier, HumanMessage(f"Context: {self.page}"), question])

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        return handler(self._with_page(request))

    async def awrap_model_call(self, request: Any, handler: Any) -> Any:
        return await handler(self._with_page(request))


def invoke(agent: Any, mode: str) -> dict[str, Any]:
    if mode == "sync":
        return agent.invoke({"messages": HISTORY})
    return asyncio.run(agent.ainvoke({"messages": HISTORY}))


def model_read(model: Any) -> str:
    return repr([m.text for call in model.seen for m in call])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "replace"])
@pytest.mark.parametrize("source", ["summary", "context"])
def test_the_model_never_reads_what_a_later_middleware_wrote(kw, mode, exit_behavior, source):
    model = scripted(SAFE_ANSWER)
    model.seen = []
    page = f"The user asked about cities. {UNSAFE_CLAUSE}"
    other = summarizing(page) if source == "summary" else AddsContext(page)
    agent = create_agent(model, [], middleware=[GuardMiddleware(kw, exit_behavior=exit_behavior), other])
    final = invoke(agent, mode)["messages"][-1]
    assert WORD not in model_read(model)
    if exit_behavior == "end":
        assert model.seen == [] and "safety guard" in final.text  # the run ends with the refusal
    else:  # the model answers the question with a notice in the flagged message's place
        assert final.text == SAFE_ANSWER and "safety guard" in model_read(model)  # the model read the notice


@pytest.mark.parametrize("mode", MODES)
def test_with_error_a_later_middlewares_message_raises(kw, mode):
    model = scripted(SAFE_ANSWER)
    model.seen = []
    agent = create_agent(model, [], middleware=[GuardMiddleware(kw, exit_behavior="error"), AddsContext(UNSAFE_CLAUSE)])
    with pytest.raises(GuardViolation) as info:
        invoke(agent, mode)
    assert info.value.decision.stage.value == "prompt" and model.seen == []


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_summary_passes_and_the_history_is_judged_once(mode):
    """What `before_model` judged is not judged again by the model call (the verdict cache)."""
    guard = Guard(ScriptedBackend(keyword_verdict, name="kw"))
    model = scripted(SAFE_ANSWER)
    model.seen = []
    agent = create_agent(model, [], middleware=[GuardMiddleware(guard), AddsContext("Paris has 2.1 million people.")])
    assert invoke(agent, mode)["messages"][-1].text == SAFE_ANSWER
    judged = [conversation for batch in guard.backend.calls for conversation in batch]
    assert any("2.1 million" in repr(c) for c in judged)  # the added context was judged
    assert len(judged) == len({repr(c) for c in judged})
