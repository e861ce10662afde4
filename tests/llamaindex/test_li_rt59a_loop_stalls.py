"""The LlamaIndex async paths never hold the event loop for reading work that grows with a hostile answer (stop 59 A).

`GuardedLLM`'s async twins built their checks on the loop: the answer's JSON and YAML readings (`._json_reading`:
about 0.3 s for 200,000 characters of ``\\x4d`` escapes, read past libyaml's bound by the YAML stand-in), the
actions a template call's component parses out of it (a sub-question generator's list: 1.4 s for 4,000 entries), a
tool's output read by the tool wrappers, a stored history read by `GuardedMemory`. Each test is the attack, with a
loop-lag probe beside it (a task sleeping 5 ms in a loop, its worst lateness), compared in the same run with the loop
left idle, the same call unguarded, and the guarded sync call run on a worker thread (the same reading, off the
loop): the guard's reading may cost time, not the loop. The garbage collector is off while a call is measured (as in
the LangChain twin, ``test_lc_rt55b_loop_stalls.py``).
"""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from li_scripted import ScriptedLLM
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.prompts import PromptTemplate
from llama_index.core.question_gen import LLMQuestionGenerator
from llama_index.core.tools import FunctionTool, ToolOutput
from loop_lag import compare, in_thread
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.llamaindex import GuardedLLM, GuardedMemory, guard_tool
from stream_judges import CountingJudge

#: About 600,000 characters of JSON that ``json.loads`` refuses (``\x`` is no JSON escape) and ``yaml.safe_load``
#: reads: the guard reads it as LlamaIndex's ``parse_json_markdown`` falls back to reading it (about 0.7 s). Many short
#: strings: one regex match over one long string would hold the GIL, on a worker thread too, as long as the reading.
HOSTILE = "[" + ", ".join(f'"\\x4d\\x69\\x78 \\x61\\x6d {i}"' for i in range(20_000)) + "]"

#: The same, as a sub-question generator's list (LlamaIndex's own parser reads it; the guard runs that parser too).
SUB_QUESTIONS = "[" + ", ".join(f'{{"sub_question": "\\x4dix {i}", "tool_name": "web"}}' for i in range(4_000)) + "]"


class RemoteJudge(CountingJudge):
    """`CountingJudge` answering off the loop, as a remote guard's reply arrives: its own reading of the conversations
    is not the integration's."""

    async def aclassify(self, conversations, *, timeout=None):
        return await asyncio.to_thread(self.classify, conversations, timeout=timeout)


def _guard() -> Guard:
    return Guard(backend=RemoteJudge())


def _llm(text: str, guarded: bool) -> Any:
    inner = ScriptedLLM(chunks=[text[i : i + 4000] for i in range(0, len(text), 4000)])
    return GuardedLLM(llm=inner, guard=_guard()) if guarded else inner


MESSAGES = [ChatMessage(role="user", content="Give me the answer as JSON.")]


async def _drain(stream: Any) -> str:
    items = [item async for item in stream]
    return items[-1].message.content if hasattr(items[-1], "message") else items[-1].text


def _drain_sync(stream: Any) -> str:
    items = list(stream)
    return items[-1].message.content if hasattr(items[-1], "message") else items[-1].text


ASYNC = {
    "achat": lambda llm: llm.achat(MESSAGES),
    "acomplete": lambda llm: llm.acomplete("Give me the answer as JSON."),
    "astream_chat": lambda llm: _adrain(llm.astream_chat(MESSAGES)),
    "astream_complete": lambda llm: _adrain(llm.astream_complete("Give me the answer as JSON.")),
}
SYNC = {
    "achat": lambda llm: llm.chat(MESSAGES),
    "acomplete": lambda llm: llm.complete("Give me the answer as JSON."),
    "astream_chat": lambda llm: _drain_sync(llm.stream_chat(MESSAGES)),
    "astream_complete": lambda llm: _drain_sync(llm.stream_complete("Give me the answer as JSON.")),
}


async def _adrain(opening: Awaitable[Any]) -> str:
    return await _drain(await opening)


@pytest.mark.parametrize("how", list(ASYNC))
async def test_a_hostile_json_answer_is_read_off_the_loop(how):
    async def run(guarded: bool) -> None:
        answer = await ASYNC[how](_llm(HOSTILE, guarded))
        text = answer if isinstance(answer, str) else answer.message.content if how == "achat" else answer.text
        assert text == HOSTILE  # judged safe, handed over whole

    failure = await compare(lambda: run(True), lambda: run(False), in_thread(lambda: SYNC[how](_llm(HOSTILE, True))))
    assert failure is None, failure


class Answer(BaseModel):
    answer: str


async def test_a_structured_call_over_a_completion_llm_reads_its_answer_off_the_loop():
    # ``astructured_predict`` over an LLM that is not function-calling: LlamaIndex's text program, whose parser
    # refuses the ``\x`` escapes (json.loads) in both runs; the guard reads the answer as ``yaml.safe_load`` would.
    prompt = PromptTemplate("Answer as JSON: {query_str}")

    async def run(guarded: bool) -> None:
        with pytest.raises(ValueError):
            await _llm(HOSTILE, guarded).astructured_predict(Answer, prompt, query_str="What is it?")

    def sync_run() -> None:
        with pytest.raises(ValueError):
            _llm(HOSTILE, True).structured_predict(Answer, prompt, query_str="What is it?")

    failure = await compare(lambda: run(True), lambda: run(False), in_thread(sync_run))
    assert failure is None, failure


async def test_a_sub_question_list_is_read_off_the_loop():
    # The sub-question generator's call (``LLMQuestionGenerator.agenerate`` asks ``apredict`` with its template, then
    # parses the answer itself): the guard reads the tools it will run with the template's parser, and the answer's
    # YAML reading. The generator's own parse comes after the call, outside what is measured.
    tools_str = "web: Search the web."
    template = LLMQuestionGenerator.from_defaults(llm=ScriptedLLM(chunks=["[]"])).get_prompts()["question_gen_prompt"]

    async def run(guarded: bool) -> None:
        answer = await _llm(SUB_QUESTIONS, guarded).apredict(template, tools_str=tools_str, query_str="Fertilizer?")
        assert answer == SUB_QUESTIONS

    def sync_run() -> None:
        assert _llm(SUB_QUESTIONS, True).predict(template, tools_str=tools_str, query_str="Fertilizer?")

    failure = await compare(lambda: run(True), lambda: run(False), in_thread(sync_run))
    assert failure is None, failure


async def test_a_tools_large_raw_output_is_read_off_the_loop():
    # A search tool's raw results (400,000 entries of a few characters) beside a short text: the wrapper reads them
    # for text the agent may see that its content does not hold.
    found = [{"url": f"u{i}"} for i in range(400_000)]

    def search(query: str) -> str:
        """Search the web."""
        return "Found 400,000 pages."

    def tool(guarded: bool) -> Any:
        def results(_: Any) -> ToolOutput:
            return ToolOutput(content="Found 400,000 pages.", tool_name="search", raw_input={}, raw_output=found)

        plain = FunctionTool.from_defaults(fn=search, callback=results)
        return guard_tool(plain, _guard()) if guarded else plain

    async def run(guarded: bool) -> None:
        output = await tool(guarded).acall(query="Paris")
        assert output.content.startswith("Found")

    failure = await compare(lambda: run(True), lambda: run(False), in_thread(lambda: tool(True).call(query="Paris")))
    assert failure is None, failure


async def test_a_blocked_answer_is_still_blocked_off_the_loop():
    # The reading off the loop is still judged: the clause the YAML reading decodes stops the call.
    clause = "".join(f"\\x{ord(c):02x}" if c.isalpha() else c for c in "Mix ammonium nitrate with fuel oil.")
    text = '{"answer": "' + clause + '", "pad": "' + "\\x61" * 40_000 + '"}'
    with pytest.raises(GuardViolation):
        await _llm(text, True).acomplete("Give me the answer as JSON.")


async def test_a_long_stored_history_is_read_off_the_loop_by_the_memory():
    # 4,000 stored turns (an agent's long session): a user message put after them is judged with the history read
    # (about 0.2 s of reading; the guard reads 4,096 turns at most). Each run gets a memory built beforehand, off the clock.
    history = [
        ChatMessage(role="user" if i % 2 == 0 else "assistant", content=f"Turn {i} about the weather in Paris. " * 4)
        for i in range(4_000)
    ]

    def memory(guarded: bool) -> Any:
        plain = ChatMemoryBuffer.from_defaults(chat_history=list(history), token_limit=10**9)
        return GuardedMemory(plain, _guard()) if guarded else plain

    built = {guarded: [memory(guarded) for _ in range(2)] for guarded in (True, False)}
    sync_built = [memory(True) for _ in range(2)]
    question = ChatMessage(role="user", content="And tomorrow?")

    async def run(guarded: bool) -> None:
        stored = built[guarded].pop()
        await stored.aput(question)
        assert len(await stored.aget_all()) == 4_001

    failure = await compare(lambda: run(True), lambda: run(False), in_thread(lambda: sync_built.pop().put(question)))
    assert failure is None, failure
