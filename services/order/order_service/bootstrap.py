"""Composition root of the order service: its dependencies, routes, subscriptions, jobs, commands."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

from emeterai_shared.admission import Admission
from emeterai_shared.auth import TokenIssuer, TokenVerifier, ensure_keypair, load_public_keys
from emeterai_shared.files import locked, write_atomic
from emeterai_shared.runtime import Periodic, Resources, ServiceDefinition
from emeterai_shared.uow import unit_of_work

from order_service.adapters.acquirer_states import QrisAvailability
from order_service.adapters.order_watch import OrderWatch
from order_service.adapters.partners import PartnerRegistry
from order_service.adapters.repository import OrderRepository
from order_service.adapters.sms import sender
from order_service.config import OrderSettings
from order_service.dependencies import CallerLimits, OrderDeps
from order_service.entrypoints import cli
from order_service.entrypoints.http import routes
from order_service.entrypoints.messages import SUBSCRIPTIONS
from order_service.service_layer import signin
from order_service.service_layer.text_dispatcher import TextDispatcher
from order_service.service_layer.webhook_dispatcher import WebhookDispatcher


def _token_keys(settings: OrderSettings) -> tuple[TokenIssuer, TokenVerifier]:
    """The token key pair, created in development (``ensure_keypair``); unusable keys stop the process."""
    private_path, public_path = Path(settings.private_key_path), Path(settings.auth_public_key_file)
    try:
        ensure_keypair(private_path, public_path)
    except FileExistsError:
        pass  # another process created it at the same moment
    return (TokenIssuer(private_path.read_bytes(), timedelta(seconds=settings.token_ttl_s)),
            TokenVerifier(load_public_keys(public_path), cache_size=settings.auth_token_cache_size,
                          cache_max_age_s=settings.auth_token_cache_max_age_s))


def _otp_key(settings: OrderSettings) -> bytes:
    """``ORDER_OTP_SECRET``, else the development key file, generated once (like the token keys)."""
    if settings.otp_secret:
        return settings.otp_secret.encode()
    path = Path(settings.otp_key_path)
    if not path.exists():
        with locked(path.with_name(f".{path.name}.lock")):
            if not path.exists():
                write_atomic(path, secrets.token_hex(32).encode(), mode=0o600)
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: the OTP key is too short (at least 32 characters)")
    return key


async def dependencies(resources: Resources) -> OrderDeps:
    settings = resources.settings
    assert isinstance(settings, OrderSettings)
    issuer, verifier = _token_keys(settings)
    partners = PartnerRegistry.from_file(settings.partners_file)
    webhooks = WebhookDispatcher(resources.pool, partners, settings)
    resources.closers.append(webhooks.close)
    sms = sender(settings.sms_gateway_url, settings.sms_gateway_token, settings.dev_sms_file,
                 timeout_s=settings.sms_timeout_s, attempts=settings.sms_attempts)
    resources.closers.append(sms.close)
    texts = TextDispatcher(resources.pool, sms, settings)
    resources.closers.append(texts.close)  # closers run newest first: the batches end before the sender
    return OrderDeps(
        settings=settings, pool=resources.pool, issuer=issuer, verifier=verifier, partners=partners,
        limits=CallerLimits.from_settings(settings),
        admission=Admission("order", lambda conn: OrderRepository(conn).admission_sample(), settings.admission()),
        webhooks=webhooks, otp_key=_otp_key(settings), sms=sms, texts=texts,
        qris=QrisAvailability(settings.acquirer_state_ttl_s),
        watch=OrderWatch(settings.watch_interval_s, settings.watch_capacity),
    )


async def dispatch_webhooks(deps: OrderDeps) -> None:
    await deps.webhooks.tick()


async def dispatch_texts(deps: OrderDeps) -> None:
    await deps.texts.tick()


async def text_metrics(deps: OrderDeps) -> None:
    await deps.texts.refresh_metrics()


async def signin_housekeeping(deps: OrderDeps) -> None:
    async with unit_of_work(deps.pool) as uow:
        await signin.housekeeping(uow)


SERVICE = ServiceDefinition(
    "order", "Order service: accounts, orders and the front door", OrderSettings, dependencies, routes, SUBSCRIPTIONS,
    commands=cli.COMMANDS,
    periodic=(Periodic("partner-webhooks", lambda s: s.webhook_dispatch_interval_s, dispatch_webhooks),
              Periodic("sign-in-texts", lambda s: s.sms_dispatch_interval_s, dispatch_texts),
              Periodic("sign-in-text-metrics", 15.0, text_metrics),
              Periodic("signin-housekeeping", lambda s: s.signin_housekeeping_interval_s, signin_housekeeping)),
)
