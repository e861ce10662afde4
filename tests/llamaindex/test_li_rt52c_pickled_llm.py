"""rt52c F3: a pickled copy of a `GuardedLLM` raises `GuardMissing` before the model is asked.

LlamaIndex's pickling leaves the guard out (an ``IngestionPipeline`` with ``num_workers > 1`` sends its
transformations' LLMs to worker processes that way; a workflow Context saved with JsonPickleSerializer), but not
what the wrapper judged before. The copy failed with a bare ``AttributeError``, and for an input judged before only
after the model had been asked. The real `OpenAILike` against tests/scripted_openai.py; a keyword judge."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
import pickle

import pytest
from li_shared import openai_like
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import PromptTemplate
from qwenguard.core import Guard, Policy
from qwenguard.integrations.llamaindex import GuardedLLM, GuardMissing
from scripted_openai import Reply, scripted_openai
from stream_judges import CountingJudge

QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."


def consume(result):
    if hasattr(result, "__aiter__"):

        async def drain():
            return [chunk async for chunk in result]

        return asyncio.run(drain())
    if hasattr(result, "__next__"):
        return list(result)
    return result


CALLS = {
    "chat": lambda llm, msgs: llm.chat(msgs),
    "stream_chat": lambda llm, msgs: consume(llm.stream_chat(msgs)),
    "achat": lambda llm, msgs: asyncio.run(llm.achat(msgs)),
    "astream_chat": lambda llm, msgs: consume(asyncio.run(llm.astream_chat(msgs))),
    "complete": lambda llm, msgs: llm.complete(msgs[-1].content),
    "acomplete": lambda llm, msgs: asyncio.run(llm.acomplete(msgs[-1].content)),
    "predict": lambda llm, msgs: llm.predict(PromptTemplate("Answer: {query_str}"), query_str=msgs[-1].content),
}


@pytest.mark.parametrize("how", sorted(CALLS))
@pytest.mark.parametrize("judged_before", [False, True], ids=["new input", "input judged before"])
def test_a_pickled_guarded_llm_raises_guard_missing_before_asking_the_model(how, judged_before):
    history = [ChatMessage(role="user", content=QUESTION)]
    with scripted_openai([Reply.words(ANSWER)] * 2, pace=0) as url:
        live = GuardedLLM(llm=openai_like(url), guard=Guard(CountingJudge(), Policy(timeout_s=None)))
        CALLS[how](live, history)  # judged and remembered
        copy = pickle.loads(pickle.dumps(live))
        asked = len(url.requests)
        msgs = history if judged_before else [ChatMessage(role="user", content="And of Spain?")]
        with pytest.raises(GuardMissing, match="GuardedLLM has no guard"):
            CALLS[how](copy, msgs)
        assert len(url.requests) == asked  # the model was not asked
        assert CALLS[how](GuardedLLM(llm=copy.llm, guard=live.guard), history)  # wrapped again, it works


def test_guard_missing_is_one_of_qwenguards_errors() -> None:
    """rt52f F1: docs/api.md says ``except QwenGuardError`` catches everything qwenguard raises; `GuardMissing` was a
    plain `RuntimeError` (still one)."""
    from qwenguard.core import QwenGuardError
    from qwenguard.integrations.llamaindex import GuardMissing

    assert issubclass(GuardMissing, QwenGuardError) and issubclass(GuardMissing, RuntimeError)
