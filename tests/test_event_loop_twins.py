"""A sync integration entry point called inside async code: the event-loop warning names that integration's async
form, never ``guard.acheck_prompt`` (a call the user did not write).

Stop 61 (rt61a F3) worded it for the LangChain callback handler and LlamaIndex's `GuardedLLM`; every other sync
entry point (LangChain runnables, `GuardedChatModel`, `GuardMiddleware`'s hooks, the document compressor and
retriever; LlamaIndex's postprocessor, retriever, tools, memory and transform) still said "use await
guard.acheck_prompt(...)". Each case below is the user's action: a sync call written inside an ``async def``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from qwenguard.core import Guard

SAFE_QUESTION = "What is the capital of France?"
SAFE_TEXT = "Paris is the capital of France."


@pytest.fixture(scope="module")
def guard():
    g = Guard.from_pretrained("demo")
    yield g
    g.close()


@pytest.fixture
def loop_warnings(monkeypatch, caplog):
    from qwenguard.core import guard as guard_module

    monkeypatch.setattr(guard_module, "_warned_on_loop", set(), raising=False)
    caplog.set_level(logging.WARNING, logger="qwenguard")
    return lambda: [r.getMessage() for r in caplog.records if "inside a running event loop" in r.getMessage()]


def _chain_invoke(guard: Guard) -> None:
    from langchain_core.runnables import RunnableLambda
    from qwenguard.integrations.langchain import guard_input

    (guard_input(guard) | RunnableLambda(lambda _: SAFE_TEXT)).invoke(SAFE_QUESTION)


def _chain_stream(guard: Guard) -> None:
    from langchain_core.runnables import RunnableLambda
    from qwenguard.integrations.langchain import guard_output

    list((RunnableLambda(lambda _: SAFE_TEXT) | guard_output(guard)).stream(SAFE_QUESTION))


def _chat_model(stream: bool) -> Callable[[Guard], None]:
    def call(guard: Guard) -> None:
        from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        from qwenguard.integrations.langchain import GuardedChatModel

        model = GuardedChatModel(GenericFakeChatModel(messages=iter([SAFE_TEXT])), guard)
        if stream:
            list(model.stream(SAFE_QUESTION))
        else:
            model.invoke(SAFE_QUESTION)

    return call


def _answers() -> Any:
    """A fake chat model ``create_agent`` accepts (``bind_tools``), answering ``SAFE_TEXT``."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    class Answers(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    return Answers(messages=iter([SAFE_TEXT]))


def _agent(guard: Guard) -> None:
    from langchain.agents import create_agent
    from qwenguard.integrations.langchain import GuardMiddleware

    agent = create_agent(_answers(), [], middleware=[GuardMiddleware(guard)])
    agent.invoke({"messages": [{"role": "user", "content": SAFE_QUESTION}]})


def _lc_documents(guard: Guard) -> None:
    from langchain_core.documents import Document
    from qwenguard.integrations.langchain import GuardDocumentCompressor

    GuardDocumentCompressor(guard=guard).compress_documents([Document(page_content=SAFE_TEXT)], SAFE_QUESTION)


def _lc_retriever(guard: Guard) -> None:
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from qwenguard.integrations.langchain import GuardedRetriever

    class Shelf(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
            return [Document(page_content=SAFE_TEXT)]

    GuardedRetriever(Shelf(), guard).invoke(SAFE_QUESTION)


def _nodes() -> list[Any]:
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(text=SAFE_TEXT), score=1.0)]


def _li_postprocessor(guard: Guard) -> None:
    from qwenguard.integrations.llamaindex import GuardNodePostprocessor

    GuardNodePostprocessor(guard).postprocess_nodes(_nodes(), query_str=SAFE_QUESTION)


def _li_retriever(guard: Guard) -> None:
    from llama_index.core.retrievers import BaseRetriever
    from qwenguard.integrations.llamaindex import GuardedRetriever

    class Shelf(BaseRetriever):
        def _retrieve(self, query_bundle: Any) -> list[Any]:
            return _nodes()

    GuardedRetriever(Shelf(), guard).retrieve(SAFE_QUESTION)


def _li_tool(guard: Guard) -> None:
    from llama_index.core.tools import FunctionTool
    from qwenguard.integrations.llamaindex import guard_tool

    def capital(country: str) -> str:
        """The capital of a country."""
        return SAFE_TEXT

    guard_tool(FunctionTool.from_defaults(fn=capital), guard).call(country="France")


def _li_memory(guard: Guard) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.memory import ChatMemoryBuffer
    from qwenguard.integrations.llamaindex import GuardedMemory

    GuardedMemory(ChatMemoryBuffer.from_defaults(), guard).put(ChatMessage(role="user", content=SAFE_QUESTION))


def _li_transform(guard: Guard) -> None:
    from qwenguard.integrations.llamaindex import GuardTransform

    GuardTransform(guard)([n.node for n in _nodes()])


CASES = {
    "langchain chain invoke": (_chain_invoke, "chain.ainvoke"),
    "langchain chain stream": (_chain_stream, "chain.astream"),
    "GuardedChatModel invoke": (_chat_model(False), "model.ainvoke"),
    "GuardedChatModel stream": (_chat_model(True), "model.astream"),
    "GuardMiddleware agent": (_agent, "agent.ainvoke"),
    "GuardDocumentCompressor": (_lc_documents, "acompress_documents"),
    "langchain GuardedRetriever": (_lc_retriever, "retriever.ainvoke"),
    "llamaindex GuardNodePostprocessor": (_li_postprocessor, "apostprocess_nodes"),
    "llamaindex GuardedRetriever": (_li_retriever, "aretrieve"),
    "llamaindex guard_tool": (_li_tool, "tool.acall"),
    "llamaindex GuardedMemory": (_li_memory, "memory.aput"),
    "llamaindex GuardTransform": (_li_transform, "transform.acall"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_sync_entry_point_inside_async_code_names_its_own_async_form(case, guard, loop_warnings):
    call, twin = CASES[case]
    pytest.importorskip("llama_index.core" if case.startswith("llamaindex") else "langchain_core")

    async def app() -> None:
        call(guard)  # the user's mistake: a sync call inside an async handler

    asyncio.run(app())
    said = loop_warnings()
    assert said, "no event-loop warning"
    assert all(twin in m and "acheck_prompt" not in m for m in said), said


def test_the_guarded_model_under_the_middleware_keeps_the_middlewares_words(guard, loop_warnings):
    """The outermost entry point names the async form: the user called the agent, not the model inside it."""
    from langchain.agents import create_agent
    from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware

    inner = GuardedChatModel(_answers(), guard)

    async def app() -> None:
        create_agent(inner, [], middleware=[GuardMiddleware(guard)]).invoke(
            {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
        )

    asyncio.run(app())
    said = loop_warnings()
    assert said and all("agent.ainvoke" in m and "model.ainvoke" not in m for m in said), said


def test_off_the_loop_the_entry_points_say_nothing(guard, loop_warnings):
    for call, _ in CASES.values():
        call(guard)
    assert not loop_warnings()


def test_a_named_generator_is_closed_with_its_consumer(guard):
    """`speaking_as` on a generator: abandoned early inside async code, the wrapped generator's own cleanup runs."""
    from qwenguard.core.guard import speaking_as

    closed: list[bool] = []

    @speaking_as("await thing.arun(...)")
    def steps() -> Any:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def app() -> int:
        gen = steps()
        first = next(gen)
        gen.close()
        return first

    assert asyncio.run(app()) == 1 and closed == [True]
