"""What the payment service's routes, handlers, jobs and commands receive: its typed dependencies,
built once per process by ``bootstrap.dependencies``."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from payment_service.adapters.acquirers import AcquirerClients, AcquirerRegistry
from payment_service.adapters.banks import BankRegistry
from payment_service.adapters.payouts import Payouts
from payment_service.config import PaymentSettings
from payment_service.service_layer.tokens import TokenCache


@dataclass(frozen=True)
class PaymentDeps:
    """What the payment service's routes, handlers, jobs and commands use, built once per process."""

    settings: PaymentSettings
    pool: asyncpg.Pool
    banks: BankRegistry
    """The partner banks, read from ``PAYMENT_PARTNERS_FILE`` at start (a malformed file stops the
    process; a missing one is no bank: every bank is refused and bills fail)."""
    acquirers: AcquirerRegistry
    """The QRIS acquirers, from the same file's ``acquirers`` list (none: QRIS orders fail)."""
    acquirer_clients: AcquirerClients
    """Clients of the acquirers (one HTTP session per process, opened on first use)."""
    payouts: Payouts
    """Who pays refunds out (``PAYMENT_PAYOUT_ADAPTER``; the development bank's simulation)."""
    tokens: TokenCache = field(default_factory=TokenCache)
    """The SNAP access tokens this process issued or found, until they expire."""
