"""Receipt numbers and receipts in PostgreSQL, over the caller's transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from order_service.domain.receipt import DIGITS, PREFIX, Payment, receipt_number, receipt_year


@dataclass(frozen=True)
class ReceiptRecord:
    """What is stored when the payment is recorded; the rest of a receipt is the order's."""

    receipt_no: str
    paid_at: datetime
    payment: Payment


class ReceiptRepository:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def issue(self, order_id: uuid.UUID, *, paid_at: datetime, payment: Payment) -> str:
        """Give the order its receipt number, the next of the payment's year. Call it with the order
        locked, in the transaction that records the payment: the counter row stays locked until that
        transaction ends, so numbers are handed out one after the other and a rollback returns its
        number. An order that already has a receipt keeps it (its number never changes).

        One statement: the receipt found, or the counter moved on and the receipt written with its
        number (``domain.receipt.receipt_number``, spelled in SQL here and checked against it: a
        number spelled otherwise raises, which rolls the payment back rather than keep it)."""
        year = receipt_year(paid_at)
        row = await self.conn.fetchrow(
            """WITH existing AS (SELECT receipt_no FROM receipts WHERE order_id = $1),
                    counted AS (
                        INSERT INTO receipt_counters AS c (year, last_no)
                        SELECT $2::int, 1 WHERE NOT EXISTS (SELECT FROM existing)
                        ON CONFLICT (year) DO UPDATE SET last_no = c.last_no + 1
                        RETURNING last_no),
                    written AS (
                        INSERT INTO receipts (order_id, year, seq, receipt_no, paid_at, method, bank,
                                              payment_request_id, reference_no)
                        SELECT $1, $2::int, last_no,
                               $3::text || '-' || lpad($2::text, greatest(4, length($2::text)), '0') || '-'
                               || lpad(last_no::text, greatest($4::int, length(last_no::text)), '0'),
                               $5::timestamptz, $6::text, $7::text, $8::text, $9::text
                        FROM counted
                        RETURNING receipt_no, seq)
               SELECT receipt_no, NULL::bigint AS seq FROM existing
               UNION ALL SELECT receipt_no, seq FROM written""",
            order_id, year, PREFIX, DIGITS, paid_at, payment.method, payment.bank, payment.payment_request_id,
            payment.reference_no)
        receipt_no = str(row["receipt_no"])
        if row["seq"] is not None and receipt_no != receipt_number(year, row["seq"]):
            raise RuntimeError(f"receipt number {receipt_no} is not {receipt_number(year, row['seq'])}")
        return receipt_no

    async def record(self, order_id: uuid.UUID) -> ReceiptRecord | None:
        row = await self.conn.fetchrow(
            """SELECT receipt_no, paid_at, method, bank, payment_request_id, reference_no
               FROM receipts WHERE order_id = $1""", order_id)
        if row is None:
            return None
        return ReceiptRecord(row["receipt_no"], row["paid_at"],
                             Payment(row["method"], row["bank"], row["payment_request_id"], row["reference_no"]))

    async def buyer_name(self, account_id: uuid.UUID) -> str | None:
        name = await self.conn.fetchval("SELECT name FROM accounts WHERE id = $1", account_id)
        return None if name is None else str(name)

