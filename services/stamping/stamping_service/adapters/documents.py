"""Where uploaded and stamped PDFs are kept: the ``DocumentStore`` interface and its PostgreSQL store.

The store takes the caller's connection so that a document is written in the same transaction as
the job row it belongs to (an upload commits its original with its reservation; the worker commits
the stamped document with the job's DONE state and its outbox message). A store on object
storage would implement the same methods and ignore ``conn`` for the bytes, keeping only the
metadata in that transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import asyncpg


class Kind(StrEnum):
    ORIGINAL = "original"
    STAMPED = "stamped"


@dataclass(frozen=True)
class StoredDocument:
    data: bytes
    sha256: str
    created_at: datetime
    expires_at: datetime | None


class DocumentStore(Protocol):
    async def put(self, conn: asyncpg.Connection, stamping_id: uuid.UUID, kind: Kind, data: bytes,
                  expires_at: datetime | None = None) -> str:
        """Keep ``data`` (replacing an earlier one of this kind); returns its SHA-256 (hex)."""

    async def get(self, conn: asyncpg.Connection, stamping_id: uuid.UUID, kind: Kind) -> StoredDocument | None:
        """The document, or None when there is none (never stored, deleted, or expired)."""

    async def delete(self, conn: asyncpg.Connection, stamping_id: uuid.UUID, kind: Kind) -> None: ...

    async def purge_expired(self, conn: asyncpg.Connection, now: datetime, limit: int) -> int:
        """Delete up to ``limit`` documents whose retention ended; returns how many."""


class PostgresDocumentStore:
    """Documents as ``bytea`` rows of the ``documents`` table (default; works across machines)."""

    async def put(self, conn: asyncpg.Connection, stamping_id: uuid.UUID, kind: Kind, data: bytes,
                  expires_at: datetime | None = None) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        await conn.execute(
            """INSERT INTO documents (stamping_id, kind, data, sha256, expires_at) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (stamping_id, kind) DO UPDATE
                  SET data = EXCLUDED.data, sha256 = EXCLUDED.sha256, created_at = now(),
                      expires_at = EXCLUDED.expires_at""",
            stamping_id, kind.value, data, sha256, expires_at)
        return sha256

    async def get(self, conn: asyncpg.Connection, stamping_id: uuid.UUID, kind: Kind) -> StoredDocument | None:
        row = await conn.fetchrow(
            """SELECT data, sha256, created_at, expires_at FROM documents
                WHERE stamping_id = $1 AND kind = $2 AND (expires_at IS NULL OR expires_at > now())""",
            stamping_id, kind.value)
        if row is None:
            return None
        return StoredDocument(bytes(row["data"]), row["sha256"], row["created_at"], row["expires_at"])

    async def delete(self, conn: asyncpg.Connection, stamping_id: uuid.UUID, kind: Kind) -> None:
        await conn.execute("DELETE FROM documents WHERE stamping_id = $1 AND kind = $2", stamping_id, kind.value)

    async def purge_expired(self, conn: asyncpg.Connection, now: datetime, limit: int) -> int:
        result = await conn.execute(
            """DELETE FROM documents WHERE ctid = ANY(ARRAY(
                   SELECT ctid FROM documents WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED))""",
            now, limit)
        return int(result.split()[-1])
