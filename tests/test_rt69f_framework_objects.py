"""rt69f F2: a newcomer handing the core API a framework's object (a LangChain message list where a string is
expected, a retrieved Document or NodeWithScore, a tool's dict output, OpenAI content parts) got a TypeError naming
the type and nothing more: each now says what to pass instead."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from llama_index.core.llms import ChatMessage
from llama_index.core.schema import NodeWithScore, TextNode
from qwenguard.core import Guard


@pytest.fixture(scope="module")
def guard() -> Iterator[Guard]:
    g = Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)  # type: ignore[arg-type]
    yield g
    g.close()


MISTAKES: list[tuple[str, Callable[[Guard], object], str]] = [
    ("a LangChain message list as the prompt", lambda g: g.check_prompt([HumanMessage("hi")]), "message.text"),
    ("a LangChain message as the prompt", lambda g: g.check_prompt(HumanMessage("hi")), "message.text"),
    (
        "LangChain messages as the prompt turns",
        lambda g: g.check_response([HumanMessage("hi")], "x"),
        "convert_to_openai",
    ),
    (
        "LangChain messages as history",
        lambda g: g.check_prompt("x", history=[HumanMessage("a"), AIMessage("b")]),
        "convert_to_openai_messages",
    ),
    ("a LangChain Document", lambda g: g.check_documents("q", [Document(page_content="x")]), "doc.page_content"),
    (
        "a LlamaIndex node",
        lambda g: g.check_documents("q", [NodeWithScore(node=TextNode(text="x"))]),
        "node.get_content()",
    ),
    ("a LlamaIndex ChatMessage", lambda g: g.check_prompt(ChatMessage(role="user", content="x")), "GuardedLLM"),
    ("a tool's dict output", lambda g: g.check_tool_result("search", {"hits": 1}), "json.dumps"),
    ("a list of strings", lambda g: g.check_prompt(["a", "b"]), "history="),
    (
        "OpenAI content parts",
        lambda g: g.check_response([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "x"),
        "join the text",
    ),
]


@pytest.mark.parametrize(("what", "call", "hint"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_framework_object_gets_an_error_that_says_what_to_pass(
    guard: Guard, what: str, call: Callable[[Guard], object], hint: str
) -> None:
    with pytest.raises(TypeError) as info:
        call(guard)
    assert hint in str(info.value), f"{what}: {info.value}"
