"""The order service's HTTP API: accounts and orders (the buyers' front door), the partners' event
feed (``GET /v1/partner/events``) and the webhooks it mirrors, documented.

Buyers authenticate with a bearer token (``POST /v1/accounts``), partner systems with their
``X-Api-Key`` (``emeterai_shared.auth.caller_from_request``). Only partner systems read the feed:
a buyer's valid bearer token is 403 ``partner_only`` (authenticated, not allowed); no or bad
credentials are 401. ``after`` is the cursor of the last event already read (0, the default, reads
from the start); ``limit`` is 1..500 (default 100); anything else is 400 ``invalid_parameter``.
``next`` is the cursor of the last event returned, or ``after`` itself when nothing is new: pass it
back to resume.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from emeterai_shared import idempotency
from emeterai_shared.auth import Caller, caller_from_request
from emeterai_shared.http import NO_NUL, ApiError, Operation, read_json, respond
from emeterai_shared.runtime import Router
from emeterai_shared.uow import unit_of_work
from pydantic import BaseModel, Field, PlainSerializer, StringConstraints, field_validator

from order_service.config import OrderSettings
from order_service.dependencies import OrderDeps
from order_service.domain.order import Order
from order_service.domain.partner_events import ORDER_FULFILLED, ORDER_REFUNDED, STAMPING_COMPLETED, timestamp
from order_service.domain.refund import NothingToRefund, Refund
from order_service.service_layer import orders, partner_feed, refunds

NAME_PATTERN = r"^[^\x00]*[0-9A-Za-z\u00c0-\u024f\u0370-\u1fff\u3040-\u9fff\uac00-\ud7af][^\x00]*$"
"""At least one letter or digit, and no NUL: the same in the published (ECMA) schema, in Python and in
pydantic's Rust engine, which do not agree on which characters are blank."""
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=NAME_PATTERN)]
BUYER_MAX_QUANTITY: int = OrderSettings.model_fields["buyer_max_quantity"].default
Phone = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9]{8,15}$")]

MAX_LIMIT = 500
DEFAULT_LIMIT = 100
MAX_CURSOR = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


# --- accounts and orders ------------------------------------------------------------------------


class AccountRequest(BaseModel):
    name: Name
    phone: Phone


class AccountCreated(BaseModel):
    account_id: uuid.UUID
    token: str


class OrderRequest(BaseModel):
    quantity: int = Field(strict=True, ge=1, json_schema_extra={"maximum": BUYER_MAX_QUANTITY},
                          description=f"stamps to buy: 1-{BUYER_MAX_QUANTITY} for buyers (ORDER_BUYER_MAX_QUANTITY); "
                                      "a partner (X-Api-Key) up to its own max_quantity")
    bank: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)] | None = Field(
        default=None, description="client_id of the partner bank to pay at; default: the first")

    @field_validator("quantity", mode="before")
    @classmethod
    def _integral_number(cls, value: Any) -> Any:
        """``2.0`` is the JSON number 2, as JSON Schema's ``integer`` says; ``2.5``, ``"2"`` and ``true``
        stay refused (strict)."""
        return int(value) if isinstance(value, float) and value.is_integer() else value


class OrderAccepted(BaseModel):
    order_id: uuid.UUID
    status: str
    quantity: int
    amount: int


class PaymentInstructions(BaseModel):
    virtual_account_no: str
    amount: int
    expires_at: datetime


class Fulfilment(BaseModel):
    """What a PAID order waits for (its status stays PAID)."""

    awaiting_stock: bool = Field(description="the serials wait for stock; refunded at refund_at otherwise")
    since: datetime | None = None
    refund_at: datetime | None = None
    giving_back: list[str] = Field(default_factory=list, description="serials the order could not accept, "
                                   "being voided before the refund")


class RefundView(BaseModel):
    """A buyer's refund of the order's unused stamps."""

    refund_id: uuid.UUID
    serials: list[str] = Field(description="the serials refunded (VOID, out of the quota); while REQUESTED, "
                                           "those asked for")
    amount: int = Field(description="rupiah refunded: the per-stamp price (duty and service fee) per serial; "
                                    "while REQUESTED, the most it can be")
    status: Literal["REQUESTED", "PAYING", "PAID_OUT", "NOTHING"] = Field(
        description="REQUESTED (the stamping service decides which are unused) -> PAYING (voided; being paid "
                    "out) -> PAID_OUT, or NOTHING (every serial asked for was in use)")
    requested: list[str] = Field(description="the serials asked for")
    kept: list[str] = Field(description="serials asked for that were in use: stamped, not refunded")

    @classmethod
    def of(cls, refund: Refund, per_stamp: int) -> RefundView:
        amount = refund.amount if refund.decided_at is not None else per_stamp * len(refund.requested)
        return cls(refund_id=refund.refund_id, serials=refund.serials, amount=amount, status=refund.status.value,
                   requested=refund.requested, kept=refund.kept)


class OrderView(OrderAccepted):
    payment: PaymentInstructions | None
    serials: list[str]
    failure_reason: str | None = None
    fulfilment: Fulfilment | None = Field(default=None, description="null unless the order waited for stock "
                                          "or gave serials back")
    refunds: list[RefundView] = Field(default_factory=list, description="refunds of unused stamps, oldest first")

    @classmethod
    def of(cls, order: Order, refunds: list[Refund] | None = None) -> OrderView:
        payment = None
        if order.bill is not None:
            payment = PaymentInstructions(virtual_account_no=order.bill.virtual_account_no,
                                          amount=order.bill.amount, expires_at=order.bill.expires_at)
        fulfilment = None
        if order.awaiting_stock_since is not None or order.giving_back:
            fulfilment = Fulfilment(awaiting_stock=order.awaits_stock, since=order.awaiting_stock_since,
                                    refund_at=order.stock_refund_at, giving_back=order.giving_back)
        return cls(order_id=order.id, status=order.status.value, quantity=order.quantity,
                   amount=order.amount, payment=payment, serials=order.serials,
                   failure_reason=order.failure_reason, fulfilment=fulfilment,
                   refunds=[RefundView.of(r, order.per_stamp()) for r in refunds or ()])


# --- partner events: the feed's entries and the webhooks' bodies --------------------------------

Timestamp = Annotated[datetime, PlainSerializer(timestamp, return_type=str)]
"""Written as the events are signed: UTC, microseconds and ``Z`` (``partner_events.timestamp``)."""


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
    stamped_at: Timestamp


class OrderRefundedData(BaseModel):
    order_id: uuid.UUID
    refund_id: uuid.UUID
    serials: list[str] = Field(description="the serials refunded, now VOID in the registry")
    amount: int = Field(description="rupiah paid back")


class OrderFulfilledEvent(BaseModel):
    """Sent when a partner's order is FULFILLED: its serials and their tokens."""

    id: uuid.UUID = Field(description="event id, also the webhook-id header: deduplicate on it")
    type: Literal["order.fulfilled"]
    created_at: Timestamp
    data: OrderFulfilledData


class StampingCompletedEvent(BaseModel):
    """Sent when a document was stamped with a serial of one of the partner's orders."""

    id: uuid.UUID = Field(description="event id, also the webhook-id header: deduplicate on it")
    type: Literal["stamping.completed"]
    created_at: Timestamp
    data: StampingCompletedData


class OrderRefundedEvent(BaseModel):
    """Sent when a refund of unused stamps of one of the partner's orders was paid out."""

    id: uuid.UUID = Field(description="event id, also the webhook-id header: deduplicate on it")
    type: Literal["order.refunded"]
    created_at: Timestamp
    data: OrderRefundedData


PartnerEventBody = Annotated[OrderFulfilledEvent | StampingCompletedEvent | OrderRefundedEvent,
                             Field(discriminator="type")]


class PartnerEventsPage(BaseModel):
    events: list[PartnerEventBody] = Field(description="in order, the same bodies as the webhooks")
    next: int = Field(description="cursor to pass as ?after= to resume")


WEBHOOKS: tuple[tuple[str, type[BaseModel]], ...] = ((ORDER_FULFILLED, OrderFulfilledEvent),
                                                      (STAMPING_COMPLETED, StampingCompletedEvent),
                                                      (ORDER_REFUNDED, OrderRefundedEvent))


# --- callers ------------------------------------------------------------------------------------


def _caller(request: web.Request, deps: OrderDeps) -> Caller:
    return caller_from_request(request, deps.verifier, deps.partners.keys)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from {low} to {high}")
    return int(raw)


# --- handlers -----------------------------------------------------------------------------------


async def create_account(request: web.Request, deps: OrderDeps) -> web.Response:
    key = idempotency.key_from(request, required=False)
    body = await read_json(request, AccountRequest)
    async with unit_of_work(deps.pool) as uow:
        if key is not None:
            digest = idempotency.request_hash("POST", "/v1/accounts", body.model_dump())
            stored = await idempotency.claim(uow.conn, "accounts", key, digest)
            if stored is not None:
                return stored.response()
        account_id = await orders.create_account(uow, body.name, body.phone)
        answer = AccountCreated(account_id=account_id, token=deps.issuer.issue(account_id))
        if key is not None:
            await idempotency.complete(uow.conn, "accounts", key, 201, answer.model_dump(mode="json"))
    return respond(answer, status=201)


async def place_order(request: web.Request, deps: OrderDeps) -> web.Response:
    caller = _caller(request, deps)
    deps.limits.enforce(caller)
    with deps.admission.slot():
        return await _place_order(request, deps, caller)


async def _place_order(request: web.Request, deps: OrderDeps, caller: Caller) -> web.Response:
    key = idempotency.key_from(request, required=True)
    assert key is not None
    body = await read_json(request, OrderRequest)
    max_quantity = deps.partners.max_quantity(caller.partner_id, deps.settings.buyer_max_quantity)
    if body.quantity > max_quantity:
        raise ApiError(422, "quantity_out_of_range", f"quantity must be between 1 and {max_quantity}")
    scope = f"orders:{caller.account_id}"
    digest = idempotency.request_hash("POST", "/v1/orders", body.model_dump())
    async with unit_of_work(deps.pool) as uow:
        stored = await idempotency.claim(uow.conn, scope, key, digest)
        if stored is not None:
            return stored.response()
        order = await orders.place_order(
            uow, account_id=caller.account_id, quantity=body.quantity, bank=body.bank,
            partner_id=caller.partner_id, service_fee=deps.settings.service_fee)
        answer = OrderAccepted(order_id=order.id, status=order.status.value, quantity=order.quantity,
                               amount=order.amount)
        await idempotency.complete(uow.conn, scope, key, 202, answer.model_dump(mode="json"))
    return respond(answer, status=202)


def _order_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["order_id"])
    except ValueError:
        raise ApiError(404, "order_not_found", "no such order") from None


async def get_order(request: web.Request, deps: OrderDeps) -> web.Response:
    caller = _caller(request, deps)
    order_id = _order_id(request)
    async with unit_of_work(deps.pool) as uow:
        order = await orders.order_of(uow, caller.account_id, order_id)
        given = await refunds.refunds_of(uow, order_id) if order is not None else []
    if order is None:
        raise ApiError(404, "order_not_found", "no such order")
    return respond(OrderView.of(order, given))


async def refund_order(request: web.Request, deps: OrderDeps) -> web.Response:
    """Refund the order's stamps that are still unused (the stamping service decides which)."""
    caller = _caller(request, deps)
    deps.limits.enforce(caller)  # the same per-caller bucket as POST /v1/orders
    order_id = _order_id(request)
    key = idempotency.key_from(request, required=True)
    assert key is not None
    scope = f"refunds:{caller.account_id}:{order_id}"
    digest = idempotency.request_hash("POST", f"/v1/orders/{order_id}/refund", {})
    async with unit_of_work(deps.pool) as uow:
        stored = await idempotency.claim(uow.conn, scope, key, digest)
        if stored is not None:
            return stored.response()
        try:
            refund = await refunds.request_refund(uow, caller.account_id, order_id, datetime.now(UTC))
        except NothingToRefund as exc:
            raise ApiError(409, "nothing_to_refund", str(exc)) from None
        if refund is None:
            raise ApiError(404, "order_not_found", "no such order")
        order = await orders.order_of(uow, caller.account_id, order_id)
        assert order is not None
        answer = RefundView.of(refund, order.per_stamp())
        await idempotency.complete(uow.conn, scope, key, 202, answer.model_dump(mode="json"))
    return respond(answer, status=202)


async def partner_events(request: web.Request, deps: OrderDeps) -> web.Response:
    caller = _caller(request, deps)
    if caller.partner_id is None:
        raise ApiError(403, "partner_only", "the event feed is for partner systems (X-Api-Key)")
    deps.limits.enforce(caller)
    after = _int_param(request, "after", 0, 0, MAX_CURSOR)
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    async with unit_of_work(deps.pool) as uow:
        page = await partner_feed.feed(uow, caller.partner_id, after, limit)
    return respond(PartnerEventsPage.model_validate({"events": [event.body() for _, event in page],
                                                     "next": page[-1][0] if page else after}))


async def _sample_admission(app: web.Application) -> AsyncIterator[None]:
    """Measure the platform's backlog while the app serves (``emeterai_shared.admission``)."""
    deps: OrderDeps = Router.dependencies(app)
    async for _ in deps.admission.cleanup_ctx(lambda: deps.pool)(app):
        yield


# --- routes -------------------------------------------------------------------------------------

_SIGNED = [
    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "the event id, the same on every attempt"},
    {"name": "webhook-timestamp", "in": "header", "required": True, "schema": {"type": "integer"},
     "description": "Unix seconds when this attempt was signed"},
    {"name": "webhook-signature", "in": "header", "required": True, "schema": {"type": "string"},
     "description": 'v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>; key: the '
                    "base64-decoded part of a whsec_ secret, else the secret's UTF-8 bytes"},
]
_ACKNOWLEDGED = ("any 2xx acknowledges; anything else, or no answer within the timeout (5 s), is retried "
                 "with exponential backoff (from 5 s, at most 1 h apart) for up to 3 days", None)


def routes(router: Router[OrderDeps]) -> None:
    router.app.cleanup_ctx.append(_sample_admission)
    if router.spec is not None:
        router.spec.security_schemes.update({
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)",
                       "description": "a buyer's token (POST /v1/accounts)"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                       "description": "a partner system's key (ORDER_PARTNERS_FILE); taken before a bearer token"},
        })
    read_order = {"operationId": "get_v1_orders_order_id",
                  "parameters": {"order_id": "$response.body#/order_id"}}
    router.add(Operation(
        "POST", "/v1/accounts", "Create a buyer account and its bearer token",
        request=AccountRequest, tags=["accounts"], parameters=[idempotency.header_parameter(required=False)],
        responses={201: ("account created", AccountCreated),
                   400: ("malformed_json, too_deeply_nested, or invalid_idempotency_key", None),
                   422: ("invalid_request (fields), or idempotency_key_reused", None)},
        links={201: {"PlaceOrder": {"operationId": "post_v1_orders", "description": "the token authorizes orders"}}},
    ), create_account)
    router.add(Operation(
        "POST", "/v1/orders", "Order a quota of stamps (answered at once; payment instructions follow on GET)",
        request=OrderRequest, tags=["orders"], security=["bearer", "apiKey"],
        parameters=[idempotency.header_parameter(required=True)],
        responses={202: ("order accepted", OrderAccepted),
                   400: ("malformed_json, too_deeply_nested, idempotency_key_required or invalid_idempotency_key",
                         None),
                   401: ("unauthorized, invalid_token, token_expired or invalid_api_key", None),
                   422: ("invalid_request, quantity_out_of_range (past the caller's maximum), or "
                         "idempotency_key_reused", None),
                   429: ("rate_limited: this account's or partner's order rate (Retry-After)", None),
                   503: ("overloaded (the platform's backlog is past what it drains in the target wait; body "
                         "retry_after_s, retry_at) or busy; Retry-After", None)},
        links={202: {"GetOrder": read_order}},
    ), place_order)
    router.add(Operation(
        "GET", "/v1/orders/{order_id}", "An order of the caller", tags=["orders"], security=["bearer", "apiKey"],
        parameters=[{"name": "order_id", "in": "path", "required": True,
                     "schema": {"type": "string", "format": "uuid"}}],
        responses={200: ("the order", OrderView), 401: ("not authenticated", None),
                   404: ("order_not_found: no such order of the caller", None)},
    ), get_order)
    router.add(Operation(
        "POST", "/v1/orders/{order_id}/refund",
        "Refund the order's unused stamps (answered at once; the order view shows the refund's progress)",
        tags=["orders"], security=["bearer", "apiKey"],
        parameters=[{"name": "order_id", "in": "path", "required": True,
                     "schema": {"type": "string", "format": "uuid"}},
                    idempotency.header_parameter(required=True)],
        responses={202: ("refund requested: the serials asked for, decided by the stamping service", RefundView),
                   400: ("idempotency_key_required or invalid_idempotency_key", None),
                   401: ("not authenticated", None),
                   404: ("order_not_found: no such order of the caller", None),
                   409: ("nothing_to_refund: the order is not FULFILLED, or every stamp is used, refunded or "
                         "being refunded", None),
                   422: ("idempotency_key_reused", None),
                   429: ("rate_limited: this account's or partner's order rate, shared with POST /v1/orders "
                         "(Retry-After)", None)},
        links={202: {"GetRefundedOrder": {"operationId": "get_v1_orders_order_id",
                                          "parameters": {"order_id": "$request.path.order_id"}}}},
    ), refund_order)
    router.add(Operation(
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
                   429: ("rate_limited: this partner's request rate (Retry-After)", None)},
    ), partner_events)
    for name, model in WEBHOOKS:
        router.document(Operation("POST", name, model.__doc__ or name, request=model, tags=["partners"],
                                  parameters=_SIGNED, responses={200: _ACKNOWLEDGED}, webhook=True))
