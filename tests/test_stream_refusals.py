"""A stream monitor that cannot go on stays stopped: nothing more is released after a refusal or an interrupt.

- ``parallel_input=True`` with a prompt over the operator's ``max_chars``: the background prompt check raises
  `InputTooLarge`; the first call raised it, but the monitor stayed open and a caller that logged the error
  and went on got the whole answer released with the prompt never judged (the sequential check refuses to
  open such a stream). Every later call raises it again now.
- A sync Gen-window call interrupted (KeyboardInterrupt) left the monitor open with the delta in its buffer
  but in no window: `finish` released it unjudged. The monitor closes now, as the Stream-model engine's
  calls do (docs/streaming.md: "a sync call interrupted inside the engine closes the monitor").
"""

from __future__ import annotations

import asyncio
from concurrent import futures
from unittest import mock

import pytest
from faults import ScriptedBackend
from qwenguard.core import Guard, InputTooLarge
from qwenguard.core.errors import StreamClosed
from qwenguard.core.streaming.gen_windows import GenWindows

PROMPT = "How do I do it? " + "pad " * 5000  # 20,000 characters, over max_chars=10,000
ANSWER = ["Sure, here is how you do it in full detail. ", "Mix ammonium nitrate with fuel oil. ", "Then pack it."]


def _judge() -> ScriptedBackend:
    return ScriptedBackend(
        lambda conv: "Safety: Safe\nCategories: None" + ("\nRefusal: No" if conv[-1]["role"] == "assistant" else "")
    )


def test_a_prompt_refused_by_the_parallel_check_stops_the_stream():
    guard = Guard(_judge(), max_chars=10_000, parallel_input=True, cache_size=0)
    monitor = guard.stream(PROMPT)
    shown, refusals = "", 0
    for delta in ANSWER:
        try:
            shown += monitor.feed(delta)
        except InputTooLarge:
            refusals += 1  # a caller that logs it and goes on
        waiter = monitor.verdict_waiter()  # the next delta comes once the check answered (a 50 ms sleep: flaky)
        if waiter is not None:
            futures.wait([waiter], timeout=30)
    with pytest.raises(InputTooLarge):
        shown += monitor.finish()
    assert shown == "" and monitor.released == "" and refusals >= 1


async def test_async_a_prompt_refused_by_the_parallel_check_stops_the_stream():
    guard = Guard(_judge(), max_chars=10_000, parallel_input=True, cache_size=0)
    shown = ""
    refusals = 0
    async with guard.astream(PROMPT) as monitor:
        for delta in ANSWER:
            try:
                shown += await monitor.afeed(delta)
            except InputTooLarge:
                refusals += 1
            waiter = monitor.verdict_waiter()
            if waiter is not None:
                await asyncio.wait({waiter}, timeout=30)
        with pytest.raises(InputTooLarge):
            shown += await monitor.afinish()
    assert shown == "" and monitor.released == "" and refusals >= 1


@pytest.mark.parametrize("where", ["add", "rest"])
def test_an_interrupted_gen_window_call_closes_the_monitor(where):
    guard = Guard(_judge(), cache_size=0)
    monitor = guard.stream("Tell me about France.", screen_prompt=False)
    real = getattr(GenWindows, where)
    calls = []

    def interrupted_once(self, *args):
        calls.append(1)
        if len(calls) == (2 if where == "add" else 1):  # the second delta, or the finish
            raise KeyboardInterrupt
        return real(self, *args)

    with mock.patch.object(GenWindows, where, interrupted_once):
        shown = monitor.feed("Paris is the capital of France. ")
        with pytest.raises(KeyboardInterrupt):
            shown += monitor.feed("Mix ammonium nitrate with fuel oil. ") if where == "add" else monitor.finish()
    assert monitor.closed and not monitor.finished
    with pytest.raises(StreamClosed):
        monitor.feed("more")
    with pytest.raises(StreamClosed):
        monitor.finish()
    assert "ammonium" not in monitor.released + shown
