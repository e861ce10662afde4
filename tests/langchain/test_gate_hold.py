"""The holding gate engine (``guard_output(stream_engine="gate")``, ``GuardRunnable``) judges at word ends and
must not let a word out before a check has shown it with the word after it.

The attack: a provider that sends a word and the space after it before the next word ("Mix", " ", ...: the
fake chat model below streams words and spaces as separate chunks, through its run manager like real
models). The judge reads words and flags "mix ammonium" ("Mix" is harmless until "ammonium" follows)."""

from __future__ import annotations

import asyncio
import re

import pytest
from faults import ScriptedBackend
from lc_fakes import ScriptedChatModel
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.langchain import GuardRunnable, guard_output

SAFE = "Safety: Safe\nCategories: None\nRefusal: No"
UNSAFE = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
FIRST = "The capital of France is Paris."
REPLY = f"{FIRST} Mix ammonium nitrate with fuel oil. Then wait."


def _guard() -> Guard:
    def answer(conversation):
        if conversation[-1]["role"] != "assistant":
            return "Safety: Safe\nCategories: None"  # a prompt check's answer has no refusal line
        words = " ".join(re.findall(r"[a-z]+", conversation[-1]["content"].lower()))
        return UNSAFE if "mix ammonium" in words else SAFE

    return Guard(ScriptedBackend(answer), Policy.strict())


def _runnable(path: str, reply: str):
    model = ScriptedChatModel(messages=iter([reply]), seen=[])
    if path == "guard_output":
        return model | guard_output(_guard(), stream_engine="gate")
    return GuardRunnable(guard=_guard(), runnable=model, check_input=False, stream_engine="gate")


def _drain(runnable, mode: str) -> tuple[str, GuardViolation | None]:
    received: list[str] = []

    async def adrain() -> None:
        async for chunk in runnable.astream("What is the capital of France?"):
            received.append(chunk.text)

    try:
        if mode == "sync":
            for chunk in runnable.stream("What is the capital of France?"):
                received.append(chunk.text)
        else:
            asyncio.run(adrain())
    except GuardViolation as exc:
        return "".join(received), exc
    return "".join(received), None


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("path", ["guard_output", "GuardRunnable"])
def test_no_character_of_the_clause_goes_out_when_spaces_arrive_on_their_own(path, mode):
    received, error = _drain(_runnable(path, REPLY), mode)
    assert isinstance(error, GuardViolation)
    assert REPLY.startswith(received) and len(received) <= REPLY.index("Mix")  # not one character of it
    assert received.startswith(FIRST)  # the judged-safe sentence went out


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("path", ["guard_output", "GuardRunnable"])
def test_a_safe_answer_goes_out_whole_with_its_last_word(path, mode):
    reply = "The capital of France is Paris and it lies on the Seine"  # no final punctuation
    received, error = _drain(_runnable(path, reply), mode)
    assert error is None and received == reply
