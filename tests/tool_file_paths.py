"""Every tool-argument path, written once for the tests of a file in a tool call's arguments (rt65e F1,
tests/test_rt65e_tool_args_decoded.py; rt65j F1-F4, tests/test_rt65j_tool_files.py): a ``send_email`` tool opens its
attachment and sends the text, and each path must stop the call before the tool sends "Mix ammonium nitrate ...".

Each path takes the attachment as the agent writes it; real agents and tools, a scripted judge that flags "mix
ammonium" (`faults.phrase_verdict`)."""

from __future__ import annotations

import base64
import email
import email.policy
import inspect
import json
import re
import sys
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faults import ScriptedBackend, phrase_verdict
from qwenguard.core import Action, Guard, GuardViolation
from qwenguard.core.formats.conversations import render_tool_call

sys.path.insert(0, str(Path(__file__).parent / "langchain"))
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call  # noqa: E402

SAFE_NOTE = "Paris is the capital of France."
B64 = base64.b64encode(UNSAFE_CLAUSE.encode()).decode()
ASK = "E-mail Bob the plan file."
#: How `check_tool_call_blocks` is given the arguments, and how each agent path is run.
WRITTEN = ["mapping", "JSON string"]
MODES = ["invoke", "ainvoke"]


def opened(attachment: Any) -> str:
    """The attachment's text as the tool opens it: JSON text parsed, each file's base64 decoded leniently (a data
    URL's header dropped, URL-safe letters taken, what is no letter skipped, as ``b64decode`` does), UTF-8 or else
    Latin-1; a mail message's parts as its reader's client decodes them, a URL's or a form's percent-encoded values
    as its server reads them; and a file within the decoded file opened too (`opened_within`)."""
    while isinstance(attachment, str) and attachment.lstrip()[:1] in ("[", "{"):
        attachment = json.loads(attachment)
    if isinstance(attachment, dict) and "files" in attachment:
        return opened(attachment["files"])
    texts = []
    for item in attachment if isinstance(attachment, list) else [attachment]:
        if isinstance(item, dict):
            item = item.get("content_base64") or item.get("base64") or item["data"]
        if "Content-Transfer-Encoding:" in item:
            texts.append(mail_parts(item))
            continue
        if item.startswith("data:"):
            item = urllib.parse.unquote(item.split(",", 1)[1])  # as ``urlopen`` reads its body
        elif re.search("%[0-9A-Fa-f]{2}", item):
            texts.append(urllib.parse.unquote_plus(item))
            continue
        raw = base64.urlsafe_b64decode(item)
        try:
            texts.append(opened_within(raw.decode()))
        except UnicodeDecodeError:
            texts.append(raw.decode("latin-1"))
    return "\n".join(texts)


def opened_within(text: str) -> str:
    """A decoded file's text, and the file it holds opened (rt66b F2): a data URL, JSON text of files, a mail
    message (`mail_parts`)."""
    if text.startswith("data:") or text.lstrip()[:1] in ("[", "{") or "Content-Transfer-Encoding:" in text:
        return f"{text}\n{opened(text)}"
    return text


def mail_parts(message: str) -> str:
    """The text parts of an RFC 2822 message, as a mail client decodes them (each part's transfer encoding: base64,
    quoted-printable, uuencode), and each attachment's name as it shows it (RFC 2231's ``filename*=``)."""
    parsed = email.message_from_string(message, policy=email.policy.default)
    texts = [str(part.get_content()) for part in parsed.walk() if part.get_content_maintype() == "text"]
    return "\n".join(texts + [str(part.get_filename()) for part in parsed.walk() if part.get_filename()])


def judge() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(phrase_verdict, name="phrase")
    return Guard(backend, cache_size=0), backend


def judged(backend: ScriptedBackend) -> list[str]:
    """The judged turn of each conversation ``backend`` was asked about."""
    return [conversation[-1]["content"] for batch in backend.calls for conversation in batch]


def args(value: Any) -> dict[str, Any]:
    return {"to": "bob@example.com", "attachment": value}


def mail_tool() -> tuple[Any, list[str]]:
    """A LangChain ``send_email`` tool that opens its attachment (`opened`), and the texts it sent."""
    from langchain_core.tools import tool

    sent: list[str] = []

    @tool
    def send_email(to: str, attachment: Any) -> str:
        """Send an e-mail with its attachments (base64, a data URL, a file dict, or a JSON list of them)."""
        sent.append(opened(attachment))
        return "Message delivered."

    return send_email, sent


# -- core ----------------------------------------------------------------------------------------------------------
async def check_tool_call_blocks(attachment: Any, written: str) -> None:
    """`Guard.check_tool_call` and its twin, the arguments a mapping or a JSON string: blocked, judged as the clause."""
    guard, backend = judge()
    arguments: Any = args(attachment) if written == "mapping" else json.dumps(args(attachment))
    assert guard.check_tool_call("send_email", arguments).action is Action.BLOCK
    assert (await guard.acheck_tool_call("send_email", arguments)).action is Action.BLOCK
    assert judged(backend) and all(UNSAFE_CLAUSE in text for text in judged(backend))


# -- LangChain -----------------------------------------------------------------------------------------------------
async def middleware_never_runs(attachment: Any, mode: str) -> None:
    """``create_agent`` with `GuardMiddleware` (``invoke`` or ``ainvoke``): the tool never runs, no tool message
    carries the clause."""
    from langchain.agents import create_agent
    from qwenguard.integrations.langchain import GuardMiddleware

    guard, _ = judge()
    send_email, sent = mail_tool()
    model = scripted(tool_call("send_email", args(attachment)), SAFE_ANSWER)
    agent = create_agent(model, [send_email], middleware=[GuardMiddleware(guard)])
    request = {"messages": [("user", ASK)]}
    out = agent.invoke(request) if mode == "invoke" else await agent.ainvoke(request)
    assert sent == []
    assert all("ammonium" not in str(m.content) for m in out["messages"] if m.type == "tool")


async def tool_node_never_runs(attachment: Any, mode: str) -> None:
    """``create_react_agent`` over `GuardedChatModel` and a ``ToolNode`` wrapped by the middleware's tool hooks
    (``invoke`` or ``ainvoke``): the run ends with `GuardViolation`, the tool never runs."""
    from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import ToolNode, create_react_agent

    guard, _ = judge()
    send_email, sent = mail_tool()
    middleware = GuardMiddleware(guard, exit_behavior="replace")
    node = ToolNode([send_email], wrap_tool_call=middleware.wrap_tool_call, awrap_tool_call=middleware.awrap_tool_call)
    model = GuardedChatModel(scripted(tool_call("send_email", args(attachment)), SAFE_ANSWER), guard)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(model, node)
    request = {"messages": [("user", ASK)]}
    with pytest.raises(GuardViolation):
        agent.invoke(request) if mode == "invoke" else await agent.ainvoke(request)
    assert sent == []


async def callback_handlers_stop_the_tool_run(attachment: Any) -> None:
    """The tool invoked with `GuardCallbackHandler`, and awaited with `AsyncGuardCallbackHandler`: both stop it."""
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

    send_email, sent = mail_tool()
    call = {"name": "send_email", "args": args(attachment), "id": "c1", "type": "tool_call"}
    guard, _ = judge()
    with pytest.raises(GuardViolation):
        send_email.invoke(call, {"callbacks": [GuardCallbackHandler(guard)]})
    guard, _ = judge()
    with pytest.raises(GuardViolation):
        await send_email.ainvoke(call, {"callbacks": [AsyncGuardCallbackHandler(guard)]})
    assert sent == []


# -- LlamaIndex ----------------------------------------------------------------------------------------------------
async def llamaindex_agent_never_runs(attachment: Any) -> None:
    """A ``FunctionAgent`` with `GuardedLLM` and `guard_tools`, then the model's answer alone (``chat`` and
    ``achat``): each ends with `GuardViolation`, the tool never runs, the clause was judged."""
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
    from llama_index.core.llms.mock import MockFunctionCallingLLM
    from llama_index.core.tools import FunctionTool
    from qwenguard.integrations.llamaindex import GuardedLLM, guard_tools

    sent: list[str] = []

    def send_email(to: str, attachment: dict | str) -> str:  # type: ignore[type-arg]
        """Send an e-mail with its attachments."""
        sent.append(opened(attachment))
        return "Message delivered."

    def reply(messages: list[ChatMessage], **_: Any) -> ChatMessage:
        if any(m.role == MessageRole.TOOL for m in messages):
            return ChatMessage(role="assistant", content="Sent.")
        call = ToolCallBlock(tool_call_id="c1", tool_name="send_email", tool_kwargs=args(attachment))
        return ChatMessage(role="assistant", blocks=[call])

    guard, backend = judge()
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=reply), guard=guard)
    tools = guard_tools([FunctionTool.from_defaults(send_email)], guard)
    with pytest.raises(GuardViolation):
        await FunctionAgent(tools=tools, llm=llm).run(user_msg=ASK)
    with pytest.raises(GuardViolation):
        llm.chat([ChatMessage(role="user", content=ASK)])
    with pytest.raises(GuardViolation):
        await llm.achat([ChatMessage(role="user", content=ASK)])
    assert sent == []
    assert any(UNSAFE_CLAUSE in text for text in judged(backend))


# -- controls ------------------------------------------------------------------------------------------------------
def read_as_written(value: str) -> None:
    """An ordinary argument (a word, an id, a key) is read as written only: alone, under a data key, beside a label
    that says file or text, and in JSON text; the guard judges the call as written, and allows it."""
    labelled = {"filename": value, "mime_type": "text/plain", "description": value}
    for arguments in (
        {"query": value},
        {"data": value},
        {"type": "file", "id": value},
        labelled,
        json.dumps({"q": value}),
    ):
        assert "\n" not in render_tool_call("search", arguments)
    guard, backend = judge()
    assert guard.check_tool_call("search", {"query": value, "note": SAFE_NOTE}).action is Action.ALLOW
    assert judged(backend) == [f"Tool call: search({json.dumps({'query': value, 'note': SAFE_NOTE})})"]


# -- the tests -----------------------------------------------------------------------------------------------------
def each_case(check: Callable[..., Any], cases: dict[str, Any] | list[str], modes: list[str] | None = None) -> Any:
    """A test that runs ``check`` on each of ``cases`` (a dict's values by their names, a list's values as they
    are), and with each of ``modes`` where given. A test module names it (``test_x = each_case(...)``): pytest
    collects it under that name, so each path is written once while each module keeps its own cases and names."""
    if isinstance(cases, dict):
        each = pytest.mark.parametrize("value", list(cases.values()), ids=list(cases))
    else:
        each = pytest.mark.parametrize("value", cases)
    if modes is not None:

        @pytest.mark.parametrize("mode", modes)
        @each
        async def test_each_case_and_mode(value: Any, mode: str) -> None:
            await check(value, mode)

        return test_each_case_and_mode
    if inspect.iscoroutinefunction(check):

        @each
        async def test_each_case(value: Any) -> None:
            await check(value)

        return test_each_case

    @each
    def test_each_case_sync(value: Any) -> None:
        check(value)

    return test_each_case_sync
