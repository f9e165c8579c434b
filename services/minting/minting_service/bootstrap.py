"""Composition root of the minting service: its dependencies, routes, subscriptions, jobs, commands."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from emeterai_shared.ratelimit import RateLimiter
from emeterai_shared.runtime import Periodic, Resources, ServiceDefinition
from emeterai_shared.uow import unit_of_work

from minting_service.adapters.certificates import StampingCertificates
from minting_service.adapters.keys import load_stamp_keys
from minting_service.config import MintingSettings
from minting_service.dependencies import MintingDeps
from minting_service.entrypoints import cli
from minting_service.entrypoints.http import routes
from minting_service.entrypoints.messages import SUBSCRIPTIONS
from minting_service.metrics import (
    MINTING_FAILED,
    ORDERS_AWAITING_STOCK,
    STAMPS_MINTED,
    STOCK_AVAILABLE,
    STOCK_WAIT_OLDEST,
)
from minting_service.service_layer.issuance import serve_waiting
from minting_service.service_layer.stock import stock_levels

log = logging.getLogger(__name__)


async def dependencies(resources: Resources) -> MintingDeps:
    settings = resources.settings
    assert isinstance(settings, MintingSettings)
    published = Path(settings.published_keys_file) if settings.published_keys_file else None
    return MintingDeps(
        settings=settings, pool=resources.pool,
        keys=load_stamp_keys(Path(settings.signing_key_file), published),
        registry_limiter=RateLimiter(settings.registry_rate_per_s, settings.registry_burst),
        certificates=StampingCertificates(Path(settings.stamping_certificates_file)),
    )


async def refresh_stock_gauges(deps: MintingDeps) -> None:
    async with unit_of_work(deps.pool) as uow:
        levels = await stock_levels(uow, datetime.now(UTC))
    STOCK_AVAILABLE.set(levels.available)
    ORDERS_AWAITING_STOCK.set(levels.waiting)
    STOCK_WAIT_OLDEST.set(levels.oldest_wait_s)


async def serve_waiting_orders(deps: MintingDeps) -> None:
    """Issue the serials of orders waiting for stock when it is there; refund them past their deadline."""
    async with unit_of_work(deps.pool) as uow:
        served = await serve_waiting(uow, deps.keys.signer, datetime.now(UTC))
    if served.issued or served.failed:
        log.info("waiting orders: %d issued, %d failed at their refund deadline%s", len(served.issued),
                 len(served.failed), "; others still wait for stock" if served.still_waiting else "")
    STAMPS_MINTED.inc(sum(len(issued.serials) for issued in served.issued))
    MINTING_FAILED.inc(len(served.failed))


SERVICE = ServiceDefinition(
    "minting", "Minting service: serial issuance, stamp tokens and the stamp registry", MintingSettings, dependencies,
    routes, SUBSCRIPTIONS, commands=cli.COMMANDS,
    periodic=(Periodic("stock-gauge", lambda s: s.stock_refresh_interval_s, refresh_stock_gauges),
              Periodic("serve-waiting-orders", lambda s: s.stock_wait_retry_interval_s, serve_waiting_orders)),
)
