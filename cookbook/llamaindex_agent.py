"""A LlamaIndex FunctionAgent whose LLM is wrapped in GuardedLLM: a harmful tool call is stopped before
the tool runs, and a streamed answer that turns harmful is interrupted mid-stream.

    pip install -e ".[local,llamaindex]"    # once, in your qwenguard clone (torch first: see the README)
    python cookbook/llamaindex_agent.py

GuardedLLM screens every call the agent makes: the user's turn, tool results, each tool call the LLM
asks for (before the agent can run it) and the streamed answer (through a StreamMonitor that only
releases text the guard has passed).

Runs offline on the embedded demo guard. For the real model, change the `guard = ...` line:
    guard = Guard.from_pretrained("Qwen/Qwen3Guard-Gen-4B")                        # local, transformers
    guard = Guard.remote("http://host:8000/v1", model="Qwen/Qwen3Guard-Gen-4B")    # a vLLM server:
    #   vllm serve Qwen/Qwen3Guard-Gen-4B --port 8000 --max-model-len 32768
and the scripted MockFunctionCallingLLM for yours (OpenAI(...), Ollama(...), ...).
"""

import asyncio

from llama_index.core.agent.workflow import AgentStream, FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.llamaindex import GuardedLLM

HARMFUL = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
SAFE_OPENING = "The search says that Paris is the capital of France, and it is also its largest city. "
guard = Guard.from_pretrained("demo")
sent: list[str] = []


def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    sent.append(body)
    return "sent"


def web_search(query: str) -> str:
    """Search the web."""
    return "Paris is the capital of France."


def scripted(tool: str, args: dict, answer: str):
    """Stands in for an LLM: first asks for one tool call, then streams ``answer`` word by word."""

    async def words():
        for word in answer.split(" "):
            await asyncio.sleep(0.05)  # a real LLM's pace: the guard checks sentences while the rest streams
            yield ChatMessage(role="assistant", content=word + " ")

    def respond(messages, **kwargs):
        if any(m.role == MessageRole.TOOL for m in messages):
            return words()
        return ChatMessage(
            role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name=tool, tool_kwargs=args)]
        )

    return MockFunctionCallingLLM(response_generator=respond)


async def run(llm, request: str) -> tuple[str, GuardViolation | None]:
    """Run the agent, collecting the streamed text the user would see."""
    agent = FunctionAgent(tools=[send_email, web_search], llm=GuardedLLM(llm=llm, guard=guard))
    handler, shown = agent.run(user_msg=request), ""
    try:
        async for event in handler.stream_events():
            if isinstance(event, AgentStream):
                shown += event.delta
        await handler
    except GuardViolation as violation:
        return shown, violation
    return shown, None


async def main() -> None:
    # 1. Tool-step screening: the LLM asks to e-mail bomb-making instructions.
    _, stop = await run(scripted("send_email", {"to": "bob@example.com", "body": HARMFUL}, "Done."), "E-mail Bob.")
    assert stop is not None and stop.decision.stage is Stage.TOOL_CALL and sent == []  # the tool never ran
    print("tool call:", stop.decision.stage.value, stop.decision.categories, "| e-mails sent:", len(sent))

    # 2. A safe tool step, then the answer turns harmful while it streams.
    shown, stop = await run(
        scripted("web_search", {"query": "capital of France"}, SAFE_OPENING + HARMFUL), "What is the capital of France?"
    )
    assert stop is not None and stop.decision.stage is Stage.STREAM
    print("streamed: ", repr(shown))
    print("stopped:  ", stop.decision.stage.value, stop.decision.categories)
    assert (SAFE_OPENING + HARMFUL).startswith(shown) and "ammonium" not in shown  # nothing harmful shown


asyncio.run(main())
print("OK")
