"""rt67m2 F3: where guard_output stands in its chain, beyond rt67p's refusals (tests/langchain/test_lc_rt67p_wiring.py).

A false refusal: ``model | StrOutputParser() | RunnableParallel(a=guard_output(guard) | f)`` raised `TypeError`
though guard_output got the model's parsed answer (the first step of the inner sequence gets the parser's text).
LangChain tells a step nothing of what runs around its own sequence (its tag and its parent's run id only; with no
callbacks no handler hears the runs above it), so the sequence the user invoked and one a branch after the model feeds
look the same: the text of a message (StrOutputParser's output) now counts as a model's answer wherever the step
stands, and a plain string first in a sequence is still refused, with the way to place the guard.

What is left (xfail, strict): a guard_output below a wrapper or after a step that is no guard_input passes the
question on and the model after it answers unjudged; nothing the step can read tells where it stands.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableBranch, RunnableLambda, RunnableParallel, RunnablePassthrough
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, scripted
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import guard_input, guard_output

HARM = f"Sure. {UNSAFE_CLAUSE}"
HOWS = ["invoke", "ainvoke", "stream", "astream", "batch", "abatch"]


def text_of(value: Any) -> str:
    """The text in what the consumer got: a string, a message, or a RunnableParallel's dict of them."""
    if isinstance(value, dict):
        return "".join(text_of(v) for v in value.values())
    return value if isinstance(value, str) else str(getattr(value, "content", value))


def run(chain: Any, how: str, value: Any, delivered: list[str]) -> None:
    """Run ``chain`` on ``value`` by ``how``; what reaches the consumer, chunk by chunk, goes to ``delivered``."""
    if how == "invoke":
        delivered.append(text_of(chain.invoke(value)))
    elif how == "batch":
        delivered.extend(text_of(v) for v in chain.batch([value]))
    elif how == "stream":
        for chunk in chain.stream(value):
            delivered.append(text_of(chunk))
    else:

        async def drive() -> None:
            if how == "ainvoke":
                delivered.append(text_of(await chain.ainvoke(value)))
            elif how == "abatch":
                delivered.extend(text_of(v) for v in await chain.abatch([value]))
            else:
                async for chunk in chain.astream(value):
                    delivered.append(text_of(chunk))

        asyncio.run(drive())


def nothing_of_the_clause(delivered: list[str]) -> None:
    """At most the answer's safe opening reached the consumer: not one character of the unsafe clause."""
    text = "".join(delivered)
    assert HARM.startswith(text) and len(text) <= len("Sure. "), text


def same(text: Any) -> Any:
    return text


# -- the false refusal: a branch after the model, fed the parser's text ----------------------------------------------
AFTER_THE_PARSER = {
    "model | parser | {a: guard_output | f}": lambda guard, model: (
        model | StrOutputParser() | RunnableParallel(a=guard_output(guard) | RunnableLambda(same))
    ),
    "model | parser | RunnableBranch(guard_output | f)": lambda guard, model: (
        model
        | StrOutputParser()
        | RunnableBranch((lambda _: True, guard_output(guard) | RunnableLambda(same)), RunnablePassthrough())
    ),
    "model | parser | (guard_output | f).with_fallbacks": lambda guard, model: (
        model
        | StrOutputParser()
        | (guard_output(guard) | RunnableLambda(same)).with_fallbacks(
            [RunnableLambda(same)], exceptions_to_handle=(ConnectionError,)
        )
    ),
    "model | parser | (guard_output | f).with_retry": lambda guard, model: (
        model | StrOutputParser() | (guard_output(guard) | RunnableLambda(same)).with_retry()
    ),
    "model | parser | {a: guard_input | guard_output | f}": lambda guard, model: (
        model | StrOutputParser() | RunnableParallel(a=guard_input(guard) | guard_output(guard) | RunnableLambda(same))
    ),
}
#: Where a stream's chunks are added up before guard_output (``str + str``: RunnableBranch and with_fallbacks stream
#: their whole input, guard_input passes it on whole), the text's type is lost and the plain string is refused.
ADDED_UP = "the stream's chunks are added up before guard_output: a plain string, taken for the chain's input"
STREAMS_ADDED_UP = {
    "model | parser | RunnableBranch(guard_output | f)",
    "model | parser | (guard_output | f).with_fallbacks",
    "model | parser | {a: guard_input | guard_output | f}",
}
CASES = [
    pytest.param(shape, how, marks=[pytest.mark.xfail(strict=True, reason=ADDED_UP)])
    if shape in STREAMS_ADDED_UP and how in ("stream", "astream")
    else pytest.param(shape, how)
    for shape in AFTER_THE_PARSER
    for how in HOWS
]


@pytest.mark.parametrize(("shape", "how"), CASES)
def test_guard_output_fed_the_parsers_text_judges_the_answer(shape: str, how: str) -> None:
    guard, _ = keyword_guard()
    delivered: list[str] = []
    run(AFTER_THE_PARSER[shape](guard, scripted(SAFE_ANSWER)), how, SAFE_QUESTION, delivered)
    assert "".join(delivered) == SAFE_ANSWER
    delivered.clear()
    with pytest.raises(GuardViolation):
        run(AFTER_THE_PARSER[shape](guard, scripted(HARM)), how, SAFE_QUESTION, delivered)
    nothing_of_the_clause(delivered)


@pytest.mark.parametrize("how", HOWS)
def test_an_answers_text_handed_to_a_chain_that_starts_with_guard_output_is_judged(how: str) -> None:
    # The application's own answer, as StrOutputParser gives it (the message's text), into a chain of its own.
    guard, _ = keyword_guard()
    chain = guard_output(guard) | RunnableLambda(same)
    delivered: list[str] = []
    run(chain, how, AIMessage(SAFE_ANSWER).text, delivered)
    assert "".join(delivered) == SAFE_ANSWER
    delivered.clear()
    with pytest.raises(GuardViolation):
        run(chain, how, AIMessage(HARM).text, delivered)
    nothing_of_the_clause(delivered)


@pytest.mark.parametrize("how", HOWS)
def test_a_plain_string_first_in_a_branch_is_refused_with_the_way_to_place_the_guard(how: str) -> None:
    # A function's plain string looks like the user's input to the step: still refused, and the message says how to
    # judge the answer before the branches.
    guard, _ = keyword_guard()
    model = scripted(HARM)
    chain = model | RunnableLambda(lambda m: str(m.content)) | RunnableParallel(a=guard_output(guard) | same)
    delivered: list[str] = []
    with pytest.raises(TypeError) as refused:
        run(chain, how, SAFE_QUESTION, delivered)
    assert "model | guard_output(guard) | parser" in str(refused.value)
    nothing_of_the_clause(delivered)


# -- guard_output before the model inside a wrapper: refused, the model never asked -----------------------------------
INSIDE_A_WRAPPER = {
    "(guard_output | model).with_retry()": lambda guard, model: (guard_output(guard) | model).with_retry(),
    "(guard_output | model).with_fallbacks": lambda guard, model: (guard_output(guard) | model).with_fallbacks(
        [guard_output(guard) | model]
    ),
    "RunnableBranch default guard_output | model": lambda guard, model: RunnableBranch(
        (lambda _: False, guard_output(guard) | model), guard_output(guard) | model
    ),
    "RunnableBranch branch guard_output | model": lambda guard, model: RunnableBranch(
        (lambda _: True, guard_output(guard) | model), guard_output(guard) | model
    ),
}


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("shape", list(INSIDE_A_WRAPPER))
def test_guard_output_before_the_model_inside_a_wrapper_is_refused(shape: str, how: str) -> None:
    guard, _ = keyword_guard()
    model = scripted(HARM, HARM, HARM)
    delivered: list[str] = []
    with pytest.raises(TypeError) as refused:
        run(INSIDE_A_WRAPPER[shape](guard, model), how, SAFE_QUESTION, delivered)
    assert "prompt | model | guard_output(guard)" in str(refused.value)
    assert delivered == [] and model.seen == []


# -- left: nothing the step can read tells where it stands ------------------------------------------------------------
NOT_TOLD = "LangChain tells a step only its own tag and its parent's run id: where its sequence stands is unknown"
UNTOLD = {
    "guard_output.with_fallbacks | model": lambda guard, model: (
        guard_output(guard).with_fallbacks([RunnableLambda(same)]) | model
    ),
    "RunnablePassthrough | guard_output | model": lambda guard, model: (
        RunnablePassthrough() | guard_output(guard) | model
    ),
    "{x: guard_output} | pick | model": lambda guard, model: (
        RunnableParallel(x=guard_output(guard)) | RunnableLambda(lambda d: d["x"]) | model
    ),
    "RunnableBranch(default=guard_output) | model": lambda guard, model: (
        RunnableBranch((lambda _: False, RunnablePassthrough()), guard_output(guard)) | model
    ),
}


@pytest.mark.xfail(strict=True, reason=NOT_TOLD)
@pytest.mark.parametrize("how", ["invoke", "astream"])
@pytest.mark.parametrize("shape", list(UNTOLD))
def test_guard_output_before_the_model_where_no_step_tells_it(shape: str, how: str) -> None:
    guard, _ = keyword_guard()
    model = scripted(HARM)
    delivered: list[str] = []
    with pytest.raises(TypeError):
        run(UNTOLD[shape](guard, model), how, SAFE_QUESTION, delivered)
    nothing_of_the_clause(delivered)
