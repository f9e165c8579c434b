"""The stamping service's HTTP API: the buyer's quota, uploads of documents to stamp, their
download, and the public verification of stamped documents.

Buyers authenticate with a bearer token, partner systems with their ``X-Api-Key``
(``emeterai_shared.auth.caller_from_request``). ``/v1/verify`` is public, limited per client
address; uploads are limited per account or partner, then shed while the stamping backlog is past
what the workers drain (``emeterai_shared.admission``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from aiohttp import web
from emeterai_shared import idempotency, pagination
from emeterai_shared.auth import Caller, caller_from_request
from emeterai_shared.http import ApiError, Operation, respond
from emeterai_shared.idempotency import StoredAnswer
from emeterai_shared.multipart import read_form
from emeterai_shared.runtime import Router
from emeterai_shared.uow import UnitOfWork, unit_of_work
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from stamping_service.adapters.pdf.inspect import Limits, PdfRejected, RejectCode
from stamping_service.adapters.pdfpool import PdfPool, PdfTimeout, PdfWorkerDied
from stamping_service.dependencies import StampingDeps
from stamping_service.domain.stamping import JobStatus, NoQuota, QueuePlace, SerialUnavailable, StampingView
from stamping_service.metrics import UPLOADS, VERIFICATIONS
from stamping_service.service_layer import accounts, queries
from stamping_service.service_layer.upload import Upload, upload

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


class QueueView(BaseModel):
    """Where a QUEUED job stands."""

    position: int = Field(ge=1, description="1 + the jobs queued ahead of it, in the order the workers take them")
    eta_s: int = Field(ge=1, description="seconds until it is stamped, estimated from the measured drain rate")


class StampingStatus(BaseModel):
    stamping_id: uuid.UUID
    status: str = Field(description="QUEUED | STAMPING | DONE | FAILED")
    sn: str = Field(description="the serial reserved for (DONE: affixed to) the document; a FAILED job's "
                                "serial is back among the caller's available ones")
    error: str | None = Field(description="why a FAILED job failed")
    document_sha256: str | None = Field(default=None, description="SHA-256 of the stamped PDF (DONE)")
    stamped_at: datetime | None = Field(default=None, description="when the document was stamped (DONE)")
    queue: QueueView | None = Field(default=None, description="while QUEUED: its place in the queue and ETA; "
                                                              "null otherwise")

    @classmethod
    def of(cls, view: StampingView, place: QueuePlace | None) -> StampingStatus:
        return cls(stamping_id=view.id, status=view.status, sn=view.sn, error=view.error,
                   document_sha256=view.stamped_sha256, stamped_at=view.stamped_at,
                   queue=QueueView(position=place.position, eta_s=place.eta_s) if place is not None else None)


class StampingsPage(BaseModel):
    stampings: list[StampingStatus] = Field(description="the caller's jobs, newest first, as GET /v1/stampings/{id} "
                                                        "gives them (queue included)")
    next: str | None = Field(description="cursor of the next page (pass as ?cursor=); null on the last page")


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


def _caller(request: web.Request, deps: StampingDeps) -> Caller:
    return caller_from_request(request, deps.verifier, deps.partners)


async def get_quota(request: web.Request, deps: StampingDeps) -> web.Response:
    principal = _caller(request, deps)
    async with deps.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await accounts.ensure_current(UnitOfWork(conn), principal)
        quota = await queries.quota(UnitOfWork(conn), principal.account_id)  # one snapshot
    return respond(QuotaView(available=quota.available, used=quota.used,
                             serials_available=quota.serials_available))


def _shed_early(deps: StampingDeps, _request: web.Request) -> None:
    """Uploads' refusals by arithmetic alone (``overloaded``, ``busy``), run by the HTTP middleware
    before the span, the body or the token: shedding must cost next to nothing."""
    try:
        deps.admission.shed_early()
    except ApiError as exc:
        UPLOADS.labels(exc.code).inc()
        raise


async def post_stamping(request: web.Request, deps: StampingDeps) -> web.Response:
    principal = _caller(request, deps)  # the route's _shed_early has run: the token is verified only if admitted
    try:  # limits before the body is read: shedding is cheap
        if principal.partner_id is not None:
            deps.partner_uploads.enforce(principal.partner_id)
        else:
            deps.account_uploads.enforce(str(principal.account_id))
        async with deps.admission.slot():
            return await _post_stamping(request, deps, principal)
    except ApiError as exc:
        UPLOADS.labels(exc.code).inc()
        raise


def _accepted(stamping_id: uuid.UUID) -> Any:
    """The 202 answer (recorded under the Idempotency-Key for replays)."""
    return StampingAccepted(stamping_id=stamping_id, status=JobStatus.QUEUED).model_dump(mode="json")


async def _post_stamping(request: web.Request, deps: StampingDeps, principal: Caller) -> web.Response:
    """An admitted upload; refusals raise ``ApiError`` (counted by the caller)."""
    key = idempotency.key_from(request, required=True)
    assert key is not None
    form, data = await _read_form(request, deps.settings.max_upload_bytes)
    sha256 = hashlib.sha256(data).hexdigest()
    digest = idempotency.request_hash(
        "POST", "/v1/stampings", {**form.model_dump(mode="json"), "file_sha256": sha256})
    await _inspect(deps.pdf, data, form, deps.settings.inspect_limits())
    document = Upload(account_id=principal.account_id, document=data, sha256=sha256, page=form.page, x=form.x,
                      y=form.y, size=form.size, reason=form.reason, sn=form.sn, password=form.password)
    try:
        async with unit_of_work(deps.pool) as uow:
            await accounts.ensure_current(uow, principal)
            outcome = await upload(uow, deps.store, document, key, digest, _accepted)
    except SerialUnavailable as exc:
        raise ApiError(409, "sn_unavailable", str(exc)) from exc
    except NoQuota as exc:
        raise ApiError(409, "no_quota", str(exc)) from exc
    if isinstance(outcome, StoredAnswer):
        return outcome.response()
    UPLOADS.labels("accepted").inc()
    return web.json_response(outcome.answer, status=202)


async def _owned(request: web.Request, deps: StampingDeps, uow: UnitOfWork) -> StampingView:
    principal = _caller(request, deps)
    await accounts.ensure_current(uow, principal)
    try:
        stamping_id = uuid.UUID(request.match_info["id"])
    except ValueError as exc:
        raise ApiError(404, "not_found", "no such stamping") from exc
    view = await queries.stamping(uow, stamping_id, principal.account_id)
    if view is None:
        raise ApiError(404, "not_found", "no such stamping")
    return view


async def _queue_places(uow: UnitOfWork, deps: StampingDeps, views: list[StampingView]) -> dict[uuid.UUID, QueuePlace]:
    """QUEUED jobs' places, with ETAs from the drain rate the admission control measures."""
    return await queries.queue_places(uow, views, deps.admission.drain_per_s, deps.settings.queue_eta_fallback_s)


async def get_stamping(request: web.Request, deps: StampingDeps) -> web.Response:
    # the view uploaders poll until their document is stamped: reads only, so no transaction
    # (BEGIN and COMMIT would be two more round trips than its queries)
    async with deps.pool.acquire() as conn:
        uow = UnitOfWork(conn)
        view = await _owned(request, deps, uow)
        places = await _queue_places(uow, deps, [view])
    return respond(StampingStatus.of(view, places.get(view.id)))


async def list_stampings(request: web.Request, deps: StampingDeps) -> web.Response:
    principal = _caller(request, deps)
    page = pagination.page_request(request)
    async with unit_of_work(deps.pool) as uow:
        views, cursor = await queries.history(uow, principal.account_id, page)
        places = await _queue_places(uow, deps, views)
    return respond(StampingsPage(stampings=[StampingStatus.of(v, places.get(v.id)) for v in views], next=cursor))


async def get_document(request: web.Request, deps: StampingDeps) -> web.Response:
    async with unit_of_work(deps.pool) as uow:
        view = await _owned(request, deps, uow)
        if not view.status.finished:
            raise ApiError(409, "not_ready", f"the document is {view.status}: try again shortly",
                           headers={"Retry-After": "2"})
        if view.status == JobStatus.FAILED:
            raise ApiError(409, "stamping_failed", f"the stamping failed: {view.error}")
        document = await queries.stamped_document(uow, deps.store, view)
    if document is None:
        raise ApiError(410, "document_expired", "the stamped document is past its retention period")
    etag = f'"{document.sha256}"'
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=document.data, content_type="application/pdf", headers={
        "ETag": etag, "Content-Disposition": f'attachment; filename="e-meterai-{view.sn}.pdf"',
        "Cache-Control": "private, max-age=0"})


async def post_verify(request: web.Request, deps: StampingDeps) -> web.Response:
    settings = deps.settings
    try:
        deps.verify_limiter.enforce(request.remote or "unknown")
        data = await _read_file(request, settings.max_upload_bytes)
        if b"%PDF-" not in data[:1024]:
            raise ApiError(422, RejectCode.NOT_A_PDF.value, "the file is not a PDF document")
        checks = await deps.pdf.verify(data, None, settings.verify_timeout_s)
    except (PdfTimeout, PdfWorkerDied) as exc:
        VERIFICATIONS.labels("unreadable").inc()
        raise ApiError(422, RejectCode.UNREADABLE.value, "the document could not be read in time") from exc
    except ApiError as exc:
        VERIFICATIONS.labels(exc.code).inc()
        raise
    async with unit_of_work(deps.pool) as uow:
        result = await queries.verification(uow, checks)
    VERIFICATIONS.labels("valid" if result.valid else "invalid").inc()
    return respond(Verification(
        valid=result.valid, other_signatures=result.other_signatures,
        stamps=[VerifiedStamp(sn=s.sn, status=s.status, signed_at=s.signed_at, intact=s.intact, trusted=s.trusted)
                for s in result.stamps]))


async def _close_pdf(app: web.Application) -> None:
    """The api's PDF processes stop with the app (the process's closer then finds none running)."""
    deps: StampingDeps = Router.dependencies(app)
    deps.pdf.close()


async def _sample_admission(app: web.Application) -> AsyncIterator[None]:
    """Measure the stamping backlog while the app serves (``emeterai_shared.admission``)."""
    deps: StampingDeps = Router.dependencies(app)
    async for _ in deps.admission.cleanup_ctx(lambda: deps.pool)(app):
        yield


# --- routes -------------------------------------------------------------------------------------


def routes(router: Router[StampingDeps]) -> None:
    router.app.cleanup_ctx.append(_sample_admission)
    router.app.on_cleanup.append(_close_pdf)
    spec = router.spec
    if spec is not None:
        spec.security_schemes["bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)",
                                           "description": "a buyer's token (order service, POST /v1/accounts)"}
        spec.security_schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                                           "description": "a partner system's key; taken before a bearer token"}
    unauthorized = ("unauthorized, invalid_token, token_expired, invalid_api_key, or token_superseded (a token "
                    "without a sign-in session of an account whose phone has been verified since)", None)
    stamping_id = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
    pdf_part = {"file": {"contentType": "application/pdf, application/octet-stream"}}
    router.add(Operation("GET", "/v1/quota", "The caller's stamps: available, used and the serials available",
                       tags=["stamping"], security=["bearer", "apiKey"],
                       responses={200: ("the caller's quota", QuotaView), 401: unauthorized}), get_quota)
    from_upload = {"id": "$response.body#/stamping_id"}
    router.add(Operation(
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
                     "GetDocument": {"operationId": "get_v1_stampings_id_document", "parameters": from_upload}}}),
        post_stamping, shed_early=_shed_early)
    router.add(Operation(
        "GET", "/v1/stampings", "The caller's stamping jobs, newest first (keyset pages: pass `next` as ?cursor=)",
        tags=["stamping"], security=["bearer", "apiKey"], parameters=pagination.query_parameters(),
        responses={200: ("a page of the caller's jobs", StampingsPage),
                   400: ("invalid_cursor: not a cursor this list returned", None), 401: unauthorized,
                   422: ("invalid_limit: not an integer from 1 to 100", None)}), list_stampings)
    router.add(Operation("GET", "/v1/stampings/{id}", "The caller's stamping job", tags=["stamping"],
                       security=["bearer", "apiKey"], parameters=stamping_id,
                       responses={200: ("the job", StampingStatus), 401: unauthorized,
                                  404: ("not_found: no such job of the caller's", None)},
                       links={200: {"GetDocument": {"operationId": "get_v1_stampings_id_document",
                                                    "parameters": {"id": "$response.body#/stamping_id"}}}}),
        get_stamping)
    router.add(Operation(
        "GET", "/v1/stampings/{id}/document", "The stamped PDF (application/pdf; ETag is its SHA-256)",
        tags=["stamping"], security=["bearer", "apiKey"],
        parameters=[*stamping_id, {"name": "If-None-Match", "in": "header", "required": False,
                                   "schema": {"type": "string"}, "description": "the ETag of a copy already held"}],
        responses={200: ("the stamped PDF", None), 304: ("If-None-Match matched the ETag", None),
                   401: unauthorized, 404: ("not_found: no such job of the caller's", None),
                   409: ("not_ready (QUEUED or STAMPING; Retry-After), or stamping_failed", None),
                   410: ("document_expired: past the retention period", None)},
        media={200: "application/pdf"}), get_document)
    router.add(Operation(
        "POST", "/v1/verify", "Verify the e-meterai stamps of a PDF (public, multipart `file`)",
        request=VerifyForm, request_content_type="multipart/form-data", request_encoding=pdf_part,
        tags=["verification"],
        responses={200: ("one entry per stamp (a signature whose reason carries a serial)", Verification),
                   400: ("malformed_form", None), 413: ("too_large", None), 415: ("multipart_required", None),
                   422: ("file_required, not_a_pdf, or unreadable (the document could not be read in time)",
                         None),
                   429: ("rate_limited (per client address; Retry-After)", None)}), post_verify)
