"""Async calls read a long history off the event loop (rt51b F7).

A client's 10,000-turn history was read into checks on the loop thread before anything was awaited, and before
``max_checks`` refused it: 0.3-1.7 s in which the loop answered nothing (`GuardedChatModel.ainvoke`,
``guard_input(...).ainvoke``, `AsyncGuardCallbackHandler`). Above a size, the checks are built on a worker thread;
a short input stays on the loop. Which thread builds them is recorded (the time it takes is not asserted)."""

from __future__ import annotations

import threading

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain_core.messages import AIMessage, HumanMessage
from lc_fakes import scripted
from qwenguard.core import Guard, InputTooLarge
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardedChatModel, _messages, guard_input

LONG = [HumanMessage(f"Question {i}?") if i % 2 == 0 else AIMessage(f"Answer {i}.") for i in range(10_000)]
SHORT = [HumanMessage("What is the capital of France?")]


@pytest.fixture()
def builders(monkeypatch):
    """The threads `input_items` runs on, wherever it is imported."""
    from qwenguard.integrations.langchain import callbacks, chat_model, runnables

    threads: list[threading.Thread] = []
    real = _messages.input_items

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    for module in (callbacks, chat_model, runnables):
        monkeypatch.setattr(module, "input_items", recording)
    return threads


def _guard() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict), max_checks=100)


async def _run(path: str, messages):
    guard = _guard()
    if path == "chat model":
        return await GuardedChatModel(scripted("Paris."), guard).ainvoke(messages)
    if path == "guard_input":
        return await guard_input(guard).ainvoke(messages)
    return await scripted("Paris.").ainvoke(messages, config={"callbacks": [AsyncGuardCallbackHandler(guard)]})


@pytest.mark.parametrize("path", ["chat model", "guard_input", "callback handler"])
async def test_a_long_history_is_read_off_the_event_loop(builders, path):
    loop_thread = threading.current_thread()
    with pytest.raises(InputTooLarge):  # 5,000 user turns, each a check: past max_checks, as before
        await _run(path, LONG)
    assert builders and loop_thread not in builders
    builders.clear()
    await _run(path, SHORT)
    assert builders == [loop_thread]
