"""Composition root of the payment service: settings, migrations, routes, subscriptions, jobs, commands."""

import argparse
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from emeterai_shared.config import ServiceSettings
from emeterai_shared.http import OpenApi
from emeterai_shared.messaging import Subscription
from emeterai_shared.runtime import Context, Periodic, ServiceDefinition

from payment_service.adapters.banks import BankRegistry
from payment_service.config import PaymentSettings
from payment_service.entrypoints import cli, messages
from payment_service.entrypoints.snap_http import SnapApi, add_snap_routes
from payment_service.service_layer.billing import expire_due_bills
from payment_service.service_layer.tokens import purge_expired_tokens


def _settings(ctx: Context) -> PaymentSettings:
    settings = ctx.settings
    assert isinstance(settings, PaymentSettings)
    return settings


def _banks(ctx: Context) -> BankRegistry:
    """The partner banks, read from the partners file once per process."""
    registry = ctx.extras.get("banks")
    if registry is None:
        registry = ctx.extras["banks"] = BankRegistry.load(Path(_settings(ctx).partners_file))
    assert isinstance(registry, BankRegistry)
    return registry


def _routes(ctx: Context, app: web.Application, spec: OpenApi) -> None:
    add_snap_routes(app, spec, SnapApi(ctx.pool, _banks(ctx), _settings(ctx)))


def _subscriptions(ctx: Context) -> list[Subscription]:
    return messages.subscriptions(_settings(ctx), lambda: _banks(ctx))


async def _expire_bills(ctx: Context) -> None:
    await expire_due_bills(ctx.pool, datetime.now(UTC))


async def _purge_tokens(ctx: Context) -> None:
    await purge_expired_tokens(ctx.pool, datetime.now(UTC))


def _sweep_interval(settings: ServiceSettings) -> float:
    assert isinstance(settings, PaymentSettings)
    return settings.expiry_sweep_interval_s


async def _run_command(ctx: Context, args: argparse.Namespace) -> int:
    return await cli.run_command(ctx.pool, _settings(ctx), lambda: _banks(ctx), args)


SERVICE = ServiceDefinition(
    name="payment",
    title="Payment service: virtual-account bills and SNAP bank callbacks",
    settings_cls=PaymentSettings,
    migrations=Path(__file__).parent / "migrations",
    subscriptions=_subscriptions,
    routes=_routes,
    periodic=(
        Periodic("expire-bills", _sweep_interval, _expire_bills),
        Periodic("purge-snap-tokens", lambda s: s.housekeeping_interval_s, _purge_tokens),
    ),
    commands=cli.add_commands,
    run_command=_run_command,
    offline_commands=cli.OFFLINE_COMMANDS,
)
