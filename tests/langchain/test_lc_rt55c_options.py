"""The LangChain pieces refuse options they do not have, and the retrieval pieces build as they are first written.

rt55c F3: pydantic ignores a keyword it has no field for. An app moving from the LlamaIndex integration wrote
``GuardDocumentCompressor(guard=guard, on_block="raise")`` (LlamaIndex's name for ``on_violation``): accepted, and an
injected document was dropped where the app asked for a raise; ``GuardedChatModel(model, guard, screen_tools=True)``
(LlamaIndex GuardedLLM's option) and a misspelt ``screen_sytem=True`` were accepted and judged nothing more. Each is
now an error naming the option, with the other integration's word or the closest option; the fields LangChain's base
classes add (callbacks, tags, metadata, rate_limiter...) still work, and so do copies and bindings.

rt55c F6: ``GuardedRetriever(retriever, guard)`` (as LlamaIndex's piece of the same name is built) failed with
pydantic's "takes 1 positional argument", ``GuardedRetriever(retriever=r, guard=g)`` with "compressor Field
required", ``GuardDocumentCompressor(guard)`` with a positional error. They build now; what cannot build says how.
"""

from __future__ import annotations

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.rate_limiters import InMemoryRateLimiter
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION, scripted, store_of
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardDocumentCompressor, GuardedChatModel, GuardedRetriever, GuardRunnable

DOCS = [Document("Paris is the capital of France.", metadata={"source": "atlas"}), Document(INJECTION)]


def _compressor(guard) -> GuardDocumentCompressor:
    return GuardDocumentCompressor(guard=guard)


def _store_retriever():
    store = store_of(DOCS, size=16)
    return store.as_retriever(search_kwargs={"k": 2})


# -- rt55c F3: unknown options ------------------------------------------------------------------------------------
def test_the_llamaindex_spelling_of_the_retrieval_switch_is_refused_with_langchains(guard):
    with pytest.raises(TypeError, match="'on_block'.*on_violation"):
        GuardDocumentCompressor(guard=guard, on_block="raise")
    with pytest.raises(TypeError, match="'on_block'.*on_violation"):
        GuardedRetriever(_store_retriever(), guard, on_block="raise")
    # Spelt as the error says, the injected document raises, as the app asked.
    with pytest.raises(GuardViolation):
        GuardDocumentCompressor(guard=guard, on_violation="raise").compress_documents(DOCS, SAFE_QUESTION)


def test_a_llamaindex_screen_langchain_has_not_is_named(guard):
    with pytest.raises(TypeError, match="'screen_tools'.*no such screen on LangChain.*check_tool_calls"):
        GuardedChatModel(scripted(SAFE_ANSWER), guard, screen_tools=True)
    with pytest.raises(TypeError, match="'screen_query'.*guard_input"):
        GuardedRetriever(_store_retriever(), guard, screen_query=True)


@pytest.mark.parametrize(
    ("build", "typo", "meant"),
    [
        (lambda g, **kw: GuardedChatModel(scripted(SAFE_ANSWER), g, **kw), "screen_sytem", "screen_system"),
        (lambda g, **kw: GuardedChatModel(scripted(SAFE_ANSWER), g, **kw), "check_tool_call", "check_tool_calls"),
        (lambda g, **kw: GuardRunnable(scripted(SAFE_ANSWER), g, **kw), "screen_sytem", "screen_system"),
        (lambda g, **kw: GuardDocumentCompressor(guard=g, **kw), "on_violaton", "on_violation"),
        (
            lambda g, **kw: GuardedRetriever(retriever=_store_retriever(), compressor=_compressor(g), **kw),
            "metdata",
            "metadata",
        ),
    ],
)
def test_a_misspelt_option_is_refused_with_the_closest_one(guard, build, typo, meant):
    with pytest.raises(TypeError, match=f"unknown option: '{typo}' \\(did you mean '{meant}'\\?\\)"):
        build(guard, **{typo: True})


def test_an_option_nobody_has_is_named(guard):
    with pytest.raises(TypeError, match="GuardedRetriever got unknown option: 'bogus'"):
        GuardedRetriever(retriever=_store_retriever(), compressor=_compressor(guard), bogus=1)
    with pytest.raises(TypeError, match="'inner' .*first argument"):
        GuardedChatModel(scripted(SAFE_ANSWER), guard, inner=scripted(SAFE_ANSWER))


class _Heard(BaseCallbackHandler):
    def __init__(self) -> None:
        self.ends = 0

    def on_llm_end(self, *args, **kwargs) -> None:
        self.ends += 1


def test_the_fields_langchains_base_classes_add_still_work(guard):
    heard = _Heard()
    model = GuardedChatModel(
        scripted(SAFE_ANSWER, SAFE_ANSWER, SAFE_ANSWER, SAFE_ANSWER),
        guard,
        callbacks=[heard],
        tags=["guarded"],
        metadata={"team": "rag"},
        verbose=False,
        rate_limiter=InMemoryRateLimiter(requests_per_second=1_000),
        disable_streaming=True,
        name="guarded-model",
        custom_get_token_ids=lambda text: [len(text)],
    )
    assert model.invoke(SAFE_QUESTION).content == SAFE_ANSWER and heard.ends == 1
    assert model.tags == ["guarded"] and model.metadata["team"] == "rag" and model.name == "guarded-model"
    # Copies and bindings go around the check: they build no new options.
    copy = model.model_copy(update={"screen_system": True})
    assert copy.screen_system and copy.invoke(SAFE_QUESTION).content == SAFE_ANSWER
    assert model.bind(stop=["\n\n"]).invoke(SAFE_QUESTION).content == SAFE_ANSWER
    assert model.with_config(tags=["more"]).invoke(SAFE_QUESTION).content == SAFE_ANSWER
    assert isinstance(model.bind_tools([]), GuardedChatModel)
    retriever = GuardedRetriever(
        retriever=_store_retriever(), compressor=_compressor(guard), tags=["docs"], metadata={"k": 2}, name="docs"
    )
    assert retriever.tags == ["docs"] and retriever.name == "docs"
    assert GuardRunnable(scripted(SAFE_ANSWER), guard, name="step").invoke(SAFE_QUESTION).content == SAFE_ANSWER


# -- rt55c F6: building the retrieval pieces ------------------------------------------------------------------------
def test_the_retrieval_pieces_build_as_llamaindex_ones_are_written(guard):
    for retriever in (
        GuardedRetriever(_store_retriever(), guard),
        GuardedRetriever(retriever=_store_retriever(), guard=guard),
        GuardedRetriever.wrap(_store_retriever(), guard),
        GuardedRetriever(retriever=_store_retriever(), compressor=GuardDocumentCompressor(guard)),
    ):
        assert [d.metadata["source"] for d in retriever.invoke(SAFE_QUESTION)] == ["atlas"]
    with pytest.raises(GuardViolation):
        GuardedRetriever(_store_retriever(), guard, on_violation="raise").invoke(SAFE_QUESTION)
    assert len(GuardDocumentCompressor(guard).compress_documents(DOCS, SAFE_QUESTION)) == 1


def test_what_cannot_build_says_how(guard):
    with pytest.raises(TypeError, match=r"needs the guard: GuardedRetriever\(retriever, guard\).*wrap"):
        GuardedRetriever(_store_retriever())
    with pytest.raises(TypeError, match="retriever comes first"):
        GuardedRetriever(guard, _store_retriever())
    with pytest.raises(TypeError, match="a guard .* or a compressor, not both"):
        GuardedRetriever(_store_retriever(), guard, compressor=GuardDocumentCompressor(guard))
    with pytest.raises(TypeError, match=r"needs the guard: GuardDocumentCompressor\(guard=guard\)"):
        GuardDocumentCompressor()
