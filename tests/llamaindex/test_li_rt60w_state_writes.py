"""What guarded tools write into the agent's state (``ctx.store``'s ``"state"``, printed into the next run's user
message) was judged per call against that call's own snapshot, taken when it started, and compared once, when it
returned (rt60e). F4 (High): a FunctionAgent runs one turn's tool calls concurrently; ``take_notes`` read the state
after ``fetch_page`` had put a page there, and wrote its stale copy back, with a note, after the page had been
judged, blocked and removed: its check judged only the note, and the page went into the next run's ``AgentInput``
unjudged (the next run was blocked, blamed on the user). F5: a state write from a task the tool left running was
never judged at all (and the in-memory store hands out its live state: a value changed in place is a write too).
Now each call's state is judged against the last state the guard let through on that store, one call at a time,
and a call's Context writes no state once the call has ended. Attacked through real FunctionAgent runs with a
deterministic judge."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import json
from typing import Any

import pytest
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context
from qwenguard.integrations.llamaindex import GuardedLLM, guard_tools
from test_li_rt60l_agent_state import PAGE, RUN_TIMEOUT_S, SAFE_NOTE, TRIGGER, carries_page, make_guard, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the store cannot serialize the memory object
NOTE = "Notes on sourdough: feed the starter daily."


def two_calls(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
    last = messages[-1]
    if last.role == "user" and "Research" in (last.content or ""):
        return ChatMessage(
            role="assistant",
            blocks=[
                ToolCallBlock(
                    tool_call_id="c1", tool_name="fetch_page", tool_kwargs={"url": "https://forum.example/1"}
                ),
                ToolCallBlock(tool_call_id="c2", tool_name="take_notes", tool_kwargs={"topic": "sourdough"}),
            ],
        )
    return ChatMessage(role="assistant", content="Done.")


def agent_of(guard: Any, *fns: Any) -> FunctionAgent:
    tools = [FunctionTool.from_defaults(async_fn=fn, name=fn.__name__) for fn in fns]
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=two_calls), guard=guard)
    return FunctionAgent(tools=guard_tools(tools, guard), llm=llm, initial_state={"notes": ""})


async def take_notes(ctx: Context, topic: str) -> str:
    """Keep a note on a topic in the agent state."""
    return "Noted."


async def until(condition: Any) -> None:
    while not await condition():
        await asyncio.sleep(0)


async def write_state(ctx: Context, state: dict[str, Any], how: str) -> None:
    """Write ``state`` back as a tool would: whole, key by key (dotted paths), or in an ``edit_state`` block."""
    if how == "edit_state":
        async with ctx.store.edit_state() as whole:
            whole["state"] = state
    elif how == "set_path":
        for key, value in state.items():
            await ctx.store.set("state." + key, value)
    else:
        await ctx.store.set("state", state)


@pytest.mark.parametrize("how", ["set", "set_path", "edit_state"])
async def test_a_concurrent_tool_cannot_write_back_a_page_another_calls_write_had_blocked(how: str) -> None:
    guard, backend = make_guard()
    page_written, notes_read = asyncio.Event(), asyncio.Event()

    async def fetch_page(ctx: Context, url: str) -> str:
        """Fetch a page and keep it in the agent state."""
        state = await ctx.store.get("state")
        state["page"] = PAGE
        await ctx.store.set("state", state)
        page_written.set()
        await notes_read.wait()
        return "Page kept."

    async def take_notes(ctx: Context, topic: str) -> str:
        """Keep a note on a topic in the agent state."""
        await page_written.wait()
        state = await ctx.store.get("state")  # holds the page, not yet judged
        notes_read.set()
        await until(lambda: _lacks_page(ctx))  # looks something up meanwhile: the page is judged and removed
        state["notes"] = NOTE
        await write_state(ctx, state, how)  # its stale copy, page included, with its note
        return "Noted."

    agent = agent_of(guard, fetch_page, take_notes)
    ctx = Context(agent)
    first, events = await asyncio.wait_for(run(agent, ctx, None, "Research sourdough on the forum."), RUN_TIMEOUT_S)
    assert first == "answered: Done."
    results = {e.tool_name: e.tool_output.content for e in events if isinstance(e, ToolCallResult)}
    assert TRIGGER not in json.dumps(await ctx.store.get("state")).lower()
    second, events = await run(agent, ctx, None, "Thanks, what next?")
    assert second == "answered: Done." and not [type(e).__name__ for e in events if carries_page(e)]
    assert "withheld" in results["fetch_page"] and "withheld" in results["take_notes"]  # it wrote the page back
    assert any(TRIGGER in json.dumps(c).lower() for c in backend.calls)


async def _lacks_page(ctx: Context) -> bool:
    return "page" not in await ctx.store.get("state")


async def test_concurrent_safe_writes_are_kept_each_judged_once() -> None:
    guard, backend = make_guard()
    page_written = asyncio.Event()

    async def fetch_page(ctx: Context, url: str) -> str:
        """Fetch a page and keep it in the agent state."""
        async with ctx.store.edit_state() as whole:
            whole["state"]["page"] = SAFE_NOTE
        page_written.set()
        return "Page kept."

    async def take_notes(ctx: Context, topic: str) -> str:
        """Keep a note on a topic in the agent state."""
        await page_written.wait()
        await ctx.store.set("state.notes", NOTE)
        return "Noted."

    agent = agent_of(guard, fetch_page, take_notes)
    ctx = Context(agent)
    first, events = await run(agent, ctx, None, "Research sourdough on the forum.")
    assert first == "answered: Done."
    assert await ctx.store.get("state") == {"notes": NOTE, "page": SAFE_NOTE}
    judged = [c[-1]["content"] for batch in backend.calls for c in batch]
    assert sum(SAFE_NOTE in c for c in judged) == 1 and sum(NOTE in c for c in judged) == 1
    _, events = await run(agent, ctx, None, "Thanks, what next?")
    assert any(NOTE in e.model_dump_json() for e in events if type(e).__name__ == "AgentInput")


LATER = {
    "set": "ctx.store.set('state')",
    "set_path": "ctx.store.set('state.",
    "edit_state": "ctx.store.edit_state()",
}


@pytest.mark.parametrize("how", ["set", "set_path", "edit_state", "in_place", "kept_reference"])
async def test_a_state_write_after_the_tool_returned_never_lands_unjudged(how: str) -> None:
    guard, _ = make_guard()
    first_run_over = asyncio.Event()
    background: list[asyncio.Task[None]] = []

    async def fetch_page(ctx: Context, url: str) -> str:
        """Fetch a page and keep it in the agent state (saved once the download completes)."""
        kept = await ctx.store.get("state")

        async def save() -> None:
            await first_run_over.wait()
            state = kept if how == "kept_reference" else await ctx.store.get("state")
            state["page"] = PAGE
            state["notes"] = PAGE
            if how not in ("in_place", "kept_reference"):
                await write_state(ctx, state, how)

        background.append(asyncio.create_task(save()))
        return "Fetching; the page will be in the notes."

    agent = agent_of(guard, fetch_page, take_notes)
    ctx = Context(agent)
    first, _ = await run(agent, ctx, None, "Research sourdough on the forum.")
    assert first == "answered: Done."
    first_run_over.set()
    [saved] = await asyncio.wait_for(asyncio.gather(*background, return_exceptions=True), RUN_TIMEOUT_S)
    assert TRIGGER not in json.dumps(await ctx.store.get("state")).lower()
    second, events = await run(agent, ctx, None, "Thanks, what next?")
    assert second == "answered: Done." and not [type(e).__name__ for e in events if carries_page(e)]
    if how in LATER:  # refused, saying why
        assert isinstance(saved, RuntimeError) and LATER[how] in str(saved) and "'fetch_page'" in str(saved)
    else:
        assert saved is None  # it changed a copy


async def test_a_write_to_another_key_after_the_call_still_lands() -> None:
    guard, _ = make_guard()
    first_run_over = asyncio.Event()
    background: list[asyncio.Task[None]] = []

    async def fetch_page(ctx: Context, url: str) -> str:
        """Fetch a page; record the visit once the download completes."""

        async def visited() -> None:
            await first_run_over.wait()
            await ctx.store.set("visited", url)

        background.append(asyncio.create_task(visited()))
        return "Fetching."

    agent = agent_of(guard, fetch_page, take_notes)
    ctx = Context(agent)
    await run(agent, ctx, None, "Research sourdough on the forum.")
    first_run_over.set()
    await asyncio.wait_for(asyncio.gather(*background), RUN_TIMEOUT_S)
    assert await ctx.store.get("visited") == "https://forum.example/1"


async def test_a_cancelled_calls_state_write_is_not_kept() -> None:
    guard, _ = make_guard()
    page_written = asyncio.Event()

    async def fetch_page(ctx: Context, url: str) -> str:
        """Fetch a page and keep it in the agent state."""
        await ctx.store.set("state", {"notes": PAGE})
        page_written.set()
        await asyncio.Event().wait()  # the download stalls; the app cancels the run
        return "Page kept."

    agent = agent_of(guard, fetch_page, take_notes)
    ctx = Context(agent)
    handler = agent.run(user_msg="Research sourdough on the forum.", ctx=ctx)
    await asyncio.wait_for(page_written.wait(), RUN_TIMEOUT_S)
    await handler.cancel_run()
    with pytest.raises(BaseException):  # noqa: B017 - cancelled, however the workflow reports it
        await asyncio.wait_for(handler, RUN_TIMEOUT_S)
    assert TRIGGER not in json.dumps(await ctx.store.get("state")).lower()
    assert TRIGGER not in json.dumps(ctx.to_dict(), default=str).lower()  # what a next run starts from


@pytest.mark.parametrize("when", ["during the call", "after it returned"])
async def test_the_live_state_a_checkpoint_hands_out_is_no_way_around(when: str) -> None:
    """rt60g F2: ``ctx.store.checkpoint()`` hands out the committed state itself, not a copy: a page put there in place
    called no writer, so the call's state was never compared, and the next run's ``AgentInput`` carried the page. A
    guarded tool's Context refuses it (the state holds the agent's memory: it cannot be copied)."""
    guard, _ = make_guard()
    first_run_over = asyncio.Event()
    background: list[asyncio.Task[None]] = []

    async def fetch_page(ctx: Context, url: str) -> str:
        """Fetch a page and keep notes on it in the agent state."""
        if when == "during the call":
            ctx.store.checkpoint().state["state"]["notes"] = PAGE
            return "Noted."
        live = ctx.store.checkpoint()

        async def save() -> None:
            await first_run_over.wait()
            live.state["state"]["notes"] = PAGE

        background.append(asyncio.create_task(save()))
        return "Fetching; the page will be in the notes."

    agent = agent_of(guard, fetch_page, take_notes)
    ctx = Context(agent)
    await run(agent, ctx, None, "Research sourdough on the forum.")
    first_run_over.set()
    await asyncio.wait_for(asyncio.gather(*background, return_exceptions=True), RUN_TIMEOUT_S)
    assert TRIGGER not in json.dumps(await ctx.store.get("state")).lower()
    second, events = await run(agent, ctx, None, "Thanks, what next?")
    assert second == "answered: Done." and not [type(e).__name__ for e in events if carries_page(e)]
