"""Partial refunds (a buyer's refund of unused stamps) in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from payment_service.adapters.payouts import Payout


class PartialRefundRepository:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add(self, refund_id: UUID, order_id: UUID, payment_id: UUID, bank: str, serials: Sequence[str],
                  amount: int, now: datetime, *, via: str = "payout") -> bool:
        """Record a partial refund (PAYING), paid back through the payout adapter (``via`` ``payout``)
        or the QRIS acquirer (``qris``); False when this refund id is already recorded."""
        inserted = await self.conn.fetchval(
            """INSERT INTO partial_refunds (refund_id, order_id, payment_id, bank, serials, amount, recorded_at,
                                            next_attempt_at, via)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) ON CONFLICT (refund_id) DO NOTHING RETURNING true""",
            refund_id, order_id, payment_id, bank, list(serials), amount, now, via)
        return bool(inserted)

    async def paying(self, refund_id: UUID) -> bool:
        """Whether ``refund_id`` is a partial refund not paid out yet (locked until the commit)."""
        return bool(await self.conn.fetchval(
            "SELECT true FROM partial_refunds WHERE refund_id = $1 AND status = 'PAYING' FOR UPDATE", refund_id))

    async def refunded_of_order(self, order_id: UUID) -> int:
        """Money already refunded (or being paid out) for the order: partial and whole refunds."""
        total: int = await self.conn.fetchval(
            """SELECT coalesce((SELECT sum(amount) FROM partial_refunds WHERE order_id = $1), 0)
                    + coalesce((SELECT sum(amount) FROM refunds WHERE order_id = $1), 0)""", order_id)
        return int(total)

    async def claim_due(self, now: datetime, limit: int) -> list[Payout]:
        """Lock up to ``limit`` partial refunds due for payout that no other worker holds."""
        rows = await self.conn.fetch(
            """SELECT refund_id, order_id, amount, bank FROM partial_refunds
                WHERE status = 'PAYING' AND via = 'payout' AND next_attempt_at <= $1
                ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED""", now, limit)
        return [Payout(r["refund_id"], r["order_id"], r["amount"], r["bank"]) for r in rows]

    async def paid_out(self, refund_id: UUID, reference: str, now: datetime) -> None:
        await self.conn.execute(
            """UPDATE partial_refunds SET status = 'PAID_OUT', payout_reference = $2, paid_out_at = $3,
                      attempts = attempts + 1, last_error = NULL WHERE refund_id = $1""", refund_id, reference, now)

    async def failed(self, refund_id: UUID, error: str, first_delay_s: float, now: datetime) -> None:
        """A failed attempt: retried after ``first_delay_s`` doubling per attempt, at most an hour."""
        await self.conn.execute(
            """UPDATE partial_refunds SET attempts = attempts + 1, last_error = $2,
                      next_attempt_at = $4::timestamptz
                          + make_interval(secs => least(3600, $3::float8 * power(2, least(attempts, 12))))
                WHERE refund_id = $1""", refund_id, error[:1000], first_delay_s, now)
