"""What handlers beside a guarded model hear: a scripted answer with the bench clause after a safe sentence, a
`Recorder` handler, and the check that what it heard stays within the safe sentence (tests of rt53a, rt53e).
Import the fixtures by their function names: they register as ``url`` and ``judge_guard``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from langchain_openai import ChatOpenAI
from qwenguard.core import Guard, GuardViolation
from scripted_openai import Reply, ScriptedURL, scripted_openai
from stream_judges import CLAUSE, CountingJudge

SAFE = "The capital of France is Paris. "
REPLY = f"{SAFE}{CLAUSE} Then wait."
QUESTION = "Tell me about Paris"


class Recorder(BaseCallbackHandler):
    """What a UI or a logger attached to a run is told: each token, and each answer at a run's end."""

    def __init__(self) -> None:
        self.tokens = ""
        self.ends: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens += token

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.ends += [g.text for gs in response.generations for g in gs]


def heard_only_safe(text: str) -> bool:
    """No character past the safe sentence: ``text`` is a prefix of it (in characters)."""
    return SAFE.startswith(text)


def chat(url: str, **kwargs: Any) -> ChatOpenAI:
    """The real provider client against the scripted server."""
    return ChatOpenAI(base_url=url, api_key="k", model="m", max_retries=0, **kwargs)


def drain(stream: Iterator[Any]) -> str:
    """What a consumer of ``stream`` got before the guard stopped it (or all of it)."""
    released = ""
    try:
        for chunk in stream:
            released += chunk.text
    except GuardViolation:
        pass
    return released


@pytest.fixture(name="url")
def scripted_reply_url() -> Iterator[ScriptedURL]:
    """The scripted OpenAI server answering `REPLY` word by word."""
    with scripted_openai([Reply.words(REPLY)]) as served:
        yield served


@pytest.fixture(name="judge_guard")
def clause_judge_guard() -> Guard:
    """A guard whose judge flags the clause ("Mix ammonium")."""
    return Guard(CountingJudge())
