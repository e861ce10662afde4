"""Replicas of ``qwenguard serve`` behind HAProxy on 127.0.0.1, for tests/test_scaleout.py and bench/scaleout.py.

- `KeywordJudge`: a Gen backend double whose model time is a fixed sleep, one call at a time (a
  saturated accelerator), and whose verdict is known in advance: unsafe (Violent) when a message holds
  `MARKER`, else safe. It appends every conversation it judged safe to a log file, so a test can tell
  which released text some replica really judged (`judged_prefix`).
- ``python tests/scaleout_kit.py --port P --log FILE [--delay-ms D]``: one replica, the real server
  code (`qwenguard.core.server.serve`, graceful shutdown included) around a `Guard` of that double.
- `Replica`, `Balancer`: start and stop them as subprocesses (HAProxy from the system package, with
  the shipped ``deploy/haproxy/haproxy.cfg``).
- `story`: a session's text, every word unique (so a judged window can be located in it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
MARKER = "FORBIDDEN"
MODEL = "keyword-judge"


# -- the replica's model --------------------------------------------------------------------------
class KeywordJudge:
    """Gen backend double: ``delay_s`` per call, one call at a time; unsafe iff `MARKER` is in a message."""

    def __init__(self, delay_s: float, log_path: str | None = None, name: str = MODEL) -> None:
        self.name = name
        self.delay_s = delay_s
        self.calls = 0
        self._log = open(log_path, "a", buffering=1, encoding="utf-8") if log_path else None  # noqa: SIM115
        self._alock: asyncio.Lock | None = None
        self._lock = threading.Lock()

    def _judge(self, conversations: Sequence[Any]) -> list[Any]:
        from qwenguard.core import Risk, Verdict

        out = []
        for conv in conversations:
            unsafe = any(MARKER in str(m.get("content", "")) for m in conv)
            if unsafe:
                out.append(
                    Verdict(
                        Risk.UNSAFE,
                        ("Violent",),
                        None,
                        "Safety: Unsafe\nCategories: Violent",
                        self.delay_s * 1000,
                        self.name,
                    )
                )
                continue
            if self._log is not None:
                # time.monotonic() is one clock for all processes of the machine (Linux CLOCK_MONOTONIC)
                self._log.write(
                    json.dumps(
                        {
                            "prompt": str(conv[0].get("content", "")),
                            "text": str(conv[-1].get("content", "")),
                            "role": conv[-1].get("role"),
                            "t": time.monotonic(),
                        }
                    )
                    + "\n"
                )
            out.append(Verdict(Risk.SAFE, (), None, "Safety: Safe\nCategories: None", self.delay_s * 1000, self.name))
        return out

    def _received(self, conversations: Sequence[Any]) -> None:
        """Log the prompts of calls as they arrive (``"event": "received"``): a replica killed while a
        session's opening check waits for the model still counts that session as its own."""
        if self._log is not None:
            for conv in conversations:
                self._log.write(
                    json.dumps(
                        {
                            "event": "received",
                            "prompt": str(conv[0].get("content", "")),
                            "role": conv[-1].get("role"),
                            "t": time.monotonic(),
                        }
                    )
                    + "\n"
                )

    def classify(self, conversations: Sequence[Any], *, timeout: float | None = None) -> list[Any]:
        self._received(conversations)
        with self._lock:
            self.calls += 1
            time.sleep(self.delay_s)
            return self._judge(conversations)

    async def aclassify(self, conversations: Sequence[Any], *, timeout: float | None = None) -> list[Any]:
        if self._alock is None:
            self._alock = asyncio.Lock()
        self._received(conversations)
        async with self._alock:
            self.calls += 1
            await asyncio.sleep(self.delay_s)
            return self._judge(conversations)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


def _replica_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one qwenguard serve replica around KeywordJudge")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", default=None, help="append what the judge found safe to this file")
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--drain-delay", type=float, default=0.0)
    parser.add_argument("--shutdown-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    from qwenguard.core import Guard
    from qwenguard.core.server import serve

    guard = Guard(KeywordJudge(args.delay_ms / 1000, args.log), cache_size=0)
    # Behind a balancer every request and session comes from the balancer's address: the per-client caps
    # are the totals.
    serve(
        guard,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        max_streams_per_client=1024,
        max_requests_per_client=64,
        drain_delay_s=args.drain_delay,
        shutdown_timeout_s=args.shutdown_timeout,
    )


# -- processes ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, status: int = 200) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer {status} within {timeout} s")


class Replica:
    """One replica subprocess (`_replica_main`) on a free loopback port."""

    def __init__(
        self,
        workdir: Path,
        index: int,
        *,
        delay_ms: float = 5.0,
        drain_delay: float = 0.0,
        shutdown_timeout: float = 20.0,
    ) -> None:
        self.port = free_port()
        self.index = index
        self.log = workdir / f"judged-{index}.jsonl"
        self.out = workdir / f"replica-{index}.out"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--port",
            str(self.port),
            "--log",
            str(self.log),
            "--delay-ms",
            str(delay_ms),
            "--drain-delay",
            str(drain_delay),
            "--shutdown-timeout",
            str(shutdown_timeout),
        ]
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
            )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 60.0) -> Replica:
        wait_http(f"http://{self.address}/health", timeout, self.proc)
        return self

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def haproxy_path() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )


#: Set to 1 to skip the tests that need HAProxy on a machine without it; unset, those tests fail.
NO_HAPROXY_ENV = "QWENGUARD_NO_HAPROXY"


def require_haproxy() -> str:
    """HAProxy's path, for a test. Without HAProxy the test fails (CI installs it: a missing balancer must
    not pass as a skip), unless ``QWENGUARD_NO_HAPROXY=1`` says to skip it on purpose."""
    import pytest

    exe = haproxy_path()
    if exe is not None:
        return exe
    if os.environ.get(NO_HAPROXY_ENV) == "1":
        pytest.skip(f"haproxy is not installed and {NO_HAPROXY_ENV}=1: balancer tests skipped on purpose")
    pytest.fail(
        f"haproxy is not installed: these tests run a real load balancer. Install it "
        f"(Debian/Ubuntu: apt-get install -y haproxy), or set {NO_HAPROXY_ENV}=1 to skip them on purpose.",
        pytrace=False,
    )


class Balancer:
    """HAProxy with the shipped config in front of ``replicas`` (addresses ``host:port``)."""

    def __init__(self, workdir: Path, replicas: Sequence[str], *, name: str = "balancer") -> None:
        exe = haproxy_path()
        if exe is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install -y haproxy)")
        self.port = free_port()
        self.replicas = len(replicas)
        self.stats_socket = workdir / f"{name}.sock"
        env = {k: v for k, v in os.environ.items() if not k.startswith("QG_REPLICA_")}
        env["QG_BIND"] = f"127.0.0.1:{self.port}"
        env["QG_STATS_SOCKET"] = str(self.stats_socket)
        for i, address in enumerate(replicas, 1):
            env[f"QG_REPLICA_{i}"] = address
        self.out = workdir / f"{name}.log"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [exe, "-f", str(HAPROXY_CFG), "-db"], stdout=out, stderr=subprocess.STDOUT, env=env
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 20.0) -> Balancer:
        """Until HAProxy answers and its checks have found every replica UP."""
        wait_http(f"http://127.0.0.1:{self.port}/health", timeout, self.proc)
        return self.wait_up(self.replicas, timeout)

    def states(self) -> dict[str, str]:
        """HAProxy's view of each replica (``replica1`` -> ``UP``, ``DOWN``, ``UP 1/2``...), from its
        runtime API (``show stat``)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        name, server, status = header.index("pxname"), header.index("svname"), header.index("status")
        return {
            f[server]: f[status]
            for f in (ln.split(",") for ln in lines[1:] if ln)
            if len(f) > status and f[name] == "requests" and f[server] != "BACKEND"
        }

    def wait_up(self, count: int, timeout: float = 20.0) -> Balancer:
        """Until at least ``count`` replicas are UP in HAProxy's checks (a loaded box can fail a check:
        a test that needs sessions spread over every replica waits here first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.states()
            except OSError:
                states = {}
            if sum(st == "UP" for st in states.values()) >= count:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy sees {states}, not {count} replicas UP, after {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()


@contextlib.contextmanager
def workdir() -> Any:
    with tempfile.TemporaryDirectory(prefix="qwenguard-scaleout-") as tmp:
        yield Path(tmp)


# -- what a session sends, and what was judged ----------------------------------------------------
def story(session: int, words: int = 96, marker_at: int | None = None) -> str:
    """A session's answer: sentences of 8 words, every word unique; `MARKER` replaces word ``marker_at``."""
    out = []
    for i in range(words):
        word = MARKER if i == marker_at else f"s{session}w{i}"
        out.append(word + (". " if i % 8 == 7 else " "))
    return "".join(out)


def prompt_for(session: int) -> str:
    return f"Session {session}: tell me a long story about harbours."


def judged_windows(logs: Sequence[Path]) -> dict[str, list[tuple[float, str]]]:
    """The windows (assistant text) each session's prompt had judged safe, with when, from all logs."""
    out: dict[str, list[tuple[float, str]]] = {}
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by SIGKILL
            if entry.get("event") != "received" and entry.get("role") == "assistant" and entry.get("text"):
                out.setdefault(entry["prompt"], []).append((entry["t"], entry["text"]))
    return out


def judged_prefix(windows: Sequence[tuple[float, str]], text: str, before: float = float("inf")) -> int:
    """How long a prefix of ``text`` lies inside windows judged safe before time ``before``."""
    spans = []
    for t, window in windows:
        if t <= before and (start := text.find(window)) >= 0:
            spans.append((start, start + len(window)))
    covered = 0
    for start, end in sorted(spans):
        if start > covered:
            break
        covered = max(covered, end)
    if not text[covered:].strip():
        covered = len(text)  # the monitor releases a whitespace-only tail without a check: nothing to judge
    return covered


# -- sessions and their audit ----------------------------------------------------------------------
class SessionResult:
    """What one stream session did: how it ended, what it released, how often it failed over."""

    def __init__(self, index: int, prompt: str, text: str) -> None:
        self.index, self.prompt, self.text = index, prompt, text
        self.outcome = "running"  # completed | violation | failed_closed | error
        self.released = ""
        self.failovers = 0
        self.error = ""
        self.slowest_call_s = 0.0
        #: (time.monotonic(), characters released so far) after every call
        self.releases: list[tuple[float, int]] = []

    def note(self, monitor: Any) -> None:
        self.releases.append((time.monotonic(), len(monitor.released)))

    @property
    def has_marker(self) -> bool:
        return MARKER in self.text

    def __repr__(self) -> str:
        return (
            f"SessionResult({self.index}, {self.outcome}, released={len(self.released)}/{len(self.text)}, "
            f"failovers={self.failovers}, error={self.error!r})"
        )


async def all_streaming(results: Sequence[SessionResult], timeout: float = 30.0) -> None:
    """Until every session has opened and had a feed answered (on a loaded box opening 50 sessions at
    once takes a while: a replica killed before is killed under openings, not under streams)."""
    deadline = time.monotonic() + timeout
    while not all(r.releases or r.outcome != "running" for r in results) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def deltas(text: str, words_per_delta: int = 2) -> list[str]:
    words = text.split(" ")
    pieces = [" ".join(words[i : i + words_per_delta]) for i in range(0, len(words), words_per_delta)]
    return [p + " " for p in pieces[:-1]] + [pieces[-1]]


async def run_session(
    guard: Any, result: SessionResult, *, pause_s: float, holdback: int = 4, words_per_delta: int = 2
) -> SessionResult:
    """One async remote stream session: feed ``result.text`` delta by delta, ``pause_s`` apart."""
    from qwenguard.core import GuardUnavailable, GuardViolation

    monitor = guard.astream(result.prompt, holdback=holdback)
    try:
        async with monitor:
            for piece in deltas(result.text, words_per_delta):
                start = time.monotonic()
                try:
                    await monitor.afeed(piece)
                finally:
                    result.note(monitor)
                result.slowest_call_s = max(result.slowest_call_s, time.monotonic() - start)
                await asyncio.sleep(pause_s)
            start = time.monotonic()
            try:
                await monitor.afinish()
            finally:
                result.note(monitor)
            result.slowest_call_s = max(result.slowest_call_s, time.monotonic() - start)
        result.outcome = "completed"
    except GuardViolation:
        result.outcome = "violation"
    except GuardUnavailable as exc:  # GuardTimeout included: the policy fails closed
        result.outcome, result.error = "failed_closed", str(exc)[:200]
    except Exception as exc:  # noqa: BLE001 - counted, and a test fails on it
        result.outcome, result.error = "error", f"{type(exc).__name__}: {exc}"[:200]
    result.released = monitor.released
    result.failovers = getattr(monitor, "failovers", 0)
    return result


def run_sync_session(guard: Any, result: SessionResult, *, pause_s: float, holdback: int = 4) -> SessionResult:
    """Sync twin of `run_session` (the sync monitor, in a thread)."""
    from qwenguard.core import GuardUnavailable, GuardViolation

    monitor = guard.stream(result.prompt, holdback=holdback)
    try:
        with monitor:
            for piece in deltas(result.text):
                try:
                    monitor.feed(piece)
                finally:
                    result.note(monitor)
                time.sleep(pause_s)
            try:
                monitor.finish()
            finally:
                result.note(monitor)
        result.outcome = "completed"
    except GuardViolation:
        result.outcome = "violation"
    except GuardUnavailable as exc:
        result.outcome, result.error = "failed_closed", str(exc)[:200]
    except Exception as exc:  # noqa: BLE001
        result.outcome, result.error = "error", f"{type(exc).__name__}: {exc}"[:200]
    result.released = monitor.released
    result.failovers = getattr(monitor, "failovers", 0)
    return result


def unjudged_releases(results: Sequence[SessionResult], logs: Sequence[Path]) -> list[str]:
    """Every way a session released text that no replica had judged safe *before* it was released
    (empty when all is well): text not fed, the unsafe marker, or a release ahead of the judged prefix."""
    windows = judged_windows(logs)
    problems = []
    for r in results:
        if not r.text.startswith(r.released):
            problems.append(f"session {r.index} released text that was not fed")
        if MARKER in r.released:
            problems.append(f"session {r.index} released the unsafe marker")
        for at, length in r.releases:
            covered = judged_prefix(windows.get(r.prompt, ()), r.text, before=at)
            if length > covered:
                problems.append(f"session {r.index} had released {length} chars when only {covered} were judged")
                break
    return problems


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)


if __name__ == "__main__":
    _replica_main()
