"""The per-caller token bucket: burst, refill, Retry-After, separate callers, bounded memory."""

from __future__ import annotations

import pytest
from emeterai_shared.http import ApiError
from emeterai_shared.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 60  # refills up to the burst, not beyond
    assert [limiter.take("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_callers_have_their_own_buckets() -> None:
    limiter = RateLimiter(1.0, 1, clock=Clock())
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0


def test_enforce_answers_429_with_retry_after_in_whole_seconds() -> None:
    limiter = RateLimiter(0.4, 1, clock=Clock())
    limiter.enforce("a")
    with pytest.raises(ApiError) as refused:
        limiter.enforce("a")
    assert (refused.value.status, refused.value.code) == (429, "rate_limited")
    assert refused.value.headers == {"Retry-After": "3"}  # 2.5 s rounded up


def test_memory_is_bounded_least_recently_used_first() -> None:
    clock = Clock()
    limiter = RateLimiter(0.001, 1, max_keys=2, clock=clock)
    for key in ("a", "b", "c"):
        assert limiter.take(key) == 0.0
    assert len(limiter) == 2
    assert limiter.take("c") > 0  # still tracked
    assert limiter.take("a") == 0.0  # forgotten, so it comes back with a full bucket


def test_nonsense_limits_are_refused() -> None:
    for rate, burst in ((0, 1), (1, 0)):
        with pytest.raises(ValueError):
            RateLimiter(rate, burst)
