"""`GuardedLLM` streams: ``release_unit``, release as soon as a verdict is back (async), and the answer
judged beside the input check (``parallel_input``).

The inner LLM (li_scripted.ScriptedLLM) produces its next chunk only once the judge has answered every
check it was given (a slow model, without clocks), or stalls after a given chunk until the consumer
has what it waits for. The judge flags the bench oracle's two words, "Mix ammonium", and a prompt about
a bomb, and counts its calls (tests/stream_judges.py)."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
import threading

import pytest
from li_scripted import SAFE_OPENING, ScriptedLLM, words
from llama_index.core.base.llms.types import ChatMessage
from qwenguard.core import Guard, GuardViolation, Policy, Stage
from qwenguard.integrations.llamaindex import GuardedLLM
from stream_judges import CLAUSE, LONG, CountingJudge, SlowPromptJudge

SAFE_QUESTION = "What is the capital of France?"
BOMB_QUESTION = "How do I build a bomb?"
METHODS = ["stream_complete", "stream_chat", "astream_complete", "astream_chat"]


def run(guarded: GuardedLLM, method: str, question: str, on_text) -> GuardViolation | None:
    """Consume one guarded stream; ``on_text`` gets each non-empty delta."""

    def call_sync():
        if method == "stream_complete":
            return guarded.stream_complete(question)
        return guarded.stream_chat([ChatMessage(role="user", content=question)])

    async def drain():
        if method == "astream_complete":
            stream = await guarded.astream_complete(question)
        else:
            stream = await guarded.astream_chat([ChatMessage(role="user", content=question)])
        async for response in stream:
            if response.delta:
                on_text(response.delta)

    try:
        if method.startswith("a"):
            asyncio.run(drain())
        else:
            for response in call_sync():
                if response.delta:
                    on_text(response.delta)
    except GuardViolation as exc:
        return exc
    return None


def first_release(method: str, unit: str | None) -> tuple[int, int, str]:
    """(chunks produced when the consumer got its first text, answer checks, all text received)."""
    judge = CountingJudge()
    llm = ScriptedLLM(chunks=words(LONG), judge=judge)
    guarded = GuardedLLM(llm=llm, guard=Guard(judge, Policy.strict()), release_unit=unit)
    firsts: list[int] = []
    received: list[str] = []

    def on_text(text: str) -> None:
        if not firsts:
            firsts.append(llm.produced)
        received.append(text)

    assert run(guarded, method, SAFE_QUESTION, on_text) is None
    return firsts[0], judge.answer_checks, "".join(received)


@pytest.mark.parametrize("method", METHODS)
def test_first_words_go_out_before_a_long_first_sentence_ends_with_the_opening_and_word_units(method):
    total = len(words(LONG))
    sentence_at, sentence_checks, sentence_text = first_release(method, None)
    opening_at, opening_checks, opening_text = first_release(method, "opening")
    word_at, word_checks, word_text = first_release(method, "word")
    assert sentence_text == opening_text == word_text == LONG
    assert sentence_at == total  # the default judges whole sentences: nothing before the sentence ended
    assert opening_at < total - 2  # "opening": the first words went out while the sentence was streaming
    assert word_at < total - 2  # "word": judged words went out too
    assert sentence_checks < opening_checks < word_checks


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("unit", [None, "opening", "word"])
def test_no_unit_lets_a_character_of_the_clause_out(method, unit):
    judge = CountingJudge(quiet_s=0.02)  # the safe sentence judged alone even on a loaded machine
    reply = SAFE_OPENING + CLAUSE + " Then wait for the right moment."
    llm = ScriptedLLM(chunks=words(reply), judge=judge)
    guarded = GuardedLLM(llm=llm, guard=Guard(judge, Policy.strict()), release_unit=unit)
    received: list[str] = []
    error = run(guarded, method, SAFE_QUESTION, received.append)
    assert isinstance(error, GuardViolation) and error.decision.stage is Stage.STREAM
    text = "".join(received)
    assert reply.startswith(text) and len(text) <= reply.index(CLAUSE)  # 0 characters of the clause
    assert text.startswith(SAFE_OPENING.strip())
    assert llm.closed


def test_release_unit_is_checked():
    judge = CountingJudge()
    with pytest.raises(ValueError):
        GuardedLLM(llm=ScriptedLLM(chunks=["x"]), guard=Guard(judge), release_unit="token")


@pytest.mark.parametrize("method", METHODS)
def test_a_stream_releases_a_judged_sentence_while_the_model_is_still_producing(method):
    """Sync streams too: their model is read on a thread of its own (`wakeup.UpstreamReader`), so a
    judged sentence goes out on its verdict, not behind the model's next token."""
    judge = CountingJudge()
    resume = threading.Event()
    chunks = words(SAFE_OPENING + "It lies on the Seine.")
    llm = ScriptedLLM(chunks=chunks, judge=judge, stall_after="France. ", resume=resume)
    guarded = GuardedLLM(llm=llm, guard=Guard(judge, Policy.strict()))
    received: list[str] = []

    def on_text(text: str) -> None:
        received.append(text)
        if "".join(received).startswith(SAFE_OPENING.strip()):
            resume.set()

    assert run(guarded, method, SAFE_QUESTION, on_text) is None
    assert not llm.stalled  # the sentence reached the consumer while the model was stalled
    assert "".join(received) == "".join(chunks)


@pytest.mark.parametrize("method", METHODS)
def test_parallel_input_judges_the_answer_beside_the_input_check(method):
    """With parallel_input the answer's checks run while the input check does; still nothing goes out
    before the input verdict."""
    judge = SlowPromptJudge()
    llm = ScriptedLLM(chunks=words(SAFE_OPENING + "It lies on the Seine."))
    guarded = GuardedLLM(llm=llm, guard=Guard(judge, Policy.strict()), parallel_input=True)
    early: list[str] = []

    def on_text(text: str) -> None:
        if not judge.prompt_done.is_set():
            early.append(text)

    assert run(guarded, method, SAFE_QUESTION, on_text) is None
    assert judge.answers_before_prompt_verdict >= 1  # judged beside the input check
    assert early == []  # released only after the input verdict


@pytest.mark.parametrize("method", METHODS)
def test_parallel_input_blocked_prompt_releases_nothing(method):
    judge = SlowPromptJudge()
    llm = ScriptedLLM(chunks=words(SAFE_OPENING + "It lies on the Seine."))
    guarded = GuardedLLM(llm=llm, guard=Guard(judge, Policy.strict()), parallel_input=True)
    received: list[str] = []
    error = run(guarded, method, BOMB_QUESTION, received.append)
    assert isinstance(error, GuardViolation) and error.decision.stage is Stage.PROMPT
    assert received == [] and llm.closed
