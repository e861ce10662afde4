"""The verdict cache is bounded in bytes, not only in entries (issue 13)."""

import gc
import tracemalloc

from faults import ScriptedBackend
from qwenguard.core import Guard, Risk, Verdict
from qwenguard.core.cache import DEFAULT_CACHE_BYTES, VerdictCache, cache_key

SAFE = "Safety: Safe\nCategories: None"


def test_cached_checks_do_not_keep_their_texts_alive():
    """The attack: distinct 250 KB texts, each checked once. The cache kept every text in its key
    (4,096 entries x 1 MB = 4 GB at the defaults)."""
    backend = ScriptedBackend(lambda c: SAFE)
    guard = Guard(backend)  # default cache
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            text = f"document {i}: " + "lorem ipsum " * 21_000  # ~250 KB, 10 MB in all
            assert guard.check_tool_result("fetch", text).allowed
            backend.calls.clear()  # the test double's own log must not hold them either
            del text
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(guard.cache) == 40  # all cached ...
    assert held < 1_000_000, held  # ... in well under 1 MB, not 10 MB
    again = guard.check_tool_result("fetch", "document 3: " + "lorem ipsum " * 21_000)
    assert again.cached  # keys still tell the texts apart


def test_entries_with_large_verdicts_stay_under_the_byte_bound():
    cache = VerdictCache(maxsize=4096, max_bytes=2_000_000)
    raw = "Safety: Safe\nCategories: None\n---\n" * 6_000  # ~200 KB, as a windowed document's joined answers
    for i in range(50):
        cache.put(
            cache_key("m", "prompt", [{"role": "user", "content": f"text {i}"}]), Verdict(Risk.SAFE, raw=raw + str(i))
        )
        assert cache.nbytes <= cache.max_bytes
    assert 5 <= len(cache) <= 10  # the oldest were evicted, the newest kept
    newest = cache_key("m", "prompt", [{"role": "user", "content": "text 49"}])
    assert cache.get(newest) is not None
    gc.collect()
    tracemalloc.start()
    try:
        cache.clear()
        cache2 = VerdictCache(max_bytes=2_000_000)
        for i in range(50):
            cache2.put(("m", "p", bytes([i]) * 16), Verdict(Risk.SAFE, raw=raw + str(i)))
        real = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert real <= 1.2 * cache2.max_bytes  # what is accounted is what is held


def test_an_entry_larger_than_the_whole_cache_is_not_stored():
    cache = VerdictCache(max_bytes=10_000)
    cache.put(("m", "p", b"k" * 16), Verdict(Risk.SAFE, raw="x" * 20_000))
    assert len(cache) == 0 and cache.nbytes == 0


def test_keys_separate_roles_and_turn_boundaries():
    a = cache_key("m", "prompt", [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}])
    b = cache_key("m", "prompt", [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}])
    c = cache_key("m", "prompt", [{"role": "assistant", "content": "ab"}, {"role": "user", "content": "c"}])
    assert len({a, b, c}) == 3
    assert cache_key("m", "prompt", [{"role": "user", "content": "\ud800"}])  # a lone surrogate hashes


def test_default_byte_bound_is_stated():
    assert Guard(ScriptedBackend(lambda c: SAFE)).cache.max_bytes == DEFAULT_CACHE_BYTES == 16 * 1024 * 1024
    assert Guard(ScriptedBackend(lambda c: SAFE), cache_bytes=0).cache.maxsize == 0  # 0 bytes: cache off
