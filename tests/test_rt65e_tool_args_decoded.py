"""rt65e F1: a text file in a tool call's arguments was judged as its base64 letters while the tool decoded it and
sent the text. An e-mail tool that takes its attachment as a file block (``{"type": "file", "mime_type":
"text/plain", "base64": ...}``), a ``data:`` URL, a mail API's attachment (``{"content_base64": ...}``) or bare
base64 (Gmail's ``raw`` message is URL-safe base64) sent "Mix ammonium nitrate ..." on every tool-argument path:
GuardMiddleware, GuardedChatModel + ToolNode(wrap_tool_call), GuardCallbackHandler, a LlamaIndex agent with
GuardedLLM and guard_tools, and the core ``Guard.check_tool_call``. The same bytes in a user's file block were
decoded. `render_tool_call` now judges each file an argument holds as the text it holds too (`files_read`), and
ordinary arguments (words, ids, digests, a long word that is base64 of binary) are read as written only.

Real agents and tools on every path (`tool_file_paths`); a scripted judge that flags "mix ammonium"
(`faults.phrase_verdict`)."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import pytest
import tool_file_paths as paths
from faults import ScriptedBackend, phrase_verdict
from qwenguard.core import Guard, InputTooLarge
from qwenguard.core.formats.conversations import render_tool_call
from tool_file_paths import B64, MODES, SAFE_NOTE, WRITTEN, args, each_case, judge, judged, mail_tool, opened

sys.path.insert(0, str(Path(__file__).parent / "langchain"))
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call  # noqa: E402

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


def test_the_tool_decodes_each_shape_to_the_clause() -> None:
    """The premise: every shape is the clause to the tool."""
    assert all(UNSAFE_CLAUSE in opened(value) for value in SHAPES.values())


# -- every tool-argument path (tool_file_paths) --------------------------------------------------------------------
test_check_tool_call_judges_the_file_an_argument_holds = each_case(paths.check_tool_call_blocks, SHAPES, WRITTEN)
test_middleware_never_runs_a_tool_whose_attachment_is_the_clause = each_case(paths.middleware_never_runs, SHAPES, MODES)
test_react_agent_with_tool_node_never_runs_the_call = each_case(paths.tool_node_never_runs, SHAPES, MODES)
test_callback_handler_stops_the_tool_run = each_case(paths.callback_handlers_stop_the_tool_run, SHAPES)
test_llamaindex_agent_never_runs_the_call = each_case(paths.llamaindex_agent_never_runs, SHAPES)


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


test_ordinary_arguments_are_read_as_written = each_case(paths.read_as_written, ORDINARY)


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
