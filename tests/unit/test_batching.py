import asyncio
import threading
import time

import pytest
from qwenguard.core.backends.batching import MicroBatcher
from qwenguard.core.errors import GuardTimeout


def test_concurrent_submissions_coalesce_and_keep_order():
    seen: list[list[int]] = []

    def run(items):
        seen.append(list(items))
        return [i * 10 for i in items]

    batcher = MicroBatcher(run, max_batch=64, max_wait_s=0.05)
    results = {}

    def call(i):
        results[i] = batcher.run([i, i + 100])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: [i * 10, (i + 100) * 10] for i in range(8)}
    assert len(seen) < 8  # fewer forwards than callers
    batcher.close()


async def test_async_callers_coalesce():
    batcher = MicroBatcher(lambda items: [x + 1 for x in items], max_batch=32, max_wait_s=0.05)
    out = await asyncio.gather(*(batcher.arun([i]) for i in range(10)))
    assert out == [[i + 1] for i in range(10)]
    assert batcher.batches_run < 10
    batcher.close()


def test_errors_reach_every_caller_in_the_batch():
    def boom(items):
        raise RuntimeError("model crashed")

    batcher = MicroBatcher(boom)
    with pytest.raises(RuntimeError, match="model crashed"):
        batcher.run([1])
    batcher.close()


def test_timeouts_sync_and_async():
    batcher = MicroBatcher(lambda items: (time.sleep(0.5), items)[1])
    with pytest.raises(GuardTimeout):
        batcher.run([1], timeout=0.05)

    async def go():
        with pytest.raises(GuardTimeout):
            await batcher.arun([1], timeout=0.05)

    asyncio.run(go())
    batcher.close()


def test_max_batch_is_respected():
    sizes = []
    batcher = MicroBatcher(lambda items: (sizes.append(len(items)), items)[1], max_batch=4, max_wait_s=0.05)
    futures = [batcher.submit([i]) for i in range(10)]
    assert [f.result(5) for f in futures] == [[i] for i in range(10)]
    assert max(sizes) <= 4
    batcher.close()


# -- fairness, bounded steps, abandoned work, lifecycle (issue 13) ------------------------------------
class Recorder:
    """A run_batch that takes ``row_s`` per row (a forward grows with its rows) and records which
    request each row came from."""

    def __init__(self, row_s: float = 0.005) -> None:
        self.row_s = row_s
        self.steps: list[list[str]] = []

    def __call__(self, items):
        self.steps.append([tag for tag, _ in items])  # recorded as the step starts: the model is busy
        time.sleep(self.row_s * len(items))
        return [(tag, i * 2) for tag, i in items]


def _wait_for(condition, limit_s=10.0):
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.005)


def test_a_small_request_runs_between_the_steps_of_a_large_one():
    """The attack: one request of 200 items used to run as one uncancellable batch, and every small
    request behind it waited for all of it."""
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch=8, max_wait_s=0.0)
    large = batcher.submit([("large", i) for i in range(200)])
    _wait_for(lambda: len(rec.steps) >= 1)
    small = batcher.run([("small", 7)], timeout=10)
    large_done_when_small_finished = large.done()
    assert small == [("small", 14)]
    assert large.result(20) == [("large", i * 2) for i in range(200)]  # order kept across steps
    assert not large_done_when_small_finished
    step_of_small = next(n for n, tags in enumerate(rec.steps) if "small" in tags)
    assert "large" in rec.steps[step_of_small - 1] and "large" in [t for s in rec.steps[step_of_small + 1 :] for t in s]
    assert max(len(s) for s in rec.steps) <= 8
    batcher.close()


async def test_async_small_requests_interleave_with_a_large_one():
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch=4, max_wait_s=0.0)
    large = asyncio.ensure_future(batcher.arun([("large", i) for i in range(120)], timeout=30))
    while not rec.steps:
        await asyncio.sleep(0.005)
    smalls = await asyncio.gather(*(batcher.arun([(f"s{k}", k)], timeout=10) for k in range(3)))
    assert smalls == [[(f"s{k}", 2 * k)] for k in range(3)]
    assert not large.done()
    assert len(await large) == 120
    batcher.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_timed_out_request_stops_consuming_the_model(mode):
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch=4, max_wait_s=0.0)
    items = [("large", i) for i in range(400)]  # 2 s of work, 100 steps of 4 rows
    with pytest.raises(GuardTimeout):
        if mode == "sync":
            batcher.run(items, timeout=0.2)
        else:
            asyncio.run(batcher.arun(items, timeout=0.2))
    after_timeout = len(rec.steps)
    time.sleep(0.3)  # what would have been 15 more steps
    assert len(rec.steps) <= after_timeout + 1  # at most the step that was running
    assert sum(len(s) for s in rec.steps) < len(items) // 2
    assert batcher.run([("next", 1)], timeout=5) == [("next", 2)]  # the worker is free for others
    batcher.close()


def test_a_cancelled_async_task_withdraws_its_request():
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch=4, max_wait_s=0.0)

    async def go():
        task = asyncio.ensure_future(batcher.arun([("large", i) for i in range(400)]))
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    time.sleep(0.1)
    settled = sum(len(s) for s in rec.steps)
    time.sleep(0.3)
    assert sum(len(s) for s in rec.steps) == settled < 200  # rows started: at most what ran before the cancel
    batcher.close()


def test_steps_are_bounded_by_padded_cost_and_long_items_run_alone():
    widths: list[list[int]] = []

    def run(items):
        widths.append([len(x) for x in items])
        return [len(x) for x in items]

    batcher = MicroBatcher(run, max_batch=16, max_wait_s=0.05, cost=len, max_batch_cost=1000)
    sizes = [30, 900, 40, 500, 35, 480, 1200, 60, 45, 400]
    futures = [batcher.submit(["x" * n]) for n in sizes]
    assert [f.result(5) for f in futures] == [[n] for n in sizes]
    for step in widths:
        assert len(step) == 1 or len(step) * max(step) <= 1000, step
    assert [1200] in widths and [900] in widths  # longer than half the budget: alone
    batcher.close()


class _Owner:
    """An object whose method is the batch function, as a backend's `_generate_batch` is."""

    def __init__(self):
        self.payload = bytearray(10_000_000)  # stands for the model

    def run(self, items):
        return list(items)


def test_a_dropped_batcher_ends_its_thread_and_frees_what_it_ran():
    import gc
    import weakref

    owner = _Owner()
    owner.batcher = MicroBatcher(owner.run)
    assert owner.batcher.run([1, 2], timeout=5) == [1, 2]
    thread = owner.batcher._thread
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()
    assert ref() is None


def test_close_fails_waiting_requests_instead_of_hanging():
    rec = Recorder(row_s=0.05)
    batcher = MicroBatcher(rec, max_batch=1, max_wait_s=0.0)
    pending = batcher.submit([("a", i) for i in range(50)])
    _wait_for(lambda: len(rec.steps) >= 1)
    batcher.close()
    with pytest.raises(Exception, match="closed"):
        pending.result(5)
