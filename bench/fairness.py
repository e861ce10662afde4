"""Short checks beside a long document, and what the time-bounded steps cost the document (demo guard, in-process).

    python bench/fairness.py              # 3 rounds, arms interleaved (~2 min on 2 CPU cores)
    python bench/fairness.py --rounds 1

Two backends on the same weights, run in turn within each round so that machine drift hits both alike:

- ``target 0.1 s``: the default batching (steps planned to take about ``target_step_s``, short checks lead
  steps of their own width);
- ``full steps``: ``target_step_s=None`` (steps bounded by ``max_batch_tokens`` only; the width-class rule
  still applies).

For each arm: the time to judge one ~200,000-character document alone (the server's default ``--max-chars``),
and the latency of short prompt checks sent one after another, alone (quiet) and while such documents are
judged back to back (busy), with the p95 ratio busy / quiet. Every text is distinct (``cache_size=0`` anyway).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time

from qwenguard.core import Guard, Policy
from qwenguard.core.backends.transformers_gen import TransformersGen

SENTENCE = "The weather in the valley is mild this time of year. "
DOCUMENT = (SENTENCE * (200_000 // len(SENTENCE) + 1))[:199_900]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def short_checks(guard: Guard, tag: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        guard.check_prompt(f"What is the capital of country {tag} number {i}?")
        out.append((time.perf_counter() - start) * 1000)
        time.sleep(0.02)
    return out


def one_round(name: str, guard: Guard, r: int, n: int) -> dict[str, float]:
    start = time.perf_counter()
    (d,) = guard.check_documents(None, [f"{name} {r} alone {DOCUMENT}"])
    alone_s = time.perf_counter() - start
    assert d.reason != "guard_error", d
    quiet = short_checks(guard, f"{name}-{r}-quiet", n)
    stop = threading.Event()

    def documents() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            guard.check_documents(None, [f"{name} {r} {i} {DOCUMENT}"])

    worker = threading.Thread(target=documents)
    worker.start()
    time.sleep(0.5)  # the first document is being judged
    busy = short_checks(guard, f"{name}-{r}-busy", n)
    stop.set()
    worker.join()
    return {"alone_s": alone_s, "quiet_p95": p95(quiet), "busy_p95": p95(busy), "busy_p50": statistics.median(busy)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=60, help="short checks per phase")
    args = parser.parse_args()
    base = Guard.from_pretrained("demo", cache_size=0)
    model, tokenizer = base.backend.model, base.backend.tokenizer
    policy = Policy.strict(timeout_s=600)
    arms = {
        "target 0.1 s": Guard(TransformersGen(model, tokenizer, name="demo"), policy, cache_size=0),
        "full steps": Guard(TransformersGen(model, tokenizer, name="demo", target_step_s=None), policy, cache_size=0),
    }
    for guard in arms.values():
        guard.check_prompt("warm up")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    for r in range(args.rounds):
        for name, guard in arms.items() if r % 2 == 0 else reversed(list(arms.items())):
            results[name].append(one_round(name, guard, r, args.n))
            print(f"round {r + 1}/{args.rounds} {name}: {results[name][-1]}", flush=True)
    print(f"\ndemo guard, {platform.processor() or platform.machine()}, {args.rounds} round(s), medians of rounds")
    print(f"{'arm':<14} {'document alone':>15} {'short p95 quiet':>16} {'short p95 busy':>15} {'ratio':>7}")
    med = {name: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for name, rows in results.items()}
    for name, m in med.items():
        ratio = m["busy_p95"] / m["quiet_p95"]
        print(f"{name:<14} {m['alone_s']:>13.2f} s {m['quiet_p95']:>13.0f} ms {m['busy_p95']:>12.0f} ms {ratio:>6.2f}x")
    cost = med["target 0.1 s"]["alone_s"] / med["full steps"]["alone_s"]
    print(f"document time, target / full steps: {cost:.2f}x")
    for guard in arms.values():
        guard.close()
    base.close()


if __name__ == "__main__":
    main()
