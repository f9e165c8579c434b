"""The partner event feed (``GET /v1/partner/events``) and the webhooks it mirrors, documented.

Only partner systems (``X-Api-Key``) read the feed: a buyer's valid bearer token is 403
``partner_only`` (authenticated, not allowed); no or bad credentials are 401. ``after`` is the
cursor of the last event already read (0, the default, reads from the start); ``limit`` is
1..500 (default 100); anything else is 400 ``invalid_parameter``. ``next`` is the cursor of the
last event returned, or ``after`` itself when nothing is new: pass it back to resume.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

from aiohttp import web
from emeterai_shared.http import ApiError, OpenApi, Operation
from emeterai_shared.runtime import Context
from pydantic import BaseModel, Field

from order_service.adapters import partner_store
from order_service.domain.partner_events import ORDER_FULFILLED, STAMPING_COMPLETED

MAX_LIMIT = 500
DEFAULT_LIMIT = 100
MAX_CURSOR = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


class Stamp(BaseModel):
    sn: str = Field(description="serial number")
    token: str = Field(description="the stamp's signed token (the QR payload; verify with GET /v1/keys of minting)")


class OrderFulfilledData(BaseModel):
    order_id: uuid.UUID
    quantity: int
    serials: list[Stamp]


class StampingCompletedData(BaseModel):
    stamping_id: uuid.UUID
    sn: str
    order_id: uuid.UUID = Field(description="the partner's order the serial came from")
    document_sha256: str = Field(description="SHA-256 (hex) of the stamped PDF as served for download")
    stamped_at: datetime


class OrderFulfilledEvent(BaseModel):
    """Sent when a partner's order is FULFILLED: its serials and their tokens."""

    id: uuid.UUID = Field(description="event id, also the webhook-id header: deduplicate on it")
    type: Literal["order.fulfilled"]
    created_at: datetime
    data: OrderFulfilledData


class StampingCompletedEvent(BaseModel):
    """Sent when a document was stamped with a serial of one of the partner's orders."""

    id: uuid.UUID = Field(description="event id, also the webhook-id header: deduplicate on it")
    type: Literal["stamping.completed"]
    created_at: datetime
    data: StampingCompletedData


PartnerEventBody = Annotated[OrderFulfilledEvent | StampingCompletedEvent, Field(discriminator="type")]


class PartnerEventsPage(BaseModel):
    events: list[PartnerEventBody] = Field(description="in order, the same bodies as the webhooks")
    next: int = Field(description="cursor to pass as ?after= to resume")


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def add_partner_routes(ctx: Context, app: web.Application, spec: OpenApi) -> None:
    async def events(request: web.Request) -> web.Response:
        caller = ctx.extras["auth"].caller(request)
        if caller.partner_id is None:
            raise ApiError(403, "partner_only", "the event feed is for partner systems (X-Api-Key)")
        ctx.extras["limits"].enforce(caller)
        after = _int_param(request, "after", 0, 0, MAX_CURSOR)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        async with ctx.pool.acquire() as conn:
            page = await partner_store.feed(conn, caller.partner_id, after, limit)
        return web.json_response({"events": [event.body() for _, event in page],
                                  "next": page[-1][0] if page else after})

    app.router.add_get("/v1/partner/events", events)

    spec.add(Operation(
        "GET", "/v1/partner/events", "The partner's events in order (resumable with the cursor)",
        tags=["partners"], security=["apiKey"],
        parameters=[
            {"name": "after", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR, "default": 0},
             "description": "cursor: read after it"},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
        ],
        responses={200: ("a page of events", PartnerEventsPage), 400: ("invalid_parameter: bad after or limit", None),
                   401: ("not authenticated", None), 403: ("partner_only: not a partner (bearer token)", None),
                   429: ("rate_limited: this partner's request rate (Retry-After)", None)}))
    signed = [
        {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"},
         "description": "the event id, the same on every attempt"},
        {"name": "webhook-timestamp", "in": "header", "required": True, "schema": {"type": "integer"},
         "description": "Unix seconds when this attempt was signed"},
        {"name": "webhook-signature", "in": "header", "required": True, "schema": {"type": "string"},
         "description": 'v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>; key: the '
                        "base64-decoded part of a whsec_ secret, else the secret's UTF-8 bytes"},
    ]
    answer = ("any 2xx acknowledges; anything else, or no answer within the timeout (5 s), is retried "
              "with exponential backoff (from 5 s, at most 1 h apart) for up to 3 days", None)
    webhooks: list[tuple[str, type[BaseModel]]] = [(ORDER_FULFILLED, OrderFulfilledEvent),
                                                    (STAMPING_COMPLETED, StampingCompletedEvent)]
    for name, model in webhooks:
        spec.add(Operation("POST", name, model.__doc__ or name, request=model, tags=["partners"],
                           parameters=signed, responses={200: answer}, webhook=True))
