"""Human in the loop: a guarded tool asks a person with ``ctx.wait_for_event(HumanResponseEvent,
waiter_event=InputRequiredEvent(...))`` and acts on the reply (sends it as an e-mail body). The reply is user input
no guard piece judged (not `GuardedLLM`, not `GuardedMemory`, not `guard_tools`, which judged only the tool's output
afterwards): the e-mail with the harmful text went out (rt60a F3). The Context a guarded tool is handed now judges
the reply at the prompt stage before the tool gets it, and the ``InputRequiredEvent`` the tool announces as its
output before it reaches the stream; blocked, ``wait_for_event`` raises `GuardViolation` and the call ends with
the refusal note. Events the tool streams with ``ctx.write_event_to_stream`` are judged the same way and released in
order. The Context stays the agent's own: ``isinstance`` holds, and a paused run serializes and resumes.
Attacked through real FunctionAgent runs with a deterministic judge."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import json
from typing import Any

import pytest
from faults import ScriptedBackend
from faults import keyword_verdict as judge
from li_shared import UNSAFE_DOC
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context, Event, HumanResponseEvent, InputRequiredEvent, JsonPickleSerializer
from qwenguard.core import Guard, Policy
from qwenguard.integrations.llamaindex import GuardedLLM, guard_tools

TRIGGER = "ammonium"
SAFE_REPLY = "Lunch at noon on Friday?"
RUN_TIMEOUT_S = 60


def make_guard() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(judge)
    return Guard(backend, Policy(timeout_s=None), cache_size=0), backend


def email_tool(sent: list[str], seen: list[Any], question: str = "What should the email to {to} say?") -> Any:
    async def send_email(ctx: Context, to: str) -> str:
        """Send an email; asks the user what to write."""
        seen.append(isinstance(ctx, Context))
        answer = await ctx.wait_for_event(
            HumanResponseEvent, waiter_event=InputRequiredEvent(prefix=question.format(to=to))
        )
        sent.append(answer.response)
        return "Email sent."

    return send_email


def script(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
    if any(m.role == MessageRole.TOOL for m in messages):
        return ChatMessage(role="assistant", content="Done.")
    call = ToolCallBlock(tool_call_id="c1", tool_name="send_email", tool_kwargs={"to": "bob@example.com"})
    return ChatMessage(role="assistant", blocks=[call])


def build(tool: Any, guard: Guard) -> FunctionAgent:
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=script), guard=guard)
    return FunctionAgent(tools=guard_tools([tool], guard), llm=llm)


async def answered(agent: FunctionAgent, reply: str, ctx: Context | None = None) -> tuple[Any, list[Any]]:
    handler = agent.run(user_msg="Email Bob for me.", ctx=ctx)
    events: list[Any] = []

    async def consume() -> Any:
        async for event in handler.stream_events():
            events.append(event)
            if isinstance(event, InputRequiredEvent):
                handler.ctx.send_event(HumanResponseEvent(response=reply))  # the person's reply
        return await handler

    return await asyncio.wait_for(consume(), RUN_TIMEOUT_S), events


def judged(backend: ScriptedBackend) -> list[list[dict[str, str]]]:
    return [c for batch in backend.calls for c in batch]


async def test_a_harmful_reply_never_reaches_the_tool() -> None:
    guard, backend = make_guard()
    sent: list[str] = []
    answer, events = await answered(build(email_tool(sent, []), guard), UNSAFE_DOC)
    assert sent == []  # the tool never acted on it
    reads = [c for c in judged(backend) if TRIGGER in json.dumps(c).lower()]
    assert reads and all(c[-1]["role"] == "user" for c in reads)  # judged as the user's input
    [result] = [e for e in events if isinstance(e, ToolCallResult)]
    assert "withheld" in result.tool_output.content and TRIGGER not in result.tool_output.content.lower()
    assert str(answer) == "Done."


async def test_a_safe_reply_reaches_the_tool_through_the_agents_own_context() -> None:
    guard, backend = make_guard()
    sent: list[str] = []
    seen: list[Any] = []
    answer, events = await answered(build(email_tool(sent, seen), guard), SAFE_REPLY)
    assert sent == [SAFE_REPLY] and seen and all(seen)
    [result] = [e for e in events if isinstance(e, ToolCallResult)]
    assert result.tool_output.content == "Email sent." and str(answer) == "Done."
    assert [c[-1]["content"] for c in judged(backend)].count(SAFE_REPLY) == 1  # the reply's one check


async def test_a_harmful_question_never_reaches_the_stream() -> None:
    guard, _ = make_guard()
    sent: list[str] = []
    agent = build(email_tool(sent, [], question="Confirm: " + UNSAFE_DOC), guard)
    answer, events = await answered(agent, SAFE_REPLY)
    assert not [e for e in events if isinstance(e, InputRequiredEvent)] and sent == []
    assert not [e for e in events if TRIGGER in e.model_dump_json().lower()]
    [result] = [e for e in events if isinstance(e, ToolCallResult)]
    assert "withheld" in result.tool_output.content and str(answer) == "Done."


@pytest.mark.parametrize("reply", [SAFE_REPLY, UNSAFE_DOC], ids=["safe", "harmful"])
async def test_a_paused_run_serializes_and_resumes_judged(reply: str) -> None:
    guard, backend = make_guard()
    sent: list[str] = []
    agent = build(email_tool(sent, []), guard)
    handler = agent.run(user_msg="Email Bob for me.")
    saved = None
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            saved = handler.ctx.to_dict(serializer=JsonPickleSerializer())  # saved, to be answered later
            await handler.cancel_run()
            break
    assert saved is not None
    resumed = agent.run(ctx=Context.from_dict(agent, saved, serializer=JsonPickleSerializer()))
    resumed.ctx.send_event(HumanResponseEvent(response=reply))
    answer = await asyncio.wait_for(resumed, RUN_TIMEOUT_S)
    assert str(answer) == "Done." and sent == ([SAFE_REPLY] if reply == SAFE_REPLY else [])
    assert any(reply in json.dumps(c) for c in judged(backend))


class Progress(Event):
    """A custom event a tool streams while it works."""

    message: str


def progress_tool(messages: list[str], *, sync: bool) -> Any:
    def report(ctx: Context) -> None:
        for message in messages:
            ctx.write_event_to_stream(Progress(message=message))

    async def send_email(ctx: Context, to: str) -> str:
        """Send an email, reporting progress."""
        report(ctx)
        return "Email sent."

    def send_email_sync(ctx: Context, to: str) -> str:
        """Send an email, reporting progress."""
        report(ctx)  # from the worker thread LlamaIndex runs a sync function in
        return "Email sent."

    return FunctionTool.from_defaults(fn=send_email_sync, name="send_email") if sync else send_email


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_events_a_tool_streams_are_judged_before_the_stream_and_kept_in_order(sync: bool) -> None:
    guard, _ = make_guard()
    steps = ["Connecting to the mail server.", "Step 2: " + UNSAFE_DOC, "Message queued."]
    answer, events = await answered(build(progress_tool(steps, sync=sync), guard), SAFE_REPLY)
    shown = [e.message for e in events if isinstance(e, Progress)]
    assert shown == [steps[0], steps[2]]  # the blocked one withheld, the others in order
    assert not [e for e in events if TRIGGER in e.model_dump_json().lower()]
    [result] = [e for e in events if isinstance(e, ToolCallResult)]
    assert "withheld" in result.tool_output.content and str(answer) == "Done."
    assert events.index(result) > max(i for i, e in enumerate(events) if isinstance(e, Progress))

    safe = ["Connecting to the mail server.", "Message queued."]
    _, events = await answered(build(progress_tool(safe, sync=sync), make_guard()[0]), SAFE_REPLY)
    assert [e.message for e in events if isinstance(e, Progress)] == safe
    [result] = [e for e in events if isinstance(e, ToolCallResult)]
    assert result.tool_output.content == "Email sent."
