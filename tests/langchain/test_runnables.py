"""guard_input / guard_output / GuardRunnable in real LCEL chains."""

from __future__ import annotations

import pytest
from faults import ScriptedBackend
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, UNSAFE_PROMPT, scripted, tool_call
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardRunnable, guard_input, guard_output

MIXED = f"{SAFE_ANSWER} {UNSAFE_CLAUSE}"
PROMPT = ChatPromptTemplate.from_messages([("system", "You answer geography questions."), ("human", "{question}")])


class TokenCounter(BaseCallbackHandler):
    """Counts the tokens the model generated (to see that a violation stops generation upstream)."""

    def __init__(self) -> None:
        self.tokens = 0

    def on_llm_new_token(self, token, **kwargs) -> None:
        self.tokens += 1


def chain(guard, reply: str, engine: str = "monitor"):
    model = FakeListChatModel(responses=[reply])
    return guard_input(guard) | PROMPT | model | guard_output(guard, stream_engine=engine) | StrOutputParser()


# Text after the unsafe clause, so that a stream that stops early is visible.
TAIL = " Then wait for the right moment." * 6


def _check_cut(received: str, error: GuardViolation) -> None:
    assert (MIXED + TAIL).startswith(received) and UNSAFE_CLAUSE not in received and len(received) < len(MIXED)
    assert error.decision.stage.value == "stream"


def test_invoke_and_batch(guard):
    assert chain(guard, SAFE_ANSWER).invoke({"question": SAFE_QUESTION}) == SAFE_ANSWER
    assert chain(guard, SAFE_ANSWER).batch([{"question": SAFE_QUESTION}] * 2) == [SAFE_ANSWER] * 2
    with pytest.raises(GuardViolation) as info:
        chain(guard, SAFE_ANSWER).invoke({"question": UNSAFE_PROMPT})
    assert info.value.decision.stage.value == "prompt"
    with pytest.raises(GuardViolation) as info:
        chain(guard, UNSAFE_CLAUSE).invoke({"question": SAFE_QUESTION})
    assert info.value.decision.stage.value == "response"
    results = chain(guard, SAFE_ANSWER).batch(
        [{"question": SAFE_QUESTION}, {"question": UNSAFE_PROMPT}], return_exceptions=True
    )
    assert results[0] == SAFE_ANSWER and isinstance(results[1], GuardViolation)


async def test_ainvoke_and_abatch(guard):
    assert await chain(guard, SAFE_ANSWER).ainvoke({"question": SAFE_QUESTION}) == SAFE_ANSWER
    assert await chain(guard, SAFE_ANSWER).abatch([{"question": SAFE_QUESTION}] * 2) == [SAFE_ANSWER] * 2
    with pytest.raises(GuardViolation):
        await chain(guard, SAFE_ANSWER).ainvoke({"question": UNSAFE_PROMPT})


@pytest.mark.parametrize("engine", ["monitor", "gate"])
def test_stream_never_passes_the_unsafe_clause(guard, engine):
    assert "".join(chain(guard, SAFE_ANSWER, engine).stream({"question": SAFE_QUESTION})) == SAFE_ANSWER
    received = []
    with pytest.raises(GuardViolation) as info:
        for piece in chain(guard, MIXED + TAIL, engine).stream({"question": SAFE_QUESTION}):
            received.append(piece)
    _check_cut("".join(received), info.value)


def test_gate_engine_stops_the_model_at_the_violation(guard):
    counter = TokenCounter()
    with pytest.raises(GuardViolation):
        for _ in chain(guard, MIXED + TAIL, "gate").stream(
            {"question": SAFE_QUESTION}, config={"callbacks": [counter]}
        ):
            pass
    # FakeListChatModel streams one character per token: the raise stopped it inside the clause.
    assert counter.tokens <= len(MIXED)


@pytest.mark.parametrize("engine", ["monitor", "gate"])
async def test_astream_never_passes_the_unsafe_clause(guard, engine):
    assert (
        "".join([p async for p in chain(guard, SAFE_ANSWER, engine).astream({"question": SAFE_QUESTION})])
        == SAFE_ANSWER
    )
    received = []
    with pytest.raises(GuardViolation) as info:
        async for piece in chain(guard, MIXED + TAIL, engine).astream({"question": SAFE_QUESTION}):
            received.append(piece)
    _check_cut("".join(received), info.value)
    with pytest.raises(GuardViolation):
        async for _ in chain(guard, SAFE_ANSWER).astream({"question": UNSAFE_PROMPT}):
            pass


async def test_guard_runnable_wraps_a_chain(guard):
    wrapped = GuardRunnable(guard=guard, runnable=PROMPT | FakeListChatModel(responses=[MIXED]))
    received = ""
    with pytest.raises(GuardViolation):
        async for chunk in wrapped.astream({"question": SAFE_QUESTION}):
            received += chunk.text
    assert MIXED.startswith(received) and UNSAFE_CLAUSE not in received
    ok = GuardRunnable(guard=guard, runnable=PROMPT | FakeListChatModel(responses=[SAFE_ANSWER]))
    assert ok.invoke({"question": SAFE_QUESTION}).text == SAFE_ANSWER
    assert "".join(c.text for c in ok.stream({"question": SAFE_QUESTION})) == SAFE_ANSWER


def test_guard_runnable_takes_the_runnable_and_the_guard_in_order_and_names_its_arguments(guard):
    """A newcomer's first hour (fh46): ``GuardRunnable(model, guard)``, as ``GuardedChatModel(model, guard)`` is
    written, failed with pydantic's "takes 1 positional argument", and a missing guard with "Field required"."""
    model = PROMPT | FakeListChatModel(responses=[SAFE_ANSWER])
    assert GuardRunnable(model, guard).invoke({"question": SAFE_QUESTION}).text == SAFE_ANSWER
    with pytest.raises(TypeError, match="the runnable comes first"):
        GuardRunnable(guard, model)
    with pytest.raises(TypeError, match=r"needs the guard: GuardRunnable\(runnable=model, guard=guard\)"):
        GuardRunnable(runnable=model)
    with pytest.raises(TypeError, match="'guard' twice"):
        GuardRunnable(model, guard, guard=guard)


def test_input_roles_and_keys(guard):
    # A tool message in the input is untrusted content: the injection is caught as such.
    messages = [
        HumanMessage(SAFE_QUESTION),
        tool_call("web_search", {"query": "France"}),
        ToolMessage(INJECTION, tool_call_id="call_1", name="web_search"),
    ]
    with pytest.raises(GuardViolation) as info:
        guard_input(guard).invoke(messages)
    assert info.value.decision.stage.value == "tool_result"
    # Only the named keys are the user's input.
    step = guard_input(guard, input_keys=["question"])
    assert step.invoke({"question": SAFE_QUESTION, "style": "brief"}) == {"question": SAFE_QUESTION, "style": "brief"}
    with pytest.raises(KeyError, match="question"):
        step.invoke({"query": SAFE_QUESTION})
    with pytest.raises(TypeError, match="cannot screen"):
        guard_input(guard).invoke(42)


def test_tool_calls_in_a_streamed_answer_are_judged(guard):
    model = scripted(tool_call("send_email", {"to": "friend@example.com", "body": UNSAFE_CLAUSE}))
    with pytest.raises(GuardViolation) as info:
        list((model | guard_output(guard)).stream([HumanMessage("What is the capital of France?")]))
    assert info.value.decision.stage.value == "tool_call"


def test_output_guard_rejects_non_text(guard):
    with pytest.raises(TypeError, match="before output parsers"):
        guard_output(guard).invoke({"answer": SAFE_ANSWER})
    with pytest.raises(ValueError, match="guard_input"):
        GuardRunnable(guard=guard)
    with pytest.raises(ValueError, match="stream_engine"):  # "pipelined" is the callbacks' engine: it cannot hold
        guard_output(guard, stream_engine="pipelined")
    chunk = AIMessageChunk(content=SAFE_ANSWER)
    assert guard_output(guard).invoke(chunk) is chunk


def test_gate_judges_a_bare_output_as_the_answer_to_a_user_turn():
    """Without the request (a bare `guard_output`), the gate's checks still read user turn + answer, the
    only shape Qwen3Guard's response mode is trained on: the user turn is empty."""
    backend = ScriptedBackend(lambda conv: "Safety: Safe\nCategories: None\nRefusal: No")
    model = FakeListChatModel(responses=[SAFE_ANSWER])
    assert (
        "".join(c.text for c in (model | guard_output(Guard(backend), stream_engine="gate")).stream("q")) == SAFE_ANSWER
    )
    conversations = [conv for call in backend.calls for conv in call]
    assert conversations and all([m["role"] for m in conv] == ["user", "assistant"] for conv in conversations)
    assert all(conv[0]["content"] == "" for conv in conversations)
