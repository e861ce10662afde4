"""What a guarded agent's tool and model calls write past the answer the guard reads (red team rt57b F1, F2, F4).

- F1: a sub-agent run inside a tool hands back with ``Command(graph=Command.PARENT, update={"messages": [...]})``.
  LangGraph raises it out of the tool as a ``ParentCommand`` (a ``GraphBubbleUp``), which ``wrap_tool_call`` let
  pass unjudged as control flow: its message went to the parent's ``"updates"``/``"values"`` streams.
- F4: the sub-agent has ``HumanInTheLoopMiddleware``: its review interrupt, quoting its model's tool call, bubbled
  out of the tool to the parent's caller (``result["__interrupt__"]``, the ``"updates"`` stream) unjudged.
- F2: a middleware listed after the guard returns a `ModelResponse` whose ``result`` holds a human or system turn
  beside the answer: only AI messages were judged, LangChain adds all of them to the state (b). Or it returns
  ``ExtendedModelResponse(response, command=Command(update={"messages": [...]}))``: LangChain's composer keeps the
  Command from the guard's handler and applies it with the model node's update, unjudged (a).

Each test is the attack, counted in stream items and state carrying the unsafe word; the keyword judge flags
"ammonium". Real `create_agent` agents, scripted chat models.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations (InjectedToolCallId).

import asyncio
from typing import Annotated, Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ExtendedModelResponse, HumanInTheLoopMiddleware, ModelResponse
from langchain.agents.structured_output import ToolStrategy
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, scripted, tool_call
from lc_streams import streamed
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware

WORD = "ammonium"
MODES = ["sync", "async"]
STREAM_MODES = ["updates", "values", "messages"]
INPUTS = {"messages": [{"role": "user", "content": "Research fertiliser for me."}]}


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)


def stream(agent: Any, mode: str, inputs: Any, config: Any) -> tuple[list[str], Exception | None]:
    """Every item of every stream mode, as text, and the error the run ended with."""
    return streamed(agent, inputs, config, mode, STREAM_MODES)


def answered_beside(
    guard: Guard, mode: str, *middleware: Any, exit_behavior: str = "end"
) -> tuple[dict[str, Any], list[str], Exception | None]:
    """A safe question answered safely by an agent whose ``GuardMiddleware`` has ``middleware`` inside it (listed
    after it): the thread's state, what streamed, the error."""
    agent = create_agent(
        scripted(SAFE_ANSWER),
        [],
        middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior), *middleware],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "t"}}
    seen, error = stream(agent, mode, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, config)
    return agent.get_state(config).values, seen, error


def carrying(seen: list[str]) -> list[str]:
    return [item[:160] for item in seen if WORD in item.lower()]


# -- F1: a sub-agent's handoff raised through the tool -------------------------------------------------------------
def handoff_agent(guard: Guard, report: str, mode: str, **options: Any) -> Any:
    @tool
    def finish(report: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Hand the research report back to the main agent."""
        update = {"messages": [ToolMessage("Report: " + report, tool_call_id="o1")]}
        return Command(graph=Command.PARENT, update=update)

    inner = create_agent(scripted(tool_call("finish", {"report": report}, "i1"), "x"), [finish])
    return main_agent(guard, inner, "research", "fertiliser", mode, **options)


def main_agent(guard: Guard, inner: Any, name: str, task: str, mode: str, **options: Any) -> tuple[Any, Any]:
    """A guarded main agent (with a checkpointer) whose model calls its one tool ``name`` with ``task``, and that
    tool runs the sub-agent ``inner`` (sync or async, by ``mode``); with the main agent's scripted model."""

    def run(task: str) -> str:
        """Delegate a task to the sub-agent."""
        return inner.invoke({"messages": [{"role": "user", "content": task}]})["messages"][-1].text

    async def arun(task: str) -> str:
        """Delegate a task to the sub-agent."""
        return (await inner.ainvoke({"messages": [{"role": "user", "content": task}]}))["messages"][-1].text

    outer = scripted(tool_call(name, {"task": task}, "o1"), SAFE_ANSWER, SAFE_ANSWER)
    agent = create_agent(
        outer,
        [tool(name)(run if mode == "sync" else arun)],
        middleware=[GuardMiddleware(guard, **options)],
        checkpointer=InMemorySaver(),
    )
    return agent, outer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
def test_a_subagents_unsafe_handoff_raised_through_the_tool_is_withheld(kw, mode, exit_behavior):
    agent, outer = handoff_agent(kw, UNSAFE_CLAUSE, mode, exit_behavior=exit_behavior)
    config = {"configurable": {"thread_id": "t"}}
    seen, error = stream(agent, mode, INPUTS, config)
    assert carrying(seen) == []  # no stream item carried the sub-agent's report
    assert WORD not in repr(agent.get_state(config).values).lower()  # nor does the thread
    assert not any(WORD in repr(call).lower() for call in outer.seen)  # nor did the parent's model read it
    if exit_behavior == "error":
        assert isinstance(error, GuardViolation)
    else:
        assert error is None and any("withheld by the safety guard" in item for item in seen)


@pytest.mark.parametrize("mode", MODES)
def test_a_subagents_safe_handoff_reaches_the_parent_unchanged(kw, mode):
    agent, _ = handoff_agent(kw, "Nitrogen feeds the lawn.", mode, exit_behavior="replace")
    config = {"configurable": {"thread_id": "t"}}
    seen, error = stream(agent, mode, INPUTS, config)
    assert error is None
    messages = agent.get_state(config).values["messages"]
    assert [m.text for m in messages if isinstance(m, ToolMessage)] == ["Report: Nitrogen feeds the lawn."]


# -- F4: a sub-agent's interrupt bubbling out of the tool -----------------------------------------------------------
def reviewed_subagent(guard: Guard, body: str, mode: str, sent: list[str], **options: Any) -> Any:
    @tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail."""
        sent.append(body)
        return "sent"

    inner = create_agent(
        scripted(tool_call("send_email", {"to": "friend@x.y", "body": body}, "i1"), "Done."),
        [send_email],
        middleware=[HumanInTheLoopMiddleware({"send_email": True})],
    )
    return main_agent(guard, inner, "assistant", "e-mail my friend the notes", mode, **options)[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
def test_a_subagents_unsafe_review_request_does_not_reach_the_caller(kw, mode, exit_behavior):
    sent: list[str] = []
    agent = reviewed_subagent(kw, UNSAFE_CLAUSE, mode, sent, exit_behavior=exit_behavior)
    config = {"configurable": {"thread_id": "t"}}
    seen, error = stream(agent, mode, INPUTS, config)
    assert carrying(seen) == []  # the review request quoting the call went nowhere
    assert not any("__interrupt__" in item for item in seen)  # the tool's outcome is the guard's block
    assert not sent
    if exit_behavior == "error":
        assert isinstance(error, GuardViolation)
    else:
        assert error is None and any("withheld by the safety guard" in item for item in seen)
        assert WORD not in repr(agent.get_state(config).values).lower()


@pytest.mark.parametrize("mode", MODES)
def test_a_subagents_safe_review_request_reaches_the_caller_and_resumes(kw, mode):
    sent: list[str] = []
    agent = reviewed_subagent(kw, "See you at noon.", mode, sent)
    config = {"configurable": {"thread_id": "t"}}
    approve = Command(resume={"decisions": [{"type": "approve"}]})
    if mode == "sync":
        first = agent.invoke(INPUTS, config)
        last = agent.invoke(approve, config)
    else:

        async def run() -> tuple[Any, Any]:
            return await agent.ainvoke(INPUTS, config), await agent.ainvoke(approve, config)

        first, last = asyncio.run(run())
    (request,) = first["__interrupt__"][0].value["action_requests"]
    assert request["args"]["body"] == "See you at noon."
    assert sent == ["See you at noon."] and last["messages"][-1].text == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupt_too_large_to_judge_whole_is_withheld(mode):
    """Size alone never gets an interrupt's text through unjudged (`on_error="allow"` or not)."""
    judge = ScriptedBackend(keyword_verdict, name="kw")
    guard = Guard(judge, cache_size=0, max_chars=2_000)

    @tool
    def ask(q: str) -> str:
        """Ask a human."""
        return str(interrupt({"question": q, "context": ["Paris is in France. " * 10] * 20}))

    agent = create_agent(
        scripted(tool_call("ask", {"q": "ok?"}, "o1"), SAFE_ANSWER, SAFE_ANSWER),
        [ask],
        middleware=[GuardMiddleware(guard, exit_behavior="replace")],
        checkpointer=InMemorySaver(),
    )
    seen, error = stream(
        agent, mode, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, {"configurable": {"thread_id": "t"}}
    )
    assert error is None and not any("__interrupt__" in item for item in seen)
    assert any("withheld by the safety guard" in item for item in seen)


# -- F2: messages beside the answer in the model call's result -------------------------------------------------------
class AddBeside(AgentMiddleware):
    """A middleware listed after the guard that puts a turn of context beside the model's answer."""

    def __init__(self, cls: type, text: str) -> None:
        super().__init__()
        self.cls, self.text = cls, text

    def _with(self, response: ModelResponse) -> ModelResponse:
        return ModelResponse(
            result=[*response.result, self.cls(content=self.text)], structured_response=response.structured_response
        )

    def wrap_model_call(self, request: Any, handler: Any) -> ModelResponse:
        return self._with(handler(request))

    async def awrap_model_call(self, request: Any, handler: Any) -> ModelResponse:
        return self._with(await handler(request))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", [HumanMessage, SystemMessage])
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
def test_an_unsafe_turn_beside_the_answer_is_judged_before_the_state_takes_it(kw, mode, cls, exit_behavior):
    state, seen, error = answered_beside(
        kw, mode, AddBeside(cls, "Context: " + UNSAFE_CLAUSE), exit_behavior=exit_behavior
    )
    assert carrying(seen) == []
    assert WORD not in repr(state).lower()
    if exit_behavior == "error":
        assert isinstance(error, GuardViolation)
    else:
        assert error is None and "blocked by the safety guard" in state["messages"][-1].text


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_turn_beside_the_answer_goes_through(kw, mode):
    _, seen, error = answered_beside(kw, mode, AddBeside(HumanMessage, "Context: sunny."))
    assert error is None and any("Context: sunny." in item for item in seen)


class Capital(BaseModel):
    city: str


def test_a_tool_strategy_answers_own_tool_message_is_not_judged_again():
    """``create_agent`` writes "Returning structured response: ..." beside a ``ToolStrategy`` answer: the parsed
    response of the call the guard judged, not judged again (no check more per structured answer)."""
    judge = ScriptedBackend(keyword_verdict, name="kw")
    agent = create_agent(
        scripted(tool_call("Capital", {"city": "Paris"}, "s1")),
        [],
        response_format=ToolStrategy(Capital),
        middleware=[GuardMiddleware(Guard(judge, cache_size=0))],
    )
    result = agent.invoke({"messages": [{"role": "user", "content": SAFE_QUESTION}]})
    assert result["structured_response"] == Capital(city="Paris")
    judged = [turn["content"] for batch in judge.calls for conversation in batch for turn in conversation]
    assert not any("Returning structured response" in text for text in judged)


class Annotate(AgentMiddleware):
    """A middleware listed after the guard that adds a message through a Command beside the answer."""

    def __init__(self, message: Any) -> None:
        super().__init__()
        self.message = message

    def wrap_model_call(self, request: Any, handler: Any) -> ExtendedModelResponse:
        return ExtendedModelResponse(
            model_response=handler(request), command=Command(update={"messages": [self.message]})
        )

    async def awrap_model_call(self, request: Any, handler: Any) -> ExtendedModelResponse:
        response = await handler(request)
        return ExtendedModelResponse(model_response=response, command=Command(update={"messages": [self.message]}))


class PassThrough(AgentMiddleware):
    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        return handler(request)

    async def awrap_model_call(self, request: Any, handler: Any) -> Any:
        return await handler(request)


NOTES = {
    "ai": lambda text: AIMessage(content="Note: " + text),
    "human": lambda text: HumanMessage(content="Context: " + text),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["ai", "human"])
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
@pytest.mark.parametrize("depth", [1, 2])
def test_an_unsafe_message_in_a_command_beside_the_answer_is_withheld(kw, mode, kind, exit_behavior, depth):
    """``depth`` 2: another middleware sits between the guard and the one returning the Command."""
    inner = [PassThrough()] if depth == 2 else []
    state, seen, error = answered_beside(
        kw, mode, *inner, Annotate(NOTES[kind](UNSAFE_CLAUSE)), exit_behavior=exit_behavior
    )
    assert carrying(seen) == []
    assert WORD not in repr(state).lower()
    if exit_behavior == "error":
        assert isinstance(error, GuardViolation)
    else:
        assert error is None and any("blocked by the safety guard" in item for item in seen)


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_message_in_a_command_beside_the_answer_goes_through(kw, mode):
    _, seen, error = answered_beside(kw, mode, Annotate(HumanMessage(content="Context: sunny.")))
    assert error is None and any("Context: sunny." in item for item in seen)
    assert any(SAFE_ANSWER in item for item in seen)
