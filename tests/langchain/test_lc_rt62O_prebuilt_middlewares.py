"""rt62e F2, F1: LangChain's prebuilt middlewares that write model text of their own beside `GuardMiddleware`.

F2: docs/langchain.md said that listing the guard after `SummarizationMiddleware` had the summary judged before the
state took it. It did not: the summarizer's ``before_model`` is a graph node of its own, so the summary its model
wrote went out on ``stream_mode="updates"``, ``"values"`` and ``"messages"`` and into the checkpoint before the
guard's node ran, in either order, and in that order the summary model was sent the client's history unjudged.
What holds is a guarded summary model (``SummarizationMiddleware(GuardedChatModel(model, guard))``), in either
order. F1: `LLMToolEmulator` (or a cache of tool results) listed before the guard answers a tool call without
calling the guard's ``wrap_tool_call``: its result streamed and reached the checkpoint unjudged. Listed after the
guard, or given a guarded model, it holds.

Each configuration the docs recommend is run as the attack (an unsafe summary, an unsafe emulated result) and no
stretch of the unsafe text may reach any stream mode, ``astream_events``, the run's result or state, or the
checkpoint; the exposure the docs describe for the other orders is asserted as it is described. The judge is the
keyword guard (unsafe when the judged text says "ammonium").
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, LLMToolEmulator, SummarizationMiddleware
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import CITY_HISTORY, SAFE_ANSWER, UNSAFE_CLAUSE, keyword_guard, scripted, tool_call
from qwenguard.core import GuardViolation, Policy, Stage, StagePolicy
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware

MODES = ["invoke", "ainvoke", "stream", "astream", "astream_events"]
STREAM_MODES = ["updates", "messages", "values"]
SUMMARY = f"The user asked about cities. {UNSAFE_CLAUSE}"
SUMMARY_NODE = "SummarizationMiddleware.before_model"
HISTORY = CITY_HISTORY
#: A client's whole history (a stateless API) with an unsafe early turn.
CLIENT_HISTORY = [HumanMessage(f"Write this down: {UNSAFE_CLAUSE}"), *HISTORY[1:]]
ASK = [HumanMessage("Look up fertilizer")]


def leaked(text: str) -> bool:
    """Whether any 8 characters in a row of the unsafe clause are in ``text``."""
    return any(UNSAFE_CLAUSE[i : i + 8] in text for i in range(len(UNSAFE_CLAUSE) - 7))


def consume(agent: Any, messages: list[Any], mode: str, thread: str = "t") -> tuple[dict[str, str], Any]:
    """Run the agent as a consumer does; what each consumer got (``"updates:<node>"``, ``"messages:<node>"``,
    ``"values"``, ``"result"``, ``"events"``), and the run's error (or None)."""
    config = {"configurable": {"thread_id": thread}}
    inp = {"messages": messages}
    heard: dict[str, str] = {}

    def hear(key: str, value: Any) -> None:
        heard[key] = heard.get(key, "") + repr(value)

    def take(item: Any) -> None:
        kind, chunk = item
        if kind == "updates":
            for node, update in (chunk or {}).items():
                hear(f"updates:{node}", update)
        elif kind == "messages":
            hear(f"messages:{chunk[1].get('langgraph_node')}", chunk[0])
        else:
            hear(kind, chunk)

    async def arun() -> None:
        if mode == "ainvoke":
            hear("result", await agent.ainvoke(inp, config))
        elif mode == "astream":
            async for item in agent.astream(inp, config, stream_mode=STREAM_MODES):
                take(item)
        else:
            async for event in agent.astream_events(inp, config, version="v2"):
                hear("events", event.get("data"))

    try:
        if mode == "invoke":
            hear("result", agent.invoke(inp, config))
        elif mode == "stream":
            for item in agent.stream(inp, config, stream_mode=STREAM_MODES):
                take(item)
        else:
            asyncio.run(arun())
    except Exception as error:  # the run's outcome, asserted by each test
        return heard, error
    return heard, None


def kept(agent: Any, thread: str = "t") -> tuple[str, str]:
    """The thread's final state and its whole checkpoint history."""
    config = {"configurable": {"thread_id": thread}}
    return repr(agent.get_state(config).values), repr([s.values for s in agent.get_state_history(config)])


def leaks(heard: dict[str, str]) -> list[str]:
    return sorted(key for key, text in heard.items() if leaked(text))


# F2: SummarizationMiddleware.


def summarizing(summary_model: Any, how: str) -> SummarizationMiddleware:
    if how == "summarizer":  # the summary model beside the managed one (`summarizer=`)
        return SummarizationMiddleware(
            scripted(), trigger=("messages", 3), keep=("messages", 1), summarizer=summary_model
        )
    return SummarizationMiddleware(summary_model, trigger=("messages", 3), keep=("messages", 1))


def agent_with(guard: Any, other: Any, order: str, model: Any, tools: Any = (), exit_behavior: str = "end") -> Any:
    """``create_agent`` with ``other`` listed first (``order="other_first"``) or after the guard."""
    guard_mw = GuardMiddleware(guard, exit_behavior=exit_behavior)
    middleware = [other, guard_mw] if order == "other_first" else [guard_mw, other]
    return create_agent(model, list(tools), middleware=middleware, checkpointer=InMemorySaver())


ORDERS = ["other_first", "guard_first"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["model", "summarizer"])
@pytest.mark.parametrize("order", ORDERS)
def test_a_guarded_summary_model_holds_an_unsafe_summary_in_either_order(order, how, mode):
    guard, _ = keyword_guard()
    summary_model = scripted(SUMMARY)
    model = scripted(SAFE_ANSWER)
    agent = agent_with(guard, summarizing(GuardedChatModel(summary_model, guard), how), order, model)
    heard, error = consume(agent, HISTORY, mode)
    assert isinstance(error, GuardViolation), error  # the summarization node fails: the run fails
    assert leaks(heard) == [] and not leaked(repr(error.args))
    state, history = kept(agent)
    assert not leaked(state) and not leaked(history)
    assert len(summary_model.seen) == 1 and model.seen == []  # asked once (the retry keeps the stop); no answer


@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
@pytest.mark.parametrize("order", ORDERS)
def test_the_run_fails_whatever_exit_behavior_says(order, exit_behavior):
    guard, _ = keyword_guard()
    summarization = summarizing(GuardedChatModel(scripted(SUMMARY), guard), "model")
    agent = agent_with(guard, summarization, order, scripted(SAFE_ANSWER), (), exit_behavior)
    heard, error = consume(agent, HISTORY, "stream")
    assert isinstance(error, GuardViolation) and leaks(heard) == []
    assert not any(leaked(text) for text in kept(agent))


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
@pytest.mark.parametrize("order", ORDERS)
def test_a_guarded_summary_model_is_not_sent_an_unsafe_history(order, mode):
    """Its input (the summary prompt, with the history in it) is judged before it is sent. Listed first, the
    summarization raises; listed after the guard, the guard's ``before_model`` judged the history first."""
    guard, _ = keyword_guard()
    summary_model = scripted("The user asked about cities.")
    summarization = summarizing(GuardedChatModel(summary_model, guard), "model")
    agent = agent_with(guard, summarization, order, scripted(SAFE_ANSWER))
    heard, error = consume(agent, CLIENT_HISTORY, mode)
    assert summary_model.seen == []
    if order == "other_first":
        assert isinstance(error, GuardViolation) and error.decision.stage.value == "prompt"
    else:  # exit_behavior="end": the run ends with the refusal
        assert error is None and "safety guard" in heard["result"]


@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_a_plain_summary_model_listed_first_streams_the_summary_before_the_guard_judges_it(mode):
    """The false claim: listed after the summarization, the guard judges the summary only after its node wrote it."""
    guard, _ = keyword_guard()
    model = scripted(SAFE_ANSWER)
    agent = agent_with(guard, summarizing(scripted(SUMMARY), "model"), "other_first", model)
    heard, error = consume(agent, HISTORY, mode)
    assert error is None
    assert leaks(heard) == [f"messages:{SUMMARY_NODE}", f"updates:{SUMMARY_NODE}", "values"]
    state, history = kept(agent)
    assert leaked(history)  # the checkpoint written as the summarization's node ended
    assert not leaked(state) and model.seen == []  # then the guard's before_model withheld it (and ended the run)
    assert "safety guard" in heard["updates:GuardMiddleware.before_model"]


def test_a_plain_summary_model_listed_first_is_sent_the_clients_history_unjudged():
    guard, _ = keyword_guard()
    summary_model = scripted("The user asked about cities.")
    agent = agent_with(guard, summarizing(summary_model, "model"), "other_first", scripted(SAFE_ANSWER))
    consume(agent, CLIENT_HISTORY, "invoke")
    assert leaked(repr(summary_model.seen))


@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_a_plain_summary_model_listed_after_the_guard_leaves_the_summary_in_the_state(mode):
    """The guard judged the history first; the summary its model then wrote streams, and stays in the state: the
    model call refuses it, and the thread's next turn finds it there."""
    guard, _ = keyword_guard()
    model = scripted(SAFE_ANSWER, SAFE_ANSWER)
    summarization = SummarizationMiddleware(scripted(SUMMARY), trigger=("messages", 5), keep=("messages", 1))
    agent = agent_with(guard, summarization, "guard_first", model)
    heard, error = consume(agent, HISTORY, mode)
    assert error is None
    assert leaks(heard) == [f"messages:{SUMMARY_NODE}", f"updates:{SUMMARY_NODE}", "values"]
    state, history = kept(agent)
    assert leaked(state) and leaked(history) and model.seen == []
    assert "safety guard" in heard["updates:model"]  # exit_behavior="end": the model call answers with the refusal
    heard, error = consume(agent, [HumanMessage("And Berlin?")], "invoke")
    assert error is None and model.seen == [] and "safety guard" in repr(heard["result"].splitlines()[-1:])
    assert not leaked(kept(agent)[0])  # that turn's before_model withheld it from the state


# F1: a tool-level middleware that answers without calling the tool.


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return "nothing found"


class CachedResults(AgentMiddleware):
    """A cache of tool results shared with other agents: a hit answers without calling the tool (``handler``)."""

    def __init__(self, results: dict[str, str]) -> None:
        super().__init__()
        self.results = results

    def _hit(self, request: Any) -> ToolMessage | None:
        name, text = request.tool_call["name"], self.results.get(request.tool_call["name"])
        return None if text is None else ToolMessage(text, tool_call_id=request.tool_call["id"], name=name)

    def wrap_tool_call(self, request: Any, handler: Any) -> Any:
        return self._hit(request) or handler(request)

    async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
        return self._hit(request) or await handler(request)


def answering(kind: str, guard: Any) -> tuple[Any, Any]:
    """The middleware that answers the tool call, and the emulator's own model (None for the cache)."""
    if kind == "cache":
        return CachedResults({"lookup": UNSAFE_CLAUSE}), None
    emulator_model = scripted(UNSAFE_CLAUSE)
    model = GuardedChatModel(emulator_model, guard) if kind == "guarded_emulator" else emulator_model
    return LLMToolEmulator(tools=["lookup"], model=model), emulator_model


def tool_agent(guard: Any, other: Any, order: str, exit_behavior: str = "end") -> tuple[Any, Any]:
    model = scripted(tool_call("lookup", {"q": "fertilizer"}), "Done.")
    return agent_with(guard, other, order, model, [lookup], exit_behavior), model


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["emulator", "cache"])
def test_listed_after_the_guard_the_answer_is_judged_as_the_tools_result(kind, mode):
    guard, _ = keyword_guard()
    other, _ = answering(kind, guard)
    agent, model = tool_agent(guard, other, "guard_first")
    heard, error = consume(agent, ASK, mode)
    assert error is None
    state, history = kept(agent)
    assert not leaked(state) and not leaked(history) and not leaked(repr(model.seen))
    if mode == "astream_events" and kind == "emulator":
        # The emulator's own model runs with the run's callbacks: its events carry its raw answer (rt57b F5).
        assert leaks(heard) == ["events"]
    else:
        assert leaks(heard) == []
    assert "withheld by the safety guard" in state


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "error"])
@pytest.mark.parametrize("order", ORDERS)
def test_a_guarded_emulator_holds_in_either_order(order, exit_behavior, mode):
    guard, _ = keyword_guard()
    other, emulator_model = answering("guarded_emulator", guard)
    agent, model = tool_agent(guard, other, order, exit_behavior)
    heard, error = consume(agent, ASK, mode)
    assert isinstance(error, GuardViolation), error  # out of the tool call: the run fails
    assert leaks(heard) == [] and not leaked(repr(error.args))
    state, history = kept(agent)
    assert not leaked(state) and not leaked(history)
    assert len(emulator_model.seen) == 1 and len(model.seen) == 1  # the agent's model was not asked again


@pytest.mark.parametrize("mode", ["stream", "astream"])
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
@pytest.mark.parametrize("kind", ["emulator", "cache"])
def test_listed_before_the_guard_the_answer_streams_unjudged(kind, exit_behavior, mode):
    """The guard's ``wrap_tool_call`` is never called: the answer is first judged as input at the next model call."""
    guard, _ = keyword_guard()
    other, _ = answering(kind, guard)
    agent, model = tool_agent(guard, other, "other_first", exit_behavior)
    heard, error = consume(agent, ASK, mode)
    assert leaks(heard) == ["messages:tools", "updates:tools", "values"]
    state, history = kept(agent)
    assert leaked(history) and not leaked(repr(model.seen))
    if exit_behavior == "error":
        assert isinstance(error, GuardViolation) and leaked(state)  # it stays in the state
    else:
        assert error is None and not leaked(state)  # withheld from the state at the next model call


#: A policy that lets a model's answer say "Violent" things, and judges tool results as usual.
LOOSE_ANSWERS = Policy(
    stages={stage: StagePolicy(ignore_categories=frozenset({"Violent"})) for stage in (Stage.RESPONSE, Stage.STREAM)}
)


@pytest.mark.parametrize("order", ORDERS)
def test_a_guarded_emulator_listed_first_is_judged_only_as_its_models_answer(order):
    """Listed after the guard, its result is judged as the tool's result too; listed before, only as its answer."""
    guard, _ = keyword_guard(LOOSE_ANSWERS)
    other, _ = answering("guarded_emulator", guard)
    agent, _ = tool_agent(guard, other, order)
    heard, error = consume(agent, ASK, "stream")
    assert error is None
    if order == "guard_first":
        assert leaks(heard) == [] and "withheld by the safety guard" in kept(agent)[0]
    else:
        assert "updates:tools" in leaks(heard)
