"""A small thread-safe LRU of complete plans, bounded in entries and bytes.

Keys carry the source's validators (ETag, or Last-Modified + length), so a
changed file never reuses a stale plan; repeated and ranged requests for the
same file skip parsing the moov entirely.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from .plan import Plan


class PlanCache:
    """LRU mapping key -> Plan; ``max_entries=0`` disables it."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, Plan] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Plan | None:
        with self._lock:
            plan = self._items.get(key)
            if plan is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return plan

    def put(self, key: Hashable, plan: Plan) -> None:
        size = plan.footprint
        if not self.max_entries or size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.footprint
            self._items[key] = plan
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.footprint

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
