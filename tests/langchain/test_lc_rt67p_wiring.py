"""rt67g F1, F3: two LangChain wiring slips that let the model answer unguarded, silently.

F1: ``guard_output`` placed before the model (``guard_output(guard) | model``, ``guard_input(guard) |
guard_output(guard) | model``) judged the user's question as an answer, let it through, and the model's unsafe
answer reached the consumer; after a prompt template it judged the prompt as an answer (a false block). Now such a
step refuses with a `TypeError` that shows ``prompt | model | guard_output(guard)``, before the model is asked;
the chains that hand it an answer (a model's message, a parser's string, a function's) work as before.

F3: the handler class in ``callbacks`` (``GuardCallbackHandler``, its ``(guard)`` forgotten): LangChain read the
inherited ``ignore_*`` properties on the class, truthy, skipped every event, and the model answered unguarded. Now
the class raises a `TypeError` naming ``GuardCallbackHandler(guard)`` before the run starts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, UNSAFE_PROMPT, scripted
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import (
    AsyncGuardCallbackHandler,
    GuardCallbackHandler,
    guard_input,
    guard_output,
)

HARM = f"Sure. {UNSAFE_CLAUSE}"
HOWS = ["invoke", "ainvoke", "stream", "astream", "batch", "abatch"]


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else str(getattr(value, "content", value))


def run(chain: Any, how: str, value: Any, config: dict[str, Any] | None = None) -> str:
    """What the consumer gets from ``chain`` on ``value`` by ``how``, as text."""
    if how == "invoke":
        return text_of(chain.invoke(value, config))
    if how == "batch":
        return "".join(text_of(v) for v in chain.batch([value], config))
    if how == "stream":
        return "".join(text_of(c) for c in chain.stream(value, config))

    async def drive() -> str:
        if how == "ainvoke":
            return text_of(await chain.ainvoke(value, config))
        if how == "abatch":
            return "".join(text_of(v) for v in await chain.abatch([value], config))
        return "".join([text_of(c) async for c in chain.astream(value, config)])

    return asyncio.run(drive())


# -- F1: guard_output before the model --------------------------------------------------------------------------------
PROMPT = ChatPromptTemplate.from_messages([("user", "{question}")])
MISPLACED = {
    "guard_output | model": (lambda guard, model: guard_output(guard) | model, SAFE_QUESTION),
    "guard_input | guard_output | model": (
        lambda guard, model: guard_input(guard) | guard_output(guard) | model,
        SAFE_QUESTION,
    ),
    "guard_input | guard_input | guard_output | model": (
        lambda guard, model: guard_input(guard) | guard_input(guard) | guard_output(guard) | model,
        SAFE_QUESTION,
    ),
    "prompt | guard_output | model": (
        lambda guard, model: PROMPT | guard_output(guard) | model,
        {"question": SAFE_QUESTION},
    ),
}


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("shape", list(MISPLACED))
def test_guard_output_before_the_model_is_refused_before_the_model_answers(guard: Guard, shape: str, how: str) -> None:
    # The newcomer's chain: the model would answer HARM, and the step before it judged the question as an answer.
    build, question = MISPLACED[shape]
    model = scripted(HARM)
    delivered: list[str] = []
    with pytest.raises(TypeError) as refused:
        delivered.append(run(build(guard, model), how, question))
    assert "prompt | model | guard_output(guard)" in str(refused.value)
    assert delivered == [] and model.seen == []  # the model was never asked: nothing of its answer went out


@pytest.mark.parametrize("how", HOWS)
def test_guard_output_right_after_the_model_still_blocks_its_answer(guard: Guard, how: str) -> None:
    chain = guard_input(guard) | PROMPT | scripted(HARM) | guard_output(guard)
    delivered: list[str] = []
    with pytest.raises(GuardViolation):
        delivered.append(run(chain, how, {"question": SAFE_QUESTION}))
    assert delivered == []


ANSWERED = {
    # A parser's string, a function's answer, a model's message handed to a sub-chain that starts with guard_output.
    "model | parser | guard_output": lambda guard, reply: scripted(reply) | StrOutputParser() | guard_output(guard),
    "function | guard_output": lambda guard, reply: RunnableLambda(lambda _: reply) | guard_output(guard),
    "model | (guard_output | parser) as a sub-chain": lambda guard, reply: (
        scripted(reply) | (guard_output(guard) | StrOutputParser()).with_config(run_name="checked")
    ),
}


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("shape", list(ANSWERED))
def test_chains_that_hand_guard_output_an_answer_are_not_refused(guard: Guard, shape: str, how: str) -> None:
    assert run(ANSWERED[shape](guard, SAFE_ANSWER), how, SAFE_QUESTION) == SAFE_ANSWER
    delivered: list[str] = []
    with pytest.raises(GuardViolation):
        delivered.append(run(ANSWERED[shape](guard, HARM), how, SAFE_QUESTION))
    assert delivered == []


@pytest.mark.parametrize("how", HOWS)
def test_guard_output_alone_or_first_on_a_models_message_judges_it(guard: Guard, how: str) -> None:
    # An answer the application got elsewhere: as a string to guard_output alone (documented), or as the model's
    # message to a chain that starts with it.
    assert run(guard_output(guard), how, SAFE_ANSWER) == SAFE_ANSWER
    with pytest.raises(GuardViolation):
        run(guard_output(guard), how, HARM)
    with pytest.raises(GuardViolation):
        run(guard_output(guard) | StrOutputParser(), how, AIMessage(HARM))


# -- F3: the handler class in callbacks -------------------------------------------------------------------------------
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("handler", [GuardCallbackHandler, AsyncGuardCallbackHandler], ids=lambda c: c.__name__)
@pytest.mark.parametrize("target", ["model", "chain"])
def test_the_handler_class_in_callbacks_stops_the_run(handler: type, target: str, how: str) -> None:
    model = scripted(HARM)
    runnable: Any = model if target == "model" else PROMPT | model | StrOutputParser()
    value: Any = UNSAFE_PROMPT if target == "model" else {"question": UNSAFE_PROMPT}
    delivered: list[str] = []
    with pytest.raises(TypeError) as refused:
        delivered.append(run(runnable, how, value, {"callbacks": [handler]}))
    assert f"{handler.__name__}(guard)" in str(refused.value)
    assert delivered == [] and model.seen == []  # raised before the model was asked


def test_the_handler_class_reads_as_usual_to_introspection(guard: Guard) -> None:
    # hasattr / inspect read the class: the switch's error is an AttributeError to them, and a handler's is False.
    assert not hasattr(GuardCallbackHandler, "ignore_llm")
    assert not hasattr(AsyncGuardCallbackHandler, "ignore_chat_model")
    handler = GuardCallbackHandler(guard)
    assert (handler.ignore_llm, handler.ignore_chain, handler.ignore_chat_model, handler.ignore_retry) == (
        False,
        False,
        False,
        False,
    )
