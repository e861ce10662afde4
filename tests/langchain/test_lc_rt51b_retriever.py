"""rt51b F3: a `GuardedRetriever` shows only the documents it kept, to every listener.

Its inner retriever ran under the caller's callbacks: the inner run's ``on_retriever_end`` carried every document
found, the dropped one too, to ``astream_events`` / ``astream_log`` consumers (a UI listing sources) and tracers;
and a `GuardCallbackHandler` beside it judged that inner run and stopped the whole retrieval instead of the one
document being dropped. Real in-memory vector store, real LangChain event streams, the demo guard.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION, decisions_heard, judged_again, scripted, store_of
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardedRetriever

DOCS = [
    Document("Paris is the capital of France.", metadata={"source": "atlas"}),
    Document(INJECTION, metadata={"source": "forum"}),
    Document("The Eiffel Tower is in Paris.", metadata={"source": "guide"}),
]
KEPT = sorted([DOCS[0].page_content, DOCS[2].page_content])  # in the store's order, which is not the list's


def _retriever(guard: Any) -> GuardedRetriever:
    store = store_of(DOCS)
    return GuardedRetriever.wrap(store.as_retriever(search_kwargs={"k": 3}), guard)


class Sources(BaseCallbackHandler):
    """What a tracer or a sources panel hears: every retriever run's documents."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_retriever_end(self, documents, **kwargs: Any) -> None:
        self.seen.extend(d.page_content for d in documents)


@pytest.mark.filterwarnings("ignore::langchain_core._api.LangChainDeprecationWarning")  # v1: still served
@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_astream_events_carry_only_the_kept_documents(guard, version):
    """The attack: a poisoned page in the store; a UI listing the retrieval's sources must not show it."""
    with decisions_heard(guard) as heard:
        events = [
            json.dumps(e, default=str) async for e in _retriever(guard).astream_events(SAFE_QUESTION, version=version)
        ]
    assert events and not any("Ignore all previous" in e for e in events)
    ends = [e for e in events if json.loads(e)["event"] == "on_retriever_end"]
    assert len(ends) == 1 and all(text in ends[0] for text in KEPT), (heard, judged_again(guard, DOCS))


@pytest.mark.filterwarnings("ignore::langchain_core._api.LangChainDeprecationWarning")
async def test_astream_log_carries_only_the_kept_documents(guard):
    patches = [json.dumps(p.ops, default=str) async for p in _retriever(guard).astream_log(SAFE_QUESTION)]
    assert not any("Ignore all previous" in p for p in patches)


def test_a_callback_handler_hears_only_the_kept_documents(guard):
    sources = Sources()
    with decisions_heard(guard) as heard:
        docs = _retriever(guard).invoke(SAFE_QUESTION, config={"callbacks": [sources]})
    assert sorted(d.page_content for d in docs) == KEPT and sorted(sources.seen) == KEPT, (
        heard,
        judged_again(guard, DOCS),
    )


def test_a_guard_callback_handler_beside_it_does_not_stop_the_retrieval(guard):
    """The user's action: a RAG app with the handler on the run and a GuardedRetriever in the chain."""
    model = scripted(SAFE_ANSWER)
    prompt = ChatPromptTemplate.from_messages([("human", "{context}\n\n{question}")])
    chain = {"context": _retriever(guard), "question": RunnablePassthrough()} | prompt | model
    with decisions_heard(guard) as heard:
        answer = chain.invoke(SAFE_QUESTION, config={"callbacks": [GuardCallbackHandler(guard)]})
    assert answer.content == SAFE_ANSWER
    seen = model.seen[0][0].content
    assert INJECTION not in seen and KEPT[0] in seen, (heard, judged_again(guard, DOCS))


async def test_an_async_guard_callback_handler_beside_it_does_not_stop_the_retrieval(guard):
    with decisions_heard(guard) as heard:
        docs = await _retriever(guard).ainvoke(SAFE_QUESTION, config={"callbacks": [AsyncGuardCallbackHandler(guard)]})
    assert sorted(d.page_content for d in docs) == KEPT, (heard, judged_again(guard, DOCS))
