"""Global admission at a front door: shed new work while the platform is behind, by measurement.

Each api process samples, about once a second, the service's **backlog** (work accepted and not
yet done, counted in its database, hence across every process) and how much work was **drained**
in a recent window. The admission limit is the backlog the platform drains within
``target_wait_s`` at the measured rate (never below ``min_limit``; ``drain_estimate``: a higher
rate is taken at once, a lower one, smoothed, only while work waits, since a tier that keeps up
drains what arrives rather than what it can): it follows the drain rate instead of a fixed
number, so a slower tier (fewer workers, a slow bank) lowers it and scaling a tier raises it.
Past the limit a new request gets ``503 overloaded`` with ``Retry-After``: the time the excess
takes to drain at the measured rate. The check itself is arithmetic on the last sample, so
shedding costs nothing while the back tiers drain.

Between samples each process adds what it admitted itself to the sampled backlog; N api
processes can overshoot the limit by what they admit in one sample interval.

Callers told to come back form a virtual queue: each 503 counts one more waiting caller (the
count drains at the measured rate), and ``Retry-After`` covers the excess backlog *plus* the
callers already told to come back, so that they return spread out instead of all at once.

Inside one api process, ``max_in_flight`` front-door requests work at once (more would only queue
for a database connection). A burst past it **waits briefly** in a bounded FIFO queue instead of
being refused at once: a request is shed (``503 busy``) only when the queue is full or its wait
would exceed ``queue_wait_s`` (estimated from the measured time a request holds its slot, and
bounded by a deadline), so a burst an idle platform can serve is served. The callers it sheds form
a virtual queue of their own (``http.ComeBackLine``) that drains at the rate the gate serves (capacity
over the time a slot is held: Little's law), so ``Retry-After`` spreads their returns over the
seconds the gate needs for them instead of sending all of them back after one second (where each
return, shed again, cost CPU the admitted requests needed).

Both refusals that need no more than arithmetic (``overloaded``, and ``busy`` when the line is full
or too slow) are made by ``Admission.shed_early``, which a route declares so that the HTTP
middleware runs it first: before a span, the body, the token or the database.

**Newcomers are paced to the progress of those already in** (``Newcomers``). A request that opens a
new session (a sign-in code, a new account) starts work the platform finishes only several requests
later; a code, a text and a token cost about a third of a credited order. While this process's slots
are all taken, admitting every newcomer would spend the capacity on starting applicants instead of
finishing them (the 4x rush: 40 credited/s during the overload, 141/s once the arrivals stopped). So
while the gate is full, newcomers pass only at ``newcomer_ratio`` times the rate of progress (orders
placed in this process), beyond a burst of ``newcomer_burst`` (by default as many as the gate holds
in its slots and line); the others get ``503 busy`` with a
``Retry-After`` from a line of their own that drains at that rate. With free slots, nobody is paced:
a burst an idle platform can serve is served.

**That line is honest**: each refused newcomer also gets a place in it, a single-use ticket in the
cookie ``emeterai_line`` (``QUEUE_COOKIE``: HttpOnly, SameSite=Strict, path ``/v1``), which a browser
sends back by itself. Coming back with it when told (``Retry-After``, or up to ``TICKET_GRACE_S``
later), the newcomer is let in before those arriving fresh, whose tokens it takes (the bucket may go
into debt). Without the ticket, a returning caller drew again against every fresh arrival, and
each draw lost was one more refusal to answer. A ticket is good only in the process that gave it
(each has its own line); elsewhere its holder counts as fresh. The other refusals (a full line
for a slot, the in-flight cap, ``overloaded``) give no place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie

import asyncpg
from aiohttp import web

from emeterai_shared.http import BUSY_MAX_RETRY_AFTER_S, ApiError, ComeBackLine, retry_at, shed, smoothed
from emeterai_shared.telemetry import (
    ADMISSION_BACKLOG,
    ADMISSION_DRAIN,
    ADMISSION_LIMIT,
    ADMISSION_NEWCOMER_PACE,
    ADMISSION_NEWCOMER_TICKETS,
)

log = logging.getLogger(__name__)
SMOOTHING = 0.3
"""Weight of the newest drain-rate sample (exponentially weighted moving average)."""


@dataclass(frozen=True)
class Sample:
    backlog: int
    """Work accepted and not yet done, across every process of the platform."""
    drained: int
    """Work finished within the last ``window_s`` seconds."""
    window_s: float

    @classmethod
    def measured(cls, backlog: int, drained: int, window_s: float, span_s: float | None) -> Sample:
        """A sample whose rate counts only the part of the window in which work was finishing:
        ``span_s`` is the age of the oldest item drained in the window. A tier that started
        draining 2 s ago at 40/s drains 40/s, not the 8/s that 80 items over a 10 s window say;
        so the limit and ``Retry-After`` follow a burst from its first second."""
        if span_s is None or drained == 0:
            return cls(backlog, drained, window_s)
        return cls(backlog, drained, max(1.0, min(window_s, span_s)))


Probe = Callable[[asyncpg.Connection], Awaitable[Sample]]


@dataclass(frozen=True)
class AdmissionSettings:
    target_wait_s: float = 30.0
    """Longest a newly admitted item should wait for the back tiers at the measured drain rate."""
    min_limit: int = 200
    """Backlog always admitted (at start the drain rate is unknown, and a quiet platform drains 0/s)."""
    sample_interval_s: float = 1.0
    max_retry_after_s: int = 60
    unknown_retry_after_s: int = 3
    """``Retry-After`` past the limit while no drain rate is known yet (nothing finished in the
    window: the back tier just started): come back soon, when the rate will be known. Such callers
    take no place in the virtual queue (they would be counted again when they come back)."""
    max_in_flight: int = 0
    """Front-door requests one api process works on at once (0: no cap). Past it, ``503 busy``:
    when the process's database connections are the bottleneck, extra requests would only queue
    for them (latency grows, goodput falls); a few more wait briefly (below), the rest are refused."""
    queue_wait_s: float = 0.5
    """Longest a request waits for one of the ``max_in_flight`` slots before ``503 busy``."""
    max_queued: int = 0
    """Requests waiting for a slot in one process (0: ``4 x max_in_flight``); past it ``503 busy``."""
    busy_max_retry_after_s: int = BUSY_MAX_RETRY_AFTER_S
    """Longest ``Retry-After`` of a ``503 busy`` (the callers told to come back are spread over at most this)."""
    newcomer_ratio: float = 1.25
    """While every slot is taken, new sessions admitted per unit of progress (0: newcomers are not paced)."""
    newcomer_floor_per_s: float = 5.0
    """Newcomers admitted per second while the gate is full, whatever the progress."""
    newcomer_burst: int = 0
    """Newcomers admitted at once beyond the pace (the bucket's size; 0: the gate's slots plus its
    line, so that a burst the gate can hold is never paced)."""


SATURATED_S = 1.0
"""A tier is behind when more work waits than it drains in this long at the rate just measured."""


def drain_estimate(previous: float, rate: float, backlog: int) -> float:
    """What the back tier drains per second, from the rate just measured (``rate``) and the work
    waiting (``backlog``). A tier that keeps up drains what arrives, not what it can: its rate is a
    floor of its capacity, not a measure of it. So a rate above the estimate is taken as it is (the
    tier was seen to drain that much: the first rate, or a burst after an idle spell, whose first
    rate averaged with the idle spell's would be understated and shed the burst against a limit a
    fraction of what the tier drains), and a lower rate lowers the estimate (smoothed) only while
    the tier is behind (``SATURATED_S``): a stalled or slowed tier with work waiting. An idle tier
    keeps its estimate."""
    if rate >= previous:
        return rate
    if backlog > rate * SATURATED_S:
        return smoothed(previous, rate, SMOOTHING)
    return previous


PROGRESS_WINDOW_S = 1.0
"""How often ``Newcomers`` measures the rate of progress (then smoothed)."""
QUEUE_COOKIE = "emeterai_line"
"""The cookie holding a refused newcomer's place in the line (a ticket)."""
TICKET_GRACE_S = 30.0
"""How long after the time it was told a ticket still lets its holder in first."""
TICKET_EARLY_S = 1.0
"""How much earlier than told a ticket is honoured (clocks and timers are not exact)."""
MAX_TICKETS = 100_000
"""Tickets one process keeps at most (given and not yet past their grace, used or not; past it,
refused newcomers get none): a few MB, whatever the flood."""


class Newcomers:
    """A token bucket for requests that open a new session, refilled at ``ratio`` times the measured
    rate of progress (at least ``floor_per_s``), holding at most ``burst``. It refuses only while
    ``pressed`` (the gate's slots are all taken); admissions while not pressed still take a token,
    so that a pressed gate starts from what was admitted just before. A refused newcomer is told to
    come back after those refused before it, at the pace (``ComeBackLine``)."""

    def __init__(self, ratio: float, floor_per_s: float, burst: int,
                 clock: Callable[[], float] = time.monotonic, max_retry_after_s: int = BUSY_MAX_RETRY_AFTER_S) -> None:
        self.ratio = ratio
        self.floor_per_s = floor_per_s
        self.burst = burst
        self._clock = clock
        self.tokens = float(burst)
        self.progress_per_s = 0.0
        self._progressed = 0
        self._window_at = clock()
        self._filled_at = clock()
        self.come_back = ComeBackLine(max_retry_after_s, clock)
        self._tickets: dict[str, float] = {}
        """Ticket -> the time from which it lets its holder in (monotonic)."""
        self._expiring: deque[tuple[float, str]] = deque()
        """(expiry, ticket) in the order given, to forget those never used."""

    @property
    def tickets(self) -> int:
        """Places given to refused newcomers, not yet used or expired."""
        self._forget_expired(self._clock())
        return len(self._tickets)

    @property
    def pace_per_s(self) -> float:
        """Newcomers admitted per second while pressed."""
        return max(self.floor_per_s, self.ratio * self.progress_per_s)

    def progressed(self) -> None:
        """One unit of progress (an order placed)."""
        self._progressed += 1

    def _refill(self) -> None:
        now = self._clock()
        if now - self._window_at >= PROGRESS_WINDOW_S:
            rate = self._progressed / (now - self._window_at)
            self.progress_per_s = smoothed(self.progress_per_s, rate, SMOOTHING)
            self._progressed, self._window_at = 0, now
        self.tokens = min(float(self.burst), self.tokens + self.pace_per_s * (now - self._filled_at))
        self._filled_at = now

    def admit(self, pressed: bool, ticket: str | None = None, *, secure: bool = False) -> None:
        """Take a token for one newcomer, or raise ``503 busy`` when ``pressed`` and none is left,
        with a place in the line (``QUEUE_COOKIE``, ``secure``: only over HTTPS). A ``ticket`` this
        line gave, presented when told, lets its holder in first (used up)."""
        if not self.ratio:
            return
        self._refill()
        if ticket and self._redeem(ticket):
            self.tokens -= 1  # into debt if need be: those who waited go before the fresh arrivals
            return
        if pressed and self.tokens < 1:
            retry = self.come_back.tell(self.pace_per_s)
            refusal = shed(503, "busy", "this server is busy finishing the purchases of those already signed in: "
                           f"come back in {retry} s to start yours (your place is kept); nothing was done", retry)
            place = self._give(retry, secure)
            if place is not None:
                refusal.headers["Set-Cookie"] = place
            raise refusal
        self.tokens = max(0.0, self.tokens - 1)

    def _redeem(self, ticket: str) -> bool:
        now = self._clock()
        self._forget_expired(now)
        ready = self._tickets.get(ticket)
        if ready is None or now < ready - TICKET_EARLY_S:
            return False  # not ours, used, expired, or too early (then kept for later)
        del self._tickets[ticket]
        return True

    def _give(self, retry_s: int, secure: bool) -> str | None:
        """A new place in the line, usable ``retry_s`` from now: its ``Set-Cookie`` header value."""
        now = self._clock()
        self._forget_expired(now)
        if len(self._expiring) >= MAX_TICKETS:  # given within the last minute or so, used or not
            return None
        ticket = secrets.token_urlsafe(16)
        self._tickets[ticket] = now + retry_s
        self._expiring.append((now + retry_s + TICKET_GRACE_S, ticket))
        cookie: SimpleCookie = SimpleCookie()
        cookie[QUEUE_COOKIE] = ticket
        morsel = cookie[QUEUE_COOKIE]
        morsel["max-age"] = str(int(retry_s + TICKET_GRACE_S))
        morsel["path"] = "/v1"
        morsel["httponly"] = True
        morsel["samesite"] = "Strict"
        if secure:
            morsel["secure"] = True
        return morsel.OutputString()

    def _forget_expired(self, now: float) -> None:
        while self._expiring and self._expiring[0][0] <= now:
            _, ticket = self._expiring.popleft()
            self._tickets.pop(ticket, None)


class SlotGate:
    """``capacity`` slots and a bounded FIFO queue of requests waiting for one, each for at most
    ``max_wait_s``. A request the queue cannot serve in time is refused at once, before it waits:
    the expected wait is the requests ahead times the measured time a slot is held, over the
    capacity. Waiting costs a sleeping coroutine, nothing else. A refused request is told to come
    back when the gate will have served those in line and those refused before it
    (``ComeBackLine``, at ``rate_per_s``)."""

    def __init__(self, capacity: int, max_wait_s: float, max_queued: int,
                 clock: Callable[[], float] = time.monotonic, max_retry_after_s: int = BUSY_MAX_RETRY_AFTER_S) -> None:
        self.capacity = capacity
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.busy = 0
        self.hold_s = 0.0
        """Moving average of how long a request holds its slot."""
        self._clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.come_back = ComeBackLine(max_retry_after_s, clock)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def rate_per_s(self) -> float:
        """Requests the gate serves per second while its slots are full (capacity / time a slot is
        held, Little's law); 0 while no slot has been given back yet."""
        return self.capacity / self.hold_s if self.hold_s > 0 else 0.0

    def refuses(self) -> bool:
        """True when a request arriving now would be refused without waiting: the line is full, or
        the first place free in it would wait longer than ``max_wait_s``. Arithmetic only."""
        if not self.capacity or (self.busy < self.capacity and not self._waiters):
            return False
        expected_s = (len(self._waiters) + 1) * self.hold_s / self.capacity
        return len(self._waiters) >= self.max_queued or expected_s > self.max_wait_s

    def refusal(self) -> ApiError:
        """``503 busy`` for one more caller, with the ``Retry-After`` of its place in the line of
        callers told to come back."""
        retry = self.come_back.tell(self.rate_per_s, ahead=len(self._waiters))
        return shed(503, "busy", f"this server is working on as many requests as it can: come back in {retry} s; "
                    "nothing was done", retry)

    async def enter(self) -> None:
        """Take a slot, waiting in line if need be; ``503 busy`` when the line cannot be served in time."""
        if not self.capacity:
            return
        if self.busy < self.capacity and not self._waiters:
            self.busy += 1
            return
        if self.refuses():
            raise self.refusal()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.max_wait_s):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # handed a slot as the deadline passed: take it
            self._forget(waiter)
            raise self.refusal() from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a slot, but the request is gone: pass the slot on
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        """Take a waiter that gave up out of the line, unless ``leave`` has dropped it already
        (cancelling a task cancels the future it awaits at once; ``leave`` skips such futures)."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def leave(self, held_s: float | None = None) -> None:
        """Give the slot back: to the first request in line, else to the pool."""
        if not self.capacity:
            return
        if held_s is not None:
            self.hold_s = smoothed(self.hold_s, held_s)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it: busy stays the same
                return
        self.busy -= 1


class Admission:
    def __init__(self, service: str, probe: Probe, settings: AdmissionSettings,
                 clock: Callable[[], float] = time.monotonic):
        self.service = service
        self._probe = probe
        self._settings = settings
        self._clock = clock
        self.backlog = 0
        self.drain_per_s = 0.0
        self.limit = settings.min_limit
        self.sampled_at: float | None = None
        self._admitted_since_sample = 0
        self._waiting = 0.0
        """Callers told to come back and not yet drained (the virtual queue)."""
        cap = settings.max_in_flight
        self.gate = SlotGate(cap, settings.queue_wait_s, settings.max_queued or 4 * cap, clock,
                             settings.busy_max_retry_after_s)
        self.newcomers = Newcomers(settings.newcomer_ratio, settings.newcomer_floor_per_s,
                                   settings.newcomer_burst or cap + self.gate.max_queued, clock,
                                   settings.busy_max_retry_after_s)

    def observe(self, sample: Sample) -> None:
        rate = sample.drained / sample.window_s if sample.window_s > 0 else 0.0
        self.drain_per_s = drain_estimate(self.drain_per_s, rate, sample.backlog)
        self.limit = max(self._settings.min_limit, int(self.drain_per_s * self._settings.target_wait_s))
        now = self._clock()
        if self.sampled_at is not None:
            self._waiting = max(0.0, self._waiting - self.drain_per_s * (now - self.sampled_at))
        self.backlog = sample.backlog
        self._admitted_since_sample = 0
        self.sampled_at = now
        ADMISSION_BACKLOG.labels(self.service).set(self.backlog)
        ADMISSION_LIMIT.labels(self.service).set(self.limit)
        ADMISSION_DRAIN.labels(self.service).set(self.drain_per_s)
        ADMISSION_NEWCOMER_PACE.labels(self.service).set(self.newcomers.pace_per_s)
        ADMISSION_NEWCOMER_TICKETS.labels(self.service).set(self.newcomers.tickets)

    def retry_after(self) -> int | None:
        """None when one more item is admitted now, else the seconds to wait (at least 1)."""
        backlog = self.backlog + self._admitted_since_sample
        if backlog < self.limit:
            return None
        if self.drain_per_s <= 0:
            return max(1, min(self._settings.max_retry_after_s, self._settings.unknown_retry_after_s))
        excess = backlog - self.limit + 1 + self._waiting
        return max(1, min(self._settings.max_retry_after_s, math.ceil(excess / self.drain_per_s)))

    @property
    def in_flight(self) -> int:
        return self.gate.busy

    def check(self) -> None:
        """The global check alone (``503 overloaded``): arithmetic on the last sample, so a front
        door may call it before authenticating or reading anything."""
        retry = self.retry_after()
        if retry is not None:
            if self.drain_per_s > 0:
                self._waiting += 1
            raise shed(503, "overloaded",
                       f"the platform is at capacity: your request was not taken; come back in {retry} s "
                       f"(at {retry_at(retry)}), nothing was charged or reserved", retry)

    def shed_early(self) -> None:
        """Every refusal decided by arithmetic alone, for a front door to run before it reads,
        authenticates or traces anything (``Router.add(..., shed_early=...)``): ``503 overloaded``
        (``check``), then ``503 busy`` when this process's line for a slot is full or too slow. A
        request let through still takes its slot with ``slot()`` (and may still be refused there,
        if its wait in line passes the deadline)."""
        self.check()
        if self.gate.refuses():
            raise self.gate.refusal()

    def shed_newcomer_early(self, ticket: str | None = None, *, secure: bool = False) -> None:
        """``shed_early`` for a request that opens a new session: then, while every slot of this
        process is taken, the newcomers' pace (``Newcomers``), with the caller's place in their line
        (``ticket``, from the ``QUEUE_COOKIE`` cookie) if it has one. Arithmetic only."""
        self.shed_early()
        gate = self.gate
        self.newcomers.admit(pressed=bool(gate.capacity) and (gate.busy >= gate.capacity or gate.queued > 0),
                             ticket=ticket, secure=secure)

    def progressed(self) -> None:
        """Count one unit of progress (an order placed), which paces the newcomers."""
        self.newcomers.progressed()

    def admit(self, *, counts: bool = True) -> None:
        """Admit one new item, or raise ``503 overloaded`` with ``Retry-After``. ``counts=False``
        admits a request that adds nothing to the measured backlog (a sign-in beside orders)."""
        self.check()
        if counts:
            self._admitted_since_sample += 1

    @contextlib.asynccontextmanager
    async def slot(self, *, counts: bool = True) -> AsyncIterator[None]:
        """``async with admission.slot():`` around a front-door request: the global check first
        (``503 overloaded``, arithmetic only), then one of this process's ``max_in_flight`` slots,
        waiting briefly in line for one (``503 busy`` when the line cannot be served in time)."""
        self.check()
        await self.gate.enter()
        started = self._clock()
        if counts:
            self._admitted_since_sample += 1
        try:
            yield
        finally:
            self.gate.leave(self._clock() - started)

    async def sample(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            self.observe(await self._probe(conn))

    async def run(self, pool: asyncpg.Pool) -> None:
        """Sample until cancelled; a failed sample keeps the last one (and is logged once per minute)."""
        last_warning = 0.0
        while True:
            try:
                await self.sample(pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._clock() - last_warning > 60:
                    log.warning("%s admission: sampling the backlog failed (%r); keeping the last sample",
                                self.service, exc)
                    last_warning = self._clock()
            await asyncio.sleep(self._settings.sample_interval_s)

    def cleanup_ctx(self, pool: Callable[[], asyncpg.Pool]) -> Callable[[web.Application], AsyncIterator[None]]:
        """For ``app.cleanup_ctx``: sample while the app serves."""
        async def context(_app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(self.run(pool()), name=f"{self.service}-admission")
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return context
