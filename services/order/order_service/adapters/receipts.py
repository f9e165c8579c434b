"""Receipt numbers and receipts in PostgreSQL, over the caller's transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from order_service.domain.receipt import Payment, receipt_number, receipt_year


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
        number. An order that already has a receipt keeps it (its number never changes)."""
        existing = await self.conn.fetchval("SELECT receipt_no FROM receipts WHERE order_id = $1", order_id)
        if existing is not None:
            return str(existing)
        year = receipt_year(paid_at)
        seq = await self.conn.fetchval(
            """INSERT INTO receipt_counters (year, last_no) VALUES ($1, 1)
               ON CONFLICT (year) DO UPDATE SET last_no = receipt_counters.last_no + 1
               RETURNING last_no""", year)
        receipt_no = receipt_number(year, seq)
        await self.conn.execute(
            """INSERT INTO receipts (order_id, year, seq, receipt_no, paid_at, method, bank, payment_request_id,
                                     reference_no)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            order_id, year, seq, receipt_no, paid_at, payment.method, payment.bank, payment.payment_request_id,
            payment.reference_no)
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

