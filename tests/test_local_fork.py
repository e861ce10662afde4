"""A local guard that checked before ``os.fork()`` (gunicorn ``--preload`` with a warm-up check, multiprocessing's
"fork" start method, Celery prefork) answers in the child (rt50a F12). The micro-batcher's worker thread was the
parent's: in the child every check waited out the policy's deadline and was a ``timeout``; a stream opened in
the child after one in the parent likewise. Each case runs in its own interpreter (a fork of pytest's worker
would carry its threads), the child reporting through a pipe and leaving with ``os._exit``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ["HF_HUB_OFFLINE"] = "1"
    from qwenguard.core import Guard, GuardViolation, Policy

    def in_child(work, wait_s=20.0):
        read, write = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                out = json.dumps(work())
            except BaseException as exc:
                out = json.dumps({"error": repr(exc)})
            os.write(write, out.encode())
            os._exit(0)
        os.close(write)
        deadline = time.monotonic() + wait_s
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return None
            time.sleep(0.05)
        return json.loads(os.read(read, 65536).decode() or "null")
    """
)

GEN = CHILD + textwrap.dedent(
    """
    guard = Guard.from_pretrained("demo", policy=Policy(timeout_s=8), device="cpu")
    assert guard.check_prompt("How can I make a bomb at home?").reason == "unsafe"  # the warm-up, in the parent

    def work():
        start = time.monotonic()
        d = guard.check_prompt("How can I make a bomb at home? Thanks!")
        a = guard.check_prompt("What is the capital of France? Thanks!")
        return {"reasons": [d.reason, a.reason], "s": time.monotonic() - start}

    print(json.dumps([in_child(work), in_child(work)]))
    """
)

STREAM = CHILD + textwrap.dedent(
    """
    guard = Guard.from_pretrained("demo", stream_model="demo-stream", policy=Policy(timeout_s=8), device="cpu")
    SAFE = "The capital of France is Paris. It lies on the Seine."

    def run_stream():
        out = ""
        with guard.stream("What is the capital of France?", holdback=4) as monitor:
            for i in range(0, len(SAFE), 4):
                out += monitor.feed(SAFE[i : i + 4])
            out += monitor.finish()
        return out

    assert run_stream() == SAFE  # the warm-up stream, in the parent

    def work():
        start = time.monotonic()
        return {"released": run_stream(), "s": time.monotonic() - start}

    print(json.dumps(in_child(work)))
    """
)


def _run(script: str):
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_local_check_after_fork_answers_in_the_child():
    results = _run(GEN)
    for result in results:  # two children of the same parent: each starts its own worker
        assert result is not None, "the child did not answer"
        assert result.get("reasons") == ["unsafe", "safe"], result
        assert result["s"] < 8, result  # not a timeout


def test_local_stream_after_fork_answers_in_the_child():
    result = _run(STREAM)
    assert result is not None, "the child did not answer"
    assert result.get("released") == "The capital of France is Paris. It lies on the Seine.", result
    assert result["s"] < 8, result


POOLS = CHILD + textwrap.dedent(
    """
    from qwenguard.core.streaming.parallel import PendingCheck

    guard = Guard.from_pretrained("demo", policy=Policy(timeout_s=5), device="cpu")
    ANSWER = "The capital of France is Paris. It is a large city on the Seine. "

    def work():
        start = time.monotonic()
        pending = PendingCheck.start(lambda: guard.check_prompt("What is the capital of France?"))
        parallel = pending.wait().reason  # a parallel input check (LangChain/LlamaIndex parallel_input=True)
        out = ""
        with guard.stream("Tell me about Paris.", holdback=8) as monitor:  # Gen windows, checked by a pool
            out += monitor.feed(ANSWER)
            out += monitor.finish()
        return {"parallel": parallel, "released": out, "s": time.monotonic() - start}

    work()  # the parent uses both pools first
    print(json.dumps(in_child(work)))
    """
)


def test_parallel_input_and_window_checks_after_fork_run_in_the_child():
    """rt52b F1: the thread pools of parallel input checks and stream windows were the parent's: in the child a
    parallel input check never ran (its wait hung) and every window check waited out its deadline."""
    result = _run(POOLS)
    assert result is not None, "the child did not answer"
    assert result.get("parallel") == "safe", result
    assert result["released"] == "The capital of France is Paris. It is a large city on the Seine. ", result
    assert result["s"] < 5, result
