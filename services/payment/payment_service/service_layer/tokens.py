"""SNAP B2B access tokens: random, opaque, kept only as SHA-256 hashes with their bank and expiry.

Stored in PostgreSQL so that every api process accepts a token any of them issued.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import asyncpg
from emeterai_shared.uow import UnitOfWork, unit_of_work

from payment_service.adapters.repository import PaymentRepository


def _hash(token: str) -> str:
    # surrogateescape: a header's undecodable bytes (aiohttp keeps them as lone surrogates) hash
    # to no stored token instead of raising
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


async def issue_token(uow: UnitOfWork, client_id: str, ttl: timedelta, now: datetime) -> str:
    token = secrets.token_urlsafe(32)
    await PaymentRepository(uow.conn).add_token(_hash(token), client_id, now + ttl)
    return token


async def bank_of_token(uow: UnitOfWork, token: str, now: datetime) -> str | None:
    """The client id a live token was issued to; None for unknown or expired tokens."""
    return await PaymentRepository(uow.conn).token_client(_hash(token), now)


async def purge_expired_tokens(pool: asyncpg.Pool, now: datetime) -> int:
    """The periodic job: forget expired tokens (in its own unit of work)."""
    async with unit_of_work(pool) as uow:
        return await PaymentRepository(uow.conn).purge_tokens(now)
