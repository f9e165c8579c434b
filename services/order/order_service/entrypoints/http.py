"""The order service's HTTP API: accounts and orders (the buyers' front door)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from aiohttp import web
from emeterai_shared import idempotency
from emeterai_shared.admission import Admission
from emeterai_shared.auth import TokenIssuer, TokenVerifier
from emeterai_shared.http import ApiError, OpenApi, Operation, read_json
from emeterai_shared.ratelimit import RateLimiter
from emeterai_shared.runtime import Context
from emeterai_shared.uow import unit_of_work
from pydantic import BaseModel, Field, StringConstraints

from order_service.adapters import repository
from order_service.adapters.partners import PartnerRegistry
from order_service.config import OrderSettings
from order_service.domain.order import Order
from order_service.service_layer import commands

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Phone = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9]{8,15}$")]


class AccountRequest(BaseModel):
    name: Name
    phone: Phone


class AccountCreated(BaseModel):
    account_id: uuid.UUID
    token: str


class OrderRequest(BaseModel):
    quantity: int = Field(strict=True, ge=1, description="stamps to buy (1-100 for buyers)")
    bank: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="client_id of the partner bank to pay at; default: the first")


class OrderAccepted(BaseModel):
    order_id: uuid.UUID
    status: str
    quantity: int
    amount: int


class PaymentInstructions(BaseModel):
    virtual_account_no: str
    amount: int
    expires_at: datetime


class OrderView(OrderAccepted):
    payment: PaymentInstructions | None
    serials: list[str]
    failure_reason: str | None = None


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
    return OrderView(order_id=order.id, status=order.status.value, quantity=order.quantity,
                     amount=order.amount, payment=payment, serials=order.serials,
                     failure_reason=order.failure_reason)


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
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
    })
    idem = {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200}}
    spec.add(Operation("POST", "/v1/accounts", "Create a buyer account and its bearer token",
                       request=AccountRequest, tags=["accounts"],
                       parameters=[{**idem, "required": False}],
                       responses={201: ("account created", AccountCreated), 400: ("malformed", None),
                                  422: ("invalid", None)}))
    spec.add(Operation("POST", "/v1/orders", "Order a quota of stamps (answered at once; payment "
                       "instructions follow on GET)", request=OrderRequest, tags=["orders"],
                       security=["bearer", "apiKey"], parameters=[{**idem, "required": True}],
                       responses={202: ("order accepted", OrderAccepted), 400: ("malformed", None),
                                  401: ("not authenticated", None),
                                  422: ("invalid, or Idempotency-Key reused with another body", None),
                                  429: ("rate_limited: this account's or partner's order rate (Retry-After)", None),
                                  503: ("overloaded (the platform's backlog is past what it drains in the target "
                                        "wait; body retry_after_s, retry_at) or busy; Retry-After", None)}))
    spec.add(Operation("GET", "/v1/orders/{order_id}", "An order of the caller", tags=["orders"],
                       security=["bearer", "apiKey"],
                       parameters=[{"name": "order_id", "in": "path", "required": True,
                                    "schema": {"type": "string", "format": "uuid"}}],
                       responses={200: ("the order", OrderView), 401: ("not authenticated", None),
                                  404: ("no such order of the caller", None)}))
