"""A retrieved document's metadata is judged with its text (red team rt42b F1).

The attack: a RAG app prints metadata into the prompt (``format_document(d, PromptTemplate.from_template(
"[{title}] {page_content}"))``); a page's injected title reached the model unjudged, since
`GuardedRetriever`, `GuardDocumentCompressor` and the callback's ``on_retriever_end`` read only
``page_content``. The model is `ChatOpenAI` against the scripted OpenAI-compatible server:
``url.requests`` is what the provider received.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate, format_document
from langchain_core.runnables import RunnablePassthrough
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION, RecordingBackend, scripted, store_of
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import (
    AsyncGuardCallbackHandler,
    GuardCallbackHandler,
    GuardDocumentCompressor,
    GuardedRetriever,
)
from scripted_openai import scripted_openai
from test_openai_paths import MODES, chat

SAFE = Document("Paris is the capital of France.", metadata={"title": "Atlas", "page": 1})
CONTEXT_PRINTED = ChatPromptTemplate.from_messages([("system", "Answer from:\n{context}"), ("human", "{question}")])
INJECTED_TITLE = Document("The Eiffel Tower is in Paris.", metadata={"title": INJECTION, "page": 2})
INJECTED_NESTED = Document("Lyon is in France.", metadata={"headers": {"h1": [INJECTION]}})

DOC_PROMPT = PromptTemplate.from_template("[{title}] {page_content}")
PROMPT = ChatPromptTemplate.from_messages([("system", "Answer from the context:\n{context}"), ("human", "{question}")])


def _retriever(docs: list[Document]) -> Any:
    store = store_of(docs)
    return store.as_retriever(search_kwargs={"k": len(docs)})


def _rag(retriever: Any, url: str) -> Any:
    """The app of the attack: every document printed with its title, then the model."""

    def context(docs: list[Document]) -> str:
        return "\n".join(format_document(d, DOC_PROMPT) for d in docs)

    return {"context": retriever | context, "question": RunnablePassthrough()} | PROMPT | chat(url)


def _read(url: Any) -> str:
    return "".join(str(request.body.get("messages")) for request in url.requests)


async def _run(runnable: Any, value: Any, mode: str, **kwargs: Any) -> Any:
    return runnable.invoke(value, **kwargs) if mode == "sync" else await runnable.ainvoke(value, **kwargs)


@pytest.mark.parametrize("mode", MODES)
async def test_guarded_retriever_drops_a_document_with_an_injected_title(guard, mode):
    with scripted_openai(SAFE_ANSWER) as url:
        retriever = GuardedRetriever.wrap(_retriever([SAFE, INJECTED_TITLE]), guard)
        await _run(_rag(retriever, url), SAFE_QUESTION, mode)
        sent = _read(url)
    assert INJECTION not in sent  # the model never read the injected title
    assert SAFE.page_content in sent and INJECTED_TITLE.page_content not in sent  # dropped whole, the rest kept


@pytest.mark.parametrize("mode", MODES)
async def test_compressor_judges_nested_metadata(guard, mode):
    compressor = GuardDocumentCompressor(guard=guard)
    docs = [SAFE, INJECTED_NESTED]
    if mode == "sync":
        kept = compressor.compress_documents(docs, SAFE_QUESTION)
    else:
        kept = await compressor.acompress_documents(docs, SAFE_QUESTION)
    assert kept == [SAFE]
    with pytest.raises(GuardViolation) as info:
        GuardDocumentCompressor(guard=guard, on_violation="raise").compress_documents(docs, SAFE_QUESTION)
    assert "Jailbreak" in info.value.decision.categories


@pytest.mark.parametrize("mode", MODES)
async def test_callback_judges_a_retrieved_documents_metadata(guard, mode):
    handler = GuardCallbackHandler(guard) if mode == "sync" else AsyncGuardCallbackHandler(guard)
    with scripted_openai(SAFE_ANSWER) as url:
        with pytest.raises(GuardViolation) as info:
            await _run(
                _rag(_retriever([SAFE, INJECTED_TITLE]), url), SAFE_QUESTION, mode, config={"callbacks": [handler]}
            )
        assert url.requests == []
    assert info.value.decision.stage.value == "retrieval"


def test_metadata_is_judged_as_a_template_prints_it_in_one_check(guard):
    """One check per document: its page, then its id, every key and the strings under them (a ``{context}`` slot
    prints the list whole: ids and keys were skipped, and instructions planted there reached the model, rt52e F9);
    numbers add nothing, and so does a record the guard wrote; a ``qwenguard`` value the document brought is judged
    like any metadata (rt56c F2: it was skipped unjudged, looking like the guard's own record)."""
    recording = RecordingBackend(guard.backend)
    judge = Guard(recording, cache_size=0)
    plain = Document("Paris is the capital of France.", id="d1", metadata={"id": "a1b2", "page": 3, "score": 0.5})
    flagged = Document("Lyon is in France.", metadata={"qwenguard": {"action": "flag", "reason": "Jailbreak"}})
    sourced = Document("Nice is in France.", metadata={"source": "atlas.txt", "page": 4})
    GuardDocumentCompressor(guard=judge).compress_documents([plain, flagged, sourced], SAFE_QUESTION)
    assert [c[-1]["content"] for c in recording.conversations] == [
        "Paris is the capital of France.\nd1\nid\na1b2\npage\nscore",
        "Lyon is in France.\nqwenguard\naction\nflag\nreason\nJailbreak",
        "Nice is in France.\nsource\natlas.txt\npage",
    ]


PRINTED_WHOLE = {
    "Document.id": Document("Paris is the capital of France.", id=INJECTION),
    "metadata doc_id": Document("Paris is the capital of France.", metadata={"doc_id": INJECTION}),
    "metadata key": Document("Paris is the capital of France.", metadata={INJECTION: 1}),
}


@pytest.mark.parametrize("shape", sorted(PRINTED_WHOLE))
def test_a_guarded_retriever_judges_what_a_context_slot_prints_of_a_document(guard, shape):
    """rt52e F9: ``{"context": GuardedRetriever.wrap(...), ...} | prompt`` prints the documents whole
    (``str(list)``): an id or a metadata key holding instructions reached the model."""
    model = scripted(SAFE_ANSWER)
    retriever = GuardedRetriever.wrap(_retriever([PRINTED_WHOLE[shape]]), guard)
    chain = {"context": retriever, "question": RunnablePassthrough()} | CONTEXT_PRINTED | model
    chain.invoke(SAFE_QUESTION)
    read = " ".join(str(m.content) for call in model.seen for m in call)
    assert INJECTION not in read
