"""A small thread-safe least-recently-used map (the app's encoding cache and its custom banks)."""
from __future__ import annotations

import threading
from collections import OrderedDict


class LRU:
    """At most `size` items; reading an item makes it the most recent, adding one beyond `size` drops the oldest."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> list:
        """Store `value`; returns the (key, value) pairs dropped to make room."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            dropped = []
            while len(self._items) > self.size:
                dropped.append(self._items.popitem(last=False))
            return dropped

    def __contains__(self, key):
        with self._lock:
            return key in self._items

    def __len__(self):
        with self._lock:
            return len(self._items)
