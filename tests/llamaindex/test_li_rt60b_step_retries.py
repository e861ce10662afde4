"""A LlamaIndex workflow step's ``retry_policy`` retries every error by default, the guard's stop too: the step
asks the guarded model again after its answer was blocked. `retryable` (docs/llamaindex.md) keeps the stop."""

# No `from __future__ import annotations`: workflows inspect step annotations at runtime.

import asyncio

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import UNSAFE_CLAUSE, ScriptedLLM
from qwenguard.core import Guard, GuardViolation, retryable
from qwenguard.integrations.llamaindex import GuardedLLM
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent
from workflows.retry_policy import retry_if_exception, retry_policy, stop_after_attempt, wait_none


def answering_workflow(llm: GuardedLLM, policy) -> Workflow:
    class Answer(Workflow):
        @step(retry_policy=policy)
        async def answer(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=str(await llm.acomplete(ev.question)))

    return Answer(timeout=30)


@pytest.mark.parametrize(
    "retry",
    [None, retry_if_exception(retryable)],
    ids=["retries every error (LlamaIndex's default)", "retryable"],
)
def test_a_step_retry_policy_asks_again_after_a_stop_unless_it_takes_retryable(retry) -> None:
    model = ScriptedLLM(chunks=[UNSAFE_CLAUSE])
    guard = Guard(ScriptedBackend(keyword_verdict, name="keywords"), cache_size=0)
    policy = retry_policy(retry=retry, wait=wait_none(), stop=stop_after_attempt(3))
    workflow = answering_workflow(GuardedLLM(llm=model, guard=guard), policy)

    async def run() -> None:
        await workflow.run(question="Tell me about fertiliser.")

    with pytest.raises(GuardViolation):
        asyncio.run(run())
    assert model.calls == (1 if retry is not None else 3)
