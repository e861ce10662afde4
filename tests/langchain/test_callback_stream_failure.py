"""The callback handler on a Stream-model guard, when the Stream session fails mid-answer under
``Policy(on_error="allow")`` (a red-team finding). Its default engine runs a monitor with ``holdback=0``:
each chunk was scored by the Stream model before the callback returned, so nothing unjudged was out. After
the session failed, the Gen windows judging the rest released at once and the callback never waited: the
whole unsafe clause and what followed reached the reader before the stop. Now the windows judge by word and
the callback waits while more than ``max_unjudged`` characters are out ahead of their verdict, the bound
of the ``"pipelined"`` engine (a callback cannot hold text: the chunk in flight is the documented floor)."""

from __future__ import annotations

import asyncio

import pytest
from faults import FailingStream, ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from lc_fakes import ToolBox, scripted
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler
from qwenguard.integrations.langchain._streaming import DEFAULT_MAX_UNJUDGED
from stream_checkpoints import safe_tokens_stream, tiny_tokenizer_dir  # noqa: F401

QUESTION = "Tell me about France."
SAFE = "The capital of France is Paris. It has many museums and old bridges. "
CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
ANSWER = SAFE + CLAUSE + " Then wait for it to cool down before you go."


def clause_chars_out(received: str) -> int:
    start = ANSWER.index(CLAUSE)
    return max(0, min(len(received), start + len(CLAUSE)) - start)


def failing_guard(stream_model) -> Guard:
    return Guard(
        ScriptedBackend(keyword_verdict), Policy(on_error="allow"), stream_backend=FailingStream(stream_model, "feed")
    )


@pytest.mark.parametrize("agent", [False, True], ids=["model", "agent"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failed_stream_session_does_not_let_the_clause_stream_out(safe_tokens_stream, mode, agent):  # noqa: F811
    guard = failing_guard(safe_tokens_stream)
    handler = (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)
    assert handler.stream_engine == "monitor"  # the default with a Stream model
    runnable = create_agent(scripted(ANSWER), ToolBox().all) if agent else scripted(ANSWER)
    inputs = {"messages": [HumanMessage(QUESTION)]} if agent else [HumanMessage(QUESTION)]
    extra = {"stream_mode": "messages"} if agent else {}
    config = {"callbacks": [handler]}
    received = ""

    def text(chunk) -> str:
        return (chunk[0] if isinstance(chunk, tuple) else chunk).text

    async def drain() -> None:
        nonlocal received
        async for chunk in runnable.astream(inputs, config, **extra):
            received += text(chunk)

    with pytest.raises(GuardViolation):
        if mode == "sync":
            for chunk in runnable.stream(inputs, config, **extra):
                received += text(chunk)
        else:
            asyncio.run(drain())
    assert ANSWER.startswith(received)
    assert clause_chars_out(received) <= DEFAULT_MAX_UNJUDGED, received  # it was the whole clause (71)
