"""rt51b F1, F4: what `guard_input` / `GuardRunnable` judge of a chain's input.

F1: a dict input's value that is not text (a nested dict, a set, bytes) was skipped, but the prompt template
after the step prints it with ``str()``: the model read a request the guard never judged. A list of documents
(the usual RAG input) crashed deep in LangChain. F4: ``check_input=False`` was ignored by ``stream`` /
``astream``. Real prompt templates, the scripted fake chat model (records what it read), the demo guard.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION, UNSAFE_PROMPT, scripted
from qwenguard.core import Guard, GuardViolation, InputTooLarge
from qwenguard.integrations.langchain import GuardRunnable, guard_input

PROMPT = ChatPromptTemplate.from_messages([("human", "{q}")])
RAG = ChatPromptTemplate.from_messages([("system", "Answer from:\n{context}"), ("human", "{question}")])

# A client's JSON field that is an object, an array of one string, or bytes, where the app expects a string.
SHAPES = {"nested dict": {"text": UNSAFE_PROMPT}, "set": {UNSAFE_PROMPT}, "bytes": UNSAFE_PROMPT.encode()}


def _piece(kind: str, guard: Guard, model: Any) -> Any:
    return guard_input(guard) | PROMPT | model if kind == "guard_input" else GuardRunnable(PROMPT | model, guard)


@pytest.mark.parametrize("kind", ["guard_input", "GuardRunnable"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_value_the_template_prints_is_judged_as_printed(guard, kind, shape):
    """The attack: the unsafe request sent as an object instead of a string; the model must not read it."""
    model = scripted(SAFE_ANSWER)
    with pytest.raises(GuardViolation) as info:
        _piece(kind, guard, model).invoke({"q": SHAPES[shape]})
    assert info.value.decision.stage.value == "prompt"
    assert model.seen == []  # the model never read it


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_a_value_the_template_prints_is_judged_async_and_streamed(guard, shape):
    model = scripted(SAFE_ANSWER, SAFE_ANSWER)
    step = guard_input(guard) | PROMPT | model
    with pytest.raises(GuardViolation):
        await step.ainvoke({"q": SHAPES[shape]})
    with pytest.raises(GuardViolation):
        [chunk async for chunk in step.astream({"q": SHAPES[shape]})]
    assert model.seen == []


def test_a_safe_printed_value_passes_unchanged(guard):
    value = {"q": {"text": SAFE_QUESTION}, "n": 3, "flag": True, "none": None}
    assert guard_input(guard).invoke(value) == value


def test_a_printed_value_is_bounded_as_any_input():
    guard = Guard.from_pretrained("demo", max_chars=500)
    with pytest.raises(InputTooLarge):
        guard_input(guard).invoke({"q": {"text": "x" * 600}})


def test_a_list_of_documents_is_judged_as_retrieved_content(guard):
    """The usual RAG input, ``{"context": docs, "question": q}``: it crashed (NotImplementedError in
    convert_to_messages); a document with injected instructions is caught as retrieved content."""
    model = scripted(SAFE_ANSWER, SAFE_ANSWER)
    chain = guard_input(guard) | RAG | model
    good = [Document("Paris is the capital of France.", metadata={"source": "atlas"})]
    answer = chain.invoke({"context": good, "question": SAFE_QUESTION})
    assert answer.content == SAFE_ANSWER
    with pytest.raises(GuardViolation) as info:
        chain.invoke({"context": [*good, Document(INJECTION)], "question": SAFE_QUESTION})
    assert info.value.decision.stage.value == "retrieval"
    assert len(model.seen) == 1


ID_SHAPES = {
    "metadata doc_id": Document("Paris is the capital of France.", metadata={"doc_id": INJECTION}),
    "metadata id": Document("Paris is the capital of France.", metadata={"id": INJECTION}),
    "Document.id": Document("Paris is the capital of France.", id=INJECTION),
    "metadata key": Document("Paris is the capital of France.", metadata={INJECTION: 1}),  # rt52e F4
    "metadata bytes": Document("Paris is the capital of France.", metadata={"source": INJECTION.encode()}),
}


@pytest.mark.parametrize("shape", sorted(ID_SHAPES))
def test_a_documents_identifiers_are_judged_where_the_template_prints_them(guard, shape):
    """rt51f F9: the ``{context}`` slot prints the list whole, ids too; injected instructions there (a corpus
    whose ids come from page data) reached the model unjudged, where the same text under ``source`` was stopped."""
    model = scripted(SAFE_ANSWER)
    chain = guard_input(guard) | RAG | model
    with pytest.raises(GuardViolation) as info:
        chain.invoke({"context": [ID_SHAPES[shape]], "question": SAFE_QUESTION})
    assert info.value.decision.stage.value == "retrieval"
    assert model.seen == []


@pytest.mark.parametrize("value", [[1, 2], [["a", "b"]], [{"title": "x"}]], ids=["numbers", "pairs", "rows"])
def test_a_list_that_is_not_messages_is_judged_as_printed(guard, value):
    assert guard_input(guard).invoke({"q": value}) == {"q": value}
    with pytest.raises(GuardViolation):
        guard_input(guard).invoke({"q": [*value, UNSAFE_PROMPT, {"t": 1}]})


def test_input_keys_judge_a_printed_value_too(guard):
    step = guard_input(guard, input_keys=["q"])
    with pytest.raises(GuardViolation):
        step.invoke({"q": {"text": UNSAFE_PROMPT}, "other": "x"})
    with pytest.raises(TypeError, match="not text"):
        step.invoke({"q": 5})


# -- F4 --------------------------------------------------------------------------------------------
def _unchecked(guard: Guard) -> GuardRunnable:
    return GuardRunnable(PROMPT | scripted(SAFE_ANSWER), guard, check_input=False)


def test_check_input_false_is_kept_by_stream(guard):
    """The user's action: the app judges its input elsewhere; stream must agree with invoke."""
    assert _unchecked(guard).invoke({"q": UNSAFE_PROMPT}).content == SAFE_ANSWER
    assert "".join(c.content for c in _unchecked(guard).stream({"q": UNSAFE_PROMPT})) == SAFE_ANSWER
    number = GuardRunnable(RunnableLambda(lambda n: f"{n} is a number."), guard, check_input=False)
    assert "".join(number.stream(5)) == number.invoke(5) == "5 is a number."


async def test_check_input_false_is_kept_by_astream(guard):
    assert (await _unchecked(guard).ainvoke({"q": UNSAFE_PROMPT})).content == SAFE_ANSWER
    chunks = [c.content async for c in _unchecked(guard).astream({"q": UNSAFE_PROMPT})]
    assert "".join(chunks) == SAFE_ANSWER
