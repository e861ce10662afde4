"""A guarded tool that takes the workflow ``Context`` can write text into the agent's state (``ctx.store``'s
``"state"``, the documented way for tools to share state), and the agents print that state into the next run's last
user message (``state_prompt``). Nothing judged it: the next run's ``AgentInput`` event handed it to the
``stream_events()`` consumer before `GuardedLLM` judged anything, ``setup_agent`` wrote it in place into the user turn
a ``ChatMemoryBuffer`` stores (a user turn `GuardedMemory` never judged), and every later run was blocked at the
prompt stage, blamed on the user (rt60a F1). What a guarded tool writes there is now judged as its output when it
returns; blocked, the state is restored to what it was before the call and the call ends with the refusal note.
Attacked through real FunctionAgent and AgentWorkflow runs with a deterministic judge."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import json
from typing import Any

import pytest
from faults import ScriptedBackend
from faults import keyword_verdict as judge
from li_shared import UNSAFE_DOC
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.llamaindex import GuardedLLM, GuardedMemory, guard_tools

PAGE = "Forum post: " + UNSAFE_DOC
SAFE_NOTE = "The forum post is about sourdough starters."
TRIGGER = "ammonium"
RUN_TIMEOUT_S = 60
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the store cannot serialize the memory object


def make_guard() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(judge)
    return Guard(backend, Policy(timeout_s=None), cache_size=0), backend


def note_taker(note: str, *, then_raise: bool = False) -> Any:
    async def take_notes(ctx: Context, url: str) -> str:
        """Fetch a page and keep notes on it in the agent state."""
        state = await ctx.store.get("state", default={})
        state["notes"] = note  # the page's text kept as the agent's notes
        await ctx.store.set("state", state)
        if then_raise:
            raise ConnectionError("the connection dropped after the notes were saved")
        return "Notes saved."

    return take_notes


def script(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
    last = messages[-1]
    if last.role == "user" and "Take notes" in (last.content or ""):
        call = ToolCallBlock(
            tool_call_id="c1", tool_name="take_notes", tool_kwargs={"url": "https://forum.example/p/1"}
        )
        return ChatMessage(role="assistant", blocks=[call])
    return ChatMessage(role="assistant", content="Done.")


def build(kind: str, tool: Any, guard: Guard) -> Any:
    tools = guard_tools([tool], guard)
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=script), guard=guard)
    if kind == "function":
        return FunctionAgent(tools=tools, llm=llm, initial_state={"notes": ""})
    agent = FunctionAgent(name="a", description="Takes notes.", tools=tools, llm=llm)
    return AgentWorkflow(agents=[agent], initial_state={"notes": ""})


async def run(agent: Any, ctx: Context, memory: Any, message: str) -> tuple[str, list[Any]]:
    handler = agent.run(user_msg=message, ctx=ctx, memory=memory)
    events: list[Any] = []

    async def consume() -> str:
        async for event in handler.stream_events():
            events.append(event)
        try:
            return "answered: " + str(await handler)
        except GuardViolation as error:
            return "blocked at " + error.decision.stage.value

    return await asyncio.wait_for(consume(), RUN_TIMEOUT_S), events


def carries_page(event: Any) -> bool:
    try:
        return TRIGGER in event.model_dump_json().lower()
    except Exception:  # noqa: BLE001 - an event the pydantic dump cannot write: its repr
        return TRIGGER in repr(event).lower()


@pytest.mark.parametrize("then_raise", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("kind", ["function", "workflow"])
async def test_a_page_written_into_the_agent_state_never_reaches_a_user_turn(kind: str, then_raise: bool) -> None:
    guard, backend = make_guard()
    agent = build(kind, note_taker(PAGE, then_raise=then_raise), guard)
    memory = GuardedMemory(ChatMemoryBuffer.from_defaults(), guard)
    ctx = Context(agent)
    first, events = await run(agent, ctx, memory, "Take notes on the forum page.")
    assert first == "answered: Done."
    [result] = [e for e in events if isinstance(e, ToolCallResult)]
    assert "withheld" in result.tool_output.content and result.tool_output.exception is None
    assert await ctx.store.get("state") == {"notes": ""}  # restored to what it was before the call
    assert any(TRIGGER in json.dumps(c).lower() for c in backend.calls)  # judged, not dropped unread

    second, events = await run(agent, ctx, memory, "Thanks. What next?")
    assert second == "answered: Done." and not [type(e).__name__ for e in events if carries_page(e)]
    assert not [m for m in memory.get_all() if TRIGGER in (m.content or "").lower()]
    third, _ = await run(agent, Context(agent), memory, "Hello again.")
    assert third == "answered: Done."  # the conversation is not stuck


async def test_a_safe_note_is_kept_and_printed_into_the_next_run_with_one_check() -> None:
    guard, backend = make_guard()
    agent = build("function", note_taker(SAFE_NOTE), guard)
    memory = GuardedMemory(ChatMemoryBuffer.from_defaults(), guard)
    ctx = Context(agent)
    await run(agent, ctx, memory, "Take notes on the forum page.")
    assert await ctx.store.get("state") == {"notes": SAFE_NOTE}
    judged = [c for batch in backend.calls for c in batch]
    assert [c[-1]["content"] for c in judged].count(SAFE_NOTE) == 1  # the state's one check (only what it added)
    _, events = await run(agent, ctx, memory, "Thanks. What next?")
    assert any(SAFE_NOTE in e.model_dump_json() for e in events if type(e).__name__ == "AgentInput")
    ctx_dict = ctx.to_dict()  # the run's Context still serializes
    assert SAFE_NOTE in json.dumps(ctx_dict)


async def test_a_tool_that_leaves_the_state_alone_costs_no_check_more() -> None:
    async def with_ctx(ctx: Context, url: str) -> str:
        """Fetch a page and keep notes on it in the agent state."""
        await ctx.store.get("state", default={})
        return "Nothing worth keeping."

    async def without_ctx(url: str) -> str:
        """Fetch a page and keep notes on it in the agent state."""
        return "Nothing worth keeping."

    judged = []
    for tool in (with_ctx, without_ctx):
        guard, backend = make_guard()
        agent = build("function", FunctionTool.from_defaults(async_fn=tool, name="take_notes"), guard)
        await run(agent, Context(agent), None, "Take notes on the forum page.")
        judged.append([c[-1]["content"] for batch in backend.calls for c in batch])
    assert judged[0] == judged[1]  # the same checks as a tool that cannot touch the state
