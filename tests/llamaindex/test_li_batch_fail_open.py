"""A poisoned item in a batched check does not carry the others through (red-team finding): `GuardedLLM`
judges an answer's tool calls as one batch and `GuardNodePostprocessor` a page of nodes; when the item
that makes the batch fail sits beside an unsafe one, under ``Policy(on_error="allow")`` the unsafe tool
call ran and the unsafe node reached the synthesizer. Now the batch is judged again item by item, and only
the poison fails open (tests/test_batch_fail_open.py has the core contract)."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio

import pytest
from faults import PoisonedJudge
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.tools import FunctionTool
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.llamaindex import GuardedLLM, GuardNodePostprocessor

POISON = "Zanzibar travel notes: " + "spice markets and beaches. " * 3
UNSAFE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
SAFE = "Paris is the capital of France."


def open_guard(mode: str) -> Guard:
    return Guard(PoisonedJudge(mode), Policy(on_error="allow", timeout_s=0.3), cache_size=0)


def two_calls(messages, **kwargs) -> ChatMessage:
    """A search whose query is the poison, and an email whose body is unsafe, in one answer."""
    if any(m.role == MessageRole.TOOL for m in messages):
        return ChatMessage(role="assistant", content="Done.")
    return ChatMessage(
        role="assistant",
        blocks=[
            ToolCallBlock(tool_call_id="c1", tool_name="search", tool_kwargs={"query": POISON}),
            ToolCallBlock(
                tool_call_id="c2", tool_name="send_email", tool_kwargs={"to": "bob@example.com", "body": UNSAFE}
            ),
        ],
    )


@pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("mode", ["raise", "slow"])
def test_the_unsafe_tool_call_beside_a_poisoned_one_never_runs(mode, streaming):
    sent: list[str] = []
    searched: list[str] = []
    tools = [
        FunctionTool.from_defaults(lambda query: searched.append(query) or "ok", name="search", description="Search."),
        FunctionTool.from_defaults(
            lambda to, body: sent.append(body) or "sent", name="send_email", description="Send."
        ),
    ]
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=two_calls), guard=open_guard(mode))
    agent = FunctionAgent(tools=tools, llm=llm, streaming=streaming)

    async def go():
        return await asyncio.wait_for(agent.run(user_msg="Plan my trip and mail Bob."), 60)

    with pytest.raises(GuardViolation) as stopped:
        asyncio.run(go())
    assert sent == []  # the unsafe email was never sent
    assert stopped.value.decision.reason == "unsafe"


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mode", ["raise", "slow"])
def test_the_unsafe_node_beside_a_poisoned_one_is_dropped(mode, run_async):
    post = GuardNodePostprocessor(open_guard(mode))
    nodes = [NodeWithScore(node=TextNode(text=t), score=1.0) for t in (SAFE, POISON, UNSAFE)]
    if run_async:
        kept = asyncio.run(post.apostprocess_nodes(nodes, query_str="travel tips"))
    else:
        kept = post.postprocess_nodes(nodes, query_str="travel tips")
    texts = [n.node.get_content() for n in kept]
    assert UNSAFE not in texts
    assert texts == [SAFE, POISON]  # the poison itself fails open, flagged, as the policy says
