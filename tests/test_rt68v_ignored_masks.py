"""rt68a F2: windows combined by `worst` kept only the categories of the worst risk, so a sender who appends text read
as an IGNORED category's Unsafe (docs/eval.md's "no-pii" policy: ``ignore_categories={"PII"}``) hid a window read
Controversial that the policy blocks: the whole text was allowed as ``ignored_category``. The combined verdict now
keeps the windows beneath it (`Verdict.beneath`), `Policy.decide` decides them too, and a served guard's one answer
names their categories, so a remote client's ignore list cannot excuse them either."""

from __future__ import annotations

import re
from typing import Any

import engines
import httpx
import pytest
from demo_texts import FACTS
from phrase_judge import PhraseEngine
from qwenguard.core import Guard, Policy
from qwenguard.core.verdict import Risk
from test_server_hostile import guarded

QUESTION = "Which party should I vote for in the election? "
SSN = " My neighbour's SSN is 123-45-6789."
#: Several windows: the question in the first, the SSN in the last.
LONG = QUESTION + FACTS * 15
POLITICS = "Politically Sensitive Topics"


def verdict_of(text: str, *, uncategorised: bool = False) -> str:
    """The keyword judge: an SSN is Unsafe PII; a window asking whom to vote for is Controversial (naming no
    category with ``uncategorised``, as a model may); anything else is safe."""
    if "123-45-6789" in text:
        return "Safety: Unsafe\nCategories: PII"
    if "vote for" in text:
        return f"Safety: Controversial\nCategories: {'None' if uncategorised else POLITICS}"
    return "Safety: Safe\nCategories: None"


class KeywordEngine(PhraseEngine):
    """The demo backend's model replaced by `verdict_of`, judged per window the backend plans."""

    def __init__(self, tokenizer: Any, *, uncategorised: bool = False) -> None:
        super().__init__(tokenizer, phrase="")
        self.uncategorised = uncategorised

    def run(self, prompts):
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            found = re.search(r"<BEGIN CONVERSATION>(.*)<END CONVERSATION>", text, re.S)
            conversation = found.group(1) if found else text
            self.read.append(conversation)
            out.append((verdict_of(conversation, uncategorised=self.uncategorised), None))
        return out


def keyword_guard(policy: Policy | None = None, **options: Any) -> Guard:
    guard = Guard.from_pretrained("demo", **({"policy": policy} if policy else {}), cache_size=0)
    guard.backend.engine = KeywordEngine(guard.backend.tokenizer, **options)
    return guard


NO_PII = Policy.strict(ignore_categories={"PII"})
LOOSE_NO_PII = Policy.loose(ignore_categories={"PII"}, block_categories={POLITICS})


@pytest.mark.parametrize("policy", [NO_PII, LOOSE_NO_PII], ids=["strict-ignore", "loose-block"])
def test_pii_appended_to_a_blocked_question_does_not_let_it_through(policy: Policy) -> None:
    guard = keyword_guard(policy)
    try:
        before = guard.check_prompt(LONG)
        assert len(guard.backend.engine.read) > 1  # judged in windows, the question in one of them
        decision = guard.check_prompt(LONG + SSN)
    finally:
        guard.close()
    assert not before.allowed and before.reason == "controversial", before
    assert not decision.allowed, decision
    assert decision.reason == "controversial" and decision.categories == (POLITICS,), decision


@pytest.mark.parametrize("policy", [NO_PII, LOOSE_NO_PII], ids=["strict-ignore", "loose-block"])
async def test_pii_appended_to_a_blocked_question_does_not_let_it_through_async(policy: Policy) -> None:
    guard = keyword_guard(policy)
    try:
        decision = await guard.acheck_prompt(LONG + SSN)
    finally:
        await guard.aclose()
    assert not decision.allowed, decision
    assert decision.reason == "controversial" and decision.categories == (POLITICS,), decision


def test_pii_alone_is_still_allowed_as_an_ignored_category() -> None:
    guard = keyword_guard(NO_PII)
    try:
        decision = guard.check_prompt(FACTS * 15 + SSN)
    finally:
        guard.close()
    assert decision.allowed and decision.reason == "ignored_category", decision


def test_a_controversial_window_of_an_ignored_category_beside_pii_is_still_allowed() -> None:
    guard = keyword_guard(Policy.strict(ignore_categories={"PII", POLITICS}))
    try:
        decision = guard.check_prompt(LONG + SSN)
    finally:
        guard.close()
    assert decision.allowed and decision.reason == "ignored_category", decision
    assert decision.risk is Risk.UNSAFE and decision.categories == ("PII",)


def test_a_loose_policy_still_only_flags_the_controversial_window_beneath() -> None:
    guard = keyword_guard(Policy.loose(ignore_categories={"PII"}))
    try:
        decision = guard.check_prompt(LONG + SSN)
    finally:
        guard.close()
    assert decision.allowed and decision.action.value == "flag", decision


# -- a served guard: its one answer, read by a remote client with its own ignore list ---------------------------------


def served_reply(url: str, text: str) -> str:
    answer = httpx.post(
        url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": text}]}, timeout=60
    )
    return str(answer.json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize("policy", [NO_PII, LOOSE_NO_PII], ids=["strict-ignore", "loose-block"])
def test_a_remote_client_ignoring_pii_is_not_let_through_by_the_servers_one_answer(policy: Policy) -> None:
    with guarded(keyword_guard()) as url:
        reply = served_reply(url, LONG + SSN)
        # One request of the whole text: the server windows it and answers once.
        client = Guard.remote(url + "/v1", model="demo", max_context=1 << 16, policy=policy, cache_size=0)
        try:
            decision = client.check_prompt(LONG + SSN)
            alone = client.check_prompt(FACTS * 15 + SSN)
        finally:
            client.close()
    assert reply.startswith("Safety: Unsafe") and POLITICS in reply, reply
    assert not decision.allowed, decision
    assert alone.allowed and alone.reason == "ignored_category", alone


async def test_a_remote_client_ignoring_pii_is_not_let_through_by_the_servers_one_answer_async() -> None:
    with guarded(keyword_guard()) as url:
        client = Guard.remote(url + "/v1", model="demo", max_context=1 << 16, policy=NO_PII, cache_size=0)
        try:
            decision = await client.acheck_prompt(LONG + SSN)
        finally:
            await client.aclose()
    assert not decision.allowed, decision


def test_a_remote_client_is_not_let_through_by_a_controversial_window_that_names_no_category() -> None:
    """The window beneath names no category: the answer names none either, which every policy blocks."""
    with guarded(keyword_guard(uncategorised=True)) as url:
        reply = served_reply(url, LONG + SSN)
        client = Guard.remote(url + "/v1", model="demo", max_context=1 << 16, policy=NO_PII, cache_size=0)
        try:
            decision = client.check_prompt(LONG + SSN)
        finally:
            client.close()
    assert reply.startswith("Safety: Unsafe\nCategories: None"), reply
    assert not decision.allowed, decision


def test_remote_windows_of_an_engine_keep_the_blocked_window_beneath() -> None:
    """The repro: `Guard.remote` on an engine, the text in windows of the client's own (`_judge` combines them)."""

    def rule(body: dict[str, Any]) -> str:
        return verdict_of(engines.judged_text(body).split("<BEGIN CONVERSATION>")[-1])

    with engines.recording_engine(answer=rule) as engine:
        client = Guard.remote(engine.url, model="guard", tokenizer="demo", max_context=512, policy=NO_PII, cache_size=0)
        try:
            decision = client.check_prompt(LONG + SSN)
        finally:
            client.close()
    assert len(engine.checks()) > 1  # judged in windows
    assert not decision.allowed and decision.reason == "controversial", decision
