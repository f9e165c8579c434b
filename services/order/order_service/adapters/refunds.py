"""Buyers' refunds of unused stamps in PostgreSQL (``domain.refund``), and what the order service
knows of its serials' use."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from order_service.domain.refund import Refund, RefundKind, RefundStatus

_COLUMNS = """refund_id, order_id, requested, voided, kept, amount, status, payout_reference, requested_at,
              decided_at, paid_out_at, kind"""


PREFIXED_COLUMNS = ", ".join(f"r.{c} AS r_{c}" for c in _COLUMNS.replace("\n", " ").replace(" ", "").split(","))
"""The columns of ``refunds r`` named ``r_<column>``, for a query joining them to another table
(read back with ``refund_of(row, "r_")``)."""


def refund_of(row: asyncpg.Record, prefix: str = "") -> Refund:
    """The refund in ``row``, whose columns are named ``<prefix><column>``."""
    def col(name: str) -> Any:
        return row[prefix + name]

    return Refund(refund_id=col("refund_id"), order_id=col("order_id"), requested=list(col("requested")),
                  requested_at=col("requested_at"), voided=list(col("voided")), kept=list(col("kept")),
                  amount=col("amount"), status=RefundStatus(col("status")), payout_reference=col("payout_reference"),
                  decided_at=col("decided_at"), paid_out_at=col("paid_out_at"), kind=RefundKind(col("kind")))



class RefundRepository:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add(self, refund: Refund) -> None:
        await self.conn.execute(
            "INSERT INTO refunds (refund_id, order_id, requested, status, requested_at) VALUES ($1, $2, $3, $4, $5)",
            refund.refund_id, refund.order_id, refund.requested, refund.status.value, refund.requested_at)

    async def add_whole_order(self, refund: Refund) -> bool:
        """Record a whole-order refund as it stands; False when its id is recorded already."""
        return bool(await self.conn.fetchval(
            """INSERT INTO refunds (refund_id, order_id, requested, amount, status, payout_reference, requested_at,
                                    decided_at, paid_out_at, kind)
               VALUES ($1, $2, '{}', $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (refund_id) DO NOTHING RETURNING true""",
            refund.refund_id, refund.order_id, refund.amount, refund.status.value, refund.payout_reference,
            refund.requested_at, refund.decided_at, refund.paid_out_at, refund.kind.value))

    async def get(self, refund_id: uuid.UUID, *, for_update: bool = False) -> Refund | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(f"SELECT {_COLUMNS} FROM refunds WHERE refund_id = $1{lock}", refund_id)
        return refund_of(row) if row else None

    async def of_order(self, order_id: uuid.UUID) -> list[Refund]:
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM refunds WHERE order_id = $1 ORDER BY requested_at, refund_id", order_id)
        return [refund_of(r) for r in rows]

    async def save(self, refund: Refund) -> None:
        await self.conn.execute(
            """UPDATE refunds SET voided = $2, kept = $3, amount = $4, status = $5, payout_reference = $6,
                      decided_at = $7, paid_out_at = $8 WHERE refund_id = $1""",
            refund.refund_id, refund.voided, refund.kept, refund.amount, refund.status.value,
            refund.payout_reference, refund.decided_at, refund.paid_out_at)

    async def stamped_serials(self, order_id: uuid.UUID) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT sn FROM order_serials WHERE order_id = $1 AND stamped_at IS NOT NULL", order_id)
        return [r["sn"] for r in rows]

    async def mark_stamped(self, sn: str, at: datetime) -> None:
        await self.conn.execute(
            "UPDATE order_serials SET stamped_at = $2 WHERE sn = $1 AND stamped_at IS NULL", sn, at)
