"""Buyers' refunds of unused stamps (``domain.refund``): requested by the API, decided by the
stamping service, paid out by the payment service; each step in the caller's unit of work. And
whole-order refunds of QRIS payments, kept with the acquirer's ``refundNo`` once it has made them."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from emeterai_shared.contracts.events import (
    PartialRefundPaidOut,
    PartialRefundRequested,
    PaymentRefunded,
    PaymentRefundSettled,
    SerialsVoided,
    SerialsVoidRequested,
)
from emeterai_shared.messaging import PermanentError
from emeterai_shared.uow import UnitOfWork

from order_service.adapters.partner_store import PartnerEventRepository
from order_service.adapters.partners import PartnerRegistry
from order_service.adapters.refunds import RefundRepository
from order_service.adapters.repository import OrderRepository
from order_service.domain import partner_events
from order_service.domain.order import Order
from order_service.domain.refund import BUYER_REFUND_REASON, Refund, refundable

log = logging.getLogger(__name__)


async def request_refund(uow: UnitOfWork, account_id: uuid.UUID, order_id: uuid.UUID,
                         now: datetime) -> Refund | None:
    """Ask the stamping service to void the order's serials that may still be unused; None when
    the order is not the caller's. ``NothingToRefund`` when there is nothing to ask for. The order
    row is locked, so two requests for one order never ask for the same serial."""
    order = await OrderRepository(uow.conn).get(order_id, for_update=True)
    if order is None or order.account_id != account_id:
        return None
    repo = RefundRepository(uow.conn)
    serials = refundable(order, await repo.stamped_serials(order_id), await repo.of_order(order_id))
    refund = Refund(refund_id=uuid.uuid4(), order_id=order_id, requested=serials, requested_at=now)
    await repo.add(refund)
    uow.publish(SerialsVoidRequested(order_id=order_id, account_id=order.account_id, serials=tuple(serials),
                                     reason=BUYER_REFUND_REASON, requested_at=now, refund_id=refund.refund_id),
                correlation_id=str(order_id))
    return refund


async def settle(uow: UnitOfWork, event: SerialsVoided, now: datetime) -> None:
    """Stamping's answer to a refund's void request: pay out what was voided (PAYING), or nothing
    when every serial was in use (NOTHING). A redelivered answer changes nothing."""
    assert event.refund_id is not None
    repo = RefundRepository(uow.conn)
    refund = await repo.get(event.refund_id, for_update=True)
    if refund is None or refund.order_id != event.order_id:
        raise PermanentError(f"stamping answered for unknown refund {event.refund_id} of order {event.order_id}")
    if refund.decided_at is not None:
        return
    order: Order | None = await OrderRepository(uow.conn).get(event.order_id)
    assert order is not None  # refunds.order_id references orders
    amount = refund.settle(event.voided, event.kept, order.per_stamp(), now)
    await repo.save(refund)
    log.warning("order %s: refund %s: %d voided, %d kept (in use): %d to pay out", order.id, refund.refund_id,
                len(refund.voided), len(refund.kept), amount)
    if amount:
        uow.publish(PartialRefundRequested(order_id=order.id, account_id=order.account_id, refund_id=refund.refund_id,
                                           serials=tuple(refund.voided), amount=amount, requested_at=now),
                    correlation_id=str(order.id))


async def paid_out(uow: UnitOfWork, event: PartialRefundPaidOut, partners: PartnerRegistry, now: datetime) -> None:
    """The payment service paid the refund out: final; a partner's order tells the partner
    (``order.refunded``)."""
    repo = RefundRepository(uow.conn)
    refund = await repo.get(event.refund_id, for_update=True)
    if refund is None:
        raise PermanentError(f"payout of unknown refund {event.refund_id} of order {event.order_id}")
    if not refund.paid_out(event.payout_reference, event.paid_out_at):
        return
    await repo.save(refund)
    order = await OrderRepository(uow.conn).get(refund.order_id)
    if order is not None and order.partner_id is not None:
        partner = partners.get(order.partner_id)
        await PartnerEventRepository(uow.conn).add_event(
            order.partner_id,
            partner_events.order_refunded(order_id=order.id, refund_id=refund.refund_id, serials=refund.voided,
                                          amount=refund.amount, at=now),
            deliver=partner is not None and partner.webhook_url is not None)


async def whole_order_refunded(uow: UnitOfWork, order: Order, event: PaymentRefunded) -> None:
    """The payment service refunded the whole order (``order`` locked): a QRIS payment goes back
    through the acquirer, whose ``refundNo`` comes later (``refund_settled``), so the order keeps the
    refund (PAYING) to show it. Other refunds (a VA payment, or no payment captured) are not kept:
    the order's status REFUNDED tells them. A redelivery, or a settlement seen first, changes nothing."""
    if order.payment_method != "qris" or event.payment_id is None:
        return
    await RefundRepository(uow.conn).add_whole_order(
        Refund.whole_order(event.refund_id, order.id, event.amount, event.refunded_at))


async def refund_settled(uow: UnitOfWork, event: PaymentRefundSettled) -> None:
    """The acquirer made a whole-order refund: PAID_OUT with its ``refundNo``. It may come before
    ``payment.refunded.v1`` (another queue): then the refund is recorded PAID_OUT at once. The order
    row is locked, as ``payment.refunded.v1``'s handler locks it, so the two never both insert."""
    order = await OrderRepository(uow.conn).get(event.order_id, for_update=True)
    if order is None:
        raise PermanentError(f"refund {event.refund_id} settled for unknown order {event.order_id}")
    repo = RefundRepository(uow.conn)
    refund = await repo.get(event.refund_id, for_update=True)
    if refund is None:
        refund = Refund.whole_order(event.refund_id, order.id, event.amount, event.settled_at)
        refund.paid_out(event.reference, event.settled_at)
        await repo.add_whole_order(refund)
        return
    if refund.order_id != event.order_id:
        raise PermanentError(f"refund {event.refund_id} settled for order {event.order_id}, "
                             f"recorded for {refund.order_id}")
    if refund.paid_out(event.reference, event.settled_at):
        await repo.save(refund)
