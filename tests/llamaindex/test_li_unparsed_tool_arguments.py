"""Tool-call arguments a model wrote that are not a JSON object: `OpenAILike` parses them as ``{}``, so the
call was judged as ``send_email({})`` while the raw text stayed in the final chunk (its `ToolCallBlock`
and ``additional_kwargs["tool_calls"]``) for whoever shows it. The real provider class against a
scripted OpenAI-compatible server; a keyword judge (tests/stream_judges.py: "Mix ammonium")."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio

import pytest
from li_scripted import Outbox
from llama_index.llms.openai_like import OpenAILike
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.llamaindex import GuardedLLM
from scripted_openai import Reply, ToolCall, scripted_openai
from stream_judges import CLAUSE, CountingJudge

BAD_ARGUMENTS = f'{CLAUSE} Then {{"to": "friend@example.com"}}'


def openai_like(url: str) -> OpenAILike:
    return OpenAILike(
        model="scripted", api_base=url, api_key="scripted", is_chat_model=True, is_function_calling_model=True
    )


def reply() -> Reply:
    return Reply.words("Sending it.", tool_calls=[ToolCall("send_email", BAD_ARGUMENTS, id="call_bad", fragments=5)])


@pytest.mark.parametrize("mode", ["stream", "astream", "chat", "achat"])
def test_tool_arguments_that_are_not_json_are_judged_as_written(mode):
    outbox = Outbox()
    with scripted_openai(reply()) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=Guard(CountingJudge()))
        tools = [outbox.tool()]

        async def astream() -> None:
            async for _ in await llm.astream_chat_with_tools(tools, user_msg="Mail my friend the recipe"):
                pass

        with pytest.raises(GuardViolation) as err:
            if mode == "stream":
                list(llm.stream_chat_with_tools(tools, user_msg="Mail my friend the recipe"))
            elif mode == "astream":
                asyncio.run(astream())
            elif mode == "chat":
                llm.chat_with_tools(tools, user_msg="Mail my friend the recipe")
            else:
                asyncio.run(llm.achat_with_tools(tools, user_msg="Mail my friend the recipe"))
    assert err.value.decision.stage is Stage.TOOL_CALL
    assert outbox.sent == 0


# -- arguments the agent decodes before it runs the tool --------------------------------------------
#: The clause as JSON ``\uXXXX`` escapes: the same string once decoded, and no word of it as written.
ESCAPED = "".join(f"\\u{ord(c):04x}" for c in CLAUSE)


def _run_agent(agent) -> Stage | None:
    async def run() -> Stage | None:
        try:
            await agent.run(user_msg="Mail my friend the note.")
        except GuardViolation as stopped:
            return stopped.decision.stage
        return None

    return asyncio.run(run())


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "not_streaming"])
def test_truncated_escaped_arguments_are_judged_as_the_agent_runs_them(streaming):
    """The attack: a native tool call whose arguments are truncated JSON with the clause as ``\\uXXXX`` escapes.
    `OpenAILike` repairs them (``parse_partial_json``, escapes decoded) and the agent ran ``send_email`` with
    the whole clause, while the guard judged only the text as written (not an object, so it took the place
    of the parsed call). Both are judged now."""
    from llama_index.core.agent.workflow import FunctionAgent

    truncated = '{"to": "friend@example.com", "body": "' + ESCAPED + '"'  # no closing brace
    outbox = Outbox()
    with scripted_openai(
        [Reply(tool_calls=[ToolCall("send_email", truncated, id="c1", fragments=7)]), Reply.words("Sent.")]
    ) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=Guard(CountingJudge()))
        stopped = _run_agent(FunctionAgent(tools=[outbox.tool()], llm=llm, streaming=streaming))
    assert (stopped, outbox.sent) == (Stage.TOOL_CALL, 0)


REACT_STEP = (
    "Thought: I will send the note.\nAction: send_email\n"
    'Action Input: {"to": "friend@example.com", "body": "' + ESCAPED + '"}'
)


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "not_streaming"])
def test_a_react_action_is_judged_as_a_tool_call_before_the_agent_runs_it(streaming):
    """The attack: a ReAct step whose Action Input carries the clause as escapes. `GuardedLLM` judged the step
    as text, as written; the agent's parser decodes the escapes and ran ``send_email`` with the clause (the run
    stopped only at the next model call). The action is now judged as a tool call, decoded, before the
    step leaves `GuardedLLM`."""
    from llama_index.core.agent.workflow import ReActAgent

    outbox = Outbox()
    with scripted_openai([Reply.words(REACT_STEP), Reply.words("Thought: Done.\nAnswer: Sent.")]) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=Guard(CountingJudge()))
        stopped = _run_agent(ReActAgent(tools=[outbox.tool()], llm=llm, streaming=streaming))
    assert (stopped, outbox.sent) == (Stage.TOOL_CALL, 0)


@pytest.mark.parametrize("mode", ["stream", "astream", "chat", "achat"])
def test_a_react_action_in_any_call_is_judged_as_a_tool_call(mode):
    """The same step through each chat call of `GuardedLLM` directly: the action's decoded arguments stop it."""
    from llama_index.core.llms import ChatMessage

    messages = [ChatMessage(role="user", content="Mail my friend the note.")]
    with scripted_openai(Reply.words(REACT_STEP)) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=Guard(CountingJudge()))

        async def astream() -> None:
            async for _ in await llm.astream_chat(messages):
                pass

        with pytest.raises(GuardViolation) as err:
            if mode == "stream":
                list(llm.stream_chat(messages))
            elif mode == "astream":
                asyncio.run(astream())
            elif mode == "chat":
                llm.chat(messages)
            else:
                asyncio.run(llm.achat(messages))
    assert err.value.decision.stage is Stage.TOOL_CALL


@pytest.mark.parametrize("mode", ["chat", "stream"])
def test_a_react_action_with_a_backslash_that_is_no_escape_is_judged_not_crashed_on(mode):
    """A safe step (red team): a Windows path in the Action Input (``C:\\users\\bob``: ``\\u`` without four hex
    digits) made the decoding raise ``ValueError`` and the whole run failed; the agent itself runs such a step."""
    from llama_index.core.llms import ChatMessage

    step = 'Thought: I will read it.\nAction: read_file\nAction Input: {"path": "C:\\users\\bob\\notes.txt"}'
    messages = [ChatMessage(role="user", content="Read my notes.")]
    with scripted_openai(Reply.words(step)) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=Guard(CountingJudge()))
        answer = (
            llm.chat(messages).message.content
            if mode == "chat"
            else list(llm.stream_chat(messages))[-1].message.content
        )
    assert answer == step


def test_a_react_action_escaped_the_way_only_the_agents_reader_decodes_is_judged_decoded():
    """The bypass a naive fix would open: the agent's lenient JSON reader takes ``\\u+06d`` to ``int("+06d", 16)``,
    "m"; judged as written, "Mix a\\u+06d\\u+06donium" hides the clause from the judge."""
    from llama_index.core.agent.workflow import ReActAgent

    body = CLAUSE.replace("mm", "\\u+06d\\u+06d")
    step = (
        f'Thought: I will send it.\nAction: send_email\nAction Input: {{"to": "friend@example.com", "body": "{body}"}}'
    )
    outbox = Outbox()
    with scripted_openai([Reply.words(step), Reply.words("Thought: Done.\nAnswer: Sent.")]) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=Guard(CountingJudge()))
        stopped = _run_agent(ReActAgent(tools=[outbox.tool()], llm=llm))
    assert (stopped, outbox.sent) == (Stage.TOOL_CALL, 0)
