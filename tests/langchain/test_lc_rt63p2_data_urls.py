"""rt63h F2: a ``data:`` URL written as a URL may carry it, opened by Python's own ``urllib.request.urlopen``.

``urlopen`` strips blanks around a URL and a ``<URL:...>`` wrapper (``urllib.parse.unwrap``) and percent-decodes a
base64 body before it decodes it (``DataHandler``). The guard took a URL only when it started with ``data:`` and
decoded its body as it was: a resume value holding a percent-encoded (``%2B %2F %3D``) base64 body, or a newline
before ``data:``, was judged as its base64 while the tool that opened it e-mailed the clause (middleware and callback
handler); a tool's interrupt payload holding one reached the run's caller, and a file block's URL in a user's message
reached the model. Each is now read as ``urlopen`` reads it (`_messages._data_url`), unpadded base64 too. Counted in
characters: what the tool sent, what the caller opened, what the model read.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import base64
import urllib.parse
import urllib.request
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.types import Command, interrupt
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted
from qwenguard.core import GuardViolation, QwenGuardError, Stage
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware
from test_lc_rt63p_resume_files import guard, guarded, runner  # the same agents and runs as the rt63d F1 tests

WORD = "ammonium"
MODES = ["sync", "async"]
PIECES = ["middleware", "handler"]
INPUTS = {"messages": [{"role": "user", "content": "E-mail Bob the notes; I will attach them."}]}
# Its base64 holds "/" and "=" (percent-encoded as %2F, %3D): ">> ok?!" does it.
SAFE_FILE = "Notes: Paris is the capital of France. Reply >> ok?!"
UNSAFE_FILE = f"{UNSAFE_CLAUSE} Reply >> ok?!"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


#: A text file as a ``data:`` URL that ``urlopen`` opens to the text.
URLS = {
    "percent-encoded base64": lambda text: "data:text/plain;base64," + urllib.parse.quote(b64(text), safe=""),
    "newline before data:": lambda text: "\n data:text/plain;base64," + b64(text),
    "<URL:...> wrapper": lambda text: "<URL:data:text/plain;base64," + b64(text) + ">",
}


def opened(url: str) -> str:
    """The URL as the application opens it: Python's own ``urlopen``."""
    with urllib.request.urlopen(url) as response:  # noqa: S310 - a data: URL, opened in process
        return response.read().decode()


def test_each_url_opens_to_its_text():
    # The attack's premise: Python itself opens every one of these URLs to the file's text.
    assert all(opened(make(UNSAFE_FILE)) == UNSAFE_FILE for make in URLS.values())


# -- a resume value holding the URL -----------------------------------------------------------------------------------


def resumed(piece: str, mode: str, url: str) -> tuple[list[str], Any, Exception | None]:
    sent: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Send an e-mail; asks the user for the attachment's URL."""
        sent.append(opened(interrupt("Attachment URL?")))  # the action: the file goes out, opened
        return "sent"

    agent, config = guarded([send_email], piece, mode)
    run = runner(mode)
    run(agent, INPUTS, config)
    try:
        return sent, run(agent, Command(resume=url), config), None
    except QwenGuardError as stop:
        return sent, None, stop


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("form", list(URLS))
def test_a_data_url_in_a_resume_value_is_judged_as_urlopen_opens_it(form, piece, mode):
    sent, result, stop = resumed(piece, mode, URLS[form](UNSAFE_FILE))
    assert sum(text.count(WORD) for text in sent) == 0  # the tool sent none of the clause
    if piece == "handler":
        assert isinstance(stop, GuardViolation) and stop.decision.stage is Stage.PROMPT
    else:
        assert stop is None and any("blocked by the safety guard" in m.text for m in result["messages"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("form", list(URLS))
def test_a_safe_data_url_in_a_resume_value_reaches_the_tool(form, piece, mode):
    sent, result, stop = resumed(piece, mode, URLS[form](SAFE_FILE))
    assert stop is None and sent == [SAFE_FILE] and result["messages"][-1].text == SAFE_ANSWER


# -- an interrupt payload holding the URL -----------------------------------------------------------------------------


def reviewer(url: str) -> Any:
    @tool
    def send_email(to: str) -> str:
        """Fetch the notes to forward and ask the user to review them first."""
        return f"forwarded: {interrupt({'question': 'Forward these notes?', 'review': url})}"

    return send_email


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("form", list(URLS))
def test_a_data_url_in_an_interrupt_payload_never_reaches_the_caller(form, piece, mode):
    agent, config = guarded([reviewer(URLS[form](UNSAFE_FILE))], piece, mode)
    try:
        result, stop = runner(mode)(agent, INPUTS, config), None
    except QwenGuardError as error:
        result, stop = None, error
    handed = [pending.value["review"] for pending in (result or {}).get("__interrupt__", ())]
    assert sum(opened(url).count(WORD) for url in handed) == 0  # the caller opened none of the clause
    if piece == "handler":
        assert isinstance(stop, GuardViolation) and stop.decision.stage is Stage.TOOL_RESULT
    else:
        assert stop is None and handed == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", list(URLS))
def test_a_safe_data_url_in_an_interrupt_payload_reaches_the_caller(form, mode):
    agent, config = guarded([reviewer(URLS[form](SAFE_FILE))], "middleware", mode)
    result = runner(mode)(agent, INPUTS, config)
    assert [opened(pending.value["review"]) for pending in result["__interrupt__"]] == [SAFE_FILE]


# -- a user's message holding the URL (the reading messages share) ----------------------------------------------------

#: As ``URLS``, and unpadded base64 (a lenient decoder's, ``atob``'s, reading).
MESSAGE_URLS = {**URLS, "unpadded base64": lambda text: "data:text/plain;base64," + b64(text).rstrip("=")}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("form", list(MESSAGE_URLS))
def test_a_data_url_in_a_users_file_block_never_reaches_the_model(form, piece, mode):
    assert b64(UNSAFE_FILE).endswith("=")  # so that the unpadded form drops its padding
    model = scripted(SAFE_ANSWER)
    middleware = [GuardMiddleware(guard())] if piece == "middleware" else []
    agent = create_agent(model, [], middleware=middleware)
    config: dict[str, Any] = {}
    if piece == "handler":
        config["callbacks"] = [(GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard())]
    block = {"type": "file", "mime_type": "text/plain", "url": MESSAGE_URLS[form](UNSAFE_FILE)}
    message = HumanMessage([{"type": "text", "text": "Summarise the attached notes."}, block])
    try:
        runner(mode)(agent, {"messages": [message]}, config)
    except GuardViolation:
        pass
    assert model.seen == []  # the model read none of it
