"""Composition root of the minting service: settings, keys, migrations, routes, subscriptions, jobs."""

import argparse
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from emeterai_shared.config import ServiceSettings
from emeterai_shared.http import OpenApi
from emeterai_shared.messaging import Subscription
from emeterai_shared.ratelimit import RateLimiter
from emeterai_shared.runtime import Context, Periodic, ServiceDefinition

from minting_service.adapters.certificates import StampingCertificates
from minting_service.adapters.keys import StampKeys, load_stamp_keys
from minting_service.adapters.repository import MintingRepository
from minting_service.config import MintingSettings
from minting_service.entrypoints import cli, http, messages
from minting_service.metrics import (
    MINTING_FAILED,
    ORDERS_AWAITING_STOCK,
    STAMPS_MINTED,
    STOCK_AVAILABLE,
    STOCK_WAIT_OLDEST,
)
from minting_service.service_layer.issuance import serve_waiting


def _settings(settings: ServiceSettings) -> MintingSettings:
    assert isinstance(settings, MintingSettings)
    return settings


def _keys(ctx: Context) -> StampKeys:
    """The stamp-token keys, read (in development: created) once per process."""
    keys = ctx.extras.get("stamp_keys")
    if keys is None:
        settings = _settings(ctx.settings)
        published = Path(settings.published_keys_file) if settings.published_keys_file else None
        keys = ctx.extras["stamp_keys"] = load_stamp_keys(Path(settings.signing_key_file), published)
    assert isinstance(keys, StampKeys)
    return keys


async def _on_start(ctx: Context) -> None:
    _keys(ctx)  # a process with unusable keys fails at start, not at its first message


def _routes(ctx: Context, app: web.Application, spec: OpenApi) -> None:
    settings = _settings(ctx.settings)
    limiter = RateLimiter(settings.registry_rate_per_s, settings.registry_burst)
    certificates = StampingCertificates(Path(settings.stamping_certificates_file))  # read per request
    http.add_routes(app, spec, ctx.pool, lambda: _keys(ctx), limiter, certificates.jwk)


def _subscriptions(ctx: Context) -> list[Subscription]:
    return messages.subscriptions(lambda: _keys(ctx).signer, _settings(ctx.settings).stock_wait_s)


async def _refresh_stock_gauge(ctx: Context) -> None:
    async with ctx.pool.acquire() as conn:
        repo = MintingRepository(conn)
        STOCK_AVAILABLE.set(await repo.stock_available())
        waiting, oldest_s = await repo.waiting_stats(datetime.now(UTC))
    ORDERS_AWAITING_STOCK.set(waiting)
    STOCK_WAIT_OLDEST.set(oldest_s)


async def _serve_waiting(ctx: Context) -> None:
    """Issue the serials of orders waiting for stock when it is there; refund them past their deadline."""
    async with ctx.pool.acquire() as conn:
        served = await serve_waiting(conn, _keys(ctx).signer, datetime.now(UTC))
    STAMPS_MINTED.inc(sum(len(issued.serials) for issued in served.issued))
    MINTING_FAILED.inc(len(served.failed))


async def _run_command(ctx: Context, args: argparse.Namespace) -> int:
    return await cli.run_command(ctx.pool, args)


SERVICE = ServiceDefinition(
    name="minting",
    title="Minting service: serial issuance, stamp tokens and the stamp registry",
    settings_cls=MintingSettings,
    migrations=Path(__file__).parent / "migrations",
    subscriptions=_subscriptions,
    routes=_routes,
    on_start=_on_start,
    periodic=(
        Periodic("stock-gauge", lambda s: _settings(s).stock_refresh_interval_s, _refresh_stock_gauge),
        Periodic("serve-waiting-orders", lambda s: _settings(s).stock_wait_retry_interval_s, _serve_waiting),
    ),
    commands=cli.add_commands,
    run_command=_run_command,
)
