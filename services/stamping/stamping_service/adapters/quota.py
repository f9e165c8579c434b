"""The quota projection in PostgreSQL: which stamps each account owns, and in which state."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from emeterai_shared.contracts.events import IssuedSerial


@dataclass(frozen=True)
class Quota:
    available: int
    """UNUSED stamps: free to stamp a document with."""
    reserved: int
    """RESERVED stamps: held by a stamping job in progress (neither available nor used yet)."""
    used: int
    """USED stamps: affixed to a document."""
    serials_available: list[str]
    """The UNUSED serials, oldest issuance first, then by serial (the order reservation takes them in)."""


class QuotaRepository:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add_serials(self, account_id: uuid.UUID, order_id: uuid.UUID,
                          serials: Sequence[IssuedSerial]) -> int:
        """Record the serials issued to ``account_id``; those already known are left as they are.

        Returns how many were new. ``received_at`` is the clock when the statement runs (one
        value per issuance), so that a later issuance sorts after an earlier one even when both
        are applied in one transaction (a batch); within an issuance serials sort by ``sn``.
        """
        result = await self.conn.execute(
            """INSERT INTO stamps (sn, account_id, order_id, token, received_at)
               SELECT s.sn, $1, $2, s.token, c.ts
                 FROM unnest($3::text[], $4::text[]) AS s(sn, token), (SELECT clock_timestamp() AS ts) AS c
               ON CONFLICT (sn) DO NOTHING""",
            account_id, order_id, [s.sn for s in serials], [s.token for s in serials])
        return int(result.split()[-1])

    async def void(self, order_id: uuid.UUID, account_id: uuid.UUID, sns: Sequence[str],
                   now: datetime) -> tuple[list[str], list[str]]:
        """Take the order's ``sns`` out of the quota for good; returns (voided, kept).

        UNUSED stamps of that order become VOID; stamps it has not received yet are recorded VOID
        (a tombstone: their late copy credits nothing). Stamps RESERVED by a stamping in progress
        or USED are kept: they cannot be voided any more. A serial that belongs to another order
        here is not this order's to void nor to keep: it counts as voided for this order (it does
        not hold it) and is left as it is. A repeated request gives the same answer.
        """
        sns = list(dict.fromkeys(sns))
        await self.conn.execute(
            """INSERT INTO stamps (sn, account_id, order_id, token, status, voided_at)
               SELECT unnest($1::text[]), $2, $3, '', 'VOID', $4 ON CONFLICT (sn) DO NOTHING""",
            sns, account_id, order_id, now)
        await self.conn.execute(
            """UPDATE stamps SET status = 'VOID', voided_at = $3
                WHERE sn = ANY($1::text[]) AND order_id = $2 AND status = 'UNUSED'""", sns, order_id, now)
        rows = await self.conn.fetch(
            "SELECT sn FROM stamps WHERE sn = ANY($1::text[]) AND order_id = $2 AND status IN ('RESERVED', 'USED')",
            sns, order_id)
        kept = {r["sn"] for r in rows}
        return [sn for sn in sns if sn not in kept], [sn for sn in sns if sn in kept]

    async def owners(self, sns: Sequence[str]) -> dict[str, uuid.UUID]:
        rows = await self.conn.fetch("SELECT sn, account_id FROM stamps WHERE sn = ANY($1::text[])", list(sns))
        return {r["sn"]: r["account_id"] for r in rows}

    async def states(self, sns: Sequence[str]) -> dict[str, str]:
        """The state of each of ``sns`` known here (``domain.stamping.StampStatus`` values)."""
        if not sns:
            return {}
        rows = await self.conn.fetch("SELECT sn, status FROM stamps WHERE sn = ANY($1::text[])", list(sns))
        return {r["sn"]: r["status"] for r in rows}

    async def quota(self, account_id: uuid.UUID) -> Quota:
        counts = dict(await self.conn.fetch(
            "SELECT status, count(*) FROM stamps WHERE account_id = $1 GROUP BY status", account_id))
        rows = await self.conn.fetch(
            "SELECT sn FROM stamps WHERE account_id = $1 AND status = 'UNUSED' ORDER BY received_at, sn",
            account_id)
        return Quota(available=int(counts.get("UNUSED", 0)), reserved=int(counts.get("RESERVED", 0)),
                     used=int(counts.get("USED", 0)), serials_available=[r["sn"] for r in rows])
