"""What the order service's routes, handlers, jobs and commands receive: its typed dependencies,
built once per process by ``bootstrap.dependencies``."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from emeterai_shared.admission import Admission
from emeterai_shared.auth import Caller, TokenIssuer, TokenVerifier
from emeterai_shared.ratelimit import RateLimiter

from order_service.adapters.acquirer_states import QrisAvailability
from order_service.adapters.order_watch import OrderWatch
from order_service.adapters.partners import PartnerRegistry
from order_service.adapters.sms import SmsSender
from order_service.config import OrderSettings
from order_service.service_layer.text_dispatcher import TextDispatcher
from order_service.service_layer.webhook_dispatcher import WebhookDispatcher


@dataclass(frozen=True)
class CallerLimits:
    """Per-account (buyers) and per-partner token buckets of one api process."""

    accounts: RateLimiter
    partners: RateLimiter

    @classmethod
    def from_settings(cls, settings: OrderSettings) -> CallerLimits:
        return cls(RateLimiter(settings.order_rate_per_account_per_s, settings.order_burst_per_account),
                   RateLimiter(settings.partner_rate_per_s, settings.partner_burst))

    def enforce(self, caller: Caller) -> None:
        if caller.partner_id is not None:
            self.partners.enforce(caller.partner_id)
        else:
            self.accounts.enforce(str(caller.account_id))


@dataclass(frozen=True)
class OrderDeps:
    """What the order service's routes, handlers, jobs and commands use, built once per process."""

    settings: OrderSettings
    pool: asyncpg.Pool
    issuer: TokenIssuer
    verifier: TokenVerifier
    partners: PartnerRegistry
    """The partner systems, read from ``ORDER_PARTNERS_FILE`` at start."""
    limits: CallerLimits
    """Per-caller rate limits of this (api) process."""
    admission: Admission
    """Sheds new orders while the platform is behind (sampled by the api, see ``entrypoints.http``)."""
    webhooks: WebhookDispatcher
    """Sends partner webhooks (the worker's periodic job); closed with the process."""
    otp_key: bytes
    """Key of the sign-in codes' HMAC-SHA256 digests (``ORDER_OTP_SECRET`` or ``otp-hmac.key``)."""
    sms: SmsSender
    """The notification adapter: the SMS gateway, or the development sink; closed with the process."""
    texts: TextDispatcher
    """Sends the sign-in texts waiting in ``sms_outbox`` (the worker's periodic job); closed with the process."""
    qris: QrisAvailability
    """Whether QRIS takes new orders, as this process last read it (``ORDER_ACQUIRER_STATE_TTL_S``)."""
    watch: OrderWatch
    """The long polls of the order view waiting in this (api) process."""
