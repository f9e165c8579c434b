"""The stamping service's HTTP API: the buyer's quota, and uploads of documents to stamp."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable
from concurrent.futures import Executor

import asyncpg
from aiohttp import BodyPartReader, web
from emeterai_shared import idempotency
from emeterai_shared.auth import TokenVerifier
from emeterai_shared.http import ApiError, OpenApi, Operation
from emeterai_shared.uow import unit_of_work
from pydantic import BaseModel, Field, ValidationError

from stamping_service.adapters.quota import QuotaRepository
from stamping_service.adapters.stampings import NewStamping, StampingRepository
from stamping_service.config import StampingSettings
from stamping_service.messages import StampingJobQueued
from stamping_service.pdf.inspect import Limits, PdfRejected, RejectCode, inspect_pdf

FORM_FIELDS = ("page", "x", "y", "size", "reason", "sn", "password")
MAX_FIELD_BYTES = 4096


class QuotaView(BaseModel):
    """The caller's stamps as the stamping service knows them from minting's events.

    A RESERVED stamp (held by a stamping job in progress) counts in neither ``available`` nor
    ``used``: it becomes USED when its document is stamped, or UNUSED again if the job fails.
    """

    available: int = Field(description="UNUSED stamps: free to stamp a document with")
    used: int = Field(description="stamps affixed to a document")
    serials_available: list[str] = Field(description="the UNUSED serials, oldest issuance first (then by serial)")


class StampingForm(BaseModel):
    """The multipart form of ``POST /v1/stampings`` (besides ``file``, the PDF itself)."""

    file: bytes = Field(default=b"", description="the PDF to stamp (multipart file part)", exclude=True)
    page: int = Field(default=1, ge=1, description="1-based page the stamp goes on")
    x: float = Field(ge=0, description="points from the left of the page to the stamp's lower-left corner")
    y: float = Field(ge=0, description="points from the bottom of the page to the stamp's lower-left corner")
    size: float = Field(default=100, gt=0, le=1000, description="side of the square stamp, in points")
    reason: str = Field(default="Dokumen", min_length=1, max_length=200, description="signature reason")
    sn: str | None = Field(default=None, min_length=1, max_length=64,
                           description="the serial to use (one of the caller's UNUSED ones); default the oldest")
    password: str | None = Field(default=None, max_length=256, description="password of an encrypted PDF")


class StampingAccepted(BaseModel):
    stamping_id: uuid.UUID
    status: str


class StampingStatus(BaseModel):
    stamping_id: uuid.UUID
    status: str = Field(description="QUEUED | STAMPING | DONE | FAILED")
    sn: str
    error: str | None


async def _read_form(request: web.Request, max_upload: int) -> tuple[StampingForm, bytes]:
    """Stream the multipart body: 415 ``multipart_required``, 400 ``malformed_form``,
    413 ``too_large``, 422 ``file_required`` / ``invalid_request``."""
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(415, "multipart_required", "the body must be multipart/form-data")
    try:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        data: bytes | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "malformed_form", "nested multipart bodies are not accepted")
            if part.name == "file":
                chunks, total = [], 0
                while chunk := await part.read_chunk(64 * 1024):
                    total += len(chunk)
                    if total > max_upload:
                        raise ApiError(413, RejectCode.TOO_LARGE.value,
                                       f"the file is larger than {max_upload} bytes")
                    chunks.append(chunk)
                data = b"".join(chunks)
            elif part.name in FORM_FIELDS:
                raw = await part.read(decode=True)
                if len(raw) > MAX_FIELD_BYTES:
                    raise ApiError(400, "malformed_form", f"the field {part.name} is too long")
                fields[part.name] = raw.decode("utf-8", errors="strict")
            else:
                await part.release()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, RejectCode.TOO_LARGE.value, f"the request is larger than {max_upload} bytes") from exc
    except (ValueError, AssertionError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_form", f"the multipart body cannot be read: {exc}") from exc
    if data is None:
        raise ApiError(422, "file_required", "the form needs a `file` part holding the PDF")
    try:
        form = StampingForm.model_validate({k: v for k, v in fields.items() if v != "" or k == "reason"})
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise ApiError(422, "invalid_request", "; ".join(f"{e['field']}: {e['message']}" for e in errors),
                       extra={"fields": errors}) from exc
    return form, data


async def _inspect(executor: Executor, data: bytes, form: StampingForm, limits: Limits) -> None:
    loop = asyncio.get_running_loop()

    future = loop.run_in_executor(executor, _inspect_in_worker, data, form.password, form.page, form.x, form.y,
                                  form.size, limits)
    try:
        await asyncio.wait_for(future, timeout=limits.parse_timeout_s)
    except TimeoutError as exc:
        raise ApiError(422, "parse_timeout", f"the document took longer than {limits.parse_timeout_s}s "
                                             f"to read") from exc
    except PdfRejected as exc:
        status = 413 if exc.code == RejectCode.TOO_LARGE else 422
        raise ApiError(status, exc.code.value, exc.message) from exc


def _inspect_in_worker(data: bytes, password: str | None, page: int, x: float, y: float, size: float,
                       limits: Limits) -> None:
    inspect_pdf(data, password=password, page=page, x=x, y=y, size=size, limits=limits)


def add_routes(app: web.Application, spec: OpenApi, pool: asyncpg.Pool,
               verifier: Callable[[], TokenVerifier], settings: StampingSettings,
               executor: Callable[[], Executor]) -> None:
    """``verifier`` and ``executor`` are called per request, so that building the app reads no
    key file and starts no process."""
    limits = settings.inspect_limits()

    async def get_quota(request: web.Request) -> web.Response:
        principal = verifier().from_request(request)
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            quota = await QuotaRepository(conn).quota(principal.account_id)
        view = QuotaView(available=quota.available, used=quota.used, serials_available=quota.serials_available)
        return web.json_response(view.model_dump(mode="json"))

    async def post_stamping(request: web.Request) -> web.Response:
        principal = verifier().from_request(request)
        key = idempotency.key_from(request, required=True)
        assert key is not None
        form, data = await _read_form(request, settings.max_upload_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        digest = idempotency.request_hash(
            "POST", "/v1/stampings", {**form.model_dump(mode="json"), "file_sha256": sha256})
        await _inspect(executor(), data, form, limits)

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
                                          x=form.x, y=form.y, size=form.size, reason=form.reason, document=data,
                                          document_sha256=sha256))
            uow.publish(StampingJobQueued(stamping_id=stamping_id, account_id=principal.account_id, sn=sn),
                        correlation_id=str(stamping_id))
            body = StampingAccepted(stamping_id=stamping_id, status="QUEUED").model_dump(mode="json")
            await idempotency.complete(uow.conn, scope, key, 202, body)
        return web.json_response(body, status=202)

    async def get_stamping(request: web.Request) -> web.Response:
        principal = verifier().from_request(request)
        try:
            stamping_id = uuid.UUID(request.match_info["id"])
        except ValueError as exc:
            raise ApiError(404, "not_found", "no such stamping") from exc
        async with pool.acquire() as conn:
            view = await StampingRepository(conn).get(stamping_id, principal.account_id)
        if view is None:
            raise ApiError(404, "not_found", "no such stamping")
        body = StampingStatus(stamping_id=view.id, status=view.status, sn=view.sn, error=view.error)
        return web.json_response(body.model_dump(mode="json"))

    app.router.add_get("/v1/quota", get_quota)
    app.router.add_post("/v1/stampings", post_stamping)
    app.router.add_get("/v1/stampings/{id}", get_stamping)

    spec.security_schemes["bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)"}
    spec.add(Operation("GET", "/v1/quota", "The caller's stamps: available, used and the serials available",
                       tags=["stamping"], security=["bearer"],
                       responses={200: ("the caller's quota", QuotaView),
                                  401: ("no, or an invalid, bearer token", None)}))
    idem = {"name": "Idempotency-Key", "in": "header", "required": True, "schema": {"type": "string"}}
    spec.add(Operation(
        "POST", "/v1/stampings", "Upload a PDF to stamp: validated, then a serial is reserved and a job queued",
        request=StampingForm, request_content_type="multipart/form-data", tags=["stamping"], security=["bearer"],
        parameters=[idem],
        responses={202: ("the job is queued with a reserved serial", StampingAccepted),
                   400: ("malformed form or missing Idempotency-Key", None),
                   401: ("no, or an invalid, bearer token", None),
                   409: ("no_quota, or sn_unavailable", None),
                   413: ("too_large", None),
                   415: ("multipart_required", None),
                   422: ("a refused document (code: not_a_pdf, unreadable, encrypted, ...), parse_timeout, "
                         "invalid fields, or idempotency_key_reused", None)}))
    spec.add(Operation("GET", "/v1/stampings/{id}", "The caller's stamping job", tags=["stamping"],
                       security=["bearer"],
                       parameters=[{"name": "id", "in": "path", "required": True,
                                    "schema": {"type": "string", "format": "uuid"}}],
                       responses={200: ("the job", StampingStatus), 401: ("no, or an invalid, bearer token", None),
                                  404: ("no such job of the caller's", None)}))
