"""rt51f F8 and F6: a sync tool called from async code (``tool.invoke`` inside an async step or lambda, on the event
loop's own thread) while a parallel input check is still pending.

The tool must wait for the input's verdict, but that check is a task on the very loop the tool holds: waiting for
it would never end, and the hook raised `RuntimeError`, so a SAFE prompt failed. Now the input is judged on the
tool's thread instead (holding the loop, as the sync tool itself does): a safe prompt runs the tool, a blocked one
does not. The demo guard's verdicts, slowed by `DelayedBackend` so that the tool starts before the verdict.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from faults import DelayedBackend
from langchain.agents import create_agent
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_core.tools import tool
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_PROMPT, scripted, tool_call
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardRunnable

EMAIL = {"to": "bob@example.com", "body": "The capital of France is Paris."}


class HeldBackend(DelayedBackend):
    """A real backend whose async checks wait until ``may_answer`` is set (polled on the loop: waiting in a
    thread would take the very executor thread the test watches)."""

    def __init__(self, inner: Any, may_answer: threading.Event) -> None:
        super().__init__(inner, 0.0, [])
        self.may_answer = may_answer

    async def aclassify(self, conversations: Any, *, timeout: float | None = None) -> Any:
        for _ in range(6000):  # a hang detector: 60 s
            if self.may_answer.is_set():
                break
            await asyncio.sleep(0.01)
        return await super().aclassify(conversations, timeout=timeout)


@pytest.fixture
def slow_guard(guard: Guard) -> Guard:
    # cache_size=0: every check pays the delay, whatever ran before in this session.
    return Guard(DelayedBackend(guard.backend, 0.3, []), guard.policy, cache_size=0, parallel_input=True)


def _sync_tool_step(tools: Any) -> RunnableLambda:
    async def step(_: Any) -> str:
        return tools.send_email.invoke(EMAIL)  # a sync tool call on the loop's thread

    return RunnableLambda(step)


async def test_guard_runnable_runs_a_sync_tool_for_a_safe_prompt(slow_guard, tools):
    guarded = GuardRunnable(_sync_tool_step(tools), slow_guard, parallel_input=True, check_output=False)
    assert await guarded.ainvoke(SAFE_QUESTION) == "Message delivered."
    assert tools.calls["send_email"] == 1


async def test_guard_runnable_runs_no_sync_tool_for_a_blocked_prompt(slow_guard, tools):
    guarded = GuardRunnable(_sync_tool_step(tools), slow_guard, parallel_input=True, check_output=False)
    with pytest.raises(GuardViolation) as stopped:
        await guarded.ainvoke(UNSAFE_PROMPT)
    assert stopped.value.decision.stage is Stage.PROMPT
    assert tools.calls["send_email"] == 0


def _beside_the_model(tools: Any) -> RunnableParallel:
    model = scripted(SAFE_ANSWER)
    return RunnableParallel(answer=model, mail=_sync_tool_step(tools))


async def test_callback_handler_runs_a_sync_tool_beside_the_model_for_a_safe_prompt(slow_guard, tools):
    handler = AsyncGuardCallbackHandler(slow_guard, parallel_input=True)
    messages: list[BaseMessage] = [HumanMessage(SAFE_QUESTION)]
    out = await _beside_the_model(tools).ainvoke(messages, config={"callbacks": [handler]})
    assert out["mail"] == "Message delivered." and tools.calls["send_email"] == 1


async def test_callback_handler_runs_no_sync_tool_beside_the_model_for_a_blocked_prompt(slow_guard, tools):
    handler = AsyncGuardCallbackHandler(slow_guard, parallel_input=True)
    messages: list[BaseMessage] = [HumanMessage(UNSAFE_PROMPT)]
    with pytest.raises(GuardViolation) as stopped:
        await _beside_the_model(tools).ainvoke(messages, config={"callbacks": [handler]})
    assert stopped.value.decision.stage is Stage.PROMPT
    assert tools.calls["send_email"] == 0


# -- rt51f F6: an async run's tool waits on the loop, not on a thread of the loop's default executor ----------------
async def test_async_tools_waiting_for_the_verdict_leave_the_default_executor_free(guard, tools):
    """The tool waits were a sync handler, run on the loop's default executor: each waiting tool held one of its
    threads until the verdict, and every ``asyncio.to_thread`` of the process (the guard's own off-loop work too)
    queued behind them. With one executor thread, an unrelated ``to_thread`` call must not wait for the verdict."""
    verdict_may_come = threading.Event()  # the input's verdict is held until the unrelated call has returned
    slow = Guard(HeldBackend(guard.backend, verdict_may_come), guard.policy, cache_size=0, parallel_input=True)
    ran: list[str] = []

    @tool
    async def lookup(query: str) -> str:
        """Look something up."""
        ran.append(query)
        return "Sunny."

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    model = scripted(tool_call("lookup", {"query": "weather"}, text="Looking."), "Sunny.")
    agent = create_agent(model, [lookup])
    guarded = GuardRunnable(agent, slow, parallel_input=True, check_output=False)
    run = asyncio.create_task(guarded.ainvoke({"messages": [{"role": "user", "content": SAFE_QUESTION}]}))
    while not model.seen:  # the model has asked for the tool...
        assert not run.done()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # ...and the tool waits for the verdict (later on a loaded machine: never a failure)
    assert not ran and not run.done()
    # The verdict comes only after this call: a tool wait holding the one thread would hang it (a hang
    # detector, not a timing bound).
    await asyncio.wait_for(asyncio.to_thread(lambda: None), timeout=30)
    assert not ran and not run.done()
    verdict_may_come.set()
    await run
    assert ran == ["weather"]


def test_a_sync_runs_tools_wait_without_an_event_loop_each(slow_guard, tools, monkeypatch):
    """rt52e F8: the async tool wait was added to sync runs too, where LangChain cannot await it: it made an event
    loop for every tool call to find it had nothing to do."""
    made: list[int] = []
    real_init = asyncio.Runner.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(asyncio.Runner, "__init__", counting)
    step = RunnableLambda(lambda _: [tools.web_search.invoke({"query": "France"}) for _ in range(5)][-1])
    GuardRunnable(step, slow_guard, parallel_input=True, check_output=False).invoke(SAFE_QUESTION)
    assert tools.calls["web_search"] == 5 and made == []
