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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from emeterai_shared.http import DATABASE_UNAVAILABLE, JsonBodyError, OpenApi, decode_json
from emeterai_shared.uow import unit_of_work

from payment_service.adapters.banks import Bank, BankRegistry
from payment_service.config import PaymentSettings
from payment_service.entrypoints.snap_openapi import document_snap
from payment_service.metrics import PAYMENTS_CAPTURED, SNAP_RESPONSES
from payment_service.service_layer.payments import PaymentNotice, flag_payment, inquire
from payment_service.service_layer.tokens import bank_of_token, issue_token
from payment_service.snap.banksim import INQUIRY_PATH, PAYMENT_PATH, TOKEN_PATH
from payment_service.snap.codes import Case, Service, http_status
from payment_service.snap.models import (
    SnapFieldError,
    error_response,
    token_response,
    validate_access_token_request,
    validate_inquiry,
    validate_payment,
)
from payment_service.snap.signatures import (
    body_sha256_hex,
    parse_snap_timestamp,
    timestamp_within,
    verify_access_token_signature,
    verify_transaction_signature,
)

log = logging.getLogger(__name__)

_EXTERNAL_ID = re.compile(r"[0-9]{1,36}")

SnapHandler = Callable[[web.Request, bytes], Awaitable[dict[str, Any]]]


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


def _endpoint(service: Service, handler: SnapHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Turn refusals, field errors and unexpected failures into SNAP answers, and count them."""

    async def endpoint(request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            _require_json(raw)
            body = await handler(request, raw)
        except SnapRefusal as exc:
            body = error_response(exc.case.code(service), exc.message)
        except SnapFieldError as exc:
            body = exc.response(service)
        except (web.HTTPRequestEntityTooLarge, RequestPayloadError):  # too large, or not in its Content-Encoding
            body = error_response(Case.INVALID_FIELD_FORMAT.code(service), "Invalid Field Format {body}")
        except DATABASE_UNAVAILABLE as exc:  # a fault, not a failure: nothing happened, the bank tries again
            log.warning("SNAP %s %s: database unavailable: %r", request.method, request.path, exc)
            body = error_response(Case.TIMEOUT.code(service))
        except Exception:
            log.exception("SNAP %s %s failed", request.method, request.path)
            body = error_response(Case.INTERNAL_ERROR.code(service))
        code = body["responseCode"]
        SNAP_RESPONSES.labels(service.name.lower(), code).inc()
        retry = {"Retry-After": "2"} if code == Case.TIMEOUT.code(service) else None
        return web.json_response(body, status=http_status(code), headers=retry)

    return endpoint


@dataclass(frozen=True)
class SnapApi:
    pool: asyncpg.Pool
    banks: BankRegistry
    settings: PaymentSettings

    def _timestamp(self, request: web.Request, now: datetime) -> datetime:
        try:
            ts = parse_snap_timestamp(request.headers.get("X-TIMESTAMP", ""))
        except ValueError:
            raise _unauthorized("Invalid X-TIMESTAMP") from None
        if not timestamp_within(ts, now, timedelta(seconds=self.settings.snap_timestamp_skew_s)):
            raise _unauthorized("X-TIMESTAMP out of range")
        return ts

    async def access_token(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        now = datetime.now(UTC)
        bank = self.banks.get(request.headers.get("X-CLIENT-KEY", ""))
        if bank is None:
            raise _unauthorized("Unknown client")
        self._timestamp(request, now)
        if not verify_access_token_signature(bank.public_key, bank.client_id, request.headers["X-TIMESTAMP"],
                                             request.headers.get("X-SIGNATURE", "")):
            raise _unauthorized("Signature")
        validate_access_token_request(raw)
        ttl = self.settings.snap_token_ttl_s
        return token_response(await issue_token(self.pool, bank.client_id, timedelta(seconds=ttl), now), ttl)

    async def _authenticate(self, request: web.Request, raw: bytes, now: datetime) -> tuple[Bank, datetime, str]:
        """The calling bank, its X-TIMESTAMP and its X-EXTERNAL-ID."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        client_id = await bank_of_token(self.pool, token, now) if scheme.lower() == "bearer" and token else None
        bank = self.banks.get(client_id) if client_id is not None else None
        if bank is None:
            raise SnapRefusal(Case.INVALID_TOKEN)
        if request.headers.get("X-PARTNER-ID") != bank.client_id or \
                request.headers.get("X-CLIENT-KEY", bank.client_id) != bank.client_id:
            raise _unauthorized("X-PARTNER-ID does not match the access token")
        ts = self._timestamp(request, now)
        if not verify_transaction_signature(bank.client_secret, request.method, request.path, token, raw,
                                            request.headers["X-TIMESTAMP"], request.headers.get("X-SIGNATURE", "")):
            raise _unauthorized("Signature")
        external_id = request.headers.get("X-EXTERNAL-ID", "")
        if not external_id:
            raise SnapRefusal(Case.MISSING_MANDATORY_FIELD, "Invalid Mandatory Field {X-EXTERNAL-ID}")
        if not _EXTERNAL_ID.fullmatch(external_id):
            raise SnapRefusal(Case.INVALID_FIELD_FORMAT, "Invalid Field Format {X-EXTERNAL-ID}")
        return bank, ts, external_id

    async def inquiry(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        now = datetime.now(UTC)
        bank, _, _ = await self._authenticate(request, raw, now)
        return await inquire(self.pool, bank.client_id, validate_inquiry(raw), now)

    async def payment(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        now = datetime.now(UTC)
        bank, ts, external_id = await self._authenticate(request, raw, now)
        body = validate_payment(raw)
        trx_time = None
        if body.trx_date_time is not None:
            try:
                trx_time = parse_snap_timestamp(body.trx_date_time)
            except ValueError:
                raise SnapRefusal(Case.INVALID_FIELD_FORMAT, "Invalid Field Format {trxDateTime}") from None
        notice = PaymentNotice(bank.client_id, external_id, ts, body, body_sha256_hex(raw), trx_time)
        async with unit_of_work(self.pool) as uow:
            answer = await flag_payment(uow, notice, now)
        if answer.captured is not None:
            PAYMENTS_CAPTURED.labels(str(answer.captured.late).lower()).inc()
        return answer.body


def add_snap_routes(app: web.Application, spec: OpenApi, api: SnapApi) -> None:
    app.router.add_post(TOKEN_PATH, _endpoint(Service.ACCESS_TOKEN, api.access_token))
    app.router.add_post(INQUIRY_PATH, _endpoint(Service.INQUIRY, api.inquiry))
    app.router.add_post(PAYMENT_PATH, _endpoint(Service.PAYMENT, api.payment))
    document_snap(spec, token_path=TOKEN_PATH, inquiry_path=INQUIRY_PATH, payment_path=PAYMENT_PATH)
