"""Composition root of the payment service: its dependencies, routes, subscriptions, jobs, commands."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from emeterai_shared.runtime import Periodic, Resources, ServiceDefinition

from payment_service.adapters.acquirers import AcquirerClients, AcquirerRegistry
from payment_service.adapters.banks import BankRegistry
from payment_service.adapters.payouts import payouts_adapter
from payment_service.config import PaymentSettings
from payment_service.dependencies import PaymentDeps
from payment_service.entrypoints import cli
from payment_service.entrypoints.http import routes
from payment_service.entrypoints.messages import SUBSCRIPTIONS
from payment_service.service_layer.billing import expire_due_bills
from payment_service.service_layer.qris import (
    expire_qrs,
    generate_qrs,
    query_pending_qrs,
    refund_qrs,
    watch_acquirers,
)
from payment_service.service_layer.refunds import pay_out_due
from payment_service.service_layer.tokens import purge_expired_tokens


async def dependencies(resources: Resources) -> PaymentDeps:
    settings = resources.settings
    assert isinstance(settings, PaymentSettings)
    clients = AcquirerClients(timeout_s=settings.acquirer_timeout_s, attempts=settings.acquirer_attempts,
                              breaker_threshold=settings.acquirer_breaker_threshold,
                              breaker_cool_down_s=settings.acquirer_breaker_cool_down_s)
    resources.closers.append(clients.close)
    return PaymentDeps(settings=settings, pool=resources.pool, banks=BankRegistry.load(Path(settings.partners_file)),
                       acquirers=AcquirerRegistry.load(Path(settings.partners_file)), acquirer_clients=clients,
                       payouts=payouts_adapter(settings.payout_adapter))


async def generate_qris_codes(deps: PaymentDeps) -> None:
    await generate_qrs(deps.pool, deps.acquirers, deps.acquirer_clients, datetime.now(UTC),
                       deps.settings.qris_query_first_s)


async def expire_qris_codes(deps: PaymentDeps) -> None:
    await expire_qrs(deps.pool, deps.acquirers, deps.acquirer_clients, datetime.now(UTC),
                     deps.settings.qris_query_max_s)


async def refund_qris_payments(deps: PaymentDeps) -> None:
    await refund_qrs(deps.pool, deps.acquirers, deps.acquirer_clients, datetime.now(UTC))


async def query_qris_codes(deps: PaymentDeps) -> None:
    s = deps.settings
    await query_pending_qrs(deps.pool, deps.acquirers, deps.acquirer_clients, datetime.now(UTC),
                            s.qris_query_first_s, s.qris_query_max_s)


async def watch_qris_acquirers(deps: PaymentDeps) -> None:
    await watch_acquirers(deps.pool, deps.acquirers, deps.acquirer_clients)


async def expire_bills(deps: PaymentDeps) -> None:
    await expire_due_bills(deps.pool, datetime.now(UTC))


async def purge_tokens(deps: PaymentDeps) -> None:
    await purge_expired_tokens(deps.pool, datetime.now(UTC))


async def pay_out_refunds(deps: PaymentDeps) -> None:
    await pay_out_due(deps.pool, deps.payouts, datetime.now(UTC), deps.settings.payout_retry_s)


SERVICE = ServiceDefinition(
    "payment", "Payment service: virtual-account bills and SNAP bank callbacks", PaymentSettings, dependencies, routes,
    SUBSCRIPTIONS, commands=cli.COMMANDS,
    periodic=(Periodic("expire-bills", lambda s: s.expiry_sweep_interval_s, expire_bills),
              Periodic("purge-snap-tokens", lambda s: s.housekeeping_interval_s, purge_tokens),
              Periodic("pay-out-refunds", lambda s: s.payout_interval_s, pay_out_refunds),
              Periodic("generate-qris", lambda s: s.qris_interval_s, generate_qris_codes),
              Periodic("query-qris", lambda s: s.qris_interval_s, query_qris_codes),
              Periodic("expire-qris", lambda s: s.expiry_sweep_interval_s, expire_qris_codes),
              Periodic("refund-qris", lambda s: s.qris_interval_s, refund_qris_payments),
              Periodic("watch-acquirers", lambda s: s.qris_interval_s, watch_qris_acquirers)),
)
