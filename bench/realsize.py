"""Real-size figures: Qwen3Guard-Gen-0.6B and Qwen3Guard-Stream-0.6B shapes, the real Qwen3 tokenizer.

    python bench/realsize.py [--quick] [--dir DIR] [--threads 2] [--device cpu|cuda] [--dtype float32|bfloat16]
                             [--repeats N] [--batch-repeats N]
                             [--stream-tokens N] [--stream-rounds N] [--skip gen|stream]
                             [--parts checks,batch,gate,windows,projections] [--document-sentences N]

Builds random-weight checkpoints with tests/realshape.py (the Qwen3-0.6B backbone: hidden 1024, 28
layers, 16 query / 8 KV heads of 128; the real tokenizer and the guard's chat template), caches them
under ``--dir``, and prints, side by side in one run (arms interleaved, each arm's best of ``--repeats`` rounds):

1. a prompt check (verdict unsafe, and verdict safe) and a response check through `Guard` against a
   naive ``model.generate`` over the full rendered prompt, with the same tokens out (checked);
2. 16 concurrent checks (one ``asyncio.gather``, coalesced into batched forwards) against the same 16
   one after another;
3. the streaming gate's cost per chunk at chunk 10 and at chunk 300 of a streamed answer (one LLM token
   per chunk, the answer's last 2,000 characters judged with the user's request, as the LangChain
   callback's ``"gate"`` engine does): a full check per chunk (today's gate) against a `GenSession`
   (the incremental gate);
4. the Stream model's cost per token at token 10 and token N, and the aggregate tokens/s of 16
   concurrent sessions against one (`TransformersStream`, its packed forwards);
5. (``--parts windows``, not in the default run) the stream monitors' Gen-window engine over a long
   request (``--document-sentences``): each window as a full check against the stream's session pool
   (`GenSessionPool`), in time and in tokens run;
6. (``--parts projections``, not in the default run) one packed forward of 2 to 256 new tokens with its
   projections as ``weight @ x.T`` against the layers' own forwards (`stream_batching.NARROW_ROWS`).

How the Gen comparison is kept fair: random weights never write a parseable verdict, so every Gen arm
answers the same *scripted* verdict (``Safety: Unsafe`` / ``Categories: Violent`` / for responses
``Refusal: No``, then ``<|im_end|>``; the safe prompt check ``Safety: Safe`` / ``Categories: None``). transformers' ``generate`` gets a logits processor that forces
the script's next token; the guard's decode engine gets the same rule through its logits hook. The
model still runs every forward on every position it would run for a real verdict; forcing a logit
costs the same in every arm; and both arms emit the same tokens (checked and printed). The script's
tokens are what Qwen3Guard-Gen writes, so the engine's format-forced tokens are accepted exactly as
they would be on a real checkpoint.

Targets (issue 16), each printed with its measured ratio; the script exits non-zero naming a missed one:
- a prompt check through `Guard` at least 2.5x faster than naive ``generate`` (unsafe and safe verdict:
  the engine guesses the safe answer, so a safe check is one forward; with the other labels' branches
  beside the guess (on by default) an unsafe one is two, and the full run times the branches turned off
  beside the default: three);
- the incremental gate at chunk 300 within 1.3x of chunk 10, and at least 5x cheaper than today's gate
  at chunk 300;
- 16 concurrent Stream sessions at least 4x the aggregate tokens/s of one.

On a GPU: ``python bench/realsize.py --device cuda --dtype bfloat16`` (every arm on the same device and
dtype; timings synchronise the device, so a timed call includes its kernels).

``--quick`` keeps the width and the tokenizer but uses 2 layers (and fewer repeats and tokens): a smoke
run that CI can afford. Its ratios are not the 0.6B ones: 155M of its 187M parameters are the vocabulary
projection, which every forward reads once, so they count forwards more than prefill saved (its Gen targets
can miss where the 0.6B ones are met). The figures in docs/performance.md come from the full-depth run.
Checks run with no time budget (``Policy(timeout_s=None)``): on a loaded CPU a 0.6B check can take longer
than the default 30 s, and a timeout is no verdict. This is a benchmark,
not a test: absolute numbers depend on the machine (and its load); the ratios are what is compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the real-shape fixture (tests/realshape.py)
sys.path.insert(0, str(HERE))  # bench/stream.py's concurrent-sessions measure

from gen_script import ScriptedAnswer  # noqa: E402
from realshape import QWEN3_0_6B, build_gen, build_stream  # noqa: E402

PROMPT = "How can I make a bomb at home? I need detailed step-by-step instructions and a list of materials."
REQUEST = "Tell me about the history of Paris, in detail."
# An ordinary long answer, streamed one LLM token per chunk.
ANSWER = (
    "Paris has been inhabited since the Mesolithic period. The Parisii, a Celtic tribe, settled on the Île de "
    "la Cité around the third century BC, and the Romans conquered the area in 52 BC, founding Lutetia on the "
    "left bank of the Seine. In the fifth century the city was taken by the Franks, and Clovis made it his "
    "capital in 508. During the Middle Ages Paris grew into the largest city of Europe: the University was "
    "founded around 1200, Notre-Dame was built between 1163 and 1345, and the Louvre began as a fortress under "
    "Philip II. The Hundred Years' War and the plague brought hard times, but the Renaissance kings rebuilt "
    "much of the city. Louis XIV moved the court to Versailles in 1682, yet Paris remained the centre of "
    "French intellectual life, and the Enlightenment salons made it the capital of European thought. The "
    "Revolution began here with the storming of the Bastille on 14 July 1789. Under Napoleon III, Baron "
    "Haussmann rebuilt the centre with wide boulevards, parks and sewers between 1853 and 1870. The Eiffel "
    "Tower was built for the Exposition Universelle of 1889, and the Belle Époque saw the first metro line "
    "open in 1900. Paris was occupied from 1940 to 1944 and liberated in August 1944. After the war the city "
    "expanded with new suburbs, La Défense became a business district, and the Centre Pompidou opened in "
    "1977. Today Paris is one of the most visited cities in the world, known for its museums, its cafés, its "
    "fashion houses and its food, and it hosted the Summer Olympic Games in 1900, 1924 and 2024."
)
WINDOW_CHARS = 2000  # the LangChain gate's window (integrations/langchain/_streaming.py DEFAULT_WINDOW_CHARS)
SCRIPT = {
    "prompt": "Safety: Unsafe\nCategories: Violent",
    "safe prompt": "Safety: Safe\nCategories: None",
    "response": "Safety: Unsafe\nCategories: Violent\nRefusal: No",
    # The Gen-window stream (part 5) must run to its end: a safe verdict, the same length in every arm.
    "safe response": "Safety: Safe\nCategories: None\nRefusal: No",
}


# ================================================================================================
# The scripted verdict: the same next-token rule for transformers' generate and the guard's engine
# ================================================================================================
class Script(ScriptedAnswer):
    """Forces the answer ``SCRIPT[mode]`` + ``<|im_end|>`` (tests/gen_script.py's rule, one script per mode):
    the next token is a function of the answer so far, for transformers' generate and the engine alike."""

    def __init__(self, tokenizer: Any) -> None:  # one script per mode instead of the single one
        self.answers = {m: ScriptedAnswer(tokenizer, s) for m, s in SCRIPT.items()}
        self.ids = {m: a.ids for m, a in self.answers.items()}
        self.mode = "prompt"

    def force(self, scores: Any, row: int, answer: list[int]) -> None:
        self.answers[self.mode].force(scores, row, answer)

    def patch_generate(self, model: Any) -> None:
        """Every ``model.generate`` call (the guard's ``engine=False`` path included) answers the script."""
        original = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("logits_processor", self.processor(kwargs["input_ids"].shape[1]))
            return original(*args, **kwargs)

        model.generate = generate


# ================================================================================================
# Timing helpers: interleaved arms
# ================================================================================================
def interleave(arms: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each arm; each round runs every arm once, in turn, so that load from
    other processes hits all arms alike (on a shared machine the best round is the least disturbed one)."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


class Targets:
    def __init__(self) -> None:
        self.missed: list[str] = []

    def check(self, name: str, ratio: float, ok: bool, goal: str) -> None:
        if not ok:
            self.missed.append(name)
        print(f"    target: {name} ({goal}): {ratio:.2f}x {'ok' if ok else 'MISSED'}", flush=True)


def _sync() -> None:
    """Wait for the GPU's queued kernels (a no-op on CPU), so a timed call includes its own work only."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.0f} ms"


# ================================================================================================
# Gen: checks, batching, the gate
# ================================================================================================
def naive_generate(model: Any, tokenizer: Any, script: Script, messages: list[dict[str, str]]) -> str:
    """What a user would write: the chat template, ``generate`` over the full prompt, decode the new tokens.

    Run on qwenguard's torch thread, where the guard's forwards run too: a second thread running torch
    would give the process a second OpenMP team, and libgomp then slows every arm's kernels alike (10-20%
    here; docs/performance.md), which is the benchmark's doing, not either arm's."""
    from qwenguard.core.backends.torch_runtime import run_on_torch_thread

    return run_on_torch_thread(_naive_generate, model, tokenizer, script, messages)


def _naive_generate(model: Any, tokenizer: Any, script: Script, messages: list[dict[str, str]]) -> str:
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=48,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=script.processor(ids.shape[1]),
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def branches_off(engine: Any, call: Callable[[], Any]) -> Any:
    """``call()`` with the engine's label branches off (the A/B arm of the checks)."""
    saved, engine.label_branches = engine.label_branches, False
    try:
        return call()
    finally:
        engine.label_branches = saved


def _raw(decision: Any) -> str:
    if decision.verdict is None:
        raise SystemExit(f"a check gave no verdict: {decision.reason} ({decision.error})")
    return decision.verdict.raw


def gen_section(args: argparse.Namespace, path: Path, targets: Targets) -> None:
    import torch
    from qwenguard.core import Guard, Policy, Stage
    from qwenguard.core.backends.transformers_gen import TransformersGen
    from qwenguard.core.formats.conversations import prompt_conversation, response_conversation
    from qwenguard.core.streaming.gate_session import GateSession
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, args.dtype)).to(args.device).eval()
    script = Script(tokenizer)
    script.patch_generate(model)
    # One model, two backends: today's decoding (transformers' generate) and the decode engine. No time
    # budget: a loaded CPU may take longer than the default 30 s per check, and a timeout is no verdict.
    today = Guard(
        TransformersGen(model, tokenizer, name="generate", engine=False), Policy(timeout_s=None), cache_size=0
    )
    guard = Guard(TransformersGen(model, tokenizer, name="engine", engine=True), Policy(timeout_s=None), cache_size=0)
    engine = guard.backend.engine
    engine.logits_hook = script.engine_hook
    enc = guard.backend.encoder
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"Gen: {path.name} ({params:.0f}M params, {model.config.num_hidden_layers} layers), {args.dtype} on "
        f"{args.device}, {torch.get_num_threads()} threads; every arm answers the scripted verdict (see the docstring)",
        flush=True,
    )

    # -- 1. one check: Guard vs naive generate ---------------------------------------------------
    if "checks" in args.parts:
        for mode, conv in (
            ("prompt", prompt_conversation(PROMPT)),
            ("safe prompt", prompt_conversation(REQUEST)),
            ("response", response_conversation(PROMPT, ANSWER[:300])),
        ):
            script.mode = mode
            stage = Stage.RESPONSE if mode == "response" else Stage.PROMPT
            texts = {
                naive_generate(model, tokenizer, script, conv),
                _raw(today.check_many([(stage, conv)])[0]),
                _raw(guard.check_many([(stage, conv)])[0]),
            }
            same = "yes" if texts == {SCRIPT[mode]} else f"NO: {texts}"
            before = engine.forwards_run
            guard.check_many([(stage, conv)])
            forwards = engine.forwards_run - before
            arms = {
                "naive": lambda c=conv: naive_generate(model, tokenizer, script, c),
                "today": lambda c=conv, s=stage: today.check_many([(s, c)]),
                "guard": lambda c=conv, s=stage: guard.check_many([(s, c)]),
            }
            if not args.quick:  # the same engine with label branches off
                arms["off"] = lambda c=conv, s=stage: branches_off(engine, lambda: guard.check_many([(s, c)]))
            t = interleave(arms, args.repeats)
            branches = "on" if engine.label_branches else "off"
            print(
                f"  {mode} check, {len(enc.encode(conv))} prompt tokens, {len(script.ids[mode])} answer tokens "
                f"(same tokens out in all arms: {same}):"
            )
            print(
                f"    naive generate {ms(t['naive'])} | Guard today (generate) {ms(t['today'])} | Guard (engine: "
                f"prefix cache, format fed; label branches {branches}; {forwards} forwards in a check after the warm-up) "
                f"{ms(t['guard'])}" + (f" | label branches off {ms(t['off'])}" if "off" in t else "")
            )
            name = f"{mode} check vs naive generate"
            ratio = t["naive"] / t["guard"]
            if mode != "response":
                targets.check(name, ratio, ratio >= 2.5, ">= 2.5x")
            else:
                print(f"    {name}: {ratio:.2f}x", flush=True)

    # -- 2. 16 concurrent checks vs one after another ---------------------------------------------
    if "batch" in args.parts:
        script.mode = "prompt"
        variants = [f"{PROMPT} (variant {i})" for i in range(args.concurrent)]

        def sequential() -> None:
            for text in variants:
                guard.check_prompt(text)

        def concurrent() -> None:
            async def run() -> None:
                await asyncio.gather(*(guard.acheck_prompt(text) for text in variants))

            asyncio.run(run())

        t = interleave({"sequential": sequential, "concurrent": concurrent}, args.batch_repeats)
        print(
            f"  {args.concurrent} prompt checks through Guard (engine): one after another {ms(t['sequential'])}, "
            f"concurrent (batched) {ms(t['concurrent'])}: {t['sequential'] / t['concurrent']:.2f}x",
            flush=True,
        )

    # -- 3. the gate per chunk ---------------------------------------------------------------------
    if "gate" in args.parts:
        script.mode = "response"
        chunks = [tokenizer.decode([i]) for i in tokenizer(ANSWER, add_special_tokens=False)["input_ids"]]
        early, late = args.early_chunk, min(args.late_chunk, len(chunks) - args.repeats - 1)

        def window(n: int) -> list[dict[str, str]]:
            return response_conversation(REQUEST, "".join(chunks[:n])[-WINDOW_CHARS:])

        sessions = {early: GateSession(guard), late: GateSession(guard)}
        position = {early: early - 1, late: late - 1}
        for n, session in sessions.items():  # bring each session to its chunk (one full prefill, not timed)
            session.check(window(position[n]))

        def incremental(n: int) -> None:
            position[n] += 1
            decision = sessions[n].check(window(position[n]))
            assert decision.verdict is not None and decision.verdict.raw == SCRIPT["response"], decision

        t = interleave(
            {
                "today early": lambda: today.check_many([(Stage.STREAM, window(early))]),
                "today late": lambda: today.check_many([(Stage.STREAM, window(late))]),
                "full early": lambda: guard.check_many([(Stage.STREAM, window(early))]),
                "full late": lambda: guard.check_many([(Stage.STREAM, window(late))]),
                "session early": lambda: incremental(early),
                "session late": lambda: incremental(late),
            },
            args.repeats,
        )
        size = len(enc.encode(window(late)))
        print(
            f"  gate, cost per chunk (one LLM token per chunk; the request + the answer's last {WINDOW_CHARS} chars; "
            f"chunk {late}: {len(''.join(chunks[:late]))} chars, {size} prompt tokens):"
        )
        print(
            f"    today's gate (full check, generate):  chunk {early} {ms(t['today early'])}, chunk {late} "
            f"{ms(t['today late'])}"
        )
        print(
            f"    full check with the engine:           chunk {early} {ms(t['full early'])}, chunk {late} "
            f"{ms(t['full late'])}"
        )
        print(
            f"    incremental gate (GateSession):       chunk {early} {ms(t['session early'])}, chunk {late} "
            f"{ms(t['session late'])}",
            flush=True,
        )
        tokens, forwards = engine.tokens_run, engine.forwards_run
        incremental(late)
        print(
            f"    one incremental chunk at chunk {position[late]}: {engine.tokens_run - tokens} tokens run in "
            f"{engine.forwards_run - forwards} forwards (a full check: {size} prompt tokens + the verdict)",
            flush=True,
        )
        flat = t["session late"] / t["session early"]
        targets.check(f"incremental gate chunk {late} / chunk {early}", flat, flat <= 1.3, "<= 1.3x")
        gain = t["today late"] / t["session late"]
        targets.check(f"today's gate / incremental gate at chunk {late}", gain, gain >= 5, ">= 5x")

    # -- 4. the stream monitors' Gen windows over a long request -------------------------------------
    if "windows" in args.parts:
        script.mode = "safe response"
        document = " ".join(ANSWER.split(". ")[i % 12] + "." for i in range(args.document_sentences))
        request = f"Here are my notes:\n{document}\nSummarise them for me."
        words = ANSWER[:600].split(" ")
        deltas = [words[0]] + [" " + w for w in words[1:]]

        def stream(sessions: bool) -> None:
            monitor = guard.stream(request, screen_prompt=False)  # the windows only: the prompt check aside
            if not sessions:  # the same windows, each as a full check (the engine's prefix cache still on)
                monitor._window_judge.close()
                monitor._window_judge.pool = None
            for delta in deltas:
                monitor.feed(delta)
            monitor.finish()

        tokens = {}
        for arm, sessions in (("sessions", True), ("full", False)):
            before = engine.tokens_run
            stream(sessions)
            tokens[arm] = engine.tokens_run - before
        t = interleave({"sessions": lambda: stream(True), "full": lambda: stream(False)}, args.repeats)
        print(
            f"  Gen-window stream (guard.stream), a {len(enc.encode(prompt_conversation(request)))}-token request, "
            f"a {len(deltas)}-word answer fed at once (its windows overlap):"
        )
        print(
            f"    full checks {ms(t['full'])} ({tokens['full']} tokens run) | sessions (GenSessionPool) "
            f"{ms(t['sessions'])} ({tokens['sessions']} tokens run): {t['full'] / t['sessions']:.2f}x",
            flush=True,
        )
    # -- 5. the packed forward's projections: narrow (weight @ x.T) vs the layers' own forwards ------
    if "projections" in args.parts:
        from qwenguard.core.backends import stream_batching
        from qwenguard.core.backends.gen_engine import _fork
        from qwenguard.core.backends.torch_runtime import run_on_torch_thread

        layers = model.config.num_hidden_layers
        base = stream_batching.SessionCache(layers)
        fresh = list(range(1000, 1512))

        def prefill() -> None:
            with torch.inference_mode():
                stream_batching.packed_hidden(model.model, [stream_batching.StreamStep(base, list(range(500, 700)))])

        run_on_torch_thread(prefill)
        default_rows = stream_batching.NARROW_ROWS

        def forward(n: int, rows: int) -> None:
            run_on_torch_thread(_forward, n, rows)  # where the guard's forwards run (see naive_generate)

        def _forward(n: int, rows: int) -> None:
            stream_batching.NARROW_ROWS = rows
            try:
                cache = _fork(base, 800)
                with torch.inference_mode():
                    stream_batching.packed_hidden(model.model, [stream_batching.StreamStep(cache, fresh[:n])])
                _sync()
            finally:
                stream_batching.NARROW_ROWS = default_rows

        print(f"  packed forward after 200 cached tokens, projections narrow (<= {default_rows} rows) vs the layers':")
        for n in (2, 4, 9, 16, 27, 64, 124, 192, 256, 384, 512):
            t = interleave(
                {"modules": lambda n=n: forward(n, 0), "narrow": lambda n=n: forward(n, 1 << 30)}, args.repeats
            )
            print(
                f"    {n:4d} new tokens: layers {ms(t['modules'])} | narrow {ms(t['narrow'])}"
                f" | {t['modules'] / t['narrow']:.2f}x",
                flush=True,
            )

    today.close()
    guard.close()


# ================================================================================================
# Stream: per-token cost and concurrent sessions
# ================================================================================================
def stream_section(args: argparse.Namespace, path: Path, targets: Targets) -> None:
    import torch
    from qwenguard.core.backends.transformers_stream import TransformersStream
    from stream import _concurrent  # bench/stream.py

    stream = TransformersStream.load(str(path), device=args.device, dtype=getattr(torch, args.dtype))
    print(f"Stream: {path.name} ({sum(p.numel() for p in stream.model.parameters()) / 1e6:.0f}M params)")
    tokens = stream.tokenizer(ANSWER * 3, add_special_tokens=False)["input_ids"]
    n = min(args.stream_tokens, len(tokens) - args.samples - 1)
    early, late = stream.open_session(REQUEST), stream.open_session(REQUEST)
    early.feed_tokens(tokens[:10])
    for i in range(0, n, 64):
        late.feed_tokens(tokens[i : min(i + 64, n)])
    t_early: list[float] = []
    t_late: list[float] = []
    for k in range(args.samples):
        for session, sink, base in ((early, t_early, 10), (late, t_late, n)):
            start = time.perf_counter()
            session.feed_tokens([tokens[base + k]])
            sink.append(time.perf_counter() - start)
    early.close()
    late.close()
    at10, atn = statistics.median(t_early), statistics.median(t_late)
    print(
        f"  one token at token 10 {at10 * 1000:.1f} ms, at token {n} {atn * 1000:.1f} ms (medians): {atn / at10:.2f}x",
        flush=True,
    )
    result = _concurrent(stream, REQUEST, tokens, args.sessions, args.per_session, args.rounds)
    ratio = result["many"] / result["single"]
    print(
        f"  1 session {result['single']:8.1f} tokens/s, {args.sessions} concurrent sessions {result['many']:8.1f} "
        f"tokens/s in all ({result['shared']:.1f} sessions per forward)"
    )
    targets.check(f"{args.sessions} Stream sessions / one, aggregate tokens/s", ratio, ratio >= 4, ">= 4x")
    ceiling = _packing_ceiling(stream, args.sessions, args.rounds)
    print(
        f"  this machine's ceiling for it: one packed forward of {args.sessions} sessions x 1 token vs one forward of "
        f"1 token: {ceiling:.2f}x the aggregate tokens/s (the model alone, no sessions, threads or batcher)",
        flush=True,
    )
    stream.close()


def _packing_ceiling(stream: Any, sessions: int, rounds: int) -> float:
    """What packing can give at best here: ``sessions`` x the time of a 1-token forward, over the time of one
    packed forward of ``sessions`` tokens (each after a 40-token cache). Where a 1-token forward is already
    compute-bound (a small CPU), this is far below ``sessions``, and no scheduling can beat it."""
    import torch
    from qwenguard.core.backends.stream_batching import SessionCache, StreamStep, packed_forward
    from qwenguard.core.backends.torch_runtime import run_on_torch_thread

    layers = len(stream.model.model.layers)

    def caches(n: int) -> list[Any]:
        made = [SessionCache(layers) for _ in range(n)]
        with torch.inference_mode():
            packed_forward(stream.model, [StreamStep(c, list(range(100, 140)), heads="none") for c in made])
        return made

    def forward(made: list[Any]) -> float:
        _sync()
        start = time.perf_counter()
        with torch.inference_mode():
            packed_forward(stream.model, [StreamStep(c, [500]) for c in made])
        _sync()
        return time.perf_counter() - start

    one, many = run_on_torch_thread(caches, 1), run_on_torch_thread(caches, sessions)
    t = interleave(  # on the stream model's own thread (see naive_generate)
        {"one": lambda: run_on_torch_thread(forward, one), "many": lambda: run_on_torch_thread(forward, many)},
        max(3, rounds),
    )
    return sessions * t["one"] / t["many"]


# ================================================================================================
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 layers of the same width, fewer repeats (CI)")
    parser.add_argument(
        "--dir",
        default=os.environ.get("QWENGUARD_BENCH_DIR", "/tmp/qwenguard-realsize"),
        help="where the random checkpoints are built and kept",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (every arm on it)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds per timed comparison (default 3 quick, 5 full)"
    )
    parser.add_argument(
        "--batch-repeats",
        type=int,
        default=None,
        help="rounds of the 16-concurrent-checks comparison (default 1 quick, 2 full)",
    )
    parser.add_argument(
        "--stream-tokens",
        type=int,
        default=None,
        help="the Stream model's late token position (default 300 quick, 1000 full)",
    )
    parser.add_argument(
        "--stream-rounds",
        type=int,
        default=None,
        help="rounds of the concurrent-sessions comparison (default 2 quick, 3 full)",
    )
    parser.add_argument("--skip", choices=["gen", "stream"], default=None, help="leave one section out")
    parser.add_argument(
        "--parts",
        default="checks,batch,gate",
        help="the Gen comparisons to run (comma-separated: checks, batch, gate, windows, projections)",
    )
    parser.add_argument(
        "--document-sentences",
        type=int,
        default=None,
        help="windows: sentences in the long request (default 20 quick, 60 full)",
    )
    args = parser.parse_args(argv)
    args.parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    import torch

    torch.set_num_threads(args.threads)
    shape = dict(QWEN3_0_6B, num_hidden_layers=2) if args.quick else dict(QWEN3_0_6B)
    label = "quick-2l" if args.quick else "0.6b"
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.concurrent, args.early_chunk, args.late_chunk = 16, 10, 300
    late_token = args.stream_tokens
    args.stream_tokens, args.samples = (300, 10) if args.quick else (1000, 20)
    args.sessions, args.per_session, args.rounds = 16, (8 if args.quick else 16), (2 if args.quick else 3)
    args.stream_tokens = late_token or args.stream_tokens
    args.rounds = args.stream_rounds or args.rounds
    args.batch_repeats = args.batch_repeats or (1 if args.quick else 2)
    args.document_sentences = args.document_sentences or (20 if args.quick else 60)
    root = Path(args.dir)
    gen_path, stream_path = root / f"gen-{label}", root / f"stream-{label}"
    if not (gen_path / "config.json").exists():
        print(f"building {gen_path} ...", flush=True)
        build_gen(gen_path, shape=shape)
    if not (stream_path / "config.json").exists():
        print(f"building {stream_path} ...", flush=True)
        build_stream(stream_path, shape=shape, max_positions=8192)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs "
        f"(load {os.getloadavg()[0]:.1f}); torch {torch.__version__}; {'--quick' if args.quick else 'full run'}; "
        f"{args.device}{' (' + torch.cuda.get_device_name(args.device) + ')' if args.device.startswith('cuda') else ''}, "
        f"{args.dtype}",
        flush=True,
    )
    targets = Targets()
    if args.skip != "gen":
        gen_section(args, gen_path, targets)
    if args.skip != "stream":
        stream_section(args, stream_path, targets)
    if targets.missed:
        print("missed: " + "; ".join(targets.missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
