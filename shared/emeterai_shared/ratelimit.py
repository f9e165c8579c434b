"""Per-caller token buckets in process memory: the per-caller limits of a front door.

Every key (a client IP, an account, a partner) has a bucket of ``burst`` tokens refilled at
``rate_per_s``; a request takes a token or is refused with the time until the next one
(``429 rate_limited`` with ``Retry-After`` through ``enforce``). Memory is bounded: at most
``max_keys`` buckets are kept and the least recently used goes first, which can only be generous
to that key (it comes back with a full bucket), never unfair to the others. Limits hold per
process: N api processes admit up to N times the rate.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from emeterai_shared.http import shed


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 65_536,
                 clock: Callable[[], float] = time.monotonic):
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a rate limit needs rate_per_s > 0, burst >= 1 and max_keys >= 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when admitted, else the seconds until one is available."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self._rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait

    def enforce(self, key: str) -> None:
        """Admit a request of ``key`` or raise ``429 rate_limited`` with ``Retry-After`` (seconds)."""
        wait = self.take(key)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise shed(429, "rate_limited", f"too many requests; retry in {retry_after} s", retry_after)
