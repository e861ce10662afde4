"""Benchmark: what one packed forward of the Gen-0.6B shape costs, and where an incremental gate chunk's time goes.

    python bench/forward_cost.py [--dir DIR] [--device cuda] [--dtype bfloat16] [--against REV] [--rounds 15]

Uses (or builds) the random-weight Qwen3Guard-Gen-0.6B-shaped checkpoint of ``bench/realsize.py`` (``--dir``,
the same default) and prints:

1. one packed forward (``stream_batching.packed_hidden``) of five shapes: one token, 4 tokens and 133 tokens
   after 600 cached, a Gen engine step of 10 tokens in two branches, 16 sessions of one token. With
   ``--against REV`` (a git revision), the same forwards of that revision's ``stream_batching.py``, loaded beside
   the current one, interleaved round by round on the same model and caches: best and median of ``--rounds``
   each, the ratio, and the largest difference of the hidden states;
2. one incremental gate chunk (`GateSession`, chunk ~300 of bench/realsize.py's answer, 20 chunks after a
   warm-up) split into phases, each timed with the device synchronised around it: the forward, the vocabulary
   projection, the benchmark's forced verdict, tokenizing the window, the rest.

On a GPU a forward of a model this size costs the kernels it launches rather than its arithmetic (see
docs/performance.md); this script is how that was found and how a change to the forward is checked there. It is
a benchmark, not a test: absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import realsize as rs  # noqa: E402
from realshape import QWEN3_0_6B, build_gen  # noqa: E402


class Feed:
    """A packed forward's step: new ``ids`` after ``cache`` (``offsets``/``visible`` as the Gen engine's)."""

    def __init__(self, cache: Any, ids: list[int], offsets: list[int] | None = None, visible: Any = None) -> None:
        self.cache, self.ids, self.offsets, self.visible = cache, ids, offsets, visible


def _load_revision(rev: str) -> Any:
    """``core/backends/stream_batching.py`` as of ``rev``, imported beside the current one."""
    source = subprocess.run(
        ["git", "show", f"{rev}:core/backends/stream_batching.py"],
        cwd=HERE.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "stream_batching_then.py"
    path.write_text(source)
    name = "qwenguard.core.backends._stream_batching_then"  # in the package: its relative imports resolve
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def forwards(args: argparse.Namespace, model: Any, sync: Any) -> None:
    import torch
    from qwenguard.core.backends import stream_batching as now

    then = _load_revision(args.against) if args.against else None
    backbone, device = model.model, args.device
    layers = len(backbone.layers)

    def prefilled(n: int) -> Any:
        cache = now.SessionCache(layers)
        with torch.inference_mode():
            now.packed_hidden(backbone, [Feed(cache, list(range(1000, 1000 + n)))])
        return cache

    base, sixteen = prefilled(600), [prefilled(300 + 20 * i) for i in range(16)]
    visible = torch.ones(10, 10, dtype=torch.bool).tril()
    visible[6:, 2:6] = False  # the second branch sees the shared start, then itself
    visible = visible.to(device)
    shapes = {
        "1 token after 600": lambda: [Feed(base, [5])],
        "4 tokens after 600": lambda: [Feed(base, [5, 6, 7, 8])],
        "10 tokens, 2 branches (engine)": lambda: [
            Feed(base, list(range(10, 20)), list(range(6)) + [2, 3, 4, 5], visible)
        ],
        "133 tokens after 600": lambda: [Feed(base, list(range(2000, 2133)))],
        "16 sessions x 1 token": lambda: [Feed(c, [7]) for c in sixteen],
    }

    def run(module: Any, feeds: list[Feed]) -> tuple[float, Any]:
        lengths = [f.cache.length for f in feeds]
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            hidden = module.packed_hidden(backbone, feeds)
        sync()
        elapsed = time.perf_counter() - start
        for feed, n in zip(feeds, lengths):
            feed.cache.length = n  # rolled back: every round runs the same positions
        return elapsed, hidden

    arms = {"now": now} if then is None else {"then": then, "now": now}
    print(f"one packed forward ({', '.join(arms)}; best of {args.rounds}, interleaved):", flush=True)
    for name, make in shapes.items():
        outputs = {arm: run(module, make())[1] for arm, module in arms.items()}  # also a warm-up
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(args.rounds):
            for arm, module in arms.items():
                times[arm].append(run(module, make())[0])
        line = "  ".join(f"{arm} {min(t) * 1e3:7.2f} ms" for arm, t in times.items())
        if then is not None:
            best = min(times["then"]) / min(times["now"])
            median = statistics.median(times["then"]) / statistics.median(times["now"])
            diff = (outputs["then"].float() - outputs["now"].float()).abs().max().item()
            line += f"  {best:5.2f}x (median {median:5.2f}x)  max |diff| {diff:.3g}"
        print(f"  {name:32s} {line}", flush=True)


def phases(args: argparse.Namespace, path: Path, model: Any, sync: Any) -> None:
    from qwenguard.core import Guard, Policy
    from qwenguard.core.backends import gen_engine
    from qwenguard.core.backends.transformers_gen import TransformersGen
    from qwenguard.core.formats.conversations import response_conversation
    from qwenguard.core.streaming.gate_session import GateSession
    from transformers import AutoTokenizer

    spent: dict[str, float] = collections.defaultdict(float)

    def timed(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            sync()
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                sync()
                spent[label] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    script = rs.Script(tokenizer)
    script.mode = "response"
    guard = Guard(TransformersGen(model, tokenizer, name="engine", engine=True), Policy(timeout_s=None), cache_size=0)
    engine = guard.backend.engine
    timed(gen_engine, "packed_hidden", "the forward")
    timed(type(engine), "_logits", "the vocabulary projection")
    timed(script, "engine_hook", "the benchmark's forced verdict")
    timed(type(guard.backend), "_plan_waiting", "tokenizing the window")
    engine.logits_hook = script.engine_hook
    chunks = [tokenizer.decode([i]) for i in tokenizer(rs.ANSWER, add_special_tokens=False)["input_ids"]]

    def window(n: int) -> list[dict[str, str]]:
        return response_conversation(rs.REQUEST, "".join(chunks[:n])[-rs.WINDOW_CHARS :])

    session, n = GateSession(guard), 290
    for _ in range(5):  # warm-up: the session's cache, the kernels
        session.check(window(n))
        n += 1
    spent.clear()
    total, count = 0.0, 20
    for _ in range(count):
        sync()
        start = time.perf_counter()
        session.check(window(n))
        sync()
        total += time.perf_counter() - start
        n += 1
    print(f"one incremental gate chunk: {total / count * 1e3:.1f} ms ({count} chunks, phases synchronised):")
    for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:32s} {seconds / count * 1e3:7.2f} ms")
    print(f"  {'the rest':32s} {(total - sum(spent.values())) / count * 1e3:7.2f} ms", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/qwenguard-realsize", help="bench/realsize.py's checkpoints")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--against", default=None, help="a git revision whose packed forward to time beside")
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    path = Path(args.dir) / "gen-0.6b"
    if not (path / "config.json").exists():
        print(f"building {path} ...", flush=True)
        build_gen(path, shape=dict(QWEN3_0_6B))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, args.dtype)).to(args.device).eval()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"{path.name} on {args.device}, {args.dtype}; torch {torch.__version__}", flush=True)
    forwards(args, model, sync)
    phases(args, path, model, sync)
    return 0


if __name__ == "__main__":
    sys.exit(main())
