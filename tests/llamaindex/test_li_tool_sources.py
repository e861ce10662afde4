"""The retrieved nodes a tool hands back in ``raw_output`` are judged; blocked ones reach no consumer.

A `QueryEngineTool`'s output is the engine's answer (judged), but its ``raw_output`` is the whole ``Response``:
its ``source_nodes`` hold the retrieved documents, which an agent's ``ToolCallResult`` events and its final
``AgentOutput`` carry to whoever reads them. A `RetrieverTool` returns its nodes there too, metadata hidden from
the LLM included. The attack: an index holding an unsafe document, a harmless answer built from it. Counted:
characters of unsafe text in what the agent's consumer receives."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from li_shared import UNSAFE_DOC
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.base.response.schema import Response
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.core.tools import BaseTool, FunctionTool, QueryEngineTool, RetrieverTool, ToolMetadata, ToolOutput
from qwenguard.core import Guard
from qwenguard.integrations.llamaindex import GuardedLLM, guard_tool, guard_tools

SUMMARY = "The documents are about France."
RUN_TIMEOUT_S = 60


def summarizer() -> MockFunctionCallingLLM:
    """The query engine's model: a harmless answer, whatever it read."""
    return MockFunctionCallingLLM(
        response_generator=lambda messages, **kw: ChatMessage(role="assistant", content=SUMMARY), is_chat_model=True
    )


def leaked(value) -> int:
    """Characters of the unsafe document anywhere in a tool's raw_output: its nodes (text and all metadata) and a
    Response's metadata."""
    nodes = value if isinstance(value, list) else getattr(value, "source_nodes", [])
    texts = [n.node.get_content(metadata_mode=MetadataMode.ALL) for n in nodes]
    texts += [str(v) for n in nodes for v in n.node.metadata.values()]
    texts += [str(v) for v in (getattr(value, "metadata", None) or {}).values()]
    texts += [value] if isinstance(value, str) else []
    return sum(len(UNSAFE_DOC) for t in texts if UNSAFE_DOC in t)


def kb_tool(index: VectorStoreIndex) -> QueryEngineTool:
    engine = index.as_query_engine(llm=summarizer(), similarity_top_k=5)
    return QueryEngineTool.from_defaults(engine, name="kb", description="Knowledge base.")


def agent_llm(guard: Guard) -> GuardedLLM:
    def script(messages, **kwargs) -> ChatMessage:
        if any(m.role == MessageRole.TOOL for m in messages):
            return ChatMessage(role="assistant", content="The knowledge base is about France.")
        call = ToolCallBlock(tool_call_id="c1", tool_name="kb", tool_kwargs={"input": "Tell me about Paris."})
        return ChatMessage(role="assistant", blocks=[call])

    return GuardedLLM(llm=MockFunctionCallingLLM(response_generator=script), guard=guard)


async def test_an_agent_consumer_never_receives_a_blocked_source_node(index: VectorStoreIndex, guard: Guard) -> None:
    agent = FunctionAgent(tools=guard_tools([kb_tool(index)], guard), llm=agent_llm(guard))
    handler = agent.run(user_msg="Tell me about Paris.")
    in_events = 0
    results = 0

    async def consume():
        nonlocal in_events, results
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                results += 1
                in_events += leaked(event.tool_output.raw_output)
        return await handler

    final = await asyncio.wait_for(consume(), RUN_TIMEOUT_S)
    assert results == 1
    assert in_events == 0
    assert leaked(final.tool_calls[0].tool_output.raw_output) == 0
    sources = final.tool_calls[0].tool_output.raw_output.source_nodes
    assert sources and all("Paris" in n.node.get_content() for n in sources)


@pytest.mark.parametrize("sync", [True, False], ids=["call", "acall"])
async def test_query_engine_tool_output_keeps_its_answer_and_loses_the_blocked_nodes(
    index: VectorStoreIndex, guard: Guard, sync: bool
) -> None:
    tool = guard_tool(kb_tool(index), guard)
    output = tool.call(input="Tell me about Paris.") if sync else await tool.acall(input="Tell me about Paris.")
    assert output.content == SUMMARY
    assert isinstance(output.raw_output, Response)
    assert leaked(output.raw_output) == 0
    assert len(output.raw_output.source_nodes) == 2  # the two Paris documents; the injected one is dropped too


@pytest.mark.parametrize("sync", [True, False], ids=["call", "acall"])
async def test_retriever_tool_nodes_with_hidden_unsafe_metadata_are_withheld(
    guard: Guard, embed_model, sync: bool
) -> None:
    """The unsafe text sits in metadata hidden from the LLM: the tool's text is safe, its raw nodes are not."""
    hidden = Document(
        text="Paris is the capital of France.", metadata={"notes": UNSAFE_DOC}, excluded_llm_metadata_keys=["notes"]
    )
    index = VectorStoreIndex.from_documents([hidden], embed_model=embed_model)
    tool = guard_tool(RetrieverTool.from_defaults(index.as_retriever(), name="search"), guard)
    output = tool.call(input="Paris") if sync else await tool.acall(input="Paris")
    assert leaked(output.raw_output) == 0
    assert UNSAFE_DOC not in output.content


def test_a_raw_output_that_cannot_be_rebuilt_becomes_the_text(guard: Guard) -> None:
    @dataclass(frozen=True)
    class Report:
        source_nodes: list

        def __str__(self) -> str:
            return SUMMARY

    class Opaque:  # neither a dataclass nor a pydantic model: its nodes cannot be taken out
        def __init__(self) -> None:
            self.source_nodes = [NodeWithScore(node=TextNode(text=UNSAFE_DOC))]

        def __str__(self) -> str:
            return SUMMARY

    for raw in (Report([NodeWithScore(node=TextNode(text=UNSAFE_DOC))]), Opaque()):
        output = guard_tool(FunctionTool.from_defaults(lambda raw=raw: raw, name="report"), guard).call()
        assert output.content == SUMMARY
        assert leaked(output.raw_output) == 0


@pytest.mark.parametrize("sync", [True, False], ids=["call", "acall"])
async def test_a_safe_tool_output_passes_unchanged(guard: Guard, embed_model, sync: bool) -> None:
    index = VectorStoreIndex.from_documents(
        [Document(text="Paris is the capital of France."), Document(text="The Eiffel Tower is in Paris.")],
        embed_model=embed_model,
    )
    inner = kb_tool(index)
    for tool in (guard_tool(inner, guard), guard_tool(RetrieverTool.from_defaults(index.as_retriever()), guard)):
        output = tool.call(input="Paris") if sync else await tool.acall(input="Paris")
        nodes = output.raw_output if isinstance(output.raw_output, list) else output.raw_output.source_nodes
        assert len(nodes) == 2


# -- rt50c F1: a raw_output that is one node, or that the content does not show -------------------------------
def _lookup_document(city: str) -> Document:
    """Look a city up in the wiki (one document: its metadata is not in the LLM's text)."""
    return Document(text="Paris is the capital of France.", metadata={"summary": UNSAFE_DOC})


def _lookup_scored(city: str) -> NodeWithScore:
    """Look a city up in the wiki (the best match: its str() cuts the text at 350 characters)."""
    return NodeWithScore(node=TextNode(text="Paris is the capital of France. " * 12 + UNSAFE_DOC), score=0.9)


def _fetch_page(url: str) -> str:
    """Fetch a page (a callback answers the LLM 'fetched'; raw_output keeps the page)."""
    return "Welcome to the forum. " + UNSAFE_DOC


def _single_node_tools() -> list[FunctionTool]:
    return [
        FunctionTool.from_defaults(_lookup_document, name="lookup_document"),
        FunctionTool.from_defaults(_lookup_scored, name="lookup_scored"),
        FunctionTool.from_defaults(_fetch_page, name="fetch_page", callback=lambda page: "fetched"),
    ]


def _characters_out(raw) -> int:
    """Characters of the unsafe document in what a consumer of ``raw_output`` can read (all its fields)."""
    text = raw.model_dump_json() if hasattr(raw, "model_dump_json") else repr(raw)
    return len(UNSAFE_DOC) if UNSAFE_DOC in text or UNSAFE_DOC[:24] in text else 0


@pytest.mark.parametrize("sync", [True, False], ids=["call", "acall"])
@pytest.mark.parametrize("which", range(3), ids=["document", "node_with_score", "callback"])
async def test_a_raw_output_the_content_does_not_show_is_judged(guard: Guard, sync: bool, which: int) -> None:
    """A tool that returns one node (its metadata, or its text past the 350 characters ``str`` shows, is not in
    the content), or whose callback rewrote the content: ``raw_output`` kept the unsafe text and reached the
    agent's events and final output, unjudged."""
    tool = guard_tool(_single_node_tools()[which], guard)
    output = tool.call("Paris") if sync else await tool.acall("Paris")
    assert _characters_out(output.raw_output) == 0, output.raw_output
    assert UNSAFE_DOC not in output.content


async def test_an_agent_consumer_never_receives_a_single_blocked_node(guard: Guard) -> None:
    """Through a real FunctionAgent: the ToolCallResult events and the final AgentOutput."""
    names = iter(["lookup_document", "lookup_scored", "fetch_page"])

    def script(messages, **kwargs) -> ChatMessage:
        if sum(m.role == MessageRole.TOOL for m in messages) >= 3:
            return ChatMessage(role="assistant", content="Paris is the capital of France.")
        call = ToolCallBlock(tool_call_id=f"c{kwargs.get('n', 0)}", tool_name=next(names), tool_kwargs={})
        return ChatMessage(role="assistant", blocks=[call])

    tools = [
        FunctionTool.from_defaults(lambda: _lookup_document("Paris"), name="lookup_document"),
        FunctionTool.from_defaults(lambda: _lookup_scored("Paris"), name="lookup_scored"),
        FunctionTool.from_defaults(lambda: _fetch_page("x"), name="fetch_page", callback=lambda page: "fetched"),
    ]
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=script), guard=guard)
    handler = FunctionAgent(tools=guard_tools(tools, guard), llm=llm).run(user_msg="Tell me about Paris.")
    out = []

    async def consume():
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                out.append(_characters_out(event.tool_output.raw_output) + _characters_out(event))
        return await handler

    final = await asyncio.wait_for(consume(), RUN_TIMEOUT_S)
    assert out == [0, 0, 0]
    assert [_characters_out(c.tool_output.raw_output) for c in final.tool_calls] == [0, 0, 0]


def test_a_raw_output_whose_str_fails_is_not_passed_on(guard: Guard) -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    class Report(BaseTool):  # a custom tool: its content is its own, its raw_output an object
        @property
        def metadata(self) -> ToolMetadata:
            return ToolMetadata(name="report", description="A report.")

        def __call__(self, *args, **kwargs) -> ToolOutput:
            return ToolOutput(tool_name="report", content="done", raw_input={}, raw_output=Broken())

    output = guard_tool(Report(), guard).call("x")
    assert output.content == "done" and output.raw_output == "done"


class _Page:
    """What a fetch tool returns: its ``str`` a summary (the content the LLM reads), the page in an attribute."""

    def __init__(self, url: str, body: str) -> None:
        self.url, self.body = url, body

    def __str__(self) -> str:
        return "Found one page about Paris."


@pytest.mark.parametrize("sync", [True, False], ids=["call", "acall"])
@pytest.mark.parametrize(
    "raw",
    [
        _Page("http://forum.example", "Welcome to the forum. " + UNSAFE_DOC),
        {
            "summary": "Found one page about Paris.",
            "pages": [{"body": "The page about Paris was read.\n" + UNSAFE_DOC}],
        },
    ],
    ids=["object", "dict"],
)
async def test_the_strings_a_raw_output_object_holds_are_judged(guard: Guard, sync: bool, raw) -> None:
    """rt50c F1's remainder: the content is the object's ``str`` (a summary), so judging ``str(raw_output)`` judged
    nothing more, and the page in its attribute reached the agent's events."""
    tool = guard_tool(FunctionTool.from_defaults(lambda url: raw, name="fetch"), guard)
    output = tool.call("http://forum.example") if sync else await tool.acall("http://forum.example")
    assert _characters_out(output.raw_output) == 0 and _characters_out(getattr(output.raw_output, "body", "")) == 0
    assert UNSAFE_DOC not in output.content


def test_a_raw_output_holding_more_than_max_chars_is_not_passed_on() -> None:
    small = Guard.from_pretrained("demo", max_chars=2_000)
    try:
        raw = _Page("http://x", "Paris is the capital of France. " * 200)
        output = guard_tool(FunctionTool.from_defaults(lambda: raw, name="fetch"), small).call()
    finally:
        small.close()
    assert output.raw_output == output.content == str(raw)


class _Slotted:
    __slots__ = ("url", "body")

    def __init__(self, url: str, body: str) -> None:
        self.url, self.body = url, body

    def __str__(self) -> str:
        return "Found one page about Paris."


class _Private:
    def __init__(self, body: str) -> None:
        self._body = body

    @property
    def body(self) -> str:
        return self._body

    def __str__(self) -> str:
        return "Found one page about Paris."


class _WithNodes:
    def __init__(self, body: str) -> None:
        self.source_nodes = [NodeWithScore(node=TextNode(text="Paris is the capital of France."))]
        self.body = body

    def __str__(self) -> str:
        return "Found one page about Paris."


@dataclass
class _Weather:
    city: str
    summary: str


@pytest.mark.parametrize(
    "make",
    [
        lambda: _Slotted("http://x", UNSAFE_DOC),
        lambda: _Private(UNSAFE_DOC),
        lambda: _WithNodes(UNSAFE_DOC),
        lambda: (line for line in ["Found one page about Paris.", UNSAFE_DOC]),
    ],
    ids=["slots", "private_property", "nodes_and_attributes", "generator"],
)
def test_a_raw_output_that_cannot_be_read_whole_is_not_passed_on(guard: Guard, make) -> None:
    """rt50f F1: what value_strings cannot read (__slots__, a private attribute behind a property, a generator,
    an object that also carries nodes) reached the agent's events unjudged: such a raw_output becomes the text."""
    made = make()
    output = guard_tool(FunctionTool.from_defaults(lambda: made, name="fetch"), guard).call()
    assert output.raw_output is not made and isinstance(output.raw_output, (str, dict))  # the text, or a refusal
    assert UNSAFE_DOC not in repr(output.raw_output) and UNSAFE_DOC not in output.content


def test_plain_data_and_dataclasses_pass_as_they_are(guard: Guard) -> None:
    for raw in ({"city": "Paris", "summary": "Sunny."}, _Weather("Paris", "Sunny.")):
        output = guard_tool(FunctionTool.from_defaults(lambda raw=raw: raw, name="weather"), guard).call()
        assert output.raw_output == raw
