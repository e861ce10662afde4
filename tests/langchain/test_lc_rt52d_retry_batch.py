"""rt52d F5: ``with_retry().batch`` / ``abatch`` must not re-roll a blocked input.

LangChain's ``RunnableRetry`` batch runs every pending input with ``return_exceptions=True``, then asks the retry
predicate about the first failed input only: when that one failed with a retryable error (a provider hiccup), every
input without a result ran again, the one the guard blocked too: its model was asked again and its second answer
(one the guard missed) came back in the blocked one's place. The guarded model's and `GuardRunnable`'s
``with_retry`` now batch one retried call per input. A chat model that fails once for one question, the demo guard.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel, GuardRunnable

FLAKY = "What is the capital of France?"
BLOCKED = "Tell me a story."
REROLLED = "Here it is, phrased so that the guard misses it."
PROMPT = ChatPromptTemplate.from_messages([("human", "{q}")])


class FlakyModel(BaseChatModel):
    """Fails once for `FLAKY` (a provider hiccup: retrying it is right); answers `BLOCKED` unsafely the first time
    and with a re-rolled answer after; counts what it was asked (``asked``)."""

    asked: Any = None

    @property
    def _llm_type(self) -> str:
        return "flaky"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        question = messages[-1].text
        self.asked[question] += 1
        if question == FLAKY and self.asked[question] == 1:
            raise ConnectionError("provider hiccup")
        if question == BLOCKED:
            text = UNSAFE_CLAUSE if self.asked[question] == 1 else REROLLED
        else:
            text = SAFE_ANSWER
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])


RETRIED: dict[str, Callable[[Any, Any], Any]] = {
    "GuardedChatModel.with_retry": lambda guard, model: GuardedChatModel(model, guard).with_retry(
        wait_exponential_jitter=False
    ),
    "GuardRunnable.with_retry": lambda guard, model: GuardRunnable(model, guard).with_retry(
        wait_exponential_jitter=False
    ),
    "prompt | GuardedChatModel.with_retry": lambda guard, model: (
        PROMPT | GuardedChatModel(model, guard).with_retry(wait_exponential_jitter=False)
    ),
    "with_retry.with_config": lambda guard, model: (
        GuardedChatModel(model, guard).with_retry(wait_exponential_jitter=False).with_config(run_name="guarded")
    ),
}


def _inputs(shape: str) -> list[Any]:
    return [{"q": FLAKY}, {"q": BLOCKED}] if shape.startswith("prompt") else [FLAKY, BLOCKED]


@pytest.mark.parametrize("how", ["batch", "abatch"])
@pytest.mark.parametrize("shape", sorted(RETRIED))
def test_a_retried_batch_does_not_ask_again_for_a_blocked_input(guard, shape, how):
    """The user's action: a retry for a flaky provider around the guarded model, a batch of two requests."""
    model = FlakyModel(asked=collections.Counter())
    retrying = RETRIED[shape](guard, model)
    if how == "batch":
        out = retrying.batch(_inputs(shape), return_exceptions=True)
    else:
        out = asyncio.run(retrying.abatch(_inputs(shape), return_exceptions=True))
    assert model.asked[BLOCKED] == 1  # no re-roll
    assert isinstance(out[1], GuardViolation)
    assert model.asked[FLAKY] == 2 and out[0].content == SAFE_ANSWER  # the hiccup is still retried


def test_a_retried_batch_without_return_exceptions_raises_the_stop(guard):
    model = FlakyModel(asked=collections.Counter())
    with pytest.raises(GuardViolation):
        GuardedChatModel(model, guard).with_retry(wait_exponential_jitter=False).batch([FLAKY, BLOCKED])
    assert model.asked[BLOCKED] == 1


def test_the_documented_way_to_batch_a_chain_retried_with_retryable(guard):
    """Around a chain, ``with_retry(retry_if_exception_type=retryable)`` is LangChain's own, whose batch re-runs a
    blocked input after another input's retryable failure; the docs' way: one retried call per input."""
    from langchain_core.runnables import RunnableLambda
    from qwenguard.integrations.langchain import guard_output, retryable

    model = FlakyModel(asked=collections.Counter())
    chain = (PROMPT | model | guard_output(guard)).with_retry(
        retry_if_exception_type=retryable, wait_exponential_jitter=False
    )
    out = RunnableLambda(chain.invoke).batch([{"q": FLAKY}, {"q": BLOCKED}], return_exceptions=True)
    assert model.asked[BLOCKED] == 1 and isinstance(out[1], GuardViolation)
    assert out[0].content == SAFE_ANSWER
