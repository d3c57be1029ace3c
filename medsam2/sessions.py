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

    def put_if_room(self, key: Hashable, entry) -> bool:
        """Add `entry` only if it fits in the budget (count and bytes) without evicting anything: for
        speculative work (encode_ahead.py), which must never push out an image somebody has open."""
        with self._lock:
            if key in self._entries or len(self._entries) + 1 > self.max_entries:
                return False
            if self._total() + getattr(entry, "nbytes", 0) > self.max_bytes:
                return False
            self._entries[key] = entry
            return True

    def holds(self, entry) -> bool:
        """Whether this very entry is still cached (under any key)."""
        with self._lock:
            return any(e is entry for e in self._entries.values())

    def discard(self, key: Hashable, entry) -> None:
        """Remove `key` if it still holds `entry`."""
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
                self._opening.pop(key, None)

    def rekey(self, old: Hashable, new: Hashable) -> bool:
        """Move the entry under `old` to `new` (most recently used); False if `old` is gone or `new` taken."""
        with self._lock:
            if old not in self._entries or new in self._entries:
                return False
            self._entries[new] = self._entries.pop(old)
            self._opening.pop(old, None)
            return True

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
