"""A small in-process sliding-window limiter for public endpoints (login, patient links).

Per API process; behind several replicas the effective limit is multiplied by their
count, which is acceptable for brute-force damping (PIN lockout is enforced in the database).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from storage.errors import TooManyRequests


class RateLimiter:
    def __init__(self, limit: int, per_seconds: float):
        self.limit = limit
        self.per_seconds = per_seconds
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str) -> None:
        """Count one attempt for key; raise TooManyRequests past the limit."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits[key]
            while hits and now - hits[0] > self.per_seconds:
                hits.popleft()
            if len(hits) >= self.limit:
                raise TooManyRequests("操作太频繁，请一分钟后再试 / too many attempts, wait a minute")
            hits.append(now)
            if len(self._hits) > 100_000:  # bound memory under a spray of addresses
                self._hits.clear()
