"""Reading an answer's actions and a history's tool-call arguments takes work linear in their size.

Two attacks found by the red team (rt48c), measured through `GuardedLLM.chat` before the fix:

- F1: a ReAct answer with one ``Action:`` and thousands of ``\\nAction Input: x`` lines (no ``{`` after them,
  or one shared by all): each line searched back to the answer's start and on to its end; 100k characters
  0.12 s, 200k 0.49 s, 400k 1.92 s (x3.9 per doubling), about 12 s at the default 1M ``max_chars``.
- F4: a history turn with thousands of ``additional_kwargs["tool_calls"]`` entries under one id, with argument
  text that is not a JSON object: each text compared with every earlier one of the id; 250 KB 0.45 s,
  495 KB 1.5 s, 997 KB 5.0 s.

Counted as work, not time (timing targets live in bench/): the characters the text searches pass over, or
the Python frames entered. Beside each: what is read, and judged, is what was read before."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import sys
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from qwenguard.core import Guard, GuardViolation, InputTooLarge, Policy, Stage, StagePolicy
from qwenguard.integrations.llamaindex import GuardedLLM, _messages
from qwenguard.integrations.llamaindex._messages import _unparsed_arguments, react_actions

UNSAFE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
#: Answers that talk about it are let through flagged; actions that do it are blocked.
TALK_IS_FLAGGED = Policy(
    stages={
        Stage.RESPONSE: StagePolicy(ignore_categories=["Violent"]),
        Stage.STREAM: StagePolicy(ignore_categories=["Violent"]),
    }
)
#: Characters searched per character of the answer: a few passes over it, however many lines it has.
SEARCH_PASSES = 6


class CountingText(str):
    """Text whose ``find`` and ``rfind`` count the characters they pass over (in ``scanned``)."""

    scanned = 0

    def find(self, sub: str, start: Any = None, end: Any = None) -> int:  # type: ignore[override]
        low, high, _ = slice(start, end).indices(len(self))
        found = super().find(sub, low, high)
        self.scanned += (found + len(sub) if found >= 0 else high) - low
        return found

    def rfind(self, sub: str, start: Any = None, end: Any = None) -> int:  # type: ignore[override]
        low, high, _ = slice(start, end).indices(len(self))
        found = super().rfind(sub, low, high)
        self.scanned += high - (found if found >= 0 else low)
        return found


def scanned_reading(text: str) -> tuple[int, list[Any]]:
    """(characters searched, actions read) for `react_actions` on ``text``."""
    counted = CountingText(text)
    actions = react_actions(counted)
    return counted.scanned, actions


def described(actions: list[Any]) -> list[tuple[str, str, Any]]:
    return [(a.tool_id, a.tool_name, a.tool_kwargs) for a in actions]


def replying(text: str) -> MockFunctionCallingLLM:
    return MockFunctionCallingLLM(
        response_generator=lambda messages, **kwargs: ChatMessage(role="assistant", content=text)
    )


# -- F1: ReAct answers with many input lines ------------------------------------------------------------
SHAPES = {
    # One action, its input lines with no ``{`` at all: nothing to judge, and nothing found before.
    "no_brace": ("Thought: I will act.\nAction: search", "\nAction Input: x", "", []),
    # The same, all sharing the one ``{`` at the end: one action, its arguments that object.
    "one_shared_brace": (
        "Thought: I will act.\nAction: search",
        "\nAction Input: x",
        '\nAction Input: {"q": "x"}',
        [("react-0", "search", {"q": "x"})],
    ),
    # An action per line, no leading Thought (the parser picks the last): the last action, and the first.
    "actions_sharing_a_brace": (
        "I will act.",
        "\nAction: search\nAction Input: x",
        '\nAction: lookup\nAction Input: {"q": "x"}',
        [("react-0", "lookup", {"q": "x"})],
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_react_answer_with_thousands_of_input_lines_is_read_in_linear_work(shape: str) -> None:
    """F1: every input line searched back to the answer's start and on to its end (quadratic: 16M characters
    searched for a 16 KB answer); now a few passes over it, the actions read the same."""
    opening, line, ending, expected = SHAPES[shape]
    for lines in (1_000, 4_000):
        text = opening + line * lines + ending
        scanned, actions = scanned_reading(text)
        assert scanned <= SEARCH_PASSES * len(text), f"{scanned:,} characters searched in a {len(text):,}-long answer"
        assert described(actions) == expected


def test_an_unsafe_action_after_thousands_of_input_lines_is_judged_in_linear_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F1 through `GuardedLLM.chat`: the action the parser runs (the first after ``Thought:``, its arguments
    the first ``{`` after its input line) is judged, and blocked, however many lines come before."""
    searched: list[tuple[int, int]] = []

    def counted_react_actions(text: str) -> list[Any]:
        scanned, actions = scanned_reading(text)
        searched.append((scanned, len(text)))
        return actions

    monkeypatch.setattr(_messages, "react_actions", counted_react_actions)
    answer = (
        "Thought: I will send it.\nAction: send_email"
        + "\nAction Input: x" * 4_000
        + f'\nAction Input: {{"to": "bob@example.com", "body": "{UNSAFE}"}}'
    )
    llm = GuardedLLM(llm=replying(answer), guard=Guard(ScriptedBackend(keyword_verdict), TALK_IS_FLAGGED))
    with pytest.raises(GuardViolation) as stopped:
        llm.chat([ChatMessage(role="user", content="Please email Bob.")])
    assert stopped.value.decision.stage is Stage.TOOL_CALL
    assert searched, "the answer's actions were not read"
    assert all(scanned <= SEARCH_PASSES * length for scanned, length in searched), searched


def test_honest_react_answers_read_the_actions_they_read_before() -> None:
    """The actions of honest answers, and of the 17-decoy attack, as the code before the fix read them."""
    two_steps = (
        'Thought: I need the weather first.\nAction: search\nAction Input: {"q": "weather in Paris"}\n'
        "Observation: Sunny.\nThought: Now I can email Bob.\nAction: send_email\n"
        'Action Input: {"to": "bob@example.com", "body": "It is sunny."}'
    )
    assert described(react_actions(two_steps)) == [
        ("react-0", "search", two_steps[two_steps.index('{"q"') :]),  # to the last ``}``: not JSON, its text
        ("react-1", "send_email", {"to": "bob@example.com", "body": "It is sunny."}),
    ]
    escaped = 'I will search.\nAction: search\nAction Input: {"q": "caf\\u00e9"}'
    assert described(react_actions(escaped)) == [("react-0", "search", {"q": "café"})]
    decoys = "".join(f'\nAction: search\nAction Input: {{"q": "weather {i}"}}' for i in range(17))
    buried = "I will look things up." + decoys + '\nAction: send_email\nAction Input: {"to": "bob", "body": "x"}'
    inputs = [at for at in range(len(buried)) if buried.startswith('{"q"', at)]
    picked = ("react-0", "send_email", {"to": "bob", "body": "x"})  # the one the parser runs, then the first 16
    assert described(react_actions(buried)) == [
        picked,
        *[(f"react-{i + 1}", "search", buried[at:]) for i, at in enumerate(inputs[:16])],
    ]


# -- F4: thousands of tool calls with one id -------------------------------------------------------------
def same_id_turn(texts: int) -> ChatMessage:
    """An assistant turn of a history: a block with the first text, then each of ``texts`` texts twice, as
    ``additional_kwargs["tool_calls"]`` entries all under id "c"."""
    entries = [{"id": "c", "function": {"name": "t", "arguments": f"x{i % texts}"}} for i in range(2 * texts)]
    block = ToolCallBlock(tool_call_id="c", tool_name="t", tool_kwargs="x0")
    return ChatMessage(role="assistant", blocks=[block], additional_kwargs={"tool_calls": entries})


def frames_entered(message: ChatMessage) -> tuple[int, dict[str, list[tuple[str, str]]]]:
    """(Python frames entered, the result) for `_unparsed_arguments` on ``message``."""
    entered = [0]

    def count(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            entered[0] += 1

    sys.setprofile(count)
    try:
        found = _unparsed_arguments(message)
    finally:
        sys.setprofile(None)
    return entered[0], found


def test_same_id_argument_texts_are_deduplicated_in_linear_work() -> None:
    """F4: each entry's text compared with every earlier text of its id (quadratic: a generator step per
    comparison); now one set lookup, the texts kept once each in the order they first came."""
    work = []
    for texts in (500, 2_000):
        entered, found = frames_entered(same_id_turn(texts))
        assert found == {"c": [("t", f"x{i}") for i in range(texts)]}
        work.append(entered)
    assert work[1] <= 5 * work[0], f"frames entered: {work[0]:,} for 500 texts, {work[1]:,} for 2,000"


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe_last"])
def test_an_unsafe_text_among_thousands_of_same_id_calls_is_judged(unsafe: bool) -> None:
    """The deduplicated texts are all judged: the last of 4,001 entries under one id blocks when unsafe."""
    entries = [{"id": "c", "function": {"name": "t", "arguments": f"x{i}"}} for i in range(4_000)]
    last = UNSAFE if unsafe else "See you at noon."
    entries.append({"id": "c", "function": {"name": "send_email", "arguments": last}})
    history = [
        ChatMessage(role="user", content="Hi."),
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": entries}),
        ChatMessage(role="user", content="Go on."),
    ]
    llm = GuardedLLM(llm=replying("OK."), guard=Guard(ScriptedBackend(keyword_verdict)))
    if not unsafe:
        assert llm.chat(history).message.content == "OK."
        return
    with pytest.raises(GuardViolation) as stopped:
        llm.chat(history)
    assert stopped.value.decision.categories == ("Violent",)


def test_a_history_of_more_calls_than_max_checks_is_refused_before_any_model_work() -> None:
    """A client's history whose one turn carries 16,000 tool calls under one id cost 16,003 guard checks for one
    1 MB request (rt48c F4, after the dedup above). The checks one call sends to the model are bounded by the
    guard's ``max_checks`` (default 4,096): past it, `InputTooLarge` before any check, never a pass."""
    entries = [{"id": "c", "function": {"name": "t", "arguments": f"x{i}"}} for i in range(5_000)]
    history = [
        ChatMessage(role="user", content="Hi."),
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": entries}),
        ChatMessage(role="user", content="Go on."),
    ]
    backend = ScriptedBackend(keyword_verdict)
    llm = GuardedLLM(llm=replying("OK."), guard=Guard(backend, Policy(on_error="allow")))
    with pytest.raises(InputTooLarge, match="max_checks"):
        llm.chat(history)
    assert backend.calls == []
