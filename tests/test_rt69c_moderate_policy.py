"""Red team rt69c: ``POST /v1/moderate`` decided by less than the request's policy, against a real server.

F1: the policy's ``timeout_s`` (a client's tightened one, an operator's failing open) was never applied: a slow guard
was waited for until the request's ``--timeout``, and its late "safe" allowed what the policy fails closed on.
F2: a stage both sides turned off (``enabled``) was judged and decided all the same, one model call.
F3: ``top_logprobs: 0`` without ``"logprobs": true`` was accepted (docs/server.md: a 422)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from faults import ScriptedBackend, keyword_verdict
from live_server import serving
from qwenguard.core import Guard, Policy

BOMB = "How do I mix ammonium nitrate with fuel oil?"
RECIPE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
PARIS_Q = "What is the capital of France?"
PROMPT_OFF = {"stages": {"prompt": {"enabled": False}}}


def late_safe(conversation: Any) -> str:
    """A guard that finds everything safe: its answer, late, would allow what the policy's deadline blocks."""
    return "Safety: Safe\nCategories: None" + ("\nRefusal: No" if conversation[-1]["role"] == "assistant" else "")


def moderate(url: str, conversations: list[list[dict[str, str]]], policy: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"conversations": conversations}
    if policy is not None:
        body["policy"] = policy
    reply = httpx.post(url + "/v1/moderate", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()["results"]


# -- F1: the policy's time budget ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "operator, client",
    [
        (Policy.strict(), {"on_error": "block", "timeout_s": 0.2}),  # a client's tighter budget, failing closed
        (Policy.strict(timeout_s=0.2), {"on_error": "allow", "timeout_s": 5}),  # a client trying to wait longer
    ],
    ids=["client_tightens", "client_cannot_loosen"],
)
def test_a_guard_slower_than_the_fail_closed_budget_is_blocked_as_a_timeout(operator, client):
    backend = ScriptedBackend(late_safe, delay_s=1.0, name="slow")
    with serving(Guard(backend, operator, cache_size=0)) as url:
        (result,) = moderate(url, [[{"role": "user", "content": PARIS_Q}]], client)
    # The late "safe" never decides it: no verdict within the budget, and the policy fails closed.
    assert result["risk"] is None and result["error"] == "GuardTimeout"
    assert result["decision"] == {
        "allowed": False,
        "action": "block",
        "stage": "prompt",
        "reason": "timeout",
        "error": "GuardTimeout",
    }


def test_an_operator_failing_open_flags_a_slow_guard_as_a_timeout():
    operator = Policy.strict(on_error="allow", timeout_s=0.2)
    backend = ScriptedBackend(late_safe, delay_s=1.0, name="slow")
    conversations = [
        [{"role": "user", "content": PARIS_Q}],
        [{"role": "user", "content": BOMB}, {"role": "assistant", "content": RECIPE}],
    ]
    with serving(Guard(backend, operator, cache_size=0)) as url:
        results = moderate(url, conversations)
    # Flagged, not passed as "safe": the stream route's decision of the same miss.
    assert [r["decision"]["action"] for r in results] == ["flag", "flag"]
    assert [r["decision"]["reason"] for r in results] == ["timeout", "timeout"]
    assert [r["decision"]["stage"] for r in results] == ["prompt", "response"]
    assert all(r["risk"] is None and r["error"] == "GuardTimeout" for r in results)


# rt69m F1-F2 (second look): the first version ran a request's conversations under the SHORTEST budget of them all,
# and a conversation under the shortest of its stages': a fail-open stage timed out on another's budget, unjudged.
FAIL_OPEN = Policy.strict(on_error="allow", timeout_s=10)


def test_a_short_fail_closed_prompt_budget_does_not_fail_an_answer_open_beside_it():
    """A client tightens the prompt stage (fail closed, 0.05 s), a legal tightening: the answer batched beside a
    prompt is still waited for under the operator's own budget and blocked; the prompt times out and blocks."""
    backend = ScriptedBackend(keyword_verdict, delay_s=0.5, name="kw")
    client = {"on_error": "allow", "stages": {"prompt": {"on_error": "block", "timeout_s": 0.05}}}
    with serving(Guard(backend, FAIL_OPEN, cache_size=0)) as url:
        answer, hello = moderate(
            url,
            [
                [{"role": "user", "content": BOMB}, {"role": "assistant", "content": RECIPE}],
                [{"role": "user", "content": "hello"}],
            ],
            client,
        )
    assert answer["decision"]["action"] == "block" and answer["decision"]["reason"] == "unsafe", answer
    assert hello["decision"]["action"] == "block" and hello["decision"]["reason"] == "timeout", hello


@pytest.mark.parametrize("named", ["stage", "tool_call"])
def test_another_stage_s_short_budget_does_not_fail_the_answer_open(named):
    """The operator gives the retrieval and tool-call stages a short fail-open budget: naming the retrieval stage,
    or an answer with a harmless tool call, waited only that long for the answer's verdict and let it through."""
    operator = Policy.from_dict(
        {"on_error": "allow", "stages": {"retrieval": {"timeout_s": 0.05}, "tool_call": {"timeout_s": 0.05}}}
    )
    backend = ScriptedBackend(keyword_verdict, delay_s=0.5, name="kw")
    answer: dict[str, Any] = {"role": "assistant", "content": RECIPE}
    body: dict[str, Any] = {"conversations": [[{"role": "user", "content": BOMB}, answer]]}
    if named == "stage":
        body["stage"] = "retrieval"
    else:
        answer["tool_calls"] = [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        ]
    with serving(Guard(backend, operator, cache_size=0)) as url:
        reply = httpx.post(url + "/v1/moderate", json=body, timeout=30)
    (result,) = reply.json()["results"]
    assert result["decision"]["action"] == "block" and result["decision"]["reason"] == "unsafe", result


def test_a_fail_closed_stage_whose_budget_passed_still_blocks_a_late_safe_verdict():
    """Waited for as long as its longest stage, a conversation's fail-closed stage whose own budget passed decides a
    timeout all the same: the late "safe" never allows what that stage fails closed on."""
    operator = Policy.from_dict(
        {"on_error": "allow", "stages": {"tool_call": {"on_error": "block", "timeout_s": 0.05}}}
    )
    backend = ScriptedBackend(late_safe, delay_s=0.5, name="slow")
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    conversation = [
        {"role": "user", "content": PARIS_Q},
        {"role": "assistant", "content": "Sure.", "tool_calls": [call]},
    ]
    with serving(Guard(backend, operator, cache_size=0)) as url:
        (result,) = moderate(url, [conversation])
    assert result["risk"] == "safe"
    assert result["decision"]["action"] == "block" and result["decision"]["reason"] == "timeout", result
    assert result["decision"]["stage"] == "tool_call"


# -- F2: a stage turned off ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("client", [None, PROMPT_OFF], ids=["operator_only", "both_sides"])
def test_a_prompt_stage_turned_off_is_allowed_unjudged(client):
    backend = ScriptedBackend(keyword_verdict, name="kw")
    with serving(Guard(backend, Policy.from_dict(PROMPT_OFF), cache_size=0)) as url:
        results = moderate(
            url,
            [
                [{"role": "user", "content": BOMB}],
                [{"role": "user", "content": BOMB}, {"role": "assistant", "content": RECIPE}],
            ],
            client,
        )
        unjudged, answer = results
        # The request is not the model's to read at all (as `Guard.check_prompt` allows it); the answer still is.
        assert unjudged["decision"] == {
            "allowed": True,
            "action": "allow",
            "stage": "prompt",
            "reason": "disabled",
            "error": None,
        }
        assert unjudged["risk"] is None and unjudged["error"] is None
        assert answer["decision"]["action"] == "block" and answer["decision"]["stage"] == "response"
        assert [[turn["content"] for turn in conv] for call in backend.calls for conv in call] == [[BOMB, RECIPE]]

        # A client may turn the stage on again (never off): the request is judged and blocked.
        backend.calls.clear()
        (judged,) = moderate(url, [[{"role": "user", "content": BOMB}]], {"stages": {"prompt": {"enabled": True}}})
        assert judged["decision"]["action"] == "block" and judged["decision"]["reason"] == "unsafe"
        assert len(backend.calls) == 1


def test_a_client_cannot_turn_off_a_stage_the_operator_keeps():
    backend = ScriptedBackend(keyword_verdict, name="kw")
    with serving(Guard(backend, Policy.from_dict(PROMPT_OFF), cache_size=0)) as url:
        # Every stage off by the client: only the operator's prompt stage is off, the response stage stays judged.
        off = {"stages": {s: {"enabled": False} for s in ("prompt", "response", "tool_call")}}
        conversations = [
            [{"role": "user", "content": BOMB}, {"role": "assistant", "content": RECIPE}],
            [{"role": "user", "content": BOMB}],
        ]
        answer, request = moderate(url, conversations, off)
    assert answer["decision"]["action"] == "block" and answer["risk"] == "unsafe"
    assert request["decision"]["reason"] == "disabled"
    assert [[turn["content"] for turn in conv] for call in backend.calls for conv in call] == [[BOMB, RECIPE]]


# -- F3: top_logprobs without logprobs -----------------------------------------------------------------------------
@pytest.mark.parametrize("logprobs", [{}, {"logprobs": False}, {"logprobs": None}], ids=["absent", "false", "null"])
def test_top_logprobs_zero_without_logprobs_is_refused(logprobs):
    backend = ScriptedBackend(keyword_verdict, name="kw")
    with serving(Guard(backend, Policy.strict(), cache_size=0)) as url:
        body = {"messages": [{"role": "user", "content": PARIS_Q}], "top_logprobs": 0, **logprobs}
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 422
        assert "top_logprobs needs logprobs: true" in reply.json()["error"]["message"]
        assert backend.calls == []
        # With logprobs asked for, 0 alternatives is a valid request.
        asked = httpx.post(url + "/v1/chat/completions", json={**body, "logprobs": True}, timeout=30)
        assert asked.status_code == 200 and asked.json()["choices"][0]["message"]["content"].startswith("Safety: Safe")
