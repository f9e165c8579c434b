"""SQL of QRIS bills: the QRs to generate, the QR once generated, the acquirer's notifications, the
refunds sent through qr-mpm-refund and the captured QRIS payments a settlement list is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from emeterai_shared.uow import UnitOfWork, outbox_insert

from payment_service.domain.reconciliation import Settled, Window


@dataclass(frozen=True)
class QrToGenerate:
    bill_id: UUID
    order_id: UUID
    acquirer: str
    partner_reference_no: str
    amount: int
    expires_at: datetime
    attempts: int


@dataclass(frozen=True)
class QrToQuery:
    bill_id: UUID
    acquirer: str
    partner_reference_no: str
    reference_no: str
    queries: int


@dataclass(frozen=True)
class QrRefund:
    partner_refund_no: str
    refund_id: UUID
    """A whole-order refund's (``refunds``) or a buyer's partial refund's (``partial_refunds``)."""
    order_id: UUID
    acquirer: str
    partner_reference_no: str
    reference_no: str
    amount: int
    attempts: int


class QrisStore:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def to_generate(self, now: datetime, limit: int) -> list[QrToGenerate]:
        rows = await self.conn.fetch(
            """SELECT bill_id, order_id, bank AS acquirer, partner_reference_no, amount, expires_at,
                      qr_attempts AS attempts
                 FROM bills WHERE method = 'qris' AND qr_content IS NULL AND status = 'OPEN'
                  AND (qr_next_attempt_at IS NULL OR qr_next_attempt_at <= $1)
                ORDER BY created_at LIMIT $2""", now, limit)
        return [QrToGenerate(**dict(r)) for r in rows]

    async def to_query(self, now: datetime, limit: int) -> list[QrToQuery]:
        rows = await self.conn.fetch(
            """SELECT bill_id, bank AS acquirer, partner_reference_no, qr_reference_no AS reference_no,
                      qr_queries AS queries
                 FROM bills WHERE method = 'qris' AND qr_content IS NOT NULL AND status = 'OPEN'
                  AND qr_next_query_at <= $1 AND expires_at >= $1
                ORDER BY qr_next_query_at LIMIT $2""", now, limit)
        return [QrToQuery(**dict(r)) for r in rows]

    async def next_query(self, bill_id: UUID, at: datetime) -> None:
        await self.conn.execute(
            "UPDATE bills SET qr_queries = qr_queries + 1, qr_next_query_at = $2 WHERE bill_id = $1", bill_id, at)

    async def postpone(self, bill_id: UUID, next_attempt_at: datetime) -> None:
        await self.conn.execute(
            "UPDATE bills SET qr_attempts = qr_attempts + 1, qr_next_attempt_at = $2 WHERE bill_id = $1",
            bill_id, next_attempt_at)

    async def set_qr(self, bill_id: UUID, reference_no: str, qr_content: str, now: datetime,
                     first_query_at: datetime, announce: UnitOfWork) -> bool:
        """Keep the generated QR (first queried at ``first_query_at``) and write the messages
        ``announce`` holds to the outbox, in one statement (atomic without a transaction: one round
        trip); False, writing nothing, when another worker kept it first."""
        return bool(await self.conn.fetchval(
            f"""WITH kept AS (UPDATE bills SET qr_reference_no = $2, qr_content = $3, qr_generated_at = $4,
                                               qr_next_query_at = $5
                               WHERE bill_id = $1 AND qr_content IS NULL RETURNING bill_id),
                     announced AS ({outbox_insert(6)} WHERE EXISTS (SELECT 1 FROM kept))
                SELECT EXISTS (SELECT 1 FROM kept)""",
            bill_id, reference_no, qr_content, now, first_query_at, *announce.take()))

    async def qr_reference_of(self, bill_id: UUID) -> str | None:
        value: str | None = await self.conn.fetchval("SELECT qr_reference_no FROM bills WHERE bill_id = $1", bill_id)
        return value

    async def record_notification(self, acquirer: str, reference_no: str, status: str, partner_reference_no: str,
                                  bill_id: UUID | None, amount: int | None, rrn: str | None,
                                  body: dict[str, Any]) -> bool:
        """Record a notification; False when the same (reference, status) was recorded before."""
        return bool(await self.conn.fetchval(
            """INSERT INTO qris_notifications (acquirer, reference_no, status, partner_reference_no, bill_id, amount,
                                               rrn, body)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING true""",
            acquirer, reference_no, status, partner_reference_no, bill_id, amount, rrn, body))

    async def due_to_expire(self, now: datetime, limit: int) -> list[QrToQuery]:
        rows = await self.conn.fetch(
            """SELECT bill_id, bank AS acquirer, partner_reference_no, coalesce(qr_reference_no, '') AS reference_no,
                      qr_queries AS queries
                 FROM bills WHERE method = 'qris' AND status = 'OPEN' AND expires_at < $1
                  AND (qr_expiry_retry_at IS NULL OR qr_expiry_retry_at <= $1)
                ORDER BY expires_at LIMIT $2""", now, limit)
        return [QrToQuery(**dict(r)) for r in rows]

    async def resume(self, acquirer: str, now: datetime) -> int:
        """The acquirer is reachable again: everything its outage postponed is due now (QRs to
        generate, pending QRs to query, expiries to finish, refunds to send) instead of at the end of
        backoffs that grew while it was down. Returns how many bills and refunds were brought forward."""
        bills = await self.conn.fetchval(
            """WITH due AS (
                 UPDATE bills SET qr_next_attempt_at = least(qr_next_attempt_at, $2),
                                  qr_next_query_at = least(qr_next_query_at, $2),
                                  qr_expiry_retry_at = least(qr_expiry_retry_at, $2)
                  WHERE method = 'qris' AND status = 'OPEN' AND bank = $1
                    AND (qr_next_attempt_at > $2 OR qr_next_query_at > $2 OR qr_expiry_retry_at > $2)
                 RETURNING 1)
               SELECT count(*) FROM due""", acquirer, now)
        refunds = await self.conn.fetchval(
            """WITH due AS (
                 UPDATE qris_refunds SET next_attempt_at = $2
                  WHERE status = 'PENDING' AND acquirer = $1 AND next_attempt_at > $2 RETURNING 1)
               SELECT count(*) FROM due""", acquirer, now)
        return int(bills) + int(refunds)

    async def retry_expiry(self, bill_id: UUID, at: datetime) -> None:
        await self.conn.execute("UPDATE bills SET qr_expiry_retry_at = $2 WHERE bill_id = $1", bill_id, at)

    async def add_refund(self, partner_refund_no: str, refund_id: UUID, bill_id: UUID, acquirer: str,
                         partner_reference_no: str, reference_no: str, amount: int, now: datetime) -> bool:
        return bool(await self.conn.fetchval(
            """INSERT INTO qris_refunds (partner_refund_no, refund_id, bill_id, acquirer, partner_reference_no,
                                         reference_no, amount, recorded_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING true""",
            partner_refund_no, refund_id, bill_id, acquirer, partner_reference_no, reference_no, amount, now))

    async def due_refunds(self, now: datetime, limit: int) -> list[QrRefund]:
        rows = await self.conn.fetch(
            """SELECT r.partner_refund_no, r.refund_id, b.order_id, r.acquirer, r.partner_reference_no,
                      r.reference_no, r.amount, r.attempts
                 FROM qris_refunds r JOIN bills b USING (bill_id)
                WHERE r.status = 'PENDING' AND r.next_attempt_at <= $1
                ORDER BY r.next_attempt_at LIMIT $2""", now, limit)
        return [QrRefund(**dict(r)) for r in rows]

    async def refund_done(self, partner_refund_no: str, refund_no: str, now: datetime) -> bool:
        return bool(await self.conn.fetchval(
            """UPDATE qris_refunds SET status = 'DONE', refund_no = $2, refunded_at = $3, attempts = attempts + 1
                WHERE partner_refund_no = $1 AND status = 'PENDING' RETURNING true""",
            partner_refund_no, refund_no, now))

    async def refund_failed(self, partner_refund_no: str, error: str, next_attempt_at: datetime) -> None:
        await self.conn.execute(
            """UPDATE qris_refunds SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3
                WHERE partner_refund_no = $1 AND status = 'PENDING'""", partner_refund_no, error, next_attempt_at)

    async def settled_payments(self, acquirer: str, references: list[str], window: Window) -> list[Settled]:
        """The acquirer's payments captured by us named in a settlement list (by its ``referenceNo``
        or the RRN) or made inside its time window, keyed by the acquirer's ``referenceNo``."""
        rows = await self.conn.fetch(
            """SELECT p.payment_request_id, p.reference_no, p.amount, coalesce(p.trx_time, p.captured_at) AS time
                 FROM payments p JOIN bills b USING (bill_id)
                WHERE b.method = 'qris' AND p.client_id = $1
                  AND (p.payment_request_id = ANY($2::text[]) OR p.reference_no = ANY($2::text[])
                       OR coalesce(p.trx_time, p.captured_at) BETWEEN $3 AND $4)""",
            acquirer, references, window.start, window.end)
        return [Settled(r["payment_request_id"], r["amount"], r["time"], r["reference_no"]) for r in rows]

    async def settled_refunds(self, acquirer: str, refund_nos: list[str], window: Window) -> list[Settled]:
        """Our refunds the acquirer made (``DONE``, its ``refundNo``) named in a settlement list or made
        inside its time window, keyed by ``refundNo``."""
        rows = await self.conn.fetch(
            """SELECT refund_no, amount, refunded_at FROM qris_refunds
                WHERE acquirer = $1 AND status = 'DONE'
                  AND (refund_no = ANY($2::text[]) OR refunded_at BETWEEN $3 AND $4)""",
            acquirer, refund_nos, window.start, window.end)
        return [Settled(r["refund_no"], r["amount"], r["refunded_at"]) for r in rows]
