"""rt52c F2: callback handlers registered after a `GuardedLLM` was built see its LLM events.

The LLM events come from the wrapped LLM's methods, and `GuardedLLM` shared the wrapped LLM's callback manager only
when it was built. LlamaIndex hands an LLM its callback manager later by setting it (the ``Settings.llm`` getter once
``Settings.callback_manager`` is set, every response synthesizer given one): set on the wrapper alone, token
counting, tracing and `GuardCallbackHandler` saw nothing of a guarded LLM. The real `OpenAILike` against
tests/scripted_openai.py, a real index and query engine, LlamaIndex's `TokenCountingHandler`; a keyword judge."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import pytest
from li_shared import openai_like
from llama_index.core import Document, Settings, VectorStoreIndex, get_response_synthesizer
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import NodeWithScore, TextNode
from qwenguard.core import Guard, Policy
from qwenguard.integrations.llamaindex import GuardedLLM
from scripted_openai import Reply, scripted_openai
from stream_judges import CountingJudge

QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."


@pytest.fixture()
def settings(monkeypatch):
    """LlamaIndex's global Settings, restored after the test."""
    for name in ("_llm", "_callback_manager", "_embed_model"):
        monkeypatch.setattr(Settings, name, getattr(Settings, name))
    return Settings


def counter() -> TokenCountingHandler:
    return TokenCountingHandler(tokenizer=str.split)


def guarded(url: str, **kwargs) -> GuardedLLM:
    return GuardedLLM(llm=openai_like(url), guard=Guard(CountingJudge(), Policy(timeout_s=None)), **kwargs)


def test_handlers_set_in_settings_after_the_llm_see_its_events(settings):
    settings.embed_model = MockEmbedding(embed_dim=8)
    index = VectorStoreIndex.from_documents([Document(text=ANSWER)])
    with scripted_openai([Reply.words(ANSWER)], pace=0) as url:
        settings.llm = guarded(url)  # the application builds its LLM first...
        tokens = counter()
        settings.callback_manager = CallbackManager([tokens])  # ...then registers its handlers
        answer = index.as_query_engine().query(QUESTION)
    assert str(answer) == ANSWER
    assert len(tokens.llm_token_counts) == 1
    assert tokens.completion_llm_token_count == len(ANSWER.split())


def test_a_response_synthesizer_given_a_callback_manager_hands_it_the_events():
    with scripted_openai([Reply.words(ANSWER)], pace=0) as url:
        tokens = counter()
        synthesizer = get_response_synthesizer(llm=guarded(url), callback_manager=CallbackManager([tokens]))
        answer = synthesizer.synthesize(QUESTION, [NodeWithScore(node=TextNode(text=ANSWER), score=1.0)])
    assert str(answer) == ANSWER
    assert len(tokens.llm_token_counts) == 1


def test_a_callback_manager_given_to_the_wrapper_gets_the_events():
    with scripted_openai([Reply.words(ANSWER)], pace=0) as url:
        tokens = counter()
        llm = guarded(url, callback_manager=CallbackManager([tokens]))
        assert llm.complete(QUESTION).text == ANSWER
    assert len(tokens.llm_token_counts) == 1
