"""What the databases say about the rush: rates and latencies; the invariants (``lost``,
``duplicates``) are the test kit's (``emeterai_testkit.invariants``), read through ``Databases``.

Nothing here trusts the simulator's counters: every figure is read from the services' own
databases (``emeterai_<svc>`` by default, per their settings), joined across services in Python.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from emeterai_testkit import invariants
from emeterai_testkit.invariants import retrying

TERMINAL_ORDER = ("FULFILLED", "REFUNDED", "FAILED", "EXPIRED")
TERMINAL_STAMPING = ("DONE", "FAILED")


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99 (nearest rank) in ms of values in seconds, with their count."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))], 1)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "n": len(ordered)}


def sustained_rate(times: Sequence[datetime], *, low: float = 0.1, high: float = 0.9,
                   not_before: datetime | None = None) -> float:
    """Events per second between the ``low`` and ``high`` quantiles of their times (the ramp-up
    and the tail left out), and from ``not_before`` on when given (the moment the platform
    saturated: on a machine fast enough that the ramp-up outlasts the first tenth of the events, the
    rate of the ramp is the load's, not the platform's): the rate the platform kept up while busy."""
    window = sustained_window(times, low=low, high=high, not_before=not_before)
    if window is None:
        return 0.0
    start, end, inside = window
    return round(inside / (end - start).total_seconds(), 1)


def sustained_window(times: Sequence[datetime], *, low: float = 0.1, high: float = 0.9,
                     not_before: datetime | None = None) -> tuple[datetime, datetime, int] | None:
    """The window ``sustained_rate`` measures (first and last event counted, events inside). With
    ``not_before``, it starts at the first event from then on if that is later than the ``low``
    quantile, as long as ten events are left before the ``high`` one; otherwise at the quantile."""
    if len(times) < 10:
        return None
    ordered = sorted(times)
    i, j = int(low * (len(ordered) - 1)), int(high * (len(ordered) - 1))
    if not_before is not None:
        later = bisect.bisect_left(ordered, not_before)
        if i < later <= j - 10:
            i = later
    return (ordered[i], ordered[j], j - i) if ordered[j] > ordered[i] else None


def cpu_per_unit(cores: dict[str, float], seconds: float, units: int,
                 load_generator: str = "bench") -> dict[str, Any]:
    """What ``units`` finished in ``seconds`` cost in CPU: milliseconds per unit by process and for
    the platform (every process but the load generator), with the machine's busy cores."""
    busy = cores.get("machine_busy", 0.0)
    processes = {k: v for k, v in cores.items() if k != "machine_busy"}
    per = {k: round(1000 * v * seconds / units, 2) for k, v in processes.items()} if units else {}
    platform = round(sum(v for k, v in per.items() if k != load_generator), 1) if units else None
    return {"machine_busy_cores": busy, "seconds": round(seconds, 1), "units": units,
            "platform_cpu_ms_per_unit": platform,
            "cpu_ms_per_unit_by_process": dict(sorted(per.items(), key=lambda kv: -kv[1]))}


def rate_over(times: Sequence[datetime], start: datetime) -> float:
    """Events per second from ``start`` to the last event."""
    if not times:
        return 0.0
    span = (max(times) - start).total_seconds()
    return round(len(times) / span, 1) if span > 0 else 0.0


def moving_peak(times: Sequence[datetime], window_s: float = 3.0) -> tuple[float, datetime | None]:
    """The highest rate over any ``window_s`` window of events, and where that window ends."""
    ordered = sorted(times)
    best, at, i = 0.0, None, 0
    for j, t in enumerate(ordered):
        while (t - ordered[i]).total_seconds() > window_s:
            i += 1
        rate = (j - i + 1) / window_s
        if rate > best:
            best, at = rate, t
    return round(best, 1), at


def overload_goodput(times: Sequence[datetime], *, plateau_start: datetime, last_arrival: datetime,
                     window_s: float) -> dict[str, Any]:
    """Credited orders per second under overload against the peak, both while applicants arrive.

    **Steady** (``goodput_ratio``): the rate over the plateau's last ``window_s`` (ending at the last
    arrival) against the highest ``window_s`` rate before the last arrival, the ramp included. It is
    measured only when the plateau lasted at least two windows, so that the first window (work
    admitted before the overload still finishing) is left out; otherwise None, with why.
    **Transient** (``transient_goodput_ratio``, the figure of earlier runs): the first ``window_s``
    of the plateau against the highest ``window_s`` rate of the whole phase, the drain after the
    last arrival included (then the platform finishes queued work without taking new applicants,
    so that peak is not a rate it can keep up while applicants arrive)."""
    ordered = sorted(times)
    while_arriving = [t for t in ordered if t <= last_arrival]
    peak, _ = moving_peak(while_arriving, window_s)
    whole_peak, _ = moving_peak(ordered, window_s)
    first = count_between(ordered, plateau_start, plateau_start + timedelta(seconds=window_s)) / window_s
    plateau_s = (last_arrival - plateau_start).total_seconds()
    figures: dict[str, Any] = {
        "plateau_s": round(plateau_s, 2), "window_s": window_s, "peak_while_arriving_per_s": peak,
        "transient_goodput_per_s": round(first, 1), "peak_per_s": whole_peak,
        "transient_goodput_ratio": round(first / whole_peak, 3) if whole_peak else None,
    }
    if plateau_s < 2 * window_s:
        figures.update(goodput_per_s=None, goodput_ratio=None,
                       why=f"the overload lasted {plateau_s:.1f} s, less than two {window_s:g} s windows: "
                           "no steady state to measure (more BUYERS make it longer)")
        return figures
    last = count_between(ordered, last_arrival - timedelta(seconds=window_s), last_arrival) / window_s
    figures.update(goodput_per_s=round(last, 1), goodput_ratio=round(last / peak, 3) if peak else None)
    return figures


def count_between(times: Iterable[datetime], start: datetime, end: datetime) -> int:
    return sum(1 for t in times if start <= t <= end)


def per_unit_by_service(counts: dict[str, float], units: int) -> dict[str, Any] | None:
    """``counts`` per process (``<service>-<kind>``, e.g. statements sent in a phase) divided by the
    ``units`` done then (e.g. credited orders): per service (its api, worker and relay summed), per
    process, and the whole platform; None without counts or units."""
    if not counts or not units:
        return None
    services: dict[str, float] = {}
    for process, n in counts.items():
        service = process.split("-", 1)[0]
        services[service] = services.get(service, 0.0) + n
    return {"total": round(sum(counts.values()) / units, 1),
            "by_service": {s: round(n / units, 1) for s, n in sorted(services.items())},
            "by_process": {p: round(n / units, 1) for p, n in sorted(counts.items())}}


@dataclass
class Databases:
    order: asyncpg.Pool
    payment: asyncpg.Pool
    minting: asyncpg.Pool
    stamping: asyncpg.Pool
    amqp_url: str | None = None
    """The platform's vhost: its parking queues are read for parked money-carrying messages."""
    queues: tuple[str, ...] = ()
    """Every consumer queue of the platform (their ``.parking`` queues are read)."""

    @classmethod
    async def open(cls, urls: dict[str, str], *, amqp_url: str | None = None,
                   queues: Iterable[str] = ()) -> Databases:
        pools = await invariants.open_pools(urls)
        return cls(pools["order"], pools["payment"], pools["minting"], pools["stamping"], amqp_url=amqp_url,
                   queues=tuple(queues))

    def pools(self) -> dict[str, asyncpg.Pool]:
        return {"order": self.order, "payment": self.payment, "minting": self.minting, "stamping": self.stamping}

    async def snapshot(self) -> dict[str, Any]:
        """What the invariants read (``invariants.snapshot``), over the whole databases."""
        return await invariants.snapshot(self.pools(), amqp_url=self.amqp_url, queues=self.queues)

    async def close(self) -> None:
        await asyncio.gather(self.order.close(), self.payment.close(), self.minting.close(),
                             self.stamping.close())

    @retrying
    async def now(self) -> datetime:
        value: datetime = await self.order.fetchval("SELECT clock_timestamp()")
        return value

    # --- progress (polled during the phases) ----------------------------------------------
    @retrying
    async def order_statuses(self, ids: list[str]) -> Counter[str]:
        rows = await self.order.fetch("SELECT status, count(*) AS n FROM orders WHERE id = ANY($1::uuid[])"
                                      " GROUP BY status", ids)
        return Counter({r["status"]: r["n"] for r in rows})

    @retrying
    async def stamping_statuses(self, ids: list[str]) -> Counter[str]:
        rows = await self.stamping.fetch("SELECT status, count(*) AS n FROM stampings WHERE id = ANY($1::uuid[])"
                                         " GROUP BY status", ids)
        return Counter({r["status"]: r["n"] for r in rows})

    @retrying
    async def fulfilled_since(self, since: datetime) -> list[datetime]:
        rows = await self.order.fetch("SELECT at FROM order_history WHERE new_status = 'FULFILLED' AND at >= $1",
                                      since)
        return [r["at"] for r in rows]

    # --- figures after a phase ------------------------------------------------------------
    @retrying
    async def credited(self, ids: list[str]) -> dict[str, Any]:
        """Per order of ``ids``: when its payment was captured (payment db), when it went PAID
        and FULFILLED (order_history)."""
        history = await self.order.fetch(
            """SELECT order_id::text AS id, new_status, min(at) AS at FROM order_history
               WHERE order_id = ANY($1::uuid[]) AND new_status IN ('PAID', 'FULFILLED')
               GROUP BY order_id, new_status""", ids)
        captured = await self.payment.fetch(
            "SELECT order_id::text AS id, captured_at FROM payments WHERE order_id = ANY($1::uuid[])", ids)
        paid = {r["id"]: r["at"] for r in history if r["new_status"] == "PAID"}
        fulfilled = {r["id"]: r["at"] for r in history if r["new_status"] == "FULFILLED"}
        capture = {r["id"]: r["captured_at"] for r in captured}
        return {"captured": capture, "paid": paid, "fulfilled": fulfilled}

    @retrying
    async def stamped(self, ids: list[str]) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.stamping.fetch(
            "SELECT id::text AS id, status, created_at, stamped_at, error FROM stampings"
            " WHERE id = ANY($1::uuid[])", ids)
        return rows

    @retrying
    async def captured_references(self, references: list[str]) -> set[str]:
        """Which of these QRs (our partnerReferenceNo) have a captured payment."""
        rows = await self.payment.fetch(
            "SELECT b.partner_reference_no FROM payments p JOIN bills b USING (bill_id)"
            " WHERE b.partner_reference_no = ANY($1::text[])", references)
        return {r["partner_reference_no"] for r in rows}

    @retrying
    async def serials_issued(self, ids: list[str]) -> int:
        value: int = await self.minting.fetchval(
            "SELECT count(*) FROM serials WHERE order_id = ANY($1::uuid[])", ids)
        return value
