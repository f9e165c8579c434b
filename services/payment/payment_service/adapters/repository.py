"""SQL for bills, payments, SNAP requests and tokens, and refunds (one connection, caller's transaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from emeterai_shared.uow import UnitOfWork, outbox_insert

from payment_service.domain.model import Bill, BillStatus, CapturedPayment, SnapRequestKey
from payment_service.domain.reconciliation import Settled, Window

_BILL_COLUMNS = ("bill_id, order_id, bank, customer_no, virtual_account_no, amount, quantity, status, expires_at,"
                 " trace_context, method, partner_reference_no, account_id, partner_id")


def _bill(row: asyncpg.Record | None) -> Bill | None:
    if row is None:
        return None
    return Bill(**{**dict(row), "status": BillStatus(row["status"])})


@dataclass(frozen=True)
class NewPayment:
    payment_id: UUID
    bill: Bill
    client_id: str
    payment_request_id: str
    amount: int
    trx_id: str | None
    reference_no: str | None
    trx_time: datetime | None
    late: bool
    captured_at: datetime


@dataclass(frozen=True)
class ClaimedFlag:
    """A claimed payment flag's bill (locked; None: no bill has its customer number) and what
    ``payments_seen`` gives for it, read in the claiming statement."""

    bill: Bill | None
    request_bill: UUID | None
    captured: CapturedPayment | None

    @property
    def captured_is_fresh(self) -> bool:
        """Whether ``captured`` can be trusted as read: the bill as locked is not PAID."""
        return self.bill is None or self.bill.status is not BillStatus.PAID


@dataclass(frozen=True)
class QrisBill:
    bill: Bill
    qr_reference_no: str | None
    captured: bool


class PaymentRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    # --- bills -----------------------------------------------------------------------------

    async def add_bill(self, bill: Bill, announce: UnitOfWork | None = None) -> bool:
        """Insert ``bill``; False when its order already has one or its customer number is taken.
        The messages ``announce`` holds go to the outbox in the same statement when the bill is
        inserted, and nowhere when it is not."""
        announced = announce.take() if announce is not None else None
        insert = f"""INSERT INTO bills ({_BILL_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                     ON CONFLICT DO NOTHING RETURNING true"""
        args = (bill.bill_id, bill.order_id, bill.bank, bill.customer_no, bill.virtual_account_no,
                bill.amount, bill.quantity, bill.status.value, bill.expires_at,
                dict(bill.trace_context) if bill.trace_context else None, bill.method, bill.partner_reference_no,
                bill.account_id, bill.partner_id)
        if announced is None:
            return bool(await self.conn.fetchval(insert, *args))
        return bool(await self.conn.fetchval(
            f"""WITH added AS ({insert}),
                     announced AS ({outbox_insert(15)} WHERE EXISTS (SELECT 1 FROM added))
                SELECT EXISTS (SELECT 1 FROM added)""", *args, *announced))

    async def bill_for_order(self, order_id: UUID, *, lock: bool = False) -> Bill | None:
        return _bill(await self.conn.fetchrow(
            f"SELECT {_BILL_COLUMNS} FROM bills WHERE order_id = $1" + (" FOR UPDATE" if lock else ""), order_id,
        ))

    async def bill_by_id(self, bill_id: UUID, *, lock: bool = False) -> Bill | None:
        return _bill(await self.conn.fetchrow(
            f"SELECT {_BILL_COLUMNS} FROM bills WHERE bill_id = $1" + (" FOR UPDATE" if lock else ""), bill_id,
        ))

    async def bill_by_customer_no(self, customer_no: str, *, lock: bool = False) -> Bill | None:
        return _bill(await self.conn.fetchrow(
            f"SELECT {_BILL_COLUMNS} FROM bills WHERE customer_no = $1" + (" FOR UPDATE" if lock else ""),
            customer_no,
        ))

    async def qris_bill_to_notify(self, partner_reference_no: str, acquirer: str) -> QrisBill | None:
        """The QRIS bill of a ``partnerReferenceNo`` at ``acquirer``, locked, with its QR's reference
        and whether a payment is captured for it, in one round trip. ``captured`` is read in the
        statement's snapshot: a capture committed while this waited for the lock is not in it, but
        the bill as locked (its newest version) is PAID then, and PAID is final."""
        row = await self.conn.fetchrow(
            f"""SELECT {_BILL_COLUMNS}, qr_reference_no,
                       EXISTS (SELECT 1 FROM payments p WHERE p.bill_id = bills.bill_id) AS captured
                FROM bills WHERE partner_reference_no = $1 AND bank = $2 AND method = 'qris' FOR UPDATE""",
            partner_reference_no, acquirer,
        )
        if row is None:
            return None
        fields = dict(row)
        reference, captured = fields.pop("qr_reference_no"), fields.pop("captured")
        return QrisBill(Bill(**{**fields, "status": BillStatus(fields["status"])}), reference, captured)

    async def claim_due_bills(self, now: datetime, limit: int) -> list[Bill]:
        """Lock up to ``limit`` open VA bills past their expiry that no other worker holds (QRIS bills
        expire through ``qris.expire_qrs``: their QR is cancelled and queried first)."""
        rows = await self.conn.fetch(
            f"""SELECT {_BILL_COLUMNS} FROM bills WHERE status = 'OPEN' AND expires_at < $1 AND method = 'va'
                ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
            now, limit,
        )
        return [b for b in map(_bill, rows) if b is not None]

    async def save_expired(self, bills: list[Bill], now: datetime) -> None:
        await self.conn.execute(
            "UPDATE bills SET status = 'EXPIRED', expired_at = $2 WHERE bill_id = ANY($1::uuid[])",
            [b.bill_id for b in bills], now,
        )

    # --- payments --------------------------------------------------------------------------

    async def payments_seen(self, bill_id: UUID, client_id: str,
                            payment_request_id: str) -> tuple[UUID | None, CapturedPayment | None]:
        """In one round trip: the bill a bank's ``paymentRequestId`` already paid (None: none), and
        the payment captured for ``bill_id`` (None: none)."""
        row = await self.conn.fetchrow(
            """SELECT (SELECT bill_id FROM payments WHERE client_id = $2 AND payment_request_id = $3) AS request_bill,
                      p.payment_id, p.payment_request_id, p.amount
               FROM (SELECT 1) AS one LEFT JOIN payments p ON p.bill_id = $1""",
            bill_id, client_id, payment_request_id,
        )
        captured = (CapturedPayment(row["payment_id"], row["payment_request_id"], row["amount"])
                    if row["payment_id"] is not None else None)
        return row["request_bill"], captured

    async def captured_for_bill(self, bill_id: UUID) -> CapturedPayment | None:
        row = await self.conn.fetchrow(
            "SELECT payment_id, payment_request_id, amount FROM payments WHERE bill_id = $1", bill_id
        )
        return CapturedPayment(**dict(row)) if row is not None else None

    async def record_capture(self, uow: UnitOfWork, p: NewPayment) -> None:
        """Record the capture and mark the bill paid, writing the messages ``uow`` holds to the outbox
        in the same statement."""
        await uow.execute_with_outbox(
            """WITH payment AS (
                   INSERT INTO payments (payment_id, bill_id, order_id, client_id, payment_request_id, amount,
                                         trx_id, reference_no, trx_time, late, captured_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11))
               UPDATE bills SET status = $12, paid_at = $11 WHERE bill_id = $2""",
            p.payment_id, p.bill.bill_id, p.bill.order_id, p.client_id, p.payment_request_id, p.amount,
            p.trx_id, p.reference_no, p.trx_time, p.late, p.captured_at, p.bill.status.value,
        )

    async def capture(self, uow: UnitOfWork, p: NewPayment, key: SnapRequestKey, response: dict[str, Any]) -> None:
        """``record_capture`` and ``store_snap_response`` in one statement, which also writes the
        messages ``uow`` holds to the outbox (the capture's round trips: one)."""
        await uow.execute_with_outbox(
            """WITH payment AS (
                   INSERT INTO payments (payment_id, bill_id, order_id, client_id, payment_request_id, amount,
                                         trx_id, reference_no, trx_time, late, captured_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)),
               bill AS (UPDATE bills SET status = $12, paid_at = $11 WHERE bill_id = $2)
               UPDATE snap_requests SET response_code = $16, response = $17
               WHERE client_id = $13 AND external_id = $14 AND request_date = $15""",
            p.payment_id, p.bill.bill_id, p.bill.order_id, p.client_id, p.payment_request_id, p.amount,
            p.trx_id, p.reference_no, p.trx_time, p.late, p.captured_at, p.bill.status.value,
            key.client_id, key.external_id, key.day, response["responseCode"], response,
        )

    async def settled_payments(self, client_id: str, payment_request_ids: list[str],
                               window: Window) -> list[Settled]:
        """The bank's payments named in a settlement list or made inside its time window."""
        rows = await self.conn.fetch(
            """SELECT payment_request_id, amount, coalesce(trx_time, captured_at) AS time FROM payments
               WHERE client_id = $1 AND (payment_request_id = ANY($2::text[])
                     OR coalesce(trx_time, captured_at) BETWEEN $3 AND $4)""",
            client_id, payment_request_ids, window.start, window.end,
        )
        return [Settled(r["payment_request_id"], r["amount"], r["time"]) for r in rows]

    # --- SNAP requests and tokens ----------------------------------------------------------

    async def claim_flag(self, key: SnapRequestKey, payment_request_id: str, request_hash: str,
                         customer_no: str) -> ClaimedFlag | None:
        """A notification recorded under its X-EXTERNAL-ID (a concurrent twin waits on the primary key
        until the first commits), then the bill of ``customer_no`` locked and ``payments_seen`` for
        it, in one round trip; None when the X-EXTERNAL-ID was used that day (nothing locked then).

        The claim comes first (the bill's scan waits on it), so a concurrent twin waits on the
        claim's key, never holding the bill. The payments are read in the statement's snapshot,
        taken before any wait for the bill's lock; the bill as locked is its newest version, so
        when it is not PAID no capture can have committed for it meanwhile (a capture marks it PAID
        in the same transaction, and PAID is final); when it is, ``captured_is_fresh`` is False and
        the caller reads ``payments_seen`` again."""
        row = await self.conn.fetchrow(
            f"""WITH claim AS (
                    INSERT INTO snap_requests (client_id, external_id, request_date, payment_request_id, request_hash)
                    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true),
                bill AS (SELECT {_BILL_COLUMNS} FROM bills
                         WHERE customer_no = $6 AND EXISTS (SELECT 1 FROM claim) FOR UPDATE)
                SELECT EXISTS (SELECT 1 FROM claim) AS claimed,
                       (SELECT bill_id FROM payments WHERE client_id = $1 AND payment_request_id = $4) AS request_bill,
                       p.payment_id AS captured_id, p.payment_request_id AS captured_request_id,
                       p.amount AS captured_amount, bill.*
                FROM (SELECT 1) AS one LEFT JOIN bill ON true LEFT JOIN payments p ON p.bill_id = bill.bill_id""",
            key.client_id, key.external_id, key.day, payment_request_id, request_hash, customer_no,
        )
        if not row["claimed"]:
            return None
        fields = dict(row)
        del fields["claimed"]
        request_bill = fields.pop("request_bill")
        captured_id, captured_request_id, captured_amount = (
            fields.pop("captured_id"), fields.pop("captured_request_id"), fields.pop("captured_amount"))
        if fields["bill_id"] is None:
            return ClaimedFlag(None, request_bill, None)
        bill = Bill(**{**fields, "status": BillStatus(fields["status"])})
        captured = (CapturedPayment(captured_id, captured_request_id, captured_amount)
                    if captured_id is not None else None)
        return ClaimedFlag(bill, request_bill, captured)

    async def snap_request(self, key: SnapRequestKey) -> asyncpg.Record:
        return await self.conn.fetchrow(
            """SELECT payment_request_id, request_hash, response FROM snap_requests
               WHERE client_id = $1 AND external_id = $2 AND request_date = $3""",
            key.client_id, key.external_id, key.day,
        )

    async def store_snap_response(self, key: SnapRequestKey, response: dict[str, Any]) -> None:
        await self.conn.execute(
            """UPDATE snap_requests SET response_code = $4, response = $5
               WHERE client_id = $1 AND external_id = $2 AND request_date = $3""",
            key.client_id, key.external_id, key.day, response["responseCode"], response,
        )

    async def add_token(self, token_hash: str, client_id: str, expires_at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO snap_tokens (token_hash, client_id, expires_at) VALUES ($1, $2, $3)",
            token_hash, client_id, expires_at,
        )

    async def token_client(self, token_hash: str, now: datetime) -> tuple[str, datetime] | None:
        """The client id of a live token and when it expires."""
        row = await self.conn.fetchrow(
            "SELECT client_id, expires_at FROM snap_tokens WHERE token_hash = $1 AND expires_at > $2", token_hash, now
        )
        return (row["client_id"], row["expires_at"]) if row is not None else None

    async def purge_tokens(self, now: datetime) -> int:
        result: str = await self.conn.execute("DELETE FROM snap_tokens WHERE expires_at <= $1", now)
        return int(result.split()[-1])

    # --- refunds ---------------------------------------------------------------------------

    async def add_refund(self, refund_id: UUID, order_id: UUID, payment_id: UUID | None, amount: int,
                         reason: str, now: datetime) -> bool:
        """Insert a refund; False when the order (or its payment) already has one."""
        inserted = await self.conn.fetchval(
            """INSERT INTO refunds (refund_id, order_id, payment_id, amount, reason, refunded_at)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true""",
            refund_id, order_id, payment_id, amount, reason, now,
        )
        return bool(inserted)
