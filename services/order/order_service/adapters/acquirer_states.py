"""The order service's projection of the QRIS acquirers' availability (``payment.acquirer_state.v1``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class QrisOutage:
    """New QRIS orders cannot get a QR now: the acquirer that takes them is unreachable."""

    acquirer_id: str
    retry_at: datetime | None
    """When the payment worker tries the acquirer again (its breaker's next probe), if known."""


class AcquirerStates:
    def __init__(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        self.conn = conn

    async def record(self, acquirer_id: str, available: bool, retry_at: datetime | None, takes_new_bills: bool,
                     changed_at: datetime) -> bool:
        """Keep a report unless a newer one is kept already; whether it was kept."""
        kept = await self.conn.fetchval(
            """INSERT INTO acquirer_states (acquirer_id, available, retry_at, takes_new_bills, changed_at)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (acquirer_id) DO UPDATE SET available = excluded.available, retry_at = excluded.retry_at,
                   takes_new_bills = excluded.takes_new_bills, changed_at = excluded.changed_at
               WHERE acquirer_states.changed_at <= excluded.changed_at
               RETURNING true""", acquirer_id, available, retry_at, takes_new_bills, changed_at)
        return bool(kept)

    async def qris_outage(self) -> QrisOutage | None:
        row = await self.conn.fetchrow(
            "SELECT acquirer_id, retry_at FROM acquirer_states WHERE takes_new_bills AND NOT available"
            " ORDER BY retry_at DESC NULLS FIRST LIMIT 1")
        return QrisOutage(row["acquirer_id"], row["retry_at"]) if row is not None else None


class QrisAvailability:
    """The QRIS outage as this api process last read it (``AcquirerStates.qris_outage``), kept for
    ``ttl_s`` seconds: ``POST /v1/orders`` by QRIS and ``GET /v1/pricing`` read the table at most
    once per ``ttl_s`` instead of once per request, and learn a change at most ``ttl_s`` late (the
    payment worker's reports come seconds apart anyway). ``ttl_s`` 0: read every time."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._outage: QrisOutage | None = None
        self._fresh_until = float("-inf")

    async def outage(self, conn: asyncpg.Connection | asyncpg.Pool) -> QrisOutage | None:
        """The outage now, read on ``conn`` (a connection, or the pool: one is taken only to read)
        when the one kept is older than ``ttl_s``."""
        asked = self._clock()
        if asked < self._fresh_until:
            return self._outage
        outage = await AcquirerStates(conn).qris_outage()
        self._outage, self._fresh_until = outage, asked + self.ttl_s
        return outage
