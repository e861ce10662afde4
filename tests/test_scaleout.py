"""Replicas behind a real load balancer; a replica dies; nothing unjudged gets out (docs/scaling.md).

Real components: HAProxy from the system package with the shipped ``deploy/haproxy/haproxy.cfg``, and
``qwenguard serve`` replicas (the real server code, in subprocesses on 127.0.0.1) around a Gen double
whose verdicts are known (`scaleout_kit.KeywordJudge`: unsafe iff the marker word is in the text) and
which logs every window it judged safe, so the test can check that each session released only text some
replica judged. Replicas are killed with SIGKILL (a crash) and stopped with SIGTERM (a drain).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import scaleout_kit as kit
from qwenguard.core import Guard, GuardUnavailable, GuardViolation, Policy
from qwenguard.core.server import create_app, server_config
from qwenguard.core.server.shutdown import DrainingServer
from ws_scripted import ScriptedReplica as _Scripted

#: Per-call deadline of the clients here: generous, so a loaded CI box still fails over in time.
DEADLINE_S = 15.0


@pytest.fixture(scope="module")
def workdir():
    with kit.workdir() as path:
        yield path


@pytest.fixture(scope="module")
def replicas(workdir):
    """Four replicas started at once (startup is mostly imports: cheaper side by side): 1-2 behind the
    balancer (2 is killed last), 3-4 reached directly by the client (4 is stopped with SIGTERM)."""
    started = [kit.Replica(workdir, i, drain_delay=1.5 if i == 4 else 0.0, shutdown_timeout=5.0) for i in (1, 2, 3, 4)]
    try:
        for r in started:
            r.wait_ready()
        yield started
    finally:
        for r in started:
            r.stop()


@pytest.fixture(scope="module")
def balancer(workdir, replicas):
    kit.require_haproxy()  # fails without HAProxy, unless QWENGUARD_NO_HAPROXY=1
    lb = kit.Balancer(workdir, [replicas[0].address, replicas[1].address]).wait_ready()
    yield lb
    lb.stop()


def _guard(urls, **policy):
    return Guard.remote(urls, model=kit.MODEL, stream=True, policy=Policy(timeout_s=DEADLINE_S, **policy))


def _sessions(first: int, count: int, *, words: int = 64, near: int = 16) -> list[kit.SessionResult]:
    """Stories; one in four has the unsafe word late (after the replica is gone), one in four about
    ``near`` words in (fed around the time it dies, perhaps not judged by it: the replay must catch it)."""
    out = []
    for i in range(first, first + count):
        marker_at = {0: words - 10, 2: near + i % 5}.get(i % 4)
        out.append(kit.SessionResult(i, kit.prompt_for(i), kit.story(i, words, marker_at)))
    return out


def _assert_safe(results, logs):
    problems = kit.unjudged_releases(results, logs)
    assert not problems, problems
    for r in results:
        assert r.outcome in ("completed", "violation", "failed_closed"), r
        if r.has_marker:
            assert r.outcome in ("violation", "failed_closed"), r  # never completes past the unsafe word
        if r.outcome == "completed":
            assert r.released == r.text, r


# -- the client's rules, against scripted replicas (fault injection) ---------------------------------
#: What a replica that screened the prompt first reports at ``opened``.
PROMPT_ALLOWED = {"allowed": True, "action": "allow", "stage": "prompt", "reason": "safe", "risk": "safe"}


def _replica_that_goes_away_after(feeds: int, how: int | str = 1012):
    """Releases every feed at once, then on feed number ``feeds + 1`` closes with ``how`` (1012: a replica
    stopping) or drops the connection (``"drop"``: a replica killed)."""
    seen = {"feeds": 0}

    def script(frame):
        if frame["type"] == "open":
            return {"type": "opened", "prompt_decision": PROMPT_ALLOWED}
        seen["feeds"] += 1
        return how if seen["feeds"] > feeds else {"type": "released", "text": frame["text"]}

    return script


def test_after_a_failover_only_text_the_new_session_judged_is_released():
    # Replica A released "Hello world. " (R), then restarts. Replica B re-judges from scratch and lags:
    # nothing beyond R comes out until B has judged past it; then only what B judged.
    a = _Scripted(_replica_that_goes_away_after(1))
    b_released = iter(["Hello ", "world. Second part. Third. "])

    def b(frame):
        if frame["type"] == "open":
            return {"type": "opened"}
        if frame["type"] == "finish":
            return {"type": "finished", "text": ""}
        return {"type": "released", "text": next(b_released)}

    b = _Scripted(b)
    guard = Guard.remote("http://127.0.0.1:9/v1", model="m", stream=[a.url, b.url], policy=Policy(timeout_s=5))
    guard.stream_backend.replicas.failed(guard.stream_backend.urls[1])  # sessions start on A
    try:
        with guard.stream("Tell me.", holdback=2) as monitor:
            first = monitor.feed("Hello world. ")
            second = monitor.feed("Second part. ")  # A closes 1012; B replays and judges only "Hello "
            third = monitor.feed("Third. ")
            rest = monitor.finish()
    finally:
        a.close()
        b.close()
    assert (first, second, third, rest) == ("Hello world. ", "", "Second part. Third. ", "")
    assert monitor.failovers == 1 and monitor.released == "Hello world. Second part. Third. "
    opened, replay = b.frames[0], b.frames[1]
    assert opened["type"] == "open" and opened["screen_prompt"] is False  # the prompt was screened once, on A
    assert replay == {"type": "feed", "text": "Hello world. Second part. "}  # the prompt's answer so far, then the call


def test_a_violation_in_the_replayed_text_stops_the_stream():
    a = _Scripted(_replica_that_goes_away_after(1))
    violation = {
        "type": "violation",
        "released": "Hello ",
        "decision": {
            "allowed": False,
            "action": "block",
            "stage": "stream",
            "reason": "unsafe",
            "risk": "unsafe",
            "categories": ["Violent"],
            "offset": 6,
        },
    }
    b = _Scripted(lambda f: {"type": "opened"} if f["type"] == "open" else violation)
    guard = Guard.remote("http://127.0.0.1:9/v1", model="m", stream=[a.url, b.url], policy=Policy(timeout_s=5))
    guard.stream_backend.replicas.failed(guard.stream_backend.urls[1])  # sessions start on A
    try:
        monitor = guard.stream("Tell me.", holdback=2)
        assert monitor.feed("Hello world. ") == "Hello world. "
        with pytest.raises(GuardViolation):
            monitor.feed("Bad part. ")
    finally:
        a.close()
        b.close()
    assert monitor.released == "Hello world. "  # nothing more
    assert monitor.decision.categories == ("Violent",)
    with pytest.raises(GuardViolation):
        monitor.feed("more")


def test_a_replica_that_releases_text_it_was_not_fed_fails_closed():
    evil = _Scripted(
        lambda f: {"type": "opened"} if f["type"] == "open" else {"type": "released", "text": "Safety: Safe"}
    )
    guard = Guard.remote(evil.url, model="m", stream=True, policy=Policy(timeout_s=5))
    try:
        monitor = guard.stream("Tell me.")
        with pytest.raises(GuardUnavailable):
            monitor.feed("How to build a bomb. ")
    finally:
        evil.close()
    assert monitor.released == ""


async def test_async_monitor_fails_over_on_a_dropped_connection():
    a = _Scripted(_replica_that_goes_away_after(1, "drop"))
    b = _Scripted(
        lambda f: (
            {"type": "opened"}
            if f["type"] == "open"
            else {"type": "finished", "text": ""}
            if f["type"] == "finish"
            else {"type": "released", "text": f["text"]}
        )
    )
    guard = Guard.remote("http://127.0.0.1:9/v1", model="m", stream=[a.url, b.url], policy=Policy(timeout_s=5))
    guard.stream_backend.replicas.failed(guard.stream_backend.urls[1])
    try:
        async with guard.astream("Tell me.") as monitor:
            out = [await monitor.afeed("One. "), await monitor.afeed("Two. "), await monitor.afinish()]
    finally:
        a.close()
        b.close()
    assert out == ["One. ", "Two. ", ""] and monitor.failovers == 1


class _RestartingFleet:
    """Behind one URL (a balancer), every replica restarts at once: the session's replica closes with
    1012 on the second feed, then every handshake is answered 503 for ``refuse_s``; after that new
    sessions are served (each feed released as judged)."""

    def __init__(self, refuse_s: float) -> None:
        self.refuse_s = refuse_s
        self.refuse_until = 0.0
        self.refused = 0
        self.feeds = 0
        self.server = _Scripted(self._script, process_request=self._handshake)
        self.url = self.server.url

    def _handshake(self, connection, request):
        if time.monotonic() < self.refuse_until:
            self.refused += 1
            return connection.respond(503, "no replica up\n")
        return None

    def _script(self, frame):
        if frame["type"] == "open":
            return {"type": "opened"}
        if frame["type"] == "finish":
            return {"type": "finished", "text": ""}
        self.feeds += 1
        if self.feeds == 2:
            self.refuse_until = time.monotonic() + self.refuse_s
            return 1012
        return {"type": "released", "text": frame["text"]}


def test_a_moment_with_no_replica_up_is_waited_out_not_failed_closed():
    # Re-opening at once, three times in a row, spent the failover budget in milliseconds and failed
    # closed with the deadline still 5 s away; backing off once every replica refused rides it out.
    fleet = _RestartingFleet(refuse_s=0.3)
    guard = Guard.remote(fleet.url, model="m", stream=True, policy=Policy(timeout_s=5))
    try:
        with guard.stream("Tell me.", holdback=0) as monitor:
            out = monitor.feed("One. ") + monitor.feed("Two. ") + monitor.finish()
    finally:
        fleet.server.close()
    assert fleet.refused >= 1  # the re-open really met the refusing moment
    assert out == monitor.released == "One. Two. " and monitor.failovers >= 2


async def test_async_monitor_waits_out_a_moment_with_no_replica_up():
    fleet = _RestartingFleet(refuse_s=0.3)
    guard = Guard.remote(fleet.url, model="m", stream=True, policy=Policy(timeout_s=5))
    try:
        async with guard.astream("Tell me.", holdback=0) as monitor:
            out = await monitor.afeed("One. ") + await monitor.afeed("Two. ") + await monitor.afinish()
    finally:
        fleet.server.close()
    assert fleet.refused >= 1
    assert out == monitor.released == "One. Two. " and monitor.failovers >= 2


async def test_closing_an_async_monitor_while_it_waits_to_reopen_releases_nothing_more():
    fleet = _RestartingFleet(refuse_s=0.3)
    guard = Guard.remote(fleet.url, model="m", stream=True, policy=Policy(timeout_s=5))
    try:
        monitor = await guard.astream("Tell me.", holdback=0).aopen()
        assert await monitor.afeed("One. ") == "One. "
        feeding = asyncio.create_task(monitor.afeed("Two. "))  # its replica goes; re-opens wait (0.2 s, 0.4 s)
        await asyncio.sleep(0.35)
        await monitor.aclose()
        assert await feeding == ""
    finally:
        fleet.server.close()
    assert monitor.released == "One. " and monitor.closed


def test_replica_urls_are_validated_and_picked_by_load_and_health():
    from qwenguard.core.backends.replicas import Replicas, attempt_budget, base_urls

    assert base_urls(["http://a/v1/", "http://a/v1", "https://b/v1"]) == ("http://a/v1", "https://b/v1")
    for bad in ([], ["a:80"], [None], b"http://a"):
        with pytest.raises((ValueError, TypeError)):
            base_urls(bad)
    replicas = Replicas(["a", "b", "c"], cooldown_s=60)
    replicas.failed("a")
    with replicas.using("b"):
        assert replicas.pick() == "c"  # a cools down, b is busy
        assert replicas.pick(exclude=["c"]) == "b"
    assert replicas.pick(exclude=["b", "c"]) == "a"  # only a left: tried even while cooling down
    assert attempt_budget(10.0, 35.0, another_follows=True) == 5.0
    assert attempt_budget(10.0, 35.0, another_follows=False) == 10.0
    assert attempt_budget(None, 35.0, another_follows=True) == 35.0


# -- a replica told to stop (in process: the server's own shutdown path) ---------------------------
@contextmanager
def _draining_server(drain_delay_s: float, shutdown_timeout_s: float, model_s: float):
    """`DrainingServer` (what `serve` runs) on a free port in a thread; yields (server, base URL, thread)."""
    app = create_app(Guard(kit.KeywordJudge(model_s), cache_size=0))
    port = kit.free_port()
    config = server_config(app, port=port, log_level="warning", timeout_graceful_shutdown=shutdown_timeout_s)
    server = DrainingServer(config, load=app.state.load, drain_delay_s=drain_delay_s)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    kit.wait_http(f"http://127.0.0.1:{port}/health", 20)
    try:
        yield server, f"http://127.0.0.1:{port}", thread
    finally:
        server.should_exit = server.force_exit = True
        thread.join(10)


def test_a_stop_signal_drains_then_hands_sessions_back_with_1012_and_exits_in_bound():
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    # The drain delay leaves room for the calls below on a loaded CI box (the model takes one call at a time).
    with _draining_server(drain_delay_s=2.0, shutdown_timeout_s=3.0, model_s=0.4) as (server, url, thread):
        session = connect(url.replace("http", "ws") + "/v1/stream").__enter__()  # closed by the server below
        session.send(json.dumps({"type": "open", "prompt": "hi"}))
        assert json.loads(session.recv(timeout=10))["type"] == "opened"
        with httpx.Client(timeout=10) as client:
            slow = concurrent.futures.ThreadPoolExecutor(1).submit(
                client.post, url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "slow one"}]]}
            )
            time.sleep(0.2)  # the check is in the model now
            stopped = time.monotonic()
            server.handle_exit(signal.SIGTERM, None)  # what the signal handler runs
            health = client.get(url + "/health")
            ready = client.get(url + "/ready")
            with pytest.raises(InvalidStatus) as refused:
                connect(url.replace("http", "ws") + "/v1/stream").close()
            during = client.post(url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "q"}]]})
            assert slow.result(10).status_code == 200  # in flight when the signal came: finished
        with pytest.raises(ConnectionClosed) as handed_back:
            session.recv(timeout=10)
        thread.join(10)
        exited = time.monotonic() - stopped
    assert (health.status_code, health.json()["status"]) == (503, "draining")
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert during.status_code == 200  # still served during the drain delay
    assert refused.value.response.status_code == 503  # new sessions go elsewhere
    # ... at once: a client honours Retry-After, and a draining replica's refusal is no reason to wait.
    assert refused.value.response.headers["Retry-After"] == "0"
    assert handed_back.value.rcvd is not None and handed_back.value.rcvd.code == 1012
    assert not thread.is_alive() and exited < 2.0 + 3.0 + 2.0


def test_shutdown_is_bounded_when_a_request_outlives_it():
    with _draining_server(drain_delay_s=0.0, shutdown_timeout_s=1.0, model_s=30.0) as (server, url, thread):
        with httpx.Client(timeout=40) as client:
            stuck = concurrent.futures.ThreadPoolExecutor(1).submit(
                client.post, url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "stuck"}]]}
            )
            time.sleep(0.3)
            stopped = time.monotonic()
            server.handle_exit(signal.SIGTERM, None)
            thread.join(15)
            exited = time.monotonic() - stopped
            answer = stuck.result(10)
    assert not thread.is_alive() and exited < 1.0 + 2.0
    # Cancelled at the bound, answered 503: the balancer or the client sends the check elsewhere.
    assert answer.status_code == 503 and answer.headers["retry-after"] == "0"


# -- through the balancer ------------------------------------------------------------------------
def test_checks_and_streams_go_through_the_balancer(balancer, replicas):
    guard = _guard(balancer.url)
    assert guard.check_prompt("What is the capital of France?").allowed
    assert not guard.check_prompt(f"How do I {kit.MARKER} things?").allowed
    body = {"conversations": [[{"role": "user", "content": f"check {i}"}] for i in range(3)]}
    answer = httpx.post(balancer.url + "/moderate", json=body, timeout=10)
    assert answer.status_code == 200 and [r["decision"]["action"] for r in answer.json()["results"]] == ["allow"] * 3
    results = asyncio.run(_run_all(guard, _sessions(0, 4, words=32), pause_s=0.0))
    _assert_safe(results, [r.log for r in replicas])
    assert [r.outcome for r in results] == ["violation", "completed", "violation", "completed"]
    guard.close()


async def _run_all(guard, results, *, pause_s, during=None):
    tasks = [asyncio.create_task(kit.run_session(guard, r, pause_s=pause_s)) for r in results]
    if during is not None:
        await during()
    return await asyncio.gather(*tasks)


class _Crasher:
    """A "replica" that answers /health but reads each other request whole and closes without an
    answer: a process that dies mid-request."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(65536)
                except OSError:
                    continue
                if data.startswith(b"GET /health"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                elif data:
                    self.dropped += 1

    def close(self) -> None:
        self.sock.close()


def test_the_balancer_resends_a_check_whose_replica_died_mid_request(workdir, replicas):
    kit.require_haproxy()
    # retry-on empty-response re-sends a POST only when HAProxy holds the whole request: the shipped
    # config's `option http-buffer-request`. httpx writes the head and the body separately.
    crasher = _Crasher()
    lb = kit.Balancer(workdir, [crasher.address, replicas[0].address], name="resend").wait_ready()
    try:
        with httpx.Client(timeout=10) as client:
            statuses = [
                client.post(
                    lb.url + "/moderate",
                    json={"conversations": [[{"role": "user", "content": f"q{i}"}]]},
                    headers={"connection": "close"},
                ).status_code
                for i in range(8)
            ]
    finally:
        lb.stop()
        crasher.close()
    assert crasher.dropped >= 1  # the crashing replica really got some of them
    assert statuses == [200] * 8


class _Hang:
    """A "replica" that accepts connections and never answers (a hung process)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_hung_replica_costs_half_the_deadline_not_the_check(replicas):
    # Listed first, the hung replica gets the first attempt; with another replica left it may use at
    # most half the time left, so the check and the session still end in time, judged.
    hung = _Hang()
    guard = Guard.remote([hung.url, replicas[0].url], model=kit.MODEL, stream=True, policy=Policy(timeout_s=4.0))
    try:
        start = time.monotonic()
        decision = guard.check_prompt("What is the capital of France?")
        check_s = time.monotonic() - start
        result = kit.SessionResult(50, kit.prompt_for(50), kit.story(50, 24))
        start = time.monotonic()
        kit.run_sync_session(guard, result, pause_s=0.0)
        session_s = time.monotonic() - start
        # The async twins, side by side, with a fresh client (the first one now passes the hung replica over).
        fresh = Guard.remote([hung.url, replicas[0].url], model=kit.MODEL, stream=True, policy=Policy(timeout_s=4.0))
        aresult = kit.SessionResult(51, kit.prompt_for(51), kit.story(51, 24))

        async def both():
            async def timed_check():
                begin = time.monotonic()
                return await fresh.acheck_prompt("What is the capital of Spain?"), time.monotonic() - begin

            return await asyncio.gather(timed_check(), kit.run_session(fresh, aresult, pause_s=0.0))

        start = time.monotonic()
        (adecision, acheck_s), _ = asyncio.run(both())
        asession_s = time.monotonic() - start
        fresh.close()
    finally:
        guard.close()
        hung.close()
    assert decision.allowed and decision.reason == "safe"
    assert 1.5 < check_s < 4.0  # waited out the hung replica's half, then answered by the other
    assert adecision.allowed and adecision.reason == "safe" and 1.5 < acheck_s < 4.0
    assert aresult.outcome == "completed" and aresult.released == aresult.text, aresult
    assert asession_s < 4.0 + 1.0
    assert result.outcome == "completed" and result.released == result.text, result
    assert session_s < 4.0 + 1.0


# -- a replica dies ------------------------------------------------------------------------------
def test_sigkill_of_a_replica_mid_stream_loses_no_session_and_releases_nothing_unjudged(balancer, replicas):
    balancer.wait_up(2)  # sessions spread over both replicas (a loaded box may have failed a check)
    guard = _guard(balancer.url)
    victim = replicas[1]
    results = _sessions(100, 12)
    checks: list[object] = []

    async def kill_mid_run():
        await kit.all_streaming(results)
        await asyncio.sleep(0.3)
        kit.kill(victim.proc, signal.SIGKILL)
        # Gen checks right after the crash: HAProxy and the client both route around the dead replica.
        checks.extend(
            await asyncio.gather(
                *(guard.acheck_prompt(f"question {i}") for i in range(6)),
                guard.acheck_prompt(f"a {kit.MARKER} question"),
            )
        )

    asyncio.run(_run_all(guard, results, pause_s=0.1, during=kill_mid_run))
    guard.close()
    assert victim.proc.wait(5) == -signal.SIGKILL
    _assert_safe(results, [r.log for r in replicas])
    assert [d.allowed for d in checks] == [True] * 6 + [False]
    assert checks[-1].reason == "unsafe"  # blocked by a verdict, not by a failure
    # One replica is left: every session ends by a verdict, none by a failure; some moved.
    assert all(r.outcome in ("completed", "violation") for r in results), results
    assert sum(r.failovers for r in results) >= 1, results


def test_sigterm_drains_a_replica_and_its_sessions_move_to_another(replicas):
    # The client knows both replicas itself (no balancer): client-side failover, sync monitors.
    stay, leave = replicas[2], replicas[3]
    guard = _guard([stay.url, leave.url])
    results = _sessions(200, 8, words=96)  # still streaming when the drain delay ends and 1012 comes
    pool = concurrent.futures.ThreadPoolExecutor(len(results))
    futures = [pool.submit(kit.run_sync_session, guard, r, pause_s=0.1) for r in results]
    time.sleep(1.0)
    stopped_at = time.monotonic()
    leave.signal(signal.SIGTERM)
    health = httpx.get(f"http://{leave.address}/health", timeout=2)  # within the 1.5 s drain delay
    checks = [guard.check_prompt(f"while draining {i}") for i in range(4)]
    done = [f.result(60) for f in futures]
    pool.shutdown()
    code = leave.proc.wait(15)
    exited_after = time.monotonic() - stopped_at
    guard.close()
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert code in (0, -signal.SIGTERM)
    assert exited_after < 1.5 + 5.0 + 3.0  # drain delay + shutdown bound + slack
    assert all(d.allowed for d in checks)
    _assert_safe(done, [r.log for r in replicas])
    assert all(r.outcome in ("completed", "violation") for r in done), done
    assert sum(r.failovers for r in done) >= 1, done  # the drained replica's sessions were handed back


def test_with_no_replica_left_sessions_and_checks_fail_closed(replicas):
    last = replicas[2]
    guard = _guard([last.url, f"http://127.0.0.1:{kit.free_port()}/v1"], on_error="block")
    result = kit.SessionResult(300, kit.prompt_for(300), kit.story(300, 48))
    monitor = guard.stream(result.prompt, holdback=4)
    pieces = kit.deltas(result.text)
    with monitor:
        for piece in pieces[:6]:
            monitor.feed(piece)
        before = monitor.released
        kit.kill(last.proc, signal.SIGKILL)
        last.proc.wait(5)
        start = time.monotonic()
        with pytest.raises(GuardUnavailable):
            for piece in pieces[6:]:
                monitor.feed(piece)
            monitor.finish()
        elapsed = time.monotonic() - start
    assert monitor.released == before  # nothing more came out
    assert elapsed < DEADLINE_S + 3
    decision = guard.check_prompt("anyone there?")
    assert not decision.allowed and decision.reason in ("guard_error", "timeout")
    guard.close()
