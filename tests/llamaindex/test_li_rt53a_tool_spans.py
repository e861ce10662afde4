"""rt53a F7: a guarded tool runs the wrapped tool out of sight of LlamaIndex's instrumentation.

LlamaIndex instruments every tool's ``call``/``acall`` (and a plain ``BaseTool``'s ``__call__``): a span handler on
the root dispatcher is handed each span's result, or its exception (and event handlers a ``SpanDropEvent`` with
its text). `guard_tools` ran the wrapped tool through those instrumented methods, so the output it then withheld
(an injected page) exited a span whole: tracing (OpenInference/Phoenix, Langfuse) recorded what the agent, its
events and its LLM never saw. Now the handlers are handed what the guard let through: the refusal note. Real
LlamaIndex objects: a `FunctionAgent` on the real `OpenAILike` against tests/scripted_openai.py, `FunctionTool`s,
tools on LlamaIndex's `AsyncBaseTool` / `BaseTool`, real dispatcher handlers; the demo guard (it reads the page as
Jailbreak)."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import json
from typing import Any

import pytest
from li_shared import INJECTED_DOC, openai_like
from li_tracing import attached
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.tools import AsyncBaseTool, BaseTool, FunctionTool, ToolMetadata, ToolOutput
from qwenguard.integrations.llamaindex import GuardedFunctionTool, GuardedTool, guard_tool, guard_tools
from scripted_openai import Reply, ToolCall, scripted_openai

PAGE = INJECTED_DOC  # what the fetched page says
URL = "https://example.com"
RUN_TIMEOUT_S = 120


@pytest.fixture()
def traced():
    """All a root-dispatcher event handler and span handler were handed, as one text (call it after the run)."""
    with attached() as (events, spans):
        yield lambda: repr(events.seen) + "\n" + "\n".join(spans.seen)


def assert_no_piece_of(text: str, shown: str) -> None:
    """Neither ``text`` nor any 16 characters of it in a row (a tracer that truncates) is in ``shown``."""
    pieces = {text[i : i + 16] for i in range(len(text) - 15)}
    assert not [p for p in pieces if p in shown]


def sync_fetch(url: str) -> str:
    """Fetch a web page."""
    return PAGE


async def async_fetch(url: str) -> str:
    """Fetch a web page."""
    return PAGE


def failing_fetch(url: str) -> str:
    """Fetch a web page."""
    raise ValueError(f"could not parse {url}: {PAGE}")


async def afailing_fetch(url: str) -> str:
    """Fetch a web page."""
    raise ValueError(f"could not parse {url}: {PAGE}")


class FetchArgs(BaseModel):
    url: str


class CustomFetch(AsyncBaseTool):
    """A tool that is not a FunctionTool (`guard_tool` makes it a `GuardedTool`, like a ``QueryEngineTool``)."""

    @property
    def metadata(self) -> ToolMetadata:
        return ToolMetadata(name="fetch_page", description="Fetch a web page.", fn_schema=FetchArgs)

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        return ToolOutput(tool_name="fetch_page", content=PAGE, raw_input=kwargs, raw_output=PAGE)

    # Not ``return self.call(...)``: that is an instrumented call of the tool's own, whose span handlers see what
    # it returns (docs/llamaindex.md: what a tool runs inside is its own).
    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        return ToolOutput(tool_name="fetch_page", content=PAGE, raw_input=kwargs, raw_output=PAGE)


class SyncFetch(BaseTool):
    """A sync-only tool (LlamaIndex runs it through its async adapter)."""

    @property
    def metadata(self) -> ToolMetadata:
        return ToolMetadata(name="fetch_page", description="Fetch a web page.", fn_schema=FetchArgs)

    def __call__(self, input: Any) -> ToolOutput:
        return ToolOutput(tool_name="fetch_page", content=PAGE, raw_input={"input": input}, raw_output=PAGE)


AGENT_TOOLS = {
    "sync function": lambda: FunctionTool.from_defaults(sync_fetch, name="fetch_page"),
    "async function": lambda: FunctionTool.from_defaults(async_fn=async_fetch, name="fetch_page"),
    "function that raises": lambda: FunctionTool.from_defaults(failing_fetch, name="fetch_page"),
    "custom tool": lambda: CustomFetch(),
}


@pytest.mark.parametrize("kind", list(AGENT_TOOLS))
async def test_an_agents_tracing_never_sees_the_withheld_tool_output(kind: str, guard, traced) -> None:
    fetch = ToolCall("fetch_page", json.dumps({"url": URL}))
    with scripted_openai([Reply(tool_calls=[fetch]), Reply.words("I could not read the page.")]) as url:
        agent = FunctionAgent(tools=guard_tools([AGENT_TOOLS[kind]()], guard), llm=openai_like(url))
        handler = agent.run(user_msg="What does example.com say?")
        results: list[ToolOutput] = []

        async def consume() -> Any:
            async for event in handler.stream_events():
                if isinstance(event, ToolCallResult):
                    results.append(event.tool_output)
            return await handler

        answer = await asyncio.wait_for(consume(), RUN_TIMEOUT_S)
    assert str(answer) == "I could not read the page."
    [output] = results
    assert "withheld" in output.content  # the guard withheld it from the agent...
    shown = traced()
    assert_no_piece_of(PAGE, shown)  # ...and tracing got no piece of it either
    assert "withheld" in shown  # the tool's span reports what the agent got


DIRECT_TOOLS = {
    "sync function": (lambda: FunctionTool.from_defaults(sync_fetch), GuardedFunctionTool),
    "async function": (lambda: FunctionTool.from_defaults(async_fn=async_fetch), GuardedFunctionTool),
    "sync function that raises": (lambda: FunctionTool.from_defaults(failing_fetch), GuardedFunctionTool),
    "async function that raises": (lambda: FunctionTool.from_defaults(async_fn=afailing_fetch), GuardedFunctionTool),
    "AsyncBaseTool": (lambda: CustomFetch(), GuardedTool),
    "sync BaseTool": (lambda: SyncFetch(), GuardedTool),
}


@pytest.mark.parametrize("mode", ["call", "acall"])
@pytest.mark.parametrize("kind", list(DIRECT_TOOLS))
def test_a_direct_call_hands_span_handlers_only_the_refusal_note(kind: str, mode: str, guard, traced) -> None:
    make, wrapper = DIRECT_TOOLS[kind]
    tool = guard_tool(make(), guard)
    assert isinstance(tool, wrapper)
    output = tool.call(URL) if mode == "call" else asyncio.run(tool.acall(URL))
    assert "withheld" in output.content
    assert_no_piece_of(PAGE, traced())
