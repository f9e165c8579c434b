"""Orders and accounts in PostgreSQL; the aggregate goes in and out whole."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg
from emeterai_shared import idempotency
from emeterai_shared.admission import Sample
from emeterai_shared.idempotency import Claim
from emeterai_shared.pagination import Key
from emeterai_shared.uow import outbox_insert

from order_service.adapters import refunds
from order_service.domain.order import Bill, Order, OrderStatus
from order_service.domain.refund import Refund

_COLUMNS = """id, account_id, partner_id, quantity, amount, bank, status, failure_reason,
              virtual_account_no, bill_amount, expires_at, payment_id, serials, awaiting_stock_since,
              stock_refund_at, giving_back, payment_method, qr_content"""


_QUALIFIED = ", ".join(f"o.{c}" for c in _COLUMNS.replace("\n", " ").replace(" ", "").split(","))
"""``_COLUMNS`` of ``orders o``, for a query that joins other tables."""

VIEW_TAG_FORMAT = "order-view-1"
"""Part of every ``view_tag``: a release that changes how an order's view is written changes it, so
that no client holds a tag of a view written the old way."""
VIEW_TAG_LENGTH = 24


def view_tag(order_id: uuid.UUID, version: str) -> str:
    """The entity tag of an order's view: a digest of the transaction ids that last wrote the order's
    row and its refunds' rows (``xmin``: any UPDATE changes it; the view is a function of those rows),
    so the tag changes whenever the view may. ``stale`` computes the same in PostgreSQL, so the tag
    a client holds is compared there without reading the view. A digest, not the ids themselves,
    which would tell anyone how busy the database is."""
    text = f"{VIEW_TAG_FORMAT}:{order_id}:{version}"
    return hashlib.sha256(text.encode()).hexdigest()[:VIEW_TAG_LENGTH]


def _order(row: asyncpg.Record) -> Order:
    bill = None
    if row["virtual_account_no"] is not None:
        bill = Bill(row["virtual_account_no"], row["bill_amount"], row["expires_at"], row["payment_method"],
                    row["qr_content"])
    return Order(
        id=row["id"], account_id=row["account_id"], partner_id=row["partner_id"],
        quantity=row["quantity"], amount=row["amount"], bank=row["bank"], payment_method=row["payment_method"],
        status=OrderStatus(row["status"]), failure_reason=row["failure_reason"], bill=bill,
        payment_id=row["payment_id"], serials=list(row["serials"]),
        awaiting_stock_since=row["awaiting_stock_since"], stock_refund_at=row["stock_refund_at"],
        giving_back=list(row["giving_back"]),
    )


ADMISSION_WINDOW_S = 10.0
"""The window of the admission sample: how many orders got their bill in it."""


_NO_ROWS: tuple[list[Any], ...] = ([], [], [], [], [], [])
"""No outbox rows (``outbox_insert``'s six empty arrays)."""


class OrderRepository:
    """Orders, their accounts and serials, over one connection (the caller's transaction)."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add_account(self, account_id: uuid.UUID, name: str, phone: str) -> None:
        await self.conn.execute("INSERT INTO accounts (id, name, phone) VALUES ($1, $2, $3)",
                                account_id, name, phone)

    async def add_order(self, order: Order) -> None:
        """The new order and its first history row, in one statement."""
        await self.conn.execute(
            """WITH placed AS (
                   INSERT INTO orders (id, account_id, partner_id, quantity, amount, bank, status, payment_method)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, status)
               INSERT INTO order_history (order_id, old_status, new_status, reason)
               SELECT id, NULL, status, 'order placed' FROM placed""",
            order.id, order.account_id, order.partner_id, order.quantity, order.amount, order.bank,
            order.status.value, order.payment_method)

    async def add_order_once(self, order: Order, claim: Claim, outbox: tuple[list[Any], ...]) -> bool:
        """The new order with its first history row and its ``outbox`` rows (``UnitOfWork.take``),
        written only if ``claim`` gets its idempotency key: one statement, so no transaction around
        it (a statement commits whole or not at all). False: the key was claimed already, nothing
        written (a twin in flight is waited for on the key, as ``idempotency.claim`` waits)."""
        claimed: bool = await self.conn.fetchval(
            f"""WITH claimed AS ({idempotency.claim_insert(1)}),
                     placed AS (
                         INSERT INTO orders (id, account_id, partner_id, quantity, amount, bank, status, payment_method)
                         SELECT $6::uuid, $7::uuid, $8::text, $9::int, $10::bigint, $11::text, $12::text, $13::text
                         WHERE EXISTS (SELECT FROM claimed)
                         RETURNING id, status),
                     history AS (
                         INSERT INTO order_history (order_id, old_status, new_status, reason)
                         SELECT id, NULL, status, 'order placed' FROM placed),
                     announced AS ({outbox_insert(14, when="EXISTS (SELECT FROM placed)")})
                SELECT EXISTS (SELECT FROM claimed)""",
            *claim.args(), order.id, order.account_id, order.partner_id, order.quantity, order.amount, order.bank,
            order.status.value, order.payment_method, *outbox)
        return claimed

    async def get(self, order_id: uuid.UUID, *, for_update: bool = False) -> Order | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(f"SELECT {_COLUMNS} FROM orders WHERE id = $1{lock}", order_id)
        return _order(row) if row else None

    async def get_with_refunds(self, order_id: uuid.UUID) -> tuple[Order, list[Refund], str] | None:
        """The order with its refunds oldest first, in one round trip (the view buyers poll), and the
        tag of the rows read (``view_tag``, compared by ``stale``); an order still AWAITING_PAYMENT
        has no refunds, and none are looked for."""
        rows = await self.conn.fetch(
            f"""SELECT {_QUALIFIED}, {refunds.PREFIXED_COLUMNS}, o.xmin::text AS o_version,
                       r.xmin::text AS r_version FROM orders o
                LEFT JOIN refunds r ON r.order_id = o.id AND o.status <> 'AWAITING_PAYMENT'
                WHERE o.id = $1 ORDER BY r.requested_at, r.refund_id""", order_id)
        if not rows:
            return None
        found = [r for r in rows if r["r_refund_id"] is not None]
        version = f"{rows[0]['o_version']}:{','.join(r['r_version'] for r in found)}"
        return _order(rows[0]), [refunds.refund_of(r, "r_") for r in found], view_tag(order_id, version)

    async def stale(self, seen: list[tuple[uuid.UUID, uuid.UUID, str]]) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
        """Those of ``seen`` (an order, the account asking, and the ``view_tag`` it holds) whose tag is
        no longer the order's view's, or whose order is gone or not that account's, in one round
        trip; PostgreSQL compares, so only what changed comes back. The tag is computed here as
        ``view_tag`` computes it from the rows ``get_with_refunds`` reads."""
        if not seen:
            return []
        rows = await self.conn.fetch(
            f"""SELECT w.id, w.account, w.tag FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS w (id, account, tag)
               LEFT JOIN orders o ON o.id = w.id AND o.account_id = w.account
               WHERE o.id IS NULL OR w.tag IS DISTINCT FROM left(encode(sha256(convert_to(
                   '{VIEW_TAG_FORMAT}:' || o.id::text || ':' || o.xmin::text || ':' || COALESCE(
                       (SELECT string_agg(r.xmin::text, ',' ORDER BY r.requested_at, r.refund_id)
                        FROM refunds r WHERE r.order_id = o.id AND o.status <> 'AWAITING_PAYMENT'), ''),
                   'UTF8')), 'hex'), {VIEW_TAG_LENGTH})""",
            [order_id for order_id, _, _ in seen], [account for _, account, _ in seen], [tag for _, _, tag in seen])
        return [(row["id"], row["account"], row["tag"]) for row in rows]

    async def get_for_fulfilment(self, order_id: uuid.UUID, serials: list[str]) -> tuple[Order, list[str]] | None:
        """The order, locked, and those of ``serials`` already indexed for another order, in one
        round trip. The serials are read in the statement's snapshot, taken before it waits for the
        order's lock: a serial another order indexed meanwhile is refused by ``save``'s index
        insert (``ON CONFLICT DO NOTHING``) as it was by a separate read before."""
        row = await self.conn.fetchrow(
            f"""SELECT {_COLUMNS}, ARRAY(SELECT sn FROM order_serials WHERE sn = ANY($2::text[]) AND order_id <> $1
                                       ORDER BY sn) AS taken
                FROM orders WHERE id = $1 FOR UPDATE""", order_id, serials)
        return (_order(row), list(row["taken"])) if row else None

    async def attach_bill(self, order_id: uuid.UUID, bill: Bill) -> bool:
        """Record the order's bill (``Order.attach_bill`` has no rule to apply: any order takes its
        bill) in one statement, without reading the order first; False: no such order."""
        found = await self.conn.fetchval(
            """UPDATE orders SET virtual_account_no = $2, bill_amount = $3, expires_at = $4, qr_content = $5,
                      billed_at = COALESCE(billed_at, now()), updated_at = now()
               WHERE id = $1 RETURNING true""",
            order_id, bill.virtual_account_no, bill.amount, bill.expires_at, bill.qr_content)
        return bool(found)

    async def history(self, account_id: uuid.UUID, after: Key | None, limit: int) -> list[tuple[Order, Key]]:
        """Up to ``limit`` orders of ``account_id`` newest first (``created_at DESC, id DESC``), after
        the key ``after``: one index range scan (``orders_account_history``), whole aggregates."""
        rows = await self.conn.fetch(
            f"""SELECT {_COLUMNS}, created_at FROM orders
                 WHERE account_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
                 ORDER BY created_at DESC, id DESC LIMIT $4""",
            account_id, after.created_at if after else None, after.id if after else None, limit)
        return [(_order(r), Key(r["created_at"], r["id"])) for r in rows]

    async def save(self, order: Order, *, stamps: list[tuple[str, str]] | None = None,
                   outbox: tuple[list[Any], ...] | None = None) -> None:
        """Write the aggregate's mutable fields and the transitions it went through, index
        ``stamps`` (``(sn, token)``, the serials it was fulfilled with; one already indexed is left
        as it is) and write the ``outbox`` rows (``UnitOfWork.take``: the messages announcing the
        change), all in one statement: its parts are data-modifying CTEs, each run once whatever
        the final query reads."""
        bill = order.bill
        await self.conn.execute(
            f"""WITH saved AS (
                   UPDATE orders SET status = $2, failure_reason = $3, virtual_account_no = $4,
                          bill_amount = $5, expires_at = $6, payment_id = $7, serials = $8,
                          billed_at = COALESCE(billed_at, CASE WHEN $4::text IS NOT NULL OR $2 <> 'AWAITING_PAYMENT'
                                                               THEN now() END),
                          awaiting_stock_since = $9, stock_refund_at = $10, giving_back = $11,
                          qr_content = $12, updated_at = now()
                   WHERE id = $1),
               indexed AS (
                   INSERT INTO order_serials (sn, order_id, token)
                   SELECT sn, $1, token FROM unnest($16::text[], $17::text[]) AS s (sn, token)
                   ON CONFLICT (sn) DO NOTHING),
               announced AS ({outbox_insert(18)})
               INSERT INTO order_history (order_id, old_status, new_status, reason)
               SELECT $1, c.old, c.new, c.reason
               FROM unnest($13::text[], $14::text[], $15::text[]) WITH ORDINALITY AS c (old, new, reason, n)
               ORDER BY c.n""",
            order.id, order.status.value, order.failure_reason,
            bill.virtual_account_no if bill else None, bill.amount if bill else None,
            bill.expires_at if bill else None, order.payment_id, order.serials, order.awaiting_stock_since,
            order.stock_refund_at, order.giving_back, bill.qr_content if bill else None,
            [c.old.value for c in order.changes], [c.new.value for c in order.changes],
            [c.reason for c in order.changes],
            [sn for sn, _ in stamps or ()], [token for _, token in stamps or ()], *(outbox or _NO_ROWS))
        order.changes.clear()

    async def serial_owner(self, sn: str) -> tuple[uuid.UUID, str | None] | None:
        """The order a serial was issued for, and that order's partner (None for a buyer's order)."""
        row = await self.conn.fetchrow(
            "SELECT o.id, o.partner_id FROM order_serials s JOIN orders o ON o.id = s.order_id WHERE s.sn = $1", sn)
        return (row["id"], row["partner_id"]) if row else None

    async def admission_sample(self, window_s: float = ADMISSION_WINDOW_S) -> Sample:
        """Orders waiting on the payment service for their bill, and how many got one in the window."""
        row = await self.conn.fetchrow(
            """SELECT (SELECT count(*) FROM orders WHERE billed_at IS NULL) AS backlog, d.drained, d.span_s
                 FROM (SELECT count(*) AS drained, extract(epoch FROM now() - min(billed_at))::float8 AS span_s
                         FROM orders WHERE billed_at > now() - make_interval(secs => $1)) d""",
            window_s)
        return Sample.measured(row["backlog"], row["drained"], window_s, row["span_s"])
