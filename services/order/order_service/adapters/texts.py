"""The sign-in texts waiting to be sent (``sms_outbox``): claimed with a lease, then finished.

``POST /v1/auth/otp`` writes a row in the statement that stores the code's digest (see
``SigninRepository.hit_and_put_code``); the worker's ``TextDispatcher`` claims due rows, hands
them to the notification adapter and finishes them, each step one statement. Several workers share
the rows through ``SKIP LOCKED``; a worker that dies between the claim and the finish leaves its
rows leased, and they are due again when the lease runs out (at least once, as with any outbox).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class Text:
    id: int
    phone: str
    body: str
    expires_at: datetime | None
    attempts: int
    """Leases taken so far, this one included."""


class TextOutbox:
    def __init__(self, conn: asyncpg.Connection | asyncpg.Pool):
        self.conn = conn

    async def claim(self, limit: int, lease_s: float) -> list[Text]:
        """Lease up to ``limit`` due texts, oldest first, for ``lease_s`` seconds."""
        rows = await self.conn.fetch(
            """UPDATE sms_outbox SET due_at = now() + make_interval(secs => $2::float8), attempts = attempts + 1
               WHERE id = ANY(ARRAY(SELECT id FROM sms_outbox WHERE failed_at IS NULL AND due_at <= now()
                                    ORDER BY due_at, id LIMIT $1 FOR UPDATE SKIP LOCKED))
               RETURNING id, phone, body, expires_at, attempts""", limit, float(lease_s))
        return sorted((Text(r["id"], r["phone"], r["body"], r["expires_at"], r["attempts"]) for r in rows),
                      key=lambda t: t.id)

    async def finish(self, done: Sequence[int], failed: Sequence[tuple[int, str]]) -> None:
        """Delete the texts sent or dropped (``done``); keep the ones refused for good with their
        reason, without their text (the code in it is of no use to anyone now)."""
        await self.conn.execute(
            """WITH gone AS (DELETE FROM sms_outbox WHERE id = ANY($1::bigint[]))
               UPDATE sms_outbox s SET failed_at = now(), body = '', last_error = f.error
               FROM unnest($2::bigint[], $3::text[]) AS f (id, error) WHERE s.id = f.id""",
            list(done), [i for i, _ in failed], [e[:1000] for _, e in failed])

    async def backlog(self) -> tuple[int, float, int]:
        """Texts waiting (due or leased), the age in seconds of the oldest, and texts failed."""
        row = await self.conn.fetchrow(
            """SELECT count(*) FILTER (WHERE failed_at IS NULL) AS waiting,
                      coalesce(extract(epoch FROM now() - min(requested_at) FILTER (WHERE failed_at IS NULL)), 0)
                          AS oldest_s,
                      count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed
               FROM sms_outbox""")
        assert row is not None
        return int(row["waiting"]), float(row["oldest_s"]), int(row["failed"])
