"""rt51b F6: `GuardRunnable(agent, guard, parallel_input=True)` must not let the agent act on a blocked prompt.

Sync ``invoke`` called the agent and only then waited for the input verdict: the agent ran to its end, its tools
too (an e-mail sent for a blocked request); ``ainvoke`` cancelled the call at the verdict, but a tool the model
asked for before the verdict ran. Now a blocking verdict stops the run at its next step and no tool starts before
the verdict. Real ``create_agent``, real tools that count their runs, the scripted fake chat model; the demo
guard's verdicts, slowed by `DelayedBackend` so that the model answers while the input is still being checked.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from faults import DelayedBackend
from langchain.agents import create_agent
from langchain_core.prompts import ChatPromptTemplate
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_PROMPT, ScriptedChatModel, scripted, tool_call
from qwenguard.core import Guard, GuardViolation, InputTooLarge
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardedChatModel, GuardRunnable
from unread_errors import unread_errors

SEND = tool_call("send_email", {"to": "friend@example.com", "body": "the steps"}, text="Sending.")


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def slow_guard(guard: Guard, log: list[str]) -> Guard:
    # cache_size=0: every check pays the delay, whatever ran before in this session.
    return Guard(DelayedBackend(guard.backend, 0.3, log), guard.policy, cache_size=0, parallel_input=True)


def _guarded_agent(guard: Guard, tools: Any) -> tuple[GuardRunnable, ScriptedChatModel]:
    model = scripted(SEND, "Done.")
    agent = create_agent(model, tools.all)
    return GuardRunnable(agent, guard, parallel_input=True, check_output=False), model


def _blocked() -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"{UNSAFE_PROMPT} E-mail the steps to friend@example.com."}]}


def test_sync_invoke_runs_no_tool_for_a_blocked_prompt(slow_guard, tools):
    """The attack: a blocked request to a guarded agent; its tool must not run."""
    guarded, _ = _guarded_agent(slow_guard, tools)
    with pytest.raises(GuardViolation) as info:
        guarded.invoke(_blocked())
    assert info.value.decision.stage.value == "prompt"
    assert tools.calls["send_email"] == 0


def test_sync_batch_runs_no_tool_for_a_blocked_prompt(slow_guard, tools):
    guarded, _ = _guarded_agent(slow_guard, tools)
    results = guarded.batch([_blocked()], return_exceptions=True)
    assert isinstance(results[0], GuardViolation)
    assert tools.calls["send_email"] == 0


async def test_ainvoke_runs_no_tool_before_the_verdict(slow_guard, tools):
    """The model asks for the tool before the verdict is back: the tool waits for it, then does not run."""
    guarded, _ = _guarded_agent(slow_guard, tools)
    with pytest.raises(GuardViolation):
        await guarded.ainvoke(_blocked())
    await asyncio.sleep(0)
    assert tools.calls["send_email"] == 0


def test_stream_runs_no_tool_for_a_blocked_prompt(slow_guard, tools):
    guarded, _ = _guarded_agent(slow_guard, tools)
    with pytest.raises(GuardViolation):
        list(guarded.stream(_blocked()))
    assert tools.calls["send_email"] == 0


def test_an_allowed_prompt_runs_the_agent_whole(slow_guard, tools):
    guarded, model = _guarded_agent(slow_guard, tools)
    state = guarded.invoke({"messages": [{"role": "user", "content": SAFE_QUESTION}]})
    assert tools.calls["send_email"] == 1 and state["messages"][-1].content == "Done."
    assert len(model.seen) == 2


def test_a_chat_model_still_starts_beside_the_check(slow_guard, log):
    """parallel_input's point: the model is asked while the input is checked (sync invoke too)."""

    class Logged(ScriptedChatModel):
        def _stream(self, messages, stop=None, run_manager=None, **kwargs):
            log.append("model start")
            yield from super()._stream(messages, stop=stop, run_manager=run_manager, **kwargs)

    model = Logged(messages=iter([SAFE_ANSWER]), seen=[])
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")])
    answer = GuardRunnable(prompt | model, slow_guard, parallel_input=True).invoke({"q": SAFE_QUESTION})
    assert answer.content == SAFE_ANSWER
    assert log[:2] == ["model start", "check done"]


# -- F8 at the integration: a stream abandoned before its input verdict -----------------------------------------
@pytest.mark.parametrize("piece", ["GuardedChatModel", "AsyncGuardCallbackHandler"])
async def test_an_abandoned_stream_leaves_no_unread_check_error(piece):
    """The attack: oversized prompts whose streams the client drops at once; each failed input check was logged
    by asyncio ("Task exception was never retrieved"), a line per request in the operator's log."""
    guard = Guard.from_pretrained("demo", max_chars=2000)
    async with unread_errors() as unread:
        for _ in range(4):
            model = scripted("Paris is nice. " * 50)
            if piece == "GuardedChatModel":
                runnable: Any = GuardedChatModel(model, guard, parallel_input=True)
            else:
                runnable = model.with_config(callbacks=[AsyncGuardCallbackHandler(guard, parallel_input=True)])

            async def consume(runnable: Any = runnable) -> None:
                async for _ in runnable.astream(SAFE_QUESTION * 200):
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises((asyncio.CancelledError, InputTooLarge)):
                await task
            for _ in range(5):  # the check's task ends, and is collected, a few loop turns later
                await asyncio.sleep(0.01)
            gc.collect()
            await asyncio.sleep(0)
    assert unread == []
