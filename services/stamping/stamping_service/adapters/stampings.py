"""Stamping jobs in PostgreSQL, and the reservation of the serial each one uses."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from emeterai_shared.admission import Sample
from emeterai_shared.pagination import Key

from stamping_service.domain.stamping import Job, JobStatus, NewStamping, StampingView


def _view(row: asyncpg.Record) -> StampingView:
    return StampingView(row["id"], JobStatus(row["status"]), row["sn"], row["error"], row["stamped_sha256"],
                        row["stamped_at"])


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
            """INSERT INTO stampings (id, account_id, sn, status, page, x, y, size, reason, password,
                                      document_sha256)
               VALUES ($1, $2, $3, 'QUEUED', $4, $5, $6, $7, $8, $9, $10)""",
            job.id, job.account_id, job.sn, job.page, job.x, job.y, job.size, job.reason, job.password,
            job.document_sha256)

    async def get(self, stamping_id: uuid.UUID, account_id: uuid.UUID) -> StampingView | None:
        row = await self.conn.fetchrow(
            """SELECT id, status, sn, error, stamped_sha256, stamped_at FROM stampings
                WHERE id = $1 AND account_id = $2""",
            stamping_id, account_id)
        return _view(row) if row is not None else None

    async def history(self, account_id: uuid.UUID, after: Key | None, limit: int) -> list[tuple[StampingView, Key]]:
        """Up to ``limit`` jobs of ``account_id`` newest first (``created_at DESC, id DESC``), after the
        key ``after``: one index range scan (``stampings_account_history``)."""
        rows = await self.conn.fetch(
            """SELECT id, status, sn, error, stamped_sha256, stamped_at, created_at FROM stampings
                WHERE account_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $4""",
            account_id, after.created_at if after else None, after.id if after else None, limit)
        return [(_view(r), Key(r["created_at"], r["id"])) for r in rows]

    async def queue_positions(self, stamping_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """For those of ``stamping_ids`` still QUEUED: 1 + the QUEUED jobs ahead of each, in the order
        the workers take them (``created_at, id``; the upload's message is published in that order).
        One query; each count reads only the queue ahead (partial index ``stampings_queued``)."""
        if not stamping_ids:
            return {}
        rows = await self.conn.fetch(
            """SELECT j.id, 1 + (SELECT count(*) FROM stampings q
                                  WHERE q.status = 'QUEUED' AND (q.created_at, q.id) < (j.created_at, j.id))
                              AS position
                 FROM stampings j WHERE j.id = ANY($1::uuid[]) AND j.status = 'QUEUED'""", stamping_ids)
        return {r["id"]: r["position"] for r in rows}

    async def mark_started(self, stamping_id: uuid.UUID) -> None:
        """QUEUED → STAMPING (visible to its owner while the document is signed); counts the attempt."""
        await self.conn.execute(
            """UPDATE stampings SET status = 'STAMPING', attempts = attempts + 1, updated_at = now()
                WHERE id = $1 AND status IN ('QUEUED', 'STAMPING')""", stamping_id)

    async def lock(self, stamping_id: uuid.UUID) -> Job | None:
        """The job with its row locked until the transaction ends (one worker stamps it at a time)."""
        row = await self.conn.fetchrow(
            """SELECT j.id, j.account_id, j.sn, s.token, j.status, j.page, j.x, j.y, j.size, j.reason, j.password,
                      j.attempts
                 FROM stampings j JOIN stamps s ON s.sn = j.sn
                WHERE j.id = $1 FOR UPDATE OF j""", stamping_id)
        if row is None:
            return None
        return Job(**{**dict(row), "status": JobStatus(row["status"])})

    async def done(self, job: Job, stamped_sha256: str, stamped_at: datetime) -> None:
        """DONE, and its stamp USED. The password is forgotten once it is no longer needed."""
        await self.conn.execute(
            """UPDATE stampings SET status = 'DONE', stamped_sha256 = $2, stamped_at = $3, error = NULL,
                                    password = NULL, updated_at = now() WHERE id = $1""",
            job.id, stamped_sha256, stamped_at)
        await self.conn.execute("UPDATE stamps SET status = 'USED', used_at = $2 WHERE sn = $1",
                                job.sn, stamped_at)

    async def failed(self, job: Job, error: str) -> None:
        """FAILED for good, and its stamp back to UNUSED for the account to use on another document."""
        await self.conn.execute(
            """UPDATE stampings SET status = 'FAILED', error = $2, password = NULL, updated_at = now()
                WHERE id = $1""", job.id, error[:1000])
        await self.conn.execute("UPDATE stamps SET status = 'UNUSED' WHERE sn = $1 AND status = 'RESERVED'", job.sn)

    async def claim_stale(self, older_than_s: float, limit: int) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
        """Unfinished jobs untouched for ``older_than_s`` (their message lost or parked), touched so
        that another sweep does not take them again at once: (id, account_id, sn)."""
        rows = await self.conn.fetch(
            """UPDATE stampings SET updated_at = now() WHERE id = ANY(ARRAY(
                   SELECT id FROM stampings
                    WHERE status IN ('QUEUED', 'STAMPING') AND updated_at < now() - make_interval(secs => $1)
                    ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED))
               RETURNING id, account_id, sn""", older_than_s, limit)
        return [(r["id"], r["account_id"], r["sn"]) for r in rows]


ADMISSION_WINDOW_S = 10.0


async def admission_sample(conn: asyncpg.Connection, window_s: float = ADMISSION_WINDOW_S) -> Sample:
    """Jobs accepted and not finished (every api and worker process), and jobs finished in the window."""
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM stampings WHERE status IN ('QUEUED', 'STAMPING')) AS backlog,
                  d.drained, d.span_s
             FROM (SELECT count(*) AS drained, extract(epoch FROM now() - min(updated_at))::float8 AS span_s
                     FROM stampings WHERE status IN ('DONE', 'FAILED')
                      AND updated_at > now() - make_interval(secs => $1)) d""", window_s)
    return Sample.measured(row["backlog"], row["drained"], window_s, row["span_s"])
