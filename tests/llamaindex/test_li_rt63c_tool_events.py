"""Events a guarded tool shows the user are decided as the user's answer is (rt63c F2).

A tool that takes the workflow ``Context`` writes events for ``handler.stream_events()``
(``ctx.write_event_to_stream``) and announces an ``InputRequiredEvent`` when it waits for a person
(``ctx.wait_for_event(..., waiter_event=...)``): both go to the user. They were decided under the tool-result stage's
policy alone, which an operator loosens for the pages the *model* reads, while the same page returned by a
``return_direct`` tool is decided under the stricter of the tool-result and response stages (rt60a F2): with the
tool-result stage ignoring Violent, the event's text reached the user. Now they are decided as that answer is:
``ignore_categories``, ``on_error`` and ``enabled`` of the response stage all hold.

Real FunctionAgent runs with guarded tools, a deterministic keyword judge (one that fails on "Zanzibar" for the
guard-error case)."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
from typing import Any

import pytest
from faults import PoisonedJudge, ScriptedBackend, keyword_verdict
from li_shared import UNSAFE_DOC
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context, Event, HumanResponseEvent, InputRequiredEvent
from qwenguard.core import Guard, Policy, Stage, StagePolicy
from qwenguard.integrations.llamaindex import GuardedLLM, guard_tools

RUN_TIMEOUT_S = 60
TRIGGER = "ammonium"
POISON = "Zanzibar"  # the judge fails on it (`PoisonedJudge`)
SAFE_STEP = "Connecting to the mail server."

# Each operator's setting loosens the tool-result stage only (for what the model reads); the response stage is the
# default, which blocks the event's text.
LOOSENED = {
    "ignored": (StagePolicy(ignore_categories=["Violent"]), UNSAFE_DOC),
    "fail_open": (StagePolicy(on_error="allow"), f"The page from {POISON} says hello."),
    "disabled": (StagePolicy(enabled=False), UNSAFE_DOC),
}


class Progress(Event):
    """A custom event a tool streams to the user while it works."""

    message: str


def make_guard(loosened: StagePolicy, text: str) -> Guard:
    backend = PoisonedJudge("raise") if POISON in text else ScriptedBackend(keyword_verdict)
    return Guard(backend, Policy(timeout_s=None, stages={Stage.TOOL_RESULT: loosened}), cache_size=0)


def progress_tool(steps: list[str], *, sync: bool) -> Any:
    def report(ctx: Context) -> None:
        for step in steps:
            ctx.write_event_to_stream(Progress(message=step))

    async def fetch(ctx: Context, url: str) -> str:
        """Fetch a page, showing the user what was fetched."""
        report(ctx)
        return "done"

    def fetch_sync(ctx: Context, url: str) -> str:
        """Fetch a page, showing the user what was fetched."""
        report(ctx)  # from the worker thread LlamaIndex runs a sync function in
        return "done"

    return FunctionTool.from_defaults(fn=fetch_sync, name="fetch") if sync else fetch


def asking_tool(question: str, replies: list[str]) -> Any:
    async def fetch(ctx: Context, url: str) -> str:
        """Ask the user before acting on a page."""
        reply = await ctx.wait_for_event(HumanResponseEvent, waiter_event=InputRequiredEvent(prefix=question))
        replies.append(reply.response)
        return "done"

    return fetch


def script(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
    if any(m.role == MessageRole.TOOL for m in messages):
        return ChatMessage(role="assistant", content="Done.")
    call = ToolCallBlock(tool_call_id="c1", tool_name="fetch", tool_kwargs={"url": "http://example.com"})
    return ChatMessage(role="assistant", blocks=[call])


async def shown_to_user(tool: Any, guard: Guard) -> tuple[list[Any], str]:
    """What the user's ``stream_events()`` loop gets from one run, and the run's answer."""
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=script), guard=guard)
    handler = FunctionAgent(tools=guard_tools([tool], guard), llm=llm).run(user_msg="Fetch http://example.com")
    events: list[Any] = []

    async def consume() -> Any:
        async for event in handler.stream_events():
            events.append(event)
            if isinstance(event, InputRequiredEvent):
                handler.ctx.send_event(HumanResponseEvent(response="yes"))
        return await handler

    answer = await asyncio.wait_for(consume(), RUN_TIMEOUT_S)
    return events, str(answer)


def chars_of(events: list[Any], text: str) -> int:
    """Characters of ``text`` the user's events carried."""
    return sum(len(text) for e in events if text in e.model_dump_json())


def refused(events: list[Any]) -> bool:
    [result] = [e for e in events if isinstance(e, ToolCallResult)]
    return "withheld" in result.tool_output.content


@pytest.mark.parametrize("setting", list(LOOSENED))
@pytest.mark.parametrize("sync", [False, True], ids=["async_tool", "sync_tool"])
async def test_a_streamed_event_is_decided_as_the_users_answer(setting: str, sync: bool) -> None:
    loosened, text = LOOSENED[setting]
    events, answer = await shown_to_user(progress_tool([SAFE_STEP, text], sync=sync), make_guard(loosened, text))
    assert chars_of(events, text) == 0 and refused(events) and answer == "Done."
    assert [e.message for e in events if isinstance(e, Progress)] == [SAFE_STEP]  # what passed still shown


@pytest.mark.parametrize("setting", list(LOOSENED))
async def test_an_announced_question_is_decided_as_the_users_answer(setting: str) -> None:
    loosened, text = LOOSENED[setting]
    replies: list[str] = []
    events, answer = await shown_to_user(
        asking_tool("The page says: " + text + " Go on?", replies), make_guard(loosened, text)
    )
    assert chars_of(events, text) == 0 and refused(events) and answer == "Done."
    assert not [e for e in events if isinstance(e, InputRequiredEvent)] and replies == []


async def test_safe_events_still_reach_the_user_under_a_loosened_stage() -> None:
    loosened, _ = LOOSENED["ignored"]
    replies: list[str] = []
    events, _ = await shown_to_user(progress_tool([SAFE_STEP], sync=False), make_guard(loosened, SAFE_STEP))
    assert [e.message for e in events if isinstance(e, Progress)] == [SAFE_STEP] and not refused(events)
    events, _ = await shown_to_user(asking_tool("Go on?", replies), make_guard(loosened, SAFE_STEP))
    assert [e.prefix for e in events if isinstance(e, InputRequiredEvent)] == ["Go on?"] and replies == ["yes"]
    assert TRIGGER not in " ".join(e.model_dump_json() for e in events)
