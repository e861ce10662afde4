"""GuardCallbackHandler (can block) and GuardEventHandler (audit only, cannot block)."""

from __future__ import annotations

import json

import pytest
from li_scripted import UNSAFE_CLAUSE, ScriptedLLM
from li_shared import INJECTED_DOC, SAFE_DOCS
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms.mock import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.llamaindex import GuardCallbackHandler, GuardEventHandler

BOMB = "How can I make a bomb at home?"


def engine_with(index: VectorStoreIndex, llm, guard: Guard) -> RetrieverQueryEngine:
    manager = CallbackManager([GuardCallbackHandler(guard)])
    retriever = index.as_retriever(similarity_top_k=10)
    retriever.callback_manager = manager
    return RetrieverQueryEngine.from_args(retriever, llm=llm, callback_manager=manager)


def test_callback_handler_blocks_query_before_retrieval(index: VectorStoreIndex, guard: Guard) -> None:
    llm = ScriptedLLM(chunks=["The capital of France is Paris."])
    engine = engine_with(index, llm, guard)
    with pytest.raises(GuardViolation) as info:
        engine.query(BOMB)
    assert info.value.decision.stage is Stage.PROMPT
    assert llm.calls == 0


def test_callback_handler_blocks_injected_retrieval(index: VectorStoreIndex, guard: Guard) -> None:
    llm = ScriptedLLM(chunks=["The capital of France is Paris."])
    engine = engine_with(index, llm, guard)
    with pytest.raises(GuardViolation) as info:
        engine.query("What is the capital of France?")
    assert info.value.decision.stage is Stage.RETRIEVAL
    assert llm.calls == 0


def test_callback_handler_blocks_llm_input_and_output(guard: Guard) -> None:
    manager = CallbackManager([GuardCallbackHandler(guard)])
    echo = MockLLM(callback_manager=manager)
    assert echo.complete("What is the capital of France?").text == "What is the capital of France?"
    with pytest.raises(GuardViolation):
        echo.complete(BOMB)
    unsafe = ScriptedLLM(chunks=[UNSAFE_CLAUSE], callback_manager=manager)
    with pytest.raises(GuardViolation) as info:
        unsafe.complete("How do I clean my oven?")
    assert info.value.decision.stage is Stage.RESPONSE


def test_callback_handler_lets_a_safe_rag_query_through(embed_model, guard: Guard) -> None:
    index = VectorStoreIndex.from_documents([Document(text=t) for t in SAFE_DOCS], embed_model=embed_model)
    engine = engine_with(index, ScriptedLLM(chunks=["The capital of France is Paris."]), guard)
    assert str(engine.query("What is the capital of France?")) == "The capital of France is Paris."


@pytest.fixture()
def audit(guard: Guard):
    handler = GuardEventHandler(guard=guard).attach()
    yield handler
    get_dispatcher().event_handlers.remove(handler)


def test_event_handler_records_but_cannot_block(index: VectorStoreIndex, audit: GuardEventHandler) -> None:
    engine = index.as_query_engine(llm=ScriptedLLM(chunks=[UNSAFE_CLAUSE]), similarity_top_k=10)
    # The unsafe answer and the injected node pass: instrumentation cannot stop anything ...
    assert str(engine.query("What is the capital of France?")) == UNSAFE_CLAUSE
    # ... but every decision is on record.
    stages = [(d.stage, d.action.value) for _, _, d in audit.records]
    assert (Stage.PROMPT, "allow") in stages
    assert (Stage.RETRIEVAL, "block") in stages
    assert (Stage.RESPONSE, "block") in stages
    assert audit.counts[("retrieval", "block")] >= 1 and audit.counts[("response", "block")] == 1


def test_event_handler_rejects_a_non_guard() -> None:
    with pytest.raises(TypeError):
        GuardEventHandler(guard="nope")
    assert INJECTED_DOC  # the fixture documents include an injected one (used above)


# -- a query engine through Settings.callback_manager, with the real OpenAILike ------------------
@pytest.fixture()
def settings_handler(guard: Guard):
    """The handler installed the usual way: ``Settings.callback_manager`` (restored afterwards)."""
    from llama_index.core import Settings

    previous = Settings._callback_manager
    Settings.callback_manager = CallbackManager([GuardCallbackHandler(guard)])
    yield
    Settings._callback_manager = previous


@pytest.mark.parametrize("chat", [True, False], ids=["chat model", "completion model"])
@pytest.mark.parametrize("streaming", [False, True], ids=["query", "streaming query"])
def test_a_plain_rag_question_is_not_judged_by_the_template(embed_model, settings_handler, chat, streaming) -> None:
    """The QA template + retrieved context + question is not the user's prompt: "What is the capital
    of France?" over "Paris is the capital of France." passes (it was blocked as Non-violent Illegal
    Acts when the whole formatted prompt was judged as the user's)."""
    from llama_index.llms.openai_like import OpenAILike
    from scripted_openai import scripted_openai

    with scripted_openai("The capital of France is Paris.") as url:
        llm = OpenAILike(model="scripted", api_base=url, api_key="x", is_chat_model=chat, max_retries=0)
        index = VectorStoreIndex.from_documents(
            [Document(text="Paris is the capital of France.")], embed_model=embed_model
        )
        response = index.as_query_engine(llm=llm, streaming=streaming).query("What is the capital of France?")
        text = "".join(response.response_gen) if streaming else str(response)
        assert text == "The capital of France is Paris."
        (request,) = url.requests
        assert "Paris is the capital of France." in json.dumps(request.body)  # the template did reach the LLM


def test_the_query_and_the_context_are_still_judged_for_what_they_are(
    embed_model, guard: Guard, settings_handler
) -> None:
    from llama_index.llms.openai_like import OpenAILike
    from scripted_openai import scripted_openai

    with scripted_openai(UNSAFE_CLAUSE) as url:
        llm = OpenAILike(model="scripted", api_base=url, api_key="x", is_chat_model=True, max_retries=0)
        index = VectorStoreIndex.from_documents(
            [Document(text="Paris is the capital of France.")], embed_model=embed_model
        )
        with pytest.raises(GuardViolation) as info:
            index.as_query_engine(llm=llm).query(BOMB)
        assert info.value.decision.stage is Stage.PROMPT and url.requests == []
        with pytest.raises(GuardViolation) as info:
            index.as_query_engine(llm=llm).query("What is the capital of France?")
        assert info.value.decision.stage is Stage.RESPONSE  # the answer, judged against the question
        # The template's context variable is judged as a document: an injected one stops the query
        # even when retrieval events are not screened.
        handler = GuardCallbackHandler(guard, events=[(CBEventType.LLM, "start")])
        from llama_index.core.prompts import PromptTemplate

        llm.callback_manager = CallbackManager([handler])
        template = PromptTemplate("Context:\n{context_str}\nQuestion: {query_str}\nAnswer:")
        with pytest.raises(GuardViolation) as info:
            llm.predict(template, context_str=INJECTED_DOC, query_str="What is the capital of France?")
        assert info.value.decision.stage is Stage.RETRIEVAL
