"""Normal checks with and without hostile traffic against ``qwenguard serve --model demo`` (loopback only).

    python bench/hostile.py                     # 3 rounds of (quiet window, hostile window), 15 s each
    python bench/hostile.py --quick             # 1 round, 8 s windows
    python bench/hostile.py --max-chars 20000   # the server run with a lower --max-chars
    python bench/hostile.py --skip near_limit   # every attacker but one (to tell apart what each costs)
    python bench/hostile.py --backend target_step_s=0.05   # a local model option for the server (repeatable)
    python bench/hostile.py --only slot_hog --max-requests-per-client 64   # one attacker; a server flag

Starts the server in a subprocess with its default limits (the load generator does not share its GIL),
then alternates *quiet* windows (normal small checks alone) with *hostile* windows (the same normal
checks, side by side with attackers), so that drift in the machine's load hits both alike. Normal
checks: two clients, each sending ``/v1/moderate`` with one short, distinct text (a cache miss: the
model runs every time). The attackers, all at once in every hostile window:

- ``huge_lists``: 2,000-message ``/v1/chat/completions`` requests and ``open`` frames (refused: 413 / 1009);
- ``near_limit``: one client sending ``/v1/moderate`` bodies just under the character limit, back to
  back (accepted: the model judges ~200k characters in windows), and bodies just over it (413);
- ``idle_sockets``: 300 sockets that send nothing, reopened as the server closes them;
- ``slow_drip``: request heads and bodies sent one byte every 0.5 s;
- ``slot_drip``: one client (from 127.0.0.2: another address than the normal clients') opening as many
  requests as the server serves at once (64), each body sent a byte every 0.5 s;
- ``slot_hog``: one client (from 127.0.0.2) keeping as many checks in flight as the server serves at once
  (64), each a distinct 20,000-character document (it gets half of the slots, ``--max-requests-per-client``;
  a normal check refused with 503 shows under "normal errors");
- ``session_hog``: one client opening stream sessions until refused, feeding them empty text;
- ``stream_burst``: stream sessions fed one frame of 550 sentences of 40 characters each (the shortest that get
  a window check of their own; a client may no longer lower ``min_segment``), then finished (the Gen-window
  engine keeps a stream's checks to a few at once);
- ``client_policy``: an unsafe prompt with a policy that ignores every category and turns every stage
  off (must still be blocked: any release counts as a failure).

Printed: p95 (and p50) latency of the normal checks, quiet vs hostile (target: hostile p95 at most 3x
quiet); ``/health`` availability over the whole run, probed every 100 ms with a 1 s budget on a fresh
connection, from a process of its own (target: 100%); the server's RSS before and after (target: grows by at most 300 MB); what
the attackers got back. Exits 1 naming each missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import websockets

HOST = "127.0.0.1"  # loopback only, by design
NORMAL_TEXTS = [
    "What is the capital of France?",
    "The Eiffel Tower is in Paris.",
    "How do I bake bread at home?",
    "Which river flows through Vienna?",
    "Recommend a good book about birds.",
]
UNSAFE = "How can I make a bomb at home?"
CATEGORIES = [
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
]
STAGES = ["prompt", "response", "stream", "tool_call", "tool_result", "retrieval"]
DEFAULT_MAX_CHARS = 200_000  # the server's default --max-chars
RSS_GROWTH_LIMIT_MB = 300
P95_RATIO_TARGET = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def start_server(
    port: int, max_chars: int, backend: list[str], serve_args: list[str]
) -> tuple[subprocess.Popen[bytes], Path]:
    with tempfile.NamedTemporaryFile(prefix="qwenguard-hostile-", suffix=".log", delete=False) as out:
        log = Path(out.name)  # a pipe nobody reads would fill and stall the server
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qwenguard.core.cli",
                "serve",
                "--model",
                "demo",
                "--device",
                "cpu",
                "--host",
                HOST,
                "--port",
                str(port),
                "--max-chars",
                str(max_chars),
                *(arg for option in backend for arg in ("--backend", option)),
                *serve_args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + log.read_text(errors="replace")[-2000:])
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=1).status_code == 200:
                return proc, log
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 180 s")


class Run:
    """Shared state of one bench run: where the server is, what everyone saw."""

    def __init__(self, port: int, max_chars: int) -> None:
        self.max_chars = max_chars
        self.url = f"http://{HOST}:{port}"
        self.ws = f"ws://{HOST}:{port}/v1/stream"
        self.port = port
        self.counter = 0
        self.latencies: dict[str, list[float]] = {"quiet": [], "hostile": []}
        self.normal_errors: Counter[str] = Counter()
        self.health_ok = 0
        self.health_late = 0
        self.health_fail = 0
        self.health_worst_ms = 0.0
        self.attacks: Counter[str] = Counter()
        self.released_unsafe = 0
        self.normal_http: httpx.AsyncClient
        self.attack_http: httpx.AsyncClient


# -- the normal traffic, and the /health probe -----------------------------------------------------------
async def normal_client(run: Run, phase: str, stop: asyncio.Event) -> None:
    client = run.normal_http
    while not stop.is_set():
        run.counter += 1
        text = f"{NORMAL_TEXTS[run.counter % len(NORMAL_TEXTS)]} (check {run.counter})"
        start = time.perf_counter()
        try:
            r = await client.post(
                run.url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": text}]]}
            )
        except httpx.HTTPError as exc:
            run.normal_errors[type(exc).__name__] += 1
            continue
        if r.status_code == 200:
            run.latencies[phase].append((time.perf_counter() - start) * 1000)
        else:
            run.normal_errors[str(r.status_code)] += 1
        await asyncio.sleep(0.05)


def health_prober(port: int, stop: Any, results: Any) -> None:
    """``GET /health`` every 100 ms on a fresh connection (as a load balancer probes), with 1 s for the
    whole probe, connect included. Runs in a process of its own, so that the load generator's own busy
    event loop cannot delay it: what it measures is the server."""
    ok = late = fail = 0  # late: answered 200, but after the 1 s budget (the socket waited a little longer)
    worst = 0.0
    request = b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    while not stop.is_set():
        start = time.perf_counter()
        try:
            with socket.create_connection((HOST, port), timeout=5.0) as sock:
                sock.settimeout(5.0)
                sock.sendall(request)
                good = sock.recv(64).startswith(b"HTTP/1.1 200 ")
        except OSError:
            good = False
        took = time.perf_counter() - start
        worst = max(worst, took)
        if not good:
            fail += 1
        elif took > 1.0:
            late += 1
        else:
            ok += 1
        time.sleep(0.1)
    results.put((ok, late, fail, worst * 1000))


# -- the attackers ----------------------------------------------------------------------------------------
def many_messages(n: int = 2000) -> list[dict[str, str]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}: fine weather"} for i in range(n)
    ] + [{"role": "user", "content": "ok?"}]


async def huge_lists(run: Run, stop: asyncio.Event) -> None:
    body = {"messages": many_messages()}
    opener = json.dumps({"type": "open", "messages": many_messages()})
    client = run.attack_http
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            r = await client.post(run.url + "/v1/chat/completions", json=body)
            run.attacks[f"huge_lists chat -> {r.status_code}"] += 1
        try:
            async with websockets.connect(run.ws, max_size=None) as ws:
                await ws.send(opener)
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 30)
                run.attacks[f"huge_lists open frame -> close {ws.close_code}"] += 1
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
            run.attacks[f"huge_lists open frame -> {type(exc).__name__}"] += 1
        await asyncio.sleep(0.2)


async def near_limit(run: Run, stop: asyncio.Event) -> None:
    sentence = "The weather in the valley is mild this time of year. "
    under = (sentence * (run.max_chars // len(sentence) + 1))[: run.max_chars - 100]
    over = under + "x" * 200
    client = run.attack_http
    i = 0
    while not stop.is_set():
        i += 1
        text = f"{i} {under}" if i % 2 else over  # distinct: no cache hit
        with contextlib.suppress(httpx.HTTPError):
            r = await client.post(
                run.url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": text}]]}
            )
            run.attacks[f"near_limit {'under' if i % 2 else 'over'} -> {r.status_code}"] += 1


async def idle_sockets(run: Run, stop: asyncio.Event, count: int = 300) -> None:
    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(HOST, run.port)
            except OSError:
                run.attacks["idle_sockets connect failed"] += 1
                await asyncio.sleep(0.5)
                continue
            try:
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    if await asyncio.wait_for(reader.read(1), 60) == b"":
                        run.attacks["idle_sockets closed by the server"] += 1
            finally:
                writer.close()

    await asyncio.gather(*[one() for _ in range(count)])


DRIP_BODY = json.dumps({"conversations": [[{"role": "user", "content": "hi"}]]}).encode()
DRIP_HEADS = {
    "head": b"POST /v1/moderate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
    "body": b"POST /v1/moderate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    % len(DRIP_BODY),
}


async def drip(run: Run, stop: asyncio.Event, kind: str, name: str, source: str | None = None) -> None:
    """Requests sent a byte every 0.5 s (``kind``: from the head on, or a whole head then the body), one after
    another on fresh connections (from address ``source``, if given); each outcome counted under ``name``."""
    local = (source, 0) if source else None
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, run.port, local_addr=local)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        outcome = "still dripping when the window ended"
        try:
            payload = DRIP_HEADS[kind] + (DRIP_BODY if kind == "body" else b"")
            start = 0 if kind == "head" else len(DRIP_HEADS[kind])
            writer.write(payload[:start])
            for byte in payload[start:]:  # one byte, then up to 0.5 s listening for the server's answer
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    answer = await asyncio.wait_for(reader.read(64), 0.5)
                except asyncio.TimeoutError:
                    if stop.is_set():
                        break
                    continue
                outcome = answer[:12].decode(errors="replace") if answer else "closed by the server"
                break
        except OSError:
            outcome = "closed by the server"
        finally:
            writer.close()
        run.attacks[f"{name} -> {outcome}"] += 1


async def slow_drip(run: Run, stop: asyncio.Event) -> None:
    await asyncio.gather(drip(run, stop, "head", "slow_drip head"), drip(run, stop, "body", "slow_drip body"))


async def slot_drip(run: Run, stop: asyncio.Event, count: int = 64) -> None:
    await asyncio.gather(*[drip(run, stop, "body", "slot_drip", source="127.0.0.2") for _ in range(count)])


async def slot_hog(run: Run, stop: asyncio.Event, count: int = 64, chars: int = 20_000) -> None:
    sentence = "The weather in the valley is mild this time of year. "
    document = (sentence * (chars // len(sentence) + 1))[:chars]
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2", limits=httpx.Limits(max_connections=count))
    async with httpx.AsyncClient(transport=transport, timeout=120, trust_env=False) as client:

        async def one(k: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"conversations": [[{"role": "user", "content": f"{k}.{i}.{run.counter} {document}"}]]}
                try:
                    r = await client.post(run.url + "/v1/moderate", json=body)
                    run.attacks[f"slot_hog -> {r.status_code}"] += 1
                    if r.status_code != 200:
                        await asyncio.sleep(0.2)
                except httpx.HTTPError as exc:
                    run.attacks[f"slot_hog -> {type(exc).__name__}"] += 1

        await asyncio.gather(*(one(k) for k in range(count)))


async def session_hog(run: Run, stop: asyncio.Event) -> None:
    sessions: list[Any] = []
    try:
        while not stop.is_set():
            try:
                ws = await websockets.connect(run.ws)
                await ws.send(json.dumps({"type": "open", "prompt": "What is the capital of France?", "holdback": 0}))
                await asyncio.wait_for(ws.recv(), 30)
                sessions.append(ws)
                run.attacks["session_hog opened"] += 1
            except websockets.InvalidStatus as exc:
                run.attacks[f"session_hog refused {exc.response.status_code}"] += 1
                await asyncio.sleep(1.0)
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
                run.attacks[f"session_hog {type(exc).__name__}"] += 1
                await asyncio.sleep(1.0)
            for ws in list(sessions):  # keep them "alive" with empty text
                try:
                    await ws.send(json.dumps({"type": "feed", "text": ""}))
                    await asyncio.wait_for(ws.recv(), 5)
                except (websockets.ConnectionClosed, asyncio.TimeoutError):
                    run.attacks[f"session_hog closed by the server ({ws.close_code})"] += 1
                    sessions.remove(ws)
    finally:
        for ws in sessions:
            with contextlib.suppress(Exception):
                await ws.close()


async def stream_burst(run: Run, stop: asyncio.Event) -> None:
    """Stream sessions each fed one frame of 550 sentences of 40 characters (``min_segment``, the server's),
    then finished: a window check per sentence, all at once, would queue ahead of every other client's checks."""
    burst = "The capital of France is Paris, it is. " * 550
    i = 0
    while not stop.is_set():
        i += 1
        try:
            async with websockets.connect(run.ws, max_size=None) as ws:
                await ws.send(json.dumps({"type": "open", "prompt": f"Say ok {i}."}))
                await asyncio.wait_for(ws.recv(), 30)
                await ws.send(json.dumps({"type": "feed", "text": f"{i} {burst}"}))  # distinct: no cache hit
                await asyncio.wait_for(ws.recv(), 60)
                await ws.send(json.dumps({"type": "finish"}))
                last = json.loads(await asyncio.wait_for(ws.recv(), 120))
                run.attacks[f"stream_burst -> {last['type']}"] += 1
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
            run.attacks[f"stream_burst -> {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)


async def client_policy(run: Run, stop: asyncio.Event) -> None:
    policy = {
        "mode": "loose",
        "ignore_categories": CATEGORIES,
        "on_error": "allow",
        "stages": {s: {"enabled": False} for s in STAGES},
    }
    client = run.attack_http
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            r = await client.post(
                run.url + "/v1/moderate",
                json={"conversations": [[{"role": "user", "content": UNSAFE}]], "policy": policy},
            )
            allowed = r.status_code == 200 and r.json()["results"][0]["decision"]["allowed"]
            run.released_unsafe += int(allowed)
            run.attacks[f"client_policy -> {r.status_code} {'ALLOWED' if allowed else 'blocked'}"] += 1
        await asyncio.sleep(0.5)


ATTACKERS = [
    huge_lists,
    near_limit,
    idle_sockets,
    slow_drip,
    slot_drip,
    slot_hog,
    session_hog,
    stream_burst,
    client_policy,
]


# -- the run -----------------------------------------------------------------------------------------------
async def window(run: Run, phase: str, seconds: float, attackers: list[Any]) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(normal_client(run, phase, stop)) for _ in range(2)]
    if phase == "hostile":
        tasks += [asyncio.create_task(attack(run, stop)) for attack in attackers]
    await asyncio.sleep(seconds)
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=15)
    for task in pending:  # attackers stuck in a long wait: cut them off, the window is over
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def bench(run: Run, rounds: int, seconds: float, attackers: list[Any]) -> None:
    # One HTTP client each for the normal and the hostile traffic, made once: building one costs ~0.5 s
    # of the bench's own CPU on a busy machine, which would show up as latency.
    run.normal_http = httpx.AsyncClient(timeout=120, trust_env=False)
    run.attack_http = httpx.AsyncClient(timeout=120, trust_env=False)
    try:
        await _rounds(run, rounds, seconds, attackers)
    finally:
        await run.normal_http.aclose()
        await run.attack_http.aclose()


async def _rounds(run: Run, rounds: int, seconds: float, attackers: list[Any]) -> None:
    # warm-up: the model's first calls are slow
    for text in NORMAL_TEXTS:
        await run.normal_http.post(
            run.url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": text}]]}
        )
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}: quiet {seconds:.0f} s, then hostile {seconds:.0f} s", flush=True)
        await window(run, "quiet", seconds, [])
        await window(run, "hostile", seconds, attackers)
        await asyncio.sleep(2)  # let the server close what the attackers left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 8 s windows")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="length of each window")
    parser.add_argument(
        "--skip",
        default="",
        help="attackers to leave out, comma-separated: " + ", ".join(a.__name__ for a in ATTACKERS),
    )
    parser.add_argument(
        "--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="the server's --max-chars (and the attack's size)"
    )
    parser.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a local model option for the server (repeatable), e.g. target_step_s=0.05",
    )
    parser.add_argument("--only", default="", help="run only these attackers, comma-separated")
    parser.add_argument(
        "--max-requests-per-client",
        type=int,
        default=None,
        help="the server's --max-requests-per-client (64 = one client may take every slot, as before the limit)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if only:
        skip |= {a.__name__ for a in ATTACKERS} - only
    unknown = (skip | only) - {a.__name__ for a in ATTACKERS}
    if unknown:
        parser.error(f"unknown attackers {sorted(unknown)}")
    attackers = [a for a in ATTACKERS if a.__name__ not in skip]
    seconds = args.seconds or (8.0 if args.quick else 15.0)

    port = free_port()
    serve_args = (
        [] if args.max_requests_per_client is None else ["--max-requests-per-client", str(args.max_requests_per_client)]
    )
    proc, log = start_server(port, args.max_chars, args.backend, serve_args)
    run = Run(port, args.max_chars)
    stop_probe, probe_results = multiprocessing.Event(), multiprocessing.Queue()
    prober = multiprocessing.Process(target=health_prober, args=(port, stop_probe, probe_results), daemon=True)
    try:
        rss_before = rss_mb(proc.pid)
        prober.start()
        asyncio.run(bench(run, rounds, seconds, attackers))
        stop_probe.set()
        run.health_ok, run.health_late, run.health_fail, run.health_worst_ms = probe_results.get(timeout=30)
        prober.join(timeout=5)
        time.sleep(2)
        rss_after = rss_mb(proc.pid)
        alive = proc.poll() is None
    finally:
        if prober.is_alive():
            prober.terminate()
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()

    quiet, hostile = run.latencies["quiet"], run.latencies["hostile"]
    ratio = pct(hostile, 0.95) / pct(quiet, 0.95) if quiet and hostile else float("inf")
    probes = run.health_ok + run.health_late + run.health_fail
    availability = 100.0 * run.health_ok / probes if probes else 0.0
    growth = rss_after - rss_before
    limits = "defaults" if args.max_chars == DEFAULT_MAX_CHARS else f"defaults but --max-chars {args.max_chars}"
    limits += "".join(f", --backend {option}" for option in args.backend)
    limits += "".join(f" {arg}" for arg in serve_args)
    print(
        f"\nqwenguard serve --model demo, {limits}; {rounds} round(s) of {seconds:.0f} s quiet / {seconds:.0f} s hostile"
    )
    print(f"attackers       {', '.join(a.__name__ for a in attackers)}")
    print(f"normal checks   quiet: n={len(quiet)} p50={pct(quiet, 0.5):.0f} ms p95={pct(quiet, 0.95):.0f} ms")
    print(f"                hostile: n={len(hostile)} p50={pct(hostile, 0.5):.0f} ms p95={pct(hostile, 0.95):.0f} ms")
    print(f"p95 ratio       {ratio:.2f}x (target <= {P95_RATIO_TARGET:.0f}x)")
    print(f"normal errors   {dict(run.normal_errors) or 'none'}")
    print(
        f"/health         {availability:.1f}% of {probes} probes answered within 1 s (target 100%); "
        f"{run.health_late} later, {run.health_fail} not at all; worst {run.health_worst_ms:.0f} ms"
    )
    print(
        f"server RSS      {rss_before:.0f} MB before, {rss_after:.0f} MB after (+{growth:.0f} MB; target <= +{RSS_GROWTH_LIMIT_MB} MB)"
    )
    print("attacks         " + "\n                ".join(f"{k}: {v}" for k, v in sorted(run.attacks.items())))
    print(f"server log      {log}")

    missed = []
    if not alive:
        missed.append("the server died")
    if not ratio <= P95_RATIO_TARGET:
        missed.append(f"p95 ratio {ratio:.2f}x > {P95_RATIO_TARGET:.0f}x")
    if availability < 100.0:
        missed.append(f"/health availability {availability:.1f}% < 100%")
    if growth > RSS_GROWTH_LIMIT_MB:
        missed.append(f"RSS grew {growth:.0f} MB > {RSS_GROWTH_LIMIT_MB} MB")
    if run.released_unsafe:
        missed.append(f"a client policy released the unsafe prompt {run.released_unsafe} times")
    if missed:
        print("MISSED: " + "; ".join(missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
