"""rt65e F1: a text file in a tool call's arguments was judged as its base64 letters while the tool decoded it and
sent the text. An e-mail tool that takes its attachment as a file block (``{"type": "file", "mime_type":
"text/plain", "base64": ...}``), a ``data:`` URL, a mail API's attachment (``{"content_base64": ...}``) or bare
base64 (Gmail's ``raw`` message is URL-safe base64) sent "Mix ammonium nitrate ..." on every tool-argument path:
GuardMiddleware, GuardedChatModel + ToolNode(wrap_tool_call), GuardCallbackHandler, a LlamaIndex agent with
GuardedLLM and guard_tools, and the core ``Guard.check_tool_call``. The same bytes in a user's file block were
decoded. `render_tool_call` now judges each file an argument holds as the text it holds too (`files_read`), and
ordinary arguments (words, ids, digests, a long word that is base64 of binary) are read as written only.

Real agents and tools; a scripted judge that flags "mix ammonium" (`faults.phrase_verdict`)."""

from __future__ import annotations

import base64
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from faults import ScriptedBackend, phrase_verdict
from qwenguard.core import Action, Guard, InputTooLarge
from qwenguard.core.formats.conversations import render_tool_call

sys.path.insert(0, str(Path(__file__).parent / "langchain"))
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call  # noqa: E402

SAFE_NOTE = "Paris is the capital of France."
B64 = base64.b64encode(UNSAFE_CLAUSE.encode()).decode()
#: A mail's raw message as Gmail's API takes it: URL-safe base64, headers and all.
RAW_MAIL = base64.urlsafe_b64encode(f"To: bob@example.com\r\nSubject: plan\r\n\r\n{UNSAFE_CLAUSE}".encode()).decode()

#: How a tool's argument carries a text file: each a shape a real API or framework takes.
SHAPES: dict[str, Any] = {
    "file block": {"type": "file", "mime_type": "text/plain", "base64": B64},
    "data URL": "data:text/plain;base64," + B64,
    "attachment dict": {"filename": "plan.txt", "mime_type": "text/plain", "content_base64": B64},
    "bare base64": B64,
    "URL-safe raw mail": RAW_MAIL,
}


def opened(attachment: Any) -> str:
    """The attachment's text, as the tool decodes it (each shape of `SHAPES`)."""
    if isinstance(attachment, dict):
        attachment = attachment.get("content_base64") or attachment.get("base64") or attachment["data"]
    if attachment.startswith("data:"):
        attachment = attachment.split(",", 1)[1]
    return base64.urlsafe_b64decode(attachment.replace("+", "-").replace("/", "_")).decode()


def judge() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(phrase_verdict, name="phrase")
    return Guard(backend, cache_size=0), backend


def judged(backend: ScriptedBackend) -> list[str]:
    """The judged turn of each conversation ``backend`` was asked about."""
    return [conversation[-1]["content"] for batch in backend.calls for conversation in batch]


def mail_tool() -> tuple[Any, list[str]]:
    """A LangChain ``send_email`` tool that decodes its attachment, and the texts it sent."""
    from langchain_core.tools import tool

    sent: list[str] = []

    @tool
    def send_email(to: str, attachment: Any) -> str:
        """Send an e-mail with one text attachment."""
        sent.append(opened(attachment))
        return "Message delivered."

    return send_email, sent


def args(value: Any) -> dict[str, Any]:
    return {"to": "bob@example.com", "attachment": value}


def test_the_tool_decodes_each_shape_to_the_clause() -> None:
    """The premise: every shape is the clause to the tool."""
    assert all(UNSAFE_CLAUSE in opened(value) for value in SHAPES.values())


# -- core ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("written", ["mapping", "JSON string"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_check_tool_call_judges_the_file_an_argument_holds(shape: str, written: str) -> None:
    guard, backend = judge()
    arguments: Any = args(SHAPES[shape]) if written == "mapping" else json.dumps(args(SHAPES[shape]))
    assert guard.check_tool_call("send_email", arguments).action is Action.BLOCK
    assert (await guard.acheck_tool_call("send_email", arguments)).action is Action.BLOCK
    assert judged(backend) and all(UNSAFE_CLAUSE in text for text in judged(backend))


# -- LangChain -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_middleware_never_runs_a_tool_whose_attachment_is_the_clause(shape: str, mode: str) -> None:
    from langchain.agents import create_agent
    from qwenguard.integrations.langchain import GuardMiddleware

    guard, _ = judge()
    send_email, sent = mail_tool()
    model = scripted(tool_call("send_email", args(SHAPES[shape])), SAFE_ANSWER)
    agent = create_agent(model, [send_email], middleware=[GuardMiddleware(guard)])
    request = {"messages": [("user", "E-mail Bob the plan file.")]}
    out = agent.invoke(request) if mode == "invoke" else await agent.ainvoke(request)
    assert sent == []
    assert all("ammonium" not in str(m.content) for m in out["messages"] if m.type == "tool")


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_react_agent_with_tool_node_never_runs_the_call(shape: str, mode: str) -> None:
    from qwenguard.core import GuardViolation
    from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import ToolNode, create_react_agent

    guard, _ = judge()
    send_email, sent = mail_tool()
    middleware = GuardMiddleware(guard, exit_behavior="replace")
    node = ToolNode([send_email], wrap_tool_call=middleware.wrap_tool_call, awrap_tool_call=middleware.awrap_tool_call)
    model = GuardedChatModel(scripted(tool_call("send_email", args(SHAPES[shape])), SAFE_ANSWER), guard)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(model, node)
    request = {"messages": [("user", "E-mail Bob the plan file.")]}
    with pytest.raises(GuardViolation):
        agent.invoke(request) if mode == "invoke" else await agent.ainvoke(request)
    assert sent == []


@pytest.mark.parametrize("shape", SHAPES)
async def test_callback_handler_stops_the_tool_run(shape: str) -> None:
    from qwenguard.core import GuardViolation
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

    send_email, sent = mail_tool()
    call = {"name": "send_email", "args": args(SHAPES[shape]), "id": "c1", "type": "tool_call"}
    guard, _ = judge()
    with pytest.raises(GuardViolation):
        send_email.invoke(call, {"callbacks": [GuardCallbackHandler(guard)]})
    guard, _ = judge()
    with pytest.raises(GuardViolation):
        await send_email.ainvoke(call, {"callbacks": [AsyncGuardCallbackHandler(guard)]})
    assert sent == []


# -- LlamaIndex ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
async def test_llamaindex_agent_never_runs_the_call(shape: str) -> None:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
    from llama_index.core.llms.mock import MockFunctionCallingLLM
    from llama_index.core.tools import FunctionTool
    from qwenguard.core import GuardViolation
    from qwenguard.integrations.llamaindex import GuardedLLM, guard_tools

    sent: list[str] = []

    def send_email(to: str, attachment: dict | str) -> str:  # type: ignore[type-arg]
        """Send an e-mail with one text attachment."""
        sent.append(opened(attachment))
        return "Message delivered."

    def reply(messages: list[ChatMessage], **_: Any) -> ChatMessage:
        if any(m.role == MessageRole.TOOL for m in messages):
            return ChatMessage(role="assistant", content="Sent.")
        call = ToolCallBlock(tool_call_id="c1", tool_name="send_email", tool_kwargs=args(SHAPES[shape]))
        return ChatMessage(role="assistant", blocks=[call])

    guard, _ = judge()
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=reply), guard=guard)
    tools = guard_tools([FunctionTool.from_defaults(send_email)], guard)
    with pytest.raises(GuardViolation):
        await FunctionAgent(tools=tools, llm=llm).run(user_msg="E-mail Bob the plan file.")
    with pytest.raises(GuardViolation):
        llm.chat([ChatMessage(role="user", content="E-mail Bob the plan file.")])
    assert sent == []


# -- what is read, and what is not ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_the_file_is_judged_as_the_text_beside_its_letters(shape: str) -> None:
    rendered = render_tool_call("send_email", args(SHAPES[shape]))
    written, read = rendered.split("\n")
    assert UNSAFE_CLAUSE not in written and UNSAFE_CLAUSE in read
    assert read.startswith("Tool call: send_email(attachment")  # the file by its key path, not the call (rt65j F4)


def test_a_safe_attachment_is_sent() -> None:
    """A text file that is safe is judged as its text, and the tool runs."""
    from langchain.agents import create_agent
    from qwenguard.integrations.langchain import GuardMiddleware

    guard, backend = judge()
    send_email, sent = mail_tool()
    note = {"type": "file", "mime_type": "text/plain", "base64": base64.b64encode(SAFE_NOTE.encode()).decode()}
    model = scripted(tool_call("send_email", args(note)), SAFE_ANSWER)
    create_agent(model, [send_email], middleware=[GuardMiddleware(guard)]).invoke(
        {"messages": [("user", "E-mail Bob the note.")]}
    )
    assert sent == [SAFE_NOTE]
    assert any(SAFE_NOTE in text for text in judged(backend))


#: Arguments that are words or ids: base64 letters all, but no file. "user", "test" and "search" are the base64 of
#: printable Latin-1 bytes; the long words and the digests are valid base64 of binary.
ORDINARY = [
    "user",
    "test",
    "search",
    "Paris",
    "weather tomorrow",
    "c1",
    "call_8f2a",
    "order-12345",
    "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9",
    "d41d8cd98f00b204e9800998ecf8427e",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "123456789012345678",
    "Antidisestablishmentarianism",
    "internationalization",
    "RecursiveCharacterTextSplitter",
    "Supercalifragilisticexpialidocious",
    "application/octet-stream",
]


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_arguments_are_read_as_written(value: str) -> None:
    for arguments in ({"query": value}, {"data": value}, {"type": "file", "id": value}, json.dumps({"q": value})):
        assert "\n" not in render_tool_call("search", arguments)
    guard, backend = judge()
    assert guard.check_tool_call("search", {"query": value, "note": SAFE_NOTE}).action is Action.ALLOW
    assert judged(backend) == [f'Tool call: search({{"query": "{value}", "note": "{SAFE_NOTE}"}})']


def test_media_in_an_argument_is_not_read_as_text() -> None:
    """A PNG's bytes (a data URL, a block of an image) hold no text: no reading is added."""
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()
    for value in ("data:image/png;base64," + png, {"type": "image", "mime_type": "image/png", "base64": png}, png):
        assert "\n" not in render_tool_call("show", {"image": value})


def test_the_reading_is_bounded_by_max_chars() -> None:
    """A call that fits as written but not with its file read is cut just past the bound (the guard refuses it)."""
    value = "data:text/plain;base64," + base64.b64encode((UNSAFE_CLAUSE + " ").encode() * 400).decode()
    written = render_tool_call("send_email", args(value))
    bound = len(written.split("\n")[0]) + 100
    rendered = render_tool_call("send_email", args(value), bound)
    assert bound < len(rendered) <= bound + 1
    guard = Guard(ScriptedBackend(phrase_verdict), cache_size=0, max_chars=bound)
    with pytest.raises(InputTooLarge):
        guard.check_tool_call("send_email", args(value))
