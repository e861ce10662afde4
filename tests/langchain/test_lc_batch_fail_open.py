"""A poisoned item in a batched check does not carry the others through (red-team finding). Under
``Policy(on_error="allow")``, an answer's tool calls and a page of documents are judged as one batch: with a
search call whose query made the batch fail beside an unsafe ``send_email`` call, `GuardedChatModel`
returned the unsafe call to its caller and `GuardMiddleware` let its arguments into the agent's state and
stream; `GuardDocumentCompressor` kept an unsafe document beside a poisoned one. The batch is judged again
item by item now; only the poison fails open (tests/test_batch_fail_open.py has the core contract)."""

from __future__ import annotations

import asyncio

import pytest
from faults import PoisonedJudge
from langchain.agents import create_agent
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from lc_fakes import ToolBox, scripted
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.langchain import GuardDocumentCompressor, GuardedChatModel, GuardMiddleware

POISON = "Zanzibar travel notes: " + "spice markets and beaches. " * 4  # longer than UNSAFE: slow because long
UNSAFE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
SAFE = "Paris is the capital of France."
ASK = [HumanMessage("Plan my trip and mail Bob.")]


def open_guard(mode: str = "raise") -> Guard:
    return Guard(PoisonedJudge(mode), Policy(on_error="allow", timeout_s=0.3), cache_size=0)


def two_calls() -> AIMessage:
    return AIMessage(
        content="",
        tool_calls=[
            {"name": "web_search", "args": {"query": POISON}, "id": "c1", "type": "tool_call"},
            {"name": "send_email", "args": {"to": "bob@example.com", "body": UNSAFE}, "id": "c2", "type": "tool_call"},
        ],
    )


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream"])
@pytest.mark.parametrize("mode", ["raise", "slow"])
def test_guarded_chat_model_never_returns_the_unsafe_call(how, mode):
    model = GuardedChatModel(scripted(two_calls()), open_guard(mode))
    received: list[AIMessage] = []
    with pytest.raises(GuardViolation) as stopped:
        if how == "invoke":
            received.append(model.invoke(ASK))
        elif how == "ainvoke":
            received.append(asyncio.run(model.ainvoke(ASK)))
        else:
            received.extend(model.stream(ASK))
    assert stopped.value.decision.reason == "unsafe"
    assert not any("ammonium" in str(m.tool_calls) + str(getattr(m, "tool_call_chunks", "")) for m in received)


def test_agent_middleware_keeps_the_unsafe_call_out_of_state_and_stream():
    """The poison fails every check that holds it: the middleware's batched answer checks fell open and the
    unsafe call's arguments reached the agent's stream and state (the tool itself was re-judged alone)."""
    box = ToolBox()
    agent = create_agent(scripted(two_calls(), "Done."), box.all, middleware=[GuardMiddleware(open_guard("raise"))])
    seen = ""
    for kind, chunk in agent.stream({"messages": ASK}, stream_mode=["messages", "values"]):
        messages = chunk["messages"] if kind == "values" else [chunk[0]]
        seen += "".join(str(getattr(m, "tool_calls", "")) + str(getattr(m, "tool_call_chunks", "")) for m in messages)
    assert "ammonium" not in seen
    assert box.calls["send_email"] == 0


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mode", ["raise", "slow"])
def test_document_compressor_drops_the_unsafe_document_beside_a_poisoned_one(mode, run_async):
    compressor = GuardDocumentCompressor(guard=open_guard(mode))
    docs = [Document(page_content=t) for t in (SAFE, POISON, UNSAFE)]
    if run_async:
        kept = asyncio.run(compressor.acompress_documents(docs, "travel tips"))
    else:
        kept = compressor.compress_documents(docs, "travel tips")
    assert [d.page_content for d in kept] == [SAFE, POISON]  # the poison fails open, flagged; UNSAFE dropped
