"""Composition root of the order service: its dependencies, routes, subscriptions, jobs, commands."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from emeterai_shared.admission import Admission
from emeterai_shared.auth import TokenIssuer, TokenVerifier, ensure_keypair, load_public_keys
from emeterai_shared.runtime import Periodic, Resources, ServiceDefinition

from order_service.adapters.partners import PartnerRegistry
from order_service.adapters.repository import OrderRepository
from order_service.config import OrderSettings
from order_service.dependencies import CallerLimits, OrderDeps
from order_service.entrypoints import cli
from order_service.entrypoints.http import routes
from order_service.entrypoints.messages import SUBSCRIPTIONS
from order_service.service_layer.webhook_dispatcher import WebhookDispatcher


def _token_keys(settings: OrderSettings) -> tuple[TokenIssuer, TokenVerifier]:
    """The token key pair, created in development (``ensure_keypair``); unusable keys stop the process."""
    private_path, public_path = Path(settings.private_key_path), Path(settings.auth_public_key_file)
    try:
        ensure_keypair(private_path, public_path)
    except FileExistsError:
        pass  # another process created it at the same moment
    return (TokenIssuer(private_path.read_bytes(), timedelta(seconds=settings.token_ttl_s)),
            TokenVerifier(load_public_keys(public_path)))


async def dependencies(resources: Resources) -> OrderDeps:
    settings = resources.settings
    assert isinstance(settings, OrderSettings)
    issuer, verifier = _token_keys(settings)
    partners = PartnerRegistry.from_file(settings.partners_file)
    webhooks = WebhookDispatcher(resources.pool, partners, settings)
    resources.closers.append(webhooks.close)
    return OrderDeps(
        settings=settings, pool=resources.pool, issuer=issuer, verifier=verifier, partners=partners,
        limits=CallerLimits.from_settings(settings),
        admission=Admission("order", lambda conn: OrderRepository(conn).admission_sample(), settings.admission()),
        webhooks=webhooks,
    )


async def dispatch_webhooks(deps: OrderDeps) -> None:
    await deps.webhooks.tick()


SERVICE = ServiceDefinition(
    "order", "Order service: accounts, orders and the front door", OrderSettings, dependencies, routes, SUBSCRIPTIONS,
    commands=cli.COMMANDS,
    periodic=(Periodic("partner-webhooks", lambda s: s.webhook_dispatch_interval_s, dispatch_webhooks),),
)
