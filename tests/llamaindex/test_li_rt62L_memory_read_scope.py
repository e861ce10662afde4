"""rt62b F1/F2, the same defect in `GuardedMemory`'s reads (fixer L's note): what a memory read adds to the stored
messages (a `Memory`'s blocks) was remembered once let through for any guard and policy, flags included, and
answered after ``guard.close()``: a stricter policy, or a closed guard, never judged that text again. It now answers
only for the same guard under an equal policy, only a plain allow, nothing after close (`ScopedSeen`), as
`GuardedLLM`'s memory does."""

import asyncio

import pytest
from faults import ScriptedBackend
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory import Memory
from llama_index.core.memory.memory_blocks import StaticMemoryBlock
from qwenguard.core import Guard, GuardUnavailable, GuardViolation, Policy, Stage, StagePolicy
from qwenguard.integrations.llamaindex import GuardedMemory

FACT = "The user's favourite chemistry topic is ammonium nitrate."


def controversial(conversation) -> str:
    """Controversial when the judged turn says "ammonium", else safe."""
    flagged = "ammonium" in conversation[-1]["content"]
    return "Safety: Controversial\nCategories: Violent" if flagged else "Safety: Safe\nCategories: None"


def _memory(policy: Policy, judge=controversial) -> tuple[GuardedMemory, Guard, ScriptedBackend]:
    backend = ScriptedBackend(judge, name="scripted")
    guard = Guard(backend, policy, cache_size=0)
    block = StaticMemoryBlock(name="core", static_content=FACT)
    memory = GuardedMemory(Memory.from_defaults(memory_blocks=[block], token_limit=4000), guard)
    memory.put(ChatMessage(role="user", content="Hello."))
    return memory, guard, backend


def _reads_of_fact(backend: ScriptedBackend) -> int:
    return sum(any("ammonium" in m["content"] for m in c) for batch in backend.calls for c in batch)


def _get(memory: GuardedMemory, how: str):
    return memory.get() if how == "sync" else asyncio.run(memory.aget())


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_flagged_block_is_told_again_and_blocked_once_the_policy_is_strict(how):
    memory, guard, backend = _memory(Policy(mode="loose"))
    _get(memory, how)
    _get(memory, how)
    assert _reads_of_fact(backend) == 2  # a flag is judged (and told) every time, not remembered
    guard.policy = Policy(mode="strict")
    with pytest.raises(GuardViolation):
        _get(memory, how)


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_block_let_through_is_judged_again_once_the_stage_is_turned_back_on(how):
    memory, guard, backend = _memory(Policy(stages={Stage.PROMPT: StagePolicy(enabled=False)}))
    _get(memory, how)  # the operator's "prompts unchecked" switch: let through unjudged
    guard.policy = Policy()  # checked from now on
    with pytest.raises(GuardViolation):
        _get(memory, how)


@pytest.mark.parametrize("how", ["sync", "async"])
def test_after_close_a_remembered_block_is_a_guard_error(how):
    memory, guard, backend = _memory(Policy(), judge=lambda conversation: "Safety: Safe\nCategories: None")
    _get(memory, how)
    _get(memory, how)
    assert _reads_of_fact(backend) == 1  # a plain allow: remembered for this guard and policy
    guard.close()
    with pytest.raises(GuardUnavailable) as raised:
        _get(memory, how)
    assert raised.value.decision.reason == "guard_error"
