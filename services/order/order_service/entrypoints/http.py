"""The order service's HTTP API: accounts and orders (the buyers' front door)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from emeterai_shared import idempotency
from emeterai_shared.admission import Admission
from emeterai_shared.auth import TokenIssuer, TokenVerifier
from emeterai_shared.http import NO_NUL, ApiError, OpenApi, Operation, read_json
from emeterai_shared.ratelimit import RateLimiter
from emeterai_shared.runtime import Context
from emeterai_shared.uow import unit_of_work
from pydantic import BaseModel, Field, StringConstraints, field_validator

from order_service.adapters import repository
from order_service.adapters.partners import PartnerRegistry
from order_service.config import OrderSettings
from order_service.domain.order import Order
from order_service.service_layer import commands

NAME_PATTERN = r"^[^\x00]*[0-9A-Za-z\u00c0-\u024f\u0370-\u1fff\u3040-\u9fff\uac00-\ud7af][^\x00]*$"
"""At least one letter or digit, and no NUL: the same in the published (ECMA) schema, in Python and in
pydantic's Rust engine, which do not agree on which characters are blank."""
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=NAME_PATTERN)]
BUYER_MAX_QUANTITY: int = OrderSettings.model_fields["buyer_max_quantity"].default
Phone = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9]{8,15}$")]


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


class OrderView(OrderAccepted):
    payment: PaymentInstructions | None
    serials: list[str]
    failure_reason: str | None = None
    fulfilment: Fulfilment | None = Field(default=None, description="null unless the order waited for stock "
                                          "or gave serials back")


@dataclass(frozen=True)
class Caller:
    account_id: uuid.UUID
    max_quantity: int
    partner_id: str | None


@dataclass(frozen=True)
class Auth:
    verifier: TokenVerifier
    partners: PartnerRegistry
    buyer_max_quantity: int

    def caller(self, request: web.Request) -> Caller:
        api_key = request.headers.get("X-Api-Key")
        if api_key is not None:
            partner = self.partners.authenticate(api_key)
            if partner is None:
                raise ApiError(401, "invalid_api_key", "the X-Api-Key is not valid")
            return Caller(partner.account_id, partner.max_quantity, partner.partner_id)
        principal = self.verifier.from_request(request)
        return Caller(principal.account_id, self.buyer_max_quantity, None)


def _view(order: Order) -> OrderView:
    payment = None
    if order.bill is not None:
        payment = PaymentInstructions(virtual_account_no=order.bill.virtual_account_no,
                                      amount=order.bill.amount, expires_at=order.bill.expires_at)
    fulfilment = None
    if order.awaiting_stock_since is not None or order.giving_back:
        fulfilment = Fulfilment(awaiting_stock=order.awaits_stock, since=order.awaiting_stock_since,
                                refund_at=order.stock_refund_at, giving_back=order.giving_back)
    return OrderView(order_id=order.id, status=order.status.value, quantity=order.quantity,
                     amount=order.amount, payment=payment, serials=order.serials,
                     failure_reason=order.failure_reason, fulfilment=fulfilment)


@dataclass(frozen=True)
class CallerLimits:
    """Per-account (buyers) and per-partner token buckets of one api process."""

    accounts: RateLimiter
    partners: RateLimiter

    @classmethod
    def from_settings(cls, settings: OrderSettings) -> CallerLimits:
        return cls(RateLimiter(settings.order_rate_per_account_per_s, settings.order_burst_per_account),
                   RateLimiter(settings.partner_rate_per_s, settings.partner_burst))

    def enforce(self, caller: Caller) -> None:
        if caller.partner_id is not None:
            self.partners.enforce(caller.partner_id)
        else:
            self.accounts.enforce(str(caller.account_id))


def routes(ctx: Context, app: web.Application, spec: OpenApi) -> None:
    settings = ctx.settings
    assert isinstance(settings, OrderSettings)
    limits: CallerLimits = ctx.extras.setdefault("limits", CallerLimits.from_settings(settings))
    admission = Admission("order", repository.admission_sample, settings.admission())
    app.cleanup_ctx.append(admission.cleanup_ctx(lambda: ctx.pool))

    async def create_account(request: web.Request) -> web.Response:
        key = idempotency.key_from(request, required=False)
        body = await read_json(request, AccountRequest)
        issuer: TokenIssuer = ctx.extras["issuer"]
        async with unit_of_work(ctx.pool) as uow:
            if key is not None:
                digest = idempotency.request_hash("POST", "/v1/accounts", body.model_dump())
                stored = await idempotency.claim(uow.conn, "accounts", key, digest)
                if stored is not None:
                    return stored.response()
            account_id = await commands.create_account(uow, body.name, body.phone)
            answer = AccountCreated(account_id=account_id, token=issuer.issue(account_id))
            payload = answer.model_dump(mode="json")
            if key is not None:
                await idempotency.complete(uow.conn, "accounts", key, 201, payload)
        return web.json_response(payload, status=201)

    async def place_order(request: web.Request) -> web.Response:
        caller = ctx.extras["auth"].caller(request)
        limits.enforce(caller)
        with admission.slot():
            return await _place_order(request, caller)

    async def _place_order(request: web.Request, caller: Caller) -> web.Response:
        key = idempotency.key_from(request, required=True)
        assert key is not None
        body = await read_json(request, OrderRequest)
        if body.quantity > caller.max_quantity:
            raise ApiError(422, "quantity_out_of_range",
                           f"quantity must be between 1 and {caller.max_quantity}")
        scope = f"orders:{caller.account_id}"
        digest = idempotency.request_hash("POST", "/v1/orders", body.model_dump())
        async with unit_of_work(ctx.pool) as uow:
            stored = await idempotency.claim(uow.conn, scope, key, digest)
            if stored is not None:
                return stored.response()
            order = await commands.place_order(
                uow, account_id=caller.account_id, quantity=body.quantity, bank=body.bank,
                partner_id=caller.partner_id, service_fee=settings.service_fee)
            payload = OrderAccepted(order_id=order.id, status=order.status.value,
                                    quantity=order.quantity, amount=order.amount).model_dump(mode="json")
            await idempotency.complete(uow.conn, scope, key, 202, payload)
        return web.json_response(payload, status=202)

    async def get_order(request: web.Request) -> web.Response:
        caller = ctx.extras["auth"].caller(request)
        try:
            order_id = uuid.UUID(request.match_info["order_id"])
        except ValueError:
            raise ApiError(404, "order_not_found", "no such order") from None
        async with ctx.pool.acquire() as conn:
            order = await repository.get(conn, order_id)
        if order is None or order.account_id != caller.account_id:
            raise ApiError(404, "order_not_found", "no such order")
        return web.json_response(_view(order).model_dump(mode="json"))

    app.router.add_post("/v1/accounts", create_account)
    app.router.add_post("/v1/orders", place_order)
    app.router.add_get("/v1/orders/{order_id}", get_order)

    spec.security_schemes.update({
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)",
                   "description": "a buyer's token (POST /v1/accounts)"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                   "description": "a partner system's key (ORDER_PARTNERS_FILE); taken before a bearer token"},
    })
    read_order = {"operationId": "get_v1_orders_order_id",
                  "parameters": {"order_id": "$response.body#/order_id"}}
    spec.add(Operation("POST", "/v1/accounts", "Create a buyer account and its bearer token",
                       request=AccountRequest, tags=["accounts"],
                       parameters=[idempotency.header_parameter(required=False)],
                       responses={201: ("account created", AccountCreated),
                                  400: ("malformed_json, too_deeply_nested, or invalid_idempotency_key", None),
                                  422: ("invalid_request (fields), or idempotency_key_reused", None)},
                       links={201: {"PlaceOrder": {"operationId": "post_v1_orders",
                                                   "description": "the token authorizes orders"}}}))
    spec.add(Operation("POST", "/v1/orders", "Order a quota of stamps (answered at once; payment "
                       "instructions follow on GET)", request=OrderRequest, tags=["orders"],
                       security=["bearer", "apiKey"], parameters=[idempotency.header_parameter(required=True)],
                       responses={202: ("order accepted", OrderAccepted),
                                  400: ("malformed_json, too_deeply_nested, idempotency_key_required or "
                                        "invalid_idempotency_key", None),
                                  401: ("unauthorized, invalid_token, token_expired or invalid_api_key", None),
                                  422: ("invalid_request, quantity_out_of_range (past the caller's maximum), or "
                                        "idempotency_key_reused", None),
                                  429: ("rate_limited: this account's or partner's order rate (Retry-After)", None),
                                  503: ("overloaded (the platform's backlog is past what it drains in the target "
                                        "wait; body retry_after_s, retry_at) or busy; Retry-After", None)},
                       links={202: {"GetOrder": read_order}}))
    spec.add(Operation("GET", "/v1/orders/{order_id}", "An order of the caller", tags=["orders"],
                       security=["bearer", "apiKey"],
                       parameters=[{"name": "order_id", "in": "path", "required": True,
                                    "schema": {"type": "string", "format": "uuid"}}],
                       responses={200: ("the order", OrderView), 401: ("not authenticated", None),
                                  404: ("order_not_found: no such order of the caller", None)}))
