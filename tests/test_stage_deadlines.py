"""rt52b F4: each stage's checks get that stage's deadline, also inside one batch.

The integrations judge every input of a model call in one batch (the user's turn at the prompt stage, a tool's
result at the tool_result stage). The batch ran, and its one-by-one retry too, under the shortest deadline of its
stages: with the pattern docs/api.md shows (a short deadline overall, a long and fail-open one for tool results),
a slow tool result failed open unjudged, for the prompt stage's sake, although its own stage had time to spare.
A scripted backend that takes a second for the long page (the time a real guard takes for it).
"""

from __future__ import annotations

import asyncio
import time

from faults import keyword_verdict
from qwenguard.core import Guard, Policy, Stage, StagePolicy
from qwenguard.core.errors import GuardTimeout
from qwenguard.core.formats.prompts import moderation_mode, parse_verdict

PAGE = "slow page: Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
ITEMS = [("prompt", "What is the capital of France?"), ("tool_result", PAGE)]


class PageTakesASecond:
    """Answers at once, but a call holding the page takes a second (and is a timeout under a shorter deadline)."""

    name = "paced"

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def _answers(self, conversations):
        return [parse_verdict(keyword_verdict(c), mode=moderation_mode(c), model=self.name) for c in conversations]

    def _delay(self, conversations) -> float:
        return 1.0 if any("slow page" in m["content"] for c in conversations for m in c) else 0.0

    def classify(self, conversations, *, timeout=None):
        self.timeouts.append(timeout)
        delay = self._delay(conversations)
        if timeout is not None and delay > timeout:
            time.sleep(timeout)
            raise GuardTimeout(f"no answer within {timeout} s")
        time.sleep(delay)
        return self._answers(conversations)

    async def aclassify(self, conversations, *, timeout=None):
        self.timeouts.append(timeout)
        delay = self._delay(conversations)
        if timeout is not None and delay > timeout:
            await asyncio.sleep(timeout)
            raise GuardTimeout(f"no answer within {timeout} s")
        await asyncio.sleep(delay)
        return self._answers(conversations)


def _guard() -> tuple[Guard, PageTakesASecond]:
    policy = Policy(timeout_s=0.3, stages={Stage.TOOL_RESULT: StagePolicy(on_error="allow", timeout_s=10)})
    backend = PageTakesASecond()
    return Guard(backend, policy, cache_size=0), backend


def test_a_slow_tool_result_is_judged_under_its_own_stages_deadline():
    guard, backend = _guard()
    prompt, page = guard.check_many(ITEMS)
    assert (prompt.allowed, prompt.reason) == (True, "safe")
    assert (page.allowed, page.reason, page.failed_open) == (False, "unsafe", False)
    assert sorted(backend.timeouts) == [0.3, 10]  # one call per deadline


def test_a_slow_tool_result_is_judged_under_its_own_stages_deadline_async():
    guard, backend = _guard()
    prompt, page = asyncio.run(guard.acheck_many(ITEMS))
    assert (prompt.allowed, prompt.reason) == (True, "safe")
    assert (page.allowed, page.reason, page.failed_open) == (False, "unsafe", False)
    assert sorted(backend.timeouts) == [0.3, 10]


def test_checks_of_one_deadline_stay_one_call():
    guard, backend = _guard()
    guard.check_many(
        [
            ("prompt", "Hello"),
            ("response", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]),
        ]
    )
    assert backend.timeouts == [0.3]
