"""Webhook delivery rules (pure): what an attempt's answer means and when to try again.

A 2xx answer delivers. Anything else (another status, a timeout, a refused connection) is
retried with exponential backoff and jitter, ``initial_s`` doubling up to ``max_s``, for
``max_age_s`` after the event; the last attempt falls on that deadline, then the delivery is
FAILED. Jitter takes up to a fifth off each delay, so deliveries that failed together (a
partner's outage) do not come back all at once, and no delay exceeds its cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

JITTER = 0.2


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Attempt:
    """One try: the partner's HTTP status, or the error that kept it from answering."""

    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Verdict:
    status: DeliveryStatus
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float
    max_s: float
    max_age_s: float

    def delay_s(self, failures: int, jitter: float) -> float:
        """Wait after the ``failures``-th failed attempt; ``jitter`` in [0, 1)."""
        base = min(self.max_s, self.initial_s * 2.0 ** min(failures - 1, 40))
        return base * (1 - JITTER * jitter)

    def judge(self, attempt: Attempt, failures_before: int, first_at: datetime, now: datetime,
              jitter: float) -> Verdict:
        """The delivery's state after ``attempt``, given the failed attempts before it."""
        if attempt.delivered:
            return Verdict(DeliveryStatus.DELIVERED)
        deadline = first_at + timedelta(seconds=self.max_age_s)
        if now >= deadline:
            return Verdict(DeliveryStatus.FAILED)
        wait = timedelta(seconds=self.delay_s(failures_before + 1, jitter))
        return Verdict(DeliveryStatus.PENDING, min(now + wait, deadline))
