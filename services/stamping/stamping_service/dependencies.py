"""What the stamping service's routes, handlers, jobs and commands receive: its typed dependencies,
built once per process by ``bootstrap.dependencies``."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from emeterai_shared.admission import Admission
from emeterai_shared.auth import PartnerKeys, TokenVerifier
from emeterai_shared.ratelimit import RateLimiter

from stamping_service.adapters.documents import DocumentStore
from stamping_service.adapters.pdfpool import PdfPool
from stamping_service.config import StampingSettings
from stamping_service.service_layer.stamper import Stamper


@dataclass(frozen=True)
class StampingDeps:
    """What the stamping service's routes, handlers and jobs use, built once per process."""

    settings: StampingSettings
    pool: asyncpg.Pool
    verifier: TokenVerifier
    """Buyers' bearer tokens, checked with the order service's public key(s)."""
    partners: PartnerKeys
    """Partner systems' ``X-Api-Key``s."""
    store: DocumentStore
    pdf: PdfPool
    """This process's PDF worker processes, started at the first PDF task, stopped when it closes."""
    stamper: Stamper
    verify_limiter: RateLimiter
    """``POST /v1/verify`` per client address (this api process)."""
    account_uploads: RateLimiter
    """``POST /v1/stampings`` per buyer account (this api process)."""
    partner_uploads: RateLimiter
    """``POST /v1/stampings`` per partner system (this api process)."""
    admission: Admission
    """Sheds uploads while the stamping backlog is past what the workers drain."""
