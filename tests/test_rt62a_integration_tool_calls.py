"""rt62a F2, F4, F5: since stop 61 a tool call is rendered with lenient readings (YAML, JSON5, Python literals: ~3-5
us a character of escapes), and the integrations paid it without the guard's bound or on the event loop:

- F2: every integration rendered a tool call whole (no ``max_chars``) before the guard refused it as too large: a
  2 MB argument cost the async LangChain handler 4.6-8.5 s of CPU, LlamaIndex ``achat`` +3 s, where the core check
  refuses it at once. Each path now renders with the guard's ``max_chars`` (a smaller bound would cut a call that
  is then judged as if whole; none is never given where the guard is known).
- F4: `AsyncGuardCallbackHandler` built a streamed tool call's check on the event loop (one 200,000-character
  argument chunk: 0.4-0.9 s): built on a worker thread past a small size.
- F5: its ``on_llm_end`` built the answer's checks on the loop (0.4-0.9 s for a 200,000-character tool call).

Real ChatOpenAI / OpenAILike against the scripted OpenAI-compatible server; a scripted, instant judge, so the
loop-lag comparisons measure the library's own work against the unguarded client in the same run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faults import ScriptedBackend
from loop_lag import compare
from qwenguard.core import Guard
from qwenguard.core.formats import conversations
from scripted_openai import Reply, ToolCall, scripted_openai

MAX_CHARS = 123_457  # the operator's bound: distinctive, so a default in its place shows
P_SAFE = "Safety: Safe\nCategories: None"
R_SAFE = "Safety: Safe\nCategories: None\nRefusal: No"


def _guard(**options: Any) -> Guard:
    judge = ScriptedBackend(lambda c: R_SAFE if c[-1]["role"] == "assistant" else P_SAFE)
    return Guard(judge, cache_size=0, **options)


@pytest.fixture
def bounds(monkeypatch) -> list[int | None]:
    """The ``max_chars`` every tool-call rendering was given."""
    seen: list[int | None] = []
    real = conversations.render_tool_call

    def spy(name: str, arguments: Any, max_chars: int | None = None) -> str:
        seen.append(max_chars)
        return real(name, arguments, max_chars)

    monkeypatch.setattr(conversations, "render_tool_call", spy)
    return seen


NOTE = Reply(["Sure."], [ToolCall("send_note", '{"body": "Hello there."}', fragments=2)])


def _langchain_handler(guard: Guard) -> None:
    from langchain_core.tools import tool
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler

    @tool
    def send_note(body: str) -> str:
        """Send a note."""
        return "sent"

    handler = AsyncGuardCallbackHandler(guard)
    with scripted_openai([NOTE]) as url:
        from langchain_openai import ChatOpenAI

        llm = ChatOpenAI(base_url=url, api_key="x", model="scripted")

        async def run() -> None:
            await llm.ainvoke("Send a note.", config={"callbacks": [handler]})  # the answer's call (on_llm_end)
            async for _ in llm.astream("Send a note.", config={"callbacks": [handler]}):  # streamed: the gate
                pass
            await send_note.ainvoke({"body": "Hello there."}, config={"callbacks": [handler]})  # the tool's start

        asyncio.run(run())


def _langchain_models(guard: Guard) -> None:
    from langchain.agents import create_agent
    from langchain_core.runnables import RunnableLambda
    from langchain_openai import ChatOpenAI
    from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware, guard_output

    with scripted_openai([NOTE, Reply(["Sent."])]) as url:
        llm = ChatOpenAI(base_url=url, api_key="x", model="scripted")
        GuardedChatModel(llm, guard).invoke("Send a note.")
        (llm | guard_output(guard) | RunnableLambda(lambda m: m)).invoke("Send a note.")

        from langchain_core.tools import tool

        @tool
        def send_note(body: str) -> str:
            """Send a note."""
            return "sent"

        create_agent(llm, [send_note], middleware=[GuardMiddleware(guard)]).invoke(
            {"messages": [{"role": "user", "content": "Send a note."}]}
        )


def _llamaindex(guard: Guard) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike
    from qwenguard.integrations.llamaindex import GuardedLLM

    history = [
        ChatMessage(role="user", content="Send a note."),
        ChatMessage(
            role="assistant",
            content="",
            additional_kwargs={
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "send_note", "arguments": '{"body": "Hi."}'},
                    }
                ]
            },
        ),
        ChatMessage(role="tool", content="sent", additional_kwargs={"tool_call_id": "call_1"}),
        ChatMessage(role="user", content="Another one."),
    ]
    with scripted_openai([NOTE]) as url:
        llm = OpenAILike(
            model="scripted", api_base=url, api_key="x", is_chat_model=True, is_function_calling_model=True
        )
        GuardedLLM(llm, guard).chat(history)


@pytest.mark.parametrize(
    "path", [_langchain_handler, _langchain_models, _llamaindex], ids=["lc-handler", "lc-models", "llamaindex"]
)
def test_every_tool_call_is_rendered_within_the_guards_bound(path, bounds):
    path(_guard(max_chars=MAX_CHARS))
    assert bounds, "no tool call rendered"
    # The calls judged are rendered to the guard's bound; the earlier calls a call is read after, within the room
    # left for them (`conversations.CALLS_CONTEXT_CHARS`, rt72m F2): never unbounded, never past the guard's.
    assert MAX_CHARS in bounds and all(b is not None and b <= MAX_CHARS for b in bounds), bounds


# A 200,013-character argument of escapes, well under max_chars, in one piece (some providers send one chunk).
BIG = Reply(["Sure."], [ToolCall("send_note", '{"body": "' + "\\e" * 100_000 + '"}', fragments=1)])


@pytest.mark.parametrize("streamed", [True, False], ids=["astream (the gate)", "ainvoke (on_llm_end)"])
def test_the_async_handler_builds_a_large_tool_calls_check_off_the_loop(streamed):
    from langchain_openai import ChatOpenAI
    from loop_lag import in_thread
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

    guard = _guard()

    async def main() -> str | None:
        with scripted_openai([BIG]) as url:
            llm = ChatOpenAI(base_url=url, api_key="x", model="scripted")

            async def call(config: dict[str, Any]) -> None:
                if streamed:
                    async for _ in llm.astream("Send the note.", config=config):
                        pass
                else:
                    await llm.ainvoke("Send the note.", config=config)

            def sync_guarded() -> (
                None
            ):  # the same reading on a worker thread: what holding the GIL there costs the loop
                config: dict[str, Any] = {"callbacks": [GuardCallbackHandler(guard)]}
                if streamed:
                    for _ in llm.stream("Send the note.", config=config):
                        pass
                else:
                    llm.invoke("Send the note.", config=config)

            return await compare(
                lambda: call({"callbacks": [AsyncGuardCallbackHandler(guard)]}),
                lambda: call({}),
                in_thread(sync_guarded),
            )

    assert asyncio.run(main()) is None
