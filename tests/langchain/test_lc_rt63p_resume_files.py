"""rt63d F1: a text file in a ``Command(resume=...)`` value, or in a tool's ``interrupt(...)`` payload.

A human-in-the-loop tool asks the user for an attachment with ``interrupt()`` and sends what it is given, decoded: a
``{"type": "file", "mime_type": "text/plain", "base64": ...}`` block, a ``data:text/plain;base64,...`` URL, a
``HumanMessage`` holding such a block, UTF-16 bytes with a byte-order mark. `GuardMiddleware` and
`GuardCallbackHandler` read the value by a plainer walk than a message's (the base64 as it is, bytes as UTF-8), so the
tool sent the unsafe clause; the same walk let a tool's interrupt payload holding such a file reach the run's caller.
Both are now read as a tool's artifact is (`_messages.payload_leaf`): bytes by the blob rule, a message as a message,
a file's data as the text it holds. Counted in characters: what the tool sent, what the caller was handed.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
import base64
from typing import Any

import pytest
import test_lc_rt59g_tool_writes as rt59g
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, GuardViolation, QwenGuardError, Stage
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware
from qwenguard.integrations.langchain._messages import artifact_text

WORD = "ammonium"
MODES = ["sync", "async"]
PIECES = ["middleware", "handler"]
INPUTS = {"messages": [{"role": "user", "content": "E-mail Bob the notes; I will attach them."}]}
SAFE_FILE = "Notes: Paris is the capital of France."
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def file_block(text: str) -> dict[str, str]:
    return {"type": "file", "mime_type": "text/plain", "base64": base64.b64encode(text.encode()).decode()}


#: A text file, encoded as a client (or a page a tool read) may hand it over.
FILES = {
    "file block": file_block,
    "data: URL": lambda text: "data:text/plain;base64," + base64.b64encode(text.encode()).decode(),
    "HumanMessage with a file block": lambda text: HumanMessage(
        [{"type": "text", "text": "attached"}, file_block(text)]
    ),
    "UTF-16 bytes": lambda text: text.encode("utf-16"),
    "nested source block": lambda text: {
        "type": "document",
        "source": {"type": "base64", "media_type": "text/plain", "data": base64.b64encode(text.encode()).decode()},
    },
}


def opened(value: Any) -> str:
    """A file as the application opens it: decoded, whatever way it was encoded (the tool's and the caller's side)."""
    if isinstance(value, bytes):
        return value.decode("utf-16") if value[:2] in (b"\xff\xfe", b"\xfe\xff") else value.decode()
    if isinstance(value, HumanMessage):
        return "\n".join(opened(block) for block in value.content if isinstance(block, dict))
    if isinstance(value, str):
        return base64.b64decode(value.split(",", 1)[1]).decode() if value.startswith("data:") else value
    if isinstance(value, dict):
        if "base64" in value:
            return base64.b64decode(value["base64"]).decode(errors="replace")
        if "data" in value:
            return base64.b64decode(value["data"]).decode(errors="replace")
        return "\n".join(opened(v) for v in value.values())
    return str(value)


def guard() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)


def runner(mode: str) -> Any:
    """``run(agent, input, config)`` in ``mode``: the agent's ``invoke`` or ``ainvoke``."""
    if mode == "sync":
        return lambda agent, inputs, config: agent.invoke(inputs, config)
    return lambda agent, inputs, config: asyncio.run(agent.ainvoke(inputs, config))


def guarded(tools: list[Any], piece: str, mode: str) -> tuple[Any, dict[str, Any]]:
    """An agent whose model calls ``tools[0]`` once, guarded by ``piece``; and its run's config."""
    middleware = [GuardMiddleware(guard())] if piece == "middleware" else []
    model = scripted(tool_call(tools[0].name, {"to": "bob@example.com"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)
    agent = create_agent(model, tools, middleware=middleware, checkpointer=InMemorySaver())
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    if piece == "handler":
        config["callbacks"] = [(GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard())]
    return agent, config


# -- a resume value holding a file ------------------------------------------------------------------------------------


def mailer() -> tuple[Any, list[str]]:
    sent: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Send an e-mail; asks the user for the body (an attachment)."""
        sent.append(opened(interrupt("Attach the e-mail body.")))  # the action: the mail goes out, the file opened
        return "sent"

    return send_email, sent


def resumed(piece: str, mode: str, value: Any, by_id: bool) -> tuple[list[str], Any, Exception | None]:
    """Run to the tool's interrupt, resume with ``value`` (in a map from the interrupt's id with ``by_id``): what the
    tool sent, the run's result and the guard's stop."""
    send_email, sent = mailer()
    agent, config = guarded([send_email], piece, mode)
    run = runner(mode)
    pending = run(agent, INPUTS, config)["__interrupt__"][0]
    try:
        return sent, run(agent, Command(resume={pending.id: value} if by_id else value), config), None
    except QwenGuardError as stop:
        return sent, None, stop


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("by_id", [False, True], ids=["value", "map"])
@pytest.mark.parametrize("encoding", list(FILES))
def test_a_text_file_in_a_resume_value_is_judged_as_the_tool_opens_it(encoding, by_id, piece, mode):
    sent, result, stop = resumed(piece, mode, FILES[encoding](UNSAFE_CLAUSE), by_id)
    assert sum(text.count(WORD) for text in sent) == 0  # the tool sent none of the clause
    if piece == "handler":
        assert isinstance(stop, GuardViolation) and stop.decision.stage is Stage.PROMPT
    else:
        notices = [m.text for m in result["messages"] if m.type == "tool"]
        assert notices and "blocked by the safety guard" in notices[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("encoding", list(FILES))
def test_a_safe_text_file_in_a_resume_value_reaches_the_tool(encoding, piece, mode):
    sent, result, stop = resumed(piece, mode, FILES[encoding](SAFE_FILE), False)
    assert stop is None and len(sent) == 1 and SAFE_FILE in sent[0]
    assert result["messages"][-1].text == SAFE_ANSWER


IMAGES = {
    "image block": {"type": "file", "mime_type": "image/png", "base64": base64.b64encode(PNG).decode()},
    "PNG bytes": PNG,
    "image data: URL": "data:image/png;base64," + base64.b64encode(PNG).decode(),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("image", list(IMAGES))
def test_an_image_in_a_resume_value_is_no_text_and_passes(image, piece, mode):
    # Media holds no words: an image is read as an artifact's is, and never blocks a resume by itself.
    received: list[Any] = []

    @tool
    def send_email(to: str) -> str:
        """Send an e-mail; asks the user for a picture to attach."""
        received.append(interrupt("Attach a picture."))
        return "sent"

    agent, config = guarded([send_email], piece, mode)
    run = runner(mode)
    run(agent, INPUTS, config)
    result = run(agent, Command(resume=IMAGES[image]), config)
    assert len(received) == 1 and result["messages"][-1].text == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
def test_words_under_a_files_data_key_are_judged_as_they_are(piece, mode):
    # A string that is no base64 of a text is read as it is as well as decoded: a tool may use it undecoded.
    block = {"type": "file", "mime_type": "text/plain", "base64": UNSAFE_CLAUSE}
    sent: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Send an e-mail; asks the user for the body."""
        sent.append(interrupt("Attach the e-mail body.")["base64"])  # the body as given, not decoded
        return "sent"

    agent, config = guarded([send_email], piece, mode)
    run = runner(mode)
    run(agent, INPUTS, config)
    try:
        run(agent, Command(resume=block), config)
    except GuardViolation:
        pass
    assert sent == []


# -- an interrupt payload holding a file ------------------------------------------------------------------------------


def reviewer(payload: Any) -> Any:
    @tool
    def send_email(to: str) -> str:
        """Fetch the page to forward and ask the user to review it first."""
        return f"forwarded: {interrupt({'question': 'Forward this page?', 'page': payload})}"

    return send_email


def handed_to_caller(result: Any) -> str:
    """What the run's caller reads of the interrupts it was handed, each file opened."""
    if result is None:
        return ""
    return "\n".join(opened(pending.value) for pending in result.get("__interrupt__", ()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("encoding", list(FILES))
def test_a_text_file_in_an_interrupt_payload_never_reaches_the_caller(encoding, piece, mode):
    agent, config = guarded([reviewer(FILES[encoding](UNSAFE_CLAUSE))], piece, mode)
    try:
        result, stop = runner(mode)(agent, INPUTS, config), None
    except QwenGuardError as error:
        result, stop = None, error
    assert handed_to_caller(result).count(WORD) == 0
    if piece == "handler":
        assert isinstance(stop, GuardViolation) and stop.decision.stage is Stage.TOOL_RESULT
    else:
        assert stop is None and "__interrupt__" not in result
        assert any(rt59g.NOTICE in m.text for m in result["messages"] if m.type == "tool")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("encoding", list(FILES))
def test_a_safe_text_file_in_an_interrupt_payload_reaches_the_caller(encoding, piece, mode):
    agent, config = guarded([reviewer(FILES[encoding](SAFE_FILE))], piece, mode)
    result = runner(mode)(agent, INPUTS, config)
    assert SAFE_FILE in handed_to_caller(result)


# -- a tool's artifact holding a file (the reading it shares) ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), rt59g.PIECES)
@pytest.mark.parametrize("encoding", ["file block", "data: URL", "nested source block"])
def test_a_text_file_in_an_artifact_is_withheld(encoding, piece, exit_behavior, mode):
    kw = Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)
    artifact = {"attachment": FILES[encoding](rt59g.PAGE)}
    agent, config = rt59g.guarded(kw, [rt59g.artifact_tool(artifact)], piece, mode, exit_behavior or "end")
    seen, error = rt59g.run(agent, config, mode)
    assert rt59g.stopped_or_withheld(piece, exit_behavior, seen, error)


def test_an_artifacts_file_is_read_as_the_text_it_holds_and_an_image_as_none():
    assert rt59g.PAGE in artifact_text({"attachment": file_block(rt59g.PAGE)}, 1_000)
    # Base64 of a text is read decoded only (it spells no words); an image's is read as it is, as it was.
    assert base64.b64encode(rt59g.PAGE.encode()).decode() not in artifact_text(file_block(rt59g.PAGE), 1_000)
    encoded = base64.b64encode(PNG).decode()
    assert encoded in artifact_text({"type": "file", "mime_type": "image/png", "base64": encoded}, 10_000)
