"""rt61a F2: both integrations export a class named ``GuardCallbackHandler``, and an auto-import's slip gives one
framework the other's. The run died deep in the framework ("'GuardCallbackHandler' object has no attribute
'raise_error'" from langchain-core, which the docs say the handler sets); now each handler refuses with a TypeError
naming the class to use, before the model is asked."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms.mock import MockLLM
from qwenguard.core import Guard
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler
from qwenguard.integrations.langchain import GuardCallbackHandler as LangChainHandler
from qwenguard.integrations.llamaindex import GuardCallbackHandler as LlamaIndexHandler

ANSWER = "Paris is the capital of France."


@pytest.fixture(scope="module")
def handler(guard: Guard) -> LlamaIndexHandler:
    return LlamaIndexHandler(guard)


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream"])
def test_the_llamaindex_handler_given_to_langchain_names_the_langchain_one(handler, mode):
    answers = iter([ANSWER])
    model = GenericFakeChatModel(messages=answers)
    config = {"callbacks": [handler]}
    with pytest.raises(TypeError, match=r"qwenguard\.integrations\.langchain\.GuardCallbackHandler"):
        if mode == "invoke":
            model.invoke("What is the capital of France?", config=config)
        elif mode == "ainvoke":
            asyncio.run(model.ainvoke("What is the capital of France?", config=config))
        else:
            list(model.stream("What is the capital of France?", config=config))
    assert next(answers, None) == ANSWER  # the model was never asked


def test_the_llamaindex_handler_still_reads_its_own_attributes(handler):
    assert not handler.event_starts_to_ignore and not hasattr(handler, "no_such_attribute")


@pytest.mark.parametrize("kind", [LangChainHandler, AsyncGuardCallbackHandler])
@pytest.mark.parametrize("mode", ["complete", "acomplete"])
def test_the_langchain_handler_given_to_llamaindex_names_the_llamaindex_one(guard, kind, mode):
    llm = MockLLM(callback_manager=CallbackManager([kind(guard)]))
    with pytest.raises(TypeError, match=r"qwenguard\.integrations\.llamaindex\.GuardCallbackHandler"):
        if mode == "complete":
            llm.complete("What is the capital of France?")
        else:
            asyncio.run(llm.acomplete("What is the capital of France?"))
