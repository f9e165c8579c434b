"""SNAP B2B access tokens: random, opaque, kept only as SHA-256 hashes with their bank and expiry.

Stored in PostgreSQL so that every api process accepts a token any of them issued. A token is
never revoked before it expires (nothing but the purge of expired ones deletes a row, and a row
is never updated), so each api process also remembers the tokens it issued or found
(``TokenCache``) until their expiry: a bank's callback then spends no round trip on its token.
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


class TokenCache:
    """Live tokens this process has seen (hash → client id and expiry), at most ``size``.

    Only tokens known to be valid are kept, so an unknown token (a guess) costs a look-up and
    takes no room; when full, the expired entries go first, then all."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._tokens: dict[str, tuple[str, datetime]] = {}

    def get(self, token_hash: str, now: datetime) -> str | None:
        known = self._tokens.get(token_hash)
        if known is None:
            return None
        client_id, expires_at = known
        if expires_at <= now:
            del self._tokens[token_hash]
            return None
        return client_id

    def put(self, token_hash: str, client_id: str, expires_at: datetime, now: datetime) -> None:
        if len(self._tokens) >= self._size:
            self._tokens = {h: v for h, v in self._tokens.items() if v[1] > now}
            if len(self._tokens) >= self._size:
                self._tokens.clear()
        self._tokens[token_hash] = (client_id, expires_at)


async def issue_token(uow: UnitOfWork, client_id: str, ttl: timedelta, now: datetime,
                      cache: TokenCache | None = None) -> str:
    token = secrets.token_urlsafe(32)
    token_hash = _hash(token)
    await PaymentRepository(uow.conn).add_token(token_hash, client_id, now + ttl)
    if cache is not None:  # (before the caller's commit, if it has a transaction: nobody knows the token yet)
        cache.put(token_hash, client_id, now + ttl, now)
    return token


async def bank_of_token(uow: UnitOfWork, token: str, now: datetime, cache: TokenCache | None = None) -> str | None:
    """The client id a live token was issued to; None for unknown or expired tokens."""
    token_hash = _hash(token)
    if cache is not None and (client_id := cache.get(token_hash, now)) is not None:
        return client_id
    found = await PaymentRepository(uow.conn).token_client(token_hash, now)
    if found is None:
        return None
    if cache is not None:
        cache.put(token_hash, found[0], found[1], now)
    return found[0]


async def purge_expired_tokens(pool: asyncpg.Pool, now: datetime) -> int:
    """The periodic job: forget expired tokens (in its own unit of work)."""
    async with unit_of_work(pool) as uow:
        return await PaymentRepository(uow.conn).purge_tokens(now)
