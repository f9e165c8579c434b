"""Keyset pagination of a caller's history lists (``GET /v1/orders``, ``GET /v1/stampings``).

A list is ordered newest first by ``(created_at DESC, id DESC)``; a page is read with
``WHERE (created_at, id) < (cursor's) ORDER BY created_at DESC, id DESC LIMIT limit + 1`` (the
extra row only says whether there is a next page). The cursor is the key of the last row
returned, as URL-safe base64 (no padding) of ``{"t": created_at ISO 8601, "id": uuid}``: opaque to
callers, stable under concurrent inserts (a row created later sorts before every cursor already
handed out, so it never shifts, repeats or hides entries on later pages), and each page costs an
index range scan however deep it is. (``created_at`` is its transaction's start: a row whose
transaction began before a page was read and committed after it may show on a later page rather
than a fresh first one; it is listed once either way, and no other entry moves.)
``limit`` is 1..``MAX_LIMIT`` (default ``DEFAULT_LIMIT``).

Refusals: a cursor that does not decode is 400 ``invalid_cursor``; a limit that is not an integer in
range is 422 ``invalid_limit``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web

from emeterai_shared.http import ApiError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_CHARS = 200
_DIGITS = re.compile(r"[0-9]{1,4}")

R = TypeVar("R")


@dataclass(frozen=True)
class Key:
    """The position of one row in a newest-first list."""

    created_at: datetime
    id: uuid.UUID


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: Key | None
    """The last row of the previous page; None for the first page."""


def encode_cursor(key: Key) -> str:
    raw = json.dumps({"t": key.created_at.isoformat(), "id": str(key.id)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    """The key a cursor of ``encode_cursor`` holds; 400 ``invalid_cursor`` for anything else."""
    try:
        if not cursor or len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("empty or too long")
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(data, dict) or not isinstance(data.get("t"), str) or not isinstance(data.get("id"), str):
            raise ValueError("not a cursor")
        created_at = datetime.fromisoformat(data["t"])
        if created_at.tzinfo is None:
            raise ValueError("no time zone")
        return Key(created_at, uuid.UUID(data["id"]))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_cursor", "cursor is not a cursor this list returned (pass `next` as it was "
                                              "given)") from None


def page_request(request: web.Request) -> PageRequest:
    """``?limit=&cursor=`` of a list request: 422 ``invalid_limit``, 400 ``invalid_cursor``."""
    raw_limit = request.query.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not _DIGITS.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise ApiError(422, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
        limit = int(raw_limit)
    raw_cursor = request.query.get("cursor")
    return PageRequest(limit, decode_cursor(raw_cursor) if raw_cursor is not None else None)


def page_of(rows: Sequence[R], limit: int, key: Callable[[R], Key]) -> tuple[list[R], str | None]:
    """Rows read with ``LIMIT limit + 1``: the page (at most ``limit``) and the cursor of the next
    page (None when this is the last one)."""
    page = list(rows[:limit])
    return page, (encode_cursor(key(page[-1])) if len(rows) > limit and page else None)


def query_parameters() -> list[dict[str, Any]]:
    """The OpenAPI parameters of a list operation."""
    return [
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
         "description": f"entries per page, 1-{MAX_LIMIT} (else 422 invalid_limit)"},
        {"name": "cursor", "in": "query", "required": False,
         "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR_CHARS, "pattern": "^[A-Za-z0-9_-]+$"},
         "description": "`next` of the previous page, as given (opaque; else 400 invalid_cursor); absent: the "
                        "first page"},
    ]
