"""Benchmark: how much of an unsafe clause reaches the consumer through each qwenguard streaming path.

    python bench/exposure.py            # full: warm-up + medians of 3, oracle and demo judges
    python bench/exposure.py --quick    # one run per setting
    python bench/exposure.py --json     # the rows as JSON (bench/peers/run.py reads this)
    python bench/exposure.py --paths lc-callback --judges oracle

One scripted answer (bench/streamkit.py: "The capital of France is Paris. " x10, the unsafe clause, more
safe text; word pieces, 20 ms per piece) is served by a real OpenAI-compatible server on loopback
(tests/scripted_openai.py) and consumed through each path with real clients (`ChatOpenAI`, the
`openai` SDK, LlamaIndex `OpenAILike`):

- LangChain `GuardCallbackHandler` (engines "pipelined", the default, "gate" and "monitor"),
  `AsyncGuardCallbackHandler`;
- LCEL ``model | guard_output(guard)`` (engines "monitor" and "gate"; ``release_unit="word"`` and
  ``"opening"``; sync and async), ``GuardRunnable(runnable=model)``;
- ``create_agent`` with `GuardMiddleware`, ``stream_mode="messages"``, alone and with the callback;
- core `StreamMonitor` / `AsyncStreamMonitor` with hold-back (Gen-window engine, by sentence and with
  ``release_unit="word"`` and ``"opening"``; with ``parallel_input=True``, the prompt check beside the
  model; the Stream model engine when the judge has a stream backend);
- LlamaIndex `GuardedLLM` wrapping `OpenAILike` (sync and async streams; async with ``parallel_input``).

Each integration's default is marked "default" in the note column.

Judges: the oracle (flags the clause's first two words; fixed latency, 70 ms for the main columns,
0 ms and a one-word trigger as variants), the demo Gen guard, and the demo Stream guard where a path
can use one. Columns: see bench/peers/README.md. Paths that fail are rows with their error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import streamkit as sk  # noqa: E402

MESSAGES = [{"role": "user", "content": sk.PROMPT}]
Consume = Callable[[sk.Consumer], None]


# ================================================================================================
# Judges as qwenguard guards
# ================================================================================================
class GuardJudge:
    """A judge for the qwenguard paths: a Gen backend (and maybe a Stream backend), counted."""

    def __init__(self, backend: Any, stream_backend: Any = None) -> None:
        self.backend = backend
        self.stream_backend = stream_backend

    @property
    def calls(self) -> int:
        return self.backend.calls + (self.stream_backend.calls if self.stream_backend is not None else 0)

    def guard(self) -> Any:
        from qwenguard.core import Guard

        return Guard(self.backend, stream_backend=self.stream_backend)


class _CountingSession:
    def __init__(self, inner: Any, counter: Any) -> None:
        self._inner = inner
        self._counter = counter

    def feed_text(self, delta: str) -> Any:
        self._counter.hit()
        return self._inner.feed_text(delta)

    def finish(self) -> Any:
        self._counter.hit()
        return self._inner.finish()

    def __getattr__(self, name: str) -> Any:
        if name in ("afeed_text", "afinish"):
            raise AttributeError(name)  # the monitor then runs the counted sync twins in a thread
        return getattr(self._inner, name)


class CountingStream:
    """A Stream backend counting forwards (one per `feed_text`/`finish`)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name = getattr(inner, "name", "stream")
        self.counter = sk._Counter()

    @property
    def calls(self) -> int:
        return self.counter.calls

    def open_session(self, messages: Any) -> Any:
        self.counter.hit()
        return _CountingSession(self._inner.open_session(messages), self.counter)

    def close(self) -> None:
        pass


_STREAM_BACKEND: Any = None


def demo_stream_backend() -> Any:
    global _STREAM_BACKEND
    if _STREAM_BACKEND is None:
        from qwenguard.core import TransformersStream

        _STREAM_BACKEND = TransformersStream.load("demo-stream")
    return _STREAM_BACKEND


def oracle_judge(triggers: Any, latency: float) -> GuardJudge:
    return GuardJudge(sk.OracleBackend(triggers, latency))


def demo_judge() -> GuardJudge:
    return GuardJudge(sk.CountingBackend(sk.demo_backend()))


def demo_stream_judge() -> GuardJudge:
    return GuardJudge(sk.CountingBackend(sk.demo_backend()), CountingStream(demo_stream_backend()))


# ================================================================================================
# Paths: build(url, judge or None) -> consume(consumer). judge None: the same stream, unguarded.
# ================================================================================================
def _chat_openai(url: str) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=url, api_key="scripted", model="scripted", max_retries=0, streaming=True)


def _text(chunk: Any) -> str:
    content = getattr(chunk, "content", chunk)
    if isinstance(content, str):
        return content
    text = getattr(chunk, "text", "")
    return text if isinstance(text, str) else ""


def lc_callback(engine: str, asynchronous: bool = False) -> sk.Build:
    def build(url: str, judge: GuardJudge | None) -> Consume:
        from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

        llm = _chat_openai(url)
        handlers = []
        if judge is not None:
            cls = AsyncGuardCallbackHandler if asynchronous else GuardCallbackHandler
            handlers = [cls(judge.guard(), stream_engine=engine)]
        config = {"callbacks": handlers}
        if not asynchronous:

            def consume(c: sk.Consumer) -> None:
                for chunk in llm.stream(sk.PROMPT, config=config):
                    c.receive(_text(chunk))

            return consume

        def aconsume(c: sk.Consumer) -> None:
            async def main() -> None:
                async for chunk in llm.astream(sk.PROMPT, config=config):
                    c.receive(_text(chunk))

            asyncio.run(main())

        return aconsume

    return build


def lcel(
    engine: str = "monitor",
    *,
    wrap: bool = False,
    asynchronous: bool = False,
    release_unit: str | None = None,
    parallel_input: bool = False,
) -> sk.Build:
    def build(url: str, judge: GuardJudge | None) -> Consume:
        from qwenguard.integrations.langchain import GuardRunnable, guard_output

        llm = _chat_openai(url)
        unit = {} if release_unit is None else {"release_unit": release_unit}
        if judge is None:
            chain: Any = llm
        elif wrap:
            chain = GuardRunnable(
                guard=judge.guard(), runnable=llm, stream_engine=engine, parallel_input=parallel_input, **unit
            )
        else:
            chain = llm | guard_output(judge.guard(), stream_engine=engine, **unit)
        if not asynchronous:

            def consume(c: sk.Consumer) -> None:
                for chunk in chain.stream(sk.PROMPT):
                    c.receive(_text(chunk))

            return consume

        def aconsume(c: sk.Consumer) -> None:
            async def main() -> None:
                async for chunk in chain.astream(sk.PROMPT):
                    c.receive(_text(chunk))

            asyncio.run(main())

        return aconsume

    return build


def agent(callback_engine: str | None = None) -> sk.Build:
    def build(url: str, judge: GuardJudge | None) -> Consume:
        from langchain.agents import create_agent
        from qwenguard.integrations.langchain import GuardCallbackHandler, GuardMiddleware

        middleware, callbacks = [], []
        if judge is not None:
            guard = judge.guard()
            middleware = [GuardMiddleware(guard, exit_behavior="error")]
            if callback_engine:
                callbacks = [GuardCallbackHandler(guard, stream_engine=callback_engine)]
        graph = create_agent(model=_chat_openai(url), tools=[], middleware=middleware)

        def consume(c: sk.Consumer) -> None:
            for message, _meta in graph.stream(
                {"messages": list(MESSAGES)}, config={"callbacks": callbacks}, stream_mode="messages"
            ):
                if type(message).__name__ == "AIMessageChunk":
                    c.receive(_text(message))

        return consume

    return build


def graph_node(step: str = "GuardedChatModel", callback: bool = False, **options: Any) -> sk.Build:
    """A hand-built LangGraph graph whose one node calls the model, streamed with stream_mode="messages":
    ``GuardedChatModel`` (the model wrapped; ``options`` go to it) or ``guard_output`` (a step after the
    model in the node, which LangGraph's message stream goes around); ``callback``: a GuardCallbackHandler
    on the same guard in the run's config too."""

    def build(url: str, judge: GuardJudge | None) -> Consume:
        from langgraph.graph import END, START, MessagesState, StateGraph
        from qwenguard.integrations.langchain import GuardCallbackHandler, GuardedChatModel, guard_output

        model: Any = _chat_openai(url)
        callbacks: list[Any] = []
        if judge is not None:
            guard = judge.guard()
            if callback:
                callbacks.append(GuardCallbackHandler(guard))
            if step == "GuardedChatModel":
                model = GuardedChatModel(model, guard, **options)
            else:
                model = model | guard_output(guard)

        def node(state: MessagesState) -> dict[str, Any]:
            return {"messages": [model.invoke(state["messages"])]}

        graph = StateGraph(MessagesState)
        graph.add_node("model", node)
        graph.add_edge(START, "model")
        graph.add_edge("model", END)
        app = graph.compile()

        def consume(c: sk.Consumer) -> None:
            config: Any = {"callbacks": callbacks}
            for message, _meta in app.stream({"messages": list(MESSAGES)}, config, stream_mode="messages"):
                if type(message).__name__ == "AIMessageChunk":
                    c.receive(_text(message))

        return consume

    return build


def core_monitor(holdback: int, asynchronous: bool = False, **options: Any) -> sk.Build:
    def build(url: str, judge: GuardJudge | None) -> Consume:
        import openai

        if not asynchronous:
            client = openai.OpenAI(base_url=url, api_key="scripted", max_retries=0)

            def deltas():
                with client.chat.completions.create(model="scripted", messages=MESSAGES, stream=True) as stream:
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            yield chunk.choices[0].delta.content

            def consume(c: sk.Consumer) -> None:
                if judge is None:
                    for delta in deltas():
                        c.receive(delta)
                    return
                with judge.guard().stream(sk.PROMPT, holdback=holdback, **options) as monitor:
                    for out in monitor.wrap(deltas()):
                        c.receive(out)

            return consume

        def aconsume(c: sk.Consumer) -> None:
            async def main() -> None:
                client = openai.AsyncOpenAI(base_url=url, api_key="scripted", max_retries=0)

                async def deltas():
                    stream = await client.chat.completions.create(model="scripted", messages=MESSAGES, stream=True)
                    async with stream:
                        async for chunk in stream:
                            if chunk.choices and chunk.choices[0].delta.content:
                                yield chunk.choices[0].delta.content

                try:
                    if judge is None:
                        async for delta in deltas():
                            c.receive(delta)
                        return
                    async with judge.guard().astream(sk.PROMPT, holdback=holdback, **options) as monitor:
                        async for out in monitor.awrap(deltas()):
                            c.receive(out)
                finally:
                    await client.close()

            asyncio.run(main())

        return aconsume

    return build


def llamaindex(holdback: int | None = None, asynchronous: bool = False, **options: Any) -> sk.Build:
    def build(url: str, judge: GuardJudge | None) -> Consume:
        from llama_index.core.llms import ChatMessage
        from llama_index.llms.openai_like import OpenAILike
        from qwenguard.integrations.llamaindex import GuardedLLM

        llm: Any = OpenAILike(model="scripted", api_base=url, api_key="scripted", is_chat_model=True, max_retries=0)
        if judge is not None:
            llm = GuardedLLM(llm=llm, guard=judge.guard(), holdback=holdback, **options)
        messages = [ChatMessage(role="user", content=sk.PROMPT)]
        if not asynchronous:

            def consume(c: sk.Consumer) -> None:
                for response in llm.stream_chat(messages):
                    c.receive(response.delta)

            return consume

        def aconsume(c: sk.Consumer) -> None:
            async def main() -> None:
                async for response in await llm.astream_chat(messages):
                    c.receive(response.delta)

            asyncio.run(main())

        return aconsume

    return build


@dataclass(frozen=True)
class Path_:
    name: str
    build: sk.Build
    family: str  # the unguarded baseline it is compared with
    stream_model: bool = False  # also measured with the demo Stream guard
    note: str = ""


PATHS = [
    Path_(
        "lc-callback pipelined",
        lc_callback("pipelined"),
        "lc-sync",
        note="default; ChatOpenAI.stream + GuardCallbackHandler",
    ),
    Path_("lc-callback gate", lc_callback("gate"), "lc-sync", note="ChatOpenAI.stream + GuardCallbackHandler"),
    Path_("lc-callback monitor", lc_callback("monitor"), "lc-sync", stream_model=True),
    Path_(
        "lc-async-callback pipelined",
        lc_callback("pipelined", True),
        "lc-async",
        note="default; astream + AsyncGuardCallbackHandler",
    ),
    Path_("lc-async-callback gate", lc_callback("gate", True), "lc-async", note="astream + AsyncGuardCallbackHandler"),
    Path_("lc-async-callback monitor", lc_callback("monitor", True), "lc-async"),
    Path_("lcel guard_output monitor", lcel("monitor"), "lc-sync", stream_model=True, note="default; holdback 8"),
    Path_("lcel guard_output gate", lcel("gate"), "lc-sync"),
    Path_("lcel guard_output word", lcel("monitor", release_unit="word"), "lc-sync", note='release_unit="word"'),
    Path_(
        "lcel guard_output opening",
        lcel("monitor", release_unit="opening"),
        "lc-sync",
        note='release_unit="opening"',
    ),
    Path_("lcel guard_output astream", lcel("monitor", asynchronous=True), "lc-async", note="default; async"),
    Path_("lcel GuardRunnable astream", lcel("monitor", wrap=True, asynchronous=True), "lc-async", note="default"),
    Path_(
        "lcel GuardRunnable astream parallel",
        lcel("monitor", wrap=True, asynchronous=True, parallel_input=True),
        "lc-async",
        note="parallel_input=True (input check beside the model)",
    ),
    Path_(
        "agent GuardMiddleware",
        agent(),
        "agent",
        note="default; create_agent, stream_mode=messages, exit_behavior=error",
    ),
    Path_("agent GuardMiddleware+callback pipelined", agent("pipelined"), "agent"),
    Path_("graph GuardedChatModel", graph_node(), "graph", note="default; a LangGraph node, stream_mode=messages"),
    Path_(
        "graph GuardedChatModel parallel",
        graph_node(parallel_input=True),
        "graph",
        note="parallel_input=True (input check beside the model)",
    ),
    Path_("graph GuardedChatModel+callback", graph_node(callback=True), "graph", note="a callback on the same guard"),
    Path_("graph guard_output", graph_node("guard_output"), "graph", note="model | guard_output in the node"),
    Path_("core StreamMonitor hb8", core_monitor(8), "openai-sync", stream_model=True, note="default"),
    Path_(
        "core StreamMonitor hb8 word",
        core_monitor(8, release_unit="word"),
        "openai-sync",
        note='release_unit="word" (Gen window)',
    ),
    Path_(
        "core StreamMonitor hb8 opening",
        core_monitor(8, release_unit="opening"),
        "openai-sync",
        note='release_unit="opening" (Gen window)',
    ),
    Path_(
        "core StreamMonitor hb8 parallel",
        core_monitor(8, parallel_input=True),
        "openai-sync",
        note="parallel_input=True (prompt check beside the model)",
    ),
    Path_("core StreamMonitor hb0", core_monitor(0), "openai-sync", stream_model=True),
    Path_("core AsyncStreamMonitor hb8", core_monitor(8, True), "openai-async", note="default"),
    Path_(
        "core AsyncStreamMonitor hb8 parallel",
        core_monitor(8, True, parallel_input=True),
        "openai-async",
        note="parallel_input=True",
    ),
    Path_("llamaindex GuardedLLM", llamaindex(), "li-sync", stream_model=True, note="default; OpenAILike.stream_chat"),
    Path_("llamaindex GuardedLLM hb0", llamaindex(0), "li-sync"),
    Path_("llamaindex GuardedLLM async", llamaindex(None, True), "li-async", note="default"),
    Path_(
        "llamaindex GuardedLLM async parallel",
        llamaindex(None, True, parallel_input=True),
        "li-async",
        note="parallel_input=True",
    ),
]

BASELINES: dict[str, sk.Build] = {
    "lc-sync": lc_callback("gate"),
    "lc-async": lc_callback("gate", True),
    "agent": agent(),
    "graph": graph_node(),
    "openai-sync": core_monitor(0),
    "openai-async": core_monitor(0, True),
    "li-sync": llamaindex(),
    "li-async": llamaindex(None, True),
}


# ================================================================================================
# Running
# ================================================================================================
def _log(message: str) -> None:
    print(f"[exposure {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _error_row(path: str, judge: str, exc: BaseException) -> sk.Row:
    return sk.Row("qwenguard", path, judge, error=f"{type(exc).__name__}: {exc}"[:300])


def run(
    plan: sk.Plan,
    *,
    paths: list[str] | None = None,
    judges: tuple[str, ...] = ("oracle", "demo", "demo-stream"),
) -> list[sk.Row]:
    selected = [p for p in PATHS if not paths or any(s in p.name for s in paths)]
    baselines: dict[str, list[sk.RunResult]] = {}

    def baseline(family: str) -> list[sk.RunResult]:
        if family not in baselines:
            build = BASELINES[family]
            baselines[family] = sk.baseline_runs(lambda url: build(url, None), plan)
            errors = [r.error for r in baselines[family] if r.error]
            _log(
                f"baseline {family}: {[round(r.total_ms) for r in baselines[family]]} ms"
                + (f" ERR {errors[0]}" if errors else "")
            )
        return baselines[family]

    rows: list[sk.Row] = []
    for path in selected:
        if "oracle" in judges:
            _log(f"{path.name} / oracle")
            try:
                row = sk.oracle_row(
                    "qwenguard",
                    path.name,
                    path.build,
                    plan,
                    baseline=baseline(path.family),
                    make_judge=oracle_judge,
                    note=path.note,
                )
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                row = _error_row(path.name, "oracle", exc)
            rows.append(row)
    for path in selected:
        for judge in judges:
            if judge == "oracle" or (judge == "demo-stream" and not path.stream_model):
                continue
            _log(f"{path.name} / {judge}")
            make = demo_judge if judge == "demo" else demo_stream_judge
            try:
                row = sk.demo_row(
                    "qwenguard", path.name, path.build, plan, make, baseline=baseline(path.family), judge_name=judge
                )
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                row = _error_row(path.name, judge, exc)
            rows.append(row)
    return rows


def parse_plan(args: argparse.Namespace) -> sk.Plan:
    if args.quick:
        return sk.Plan(reps=1, warmup=0, pace=args.pace, latency=args.latency, variants=True)
    return sk.Plan(reps=args.reps, warmup=1, pace=args.pace, latency=args.latency, variants=True)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="one run per setting, no warm-up")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per setting (median)")
    parser.add_argument("--pace", type=float, default=0.02, help="seconds per streamed token (default 0.02)")
    parser.add_argument("--latency", type=float, default=0.07, help="oracle latency, seconds (default 0.07)")


def print_tables(rows: list[sk.Row], title: str = "qwenguard") -> None:
    oracle = [r for r in rows if r.judge.startswith("oracle")]
    other = [r for r in rows if not r.judge.startswith("oracle")]
    if oracle:
        print(f"\n## {title}: oracle judge (deterministic; exposure compares the plumbing)\n")
        print(sk.format_table(oracle))
    if other:
        print(f"\n## {title}: demo guards (the real model path; exposure measures the model too)\n")
        print(sk.format_table(other))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common(parser)
    parser.add_argument("--paths", nargs="*", help="only paths whose name contains one of these")
    parser.add_argument("--judges", default="oracle,demo,demo-stream", help="comma list: oracle,demo,demo-stream")
    args = parser.parse_args(argv)
    plan = parse_plan(args)
    started = time.perf_counter()
    rows = run(plan, paths=args.paths, judges=tuple(j.strip() for j in args.judges.split(",") if j.strip()))
    _log(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
    else:
        print(
            f"pace {plan.pace * 1000:.0f} ms/token, oracle {plan.latency * 1000:.0f} ms, "
            f"{plan.reps} rep(s) after {plan.warmup} warm-up; script {len(sk.unsafe_script().pieces)} tokens, "
            f"clause at char {sk.unsafe_script().clause_start}"
        )
        print_tables(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
