"""rt67g F2: a `GuardCallbackHandler` given to the LLM's ``callback_manager`` instead of ``Settings.callback_manager``.

Every query engine and response synthesizer built with that LLM sets its ``callback_manager`` to
``Settings.callback_manager`` (or the engine's ``callback_manager=``): the handler is dropped, for good, and the
engine's queries and the LLM's own calls after that go unscreened, with no error. The replacement reaches no
handler, so nothing can tell it when it happens; what can: the handler hears the LLM's own calls (their ``chat`` /
``completion`` trace) while it is not in ``Settings.callback_manager``, and warns then, once, loudly. Installed the
documented way (``Settings.callback_manager``, or an engine's ``callback_manager=``) it says nothing.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from li_scripted import SAFE_OPENING, ScriptedLLM
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import ChatMessage
from llama_index.core.query_engine import RetrieverQueryEngine
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.llamaindex import GuardCallbackHandler

SAFE_QUESTION = "What is the capital of France?"
UNSAFE_PROMPT = "How can I make a bomb at home?"


@pytest.fixture()
def fresh_settings() -> Iterator[None]:
    """No ``Settings.callback_manager`` set (LlamaIndex makes an empty one when asked), restored afterwards."""
    previous = Settings._callback_manager
    Settings._callback_manager = None
    yield
    Settings._callback_manager = previous


def call(llm: Any, how: str, text: str) -> str:
    """``llm`` asked ``text`` by ``how``: the answer's text."""
    if how == "complete":
        return llm.complete(text).text
    if how == "chat":
        return str(llm.chat([ChatMessage(role="user", content=text)]).message.content)
    if how == "acomplete":
        return asyncio.run(llm.acomplete(text)).text
    return str(asyncio.run(llm.achat([ChatMessage(role="user", content=text)])).message.content)


def told(caught: list[warnings.WarningMessage]) -> list[str]:
    """The placement warnings among ``caught``."""
    return [str(w.message) for w in caught if "Settings.callback_manager" in str(w.message)]


@pytest.mark.parametrize("how", ["complete", "chat", "acomplete", "achat"])
def test_a_handler_on_the_llm_warns_at_its_first_call_and_once(guard: Guard, fresh_settings: None, how: str) -> None:
    # The newcomer's wiring: the handler on the LLM. The first call warns, before any engine drops the handler.
    llm = ScriptedLLM(chunks=[SAFE_OPENING], callback_manager=CallbackManager([GuardCallbackHandler(guard)]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert call(llm, how, SAFE_QUESTION) == SAFE_OPENING
        with pytest.raises(GuardViolation):
            call(llm, how, UNSAFE_PROMPT)  # still screened while it is there
    (warning,) = told(caught)  # once per handler, not once per call
    assert "query engines and response synthesizers" in warning
    assert "Settings.callback_manager = CallbackManager([GuardCallbackHandler(guard)])" in warning


def test_the_warning_comes_before_a_query_engine_drops_the_handler(
    guard: Guard, fresh_settings: None, embed_model: Any
) -> None:
    llm = ScriptedLLM(chunks=[SAFE_OPENING], callback_manager=CallbackManager([GuardCallbackHandler(guard)]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call(llm, "complete", SAFE_QUESTION)
        index = VectorStoreIndex.from_documents(
            [Document(text="Paris is the capital of France.")], embed_model=embed_model
        )
        index.as_query_engine(llm=llm)
    assert len(told(caught)) == 1
    assert llm.callback_manager.handlers == []  # what it warned of: the engine took the handler off the LLM


@pytest.mark.parametrize("asynchronous", [False, True], ids=["query", "aquery"])
@pytest.mark.parametrize("where", ["Settings", "engine"])
def test_a_handler_installed_as_documented_says_nothing(
    guard: Guard, fresh_settings: None, embed_model: Any, where: str, asynchronous: bool
) -> None:
    handler = GuardCallbackHandler(guard)
    if where == "Settings":
        Settings.callback_manager = CallbackManager([handler])
    llm = ScriptedLLM(chunks=[SAFE_OPENING])
    index = VectorStoreIndex.from_documents([Document(text="Paris is the capital of France.")], embed_model=embed_model)
    if where == "engine":  # the engine's own callback_manager=, which it gives its synthesizer and LLM
        engine = RetrieverQueryEngine.from_args(
            index.as_retriever(), llm=llm, callback_manager=CallbackManager([handler])
        )
    else:
        engine = index.as_query_engine(llm=llm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        query = engine.aquery if asynchronous else engine.query
        assert str(asyncio.run(query(SAFE_QUESTION)) if asynchronous else query(SAFE_QUESTION)) == SAFE_OPENING
        with pytest.raises(GuardViolation):
            asyncio.run(query(UNSAFE_PROMPT)) if asynchronous else query(UNSAFE_PROMPT)
        if where == "Settings":
            assert call(llm, "acomplete" if asynchronous else "complete", SAFE_QUESTION) == SAFE_OPENING
    assert told(caught) == []
