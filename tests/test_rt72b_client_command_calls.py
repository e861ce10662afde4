"""rt72b: the tool calls a client's ``Command`` input hands the tools, judged one at a time.

F1: a ``Command(update={"messages": [..., AIMessage(tool_calls=[...])]}, goto="tools")`` with a clause split over two
``send_email`` calls (or over the AI message's text and its call): `GuardCallbackHandler` judged the update's text at
the graph's start and each call alone at its tool's start; the one joined reading was the model node's input check,
which LangGraph runs in the same superstep as the tools, and which lost the race: the mails went out.

F2: ``Command(goto=[Send("tools", ...), Send("tools", ...)])``, one half of the clause in each ``Send``: no check ever
read the two calls together.

The handler now judges a Command input's calls, each and all of them joined, at the graph's start, before any node
runs. `GuardMiddleware` never sees the raw Command: it judges each ``Send``'s call with the state the client wrote
for it (docs/langchain.md), and blocks with the handler beside it.

The judge is scripted (rt71b's `clause_verdict`: unsafe only when the judged turn holds the whole clause), and gives
its unsafe verdicts late (`LateBlocks`), so that a joined reading that races the tools loses, every time: the race
does not decide these tests. The agents, tools, middleware and handlers are real.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from faults import ScriptedBackend
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, Send
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware
from test_rt71b_tool_call_context import HALVES, clause_verdict

sys.path.insert(0, str(Path(__file__).parent / "langchain"))
from lc_fakes import SAFE_ANSWER, scripted  # noqa: E402

MODES = ["sync", "async"]
TRIES = 3
LATE_S = 0.3
ASK = HumanMessage("Mail Bob my notes.")
HARMLESS = ["See you at noon.", "Bring the slides."]


class LateBlocks(ScriptedBackend):
    """`ScriptedBackend` whose unsafe verdicts come ``LATE_S`` late (safe ones at once): a blocking check that runs
    beside the tools ends after they ran. Records each judged conversation with the bodies mailed by then."""

    def __init__(self, sent: list[str]) -> None:
        super().__init__(clause_verdict, name="scripted")
        self.sent = sent
        self.read: list[tuple[str, list[str]]] = []  # (the judged turn, the bodies mailed before it was judged)
        self.handler: Any = None  # the run's handler (`run`)

    def _late(self, conversations: Any) -> bool:
        for conversation in conversations:
            self.read.append((str(conversation[-1]["content"]), list(self.sent)))
        return any("Unsafe" in clause_verdict(c) for c in conversations)

    def classify(self, conversations: Any, *, timeout: Any = None) -> Any:
        if self._late(conversations):
            time.sleep(LATE_S)
        return super().classify(conversations, timeout=timeout)

    async def aclassify(self, conversations: Any, *, timeout: Any = None) -> Any:
        if self._late(conversations):
            await asyncio.sleep(LATE_S)
        return await super().aclassify(conversations, timeout=timeout)


def mail_tool(mode: str) -> tuple[Any, list[str]]:
    """A real ``send_email`` tool (async under ``ainvoke``: it runs on the loop, beside the model node), and the
    bodies it sent."""
    sent: list[str] = []
    if mode == "async":

        @tool
        async def send_email(to: str, body: str) -> str:
            """Send an e-mail."""
            sent.append(body)
            return "Message delivered."

        return send_email, sent

    @tool
    def send_email(to: str, body: str) -> str:  # noqa: F811
        """Send an e-mail."""
        sent.append(body)
        return "Message delivered."

    return send_email, sent


def call(i: int, body: str) -> dict[str, Any]:
    return {"name": "send_email", "args": {"to": "bob@example.org", "body": body}, "id": f"c{i}", "type": "tool_call"}


def update_command(bodies: list[str], text: str = "") -> Command:
    """F1: the client writes an answer asking for one mail per body, and jumps to the tools."""
    answer = AIMessage(text, tool_calls=[call(i, body) for i, body in enumerate(bodies)])
    return Command(update={"messages": [ASK, answer]}, goto="tools")


def send_payload(shape: str, i: int, body: str) -> Any:
    """One call as a ``Send`` to ``create_agent``'s tools node, in each form its ``ToolNode`` reads."""
    one = call(i, body)
    state = {"messages": [ASK, AIMessage("", tool_calls=[one])]}
    if shape == "with_context":
        return {"__type": "tool_call_with_context", "tool_call": one, "state": state}
    return [one] if shape == "calls" else state


def sends_command(bodies: list[str], shape: str = "with_context") -> Command:
    """F2: one ``Send`` per body, each asking for its own mail; the update writes the harmless request only."""
    sends = [Send("tools", send_payload(shape, i, body)) for i, body in enumerate(bodies)]
    return Command(update={"messages": [ASK]}, goto=sends)


class _AtToolStart:
    """Notes the checks the handler builds for a call at its tool's start (none for a call judged at the graph's)."""

    at_tool_start: list[Any]

    def _tool_call_item(self, *args: Any, **kwargs: Any) -> Any:
        item = super()._tool_call_item(*args, **kwargs)
        if item is not None:
            self.at_tool_start.append(item)
        return item


class CountingHandler(_AtToolStart, GuardCallbackHandler):
    pass


class AsyncCountingHandler(_AtToolStart, AsyncGuardCallbackHandler):
    pass


def run(inputs: Command, mode: str, *, handler: bool = True, middleware: bool = False) -> tuple[list[str], Any, Any]:
    """What the agent's ``send_email`` mailed for the client's ``inputs``, the judge, and the stop raised (or None)."""
    send_email, sent = mail_tool(mode)
    judge = LateBlocks(sent)
    guard = Guard(judge, cache_size=0)
    agent = create_agent(
        scripted(SAFE_ANSWER, SAFE_ANSWER),
        [send_email],
        middleware=[GuardMiddleware(guard)] if middleware else [],
        checkpointer=InMemorySaver(),
    )
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    if handler:
        judge.handler = CountingHandler(guard) if mode == "sync" else AsyncCountingHandler(guard)
        judge.handler.at_tool_start = []
        config["callbacks"] = [judge.handler]
    try:
        if mode == "sync":
            agent.invoke(inputs, config)
        else:
            asyncio.run(agent.ainvoke(inputs, config))
    except GuardViolation as stop:
        return sent, judge, stop
    return sent, judge, None


# -- F1: the calls of an answer the client writes ---------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_clients_answer_splitting_a_clause_over_two_calls_mails_nothing(mode: str) -> None:
    for _ in range(TRIES):
        sent, _, stopped = run(update_command(HALVES), mode)
        assert sent == [] and stopped is not None


@pytest.mark.parametrize("mode", MODES)
def test_a_clients_answer_splitting_a_clause_over_its_text_and_call_mails_nothing(mode: str) -> None:
    for _ in range(TRIES):
        sent, _, stopped = run(update_command(HALVES[1:], text=HALVES[0]), mode)
        assert sent == [] and stopped is not None


@pytest.mark.parametrize("mode", MODES)
def test_the_middleware_blocks_a_clients_split_calls_too(mode: str) -> None:
    """Control: `GuardMiddleware` judges the state's answer, its calls joined, before the tool runs."""
    for inputs in (update_command(HALVES), update_command(HALVES[1:], text=HALVES[0])):
        sent, _, _ = run(inputs, mode, handler=False, middleware=True)
        assert sent == []


# -- F2: the calls of a Command's Sends ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["with_context", "calls", "state"])
@pytest.mark.parametrize("mode", MODES)
def test_a_clause_split_over_two_sends_mails_nothing(mode: str, shape: str) -> None:
    for _ in range(TRIES):
        sent, _, stopped = run(sends_command(HALVES, shape), mode)
        assert sent == [] and stopped is not None


@pytest.mark.parametrize("mode", MODES)
def test_the_middleware_with_the_handler_beside_it_mails_nothing_for_split_sends(mode: str) -> None:
    """The middleware judges each ``Send``'s call with the state the client wrote for it alone (documented): the
    handler in the run's config reads the Command's calls together."""
    sent, _, stopped = run(sends_command(HALVES), mode, middleware=True)
    assert sent == [] and stopped is not None


# -- controls: harmless client calls run, judged once, before they run ------------------------------------------
def _read_before_mail(judge: LateBlocks, bodies: list[str]) -> int:
    """How many checks read exactly ``bodies`` of the harmless ones, before anything was mailed."""
    return sum(1 for turn, before in judge.read if not before and [b for b in HARMLESS if b in turn] == bodies)


def harmless(kind: str, calls: int) -> Command:
    return update_command(HARMLESS[:calls]) if kind == "update" else sends_command(HARMLESS[:calls])


@pytest.mark.parametrize("calls", [1, 2])
@pytest.mark.parametrize("kind", ["update", "send"])
@pytest.mark.parametrize("mode", MODES)
def test_a_clients_harmless_calls_still_run(mode: str, kind: str, calls: int) -> None:
    sent, _, stop = run(harmless(kind, calls), mode)
    assert (sorted(sent), stop) == (sorted(HARMLESS[:calls]), None)


@pytest.mark.parametrize("kind", ["update", "send"])
@pytest.mark.parametrize("mode", MODES)
def test_a_clients_harmless_call_is_judged_at_the_graphs_start_not_again_at_its_tools(mode: str, kind: str) -> None:
    """No extra check for one call: judged before it runs, at the graph's start, and not again when its tool starts (a
    joined reading of one call alone is that call's). The update's answer is read again by the model node, as before."""
    sent, judge, _ = run(harmless(kind, 1), mode)
    assert sent == HARMLESS[:1]
    assert _read_before_mail(judge, HARMLESS[:1]) >= 1
    assert judge.handler.at_tool_start == []


@pytest.mark.parametrize("kind", ["update", "send"])
@pytest.mark.parametrize("mode", MODES)
def test_a_clients_two_harmless_calls_are_read_each_and_joined_before_either_runs(mode: str, kind: str) -> None:
    """One extra check for two calls: their joined reading."""
    sent, judge, _ = run(harmless(kind, 2), mode)
    assert sorted(sent) == sorted(HARMLESS)
    assert all(_read_before_mail(judge, [one]) >= 1 for one in HARMLESS)
    assert _read_before_mail(judge, HARMLESS) >= 1
    assert judge.handler.at_tool_start == []
