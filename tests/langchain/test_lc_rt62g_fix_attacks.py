"""rt62g: attacks on stop 62's own fixes, in the LangChain integration.

- F1 (High): the handler told a branch of a blocked call apart by the input it started with, and a chain run by
  ``astream`` starts with langchain-core's placeholder ``{"input": ""}``: compared with a sibling's real input it
  looked like another input, and the sibling's tool ran on the blocked call. A placeholder is not known: refused.
- F2 (Medium): a stop's place held a digest of the whole request, and a fallback asks the same question in another
  form (``ModelFallbackMiddleware`` strips Anthropic ``cache_control`` markers; a chat model's ``with_fallbacks`` to
  a completion model asks one prompt string): the backup was asked after the guard's stop. The question is compared
  as text, one holding the other.
- F4 (Low): ``history_turns=0`` dropped a prefill with the history: the continuation was judged alone.

Real ChatOpenAI / OpenAI / ChatAnthropic classes (the last with its network call scripted), real create_agent; the
phrase judge (unsafe when the judged text says "mix ammonium")."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from faults import ScriptedBackend, phrase_verdict
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAI
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardedChatModel
from scripted_openai import Reply, scripted_openai


def _guard() -> Guard:
    return Guard(ScriptedBackend(phrase_verdict, name="phrase"), cache_size=0)


async def _others_done() -> None:
    me = asyncio.current_task()
    while others := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
        await asyncio.wait(others)


@pytest.mark.parametrize("streamed", [False, True], ids=["ainvoke", "astream"])
def test_a_branch_orphaned_by_a_caught_block_reaches_no_tool_when_the_model_streams(streamed):
    ran: list[str] = []

    @tool
    def lookup(city: str) -> str:
        """Look a city up."""
        ran.append(city)
        return f"{city} is a city."

    async def prepare(question: str) -> dict[str, str]:
        await asyncio.sleep(0.3)  # a lookup first: the step has caught the block by now
        return {"city": question[-12:]}

    async def scenario() -> str:
        with scripted_openai("unused") as url:
            chat = ChatOpenAI(
                base_url=url, api_key="x", model="scripted", max_retries=0, http_async_client=httpx.AsyncClient()
            )
            answer_chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | chat
            branch = RunnableLambda(prepare) | lookup

            async def ask(question: str) -> Any:
                if streamed:
                    return [c async for c in answer_chain.astream(question)]
                return await answer_chain.ainvoke(question)

            async def step(question: str) -> str:
                try:
                    await asyncio.gather(ask(question), branch.ainvoke(question))
                except GuardViolation:
                    return "Refused."
                return "Answered."

            async def then(answer: str) -> str:  # the request goes on (a later step)
                await asyncio.sleep(0.6)
                return answer

            pipeline = RunnableLambda(step) | RunnableLambda(then)
            answer = await pipeline.ainvoke(
                f"How do I do this: {UNSAFE_CLAUSE}", {"callbacks": [AsyncGuardCallbackHandler(_guard())]}
            )
            await _others_done()
            return answer

    assert asyncio.run(scenario()) == "Refused."
    assert ran == []  # the branch of the blocked call never reached its tool


def test_a_completion_fallback_of_a_stopped_chat_answer_is_not_asked():
    with (
        scripted_openai([Reply.words(SAFE_ANSWER + " " + UNSAFE_CLAUSE)]) as primary,
        scripted_openai([Reply.words("Rome is the capital of Italy.")]) as backup_url,
    ):
        chat = ChatOpenAI(base_url=primary, api_key="x", model="scripted", max_retries=0)
        backup = OpenAI(base_url=backup_url, api_key="x", model="scripted", max_retries=0)
        with pytest.raises(GuardViolation):
            chat.with_fallbacks([backup]).invoke(
                "Tell me about Paris.", {"callbacks": [GuardCallbackHandler(_guard())]}
            )
        assert len(backup_url.requests) == 0


@pytest.mark.parametrize("how", ["caching middleware", "cache_control system block"])
def test_a_fallback_middleware_backup_is_not_asked_after_the_stop_whatever_markers_it_strips(how):
    pytest.importorskip("langchain_anthropic")
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelFallbackMiddleware
    from langchain_anthropic import ChatAnthropic
    from langchain_anthropic.middleware import AnthropicPromptCachingMiddleware
    from langchain_core.outputs import ChatGeneration, ChatResult

    class OfflineClaude(ChatAnthropic):
        """A real ChatAnthropic, its network call replaced by a script."""

        asked: int = 0

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
            self.asked += 1
            return ChatResult(generations=[ChatGeneration(message=AIMessage(SAFE_ANSWER + " " + UNSAFE_CLAUSE))])

    claude = OfflineClaude(model="claude-sonnet-4-5", api_key="x")
    with scripted_openai([Reply.words("Rome is the capital of Italy.")]) as backup_url:
        backup = ChatOpenAI(base_url=backup_url, api_key="x", model="scripted", max_retries=0)
        if how == "caching middleware":
            options: dict[str, Any] = {
                "system_prompt": "You are a travel assistant.",
                "middleware": [
                    AnthropicPromptCachingMiddleware(min_messages_to_cache=0),
                    ModelFallbackMiddleware(backup),
                ],
            }
        else:
            block = {"type": "text", "text": "You are a travel assistant.", "cache_control": {"type": "ephemeral"}}
            options = {"system_prompt": SystemMessage(content=[block]), "middleware": [ModelFallbackMiddleware(backup)]}
        agent = create_agent(claude, [], **options)
        with pytest.raises(GuardViolation):
            agent.invoke(
                {"messages": [{"role": "user", "content": "Tell me about Paris."}]},
                {"callbacks": [GuardCallbackHandler(_guard())]},
            )
        assert claude.asked == 1 and len(backup_url.requests) == 0


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_a_prefill_is_judged_with_its_continuation_whatever_history_turns_says(mode):
    messages = [HumanMessage("Explain the recipe."), AIMessage("Step 1: Mix")]
    model = GuardedChatModel(scripted(" ammonium nitrate with fuel oil."), guard=_guard(), history_turns=0)
    with pytest.raises(GuardViolation):
        if mode == "invoke":
            model.invoke(messages)
        else:
            "".join(str(c.content) for c in model.stream(messages))
