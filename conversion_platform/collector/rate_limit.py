"""Per-client rate limiting for the public pixel endpoints: a token bucket per IP.

Each address gets `burst` tokens, refilled at `per_second`; a hit takes one. Without a
token the hit is refused (429) with how long until the next one (`Retry-After`). Buckets
live in this process's memory; idle ones (full again) are dropped when the table grows,
so a flood of addresses can't exhaust memory. With several workers each keeps its own
table, so the effective limit is per worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        max_clients: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def acquire(self, key: str) -> float:
        """Take a token for `key`: 0.0 when allowed, else seconds until one is available."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens, updated = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.per_second)
        if tokens >= 1.0:
            if len(self._buckets) >= self.max_clients and key not in self._buckets:
                self._prune(now)
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.per_second

    def _prune(self, now: float) -> None:
        refill = self.burst / self.per_second
        idle = [k for k, (_, updated) in self._buckets.items() if now - updated >= refill]
        for key in idle:
            del self._buckets[key]
        if len(self._buckets) >= self.max_clients:
            # Everyone is active: forget the oldest half rather than grow without bound.
            oldest = sorted(self._buckets.items(), key=lambda item: item[1][1])
            for key, _ in oldest[: len(oldest) // 2]:
                del self._buckets[key]


def retry_after_header(seconds: float) -> str:
    """`Retry-After` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
