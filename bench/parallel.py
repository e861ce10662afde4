"""Time to the first released token with parallel input screening on vs off.

    python bench/parallel.py [--first-token 0.5] [--check 0.3] [--runs 3]

A fake LLM takes ``--first-token`` seconds to its first token; the guard's backend takes ``--check``
seconds per check (`DelayedBackend` over an instant safe verdict). Sequential screening waits for
the check before calling the model (first token ~ check + first token); parallel screening starts
both at once and releases the first token when both are in (~ max of the two). Targets (issue 8):
on <= 1.1 x first token; off ~ check + first token.

Measured for LangChain (``model.stream`` / ``model.astream`` with the callback handlers;
``GuardRunnable(runnable=model)``, which holds the answer until judged, so its target is first token +
one check) and LlamaIndex (``GuardedLLM.stream_complete`` / ``astream_chat``). The answer streams through the
guard's Gen-window monitor with ``holdback=0`` (LangChain: ``stream_engine="monitor"``): output
checks run in the background, so the figure isolates the input check. (With the default hold-back
or the per-chunk "gate", the first chunk also waits for one output check, on or off alike.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from doubles import DelayedBackend, FixedBackend  # noqa: E402
from qwenguard.core import Guard  # noqa: E402

QUESTION = "What is the capital of France?"
PARTS = ["Paris ", "is ", "the ", "capital ", "of ", "France. "] * 5


# -- fake LLMs with a time to first token ------------------------------------------------------
def langchain_model(first_token_s: float) -> Any:
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk, ChatResult

    class SlowStartChatModel(BaseChatModel):
        first_token_s: float

        @property
        def _llm_type(self) -> str:
            return "slow-start-fake"

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
            raise NotImplementedError

        def _stream(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> Iterator[ChatGenerationChunk]:
            time.sleep(self.first_token_s)
            for part in PARTS:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=part))
                if run_manager is not None:
                    run_manager.on_llm_new_token(part, chunk=chunk)
                yield chunk

        async def _astream(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> AsyncIterator[ChatGenerationChunk]:
            await asyncio.sleep(self.first_token_s)
            for part in PARTS:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=part))
                if run_manager is not None:
                    await run_manager.on_llm_new_token(part, chunk=chunk)
                yield chunk

    return SlowStartChatModel(first_token_s=first_token_s)


def llamaindex_llm(first_token_s: float) -> Any:
    from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, LLMMetadata
    from llama_index.core.llms.custom import CustomLLM

    class SlowStartLLM(CustomLLM):
        first_token_s: float

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="slow-start-fake", is_chat_model=False)

        def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
            time.sleep(self.first_token_s)
            return CompletionResponse(text="".join(PARTS))

        def stream_complete(self, prompt: str, formatted: bool = False, **kw: Any) -> Iterator[CompletionResponse]:
            def gen() -> Iterator[CompletionResponse]:
                time.sleep(self.first_token_s)
                text = ""
                for part in PARTS:
                    text += part
                    yield CompletionResponse(text=text, delta=part)

            return gen()

        async def astream_chat(self, messages: Any, **kw: Any) -> AsyncIterator[ChatResponse]:
            async def gen() -> AsyncIterator[ChatResponse]:
                await asyncio.sleep(self.first_token_s)
                text = ""
                for part in PARTS:
                    text += part
                    yield ChatResponse(message=ChatMessage(role="assistant", content=text), delta=part)

            return gen()

    return SlowStartLLM(first_token_s=first_token_s)


# -- time to first released token --------------------------------------------------------------
def ttft_langchain(guard: Guard, model: Any, parallel: bool) -> float:
    from qwenguard.integrations.langchain import GuardCallbackHandler

    handler = GuardCallbackHandler(guard, parallel_input=parallel, stream_engine="monitor")
    t0 = time.perf_counter()
    for chunk in model.stream(QUESTION, config={"callbacks": [handler]}):
        if chunk.content:
            return time.perf_counter() - t0
    raise AssertionError("no token")


async def attft_langchain(guard: Guard, model: Any, parallel: bool) -> float:
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler

    handler = AsyncGuardCallbackHandler(guard, parallel_input=parallel, stream_engine="monitor")
    t0 = time.perf_counter()
    async for chunk in model.astream(QUESTION, config={"callbacks": [handler]}):
        if chunk.content:
            return time.perf_counter() - t0
    raise AssertionError("no token")


def ttft_runnable(guard: Guard, model: Any, parallel: bool) -> float:
    from qwenguard.integrations.langchain import GuardRunnable

    guarded = GuardRunnable(guard=guard, runnable=model, parallel_input=parallel)
    t0 = time.perf_counter()
    for chunk in guarded.stream(QUESTION):
        if chunk.content:
            return time.perf_counter() - t0
    raise AssertionError("no token")


async def attft_runnable(guard: Guard, model: Any, parallel: bool) -> float:
    from qwenguard.integrations.langchain import GuardRunnable

    guarded = GuardRunnable(guard=guard, runnable=model, parallel_input=parallel)
    t0 = time.perf_counter()
    async for chunk in guarded.astream(QUESTION):
        if chunk.content:
            return time.perf_counter() - t0
    raise AssertionError("no token")


def ttft_llamaindex(guard: Guard, llm: Any, parallel: bool) -> float:
    from qwenguard.integrations.llamaindex import GuardedLLM

    guarded = GuardedLLM(llm=llm, guard=guard, holdback=0, parallel_input=parallel)
    t0 = time.perf_counter()
    for response in guarded.stream_complete(QUESTION):
        if response.delta:
            return time.perf_counter() - t0
    raise AssertionError("no token")


async def attft_llamaindex(guard: Guard, llm: Any, parallel: bool) -> float:
    from llama_index.core.base.llms.types import ChatMessage
    from qwenguard.integrations.llamaindex import GuardedLLM

    guarded = GuardedLLM(llm=llm, guard=guard, holdback=0, parallel_input=parallel)
    t0 = time.perf_counter()
    async for response in await guarded.astream_chat([ChatMessage(role="user", content=QUESTION)]):
        if response.delta:
            return time.perf_counter() - t0
    raise AssertionError("no token")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--first-token", type=float, default=0.5)
    parser.add_argument("--check", type=float, default=0.3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    # cache_size=0: every run pays for its input check.
    guard = Guard(DelayedBackend(FixedBackend(), args.check), cache_size=0)
    lc_model, li_llm = langchain_model(args.first_token), llamaindex_llm(args.first_token)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}; python {platform.python_version()}")
    print(
        f"fake LLM: {args.first_token * 1000:.0f} ms to first token; guard: {args.check * 1000:.0f} ms per check; "
        f"median of {args.runs}"
    )
    # Callbacks and GuardedLLM(holdback=0) release at once: the check should hide behind the first token.
    # GuardRunnable holds the answer until its first sentence is judged: one more check, which is the
    # least any holding path can do (unguarded + one judge call).
    target_on = 1.1 * args.first_token
    target_held = 1.1 * (args.first_token + args.check)
    rows = [
        ("LangChain stream", target_on, lambda p: ttft_langchain(guard, lc_model, p)),
        ("LangChain astream", target_on, lambda p: asyncio.run(attft_langchain(guard, lc_model, p))),
        ("GuardRunnable stream", target_held, lambda p: ttft_runnable(guard, lc_model, p)),
        ("GuardRunnable astream", target_held, lambda p: asyncio.run(attft_runnable(guard, lc_model, p))),
        ("LlamaIndex stream_complete", target_on, lambda p: ttft_llamaindex(guard, li_llm, p)),
        ("LlamaIndex astream_chat", target_on, lambda p: asyncio.run(attft_llamaindex(guard, li_llm, p))),
    ]
    for name, target, run in rows:
        off = statistics.median(run(False) for _ in range(args.runs))
        on = statistics.median(run(True) for _ in range(args.runs))
        verdict = "ok" if on <= target else "MISSED"
        print(
            f"{name:27}: off {off * 1000:6.0f} ms, on {on * 1000:6.0f} ms "
            f"(target on <= {target * 1000:.0f} ms: {verdict}; saved {(off - on) * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()
