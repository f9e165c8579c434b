"""Composition root of the order service: settings, keys, partners, routes, subscriptions, jobs, commands."""

import argparse
from datetime import timedelta
from pathlib import Path

from aiohttp import web
from emeterai_shared.auth import TokenIssuer, TokenVerifier, ensure_keypair, load_public_keys
from emeterai_shared.config import ServiceSettings
from emeterai_shared.http import OpenApi
from emeterai_shared.messaging import Subscription
from emeterai_shared.runtime import Context, Periodic, ServiceDefinition

from order_service.adapters.partners import PartnerRegistry
from order_service.config import OrderSettings
from order_service.entrypoints import cli, messages
from order_service.entrypoints.http import Auth, routes
from order_service.entrypoints.partner_http import add_partner_routes
from order_service.service_layer.webhook_dispatcher import WebhookDispatcher


def _settings(ctx: Context) -> OrderSettings:
    settings = ctx.settings
    assert isinstance(settings, OrderSettings)
    return settings


def _partners(ctx: Context) -> PartnerRegistry:
    """The partner systems, read from the partners file once per process."""
    registry = ctx.extras.get("partners")
    if registry is None:
        registry = ctx.extras["partners"] = PartnerRegistry.from_file(_settings(ctx).partners_file)
    assert isinstance(registry, PartnerRegistry)
    return registry


async def on_start(ctx: Context) -> None:
    """Load (in development: create) the token key pair and the partner list."""
    settings = _settings(ctx)
    private_path, public_path = Path(settings.private_key_path), Path(settings.auth_public_key_file)
    try:
        ensure_keypair(private_path, public_path)
    except FileExistsError:
        pass  # another process created it at the same moment
    ctx.extras["issuer"] = TokenIssuer(private_path.read_bytes(), timedelta(seconds=settings.token_ttl_s))
    ctx.extras["auth"] = Auth(TokenVerifier(load_public_keys(public_path)), _partners(ctx),
                              settings.buyer_max_quantity)


def _routes(ctx: Context, app: web.Application, spec: OpenApi) -> None:
    routes(ctx, app, spec)
    add_partner_routes(ctx, app, spec)


def _subscriptions(ctx: Context) -> list[Subscription]:
    return messages.subscriptions(_partners(ctx))


def _dispatcher(ctx: Context) -> WebhookDispatcher:
    """The process's webhook dispatcher, closed (attempts in flight finished) when the process stops."""
    found = ctx.extras.get("webhooks")
    if found is None:
        found = ctx.extras["webhooks"] = WebhookDispatcher(ctx.pool, _partners(ctx), _settings(ctx))
        ctx.closers.append(found.close)
    assert isinstance(found, WebhookDispatcher)
    return found


async def _dispatch_webhooks(ctx: Context) -> None:
    await _dispatcher(ctx).tick()


def _dispatch_interval(settings: ServiceSettings) -> float:
    assert isinstance(settings, OrderSettings)
    return settings.webhook_dispatch_interval_s


async def _run_command(ctx: Context, args: argparse.Namespace) -> int:
    return await cli.run_command(ctx.pool, args)


SERVICE = ServiceDefinition(
    name="order",
    title="Order service: accounts, orders and the front door",
    settings_cls=OrderSettings,
    migrations=Path(__file__).parent / "migrations",
    subscriptions=_subscriptions,
    routes=_routes,
    on_start=on_start,
    periodic=(Periodic("partner-webhooks", _dispatch_interval, _dispatch_webhooks),),
    commands=cli.add_commands,
    run_command=_run_command,
)
