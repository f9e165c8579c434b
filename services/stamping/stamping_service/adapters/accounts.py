"""Accounts whose phone was verified by a sign-in (from ``order.account_verified.v1``)."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg


class VerifiedAccounts:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add(self, account_id: uuid.UUID, verified_at: datetime) -> None:
        """Record the verification; the earliest one stands (a redelivery changes nothing)."""
        await self.conn.execute(
            """INSERT INTO verified_accounts (account_id, verified_at) VALUES ($1, $2)
               ON CONFLICT (account_id) DO UPDATE SET verified_at = LEAST(verified_accounts.verified_at, $2)""",
            account_id, verified_at)

    async def verified_at(self, account_id: uuid.UUID) -> datetime | None:
        value: datetime | None = await self.conn.fetchval(
            "SELECT verified_at FROM verified_accounts WHERE account_id = $1", account_id)
        return value
