"""The minting service's message handlers: ``(uow, envelope, <dependencies by name>)``.

Parameters after the first two are given by the worker from ``MintingDeps`` (``Subscription.bind``):
``keys`` (the stamp-token keys) and ``settings``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from emeterai_shared.contracts.events import (
    DocumentStamped,
    MintingFailed,
    OrderPaid,
    PaymentCaptured,
    SerialsIssued,
    SerialsVoided,
    StockAwaited,
)
from emeterai_shared.messaging import Envelope
from emeterai_shared.uow import UnitOfWork

from minting_service.adapters.keys import StampKeys
from minting_service.config import MintingSettings
from minting_service.domain.stamp import UseOutcome
from minting_service.metrics import (
    MINTING_FAILED,
    SERIAL_REUSE,
    SERIALS_VOIDED,
    STAMPS_MINTED,
    STAMPS_STAMPED,
)
from minting_service.service_layer.issuance import issue_serials
from minting_service.service_layer.registry import record_use, void_given_back

log = logging.getLogger(__name__)


async def on_payment_captured(uow: UnitOfWork, env: Envelope[PaymentCaptured], keys: StampKeys,
                              settings: MintingSettings) -> None:
    """A capture the order will take (not ``late``) that names its buyer and quantity: the serials
    are issued straight from it, the capture carried with the answer. A late capture is the order's
    to refund; one without the buyer (an older payment service) comes as ``order.paid`` instead."""
    e = env.body
    if e.late or e.account_id is None or e.quantity is None:
        return
    paid = OrderPaid(order_id=e.order_id, account_id=e.account_id, quantity=e.quantity, amount=e.amount,
                     partner_id=e.partner_id, paid_at=e.captured_at)
    _count(paid, await issue_serials(uow, paid, keys.signer, datetime.now(UTC), settings.stock_wait_s,
                                     payment=e.facts()))


async def on_order_paid(uow: UnitOfWork, env: Envelope[OrderPaid], keys: StampKeys,
                        settings: MintingSettings) -> None:
    _count(env.body, await issue_serials(uow, env.body, keys.signer, datetime.now(UTC), settings.stock_wait_s))


def _count(paid: OrderPaid, result: SerialsIssued | MintingFailed | StockAwaited | None) -> None:
    order_id = paid.order_id
    if isinstance(result, MintingFailed):
        MINTING_FAILED.inc()
        log.warning("order %s: no serials issued: %s", order_id, result.reason)
    elif isinstance(result, StockAwaited):
        log.warning("order %s: %d serial(s) wait for stock until %s", order_id, result.quantity,
                    result.refund_at.isoformat())
    elif result is not None:
        STAMPS_MINTED.inc(len(result.serials))


async def on_serials_voided(uow: UnitOfWork, env: Envelope[SerialsVoided]) -> None:
    voided = await void_given_back(uow, env.body, datetime.now(UTC))
    SERIALS_VOIDED.inc(len(voided))
    if voided:
        log.warning("order %s gave back %d serial(s), now VOID: %s", env.body.order_id, len(voided),
                    env.body.reason)


async def on_document_stamped(uow: UnitOfWork, env: Envelope[DocumentStamped]) -> None:
    event = env.body
    outcome, found = await record_use(uow, event)
    if outcome is UseOutcome.APPLIED:
        STAMPS_STAMPED.inc()
    elif outcome is UseOutcome.REFUSED:
        status = found.status.value if found else "UNKNOWN"
        SERIAL_REUSE.labels(status).inc()
        log.error("serial %s refused for stamping %s (account %s): it is %s%s", event.sn, event.stamping_id,
                  event.account_id, status, f", stamped by {found.stamping_id}" if found and found.stamping_id else "")
