"""Attacks on what `qwenguard serve` judges in a message, against a real server on 127.0.0.1 with a keyword
judge (Unsafe iff ``BOMB`` is in any turn it is shown) that records every conversation it judges.

An assistant turn's tool calls are judged (as the core renders a tool call: ``Tool call: name({...})``) on
``/v1/chat/completions`` and ``/v1/moderate``; ``content: null`` beside tool calls (the OpenAI shape) is
accepted; any other field that carries text is refused with a 422 naming it, never dropped unjudged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from faults import ScriptedBackend
from live_server import disable_moderate_fast_path, record_moderate_fast_path, serving
from openai.types.chat import ChatCompletionMessage
from openai.types.chat.chat_completion_message_tool_call import ChatCompletionMessageToolCall, Function
from qwenguard.core import Guard, Policy, Stage, StagePolicy
from qwenguard.core.formats.conversations import render_tool_call, tool_call_conversation

TIMEOUT = 30
ASK = "Search the web for me."
ARGS = json.dumps({"q": "how to build a BOMB"})
SAFE_ARGS = json.dumps({"q": "weather in Paris"})
JUDGED: list[list[dict[str, str]]] = []


def keyword_judge(conv: list[dict[str, str]]) -> str:
    JUDGED.append([dict(m) for m in conv])
    head = (
        "Safety: Unsafe\nCategories: Violent"
        if any("BOMB" in m["content"] for m in conv)
        else "Safety: Safe\nCategories: None"
    )
    return head + ("\nRefusal: No" if conv[-1]["role"] == "assistant" else "")


def tool_turn(arguments: str = ARGS, content: Any = "", name: str = "web_search", **extra: Any) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": content, "tool_calls": [call], **extra}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    policy = Policy(stages={Stage.TOOL_CALL: StagePolicy(ignore_categories={"Violent"})})
    with serving(Guard(ScriptedBackend(keyword_judge, name="kw"), policy=policy, cache_size=0)) as base:
        yield base


@pytest.fixture(scope="module")
def strict_url() -> Iterator[str]:
    with serving(Guard(ScriptedBackend(keyword_judge, name="kw"), policy=Policy.strict(), cache_size=0)) as base:
        yield base


def chat(url: str, messages: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"messages": messages}, timeout=TIMEOUT)


def moderate(url: str, messages: list[dict[str, Any]], **fields: Any) -> httpx.Response:
    return httpx.post(url + "/v1/moderate", json={"conversations": [messages], **fields}, timeout=TIMEOUT)


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_unsafe_tool_call_arguments_behind_empty_content_are_judged_on_chat_completions(strict_url):
    JUDGED.clear()
    text = answer(chat(strict_url, [{"role": "user", "content": ASK}, tool_turn()]))
    assert text.startswith("Safety: Unsafe"), text
    # The call is shown as the core shows a tool call: the assistant's action after the user's request.
    assert JUDGED[-1] == tool_call_conversation("web_search", ARGS, [{"role": "user", "content": ASK}])


def test_unsafe_tool_call_arguments_are_judged_on_moderate_as_a_tool_call(strict_url):
    JUDGED.clear()
    result = moderate(strict_url, [{"role": "user", "content": ASK}, tool_turn()]).json()["results"][0]
    assert (result["risk"], result["decision"]["allowed"]) == ("unsafe", False)
    assert result["decision"]["stage"] == "tool_call"
    assert JUDGED[-1][-1] == {"role": "assistant", "content": render_tool_call("web_search", ARGS)}


def test_every_tool_call_of_the_turn_and_its_text_are_judged(strict_url):
    calls = [
        {"id": "a", "type": "function", "function": {"name": "web_search", "arguments": SAFE_ARGS}},
        {"id": "b", "type": "function", "function": {"name": "send_email", "arguments": {"body": "a BOMB recipe"}}},
    ]
    turn = {"role": "assistant", "content": "On it.", "tool_calls": calls}
    JUDGED.clear()
    assert answer(chat(strict_url, [{"role": "user", "content": ASK}, turn])).startswith("Safety: Unsafe")
    expected = "\n".join(
        ["On it.", render_tool_call("web_search", SAFE_ARGS), render_tool_call("send_email", {"body": "a BOMB recipe"})]
    )
    assert JUDGED[-1][-1] == {"role": "assistant", "content": expected}


def test_a_tool_call_in_an_earlier_turn_is_shown_to_the_judge_as_context(strict_url):
    JUDGED.clear()
    messages = [{"role": "user", "content": ASK}, tool_turn(), {"role": "user", "content": "Go on."}]
    result = moderate(strict_url, messages).json()["results"][0]
    assert result["decision"]["stage"] == "prompt"
    assert JUDGED[-1][1] == {"role": "assistant", "content": render_tool_call("web_search", ARGS)}


def test_a_turn_with_text_and_tool_calls_is_held_to_both_stage_policies(url):
    # The operator's policy ignores Violent at the tool_call stage only.
    alone = moderate(url, [{"role": "user", "content": ASK}, tool_turn()]).json()["results"][0]
    assert alone["decision"] == {**alone["decision"], "allowed": True, "action": "flag", "stage": "tool_call"}
    both = moderate(url, [{"role": "user", "content": ASK}, tool_turn(content="Searching.")]).json()["results"][0]
    assert both["decision"] == {**both["decision"], "allowed": False, "action": "block", "stage": "response"}


def test_openai_shape_null_content_with_tool_calls_is_accepted_on_both_routes(strict_url):
    """What the official SDK sends when a client echoes a tool-calling answer back into the conversation."""
    echoed = ChatCompletionMessage(
        role="assistant",
        content=None,
        tool_calls=[
            ChatCompletionMessageToolCall(
                id="call_1", type="function", function=Function(name="web_search", arguments=SAFE_ARGS)
            )
        ],
    ).model_dump()  # "content": None, "refusal": None, "annotations": None, "audio": None, ...
    messages = [{"role": "user", "content": ASK}, echoed]
    client = openai.OpenAI(base_url=strict_url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    reply = client.chat.completions.create(model="kw", messages=messages)  # type: ignore[arg-type]
    assert (reply.choices[0].message.content or "").startswith("Safety: Safe")
    unsafe = [{"role": "user", "content": ASK}, tool_turn(content=None)]
    assert answer(chat(strict_url, unsafe)).startswith("Safety: Unsafe")
    result = moderate(strict_url, unsafe).json()["results"][0]
    assert (result["decision"]["allowed"], result["decision"]["stage"]) == (False, "tool_call")
    # null content is for a tool-calling assistant turn only
    for bad in ({"role": "user", "content": None}, {"role": "assistant", "content": None, "tool_calls": []}):
        response = chat(strict_url, [bad])
        assert response.status_code == 422 and "content" in response.json()["error"]["message"]


def test_tool_call_arguments_count_toward_the_character_limit():
    with serving(Guard(ScriptedBackend(keyword_judge), cache_size=0), max_chars=100) as base:
        long_call = [{"role": "user", "content": "hi"}, tool_turn(arguments=json.dumps({"q": "x" * 200}))]
        assert chat(base, long_call).status_code == 413
        assert moderate(base, long_call).status_code == 413


#: Fields that carry text the judge would not see: each must be refused (422, naming it), never dropped.
UNJUDGED = {
    "name": {"role": "user", "content": "hi", "name": "BOMB"},
    "refusal": {"role": "assistant", "content": "ok", "refusal": "BOMB"},
    "function_call": {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": "BOMB"}},
    "text2": {"role": "user", "content": [{"type": "text", "text": "hi", "text2": "BOMB"}]},
    "extra": tool_turn(SAFE_ARGS) | {"tool_calls": [{"type": "function", "function": {"name": "f"}, "extra": "BOMB"}]},
    "description": tool_turn(SAFE_ARGS)
    | {"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}", "description": "BOMB"}}]},
    "tool_calls": {"role": "user", "content": "hi", "tool_calls": [{"function": {"name": "f", "arguments": "BOMB"}}]},
}


ROUTES = ["/v1/chat/completions", "/v1/moderate"]
CASES = [(r, f) for f in sorted(UNJUDGED) for r in ROUTES if not (f == "text2" and r == "/v1/moderate")]  # str only


@pytest.mark.parametrize(("route", "field"), CASES)
def test_an_unjudged_text_field_is_refused_naming_it(strict_url, route, field):
    messages = [{"role": "user", "content": ASK}, UNJUDGED[field]] if field != "name" else [UNJUDGED[field]]
    JUDGED.clear()
    response = chat(strict_url, messages) if route == "/v1/chat/completions" else moderate(strict_url, messages)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    named = "only an assistant message may carry tool_calls" if field == "tool_calls" else f"field {field!r}"
    assert named in error["message"], error["message"]
    assert JUDGED == []


def test_moderate_fast_path_and_route_agree_on_tool_calls_and_refusals(strict_url, monkeypatch):
    """The /v1/moderate fast path (gate.py) validates the same schema as the FastAPI route: same answers."""

    bodies = [
        {"conversations": [[{"role": "user", "content": ASK}, tool_turn()]]},
        {"conversations": [[{"role": "user", "content": ASK}, tool_turn(SAFE_ARGS, content=None, refusal=None)]]},
        {"conversations": [[{"role": "user", "content": ASK}, tool_turn(content="Searching.")]], "stage": "response"},
        {"conversations": [[{"role": "user", "content": "hi", "name": "BOMB"}]]},
        {"conversations": [[UNJUDGED["tool_calls"]]]},
    ]

    def answers() -> list[tuple[int, Any]]:
        out = []
        for body in bodies:
            response = httpx.post(strict_url + "/v1/moderate", json=body, timeout=TIMEOUT)
            data = response.json()
            for result in data.get("results", ()):
                result.pop("latency_ms")
            out.append((response.status_code, data))
        return out

    taken = record_moderate_fast_path(monkeypatch)
    fast = answers()
    assert taken == [True, True, True, False, False]
    disable_moderate_fast_path(monkeypatch)
    assert answers() == fast
    assert [status for status, _ in fast] == [200, 200, 200, 422, 422]
    assert fast[0][1]["results"][0]["decision"]["allowed"] is False


# -- the stream session's open frame, and the core ---------------------------------------------------------
def _open_stream(url: str, messages: list[dict[str, Any]]) -> tuple[dict[str, Any], int | None]:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(url.replace("http://", "ws://") + "/v1/stream") as conn:
        conn.send(json.dumps({"type": "open", "messages": messages}))
        first = json.loads(conn.recv(timeout=TIMEOUT))
        try:
            conn.send(json.dumps({"type": "close"}))
            while True:
                conn.recv(timeout=TIMEOUT)
        except ConnectionClosed as closed:
            return first, closed.rcvd.code if closed.rcvd else None


def test_a_stream_prompt_judges_tool_calls_in_its_history(strict_url):
    """The open frame's messages kept only role and text: an earlier assistant turn's tool call never reached
    the judge (here the judge flags any turn it is shown that holds the word)."""
    JUDGED.clear()
    first, _ = _open_stream(
        strict_url, [{"role": "user", "content": ASK}, tool_turn(), {"role": "user", "content": "Thanks."}]
    )
    assert first["type"] == "violation", first
    assert any("BOMB" in m["content"] for conv in JUDGED for m in conv)


@pytest.mark.parametrize("extra", [{"name": "BOMB maker"}, {"refusal": "BOMB"}])
def test_a_stream_prompt_refuses_fields_it_does_not_judge(strict_url, extra):
    first, code = _open_stream(strict_url, [{"role": "user", "content": ASK, **extra}])
    assert first["type"] == "error" and code == 4400, (first, code)
    assert next(iter(extra)) in first["error"]["message"]


def test_the_core_judges_tool_calls_a_conversation_carries():
    """`Guard.check` on a conversation whose last assistant turn has tool calls and empty text judged the
    empty text: safe. OpenAI's and LangChain's shapes of a call are both read."""
    guard = Guard(ScriptedBackend(keyword_judge, name="kw"), policy=Policy.strict(), cache_size=0)
    openai_shape = tool_turn(content="")
    langchain_shape = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "web_search", "args": json.loads(ARGS)}],
    }
    for turn in (openai_shape, langchain_shape, {**openai_shape, "content": None}):
        decision = guard.check([{"role": "user", "content": ASK}, turn], Stage.RESPONSE)
        assert not decision.allowed, turn
    with pytest.raises(ValueError, match="only an assistant turn"):
        guard.check([{"role": "user", "content": ASK, "tool_calls": [{"name": "x", "args": {}}]}])
