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

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from aiohttp import ETag, web
from emeterai_shared import idempotency, pagination
from emeterai_shared.admission import QUEUE_COOKIE
from emeterai_shared.auth import Caller, caller_from_request
from emeterai_shared.http import NO_NUL, ApiError, Operation, parked, preferred_media_type, read_json, respond, shed
from emeterai_shared.runtime import Router
from emeterai_shared.uow import UnitOfWork, unit_of_work
from pydantic import BaseModel, Field, PlainSerializer, StringConstraints, field_validator

from order_service.adapters.acquirer_states import QrisOutage
from order_service.adapters.order_watch import MAX_WAIT_S
from order_service.adapters.receipt_pdf import render_receipt
from order_service.adapters.repository import VIEW_TAG_LENGTH
from order_service.config import OrderSettings
from order_service.dependencies import OrderDeps
from order_service.domain.order import DUTY_PER_STAMP, Order
from order_service.domain.partner_events import (
    ORDER_EXPIRED,
    ORDER_FULFILLED,
    ORDER_REFUNDED,
    STAMPING_COMPLETED,
    STAMPING_FAILED,
    timestamp,
)
from order_service.domain.receipt import Receipt
from order_service.domain.refund import NothingToRefund, Refund
from order_service.domain.signin import normalize_phone
from order_service.service_layer import orders, partner_feed, receipts, refunds, signin

NAME_PATTERN = r"^[^\x00]*[0-9A-Za-z\u00c0-\u024f\u0370-\u1fff\u3040-\u9fff\uac00-\ud7af][^\x00]*$"
"""At least one letter or digit, and no NUL: the same in the published (ECMA) schema, in Python and in
pydantic's Rust engine, which do not agree on which characters are blank."""
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=NAME_PATTERN)]
BUYER_MAX_QUANTITY: int = OrderSettings.model_fields["buyer_max_quantity"].default
Phone = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9]{8,15}$")]

REFRESH_COOKIE = "emeterai_refresh"
"""The refresh token again, for browsers: HttpOnly (no script of the page can read it, so an
injected script cannot steal a lasting session), SameSite=Strict and only sent to /v1/auth; Secure
when the request came over HTTPS (directly or as the ingress says)."""


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
    payment_method: Literal["va", "qris"] = Field(
        default="va", description="va: a virtual account at a partner bank; qris: a dynamic QRIS code from the "
                                  "configured acquirer, any Indonesian bank app or e-wallet pays it")

    @field_validator("quantity", mode="before")
    @classmethod
    def _integral_number(cls, value: Any) -> Any:
        """``2.0`` is the JSON number 2, as JSON Schema's ``integer`` says; ``2.5``, ``"2"`` and ``true``
        stay refused (strict)."""
        return int(value) if isinstance(value, float) and value.is_integer() else value


class PaymentMethodState(BaseModel):
    method: Literal["va", "qris"]
    available: bool = Field(description="false while new orders with this method are refused (503 "
                                        "qris_unavailable): pay by another method meanwhile")
    retry_at: datetime | None = Field(default=None, description="while unavailable: when it is tried again, "
                                                                "if known")


class Pricing(BaseModel):
    """What a stamp costs, for a page to show the price before ordering (amount = quantity x
    (duty_per_stamp + fee_per_stamp)), and which payment methods take new orders now."""

    duty_per_stamp: int = Field(description="the stamp duty, rupiah (Rp 10.000)")
    fee_per_stamp: int = Field(description="our service fee per stamp, rupiah (ORDER_SERVICE_FEE)")
    max_quantity: int = Field(description="the most stamps a buyer may order at once")
    currency: Literal["IDR"] = "IDR"
    payment_methods: list[PaymentMethodState] = Field(default_factory=list)


class OrderAccepted(BaseModel):
    order_id: uuid.UUID
    status: str
    quantity: int
    amount: int


class PaymentInstructions(BaseModel):
    method: Literal["va"] = "va"
    virtual_account_no: str
    amount: int
    expires_at: datetime


class QrisPaymentInstructions(BaseModel):
    method: Literal["qris"] = "qris"
    qr_content: str = Field(description="the EMV QRIS string exactly as the acquirer returned it: draw it as a QR")
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
    kind: Literal["stamps", "order"] = Field(
        default="stamps", description="stamps: a buyer's refund of unused stamps; order: the whole order's "
                                      "refund of a QRIS payment (paid after the order expired, or the order "
                                      "cannot be fulfilled), no serials")
    reference: str | None = Field(
        default=None, description="once PAID_OUT, the reference of the money paid back: for a QRIS payment the "
                                  "acquirer's refundNo (qr-mpm-refund), otherwise the payout's reference")

    @classmethod
    def of(cls, refund: Refund, per_stamp: int) -> RefundView:
        amount = refund.amount if refund.decided_at is not None else per_stamp * len(refund.requested)
        return cls(refund_id=refund.refund_id, serials=refund.serials, amount=amount, status=refund.status.value,
                   requested=refund.requested, kept=refund.kept, kind=refund.kind.value,
                   reference=refund.payout_reference)


class OrderView(OrderAccepted):
    payment: PaymentInstructions | QrisPaymentInstructions | None = Field(
        description="how to pay, null until the bill (VA) or the QR (QRIS) exists")
    serials: list[str]
    failure_reason: str | None = None
    fulfilment: Fulfilment | None = Field(default=None, description="null unless the order waited for stock "
                                          "or gave serials back")
    refunds: list[RefundView] = Field(default_factory=list, description="refunds of unused stamps, and the whole "
                                      "order's refund of a QRIS payment, oldest first")

    @classmethod
    def of(cls, order: Order, refunds: list[Refund] | None = None) -> OrderView:
        payment: PaymentInstructions | QrisPaymentInstructions | None = None
        if order.bill is not None and order.bill.method == "qris":
            if order.bill.qr_content is not None:
                payment = QrisPaymentInstructions(qr_content=order.bill.qr_content, amount=order.bill.amount,
                                                  expires_at=order.bill.expires_at)
        elif order.bill is not None:
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


# --- phone sign-in ------------------------------------------------------------------------------


class CodeRequest(BaseModel):
    phone: Phone


class CodeSent(BaseModel):
    expires_in_s: int = Field(description="the code's lifetime; the same answer whether or not the phone has an "
                                          "account")


class SignInRequest(BaseModel):
    phone: Phone
    code: Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")] = Field(description="the 6 digits sent by SMS")


class RefreshRequest(BaseModel):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)] | None = Field(
        default=None, description=f"the refresh token; a browser may leave it out and rely on the HttpOnly "
                                  f"cookie {REFRESH_COOKIE} the sign-in set")


class SignedIn(BaseModel):
    account_id: uuid.UUID
    token: str = Field(description="bearer access token (JWT, with the session's sid), accepted by every service")
    refresh_token: str = Field(description="works once: POST /v1/auth/refresh gives a new pair")
    expires_in_s: int = Field(description="the access token's lifetime (ORDER_ACCESS_TOKEN_TTL_S)")


class OrdersPage(BaseModel):
    orders: list[OrderView] = Field(description="the caller's orders, newest first, as GET /v1/orders/{order_id} "
                                                "gives them")
    next: str | None = Field(description="cursor of the next page (pass as ?cursor=); null on the last page")


# --- receipts -------------------------------------------------------------------------------------

PDF = "application/pdf"
JSON = "application/json"


class ReceiptPaymentView(BaseModel):
    method: str = Field(description="va (virtual account); later qris")
    reference: str | None = Field(description="the bank's reference of the payment (SNAP referenceNo, else its "
                                              "paymentRequestId); null for orders paid before receipts existed")
    bank: str | None = Field(default=None, description="the partner bank (its client_id)")
    payment_request_id: str | None = Field(default=None, description="the bank's id of the payment (SNAP "
                                                                       "paymentRequestId)")
    virtual_account_no: str | None = None


class ReceiptRefundView(BaseModel):
    refund_id: uuid.UUID
    serials: list[str]
    amount: int
    status: str
    kind: Literal["stamps", "order"] = Field(default="stamps", description="as in the order view's refunds")
    reference: str | None = Field(default=None, description="once PAID_OUT, the reference of the money paid "
                                                            "back (QRIS: the acquirer's refundNo)")


class ReceiptView(BaseModel):
    """The receipt of a paid order: the same facts as its PDF."""

    receipt_no: str = Field(description="EM-<year>-<7 digits>: unique and gap-free per year (Asia/Jakarta), "
                                        "given when the payment is recorded, never changed")
    order_id: uuid.UUID
    paid_at: datetime
    quantity: int
    duty_per_stamp: int = Field(description="Rp 10.000")
    duty: int = Field(description="stamp duty: duty_per_stamp x quantity")
    fee: int = Field(description="our service fee: total less duty")
    total: int = Field(description="the amount paid")
    payment: ReceiptPaymentView
    serials: list[str]
    refunds: list[ReceiptRefundView]

    @classmethod
    def of(cls, receipt: Receipt) -> ReceiptView:
        p = receipt.payment
        return cls(receipt_no=receipt.receipt_no, order_id=receipt.order_id, paid_at=receipt.paid_at,
                   quantity=receipt.quantity, duty_per_stamp=receipt.duty_per_stamp, duty=receipt.duty,
                   fee=receipt.fee, total=receipt.total,
                   payment=ReceiptPaymentView(method=p.method, reference=p.reference, bank=p.bank,
                                              payment_request_id=p.payment_request_id,
                                              virtual_account_no=p.virtual_account_no),
                   serials=receipt.serials,
                   refunds=[ReceiptRefundView(refund_id=r.refund_id, serials=r.serials, amount=r.amount,
                                              status=r.status, kind=r.kind, reference=r.reference)
                            for r in receipt.refunds])


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


class OrderExpiredData(BaseModel):
    order_id: uuid.UUID
    quantity: int
    amount: int = Field(description="what the bill asked for (IDR)")
    expired_at: Timestamp = Field(description="when the bill expired unpaid")


class OrderExpiredEvent(BaseModel):
    """Sent when a partner's order expired unpaid (its bill's time ran out): nothing was charged."""

    id: uuid.UUID = Field(description="event id, also the webhook-id header: deduplicate on it")
    type: Literal["order.expired"]
    created_at: Timestamp
    data: OrderExpiredData


class StampingFailedData(BaseModel):
    stamping_id: uuid.UUID
    sn: str = Field(description="the serial the job had reserved: available again (UNUSED)")
    order_id: uuid.UUID = Field(description="the partner's order the serial came from")
    error: str = Field(description="why the document could not be stamped")
    failed_at: Timestamp


class StampingFailedEvent(BaseModel):
    """Sent when a stamping job with a serial of one of the partner's orders failed for good; the
    serial is back among the partner's available stamps."""

    id: uuid.UUID = Field(description="event id, also the webhook-id header: deduplicate on it")
    type: Literal["stamping.failed"]
    created_at: Timestamp
    data: StampingFailedData




class OrderRefundedEvent(BaseModel):
    """Sent when a refund of unused stamps of one of the partner's orders was paid out."""

    id: uuid.UUID = Field(description="event id, also the webhook-id header: deduplicate on it")
    type: Literal["order.refunded"]
    created_at: Timestamp
    data: OrderRefundedData


PartnerEventBody = Annotated[OrderFulfilledEvent | StampingCompletedEvent | OrderExpiredEvent | StampingFailedEvent
                             | OrderRefundedEvent,
                             Field(discriminator="type")]


class PartnerEventsPage(BaseModel):
    events: list[PartnerEventBody] = Field(description="in order, the same bodies as the webhooks")
    next: int = Field(description="cursor to pass as ?after= to resume")


WEBHOOKS: tuple[tuple[str, type[BaseModel]], ...] = ((ORDER_FULFILLED, OrderFulfilledEvent),
                                                      (STAMPING_COMPLETED, StampingCompletedEvent),
                                                      (ORDER_EXPIRED, OrderExpiredEvent),
                                                      (STAMPING_FAILED, StampingFailedEvent),
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


QUEUE_PLACE = {"name": QUEUE_COOKIE, "in": "cookie", "required": False, "schema": {"type": "string"},
               "description": "a place in the newcomers' line, set by a 503 busy of this route (HttpOnly, "
                              "SameSite=Strict, path /v1; single use): sent back when told (Retry-After, or up to "
                              "30 s later), the request goes before those arriving fresh. Browsers send it by "
                              "themselves; any other value counts as none"}
"""The cookie parameter of the routes that open a session (``admission.Newcomers``)..."""
QUEUE_PLACE_GIVEN = {503: {"Set-Cookie": {
    "description": f"with a 503 busy of the newcomers' pace: {QUEUE_COOKIE}=<place>; Max-Age=<Retry-After + 30>; "
                   "Path=/v1; HttpOnly; SameSite=Strict (Secure over HTTPS)",
    "required": False, "schema": {"type": "string"}}}}
"""... and the header of the refusal that gives it."""


REFRESH_COOKIE_SET = {200: {"Set-Cookie": {
    "description": f"{REFRESH_COOKIE}=<the refresh token of the body>; Max-Age=<ORDER_REFRESH_TOKEN_TTL_S>; "
                   "Path=/v1/auth; HttpOnly; SameSite=Strict (Secure over HTTPS): the page keeps its refresh token "
                   "where its scripts cannot read it",
    "required": True, "schema": {"type": "string"}}}}
"""The refresh cookie a sign-in and a refresh set (``_refresh_cookie``)."""
REFRESH_COOKIE_PARAMETER = {
    "name": REFRESH_COOKIE, "in": "cookie", "required": False, "schema": {"type": "string"},
    "description": "the refresh token, when the body names none (the page's HttpOnly cookie)"}


def _secure(request: web.Request) -> bool:
    """Whether the request came over HTTPS (directly or as the ingress says): cookies set Secure."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _refresh_cookie(response: web.Response, request: web.Request, value: str, max_age: int) -> None:
    response.set_cookie(REFRESH_COOKIE, value, max_age=max_age, path="/v1/auth", httponly=True,
                        secure=_secure(request), samesite="Strict")


def _signed_in(request: web.Request, session: signin.Session, deps: OrderDeps) -> web.Response:
    ttl = deps.settings.access_token_ttl_s
    token = deps.issuer.issue(session.account_id, sid=str(session.sid), ttl=timedelta(seconds=ttl))
    response = respond(SignedIn(account_id=session.account_id, token=token, refresh_token=session.refresh_token,
                                expires_in_s=ttl), headers={"Cache-Control": "no-store"})
    _refresh_cookie(response, request, session.refresh_token, deps.settings.refresh_token_ttl_s)
    return response


async def request_code(request: web.Request, deps: OrderDeps) -> web.Response:
    async with deps.admission.slot(counts=False):  # behind the orders' admission, adding nothing to their backlog
        body = await read_json(request, CodeRequest)
        async with deps.pool.acquire() as conn:  # one statement (signin.request_code): no transaction
            retry_after = await signin.request_code(UnitOfWork(conn), normalize_phone(body.phone),
                                                    request.remote or "unknown", deps.otp_key, deps.settings)
    if retry_after is not None:
        raise shed(429, "rate_limited", f"too many code requests for this phone or from this address; "
                   f"retry in {retry_after} s", retry_after)
    return respond(CodeSent(expires_in_s=deps.settings.otp_ttl_s), status=202)


async def create_token(request: web.Request, deps: OrderDeps) -> web.Response:
    async with deps.admission.slot(counts=False):
        body = await read_json(request, SignInRequest)
        async with unit_of_work(deps.pool) as uow:
            outcome = await signin.sign_in(uow, normalize_phone(body.phone), body.code, deps.otp_key, deps.settings)
    if isinstance(outcome, signin.Refused):
        raise ApiError(401, outcome.code, outcome.message)
    return _signed_in(request, outcome, deps)


async def refresh_token(request: web.Request, deps: OrderDeps) -> web.Response:
    async with deps.admission.slot(counts=False):
        body = await read_json(request, RefreshRequest)
        presented = body.refresh_token or request.cookies.get(REFRESH_COOKIE, "")
        if not presented or len(presented) > 200:
            raise ApiError(401, "invalid_refresh_token", "no refresh token: send refresh_token, or sign in again")
        async with unit_of_work(deps.pool) as uow:
            outcome = await signin.refresh(uow, presented, deps.settings)
    if isinstance(outcome, signin.Refused):
        raise ApiError(401, outcome.code, outcome.message)
    return _signed_in(request, outcome, deps)


async def logout(request: web.Request, deps: OrderDeps) -> web.Response:
    principal = deps.verifier.from_request(request)
    caller = Caller(principal.account_id, None, principal.sid)
    async with unit_of_work(deps.pool) as uow:
        await signin.ensure_current(uow, caller)
        await signin.logout(uow, caller)
    response = web.Response(status=204)
    _refresh_cookie(response, request, "", 0)
    return response


QRIS_RETRY_AFTER_MIN_S = 5
"""Retry-After of a qris_unavailable answer when the acquirer's next try is due already or unknown."""


def _qris_unavailable(outage: QrisOutage) -> ApiError:
    now = datetime.now(UTC)
    wait = (outage.retry_at - now).total_seconds() if outage.retry_at is not None else 0.0
    return shed(503, "qris_unavailable", "QRIS payments are unavailable for now: our QRIS acquirer does not "
                "answer. Pay by virtual account instead (payment_method \"va\"), or try QRIS again later.",
                max(float(QRIS_RETRY_AFTER_MIN_S), wait))


async def pricing(_: web.Request, deps: OrderDeps) -> web.Response:
    outage = await deps.qris.outage(deps.pool)
    methods = [PaymentMethodState(method="va", available=True),
               PaymentMethodState(method="qris", available=outage is None,
                                  retry_at=outage.retry_at if outage is not None else None)]
    return respond(Pricing(duty_per_stamp=DUTY_PER_STAMP, fee_per_stamp=deps.settings.service_fee,
                           max_quantity=deps.settings.buyer_max_quantity, payment_methods=methods),
                   headers={"Cache-Control": "public, max-age=5"})


def _shed_early(deps: OrderDeps, _request: web.Request) -> None:
    """The front doors' refusals by arithmetic alone (``overloaded``, ``busy``), run by the HTTP
    middleware before the span, the body or the token: shedding must cost next to nothing."""
    deps.admission.shed_early()


def _shed_newcomer_early(deps: OrderDeps, request: web.Request) -> None:
    """``_shed_early`` for a request that opens a new session (a sign-in code, a new account): while
    this process's slots are all taken, newcomers are also paced to the orders placed here, so that
    the capacity goes to finishing the purchases already started; a refused newcomer keeps its place
    in their line in a cookie, and coming back with it when told goes first (``admission.Newcomers``)."""
    deps.admission.shed_newcomer_early(request.cookies.get(QUEUE_COOKIE), secure=_secure(request))


async def place_order(request: web.Request, deps: OrderDeps) -> web.Response:
    caller = _caller(request, deps)  # the route's _shed_early has run: the token is verified only if admitted
    deps.limits.enforce(caller)
    async with deps.admission.slot():
        response = await _place_order(request, deps, caller)
    if response.status == 202:
        deps.admission.progressed()  # paces the newcomers while the slots are full
    return response


async def _place_order(request: web.Request, deps: OrderDeps, caller: Caller) -> web.Response:
    key = idempotency.key_from(request, required=True)
    assert key is not None
    body = await read_json(request, OrderRequest)
    max_quantity = deps.partners.max_quantity(caller.partner_id, deps.settings.buyer_max_quantity)
    if body.quantity > max_quantity:
        raise ApiError(422, "quantity_out_of_range", f"quantity must be between 1 and {max_quantity}")
    scope = f"orders:{caller.account_id}"
    digest = idempotency.request_hash("POST", "/v1/orders", body.model_dump())
    order = orders.new_order(account_id=caller.account_id, quantity=body.quantity, bank=body.bank,
                             partner_id=caller.partner_id, service_fee=deps.settings.service_fee,
                             payment_method=body.payment_method)
    answer = OrderAccepted(order_id=order.id, status=order.status.value, quantity=order.quantity, amount=order.amount)
    if body.payment_method == "qris" and await deps.qris.outage(deps.pool) is not None:
        return await _place_during_outage(deps, caller, order, answer, scope, key, digest)
    # The key (with the answer, known before the write), the order, its history and order.placed
    # in one statement: no transaction around it (BEGIN and COMMIT were two of seven round trips).
    async with deps.pool.acquire() as conn:
        uow = UnitOfWork(conn)
        await signin.ensure_current(uow, caller)
        claim = idempotency.Claim(scope, key, digest, 202, answer.model_dump(mode="json"))
        if not await orders.place_order_once(uow, order, claim):
            return (await idempotency.stored(conn, scope, key, digest)).response()
    return respond(answer, status=202)


async def _place_during_outage(deps: OrderDeps, caller: Caller, order: Order, answer: OrderAccepted, scope: str,
                               key: str, digest: str) -> web.Response:
    """A QRIS order while the acquirer was last seen out, in a transaction as the key is claimed
    first: a replay gets its first answer whatever the acquirer's state; otherwise 503
    ``qris_unavailable`` with nothing kept (the key rolls back too: it may be sent again later),
    unless the acquirer is back by now."""
    async with unit_of_work(deps.pool) as uow:
        await signin.ensure_current(uow, caller)
        stored = await idempotency.claim(uow.conn, scope, key, digest)
        if stored is not None:
            return stored.response()
        outage = await deps.qris.outage(uow.conn)
        if outage is not None:
            raise _qris_unavailable(outage)
        await orders.add_order(uow, order)
        await idempotency.complete(uow.conn, scope, key, 202, answer.model_dump(mode="json"))
    return respond(answer, status=202)


def _order_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["order_id"])
    except ValueError:
        raise ApiError(404, "order_not_found", "no such order") from None


async def get_order(request: web.Request, deps: OrderDeps) -> web.Response:
    """The order view, with an ``ETag``. With ``If-None-Match`` naming the view as it is: ``304`` at
    once, or with ``wait_s`` once the view changes (``200``) or ``wait_s`` has passed (``304``): a
    long poll, which waits in ``deps.watch`` outside the process's in-flight count.

    A long poll naming one tag of ours starts waiting without reading the view: the watch's next
    look compares the tag in PostgreSQL (with the orders of every other waiting request), and only
    a stale tag (or another account's order, or none) makes it read the view, to answer ``200``
    (or ``404``). So a phone waiting to pay costs no read of its order when nothing changed."""
    caller = _caller(request, deps)
    order_id = _order_id(request)
    wait_s = _int_param(request, "wait_s", 0, 0, MAX_WAIT_S)
    seen = request.if_none_match
    can_wait = bool(wait_s) and deps.watch.has_room()
    held = _held_tag(seen) if can_wait and not caller.unproven else None  # unproven: checked by the read
    if held is None:
        response, tag = await _order_view(deps, caller, order_id)
        if not seen or not _matches(seen, response):
            return response
        if not can_wait or any(e.value == "*" for e in seen):  # "*" holds no view to wait on
            return _not_modified(tag)
        held = tag
    deadline = time.monotonic() + wait_s
    with parked(request):
        while (left := deadline - time.monotonic()) > 0 and await deps.watch.changed(
                order_id, caller.account_id, held, left, gone=lambda: _client_gone(request)):
            response, held = await _order_view(deps, caller, order_id)
            if not _matches(seen or (), response):
                return response
    return _not_modified(held)


def _held_tag(seen: tuple[ETag, ...] | None) -> str | None:
    """The one tag ``If-None-Match`` names, when it has the form of ours (``view_tag``)."""
    if seen is None or len(seen) != 1:
        return None
    value = seen[0].value
    return value if len(value) == VIEW_TAG_LENGTH and all(c in "0123456789abcdef" for c in value) else None


def _not_modified(tag: str) -> web.Response:
    return web.Response(status=304, headers={"ETag": f'"{tag}"'})


async def _order_view(deps: OrderDeps, caller: Caller, order_id: uuid.UUID) -> tuple[web.Response, str]:
    """The order view as answered (with its ``ETag``), and that tag (``view_tag``, which
    ``OrderWatch`` compares). Reads only, so no transaction (BEGIN and COMMIT were two of its round
    trips); the order with its refunds (none before it is paid) in one query."""
    async with deps.pool.acquire() as conn:
        uow = UnitOfWork(conn)
        await signin.ensure_current(uow, caller)
        found = await orders.order_view(uow, caller.account_id, order_id)
    if found is None:
        raise ApiError(404, "order_not_found", "no such order")
    order, order_refunds, tag = found
    response = respond(OrderView.of(order, order_refunds))
    response.headers["ETag"] = f'"{tag}"'
    return response, tag


def _client_gone(request: web.Request) -> bool:
    """Whether the request's connection is closed or closing (its client will read no answer)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _matches(seen: tuple[ETag, ...], response: web.Response) -> bool:
    """Whether ``If-None-Match`` names the response's entity tag (weakly, as RFC 9110 compares for
    it; ``*`` names any)."""
    tag = response.headers["ETag"].strip('"')
    return any(e.value == "*" or e.value == tag for e in seen)


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


async def list_orders(request: web.Request, deps: OrderDeps) -> web.Response:
    caller = _caller(request, deps)
    page = pagination.page_request(request)
    async with unit_of_work(deps.pool) as uow:
        found, cursor = await orders.history(uow, caller.account_id, page)
    return respond(OrdersPage(orders=[OrderView.of(order) for order in found], next=cursor))


async def get_receipt(request: web.Request, deps: OrderDeps) -> web.Response:
    """The receipt as PDF, or as JSON when the client prefers it (``Accept``)."""
    caller = _caller(request, deps)
    order_id = _order_id(request)
    try:
        async with unit_of_work(deps.pool) as uow:
            found = await receipts.receipt(uow, caller.account_id, order_id)
    except receipts.NotPaid as exc:
        raise ApiError(409, "not_paid", f"the order is {exc.order.status.value}: it has no receipt before its "
                                        "payment for stamps is recorded") from None
    if found is None:
        raise ApiError(404, "order_not_found", "no such order")
    if preferred_media_type(request.headers.get("Accept"), (PDF, JSON)) == JSON:
        return respond(ReceiptView.of(found))
    return web.Response(body=render_receipt(found, seller=deps.settings.receipt_seller), content_type=PDF,
                        headers={"Content-Disposition": f'inline; filename="{found.receipt_no}.pdf"'})


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


async def _watch_orders(app: web.Application) -> AsyncIterator[None]:
    """Wake the long polls of the order view while the app serves (``OrderWatch``)."""
    deps: OrderDeps = Router.dependencies(app)
    task = asyncio.create_task(deps.watch.run(deps.pool), name="order-watch")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _release_long_polls(app: web.Application) -> None:
    """On shutdown, before the server waits for the requests in flight: the held long polls answer."""
    deps: OrderDeps = Router.dependencies(app)
    deps.watch.close()


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


_ORDER_ETAG = {"description": "the entity tag of this view of the order, opaque (a digest of the order's "
                              "state; send it as If-None-Match)",
               "required": True, "schema": {"type": "string"}}


def routes(router: Router[OrderDeps]) -> None:
    router.app.cleanup_ctx.append(_sample_admission)
    router.app.cleanup_ctx.append(_watch_orders)
    router.app.on_shutdown.append(_release_long_polls)
    if router.spec is not None:
        router.spec.security_schemes.update({
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)",
                       "description": "a buyer's token (POST /v1/accounts)"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                       "description": "a partner system's key (ORDER_PARTNERS_FILE); taken before a bearer token"},
        })
    _signin_routes(router)
    read_order = {"operationId": "get_v1_orders_order_id",
                  "parameters": {"order_id": "$response.body#/order_id"}}
    router.add(Operation(
        "POST", "/v1/accounts", "Create a buyer account and its bearer token",
        request=AccountRequest, tags=["accounts"],
        parameters=[idempotency.header_parameter(required=False), QUEUE_PLACE], headers=QUEUE_PLACE_GIVEN,
        responses={201: ("account created", AccountCreated),
                   400: ("malformed_json, too_deeply_nested, or invalid_idempotency_key", None),
                   422: ("invalid_request (fields), or idempotency_key_reused", None),
                   503: ("overloaded (the platform's order backlog is past what it drains in the target wait), busy "
                         "(this process is finishing the purchases already started and admits new accounts at their "
                         "pace: Set-Cookie emeterai_line keeps the caller's place for when it comes back), or "
                         "unavailable (the database is out of reach); Retry-After", None)},
        links={201: {"PlaceOrder": {"operationId": "post_v1_orders", "description": "the token authorizes orders"}}},
    ), create_account, shed_early=_shed_newcomer_early)
    router.add(Operation(
        "GET", "/v1/pricing", "What a stamp costs: the duty and our fee, per stamp, and which payment methods "
        "take new orders now (public)", tags=["orders"],
        responses={200: ("the prices", Pricing)},
    ), pricing)
    router.add(Operation(
        "POST", "/v1/orders", "Order a quota of stamps (answered at once; payment instructions follow on GET)",
        request=OrderRequest, tags=["orders"], security=["bearer", "apiKey"],
        parameters=[idempotency.header_parameter(required=True)],
        responses={202: ("order accepted", OrderAccepted),
                   400: ("malformed_json, too_deeply_nested, idempotency_key_required or invalid_idempotency_key",
                         None),
                   401: ("unauthorized, invalid_token, token_expired, invalid_api_key, or token_superseded (a "
                         "token without a sign-in session of an account whose phone has been verified since)", None),
                   422: ("invalid_request, quantity_out_of_range (past the caller's maximum), or "
                         "idempotency_key_reused", None),
                   429: ("rate_limited: this account's or partner's order rate (Retry-After)", None),
                   503: ("overloaded (the platform's backlog is past what it drains in the target wait; body "
                         "retry_after_s, retry_at), busy (this process's line for a slot is full: Retry-After "
                         "spreads the refused at the rate it serves), or qris_unavailable (a QRIS order while our QRIS "
                         "acquirer does not answer: pay by virtual account meanwhile); Retry-After", None)},
        links={202: {"GetOrder": read_order,
                     "GetReceipt": {"operationId": "get_v1_orders_order_id_receipt",
                                    "parameters": {"order_id": "$response.body#/order_id"}}}},
    ), place_order, shed_early=_shed_early)
    router.add(Operation(
        "GET", "/v1/orders", "The caller's orders, newest first (keyset pages: pass `next` as ?cursor=)",
        tags=["orders"], security=["bearer", "apiKey"], parameters=pagination.query_parameters(),
        responses={200: ("a page of the caller's orders", OrdersPage),
                   400: ("invalid_cursor: not a cursor this list returned", None),
                   401: ("not authenticated", None),
                   422: ("invalid_limit: not an integer from 1 to 100", None)},
    ), list_orders)
    router.add(Operation(
        "GET", "/v1/orders/{order_id}", "An order of the caller; with If-None-Match and wait_s, a long poll "
        "that answers once the order changes", tags=["orders"], security=["bearer", "apiKey"],
        parameters=[{"name": "order_id", "in": "path", "required": True,
                     "schema": {"type": "string", "format": "uuid"}},
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "the ETag of the view the caller holds: 304 while the view is still that "
                                    "(`*`: any view, answered at once, never waited on)"},
                    {"name": "wait_s", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
                     "description": "with If-None-Match naming the view as it is, wait up to this many seconds "
                                    "for it to change (200 then, else 304): poll with this instead of asking "
                                    f"again and again (0 to {MAX_WAIT_S}, else 400 invalid_parameter)"}],
        responses={200: ("the order", OrderView),
                   304: ("not modified: the view is still the one If-None-Match names (at once, or after "
                         "wait_s without a change)", None),
                   400: ("invalid_parameter: wait_s is not an integer from 0 to 30", None),
                   401: ("not authenticated, or token_superseded", None),
                   404: ("order_not_found: no such order of the caller", None)},
        headers={200: {"ETag": _ORDER_ETAG}, 304: {"ETag": _ORDER_ETAG}},
    ), get_order)
    router.add(Operation(
        "GET", "/v1/orders/{order_id}/receipt",
        "The receipt of a paid order: PDF (A4, Indonesian with English subtitles), or JSON with "
        "Accept: application/json", tags=["orders"], security=["bearer", "apiKey"],
        parameters=[{"name": "order_id", "in": "path", "required": True,
                     "schema": {"type": "string", "format": "uuid"}}],
        responses={200: ("the receipt: application/pdf unless the client prefers application/json", ReceiptView),
                   401: ("not authenticated", None),
                   404: ("order_not_found: no such order of the caller", None),
                   409: ("not_paid: no payment for stamps recorded on the order (yet)", None)},
        media={200: PDF},
    ), get_receipt)
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


def _signin_routes(router: Router[OrderDeps]) -> None:
    shed = ("overloaded (the platform's order backlog is past what it drains in the target wait; sign-ins add "
            "nothing to it) or busy (this process's line for a slot is full; or, for a code, it is finishing the "
            "purchases already started and sends codes at their pace: Set-Cookie emeterai_line keeps the caller's "
            "place for when it comes back), or unavailable (the database is out of reach); Retry-After", None)
    signed_in = {"PlaceOrder": {"operationId": "post_v1_orders", "description": "the token authorizes orders"}}
    router.add(Operation(
        "POST", "/v1/auth/otp", "Send a one-time sign-in code to a phone (same answer for every phone)",
        request=CodeRequest, tags=["accounts"], parameters=[QUEUE_PLACE], headers=QUEUE_PLACE_GIVEN,
        responses={202: ("a code is on its way by SMS (if the limits allow, whether or not an account exists)",
                         CodeSent),
                   422: ("invalid_request (fields)", None),
                   429: ("rate_limited: too many codes for this phone (1 per 30 s, 5 per hour) or from this address "
                         "(20 per 10 min); Retry-After and retry_after_s", None),
                   503: shed},
    ), request_code, shed_early=_shed_newcomer_early)
    router.add(Operation(
        "POST", "/v1/auth/token", "Sign in with the phone's code: the account of that phone (created on first sign-in)",
        request=SignInRequest, tags=["accounts"],
        responses={200: ("signed in: an access token and a refresh token", SignedIn),
                   401: ("invalid_code: wrong, used or expired (5 wrong tries void the code)", None),
                   422: ("invalid_request (fields)", None), 503: shed},
        links={200: signed_in}, headers=REFRESH_COOKIE_SET,
    ), create_token, shed_early=_shed_early)
    router.add(Operation(
        "POST", "/v1/auth/refresh", "A new token pair for a refresh token (each works once)",
        request=RefreshRequest, tags=["accounts"], parameters=[REFRESH_COOKIE_PARAMETER],
        responses={200: ("the session's new pair; the refresh token presented is used up", SignedIn),
                   401: ("invalid_refresh_token (none presented, unknown, expired, revoked), or "
                         "refresh_token_reused: presented a second time, which revokes every session of the "
                         "account", None),
                   422: ("invalid_request (fields)", None), 503: shed},
        links={200: signed_in}, headers=REFRESH_COOKIE_SET,
    ), refresh_token, shed_early=_shed_early)
    router.add(Operation(
        "POST", "/v1/auth/logout", "End the caller's session: its refresh token stops working", tags=["accounts"],
        security=["bearer"],
        responses={204: ("signed out (the access token itself lives until it expires, at most "
                         "ORDER_ACCESS_TOKEN_TTL_S)", None),
                   401: ("unauthorized, invalid_token, token_expired, or token_superseded", None)},
        headers={204: {"Set-Cookie": {"description": f"{REFRESH_COOKIE}=\"\"; Max-Age=0; Path=/v1/auth: the page's "
                                                     "refresh cookie, cleared", "required": True,
                                      "schema": {"type": "string"}}}},
    ), logout)
