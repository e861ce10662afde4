"""Running `Item`s through a Guard (one batch, sync and async) and naming what blocked.

Shared by the callback handlers, the agent middleware and the runnables so that all of them decide
the same way: every item of one step goes to the guard as one batch (`Guard.check_many`), and the
first blocking decision, in message order, is the one reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from qwenguard.core import Decision, Guard, Policy, Stage, enforce
from qwenguard.core.formats.conversations import RunsJudged

from .._common import require_guard
from .._off_loop import off_loop
from ._messages import AS_ANSWER, AS_INPUT, Item

__all__ = [
    "screen",
    "ascreen",
    "first_blocked",
    "raise_first",
    "blocked_pairs",
    "require_guard",
    "METADATA_KEY",
    "built_off_loop",
    "no_looser",
]

T = TypeVar("T")


#: Key under which a Decision is attached to message / document metadata.
METADATA_KEY = "qwenguard"


def screen(guard: Guard, items: Sequence[Item]) -> list[Decision]:
    """One Decision per item, in order, from one batched guard call (`no_looser` for the client's text)."""
    if not items:
        return []
    decisions = guard.check_many([_sent(guard.policy, item) for item in items])
    return [no_looser(guard.policy, item, d) for item, d in zip(items, decisions)]


async def ascreen(guard: Guard, items: Sequence[Item]) -> list[Decision]:
    """Async twin of `screen`."""
    if not items:
        return []
    decisions = await guard.acheck_many([_sent(guard.policy, item) for item in items])
    return [no_looser(guard.policy, item, d) for item, d in zip(items, decisions)]


def _sent(policy: Policy, item: Item) -> tuple[Stage, Any]:
    """The check as sent: a tool-result check of the client's text (`AS_INPUT`) goes under the prompt stage (under
    its own only when the prompt stage is off), so the guard decides the prompt stage's policy itself, with what it
    read in hand: a guard error's readable verdict (`QwenGuardError.readable`) blocks there as on a user's turn. Its
    own stage is decided from that outcome (`no_looser`). Re-deciding the prompt stage from a tool-stage Decision's
    error string lost the verdict, and a fail-open tool stage let through what the prompt stage blocks (rt54e E11)."""
    # RunsJudged: a run of consecutive user turns is judged joined here already (`_messages._UserRun`, with what a
    # blocked run withholds), so the core does not join it again into every turn's own check.
    if item.extra.get(AS_INPUT) and policy.enabled(Stage.PROMPT):
        return Stage.PROMPT, RunsJudged(item.conversation)
    # A structured output's schema call (`AS_ANSWER`) is the answer: asked under the response stage while it is on.
    if item.extra.get(AS_ANSWER) and policy.enabled(Stage.RESPONSE):
        return Stage.RESPONSE, RunsJudged(item.conversation)
    return item.stage, RunsJudged(item.conversation)


def no_looser(policy: Policy, item: Item, decision: Decision) -> Decision:
    """``decision`` on ``item``, for text that came with the input in a tool's role (`AS_INPUT`, sent under the prompt
    stage: `_sent`): the stricter of what the policy decides for the prompt stage (the guard's decision) and for its
    own stage on the same verdict (or the same guard error: ``on_error`` too). A client writes the message's shape,
    so it must not pick the looser of the two (rt54c F1: a request in a `ToolMessage` failed open under
    ``stages={TOOL_RESULT: StagePolicy(on_error="allow")}``). A block names the stage whose policy blocked, its own
    first. One check either way: only the decision is made twice.

    A structured output's schema call (`AS_ANSWER`, sent under the response stage) is decided as the answer it is:
    the response stage's decision, or the tool-call stage's where that one is stricter. A tool-call stage that ignores
    a category or is off no longer lets through the object the response stage blocks as text (rt57t)."""
    if item.extra.get(AS_ANSWER):
        return policy.decide_stricter(decision, Stage.RESPONSE, item.stage)
    if not item.extra.get(AS_INPUT):
        return decision
    own = policy.decide_again(decision, item.stage)
    return decision if own.allowed and not decision.allowed else own


def blocked_pairs(items: Sequence[Item], decisions: Sequence[Decision]) -> list[tuple[Item, Decision]]:
    return [(item, d) for item, d in zip(items, decisions) if not d.allowed]


def first_blocked(items: Sequence[Item], decisions: Sequence[Decision]) -> tuple[Item, Decision] | None:
    pairs = blocked_pairs(items, decisions)
    return pairs[0] if pairs else None


def raise_first(items: Sequence[Item], decisions: Sequence[Decision]) -> None:
    """Enforce the first blocking decision, in message order (raises `GuardViolation`); nothing if none."""
    found = first_blocked(items, decisions)
    if found is not None:
        enforce(found[1])


async def built_off_loop(make: Callable[[], T], value: Any) -> T:
    """``make()`` (an async call's checks built from ``value``): on a worker thread when ``value`` is large, so that
    reading a long history never holds the event loop; on the loop otherwise (a thread hop costs more there)."""
    return await off_loop(make, value)
