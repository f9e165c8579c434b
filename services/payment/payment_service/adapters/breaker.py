"""A circuit breaker, one per QRIS acquirer and worker process (`AcquirerClient` holds it).

Closed: calls go through; ``threshold`` failed calls in a row (a failed call is one that still
failed after its retries) open it. Open: calls fail at once (`CircuitOpen`) without touching the
network, for ``cool_down_s``. Then half-open: the first call is the probe and the others keep
failing at once; the probe's success closes the breaker, its failure opens it for another cool-down.
Only the outcome of a call admitted in the current state counts (a call started while closed that
fails after the breaker opened changes nothing). An exception other than a failure is an answer (a
refusal): it counts as a success; a cancelled probe gives no verdict and the next call probes.

Hand-written (about seventy lines of code) rather than a library: the asyncio breakers on PyPI (``purgatory``,
``circuitbreaker``; ``pybreaker`` is asyncio-capable through tornado only) let every call through
while half-open, which would send a whole round of the worker's concurrent calls into a dead
acquirer with their timeouts and retries each time the cool-down ends; ``purgatory`` also counts a
cancelled task as a failure and carries a message bus and unit of work that this does not need.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum


class BreakerState(Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpen(Exception):
    """The breaker is open (or half-open with its probe in flight): the call was not made."""

    def __init__(self, name: str, retry_in_s: float) -> None:
        super().__init__(f"circuit {name} is open: calls fail at once for {retry_in_s:.1f} s more")
        self.retry_in_s = retry_in_s


class CircuitBreaker:
    def __init__(self, name: str, *, threshold: int, cool_down_s: float,
                 failure: tuple[type[BaseException], ...], clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[CircuitBreaker], None] | None = None,
                 refusal: Callable[[str, float], Exception] = CircuitOpen) -> None:
        if threshold < 1 or cool_down_s < 0:
            raise ValueError("a breaker needs threshold >= 1 and cool_down_s >= 0")
        self.name, self.threshold, self.cool_down_s = name, threshold, cool_down_s
        self.failure, self.clock, self.on_change, self.refusal = failure, clock, on_change, refusal
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._epoch = 0  # bumped on every change of state: outcomes of calls from an older epoch are ignored
        self._probing = False

    def retry_in(self) -> float:
        """Seconds until a probe may go (0 unless open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.cool_down_s - self.clock())

    def _set(self, state: BreakerState) -> None:
        self.state, self._epoch, self._probing = state, self._epoch + 1, False
        if state is BreakerState.OPEN:
            self.opened_at = self.clock()
        if state is not BreakerState.HALF_OPEN:
            self.failures = 0
        if self.on_change is not None:
            self.on_change(self)

    def _admit(self) -> tuple[int, bool]:
        """Let a call through or raise ``refusal`` (`CircuitOpen`); (the call's epoch, whether it is the probe)."""
        if self.state is BreakerState.OPEN:
            if self.retry_in() > 0:
                raise self.refusal(self.name, self.retry_in())
            self._set(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._probing:
                raise self.refusal(self.name, 0.0)
            self._probing = True
            return self._epoch, True
        return self._epoch, False

    @contextmanager
    def call(self) -> Iterator[None]:
        """``with breaker.call(): await ...``: one call, admitted or refused, its outcome recorded."""
        epoch, probe = self._admit()
        try:
            yield
        except self.failure:
            if epoch == self._epoch:
                self.failures += 1
                if probe or self.failures >= self.threshold:
                    self._set(BreakerState.OPEN)
            raise
        except Exception:
            self._succeeded(epoch)  # another error is an answer (a refusal): the other side is there
            raise
        except BaseException:
            if probe and epoch == self._epoch:
                self._probing = False  # no verdict (cancelled): the next call probes
            raise
        self._succeeded(epoch)

    def _succeeded(self, epoch: int) -> None:
        if epoch == self._epoch:
            if self.state is BreakerState.HALF_OPEN:
                self._set(BreakerState.CLOSED)
            else:
                self.failures = 0
