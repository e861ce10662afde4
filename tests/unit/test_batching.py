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
