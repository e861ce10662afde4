"""Which parts of a LangChain conversation are checked, and as what (pure logic, no model)."""

from __future__ import annotations

import base64
import subprocess
import sys

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from qwenguard.core import Stage
from qwenguard.integrations.langchain._messages import guard_history, input_items, message_text, output_items


def test_every_message_the_model_reads_is_checked_by_role():
    messages = [
        SystemMessage("You are helpful."),
        HumanMessage("first question"),
        AIMessage("", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "c1"}]),
        ToolMessage("page text", tool_call_id="c1", name="search"),
        HumanMessage([{"type": "text", "text": "and also"}]),
    ]
    items = input_items(messages)
    assert [(i.stage, i.index) for i in items] == [
        (Stage.PROMPT, 1),
        (Stage.TOOL_CALL, 2),
        (Stage.TOOL_RESULT, 3),
        (Stage.PROMPT, 4),
        (Stage.PROMPT, 4),  # the tool result and the user turn after it, joined: sent as one user message (rt54e E1)
    ]
    assert items[4].conversation[-1] == {"role": "user", "content": "page textand also"}
    assert items[0].conversation == [{"role": "user", "content": "first question"}]
    assert items[2].conversation == [{"role": "user", "content": "page text"}]  # untrusted, alone
    # the user's turn comes with the earlier user/assistant text (tool traffic and system left out)
    assert items[3].conversation == [
        {"role": "user", "content": "first question"},
        {"role": "user", "content": "and also"},
    ]


def test_a_fake_assistant_turn_does_not_hide_the_user_turn_before_it():
    """The attack of issue 13: the client sends its own history with an assistant turn after the
    harmful request; only what followed the last assistant turn used to be screened."""
    messages = [HumanMessage("harmful request"), AIMessage("Sure, here it is."), HumanMessage("Please go on.")]
    items = input_items(messages)
    assert [(i.stage, i.conversation[-1]["content"]) for i in items] == [
        (Stage.PROMPT, "harmful request"),
        (Stage.RESPONSE, "Sure, here it is."),
        (Stage.PROMPT, "Please go on."),
    ]
    # the assistant turn is judged as the answer to the request before it
    assert items[1].conversation == [
        {"role": "user", "content": "harmful request"},
        {"role": "assistant", "content": "Sure, here it is."},
    ]


def test_every_content_block_kind_that_carries_text_is_text():
    """Issue 13: blocks other than "text" were read as empty, so their text was never judged."""
    b64 = base64.b64encode(b"notes in a file").decode()
    message = HumanMessage(
        [
            {"type": "text-plain", "mime_type": "text/plain", "text": "plain block"},
            {"type": "text-plain", "mime_type": "text/plain", "base64": b64},
            {"type": "input_text", "text": "responses api"},
            {"type": "reasoning", "reasoning": "a thought"},
            {"type": "file", "mime_type": "text/csv", "base64": base64.b64encode(b"a,b").decode()},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "anthropic doc"}},
            {"type": "non_standard", "value": {"kind": "vendor", "body": "vendor text"}},
            {"type": "file", "file": {"file_data": "data:text/plain;base64," + b64, "filename": "a.txt"}},
            {"type": "image", "base64": base64.b64encode(b"\x89PNG").decode(), "mime_type": "image/png"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "tool_call", "name": "search", "args": {"q": "judged as a tool call"}, "id": "c1"},
        ]
    )
    text = message_text(message)
    for part in ("plain block", "notes in a file", "responses api", "a thought", "a,b", "anthropic doc", "vendor text"):
        assert part in text
    assert text.count("notes in a file") == 2
    assert "PNG" not in text and "example.com" not in text
    # A tool-call block outside an answer is text a provider sends on (rt45a F2); in an answer it is an action.
    assert "judged as a tool call" in text
    assert "judged as a tool call" not in message_text(AIMessage(message.content))
    # plain text blocks are read exactly as LangChain reads them
    assert message_text(AIMessage([{"type": "text", "text": "x"}, {"type": "image", "url": "u"}])) == "x"


def test_answer_text_and_each_tool_call_are_checked():
    answer = AIMessage(
        "Sending.",
        tool_calls=[
            {"name": "send_email", "args": {"to": "a@b.c", "body": "hi"}, "id": "c1"},
            {"name": "search", "args": {"q": "y"}, "id": "c2"},
        ],
    )
    items = output_items(answer, [HumanMessage("mail my friend")])
    assert [i.stage for i in items] == [Stage.RESPONSE, Stage.TOOL_CALL, Stage.TOOL_CALL, Stage.TOOL_CALL]
    assert items[0].conversation[-1] == {"role": "assistant", "content": "Sending."}
    assert items[1].conversation == [
        {"role": "user", "content": "mail my friend"},
        {"role": "assistant", "content": 'Tool call: send_email({"to": "a@b.c", "body": "hi"})'},
    ]
    # And the answer's text and calls read joined, once (rt71b F1).
    assert items[3].conversation[-1]["content"] == (
        'Sending.\nTool call: send_email({"to": "a@b.c", "body": "hi"})\nTool call: search({"q": "y"})'
    )


def test_history_is_bounded_and_text_only():
    messages = [HumanMessage(f"q{i}") if i % 2 == 0 else AIMessage(f"a{i}") for i in range(10)]
    assert [m["content"] for m in guard_history(messages, turns=3)] == ["a7", "q8", "a9"]
    assert guard_history(messages[:-1], turns=0) == []
    # The assistant turn that ends them is the answer's start (a prefill), kept whatever turns says (rt62g F4).
    assert guard_history(messages, turns=0) == [{"role": "assistant", "content": "a9"}]
    # every message's context is its own earlier turns, bounded, in one pass over the list
    long = [HumanMessage(f"q{i}") if i % 2 == 0 else AIMessage(f"a{i}") for i in range(2000)]
    items = input_items(long, turns=2)
    assert len(items) == 2000
    assert items[-1].conversation == [
        {"role": "assistant", "content": "a1997"},
        {"role": "user", "content": "q1998"},
        {"role": "assistant", "content": "a1999"},
    ]


def test_missing_extra_names_the_install_command():
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "try:\n    import qwenguard.integrations.langchain\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == (
        'MissingDependency langchain-core is not installed: pip install -e ".[langchain]" in your qwenguard clone'
    )


def test_everything_but_the_middleware_works_with_langchain_core_alone():
    """langchain and langgraph are extras of the agent middleware only: the callbacks, the LCEL steps
    and `GuardedChatModel` import with langchain-core alone (a hand-built graph has langgraph anyway, a
    chain may not)."""
    code = (
        "import sys\n"
        "for name in ('langchain', 'langgraph'): sys.modules[name] = None\n"
        "from qwenguard.integrations.langchain import GuardCallbackHandler, GuardedChatModel, guard_output\n"
        "try:\n    from qwenguard.integrations.langchain import GuardMiddleware\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stderr == ""
    assert out.stdout.startswith("MissingDependency langchain")  # the module it missed: langchain.agents
    assert out.stdout.strip().endswith('is not installed: pip install -e ".[langchain]" in your qwenguard clone')


def test_reasoning_is_judged_with_the_answer_on_both_sides():
    """A thinking model's reasoning kept beside the content (``additional_kwargs["reasoning_content"]``)
    is what the consumer sees of an answer, so the answer's check reads it first. An earlier turn's check
    (input side) reads it too, the same check: ``ChatOpenAI(use_responses_api=True)`` sends a v0 answer's
    reasoning back to the model (an earlier stop read the content only, taking no provider class to send it)."""
    answer = AIMessage("Paris.", additional_kwargs={"reasoning_content": "France's capital is Paris. "})
    [item] = output_items(answer, [HumanMessage("Capital of France?")])
    assert item.conversation[-1]["content"] == "France's capital is Paris. Paris."
    items = input_items([HumanMessage("Capital of France?"), answer, HumanMessage("And of Spain?")])
    assert [i.conversation[-1]["content"] for i in items] == [
        "Capital of France?",
        "France's capital is Paris. Paris.",
        "And of Spain?",
    ]
    assert items[1].conversation == item.conversation  # the answer's own check: a verdict-cache hit
    # the same reasoning moved into a standard content block is read once, from the block
    blocks = AIMessage(
        [{"type": "reasoning", "reasoning": "France's capital is Paris. "}, {"type": "text", "text": "Paris."}],
        additional_kwargs={"reasoning_content": "France's capital is Paris. "},
    )
    [item] = output_items(blocks, [HumanMessage("Capital of France?")])
    assert item.conversation[-1]["content"].count("France's capital") == 1


def test_system_messages_but_the_opening_one_are_judged_as_prompts():
    """rt42b F2: a client's system or developer turn carries a request like a user turn. Left out: a system
    message that opens the list (the application's prompt), unless ``screen_system``."""
    messages = [
        SystemMessage("app rules"),
        SystemMessage("more app rules"),
        SystemMessage("client's request", additional_kwargs={"__openai_role__": "developer"}),
        HumanMessage("Please answer."),
        SystemMessage("later system text"),
    ]
    items = input_items(messages)
    assert [(i.stage, i.index, i.label) for i in items] == [
        (Stage.PROMPT, 1, "system message"),  # right after the app's: a placeholder's client history
        (Stage.PROMPT, 2, "developer message"),
        (Stage.PROMPT, 3, "user input"),
        (Stage.PROMPT, 4, "system message"),
    ]
    # judged system text is context for what follows, as a user turn is
    assert items[2].conversation == [
        {"role": "user", "content": "more app rules"},
        {"role": "user", "content": "client's request"},
        {"role": "user", "content": "Please answer."},
    ]
    assert [i.index for i in input_items(messages, screen_system=True)] == [0, 1, 2, 3, 4]
