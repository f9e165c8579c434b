"""Partner events, their webhook deliveries and the delivery log in PostgreSQL.

Feed order: a partner's events are inserted under a per-partner transaction lock taken before
the ``bigserial`` id is drawn, so they commit in id order. A reader that has seen id N can
therefore never later find a smaller id appear (which plain sequences allow when transactions
commit out of order), and resuming after a cursor misses nothing. The lock serializes only
transactions that record events for the same partner.

Deliveries are claimed with ``FOR UPDATE SKIP LOCKED`` and leased (``next_attempt_at`` moved past
the attempt's timeout) rather than held locked during the HTTP call: a dispatcher that dies
mid-attempt leaves the row to be tried again when the lease runs out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from order_service.domain.delivery import Attempt, DeliveryStatus, Verdict
from order_service.domain.partner_events import PartnerEvent

_FEED_LOCK = 0x70617274  # advisory lock space "part"; the second key is the partner's hash

_CLAIM = """
WITH wanted AS (SELECT * FROM unnest($1::text[], $2::int[]) AS w (partner_id, n)),
     due AS (SELECT d.id FROM wanted w CROSS JOIN LATERAL (
                 SELECT id FROM webhook_deliveries
                  WHERE partner_id = w.partner_id AND status = 'PENDING' AND next_attempt_at <= now()
                  ORDER BY next_attempt_at LIMIT w.n FOR UPDATE SKIP LOCKED) d)
UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $3)
  FROM partner_events e
 WHERE d.id IN (SELECT id FROM due) AND e.id = d.partner_event_id
RETURNING d.id, d.partner_id, d.attempts, d.created_at, e.event_id, e.type, e.created_at AS event_at, e.data
"""

_DELIVERY_COLUMNS = """d.id, d.partner_id, e.event_id, e.type, d.status, d.attempts, d.next_attempt_at,
                       d.last_status, d.last_error, d.delivered_at, d.created_at"""


@dataclass(frozen=True)
class Job:
    """A claimed delivery: its event, and the failed attempts and age that decide its retries."""

    delivery_id: int
    partner_id: str
    attempts: int
    first_at: datetime
    event: PartnerEvent


def _event(row: asyncpg.Record, at: str = "created_at") -> PartnerEvent:
    return PartnerEvent(row["event_id"], row["type"], row[at], row["data"])


class PartnerEventRepository:
    """Partner events, their webhook deliveries and the delivery log, over one connection."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add_event(self, partner_id: str, event: PartnerEvent, *, deliver: bool) -> bool:
        """Record ``event`` for ``partner_id`` (and its webhook delivery when ``deliver``); False when
        it was recorded before (same event id)."""
        await self.conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _FEED_LOCK, partner_id)
        row_id = await self.conn.fetchval(
            """INSERT INTO partner_events (partner_id, event_id, type, created_at, data) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (event_id) DO NOTHING RETURNING id""",
            partner_id, event.event_id, event.type, event.created_at, event.data)
        if row_id is not None and deliver:
            await self.conn.execute("INSERT INTO webhook_deliveries (partner_event_id, partner_id) VALUES ($1, $2)",
                               row_id, partner_id)
        return row_id is not None

    async def feed(self, partner_id: str, after: int, limit: int) -> list[tuple[int, PartnerEvent]]:
        """The partner's events after cursor ``after``, oldest first, with their cursors."""
        rows = await self.conn.fetch(
            """SELECT id, event_id, type, created_at, data FROM partner_events
                WHERE partner_id = $1 AND id > $2 ORDER BY id LIMIT $3""", partner_id, after, limit)
        return [(r["id"], _event(r)) for r in rows]

    async def claim(self, wanted: Mapping[str, int], lease_s: float) -> list[Job]:
        """Lease up to ``wanted[partner]`` due deliveries of each partner, oldest due first."""
        rows = await self.conn.fetch(_CLAIM, list(wanted), list(wanted.values()), lease_s)
        return [Job(r["id"], r["partner_id"], r["attempts"], r["created_at"], _event(r, "event_at")) for r in rows]

    async def finish(self, job: Job, attempt: Attempt, verdict: Verdict) -> None:
        """Log ``attempt`` and apply its verdict to the delivery."""
        await self.conn.execute(
            """INSERT INTO delivery_attempts (delivery_id, attempt, status_code, error, duration_ms)
               VALUES ($1, $2, $3, $4, $5)""",
            job.delivery_id, job.attempts + 1, attempt.status_code, attempt.error, attempt.duration_ms)
        await self.conn.execute(
            """UPDATE webhook_deliveries
                  SET attempts = attempts + 1, status = $2, next_attempt_at = coalesce($3, next_attempt_at),
                      last_status = $4, last_error = $5,
                      delivered_at = CASE WHEN $2 = 'DELIVERED' THEN now() ELSE delivered_at END
                WHERE id = $1""",
            job.delivery_id, verdict.status.value, verdict.next_attempt_at, attempt.status_code, attempt.error)

    async def deliveries(self, *, partner_id: str | None, status: DeliveryStatus | None,
                         limit: int) -> list[dict[str, Any]]:
        """Deliveries for operators, newest first."""
        rows = await self.conn.fetch(
            f"""SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN partner_events e ON e.id = d.partner_event_id
                 WHERE ($1::text IS NULL OR d.partner_id = $1) AND ($2::text IS NULL OR d.status = $2)
                 ORDER BY d.id DESC LIMIT $3""",
            partner_id, status.value if status else None, limit)
        return [dict(r) for r in rows]

    async def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        rows = await self.conn.fetch(
            """SELECT attempt, at, status_code, error, duration_ms FROM delivery_attempts
                WHERE delivery_id = $1 ORDER BY id""", delivery_id)
        return [dict(r) for r in rows]

    async def resend(self, ids: list[int]) -> list[int]:
        """Make deliveries due now, whatever their status; returns the ids that exist."""
        rows = await self.conn.fetch(
            """UPDATE webhook_deliveries SET status = 'PENDING', next_attempt_at = now()
                WHERE id = ANY($1::bigint[]) RETURNING id""", ids)
        return sorted(r["id"] for r in rows)
