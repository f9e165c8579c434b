"""SNAP endpoints for partner banks under ``/snap``: B2B access token, VA inquiry, VA payment flag.

Every answer is SNAP JSON (``responseCode`` = HTTP status + service code + case), never the
platform's error format; an unexpected failure is HTTP 500 ``5002x00`` without details, a fault
(the database out of reach, e.g. restarting) HTTP 504 ``5042x00`` Timeout with ``Retry-After``:
the bank re-sends it as an advice, as after any timeout. Checks,
in order: a body that is JSON at all (``4002x01``), token (``4012x01``), X-PARTNER-ID/X-CLIENT-KEY
against the token's bank, X-TIMESTAMP within the skew and X-SIGNATURE over the raw body and the
path called (``4012x00``), X-EXTERNAL-ID, body fields (``4002x01``/``4002x02``); then the use case.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from emeterai_shared.http import DATABASE_UNAVAILABLE, JsonBodyError, Operation, decode_json, respond
from emeterai_shared.runtime import Router
from emeterai_shared.uow import UnitOfWork, unit_of_work
from pydantic import BaseModel

from payment_service.adapters.banks import Bank
from payment_service.adapters.snap import INQUIRY_PATH, PAYMENT_PATH, QR_NOTIFY_PATH, TOKEN_PATH
from payment_service.adapters.snap.codes import Case, Service, http_status
from payment_service.adapters.snap.models import (
    AccessTokenAnswer,
    AccessTokenRequest,
    InquiryAnswer,
    InquiryRequest,
    PaymentFlagAnswer,
    PaymentRequest,
    QrNotifyRequest,
    SnapFieldError,
    SnapResult,
    token_response,
    validate_access_token_request,
    validate_inquiry,
    validate_payment,
    validate_qr_notify,
)
from payment_service.adapters.snap.signatures import (
    body_sha256_hex,
    parse_snap_timestamp,
    timestamp_within,
    verify_access_token_signature,
    verify_transaction_signature,
)
from payment_service.dependencies import PaymentDeps
from payment_service.metrics import PAYMENTS_CAPTURED, SNAP_RESPONSES
from payment_service.service_layer import qris
from payment_service.service_layer.payments import PaymentNotice, flag_payment, inquire
from payment_service.service_layer.tokens import bank_of_token, issue_token

log = logging.getLogger(__name__)

_EXTERNAL_ID = re.compile(r"[0-9]{1,36}")

SnapUseCase = Callable[[web.Request, bytes, "PaymentDeps"], Awaitable[SnapResult]]
"""One SNAP endpoint's work: the request and its raw body in, the answer (a documented model) out."""


class SnapRefusal(Exception):
    """Answer with ``case`` for the endpoint's service (authentication and header problems)."""

    def __init__(self, case: Case, message: str | None = None) -> None:
        super().__init__(message or case.message)
        self.case = case
        self.message = message


def _unauthorized(reason: str) -> SnapRefusal:
    return SnapRefusal(Case.UNAUTHORIZED, f"Unauthorized. {reason}")


def _require_json(raw: bytes) -> None:
    """A body that is not JSON at all (bad syntax or UTF-8, nested past the kernel's depth bound) is
    ``4002x01`` before any authentication: a bank debugging its integration learns that its body is
    broken, not that its signature is. The fields are validated after the signature."""
    try:
        decode_json(raw)
    except JsonBodyError:
        raise SnapFieldError("invalid", "body") from None


async def _answer(service: Service, use_case: SnapUseCase, request: web.Request,
                  deps: PaymentDeps) -> web.Response:
    """Run ``use_case``; turn refusals, field errors and unexpected failures into SNAP answers, and
    count them. The HTTP status is the answer's (the first three digits of its code)."""
    answer: SnapResult
    try:
        raw = await request.read()
        _require_json(raw)
        answer = await use_case(request, raw, deps)
    except SnapRefusal as exc:
        answer = SnapResult.of(exc.case.code(service), exc.message)
    except SnapFieldError as exc:
        answer = exc.response(service)
    except (web.HTTPRequestEntityTooLarge, RequestPayloadError):  # too large, or not in its Content-Encoding
        answer = SnapResult.of(Case.INVALID_FIELD_FORMAT.code(service), "Invalid Field Format {body}")
    except DATABASE_UNAVAILABLE as exc:  # a fault, not a failure: nothing happened, the bank tries again
        log.warning("SNAP %s %s: database unavailable: %r", request.method, request.path, exc)
        answer = SnapResult.of(Case.TIMEOUT.code(service))
    except Exception:
        log.exception("SNAP %s %s failed", request.method, request.path)
        answer = SnapResult.of(Case.INTERNAL_ERROR.code(service))
    code = answer.responseCode
    SNAP_RESPONSES.labels(service.name.lower(), code).inc()
    retry = {"Retry-After": "2"} if code == Case.TIMEOUT.code(service) else None
    return respond(answer, status=http_status(code), headers=retry, exclude_none=True)


def _timestamp(request: web.Request, deps: PaymentDeps, now: datetime) -> datetime:
    try:
        ts = parse_snap_timestamp(request.headers.get("X-TIMESTAMP", ""))
    except ValueError:
        raise _unauthorized("Invalid X-TIMESTAMP") from None
    if not timestamp_within(ts, now, timedelta(seconds=deps.settings.snap_timestamp_skew_s)):
        raise _unauthorized("X-TIMESTAMP out of range")
    return ts


async def _access_token(request: web.Request, raw: bytes, deps: PaymentDeps) -> SnapResult:
    now = datetime.now(UTC)
    client_key = request.headers.get("X-CLIENT-KEY", "")
    bank = deps.banks.get(client_key)
    acquirer = deps.acquirers.by_notify_client(client_key) if bank is None else None
    if bank is None and acquirer is None:
        raise _unauthorized("Unknown client")
    public_key = bank.public_key if bank is not None else acquirer.public_key  # type: ignore[union-attr]
    _timestamp(request, deps, now)
    if not verify_access_token_signature(public_key, client_key, request.headers["X-TIMESTAMP"],
                                         request.headers.get("X-SIGNATURE", "")):
        raise _unauthorized("Signature")
    validate_access_token_request(raw)
    ttl = deps.settings.snap_token_ttl_s
    async with deps.pool.acquire() as conn:  # one INSERT: no transaction around it
        token = await issue_token(UnitOfWork(conn), client_key, timedelta(seconds=ttl), now, deps.tokens)
    return token_response(token, ttl)


async def _authenticate(uow: UnitOfWork, request: web.Request, raw: bytes, deps: PaymentDeps,
                        now: datetime) -> tuple[Bank, datetime, str]:
    """The calling bank, its X-TIMESTAMP and its X-EXTERNAL-ID."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    client_id = await bank_of_token(uow, token, now, deps.tokens) if scheme.lower() == "bearer" and token else None
    bank = deps.banks.get(client_id) if client_id is not None else None
    if bank is None:
        raise SnapRefusal(Case.INVALID_TOKEN)
    if request.headers.get("X-PARTNER-ID") != bank.client_id or \
            request.headers.get("X-CLIENT-KEY", bank.client_id) != bank.client_id:
        raise _unauthorized("X-PARTNER-ID does not match the access token")
    ts = _timestamp(request, deps, now)
    if not verify_transaction_signature(bank.client_secret, request.method, request.path, token, raw,
                                        request.headers["X-TIMESTAMP"], request.headers.get("X-SIGNATURE", "")):
        raise _unauthorized("Signature")
    external_id = request.headers.get("X-EXTERNAL-ID", "")
    if not external_id:
        raise SnapRefusal(Case.MISSING_MANDATORY_FIELD, "Invalid Mandatory Field {X-EXTERNAL-ID}")
    if not _EXTERNAL_ID.fullmatch(external_id):
        raise SnapRefusal(Case.INVALID_FIELD_FORMAT, "Invalid Field Format {X-EXTERNAL-ID}")
    return bank, ts, external_id


async def _inquiry(request: web.Request, raw: bytes, deps: PaymentDeps) -> SnapResult:
    now = datetime.now(UTC)
    async with deps.pool.acquire() as conn:  # reads only: no transaction
        uow = UnitOfWork(conn)
        bank, _, _ = await _authenticate(uow, request, raw, deps, now)
        return await inquire(uow, bank.client_id, validate_inquiry(raw), now)


async def _payment(request: web.Request, raw: bytes, deps: PaymentDeps) -> SnapResult:
    now = datetime.now(UTC)
    async with unit_of_work(deps.pool) as uow:
        bank, ts, external_id = await _authenticate(uow, request, raw, deps, now)
        body = validate_payment(raw)
        trx_time = None
        if body.trx_date_time is not None:
            try:
                trx_time = parse_snap_timestamp(body.trx_date_time)
            except ValueError:
                raise SnapRefusal(Case.INVALID_FIELD_FORMAT, "Invalid Field Format {trxDateTime}") from None
        notice = PaymentNotice(bank.client_id, external_id, ts, body, body_sha256_hex(raw), trx_time)
        answer = await flag_payment(uow, notice, now)
    if answer.captured is not None:
        PAYMENTS_CAPTURED.labels(str(answer.captured.late).lower()).inc()
    return answer.body


async def _qr_notify(request: web.Request, raw: bytes, deps: PaymentDeps) -> SnapResult:
    """The acquirer's qr-mpm-notify: its token (from our access-token/b2b, X-CLIENT-KEY =
    notify_client_id), X-TIMESTAMP and HMAC X-SIGNATURE with notify_client_secret, then the body."""
    now = datetime.now(UTC)
    async with unit_of_work(deps.pool) as uow:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        client_id = await bank_of_token(uow, token, now, deps.tokens) if scheme.lower() == "bearer" and token else None
        acquirer = deps.acquirers.by_notify_client(client_id) if client_id is not None else None
        if acquirer is None:
            raise SnapRefusal(Case.INVALID_TOKEN)
        if request.headers.get("X-CLIENT-KEY", acquirer.notify_client_id) != acquirer.notify_client_id:
            raise _unauthorized("X-CLIENT-KEY does not match the access token")
        _timestamp(request, deps, now)
        if not verify_transaction_signature(acquirer.notify_client_secret, request.method, request.path, token, raw,
                                            request.headers["X-TIMESTAMP"], request.headers.get("X-SIGNATURE", "")):
            raise _unauthorized("Signature")
        body = validate_qr_notify(raw)
        case, captured = await qris.notify(uow, acquirer, body, decode_json(raw), now)
    if captured:
        PAYMENTS_CAPTURED.labels("false").inc()
    return SnapResult.of(case.code(Service.QR_NOTIFY))


async def qr_notify(request: web.Request, deps: PaymentDeps) -> web.Response:
    return await _answer(Service.QR_NOTIFY, _qr_notify, request, deps)


async def access_token(request: web.Request, deps: PaymentDeps) -> web.Response:
    return await _answer(Service.ACCESS_TOKEN, _access_token, request, deps)


async def va_inquiry(request: web.Request, deps: PaymentDeps) -> web.Response:
    return await _answer(Service.INQUIRY, _inquiry, request, deps)


async def va_payment(request: web.Request, deps: PaymentDeps) -> web.Response:
    return await _answer(Service.PAYMENT, _payment, request, deps)


# --- OpenAPI: what partner banks see ---------------------------------------------------------

_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "X-TIMESTAMP": {"type": "string", "format": "date-time",
                    "description": "ISO-8601 with a UTC offset, within the allowed skew of our clock"},
    "X-EXTERNAL-ID": {"type": "string", "pattern": "^[0-9]{1,36}$",
                      "description": "unique per bank per day: a repeat is a replay (18) or a conflict (409)"},
    "X-CLIENT-KEY": {"type": "string", "description": "the bank's client_id"},
    "X-PARTNER-ID": {"type": "string", "description": "the bank's client_id (as its access token's)"},
    "CHANNEL-ID": {"type": "string"},
}


def _headers(*names: str) -> list[dict[str, Any]]:
    """Signed headers (X-SIGNATURE itself is the security scheme's)."""
    return [{"name": name, "in": "header", "required": True,
             "schema": {k: v for k, v in _HEADER_SCHEMAS[name].items() if k != "description"},
             "description": _HEADER_SCHEMAS[name].get("description", "")} for name in names]


_TRANSACTION_HEADERS = _headers("X-TIMESTAMP", "X-PARTNER-ID", "X-EXTERNAL-ID", "CHANNEL-ID")
_ERRORS: dict[int, tuple[str, type[BaseModel] | None]] = {
    400: ("invalid field format (01): a body that is not JSON (checked before any authentication, also for "
          "a body past the size limit), or a field; missing mandatory field (02)", SnapResult),
    401: ("unauthorized: signature, timestamp, client (00); invalid token (01)", SnapResult),
    500: ("internal error (00)", SnapResult),
    504: ("timeout (00): the biller cannot answer now (a fault); retry after Retry-After", SnapResult),
}


class BankView(BaseModel):
    client_id: str
    name: str
    partner_service_id: str


class BanksPage(BaseModel):
    """The partner banks an order can name (``"bank": client_id``); the first is the default.
    A virtual-account number starts with its bank's ``partner_service_id``."""

    banks: list[BankView]


async def list_banks(_: web.Request, deps: PaymentDeps) -> web.Response:
    return respond(BanksPage(banks=[BankView(client_id=b.client_id, name=b.display_name,
                                             partner_service_id=b.partner_service_id)
                                    for b in deps.banks.all()]),
                   headers={"Cache-Control": "public, max-age=300"})


def routes(router: Router[PaymentDeps]) -> None:
    if router.spec is not None:
        router.spec.security_schemes["snapClientSignature"] = {
            "type": "apiKey", "in": "header", "name": "X-SIGNATURE",
            "description": "base64 SHA256withRSA(bank private key, X-CLIENT-KEY + '|' + X-TIMESTAMP)",
        }
        router.spec.security_schemes["snapBearer"] = {
            "type": "http", "scheme": "bearer",
            "description": "B2B access token; X-SIGNATURE = base64 HMAC-SHA512(client secret, "
                           "METHOD:path:token:hex(sha256(minified body)):X-TIMESTAMP)",
        }
    router.add(Operation(
        "GET", "/v1/banks", "The partner banks to pay at (public): names, ids, virtual-account prefixes",
        tags=["banks"], responses={200: ("the banks, the default first", BanksPage)},
    ), list_banks)
    router.add(Operation(
        "POST", TOKEN_PATH, "SNAP B2B access token (service 73)", request=AccessTokenRequest,
        responses={200: ("token issued (2007300)", AccessTokenAnswer), **_ERRORS},
        security=["snapClientSignature"], tags=["snap"], parameters=_headers("X-TIMESTAMP", "X-CLIENT-KEY"),
        oversize_status=None,
    ), access_token)
    router.add(Operation(
        "POST", INQUIRY_PATH, "SNAP virtual-account inquiry (service 24)", request=InquiryRequest,
        responses={200: ("the bill (2002400)", InquiryAnswer),
                   404: ("VA not found (12), bill paid (14), VA expired (19)", InquiryAnswer), **_ERRORS},
        security=["snapBearer"], tags=["snap"], parameters=_TRANSACTION_HEADERS, oversize_status=None,
    ), va_inquiry)
    router.add(Operation(
        "POST", PAYMENT_PATH, "SNAP virtual-account payment flag (service 25)", request=PaymentRequest,
        responses={200: ("payment accepted (2002500)", PaymentFlagAnswer),
                   404: ("VA not found (12), invalid amount (13), paid (14), replay (18), expired (19)",
                         PaymentFlagAnswer),
                   409: ("X-EXTERNAL-ID reused with other content, or paymentRequestId of another VA (00)",
                         PaymentFlagAnswer),
                   **_ERRORS},
        security=["snapBearer"], tags=["snap"], parameters=_TRANSACTION_HEADERS, oversize_status=None,
    ), va_payment)
    router.add(Operation(
        "POST", QR_NOTIFY_PATH, "SNAP QRIS MPM notify (service 52): the acquirer reports a QR's payment",
        request=QrNotifyRequest,
        responses={200: ("stored (2005200), also for the same notify again", SnapResult),
                   404: ("unknown reference (01), amount differs from the bill (13)", SnapResult), **_ERRORS},
        security=["snapBearer"], tags=["snap"], parameters=_TRANSACTION_HEADERS, oversize_status=None,
    ), qr_notify)
