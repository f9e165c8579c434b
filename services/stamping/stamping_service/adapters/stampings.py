"""Stamping jobs in PostgreSQL, and the reservation of the serial each one uses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class NewStamping:
    id: uuid.UUID
    account_id: uuid.UUID
    sn: str
    page: int
    x: float
    y: float
    size: float
    reason: str
    document: bytes
    document_sha256: str


@dataclass(frozen=True)
class StampingView:
    id: uuid.UUID
    status: str
    sn: str
    error: str | None


class StampingRepository:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def reserve(self, account_id: uuid.UUID, sn: str | None) -> str | None:
        """Mark a serial of ``account_id`` RESERVED and return it; None when none is free.

        With ``sn``: that serial, only if this account's and UNUSED. Otherwise the oldest UNUSED
        one; rows locked by a concurrent reservation are skipped, so two uploads never share one.
        """
        reserved: str | None
        if sn is not None:
            reserved = await self.conn.fetchval(
                """UPDATE stamps SET status = 'RESERVED'
                    WHERE sn = $1 AND account_id = $2 AND status = 'UNUSED' RETURNING sn""", sn, account_id)
            return reserved
        reserved = await self.conn.fetchval(
            """UPDATE stamps SET status = 'RESERVED'
                WHERE sn = (SELECT sn FROM stamps WHERE account_id = $1 AND status = 'UNUSED'
                             ORDER BY received_at, sn LIMIT 1 FOR UPDATE SKIP LOCKED)
                  AND status = 'UNUSED'
               RETURNING sn""", account_id)
        return reserved

    async def insert(self, job: NewStamping) -> None:
        await self.conn.execute(
            """INSERT INTO stampings (id, account_id, sn, status, page, x, y, size, reason, document,
                                      document_sha256)
               VALUES ($1, $2, $3, 'QUEUED', $4, $5, $6, $7, $8, $9, $10)""",
            job.id, job.account_id, job.sn, job.page, job.x, job.y, job.size, job.reason, job.document,
            job.document_sha256)

    async def get(self, stamping_id: uuid.UUID, account_id: uuid.UUID) -> StampingView | None:
        row = await self.conn.fetchrow(
            "SELECT id, status, sn, error FROM stampings WHERE id = $1 AND account_id = $2",
            stamping_id, account_id)
        if row is None:
            return None
        return StampingView(row["id"], row["status"], row["sn"], row["error"])
