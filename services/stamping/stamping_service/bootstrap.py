"""Composition root of the stamping service: settings, token keys, PDF processes, storage, routes and
subscriptions."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web
from emeterai_shared.admission import Admission
from emeterai_shared.auth import Caller, PartnerKeys, TokenVerifier, caller_from_request, load_public_keys
from emeterai_shared.http import OpenApi
from emeterai_shared.messaging import Subscription
from emeterai_shared.ratelimit import RateLimiter
from emeterai_shared.runtime import Context, Periodic, ServiceDefinition

from stamping_service.adapters.documents import PostgresDocumentStore
from stamping_service.adapters.pdfpool import PdfPool
from stamping_service.adapters.stampings import admission_sample
from stamping_service.config import StampingSettings
from stamping_service.entrypoints import http, messages
from stamping_service.service_layer.stamper import Stamper, purge_documents, requeue_stale
from stamping_service.signing import publish_certificates

log = logging.getLogger(__name__)
STORE = PostgresDocumentStore()


def _settings(ctx: Context) -> StampingSettings:
    assert isinstance(ctx.settings, StampingSettings)
    return ctx.settings


def _verifier(ctx: Context) -> TokenVerifier:
    """The buyer-token verifier, read once per process from the order service's public key(s).

    The key pair belongs to the order service (which creates it in development); a missing file
    is an error here, never a reason to create keys."""
    verifier = ctx.extras.get("verifier")
    if verifier is None:
        path = Path(ctx.settings.auth_public_key_file)
        if not path.is_file():
            raise RuntimeError(f"stamping: the token public key file {path} does not exist; it is the order "
                               f"service's (run `python -m order_service setup` first, or set "
                               f"STAMPING_AUTH_PUBLIC_KEY_FILE)")
        verifier = ctx.extras["verifier"] = TokenVerifier(load_public_keys(path))
    assert isinstance(verifier, TokenVerifier)
    return verifier


def _partners(ctx: Context) -> PartnerKeys:
    partners = ctx.extras.get("partners")
    if partners is None:
        partners = ctx.extras["partners"] = PartnerKeys.from_file(_settings(ctx).partners_file)
    assert isinstance(partners, PartnerKeys)
    return partners


def _caller(ctx: Context, request: web.Request) -> Caller:
    return caller_from_request(request, _verifier(ctx), _partners(ctx))


def _pdf_pool(ctx: Context) -> PdfPool:
    """The PDF worker processes of this process, started at first use and stopped when it closes."""
    pdf = ctx.extras.get("pdf_pool")
    if pdf is None:
        settings = _settings(ctx)
        pdf = ctx.extras["pdf_pool"] = PdfPool(settings.signing(), settings.pdf_workers,
                                               settings.pdf_worker_max_tasks)

        async def close() -> None:
            _close_pdf_pool(ctx)

        ctx.closers.append(close)
    assert isinstance(pdf, PdfPool)
    return pdf


def _close_pdf_pool(ctx: Context) -> None:
    pdf = ctx.extras.pop("pdf_pool", None)
    if isinstance(pdf, PdfPool):
        pdf.close()


def _stamper(ctx: Context) -> Stamper:
    stamper = ctx.extras.get("stamper")
    if stamper is None:
        stamper = ctx.extras["stamper"] = Stamper(ctx.pool, _pdf_pool(ctx), STORE, _settings(ctx))
    assert isinstance(stamper, Stamper)
    return stamper


async def _on_start(ctx: Context) -> None:
    _verifier(ctx)  # a process without the public key fails at start, not at its first request
    _partners(ctx)  # nor with a broken partners file
    settings = _settings(ctx)
    # Generates the development chain on a first run; publishes the chain for minting's /v1/keys.
    if publish_certificates(settings.signing(), settings.certificates_file):
        log.info("stamping certificates published to %s", settings.certificates_file)


def _routes(ctx: Context, app: web.Application, spec: OpenApi) -> None:
    settings = _settings(ctx)
    limiter = RateLimiter(settings.verify_rate_per_s, settings.verify_burst)
    admission = Admission("stamping", admission_sample, settings.admission())
    app.cleanup_ctx.append(admission.cleanup_ctx(lambda: ctx.pool))
    http.add_routes(app, spec, ctx.pool, lambda request: _caller(ctx, request), settings, lambda: _pdf_pool(ctx),
                    STORE, limiter, admission)

    async def cleanup(_app: web.Application) -> None:
        _close_pdf_pool(ctx)

    app.on_cleanup.append(cleanup)


def _subscriptions(ctx: Context) -> list[Subscription]:
    return messages.subscriptions(_settings(ctx), lambda: _stamper(ctx))


async def _requeue_stale(ctx: Context) -> None:
    async with ctx.pool.acquire() as conn:
        await requeue_stale(conn, _settings(ctx).stale_job_after_s)


async def _purge(ctx: Context) -> None:
    async with ctx.pool.acquire() as conn:
        await purge_documents(conn, STORE)


SERVICE = ServiceDefinition(
    name="stamping",
    title="Stamping service: PDF stamping, signing and verification",
    settings_cls=StampingSettings,
    migrations=Path(__file__).parent / "migrations",
    subscriptions=_subscriptions,
    routes=_routes,
    on_start=_on_start,
    periodic=(
        Periodic("requeue-stale-jobs", lambda s: s.stale_sweep_interval_s, _requeue_stale),
        Periodic("purge-documents", lambda s: s.purge_interval_s, _purge),
    ),
)
