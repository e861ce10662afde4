"""Which parts of a LangChain conversation are checked, and as what (pure logic, no model)."""

from __future__ import annotations

import subprocess
import sys

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from qwenguard.core import Stage
from qwenguard.integrations.langchain._messages import guard_history, message_text, output_items, pending_inputs


def test_only_what_is_new_since_the_model_spoke_is_checked():
    messages = [
        SystemMessage("You are helpful."),
        HumanMessage("first question"),
        AIMessage("", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "c1"}]),
        ToolMessage("page text", tool_call_id="c1", name="search"),
        HumanMessage([{"type": "text", "text": "and also"}]),
    ]
    items = pending_inputs(messages)
    assert [(i.stage, i.index) for i in items] == [(Stage.TOOL_RESULT, 3), (Stage.PROMPT, 4)]
    assert items[0].conversation == [{"role": "user", "content": "page text"}]  # untrusted, alone
    # the user's turn comes with the earlier user/assistant text (tool traffic and system left out)
    assert items[1].conversation == [
        {"role": "user", "content": "first question"},
        {"role": "user", "content": "and also"},
    ]


def test_answer_text_and_each_tool_call_are_checked():
    answer = AIMessage(
        "Sending.",
        tool_calls=[
            {"name": "send_email", "args": {"to": "a@b.c", "body": "hi"}, "id": "c1"},
            {"name": "search", "args": {"q": "y"}, "id": "c2"},
        ],
    )
    items = output_items(answer, [HumanMessage("mail my friend")])
    assert [i.stage for i in items] == [Stage.RESPONSE, Stage.TOOL_CALL, Stage.TOOL_CALL]
    assert items[0].conversation[-1] == {"role": "assistant", "content": "Sending."}
    assert items[1].conversation == [
        {"role": "user", "content": "mail my friend"},
        {"role": "assistant", "content": 'Tool call: send_email({"to": "a@b.c", "body": "hi"})'},
    ]


def test_history_is_bounded_and_text_only():
    messages = [HumanMessage(f"q{i}") if i % 2 == 0 else AIMessage(f"a{i}") for i in range(10)]
    assert [m["content"] for m in guard_history(messages, turns=3)] == ["a7", "q8", "a9"]
    assert guard_history(messages, turns=0) == []
    assert message_text(AIMessage([{"type": "text", "text": "x"}, {"type": "image", "url": "u"}])) == "x"


def test_missing_extra_names_the_install_command():
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "try:\n    import qwenguard.integrations.langchain\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "MissingDependency langchain-core is not installed: pip install 'qwenguard[langchain]'"
