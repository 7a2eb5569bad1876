"""The in-process plan cache: LRU, bounded in entries and in bytes, safe across threads."""

from __future__ import annotations

import threading

from audio_middleware.cache import PlanCache
from audio_middleware.plan import Literal, Plan


def plan(size: int) -> Plan:
    return Plan((Literal(b"x" * size),), "audio/mp4")


def test_least_recently_used_entry_goes_first():
    cache = PlanCache(max_entries=2, max_bytes=10**9)
    cache.put("a", plan(1))
    cache.put("b", plan(1))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", plan(1))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2


def test_bytes_bound_evicts_and_refuses_what_cannot_fit():
    one = plan(1000)
    cache = PlanCache(max_entries=100, max_bytes=3 * one.footprint)
    for key in range(5):
        cache.put(key, plan(1000))
    assert len(cache) == 3 and cache.size_bytes <= 3 * one.footprint
    assert cache.get(0) is None and cache.get(4) is not None
    cache.put("huge", plan(10 * one.footprint))
    assert cache.get("huge") is None and len(cache) == 3


def test_replacing_a_key_keeps_the_byte_count_right():
    cache = PlanCache(max_entries=10, max_bytes=10**9)
    cache.put("a", plan(100))
    cache.put("a", plan(5000))
    assert len(cache) == 1 and cache.size_bytes == plan(5000).footprint


def test_disabled_cache_keeps_nothing():
    cache = PlanCache(max_entries=0)
    cache.put("a", plan(1))
    assert cache.get("a") is None and len(cache) == 0


def test_concurrent_use_keeps_the_bounds():
    cache = PlanCache(max_entries=16, max_bytes=40 * plan(100).footprint)
    errors = []

    def work(offset: int) -> None:
        try:
            for index in range(2000):
                key = (offset + index) % 50
                cache.put(key, plan(100))
                cache.get((key + 7) % 50)
        except Exception as error:  # pragma: no cover - the assertion below reports it
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n * 13,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(cache) <= 16
    assert cache.size_bytes == sum(p.footprint for p in cache._items.values())
