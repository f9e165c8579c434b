"""SQL for serials, issuances and refused uses (one connection, the caller's transaction)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg
from emeterai_shared.contracts.events import DocumentStamped, OrderPaid

from minting_service.domain.stamp import VOIDABLE, SerialStatus, Stamp

# One statement issues N stock rows that no concurrent issuance holds, oldest first, or none at
# all when fewer are free (the rows it looked at then stay locked until the caller's commit).
# ``= ANY(ARRAY(...))`` keeps a primary-key look-up whatever LIMIT a generic plan assumes.
_CLAIM = """
    WITH picked AS (SELECT sn FROM serials WHERE status = 'STOCK' ORDER BY seq LIMIT $3
                    FOR UPDATE SKIP LOCKED)
    UPDATE serials SET status = 'UNUSED', order_id = $1, issued_at = $2
    WHERE sn = ANY(ARRAY(SELECT sn FROM picked)) AND (SELECT count(*) FROM picked) = $3
    RETURNING sn"""

# ``add_issuance``, ``anyone_waiting`` and ``claim_stock`` in one round trip: the issuance row,
# then, when it is new and no paid order waits for stock, the order's serials as ``_CLAIM`` takes
# them (all or none). A twin of the order waits on the issuance's key, inserts nothing and claims
# nothing. The waiting check reads the statement's snapshot, as a statement of its own would a
# moment later.
_START = """
    WITH added AS (INSERT INTO issuances (order_id, account_id, partner_id, quantity, status)
                   VALUES ($1, $2, $3, $4, 'ISSUED') ON CONFLICT DO NOTHING RETURNING order_id),
         waiting AS (SELECT EXISTS (SELECT 1 FROM issuances WHERE status = 'WAITING') AS anyone),
         picked AS (SELECT sn FROM serials
                    WHERE status = 'STOCK' AND EXISTS (SELECT 1 FROM added) AND NOT (SELECT anyone FROM waiting)
                    ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED),
         claimed AS (UPDATE serials SET status = 'UNUSED', order_id = $1, issued_at = $5
                     WHERE sn = ANY(ARRAY(SELECT sn FROM picked)) AND (SELECT count(*) FROM picked) = $4
                     RETURNING sn)
    SELECT EXISTS (SELECT 1 FROM added) AS added, ARRAY(SELECT sn FROM claimed) AS sns"""

_ENSURE_LOCK = 0x6D696E74  # advisory lock id: b"mint" (one stock top-up at a time)
_SERVE_LOCK = 0x77616974  # advisory lock id: b"wait" (one server of the waiting queue at a time, strict order)

_STAMP = """SELECT sn, status, issued_at AS minted_at, stamped_at, document_sha256, stamping_id
            FROM serials WHERE sn = $1"""


def _count(status: str) -> int:
    """Rows affected, from asyncpg's command status (``INSERT 0 5``, ``UPDATE 3``)."""
    return int(status.split()[-1])


class MintingRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    # --- stock -----------------------------------------------------------------------------

    async def lock_stock(self) -> None:
        """Wait for the other top-ups of the stock, until the caller's commit."""
        await self.conn.execute("SELECT pg_advisory_xact_lock($1)", _ENSURE_LOCK)

    async def add_stock(self, serials: list[str], prefix: str) -> int:
        """Insert new STOCK serials; returns how many were new (a taken serial is skipped)."""
        return _count(await self.conn.execute(
            "INSERT INTO serials (sn, prefix) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
            serials, prefix,
        ))

    async def stock_available(self) -> int:
        count: int = await self.conn.fetchval("SELECT count(*) FROM serials WHERE status = 'STOCK'")
        return count

    async def has_stock(self, quantity: int) -> bool:
        """At least ``quantity`` STOCK serials, including those other transactions are claiming."""
        enough: bool = await self.conn.fetchval(
            "SELECT count(*) >= $1 FROM (SELECT 1 FROM serials WHERE status = 'STOCK' LIMIT $1) s", quantity,
        )
        return enough

    async def stock_by_prefix(self) -> dict[str, int]:
        rows = await self.conn.fetch(
            "SELECT prefix, count(*) AS n FROM serials WHERE status = 'STOCK' GROUP BY prefix ORDER BY prefix"
        )
        return {r["prefix"]: r["n"] for r in rows}

    async def status_counts(self) -> dict[str, int]:
        rows = await self.conn.fetch("SELECT status, count(*) AS n FROM serials GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    # --- issuance --------------------------------------------------------------------------

    async def try_lock_waiting(self) -> bool:
        """Take the waiting queue until the caller's commit; False when another process holds it."""
        taken: bool = await self.conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _SERVE_LOCK)
        return taken

    async def lock_waiting(self) -> None:
        """Wait for the waiting queue, then hold it until the caller's commit."""
        await self.conn.execute("SELECT pg_advisory_xact_lock($1)", _SERVE_LOCK)

    async def start_issuance(self, order: OrderPaid, now: datetime) -> tuple[bool, list[str] | None]:
        """Record the order's issuance and, unless some paid order waits for stock, issue its
        serials, in one statement: (False, None) when it had one already (a concurrent twin waits
        here until the first commits); (True, the serials) when issued; (True, None) when the
        order must wait (or fail): too little free stock, or others waiting before it."""
        row = await self.conn.fetchrow(_START, order.order_id, order.account_id, order.partner_id, order.quantity, now)
        return row["added"], (list(row["sns"]) or None) if row["added"] else None

    async def claim_stock(self, order_id: UUID, quantity: int, now: datetime) -> list[str] | None:
        """Issue ``quantity`` STOCK serials to the order; None, claiming nothing, when fewer are free."""
        rows = await self.conn.fetch(_CLAIM, order_id, now, quantity)
        return [r["sn"] for r in rows] if rows else None

    async def fail_issuance(self, order_id: UUID, reason: str, now: datetime | None = None) -> None:
        await self.conn.execute(
            "UPDATE issuances SET status = 'FAILED', reason = $2, decided_at = $3 WHERE order_id = $1",
            order_id, reason, now,
        )

    async def wait_issuance(self, order_id: UUID, since: datetime, refund_at: datetime) -> None:
        await self.conn.execute(
            "UPDATE issuances SET status = 'WAITING', waiting_since = $2, refund_at = $3 WHERE order_id = $1",
            order_id, since, refund_at,
        )

    async def waiting(self, limit: int, *, due_before: datetime | None = None) -> list[asyncpg.Record]:
        """WAITING issuances, oldest first, locked (only those whose ``refund_at`` is before
        ``due_before`` when given)."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            """SELECT order_id, account_id, partner_id, quantity, waiting_since, refund_at FROM issuances
                WHERE status = 'WAITING' AND ($2::timestamptz IS NULL OR refund_at <= $2)
                ORDER BY waiting_since, order_id LIMIT $1 FOR UPDATE""",
            limit, due_before,
        )
        return rows

    async def issued_after_waiting(self, order_id: UUID, now: datetime) -> None:
        await self.conn.execute(
            "UPDATE issuances SET status = 'ISSUED', decided_at = $2 WHERE order_id = $1 AND status = 'WAITING'",
            order_id, now,
        )

    async def waiting_orders(self, order_ids: list[UUID] | None, limit: int = 1000) -> list[asyncpg.Record]:
        """WAITING issuances (those of ``order_ids``, or all), oldest first, locked."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            """SELECT order_id, account_id, quantity, waiting_since, refund_at FROM issuances
                WHERE status = 'WAITING' AND ($1::uuid[] IS NULL OR order_id = ANY($1::uuid[]))
                ORDER BY waiting_since, order_id LIMIT $2 FOR UPDATE""", order_ids, limit,
        )
        return rows

    async def waiting_stats(self, now: datetime) -> tuple[int, float]:
        """How many paid orders wait for stock, and the oldest one's wait in seconds (0 if none)."""
        row = await self.conn.fetchrow(
            """SELECT count(*) AS n, COALESCE(EXTRACT(EPOCH FROM ($1 - min(waiting_since))), 0) AS oldest
                 FROM issuances WHERE status = 'WAITING'""", now,
        )
        return int(row["n"]), max(0.0, float(row["oldest"]))

    # --- registry --------------------------------------------------------------------------

    async def stamp(self, sn: str, *, lock: bool = False) -> Stamp | None:
        row = await self.conn.fetchrow(_STAMP + (" FOR UPDATE" if lock else ""), sn)
        if row is None:
            return None
        return Stamp(**{**dict(row), "status": SerialStatus(row["status"])})

    async def save_used(self, stamp: Stamp) -> None:
        await self.conn.execute(
            """UPDATE serials SET status = $2, stamping_id = $3, document_sha256 = $4, stamped_at = $5
               WHERE sn = $1""",
            stamp.sn, stamp.status.value, stamp.stamping_id, stamp.document_sha256, stamp.stamped_at,
        )

    async def add_reuse_attempt(self, event: DocumentStamped, found: Stamp | None) -> bool:
        """Record a refused use; False when this stamping's attempt on this serial is known."""
        inserted = await self.conn.fetchval(
            """INSERT INTO reuse_attempts (sn, stamping_id, account_id, document_sha256, attempted_at,
                                           found_status, first_stamping_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING true""",
            event.sn, event.stamping_id, event.account_id, event.document_sha256, event.stamped_at,
            found.status.value if found else None, found.stamping_id if found else None,
        )
        return bool(inserted)

    async def void(self, serials: list[str], reason: str, now: datetime,
                   voidable: tuple[SerialStatus, ...] = VOIDABLE) -> list[str]:
        """Void those of ``serials`` that are still in a ``voidable`` status; returns them."""
        rows = await self.conn.fetch(
            """UPDATE serials SET status = 'VOID', void_reason = $2, voided_at = $3
               WHERE sn = ANY($1::text[]) AND status = ANY($4::text[]) RETURNING sn""",
            serials, reason, now, [s.value for s in voidable],
        )
        return [r["sn"] for r in rows]

    async def void_of_order(self, order_id: UUID, serials: list[str], reason: str, now: datetime) -> list[str]:
        """Void those of ``serials`` that were issued to ``order_id`` and are UNUSED; returns them
        (a serial of another order, or already STAMPED or VOID, is left as it is)."""
        rows = await self.conn.fetch(
            """UPDATE serials SET status = 'VOID', void_reason = $3, voided_at = $4
               WHERE sn = ANY($1::text[]) AND order_id = $2 AND status = 'UNUSED' RETURNING sn""",
            serials, order_id, reason, now,
        )
        return [r["sn"] for r in rows]

    async def statuses(self, serials: list[str]) -> dict[str, str]:
        rows = await self.conn.fetch("SELECT sn, status FROM serials WHERE sn = ANY($1::text[])", serials)
        return {r["sn"]: r["status"] for r in rows}
