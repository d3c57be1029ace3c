"""Opened volumes kept between requests, per (client, image), within a memory budget.

A corrective click on an image someone already opened should not pay the image encoder again, and
two annotators on two images must not evict each other after every request (MONAI Label's built-in
SAM2 task keeps exactly one). Entries are evicted least-recently-used first when the byte budget or
the entry count is exceeded. Two requests for the same key open the volume once: the second waits.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable


class SessionCache:
    def __init__(self, max_bytes: int = 4 << 30, max_entries: int = 8):
        self.max_bytes = int(max_bytes)
        self.max_entries = max(1, int(max_entries))
        self._entries: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable):
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def get_or_open(self, key: Hashable, opener: Callable[[], object]) -> tuple[object, bool]:
        """(entry, was_cached). `opener` runs outside the cache lock, once per key at a time."""
        with self._lock:
            key_lock = self._opening.setdefault(key, threading.Lock())
        with key_lock:
            entry = self.get(key)
            if entry is not None:
                self.hits += 1
                return entry, True
            self.misses += 1
            try:
                entry = opener()
            except BaseException:
                with self._lock:  # nothing was opened: forget the key's lock too
                    if key not in self._entries:
                        self._opening.pop(key, None)
                raise
            self.put(key, entry)
            return entry, False

    def put(self, key: Hashable, entry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._evict(keep=key)

    def _evict(self, keep: Hashable) -> None:
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries or self._total() > self.max_bytes
        ):
            oldest = next(k for k in self._entries if k != keep)
            del self._entries[oldest]
            self._opening.pop(oldest, None)

    def trim(self, keep=None) -> None:
        """Evict least-recently-used entries again, sparing the entry `keep` (an entry object): entries
        grow after they are put, as slices are encoded on demand."""
        with self._lock:
            key = next((k for k, e in self._entries.items() if e is keep), None)
            self._evict(keep=key)

    def _total(self) -> int:
        return sum(getattr(e, "nbytes", 0) for e in self._entries.values())

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._total()

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._opening.clear()
