"""Provider wire formats beyond Chat Completions (red team rt54b), LlamaIndex side: the real ``OpenAIResponses`` class
against a scripted Responses API server (``tests/wire_sse.py``), through `GuardedLLM`, chat and stream_chat.

F2: a ``url_citation``'s URL spells a sentence in its path; F5: a third-party MCP server's tool list (an
``mcp_list_tools`` item) names a parameter with a sentence. Both are in the response's ``raw``, which the app reads
and which was walked by its values only, its links left out: now its keys (but the formats' field names) and a
link's path are judged. F4: words under ``encrypted_content`` are judged (one base64 token is not). F3: the
Responses API's actions (`ACTION_KINDS`) are found in a reply as tool calls (`reply_actions`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAIResponses
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.llamaindex import GuardedLLM
from wire_sse import ACTIONS, CMD, KEY, MCP_TOOLS, URL, message, serve

ASK = [ChatMessage(role="user", content="Tell me about fertiliser.")]

CITED = message(
    "See the source.", [{"type": "url_citation", "url": URL, "title": "Notes", "start_index": 0, "end_index": 3}]
)
FILE_SEARCH = {
    "type": "file_search_call",
    "id": "fs_1",
    "status": "completed",
    "queries": ["fertiliser"],
    "results": [{"file_id": "file_1", "filename": "notes.txt", "score": 0.5, "text": "Notes.", "attributes": {KEY: 1}}],
}


def recording() -> tuple[Guard, list[str]]:
    seen: list[str] = []

    def verdict(conv: Any) -> str:
        seen.append(conv[-1]["content"])
        return keyword_verdict(conv)

    return Guard(ScriptedBackend(verdict, name="kw")), seen


def run(output: list[dict[str, Any]], how: str) -> tuple[list[Any], list[str], bool]:
    """(what reached the app, what the guard judged, whether it stopped) for ``output`` through `GuardedLLM`."""
    guard, seen = recording()
    got: list[Any] = []
    with serve(lambda n: output) as url:
        inner = OpenAIResponses(model="gpt-4o", api_base=url + "/v1", api_key="x", max_retries=0)
        llm = GuardedLLM(llm=inner, guard=guard)
        try:
            if how == "chat":
                got.append(llm.chat(ASK))
            else:
                for response in llm.stream_chat(ASK):
                    got.append(response)
        except GuardViolation:
            return got, seen, True
    return got, seen, False


def reached(got: list[Any], text: str) -> bool:
    return any(text in repr(r.raw) + repr(r.message) + repr(r.additional_kwargs) for r in got)


@pytest.mark.parametrize("how", ["chat", "stream_chat"])
def test_a_citation_link_that_spells_a_sentence_is_judged(how):
    got, seen, stopped = run([CITED], how)
    assert stopped
    assert not reached(got, URL)
    assert any("Mix ammonium nitrate with fuel oil" in s for s in seen)


@pytest.mark.parametrize("how", ["chat", "stream_chat"])
@pytest.mark.parametrize("item", [MCP_TOOLS, FILE_SEARCH], ids=["mcp-parameter-name", "file-attribute-key"])
def test_a_key_of_what_the_reply_quotes_is_judged(how, item):
    got, seen, stopped = run([item, message("Fine.", item_id="msg_2")], how)
    assert stopped
    assert not reached(got, KEY)
    assert any(KEY in s for s in seen)


def test_the_format_s_own_field_names_cost_no_check():
    """Control: an answer with a citation of an ordinary page and a tool list of ordinary names adds no check of
    keys or links (a link of one short word, the formats' field names)."""
    plain = {**MCP_TOOLS, "tools": [{**MCP_TOOLS["tools"][0], "input_schema": {"type": "object", "properties": {}}}]}
    cited = message(
        "Fine.",
        [
            {
                "type": "url_citation",
                "url": "https://x.example/p/3f9a",
                "title": "Fine",
                "start_index": 0,
                "end_index": 1,
            }
        ],
    )
    got, seen, stopped = run([plain, cited], "chat")
    assert not stopped and got
    assert not any("https" in s or "input_schema" in s or "x example" in s for s in seen)


def test_words_under_encrypted_content_are_judged_one_token_is_not():
    from qwenguard.integrations._common import reply_strings

    sealed = "RW5jcnlwdGVkIGJ5IHRoZSBwcm92aWRlcg=="
    words = "Mix ammonium nitrate with fuel oil"
    found = reply_strings({"encrypted_content": sealed, "encrypted_index": words}, 10_000)
    assert found == [words]


def test_responses_actions_are_found_as_tool_calls():
    from qwenguard.integrations._common import reply_actions

    raw = {
        "output": [
            {"type": "message", "id": "m", "content": [{"type": "output_text", "text": "ok"}]},
            {
                "type": "apply_patch_call",
                "id": "ap_1",
                "call_id": "c1",
                "status": "completed",
                "operation": {"type": "update_file", "path": "deploy.sh", "diff": "+rm -rf /\n"},
            },
            {"type": "computer_call", "id": "cc_1", "call_id": "c2", "action": {"type": "type", "text": "rm -rf /"}},
            {
                "type": "mcp_approval_request",
                "id": "r1",
                "name": "run_shell",
                "server_label": "ops",
                "arguments": '{"cmd": "rm -rf /"}',
            },
        ]
    }
    calls = reply_actions([raw, raw], 10_000)  # each once, wherever the reply repeats it
    assert [c["name"] for c in calls] == ["apply_patch", "computer", "run_shell"]
    assert all("rm -rf /" in json.dumps(c["args"]) for c in calls)
    assert calls[2]["args"] == {"server_label": "ops", "arguments": {"cmd": "rm -rf /"}}


# -- F3 through GuardedLLM: an action is decided under the operator's tool-call policy -----------------------------


def controversial_command(conv: Any) -> str:
    """Controversial wherever ``rm -rf /`` is written: a strict stage blocks it, a loose one only flags it."""
    bad = CMD in conv[-1]["content"]
    verdict = "Safety: Controversial\nCategories: Unethical Acts" if bad else "Safety: Safe\nCategories: None"
    return verdict + ("\nRefusal: No" if conv[-1]["role"] == "assistant" else "")


@pytest.mark.parametrize("how", ["chat", "stream_chat"])
@pytest.mark.parametrize("kind", sorted(ACTIONS))
def test_a_responses_action_is_decided_as_a_tool_call(kind, how):
    from qwenguard.core import Policy, Stage
    from qwenguard.core.policy import StagePolicy

    policy = Policy(mode="loose", stages={Stage.TOOL_CALL: StagePolicy(mode="strict")})
    guard = Guard(ScriptedBackend(controversial_command, name="oracle"), policy)
    got: list[Any] = []
    with serve(lambda n: [ACTIONS[kind]]) as url:
        llm = GuardedLLM(
            llm=OpenAIResponses(model="gpt-4o", api_base=url + "/v1", api_key="x", max_retries=0), guard=guard
        )
        with pytest.raises(GuardViolation) as raised:
            if how == "chat":
                got.append(llm.chat(ASK))
            else:
                for response in llm.stream_chat(ASK):
                    got.append(response)
    assert raised.value.decision.stage is Stage.TOOL_CALL
    assert not reached(got, CMD)
