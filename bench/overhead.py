"""Guard overhead on a streamed answer: guarded (zero-latency backend) vs unguarded, side by side.

    python bench/overhead.py [--chunks 2000] [--repeats 5] [--paced-ms 1]

A fake model streams ``--chunks`` word chunks. The guarded run uses a backend that answers at once
(`FixedBackend`), so the difference is the guard path itself: framework hooks, the stream gate or
monitor, policy, cache and events. Printed per framework: best-of-N wall time unguarded and guarded,
their ratio (target <= 1.10) and the added cost per chunk (target <= 50 us), then the cost of one
`Guard.check_prompt` on the same backend (target <= 1 ms).

- LangChain: ``model.stream(...)`` with `GuardCallbackHandler` in the config (the default "gate"
  engine: every chunk is judged before it is yielded) vs no callbacks.
- LlamaIndex: ``GuardedLLM(llm).stream_complete(...)`` (a StreamMonitor over the chunks) vs
  ``llm.stream_complete(...)``.

The zero-latency fake model makes the framework's own per-chunk cost (~20-25 us in LangChain) the
whole baseline, so the ratio there is a worst case no real model approaches. The second table paces
the fake model at ``--paced-ms`` per chunk (1 ms = 1,000 chunks/s, faster than any hosted LLM
streams) and gives the ratio a user could ever observe.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from doubles import FixedBackend  # noqa: E402

from qwenguard.core import Guard  # noqa: E402


def chunks(n: int) -> list[str]:
    words = ["Paris ", "is ", "the ", "capital ", "of ", "France, ", "and ", "a ", "lovely ", "city. "]
    return [words[i % len(words)] for i in range(n)]


def best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# -- LangChain ---------------------------------------------------------------------------------
def langchain_model(parts: list[str], delay_s: float = 0.0) -> Any:
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk, ChatResult

    class ChunkedChatModel(BaseChatModel):
        """Streams ``parts`` as they are, ``delay_s`` apart."""

        parts: list[str]
        delay_s: float = 0.0

        @property
        def _llm_type(self) -> str:
            return "chunked-fake"

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
            raise NotImplementedError

        def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Iterator[ChatGenerationChunk]:
            for part in self.parts:
                if self.delay_s:
                    time.sleep(self.delay_s)
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=part))
                if run_manager is not None:
                    run_manager.on_llm_new_token(part, chunk=chunk)
                yield chunk

    return ChunkedChatModel(parts=parts, delay_s=delay_s)


def bench_langchain(guard: Guard, parts: list[str], repeats: int, engine: str = "gate",
                    delay_s: float = 0.0) -> tuple[float, float]:
    from qwenguard.integrations.langchain import GuardCallbackHandler

    model = langchain_model(parts, delay_s)
    question = "What is the capital of France?"

    def plain() -> None:
        assert sum(1 for _ in model.stream(question)) >= len(parts)

    def guarded() -> None:
        handler = GuardCallbackHandler(guard, stream_engine=engine)
        assert sum(1 for _ in model.stream(question, config={"callbacks": [handler]})) >= len(parts)

    plain(), guarded()  # warm up
    return best(plain, repeats), best(guarded, repeats)


# -- LlamaIndex --------------------------------------------------------------------------------
def llamaindex_llm(parts: list[str], delay_s: float = 0.0) -> Any:
    from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback
    from llama_index.core.llms.custom import CustomLLM

    class ChunkedLLM(CustomLLM):
        parts: list[str]
        delay_s: float = 0.0

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="chunked-fake", is_chat_model=False)

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
            return CompletionResponse(text="".join(self.parts))

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kw: Any) -> Iterator[CompletionResponse]:
            def gen() -> Iterator[CompletionResponse]:
                text = ""
                for part in self.parts:
                    if self.delay_s:
                        time.sleep(self.delay_s)
                    text += part
                    yield CompletionResponse(text=text, delta=part)

            return gen()

    return ChunkedLLM(parts=parts, delay_s=delay_s)


def bench_llamaindex(guard: Guard, parts: list[str], repeats: int, engine: str = "monitor",
                     delay_s: float = 0.0) -> tuple[float, float]:
    from qwenguard.integrations.llamaindex import GuardedLLM

    llm = llamaindex_llm(parts, delay_s)
    guarded_llm = GuardedLLM(llm=llm, guard=guard)
    question = "What is the capital of France?"

    def plain() -> None:
        assert sum(1 for _ in llm.stream_complete(question)) == len(parts)

    def guarded() -> None:
        text = "".join(r.delta or "" for r in guarded_llm.stream_complete(question))
        assert text == "".join(parts)

    plain(), guarded()
    return best(plain, repeats), best(guarded, repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paced-ms", type=float, default=1.0, help="0 skips the paced table")
    args = parser.parse_args()
    parts = chunks(args.chunks)
    guard = Guard(FixedBackend())

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}; python {platform.python_version()}")
    print(f"{args.chunks} chunks, best of {args.repeats}; zero-latency backend")
    rows = (("LangChain, gate", bench_langchain, "gate"), ("LangChain, monitor", bench_langchain, "monitor"),
            ("LlamaIndex, monitor", bench_llamaindex, "monitor"))
    for name, run, engine in rows:
        plain, guarded = run(guard, parts, args.repeats, engine)
        per_chunk = (guarded - plain) / args.chunks * 1e6
        print(f"{name:20}: unguarded {plain * 1000:7.1f} ms, guarded {guarded * 1000:7.1f} ms, "
              f"ratio {guarded / plain:5.2f}, +{per_chunk:5.1f} us/chunk (target <= 50)")
    if args.paced_ms > 0:
        print(f"fake model paced at {args.paced_ms:g} ms per chunk, best of {min(args.repeats, 3)}:")
        for name, run, engine in rows:
            plain, guarded = run(guard, parts, min(args.repeats, 3), engine, args.paced_ms / 1000)
            print(f"{name:20}: unguarded {plain * 1000:7.1f} ms, guarded {guarded * 1000:7.1f} ms, "
                  f"ratio {guarded / plain:5.3f} (target <= 1.10)")

    n = 2000
    texts = [f"What is the capital of country number {i}?" for i in range(n)]  # distinct: no cache hits
    t0 = time.perf_counter()
    for t in texts:
        guard.check_prompt(t)
    sync = (time.perf_counter() - t0) / n

    async def many() -> None:
        for t in texts:
            await guard.acheck_prompt(t + " (async)")

    t0 = time.perf_counter()
    asyncio.run(many())
    asyn = (time.perf_counter() - t0) / n
    print(f"one check (guard path, no model): sync {sync * 1e6:6.1f} us, async {asyn * 1e6:6.1f} us (target <= 1000 us)")


if __name__ == "__main__":
    main()
