"""Message handlers of the order service: each loads the order, applies the domain, saves."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from emeterai_shared.contracts.events import (
    BillExpired,
    BillFailed,
    BillIssued,
    OrderPaid,
    OrderRefundRequested,
    PaymentCaptured,
    PaymentRefunded,
)
from emeterai_shared.messaging import Envelope, PermanentError
from emeterai_shared.uow import UnitOfWork

from order_service.adapters import repository
from order_service.domain.order import Bill, IllegalTransition, Order

log = logging.getLogger(__name__)


async def _load(uow: UnitOfWork, order_id: uuid.UUID) -> Order:
    """The order, locked. An event about an order we never had is an anomaly (money may be
    involved): it parks with its reason, visible to operators, instead of vanishing."""
    order = await repository.get(uow.conn, order_id, for_update=True)
    if order is None:
        raise PermanentError(f"event for unknown order {order_id}")
    return order


def _ignore(order: Order, event: str, exc: IllegalTransition) -> None:
    """An event that no longer applies (e.g. a bill expiring after it was paid) changes nothing."""
    log.warning("%s for order %s in %s ignored: %s", event, order.id, order.status, exc)


async def on_bill_issued(uow: UnitOfWork, env: Envelope[BillIssued]) -> None:
    e = env.body
    order = await _load(uow, e.order_id)
    order.attach_bill(Bill(e.virtual_account_no, e.amount, e.expires_at))
    await repository.save(uow.conn, order)


async def on_bill_failed(uow: UnitOfWork, env: Envelope[BillFailed]) -> None:
    order = await _load(uow, env.body.order_id)
    try:
        order.fail(env.body.reason)
    except IllegalTransition as exc:
        return _ignore(order, "bill failure", exc)
    await repository.save(uow.conn, order)


async def on_bill_expired(uow: UnitOfWork, env: Envelope[BillExpired]) -> None:
    order = await _load(uow, env.body.order_id)
    try:
        order.expire()
    except IllegalTransition as exc:
        return _ignore(order, "bill expiry", exc)
    await repository.save(uow.conn, order)


async def on_payment_captured(uow: UnitOfWork, env: Envelope[PaymentCaptured]) -> None:
    e = env.body
    order = await _load(uow, e.order_id)
    if order.payment_id == e.payment_id:
        return  # already applied under another message id
    now = datetime.now(UTC)
    cid = str(order.id)
    try:
        fulfil = order.capture(e.payment_id, late=e.late)
    except IllegalTransition as exc:
        # Captured money for an order that cannot take it: never keep it silently.
        log.error("payment %s for order %s in %s: refunding", e.payment_id, order.id, order.status)
        uow.publish(OrderRefundRequested(order_id=order.id, amount=e.amount,
                                         reason=f"payment captured while the order was {exc.current}",
                                         requested_at=now), correlation_id=cid)
        return
    await repository.save(uow.conn, order)
    if fulfil:
        uow.publish(OrderPaid(order_id=order.id, account_id=order.account_id, quantity=order.quantity,
                              amount=order.amount, partner_id=order.partner_id, paid_at=now),
                    correlation_id=cid)
    else:
        uow.publish(OrderRefundRequested(order_id=order.id, amount=e.amount,
                                         reason=order.failure_reason or "cannot fulfil",
                                         requested_at=now), correlation_id=cid)


async def on_payment_refunded(uow: UnitOfWork, env: Envelope[PaymentRefunded]) -> None:
    order = await _load(uow, env.body.order_id)
    try:
        order.refunded()
    except IllegalTransition as exc:
        return _ignore(order, "refund", exc)
    await repository.save(uow.conn, order)
