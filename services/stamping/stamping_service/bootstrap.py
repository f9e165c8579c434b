"""Composition root of the stamping service: its dependencies, routes, subscriptions and jobs."""

from __future__ import annotations

import logging
from pathlib import Path

from emeterai_shared.admission import Admission
from emeterai_shared.auth import PartnerKeys, TokenVerifier, load_public_keys
from emeterai_shared.ratelimit import RateLimiter
from emeterai_shared.runtime import Periodic, Resources, ServiceDefinition
from emeterai_shared.uow import unit_of_work

from stamping_service.adapters.documents import PostgresDocumentStore
from stamping_service.adapters.pdfpool import PdfPool
from stamping_service.adapters.signing import publish_certificates
from stamping_service.adapters.stampings import admission_sample
from stamping_service.config import StampingSettings
from stamping_service.dependencies import StampingDeps
from stamping_service.entrypoints.http import routes
from stamping_service.entrypoints.messages import SUBSCRIPTIONS
from stamping_service.service_layer.stamper import Stamper, purge_documents, requeue_stale

log = logging.getLogger(__name__)


def _verifier(settings: StampingSettings) -> TokenVerifier:
    """The key pair belongs to the order service (which creates it in development); a missing file
    is an error here, never a reason to create keys."""
    path = Path(settings.auth_public_key_file)
    if not path.is_file():
        raise RuntimeError(f"stamping: the token public key file {path} does not exist; it is the order "
                           f"service's (run `python -m order_service setup` first, or set "
                           f"STAMPING_AUTH_PUBLIC_KEY_FILE)")
    return TokenVerifier(load_public_keys(path), cache_size=settings.auth_token_cache_size,
                         cache_max_age_s=settings.auth_token_cache_max_age_s)


async def dependencies(resources: Resources) -> StampingDeps:
    settings = resources.settings
    assert isinstance(settings, StampingSettings)
    verifier = _verifier(settings)  # a process without the public key fails at start, not at a request
    partners = PartnerKeys.from_file(settings.partners_file)  # nor with a broken partners file
    # Generates the development chain on a first run; publishes the chain for minting's /v1/keys.
    if publish_certificates(settings.signing(), settings.certificates_file):
        log.info("stamping certificates published to %s", settings.certificates_file)
    store = PostgresDocumentStore()
    pdf = PdfPool(settings.signing(), settings.pdf_workers, settings.pdf_worker_max_tasks)
    resources.closers.append(pdf.aclose)
    return StampingDeps(
        settings=settings, pool=resources.pool, verifier=verifier, partners=partners, store=store, pdf=pdf,
        stamper=Stamper(resources.pool, pdf, store, settings),
        verify_limiter=RateLimiter(settings.verify_rate_per_s, settings.verify_burst),
        account_uploads=RateLimiter(settings.upload_rate_per_account_per_s, settings.upload_burst_per_account),
        partner_uploads=RateLimiter(settings.partner_upload_rate_per_s, settings.partner_upload_burst),
        admission=Admission("stamping", admission_sample, settings.admission()),
    )


async def requeue_stale_jobs(deps: StampingDeps) -> None:
    async with unit_of_work(deps.pool) as uow:
        await requeue_stale(uow, deps.settings.stale_job_after_s)


async def purge_expired_documents(deps: StampingDeps) -> None:
    async with unit_of_work(deps.pool) as uow:
        await purge_documents(uow, deps.store)


SERVICE = ServiceDefinition(
    "stamping", "Stamping service: PDF stamping, signing and verification", StampingSettings, dependencies, routes,
    SUBSCRIPTIONS,
    periodic=(Periodic("requeue-stale-jobs", lambda s: s.stale_sweep_interval_s, requeue_stale_jobs),
              Periodic("purge-documents", lambda s: s.purge_interval_s, purge_expired_documents)),
)
