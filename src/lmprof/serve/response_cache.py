"""An exact-match cache of whole responses, least recently used first out, bounded in bytes.

Only requests whose answer is fixed by their inputs (greedy, or seeded) are looked up; the
key is everything that decides the answer (see CompletionParams.cache_key). It lives on the
event loop thread only, so it needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

ENTRY_OVERHEAD_BYTES = 200  # the entry object, the dict slot: counted so tiny entries still cost


@dataclass(frozen=True)
class CachedResponse:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def size_bytes(self, key: str) -> int:
        return len(key.encode()) + len(self.text.encode()) + ENTRY_OVERHEAD_BYTES


class ResponseCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, response: CachedResponse) -> None:
        size = response.size_bytes(key)
        if size > self.capacity_bytes:
            return  # would evict everything and still not fit
        old = self._entries.pop(key, None)
        if old is not None:
            self.used_bytes -= old.size_bytes(key)
        self._entries[key] = response
        self.used_bytes += size
        while self.used_bytes > self.capacity_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.used_bytes -= evicted.size_bytes(evicted_key)
