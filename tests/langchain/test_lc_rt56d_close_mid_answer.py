"""rt56d F3: a consumer closes ``(model | guard_output(guard)).stream(...)`` mid-answer.

guard_output reads the model ahead on a thread of its own while the consumer holds a released chunk
(``wakeup.py``); closed mid-stream, LangChain drains the other half of the tee of that same model stream
on the consumer's thread (``_transform_stream_with_config``). Both in one tee at once raised "cannot
re-enter the tee iterator", printed as an unraisable error and reported to the run's callbacks as a chain
error. Closing must report nothing, as it does for ``model | StrOutputParser()``.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_openai import ChatOpenAI
from lc_fakes import SAFE_QUESTION, ScriptedChatModel
from qwenguard.core import Guard
from qwenguard.core.streaming.wakeup import CLOSE_GRACE_S
from qwenguard.integrations.langchain import guard_output
from scripted_openai import Reply, scripted_openai
from stream_judges import CountingJudge

TEXT = " ".join(f"Sentence number {i} is about Paris and it is a fine city." for i in range(6))


class Errors(BaseCallbackHandler):
    """Records the chain errors of a run (and its children)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(f"{type(error).__name__}: {error}")


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(f"{type(u.exc_value).__name__}: {u.exc_value}"))
    return seen


class BlockingModel(ScriptedChatModel):
    """Streams its first sentence, then blocks in its next piece (``inside`` set) until ``go``."""

    inside: Any = None
    go: Any = None

    def _chunks(self, messages: Any) -> Iterator[Any]:
        for n, chunk in enumerate(super()._chunks(messages)):
            if n == 12:  # "The capital of France is Paris. " is out (word and space pieces): the next read waits
                self.inside.set()
                self.go.wait(30)
            yield chunk


class GatedJudge(CountingJudge):
    """Answers a check only once ``gate`` is set: the check is surely in flight when the model is read next."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def classify(self, conversations: Any, *, timeout: Any = None) -> Any:
        self.gate.wait(30)
        return super().classify(conversations, timeout=timeout)


def test_close_while_the_reader_is_inside_the_model_reports_nothing(unraisable: list[str]) -> None:
    inside, go = threading.Event(), threading.Event()
    model = BlockingModel(messages=iter(["The capital of France is Paris. It is a fine city."]), inside=inside, go=go)
    errors = Errors()
    tail = guard_output(Guard(GatedJudge(inside)))
    stream = (model | tail).stream(SAFE_QUESTION, config={"callbacks": [errors]})
    # The first sentence's verdict comes once the guard's thread is inside the model's next piece: its first
    # chunk is released while that read is in flight, and the consumer closes then.
    first = next(stream)
    assert inside.is_set()
    # The model's next piece comes well within the close's grace (a streaming model's next token).
    threading.Timer(CLOSE_GRACE_S / 5, go.set).start()
    stream.close()
    assert first.content
    assert not unraisable
    assert not errors.errors


@pytest.mark.parametrize("parallel_input", [False, True])
def test_random_closes_with_chatopenai_report_nothing(unraisable: list[str], parallel_input: bool) -> None:
    """The red team's scenario: a real ChatOpenAI against the scripted server, closed after 1 to 12 chunks."""
    rng = random.Random(11)
    reported: list[str] = []
    with scripted_openai([Reply.words(TEXT)], pace=0.005) as url:
        for _ in range(12):
            llm = ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0)
            errors = Errors()
            tail: Any = guard_output(Guard(CountingJudge(delay_s=0.02), parallel_input=parallel_input))
            stream = (llm | tail).stream("Tell me about Paris", config={"callbacks": [errors]})
            stop = rng.randint(1, 12)
            for n, _chunk in enumerate(stream, 1):
                if n >= stop:
                    break
            stream.close()
            reported += errors.errors
            url.responses[-1].wait(5)
        # The unguarded chain closes the same way without a word.
        baseline = Errors()
        plain = (ChatOpenAI(base_url=url, api_key="x", model="scripted") | StrOutputParser()).stream(
            "Tell me about Paris", config={"callbacks": [baseline]}
        )
        next(plain)
        plain.close()
        url.responses[-1].wait(5)
    assert not baseline.errors
    assert not unraisable
    assert not reported
