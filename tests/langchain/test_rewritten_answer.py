"""An answer a middleware rewrites after the guard judged it is judged again, whatever its id (rt50d F3).

`GuardMiddleware` remembered "this answer's text was judged" by the message's id: the held stream's ledger (inside
its model call) and the ids ``after_model`` skips. A middleware that rewrites the answer with ``model_copy`` keeps
the id (a footer, a translator, a formatter), so its text reached the state unjudged:

- listed after the guard (inside its model call, the documented order), when the answer streamed
  (``stream_mode="messages"``): the rewrite went to ``"updates"``, ``"values"`` and the checkpoint;
- listed before it (around the guarded call), always: ``after_model`` skipped the rewrite's text.

What was judged is remembered by fingerprint of what a text check reads now (`judged_content`): an answer is not
judged again only while it still says that. An honest answer costs the same checks as before.

`ChatOpenAI` against the scripted server, `create_agent`, `InMemorySaver`, the demo guard. Counted: characters of
the unsafe clause in every stream item, the run's result and every checkpoint of the thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelResponse
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE
from qwenguard.core import Guard
from qwenguard.integrations.langchain import GuardMiddleware
from scripted_openai import Reply, scripted_openai
from stream_judges import CountingJudge
from test_openai_paths import MODES, chat

INPUTS = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
REFUSAL_START = "I can't help with that"


def leaked(value: Any) -> int:
    """Characters of the clause in ``value`` (its repr): each of its telling words found anywhere in it."""
    text = repr(value)
    return sum(len(word) for word in ("ammonium", "nitrate", "fuel oil", "into a pipe", "add a fuse") if word in text)


def _footer(response: ModelResponse, text: str) -> ModelResponse:
    """The answer with ``text`` after it, as a footer or a translator writes it: ``model_copy``, the id kept."""
    answer = response.result[0]
    assert isinstance(answer, AIMessage) and answer.id
    rewritten = answer.model_copy(update={"content": f"{answer.text} {text}".strip()})
    return ModelResponse(result=[rewritten], structured_response=response.structured_response)


class Footer(AgentMiddleware):
    """Adds ``text`` to the model's answer, in its own ``wrap_model_call``."""

    def __init__(self, text: str = UNSAFE_CLAUSE) -> None:
        super().__init__()
        self.text = text

    def wrap_model_call(self, request: Any, handler: Any) -> ModelResponse:
        return _footer(handler(request), self.text)

    async def awrap_model_call(self, request: Any, handler: Any) -> ModelResponse:
        return _footer(await handler(request), self.text)


def _history(agent: Any, config: dict[str, Any]) -> list[Any]:
    return [state.values for state in agent.get_state_history(config)]


def _stream(agent: Any, config: dict[str, Any], mode: str, modes: list[str]) -> list[Any]:
    if mode == "sync":
        return list(agent.stream(INPUTS, config, stream_mode=modes))

    async def drain() -> list[Any]:
        return [item async for item in agent.astream(INPUTS, config, stream_mode=modes)]

    return asyncio.run(drain())


def _invoke(agent: Any, config: dict[str, Any], mode: str) -> Any:
    return agent.invoke(INPUTS, config) if mode == "sync" else asyncio.run(agent.ainvoke(INPUTS, config))


@pytest.mark.parametrize("mode", MODES)
def test_a_streamed_answer_a_middleware_inside_the_guard_rewrites_is_judged(guard, mode):
    """F3b: guard first (the documented order), a footer inside its model call, the answer streamed."""
    config = {"configurable": {"thread_id": f"inside-{mode}"}}
    with scripted_openai([Reply.words(SAFE_ANSWER)], pace=0) as url:
        middleware = [GuardMiddleware(guard), Footer()]
        agent = create_agent(chat(url), [], middleware=middleware, checkpointer=InMemorySaver())
        seen = _stream(agent, config, mode, ["messages", "updates", "values"])
    assert (leaked(seen), leaked(_history(agent, config))) == (0, 0)
    assert agent.get_state(config).values["messages"][-1].text.startswith(REFUSAL_START)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("run", ["invoke", "stream"])
def test_an_answer_a_middleware_around_the_guard_rewrites_is_judged_by_after_model(guard, mode, run):
    """F3a: the footer listed before the guard rewrites the answer the guarded call judged. ``after_model`` judges
    it (the model node's own update streamed before that node runs: the documented order, see docs)."""
    config = {"configurable": {"thread_id": f"around-{mode}-{run}"}}
    with scripted_openai([Reply.words(SAFE_ANSWER)], pace=0) as url:
        middleware = [Footer(), GuardMiddleware(guard)]
        agent = create_agent(chat(url), [], middleware=middleware, checkpointer=InMemorySaver())
        if run == "invoke":
            result = _invoke(agent, config, mode)
        else:
            _stream(agent, config, mode, ["messages"])
            result = agent.get_state(config).values
    assert leaked(result) == 0
    assert result["messages"][-1].text.startswith(REFUSAL_START)
    assert leaked(agent.get_state(config).values) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", ["inside", "around"])
@pytest.mark.parametrize("run", ["invoke", "stream"])
def test_an_honest_answer_costs_no_check_more_for_a_rewrite_that_changes_nothing(mode, order, run):
    """A middleware that passes the answer on unchanged (``model_copy``, same text, same id) costs no answer check:
    the answer still says what was judged."""

    def answer_checks(middleware: list[Any]) -> tuple[int, str]:
        judge = CountingJudge()
        with scripted_openai([Reply.words(SAFE_ANSWER)], pace=0) as url:
            agent = create_agent(chat(url), [], middleware=middleware(Guard(judge)), checkpointer=InMemorySaver())
            config = {"configurable": {"thread_id": "t"}}
            if run == "invoke":
                _invoke(agent, config, mode)
            else:
                _stream(agent, config, mode, ["messages"])
        return judge.answer_checks, agent.get_state(config).values["messages"][-1].text

    alone = answer_checks(lambda g: [GuardMiddleware(g)])
    if order == "inside":
        with_copy = answer_checks(lambda g: [GuardMiddleware(g), Footer("")])
    else:
        with_copy = answer_checks(lambda g: [Footer(""), GuardMiddleware(g)])
    assert with_copy == alone and alone[1] == SAFE_ANSWER
