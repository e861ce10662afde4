"""Scale-out on loopback: HAProxy in front of 1 and 3 ``qwenguard serve`` replicas, then a replica killed
under 50 open stream sessions (docs/scaling.md).

    python bench/scaleout.py             # 3 interleaved throughput rounds; sessions with SIGKILL, then SIGTERM
    python bench/scaleout.py --quick     # 2 short rounds; sessions with SIGKILL only

Everything runs on 127.0.0.1: HAProxy from the system package with the shipped deploy/haproxy/haproxy.cfg
(skipped, with a message, when HAProxy is not installed), and replicas that are the real server code around
a Gen double whose model time is a fixed sleep, one call at a time (``tests/scaleout_kit.py``), so the
figures measure the serving layer and the balancer, not this machine's CPU.

1. Throughput of ``/v1/moderate`` (one distinct short conversation per request, ``--concurrency`` clients)
   through a balancer with 1 replica and through one with 3, side by side in alternating windows, model
   time ``--delay-ms`` (100) per call. Target: 3 replicas >= 2.5x one replica.
2. ``--sessions`` remote stream sessions (``Guard.remote(balancer, stream=True)``, async monitors, the Gen
   window engine on the replicas) feed a story each, two words every ``--pause-ms``; two in five stories
   hold an unsafe word (late in the text, or about where it is when the replica dies). One replica is
   killed (SIGKILL; SIGTERM too in a full run) once every session streams. Counted: sessions completed, failed over,
   failed closed, and unjudged releases: text released before any replica had judged it safe (each
   replica logs the windows it judged safe and when; the client notes what it had released after every
   call), or the unsafe word. Targets: 0 unjudged releases; >= 95% of the sessions on the killed replica
   (those whose opening check reached its model, still running when it died) complete by failover within
   their deadline; sessions on the other replicas unaffected (complete, no failover).

Exits 1 naming each missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402 - after the tests folder joins sys.path
import scaleout_kit as kit  # noqa: E402

THROUGHPUT_TARGET = 2.5
FAILOVER_TARGET = 0.95


# -- 1. throughput --------------------------------------------------------------------------------
async def _window(url: str, seconds: float, concurrency: int, tag: str) -> tuple[float, int]:
    """Requests answered 200 per second through ``url`` over ``seconds``; and the errors."""
    done = errors = 0
    counter = 0
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal done, errors, counter
            while time.monotonic() < stop_at:
                counter += 1
                body = {
                    "conversations": [[{"role": "user", "content": f"{tag} question {counter}: is the harbour open?"}]]
                }
                try:
                    answer = await client.post(url + "/moderate", json=body)
                    if answer.status_code == 200:
                        done += 1
                    else:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    return done / elapsed, errors


def throughput(work: Path, args: argparse.Namespace) -> tuple[float, list[str]]:
    replicas = [kit.Replica(work, i, delay_ms=args.delay_ms) for i in (1, 2, 3)]
    one = three = None
    try:
        for r in replicas:
            r.wait_ready()
        one = kit.Balancer(work, [replicas[0].address], name="one").wait_ready()
        three = kit.Balancer(work, [r.address for r in replicas], name="three").wait_ready()
        rates: dict[str, list[float]] = {"1 replica": [], "3 replicas": []}
        errors = 0
        asyncio.run(_window(one.url, 1.0, args.concurrency, "warm1"))
        asyncio.run(_window(three.url, 1.0, args.concurrency, "warm3"))
        for rnd in range(args.rounds):
            for name, lb in (("1 replica", one), ("3 replicas", three)):
                rate, errs = asyncio.run(_window(lb.url, args.seconds, args.concurrency, f"r{rnd}{name[0]}"))
                rates[name].append(rate)
                errors += errs
                print(f"  round {rnd + 1}  {name:<10}  {rate:7.1f} checks/s  ({errs} errors)", flush=True)
    finally:
        for lb in (one, three):
            if lb is not None:
                lb.stop()
        for r in replicas:
            r.stop()
    single, triple = statistics.median(rates["1 replica"]), statistics.median(rates["3 replicas"])
    ratio = triple / single if single else 0.0
    ceiling = 1000 / args.delay_ms
    print(
        f"  median: 1 replica {single:.1f}/s ({single / ceiling:.0%} of its model's {ceiling:.0f}/s), "
        f"3 replicas {triple:.1f}/s ({triple / (3 * ceiling):.0%} of {3 * ceiling:.0f}/s) -> {ratio:.2f}x "
        f"(target >= {THROUGHPUT_TARGET}x); {errors} errors"
    )
    missed = []
    if ratio < THROUGHPUT_TARGET:
        missed.append(f"throughput: 3 replicas {ratio:.2f}x one replica (target >= {THROUGHPUT_TARGET}x)")
    if errors:
        missed.append(f"throughput: {errors} requests failed")
    return ratio, missed


# -- 2. a replica dies under open sessions ---------------------------------------------------------
def sessions_with_a_death(work: Path, args: argparse.Namespace, sig: signal.Signals) -> list[str]:
    from qwenguard.core import Guard, Policy

    sub = work / sig.name
    sub.mkdir()
    replicas = [kit.Replica(sub, i, delay_ms=args.stream_delay_ms) for i in (1, 2, 3)]
    lb = None
    try:
        for r in replicas:
            r.wait_ready()
        lb = kit.Balancer(sub, [r.address for r in replicas]).wait_ready()
        victim = replicas[1]
        guard = Guard.remote(lb.url, model=kit.MODEL, stream=True, policy=Policy(timeout_s=args.deadline_s))
        # Every fifth story has the unsafe word late (judged after the death), every fifth near the words
        # fed when the replica dies (maybe fed but not yet judged by it: the replay must catch it).
        near_kill = int(args.kill_after_s * 1000 / args.pause_ms * 2) + 4

        marker_base = {4: args.words - 16, 2: near_kill}

        def marker_at(i: int) -> int | None:
            return marker_base[i % 5] + i % 7 if i % 5 in marker_base else None

        results = [
            kit.SessionResult(i, kit.prompt_for(i), kit.story(i, args.words, marker_at(i)))
            for i in range(args.sessions)
        ]

        exit_s = [float("nan")]

        killed = [float("inf")]

        async def run() -> None:
            tasks = [asyncio.create_task(kit.run_session(guard, r, pause_s=args.pause_ms / 1000)) for r in results]
            await kit.all_streaming(results)
            await asyncio.sleep(args.kill_after_s)
            killed[0] = killed_at = time.monotonic()
            kit.kill(victim.proc, sig)

            def gone() -> None:
                victim.proc.wait(60)
                exit_s[0] = time.monotonic() - killed_at

            await asyncio.gather(asyncio.to_thread(gone), *tasks)

        start = time.monotonic()
        asyncio.run(run())
        wall = time.monotonic() - start
        guard.close()
    finally:
        if lb is not None:
            lb.stop()
        for r in replicas:
            r.stop()
    return _report(results, replicas, victim, sig, wall, exit_s[0], killed[0], args)


def _screened_by(log: Path) -> set[str]:
    """Prompts whose opening check (a user turn alone) reached this replica's model: its sessions (also
    those whose opening was still waiting for the model when the replica died)."""
    import json

    if not log.exists():
        return set()
    prompts = set()
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("role") == "user":
            prompts.add(entry["prompt"])
    return prompts


def _report(
    results: list[kit.SessionResult],
    replicas: list[kit.Replica],
    victim: kit.Replica,
    sig: signal.Signals,
    wall: float,
    exit_s: float,
    killed_at: float,
    args: argparse.Namespace,
) -> list[str]:
    logs = [r.log for r in replicas]
    unjudged = kit.unjudged_releases(results, logs)
    victims = _screened_by(victim.log)

    def running_at_kill(r: kit.SessionResult) -> bool:
        return bool(r.releases) and r.releases[-1][0] > killed_at

    on_victim = [r for r in results if r.prompt in victims and running_at_kill(r)]
    ended_before = [r for r in results if r.prompt in victims and not running_at_kill(r)]
    others = [r for r in results if r.prompt not in victims]

    def ended_well(r: kit.SessionResult) -> bool:
        return r.outcome == ("violation" if r.has_marker else "completed")

    # Running when their replica died, and ended as they should: moved. (`failovers` counts only sessions
    # re-opened after "opened"; one whose opening was in flight on the victim re-opens too.)
    moved = [r for r in on_victim if ended_well(r)]
    unaffected = [r for r in others if ended_well(r) and r.failovers == 0]
    count = {k: sum(r.outcome == k for r in results) for k in ("completed", "violation", "failed_closed", "error")}
    failover_calls = sorted(r.slowest_call_s for r in results if r.failovers)
    plain_calls = sorted(r.slowest_call_s for r in results if not r.failovers)
    share = len(moved) / len(on_victim) if on_victim else 0.0
    print(
        f"  {len(results)} sessions, {sig.name} of one of 3 replicas {args.kill_after_s:.1f} s after all were streaming; "
        f"all done in {wall:.1f} s"
    )
    print(
        f"  outcomes: {count['completed']} completed, {count['violation']} stopped on their unsafe word, "
        f"{count['failed_closed']} failed closed, {count['error']} errors; "
        f"{sum(1 for r in results if r.failovers)} failed over ({sum(r.failovers for r in results)} re-opens)"
    )
    spread = [len(_screened_by(r.log)) for r in replicas]
    print(f"  sessions whose prompt reached each replica (HAProxy leastconn; a re-opened one counts twice): {spread}")
    print(
        f"  on the killed replica: {len(on_victim)} sessions, {len(moved)} completed by failover "
        f"({share:.0%}; target >= {FAILOVER_TARGET:.0%}; {sum(1 for r in moved if r.failovers)} re-opened after "
        f"their opening, {sum(1 for r in moved if not r.failovers)} while it was in flight)"
    )
    if ended_before:
        print(
            f"  ({len(ended_before)} more sessions of the killed replica had ended before the kill: "
            f"{sum(ended_well(r) for r in ended_before)} as they should)"
        )
    print(
        f"  on the other replicas: {len(others)} sessions, {len(unaffected)} unaffected (ended as expected, no failover)"
    )
    if failover_calls and plain_calls:
        print(
            f"  slowest call per session: {statistics.median(plain_calls) * 1000:.0f} ms median without failover, "
            f"{statistics.median(failover_calls) * 1000:.0f} ms median / {failover_calls[-1] * 1000:.0f} ms max "
            f"with one (deadline {args.deadline_s:.0f} s)"
        )
    print(f"  unjudged releases: {len(unjudged)} (target 0); the replica exited {exit_s:.2f} s after the signal")
    for problem in unjudged[:10]:
        print(f"    ! {problem}")
    for r in results:
        if r.outcome == "error":
            print(f"    ! session {r.index}: {r.error}")
    missed = []
    tag = sig.name
    if unjudged:
        missed.append(f"{tag}: {len(unjudged)} unjudged releases (target 0)")
    if not on_victim or share < FAILOVER_TARGET:
        missed.append(
            f"{tag}: {share:.0%} of the killed replica's {len(on_victim)} sessions completed by failover "
            f"(target >= {FAILOVER_TARGET:.0%})"
        )
    if len(unaffected) != len(others):
        missed.append(
            f"{tag}: {len(others) - len(unaffected)} of {len(others)} sessions on the other replicas were affected"
        )
    if count["error"]:
        missed.append(f"{tag}: {count['error']} sessions raised something other than a guard outcome")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 short rounds; SIGKILL only")
    parser.add_argument("--rounds", type=int, default=None, help="throughput rounds (default 3; --quick 2)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="length of a throughput window (default 5; --quick 3)"
    )
    parser.add_argument("--concurrency", type=int, default=24, help="clients sending /v1/moderate at once")
    # 100 ms (a Gen-4B check on a GPU is of that order): at 50 ms the 3-replica arm needs 60 HTTP requests/s
    # of client, HAProxy and server CPU, which a 2-core box shared with other work does not always have.
    parser.add_argument("--delay-ms", type=float, default=100.0, help="model time per call, throughput phase")
    parser.add_argument("--stream-delay-ms", type=float, default=5.0, help="model time per window check, session phase")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--words", type=int, default=96, help="words per session's text")
    parser.add_argument("--pause-ms", type=float, default=50.0, help="between two-word deltas (an LLM's pace)")
    parser.add_argument(
        "--kill-after-s",
        type=float,
        default=0.5,
        help="kill this long after every session has opened and had a feed answered",
    )
    parser.add_argument("--deadline-s", type=float, default=10.0, help="Policy.timeout_s of the clients")
    parser.add_argument("--skip", choices=("throughput", "sessions"), action="append", default=[])
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 5.0)
    if kit.haproxy_path() is None:
        print("SKIPPED: HAProxy is not installed (Debian/Ubuntu: apt-get install -y haproxy); nothing was measured.")
        return 0
    version = os.popen(f"{kit.haproxy_path()} -v").readline().strip()
    print(f"bench/scaleout.py on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {version}")
    missed: list[str] = []
    with kit.workdir() as work:
        if "throughput" not in args.skip:
            print(
                f"\n1. /v1/moderate throughput through HAProxy: model {args.delay_ms:.0f} ms per call, one call at a time "
                f"per replica; {args.concurrency} clients; {args.rounds} rounds of {args.seconds:.0f} s, alternating"
            )
            missed += throughput(work, args)[1]
        if "sessions" not in args.skip:
            for sig in (signal.SIGKILL,) if args.quick else (signal.SIGKILL, signal.SIGTERM):
                print(
                    f"\n2. {args.sessions} stream sessions through HAProxy (3 replicas, {args.stream_delay_ms:.0f} ms per "
                    f"window check), one replica gets {sig.name}"
                )
                missed += sessions_with_a_death(work, args, sig)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    if missed:
        print("MISSED:\n  " + "\n  ".join(missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
