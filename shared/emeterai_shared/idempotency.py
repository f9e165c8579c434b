"""``Idempotency-Key`` for POSTs that create something.

Within the request's transaction, ``claim`` inserts ``(scope, key, request hash)``. The first
request proceeds and ``complete``s with its answer in the same transaction; a concurrent twin
waits on the primary key until that commits, then gets the stored answer. The same key with a
different request body is refused with 422, so a client bug never silently returns the wrong
resource.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from emeterai_shared.http import ApiError

MAX_KEY_LENGTH = 200
KEY_PATTERN = r"^[!-~]([ -~]{0,198}[!-~])?$"
"""1 to 200 visible ASCII characters (inner spaces allowed): what an HTTP header carries without
ambiguity, as published in the OpenAPI documents and enforced by ``key_from``."""
_KEY = re.compile(KEY_PATTERN)


def header_parameter(*, required: bool) -> dict[str, Any]:
    """The ``Idempotency-Key`` header as an OpenAPI parameter."""
    return {"name": "Idempotency-Key", "in": "header", "required": required,
            "description": "the same key with the same body answers the first answer again (header "
                           "Idempotent-Replayed); with another body, 422 idempotency_key_reused",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN}}


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: Any

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers={"Idempotent-Replayed": "true"})


def key_from(request: web.Request, *, required: bool) -> str | None:
    given = request.headers.get("Idempotency-Key")
    key = (given or "").strip()
    if not key:
        if required:
            raise ApiError(400, "idempotency_key_required", "the Idempotency-Key header is required")
        if given is None:
            return None
    if not _KEY.fullmatch(key):
        raise ApiError(400, "invalid_idempotency_key",
                       f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters")
    return key


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def claim_insert(first: int = 1) -> str:
    """``claim``'s INSERT, its five parameters (scope, key, request hash, status, response: see
    ``Claim.args``) numbered from ``$first``; it returns a row when this request owns the key. For
    a larger statement (as a data-modifying CTE) that claims the key and does the work in one
    round trip: a concurrent twin waits on the key until that statement commits."""
    p = ", ".join(f"${first + i}" for i in range(5))
    return (f"INSERT INTO idempotency_keys (scope, key, request_hash, status, response) VALUES ({p})"
            " ON CONFLICT DO NOTHING RETURNING true")


@dataclass(frozen=True)
class Claim:
    """A claim on ``(scope, key)`` for the request hashed ``digest``, with its answer when it is
    known before the work is done (stored with the key, so nothing is left to ``complete``)."""

    scope: str
    key: str
    digest: str
    status: int | None = None
    body: Any = None

    def args(self) -> tuple[Any, ...]:
        return self.scope, self.key, self.digest, self.status, self.body


async def claim(conn: asyncpg.Connection, scope: str, key: str, digest: str) -> StoredAnswer | None:
    """None: this request owns the key and must ``complete`` it. Otherwise the first answer."""
    inserted = await conn.fetchval(claim_insert(), *Claim(scope, key, digest).args())
    if inserted:
        return None
    return await stored(conn, scope, key, digest)


async def stored(conn: asyncpg.Connection, scope: str, key: str, digest: str) -> StoredAnswer:
    """The first answer given under ``(scope, key)``, once another request claimed it (``claim``,
    or ``claim_insert`` in a statement that did not own the key); 422 for another request's key."""
    row = await conn.fetchrow(
        "SELECT request_hash, status, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
        scope, key)
    if row["request_hash"] != digest:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was used with a different request")
    return StoredAnswer(row["status"], row["response"])


async def complete(conn: asyncpg.Connection, scope: str, key: str, status: int, body: Any) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE scope = $1 AND key = $2",
        scope, key, status, body)
