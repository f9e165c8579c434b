"""SNAP B2B access tokens: random, opaque, kept only as SHA-256 hashes with their bank and expiry.

Stored in PostgreSQL so that every api process accepts a token any of them issued.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import asyncpg

from payment_service.adapters.repository import PaymentRepository


def _hash(token: str) -> str:
    # surrogateescape: a header's undecodable bytes (aiohttp keeps them as lone surrogates) hash
    # to no stored token instead of raising
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


async def issue_token(pool: asyncpg.Pool, client_id: str, ttl: timedelta, now: datetime) -> str:
    token = secrets.token_urlsafe(32)
    async with pool.acquire() as conn:
        await PaymentRepository(conn).add_token(_hash(token), client_id, now + ttl)
    return token


async def bank_of_token(pool: asyncpg.Pool, token: str, now: datetime) -> str | None:
    """The client id a live token was issued to; None for unknown or expired tokens."""
    async with pool.acquire() as conn:
        return await PaymentRepository(conn).token_client(_hash(token), now)


async def purge_expired_tokens(pool: asyncpg.Pool, now: datetime) -> int:
    async with pool.acquire() as conn:
        return await PaymentRepository(conn).purge_tokens(now)
