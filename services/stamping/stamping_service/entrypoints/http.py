"""The stamping service's HTTP API: the buyer's quota, uploads of documents to stamp, their
download, and the public verification of stamped documents."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from emeterai_shared import idempotency
from emeterai_shared.admission import Admission
from emeterai_shared.auth import Caller
from emeterai_shared.http import ApiError, OpenApi, Operation
from emeterai_shared.multipart import read_form
from emeterai_shared.ratelimit import RateLimiter
from emeterai_shared.uow import unit_of_work
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from stamping_service.adapters.documents import DocumentStore, Kind
from stamping_service.adapters.pdfpool import PdfPool, PdfTimeout, PdfWorkerDied
from stamping_service.adapters.quota import QuotaRepository
from stamping_service.adapters.stampings import NewStamping, StampingRepository, StampingView
from stamping_service.config import StampingSettings
from stamping_service.messages import StampingJobQueued
from stamping_service.metrics import UPLOADS, VERIFICATIONS
from stamping_service.pdf.inspect import Limits, PdfRejected, RejectCode
from stamping_service.pdf.verify import StampCheck

FORM_FIELDS = ("page", "x", "y", "size", "reason", "sn", "password")


class QuotaView(BaseModel):
    """The caller's stamps as the stamping service knows them from minting's events.

    A RESERVED stamp (held by a stamping job in progress) counts in neither ``available`` nor
    ``used``: it becomes USED when its document is stamped, or UNUSED again if the job fails.
    """

    available: int = Field(description="UNUSED stamps: free to stamp a document with")
    used: int = Field(description="stamps affixed to a document")
    serials_available: list[str] = Field(description="the UNUSED serials, oldest issuance first (then by serial)")


def _absent_not_null(schema: dict[str, Any]) -> None:
    """A form field is absent or text, never null: no null default in the published schema."""
    for member in schema.get("properties", {}).values():
        if "default" in member and member["default"] is None:
            del member["default"]


class StampingForm(BaseModel):
    """The multipart form of ``POST /v1/stampings`` (besides ``file``, the PDF itself)."""

    model_config = ConfigDict(json_schema_extra=_absent_not_null)

    file: bytes = Field(default=b"", description="the PDF to stamp (multipart file part)", exclude=True)
    page: int = Field(default=1, ge=1, description="1-based page the stamp goes on")
    x: float = Field(ge=0, description="points from the left of the page to the stamp's lower-left corner")
    y: float = Field(ge=0, description="points from the bottom of the page to the stamp's lower-left corner")
    size: float = Field(default=100, gt=0, le=1000, description="side of the square stamp, in points")
    reason: str = Field(default="Dokumen", min_length=1, max_length=200, description="signature reason")
    sn: str | SkipJsonSchema[None] = Field(
        default=None, min_length=1, max_length=64,
        description="the serial to use (one of the caller's UNUSED ones); default the oldest")
    password: str | SkipJsonSchema[None] = Field(default=None, max_length=256,
                                                 description="password of an encrypted PDF")


class StampingUpload(StampingForm):
    """The multipart form of ``POST /v1/stampings`` as published: the ``file`` part (a PDF) and the
    text fields (UTF-8 without NUL; an empty one counts as absent, except ``reason``). Parts with
    other names are ignored."""

    file: bytes = Field(description="the PDF to stamp", json_schema_extra={"contentMediaType": "application/pdf"})


class StampingAccepted(BaseModel):
    stamping_id: uuid.UUID
    status: str


class StampingStatus(BaseModel):
    stamping_id: uuid.UUID
    status: str = Field(description="QUEUED | STAMPING | DONE | FAILED")
    sn: str = Field(description="the serial reserved for (DONE: affixed to) the document; a FAILED job's "
                                "serial is back among the caller's available ones")
    error: str | None = Field(description="why a FAILED job failed")
    document_sha256: str | None = Field(default=None, description="SHA-256 of the stamped PDF (DONE)")
    stamped_at: datetime | None = Field(default=None, description="when the document was stamped (DONE)")


class VerifyForm(BaseModel):
    """The multipart form of ``POST /v1/verify``: the ``file`` part; parts with other names are ignored."""

    file: bytes = Field(description="the PDF to verify (multipart file part)",
                        json_schema_extra={"contentMediaType": "application/pdf"})


class VerifiedStamp(BaseModel):
    sn: str = Field(description="the serial read from the signature's reason `[SN] ...`")
    status: str = Field(description="the serial in the registry: STAMPED, UNUSED (issued, not affixed "
                                    "through this platform) or UNKNOWN")
    signed_at: datetime | None = Field(description="the timestamp token's time, else the signer's claimed time")
    intact: bool = Field(description="the signature is sound and covers the whole file up to its revision; "
                                     "anything after it is at most further signing")
    trusted: bool = Field(description="the signing certificate chains to our published root")


class Verification(BaseModel):
    valid: bool = Field(description="at least one stamp, and every stamp intact, trusted and STAMPED in the "
                                    "registry")
    stamps: list[VerifiedStamp]
    other_signatures: int = Field(description="signatures in the file that are not e-meterai stamps")


async def _read_form(request: web.Request, max_upload: int) -> tuple[StampingForm, bytes]:
    """The upload form (``emeterai_shared.multipart``: 415, 400 ``malformed_form``, 413 ``too_large``,
    422 ``file_required``), then its fields: 422 ``invalid_request``."""
    form = await read_form(request, files={"file": max_upload}, fields=FORM_FIELDS, required_files=("file",))
    try:
        fields = StampingForm.model_validate(
            {k: v for k, v in form.fields.items() if v != "" or k == "reason"})
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise ApiError(422, "invalid_request", "; ".join(f"{e['field']}: {e['message']}" for e in errors),
                       extra={"fields": errors}) from exc
    return fields, form.files["file"]


async def _inspect(pdf: PdfPool, data: bytes, form: StampingForm, limits: Limits) -> None:
    try:
        await pdf.inspect(data, form.password, form.page, form.x, form.y, form.size, limits)
    except PdfTimeout as exc:
        raise ApiError(422, "parse_timeout", f"the document took longer than {limits.parse_timeout_s}s "
                                             f"to read") from exc
    except PdfWorkerDied as exc:
        raise ApiError(422, RejectCode.UNREADABLE.value, "the document could not be read") from exc
    except PdfRejected as exc:
        status = 413 if exc.code == RejectCode.TOO_LARGE else 422
        raise ApiError(status, exc.code.value, exc.message) from exc


async def _read_file(request: web.Request, max_bytes: int) -> bytes:
    """The ``file`` part of a multipart body (other parts ignored), streamed under ``max_bytes``."""
    form = await read_form(request, files={"file": max_bytes}, required_files=("file",))
    return form.files["file"]


def _registry_status(projection: str | None) -> str:
    return {"USED": "STAMPED", "UNUSED": "UNUSED", "RESERVED": "UNUSED"}.get(projection or "", "UNKNOWN")


def _verification(checks: list[StampCheck], statuses: dict[str, str]) -> Verification:
    stamps = [VerifiedStamp(sn=c.sn, status=_registry_status(statuses.get(c.sn)), signed_at=c.signed_at,
                            intact=c.intact, trusted=c.trusted) for c in checks if c.sn is not None]
    valid = bool(stamps) and all(
        s.intact and s.trusted and s.status == "STAMPED" for s in stamps) and all(
        c.valid for c in checks if c.sn is not None)
    return Verification(valid=valid, stamps=stamps, other_signatures=sum(1 for c in checks if c.sn is None))


def add_routes(app: web.Application, spec: OpenApi, pool: asyncpg.Pool,
               caller: Callable[[web.Request], Caller], settings: StampingSettings,
               pdf_pool: Callable[[], PdfPool], store: DocumentStore, limiter: RateLimiter,
               admission: Admission) -> None:
    """``caller`` (a buyer's bearer token or a partner's ``X-Api-Key``) and ``pdf_pool`` are called
    per request, so that building the app reads no key file and starts no process. ``limiter``
    limits ``/v1/verify`` per client address; ``admission`` sheds uploads while the stamping
    backlog is past what the workers drain."""
    limits = settings.inspect_limits()
    uploads_per_account = RateLimiter(settings.upload_rate_per_account_per_s, settings.upload_burst_per_account)
    uploads_per_partner = RateLimiter(settings.partner_upload_rate_per_s, settings.partner_upload_burst)

    async def get_quota(request: web.Request) -> web.Response:
        principal = caller(request)
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            quota = await QuotaRepository(conn).quota(principal.account_id)
        view = QuotaView(available=quota.available, used=quota.used, serials_available=quota.serials_available)
        return web.json_response(view.model_dump(mode="json"))

    async def post_stamping(request: web.Request) -> web.Response:
        principal = caller(request)
        try:  # limits before the body is read: shedding is cheap
            if principal.partner_id is not None:
                uploads_per_partner.enforce(principal.partner_id)
            else:
                uploads_per_account.enforce(str(principal.account_id))
            with admission.slot():
                return await _post_stamping(request, principal)
        except ApiError as exc:
            UPLOADS.labels(exc.code).inc()
            raise

    async def _post_stamping(request: web.Request, principal: Caller) -> web.Response:
        """An admitted upload; refusals raise ``ApiError`` (counted by the caller)."""
        key = idempotency.key_from(request, required=True)
        assert key is not None
        form, data = await _read_form(request, settings.max_upload_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        digest = idempotency.request_hash(
            "POST", "/v1/stampings", {**form.model_dump(mode="json"), "file_sha256": sha256})
        await _inspect(pdf_pool(), data, form, limits)

        scope = f"stamping:{principal.account_id}"
        async with unit_of_work(pool) as uow:
            stored = await idempotency.claim(uow.conn, scope, key, digest)
            if stored is not None:
                return stored.response()
            repo = StampingRepository(uow.conn)
            sn = await repo.reserve(principal.account_id, form.sn)
            if sn is None:
                if form.sn is not None:
                    raise ApiError(409, "sn_unavailable",
                                   f"serial {form.sn} is not an unused stamp of this account")
                raise ApiError(409, "no_quota", "no unused stamp left: buy more stamps first")
            stamping_id = uuid.uuid4()
            await repo.insert(NewStamping(id=stamping_id, account_id=principal.account_id, sn=sn, page=form.page,
                                          x=form.x, y=form.y, size=form.size, reason=form.reason,
                                          password=form.password, document_sha256=sha256))
            await store.put(uow.conn, stamping_id, Kind.ORIGINAL, data)
            uow.publish(StampingJobQueued(stamping_id=stamping_id, account_id=principal.account_id, sn=sn),
                        correlation_id=str(stamping_id))
            body = StampingAccepted(stamping_id=stamping_id, status="QUEUED").model_dump(mode="json")
            await idempotency.complete(uow.conn, scope, key, 202, body)
        UPLOADS.labels("accepted").inc()
        return web.json_response(body, status=202)

    async def owned(request: web.Request, conn: asyncpg.Connection) -> StampingView:
        principal = caller(request)
        try:
            stamping_id = uuid.UUID(request.match_info["id"])
        except ValueError as exc:
            raise ApiError(404, "not_found", "no such stamping") from exc
        view = await StampingRepository(conn).get(stamping_id, principal.account_id)
        if view is None:
            raise ApiError(404, "not_found", "no such stamping")
        return view

    async def get_stamping(request: web.Request) -> web.Response:
        async with pool.acquire() as conn:
            view = await owned(request, conn)
        body = StampingStatus(stamping_id=view.id, status=view.status, sn=view.sn, error=view.error,
                              document_sha256=view.stamped_sha256, stamped_at=view.stamped_at)
        return web.json_response(body.model_dump(mode="json"))

    async def get_document(request: web.Request) -> web.Response:
        async with pool.acquire() as conn:
            view = await owned(request, conn)
            if view.status in ("QUEUED", "STAMPING"):
                raise ApiError(409, "not_ready", f"the document is {view.status}: try again shortly",
                               headers={"Retry-After": "2"})
            if view.status == "FAILED":
                raise ApiError(409, "stamping_failed", f"the stamping failed: {view.error}")
            document = await store.get(conn, view.id, Kind.STAMPED)
        if document is None:
            raise ApiError(410, "document_expired", "the stamped document is past its retention period")
        etag = f'"{document.sha256}"'
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=document.data, content_type="application/pdf", headers={
            "ETag": etag, "Content-Disposition": f'attachment; filename="e-meterai-{view.sn}.pdf"',
            "Cache-Control": "private, max-age=0"})

    async def post_verify(request: web.Request) -> web.Response:
        try:
            limiter.enforce(request.remote or "unknown")
            data = await _read_file(request, settings.max_upload_bytes)
            if b"%PDF-" not in data[:1024]:
                raise ApiError(422, RejectCode.NOT_A_PDF.value, "the file is not a PDF document")
            checks = await pdf_pool().verify(data, None, settings.verify_timeout_s)
        except (PdfTimeout, PdfWorkerDied) as exc:
            VERIFICATIONS.labels("unreadable").inc()
            raise ApiError(422, RejectCode.UNREADABLE.value, "the document could not be read in time") from exc
        except ApiError as exc:
            VERIFICATIONS.labels(exc.code).inc()
            raise
        sns = sorted({c.sn for c in checks if c.sn is not None})
        statuses: dict[str, str] = {}
        if sns:
            rows = await pool.fetch("SELECT sn, status FROM stamps WHERE sn = ANY($1::text[])", sns)
            statuses = {r["sn"]: r["status"] for r in rows}
        result = _verification(checks, statuses)
        VERIFICATIONS.labels("valid" if result.valid else "invalid").inc()
        return web.json_response(result.model_dump(mode="json"))

    app.router.add_get("/v1/quota", get_quota)
    app.router.add_post("/v1/stampings", post_stamping)
    app.router.add_get("/v1/stampings/{id}", get_stamping)
    app.router.add_get("/v1/stampings/{id}/document", get_document)
    app.router.add_post("/v1/verify", post_verify)

    spec.security_schemes["bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)",
                                       "description": "a buyer's token (order service, POST /v1/accounts)"}
    spec.security_schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                                       "description": "a partner system's key; taken before a bearer token"}
    unauthorized = ("unauthorized, invalid_token, token_expired or invalid_api_key", None)
    stamping_id = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
    pdf_part = {"file": {"contentType": "application/pdf, application/octet-stream"}}
    spec.add(Operation("GET", "/v1/quota", "The caller's stamps: available, used and the serials available",
                       tags=["stamping"], security=["bearer", "apiKey"],
                       responses={200: ("the caller's quota", QuotaView), 401: unauthorized}))
    from_upload = {"id": "$response.body#/stamping_id"}
    spec.add(Operation(
        "POST", "/v1/stampings", "Upload a PDF to stamp: validated, then a serial is reserved and a job queued",
        request=StampingUpload, request_content_type="multipart/form-data", request_encoding=pdf_part,
        tags=["stamping"], security=["bearer", "apiKey"], parameters=[idempotency.header_parameter(required=True)],
        responses={202: ("the job is queued with a reserved serial", StampingAccepted),
                   400: ("malformed_form, idempotency_key_required or invalid_idempotency_key", None),
                   401: unauthorized,
                   409: ("no_quota, or sn_unavailable", None),
                   413: ("too_large: the file, or the whole body, past the limit", None),
                   415: ("multipart_required", None),
                   422: ("a refused document (code: not_a_pdf, unreadable, encrypted, page_out_of_range, "
                         "stamp_outside_page, ...), parse_timeout, file_required, invalid_request (fields), or "
                         "idempotency_key_reused", None),
                   429: ("rate_limited: this account's or partner's upload rate (Retry-After)", None),
                   503: ("overloaded: the stamping backlog is past what the workers drain in the target wait "
                         "(Retry-After; body retry_after_s, retry_at), or busy", None)},
        links={202: {"GetStamping": {"operationId": "get_v1_stampings_id", "parameters": from_upload},
                     "GetDocument": {"operationId": "get_v1_stampings_id_document", "parameters": from_upload}}}))
    spec.add(Operation("GET", "/v1/stampings/{id}", "The caller's stamping job", tags=["stamping"],
                       security=["bearer", "apiKey"], parameters=stamping_id,
                       responses={200: ("the job", StampingStatus), 401: unauthorized,
                                  404: ("not_found: no such job of the caller's", None)},
                       links={200: {"GetDocument": {"operationId": "get_v1_stampings_id_document",
                                                    "parameters": {"id": "$response.body#/stamping_id"}}}}))
    spec.add(Operation(
        "GET", "/v1/stampings/{id}/document", "The stamped PDF (application/pdf; ETag is its SHA-256)",
        tags=["stamping"], security=["bearer", "apiKey"],
        parameters=[*stamping_id, {"name": "If-None-Match", "in": "header", "required": False,
                                   "schema": {"type": "string"}, "description": "the ETag of a copy already held"}],
        responses={200: ("the stamped PDF", None), 304: ("If-None-Match matched the ETag", None),
                   401: unauthorized, 404: ("not_found: no such job of the caller's", None),
                   409: ("not_ready (QUEUED or STAMPING; Retry-After), or stamping_failed", None),
                   410: ("document_expired: past the retention period", None)},
        media={200: "application/pdf"}))
    spec.add(Operation(
        "POST", "/v1/verify", "Verify the e-meterai stamps of a PDF (public, multipart `file`)",
        request=VerifyForm, request_content_type="multipart/form-data", request_encoding=pdf_part,
        tags=["verification"],
        responses={200: ("one entry per stamp (a signature whose reason carries a serial)", Verification),
                   400: ("malformed_form", None), 413: ("too_large", None), 415: ("multipart_required", None),
                   422: ("file_required, not_a_pdf, or unreadable (the document could not be read in time)",
                         None),
                   429: ("rate_limited (per client address; Retry-After)", None)}))
