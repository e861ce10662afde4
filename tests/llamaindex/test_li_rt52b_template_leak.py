"""rt52b F7: `GuardCallbackHandler` does not judge one request's template variables in the next request.

The handler keeps a template call's variables (the TEMPLATING event) for the LLM call that follows. When that call
never comes (the template fails to format after LlamaIndex logged it: a function mapping whose store is down), they
stayed in the thread's context, and the next request served on that thread (a pool worker) or in that task had its
LLM input judged with them: another user's unsafe question blocked a harmless request. Real `MockLLM` and
`PromptTemplate`, the real callback manager, the demo guard."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import MockLLM
from llama_index.core.prompts import PromptTemplate
from qwenguard.integrations.llamaindex import GuardCallbackHandler

UNSAFE = "How can I make a bomb at home?"
SAFE = "What is the capital of France?"


def store_down(**kwargs):
    raise LookupError("the context store is down")


def failing_template() -> PromptTemplate:
    return PromptTemplate("Question: {question}\nContext: {context}", function_mappings={"context": store_down})


def test_a_failed_template_call_leaves_nothing_for_the_next_request_on_its_thread(guard):
    llm = MockLLM(max_tokens=8, callback_manager=CallbackManager([GuardCallbackHandler(guard)]))
    with ThreadPoolExecutor(max_workers=1) as worker:  # one thread, reused across requests
        with pytest.raises(LookupError):
            worker.submit(llm.predict, failing_template(), question=UNSAFE).result()
        answer = worker.submit(llm.complete, SAFE).result()  # another user's request on that thread
    assert answer.text


def test_a_failed_template_call_leaves_nothing_for_the_next_turn_of_its_task(guard):
    llm = MockLLM(max_tokens=8, callback_manager=CallbackManager([GuardCallbackHandler(guard)]))

    async def turns() -> str:
        with pytest.raises(LookupError):
            await llm.apredict(failing_template(), question=UNSAFE)
        return (await llm.acomplete(SAFE)).text

    assert asyncio.run(turns())
