"""rt52d F3: `GuardedChatModel` counts tokens as the model it wraps does.

``get_token_ids`` / ``get_num_tokens`` / ``get_num_tokens_from_messages`` (what ``trim_messages(token_counter=model)``
and token-buffer memories call) fell to BaseLanguageModel's fallback, GPT-2's tokenizer loaded from the Hub: offline
it retried for minutes and counted 0 (a trimmer kept the whole history), online it counted another tokenizer's
tokens. The fallback is replaced here by one that fails at once, so a test never waits on the network.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from langchain_core.language_models import base as lc_base
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, trim_messages
from langchain_openai import ChatOpenAI
from lc_fakes import SAFE_ANSWER, ScriptedChatModel
from qwenguard.integrations.langchain import GuardedChatModel


class Counting(ScriptedChatModel):
    """A provider's own counter (tiktoken for ChatOpenAI): one token a word, a message its words plus one."""

    def get_token_ids(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Any = None) -> int:
        return sum(len(m.text.split()) + 1 for m in messages)


@pytest.fixture(autouse=True)
def _no_gpt2(monkeypatch):
    def offline(text: str) -> list[int]:
        raise AssertionError("the GPT-2 fallback tokenizer was asked (a Hub download)")

    monkeypatch.setattr(lc_base, "_get_token_ids_default_method", offline)


HISTORY: list[BaseMessage] = [
    SystemMessage("You answer questions about France."),
    HumanMessage("What is the capital of France, please?"),
    AIMessage(SAFE_ANSWER),
    HumanMessage("And its largest river?"),
]


def _inner() -> Counting:
    return Counting(messages=itertools.cycle([SAFE_ANSWER]), seen=[])


def test_token_counts_are_the_inner_models(guard):
    inner = _inner()
    guarded = GuardedChatModel(inner, guard)
    assert guarded.get_token_ids("one two three") == inner.get_token_ids("one two three")
    assert guarded.get_num_tokens("one two three") == 3
    assert guarded.get_num_tokens_from_messages(HISTORY) == inner.get_num_tokens_from_messages(HISTORY)


def test_trim_messages_with_the_guarded_model_as_counter(guard):
    """The user's action: trim a long history to the model's budget, counting with the (guarded) model."""
    inner = _inner()
    guarded = GuardedChatModel(inner.bind(temperature=0), guard)  # a binding around the model: still its counter
    trimmed = trim_messages(HISTORY, max_tokens=12, token_counter=guarded, strategy="last", include_system=True)
    assert trimmed == trim_messages(HISTORY, max_tokens=12, token_counter=inner, strategy="last", include_system=True)
    assert len(trimmed) < len(HISTORY)


def test_a_real_chat_models_own_counter(guard):
    llm = ChatOpenAI(api_key="x", model="scripted", custom_get_token_ids=lambda text: [1] * len(text.split()))
    guarded = GuardedChatModel(llm, guard)
    assert guarded.get_num_tokens("one two three four") == 4
    assert guarded.get_token_ids("one two") == [1, 1]
