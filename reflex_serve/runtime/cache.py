"""A bounded (bytes) LRU cache of prefix keys/values.

Keys are ``(prefix graph digest, content hash of images and tokens)``: exact matching, so
a hit can only return the KV that the same prefix graph computes for the same input
(ARCHITECTURE.md, "Prefix KV cache"). Hits happen on retries, on shadow / canary runs of
another version that shares the prefix graph, and in gate replays.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

PrefixValue = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CacheStats:
    """Counters since creation; ``bytes`` and ``max_bytes`` in bytes."""

    hits: int
    misses: int
    evictions: int
    bytes: int
    entries: int
    max_bytes: int


def content_key(*arrays: np.ndarray) -> str:
    """BLAKE2b digest of the prefix inputs (e.g. uint8 images, int64 tokens; any shapes)."""
    h = hashlib.blake2b(digest_size=20)
    for arr in arrays:
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


class PrefixCache:
    """Thread-safe LRU of prefix KV arrays, bounded by total bytes.

    Args:
        max_bytes: capacity in bytes; 0 disables caching. Entries larger than the
            capacity are never stored.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple[str, str], tuple[PrefixValue, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    def get(self, key: tuple[str, str]) -> PrefixValue | None:
        """The cached value for ``key`` (marked most recently used), or None on a miss."""
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return item[0]

    def put(self, key: tuple[str, str], value: PrefixValue) -> None:
        """Store ``value`` (arrays are kept, not copied: callers must not mutate them)."""
        size = sum(int(a.nbytes) for a in value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._data.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, self._bytes, len(self._data), self.max_bytes)
