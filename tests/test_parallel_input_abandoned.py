"""rt51b F8: an input check beside the LLM that nobody waits for any more leaves no unread error behind.

A run abandoned before its input verdict (a client that disconnects) never read the check task's error:
asyncio logged "Task exception was never retrieved" for each such request, a line a client could repeat at will
in the operator's log. The demo guard judges; an oversized prompt makes its check fail (InputTooLarge).
"""

from __future__ import annotations

import asyncio

import pytest
from qwenguard.core import Guard, InputTooLarge
from qwenguard.core.streaming.parallel import PendingCheck
from unread_errors import unread_errors

BIG = "What is the capital of France? " * 200


async def _unread_after(run) -> list[str]:
    """The loop's reports of errors nobody read while ``run()`` ran and its leftovers were collected."""
    async with unread_errors() as unread:
        await run()
    return unread


async def test_an_abandoned_check_logs_nothing():
    guard = Guard.from_pretrained("demo", max_chars=2000)

    async def run() -> None:
        pending = PendingCheck.start_async(guard.acheck_prompt(BIG))
        for _ in range(3):
            await asyncio.sleep(0)
        assert pending.done()
        del pending  # the run went away without waiting for its verdict

    assert await _unread_after(run) == []


async def test_a_cancelled_race_logs_nothing():
    """`PendingCheck.guard` cancelled by its caller while the verdict task has already failed."""
    guard = Guard.from_pretrained("demo", max_chars=2000)

    async def run() -> None:
        pending = PendingCheck.start_async(guard.acheck_prompt(BIG))
        never = asyncio.get_running_loop().create_future()
        racer = asyncio.ensure_future(pending.guard(never, wait=False))
        for _ in range(3):
            await asyncio.sleep(0)
        racer.cancel()
        with pytest.raises((asyncio.CancelledError, InputTooLarge)):
            await racer
        del pending, racer

    assert await _unread_after(run) == []


async def test_the_error_still_reaches_whoever_waits():
    guard = Guard.from_pretrained("demo", max_chars=2000)
    pending = PendingCheck.start_async(guard.acheck_prompt(BIG))
    await asyncio.sleep(0)
    with pytest.raises(InputTooLarge):
        await pending.wait_async()
    with pytest.raises(InputTooLarge):
        pending.wait()
