"""What the databases say about the rush: rates, latencies and the invariants.

Nothing here trusts the simulator's counters: every figure is read from the services' own
databases (``emeterai_<svc>`` by default, per their settings), joined across services in Python.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import asyncpg
from emeterai_shared.messaging import connect
from emeterai_shared.stranding import ParkedWork, live_outbox_orders, parked_in_queues, parked_outbox, stranded

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
TRANSIENT = (asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError,
             asyncpg.InterfaceError, ConnectionError, OSError, TimeoutError)
RETRY_FOR_S = 120.0


def retrying(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Retry a query while PostgreSQL refuses connections (it is shared: other sessions' tests
    and the platform itself may hold every slot for a while)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 0.2
        while True:
            try:
                return await method(*args, **kwargs)
            except TRANSIENT as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("%s: %r, retrying", method.__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper

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


def sustained_rate(times: Sequence[datetime], *, low: float = 0.1, high: float = 0.9) -> float:
    """Events per second between the ``low`` and ``high`` quantiles of their times (the ramp-up
    and the tail left out): the rate the platform kept up while it was busy."""
    if len(times) < 10:
        return 0.0
    ordered = sorted(times)
    i, j = int(low * (len(ordered) - 1)), int(high * (len(ordered) - 1))
    span = (ordered[j] - ordered[i]).total_seconds()
    return round((j - i) / span, 1) if span > 0 else 0.0


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


def count_between(times: Iterable[datetime], start: datetime, end: datetime) -> int:
    return sum(1 for t in times if start <= t <= end)


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
    @retrying
    async def open(cls, urls: dict[str, str], *, amqp_url: str | None = None,
                   queues: Iterable[str] = ()) -> Databases:
        order, payment, minting, stamping = await asyncio.gather(
            *(asyncpg.create_pool(urls[name], min_size=1, max_size=1)
              for name in ("order", "payment", "minting", "stamping")))
        return cls(order, payment, minting, stamping, amqp_url=amqp_url, queues=tuple(queues))

    def pools(self) -> dict[str, asyncpg.Pool]:
        return {"order": self.order, "payment": self.payment, "minting": self.minting, "stamping": self.stamping}

    async def parked_work(self) -> tuple[list[ParkedWork], set[str]]:
        """Money-carrying parked work (outbox rows the relays parked, messages in the parking queues)
        and the orders with outbox rows still to publish (work still moving)."""
        parked: list[ParkedWork] = []
        live: set[str] = set()
        for service, pool in self.pools().items():
            parked += await parked_outbox(pool, service)
            live |= await live_outbox_orders(pool)
        if self.amqp_url and self.queues:
            connection = await connect(self.amqp_url, name="rush-checks")
            try:
                parked += await parked_in_queues(connection, self.queues)
            finally:
                await connection.close()
        return parked, live

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
    async def serials_issued(self, ids: list[str]) -> int:
        value: int = await self.minting.fetchval(
            "SELECT count(*) FROM serials WHERE order_id = ANY($1::uuid[])", ids)
        return value

    # --- invariants (the whole databases, every run so far) -------------------------------
    @retrying
    async def unresolved_captures(self) -> int:
        """Captured payments still on their way (neither credited nor refunded, and not stranded
        behind parked work, which nothing moves: waiting for those is pointless)."""
        lost = await self.lost()
        return len(lost["lost_orders"]) - int(lost["stranded"])

    @retrying
    async def lost(self) -> dict[str, Any]:
        """Captured payments whose order is neither FULFILLED with every serial credited (in the
        order's serials and in the buyer's stamping quota) nor refunded (REFUNDED, or a refund
        recorded). Those whose only pending step is a parked message are ``stranded``: lost for
        sure, whatever the wait, and each names its parked message (``parked``)."""
        payments = await self.payment.fetch(
            """SELECT p.order_id::text AS id, b.quantity FROM payments p JOIN bills b USING (bill_id)""")
        refunded = {r["id"] for r in await self.payment.fetch("SELECT order_id::text AS id FROM refunds")}
        ids = [r["id"] for r in payments]
        orders = {r["id"]: r for r in await self.order.fetch(
            """SELECT o.id::text AS id, o.status, o.quantity, cardinality(o.serials) AS in_order,
                      (SELECT count(*) FROM order_serials s WHERE s.order_id = o.id) AS order_serials
               FROM orders o WHERE o.id = ANY($1::uuid[])""", ids)}
        quota = {r["id"]: r["n"] for r in await self.stamping.fetch(
            "SELECT order_id::text AS id, count(*) AS n FROM stamps WHERE order_id = ANY($1::uuid[])"
            " GROUP BY order_id", ids)}
        lost, credited, refunds = [], 0, 0
        for p in payments:
            order = orders.get(p["id"])
            if p["id"] in refunded or (order is not None and order["status"] == "REFUNDED"):
                refunds += 1
            elif (order is not None and order["status"] == "FULFILLED"
                  and order["in_order"] == order["order_serials"] == quota.get(p["id"], 0) == p["quantity"]):
                credited += 1
            else:
                lost.append({"order_id": p["id"], "status": order["status"] if order else None,
                             "serials": order["order_serials"] if order else None,
                             "quota": quota.get(p["id"], 0)})
        stuck: dict[str, list[ParkedWork]] = {}
        if lost:
            parked, live = await self.parked_work()
            stuck = stranded((entry["order_id"] for entry in lost), parked, live)
            for entry in lost:
                if entry["order_id"] in stuck:
                    entry["parked"] = [work.describe() for work in stuck[entry["order_id"]]]
        return {"captured": len(payments), "credited": credited, "refunded": refunds, "stranded": len(stuck),
                "lost_orders": lost}

    @retrying
    async def duplicates(self) -> dict[str, Any]:
        """Serials issued twice or used twice, each way it could show."""
        minting_serials = {r["sn"]: r["order_id"] for r in await self.minting.fetch(
            "SELECT sn, order_id::text AS order_id FROM serials WHERE order_id IS NOT NULL")}
        over_issued = await self.minting.fetchval(
            """SELECT count(*) FROM (SELECT i.order_id FROM issuances i JOIN serials s USING (order_id)
               GROUP BY i.order_id, i.quantity HAVING count(*) > i.quantity) x""")
        order_serials = await self.order.fetch("SELECT sn, order_id::text AS order_id FROM order_serials")
        issued_elsewhere = sum(1 for r in order_serials if minting_serials.get(r["sn"]) != r["order_id"])
        in_two_orders = await self.order.fetchval(
            """SELECT count(*) FROM (SELECT sn FROM orders, unnest(serials) AS sn GROUP BY sn
               HAVING count(DISTINCT id) > 1) x""")
        in_two_order_rows = await self.order.fetchval(
            "SELECT count(*) FROM (SELECT sn FROM order_serials GROUP BY sn HAVING count(*) > 1) x")
        used_twice = await self.stamping.fetchval(
            "SELECT count(*) FROM (SELECT sn FROM stampings WHERE status = 'DONE' GROUP BY sn"
            " HAVING count(*) > 1) x")
        done = {r["sn"]: r["id"] for r in await self.stamping.fetch(
            "SELECT sn, id::text AS id FROM stampings WHERE status = 'DONE'")}
        registry = await self.minting.fetch(
            "SELECT sn, stamping_id::text AS id FROM serials WHERE status = 'STAMPED'")
        stamped_by_other = sum(1 for r in registry if r["sn"] in done and done[r["sn"]] != r["id"])
        quota_elsewhere = await self.stamping.fetch("SELECT sn, order_id::text AS order_id FROM stamps")
        quota_mismatch = sum(1 for r in quota_elsewhere if minting_serials.get(r["sn"]) != r["order_id"])
        reuse_refused = await self.minting.fetchval("SELECT count(*) FROM reuse_attempts")
        parts = {
            "minting_issued_beyond_quantity": over_issued,
            "order_serial_not_issued_to_that_order": issued_elsewhere,
            "serial_in_two_orders": in_two_orders + in_two_order_rows,
            "quota_serial_not_issued_to_that_order": quota_mismatch,
            "serial_in_two_done_stampings": used_twice,
            "registry_stamped_by_another_stamping": stamped_by_other,
        }
        return {"total": sum(parts.values()), "parts": parts,
                "reuse_attempts_refused": reuse_refused}
