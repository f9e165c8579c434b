"""Message handlers of the order service: each loads the order, applies the domain, saves.

Events for partners (``order.fulfilled``, ``order.expired``, ``stamping.completed``,
``stamping.failed``) are recorded in the same
transaction as the change they report, with their webhook delivery when the partner has a
``webhook_url``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from emeterai_shared.contracts.events import (
    AcquirerStateChanged,
    BillExpired,
    BillFailed,
    BillIssued,
    CapturedPayment,
    DocumentFailed,
    DocumentStamped,
    MintingFailed,
    OrderPaid,
    OrderRefundRequested,
    PartialRefundPaidOut,
    PaymentCaptured,
    PaymentRefunded,
    PaymentRefundSettled,
    SerialsIssued,
    SerialsVoided,
    SerialsVoidRequested,
    SmsRequested,
    StockAwaited,
)
from emeterai_shared.messaging import Envelope, NotYet, PermanentError
from emeterai_shared.uow import UnitOfWork

from order_service.adapters.acquirer_states import AcquirerStates
from order_service.adapters.partner_store import PartnerEventRepository
from order_service.adapters.partners import PartnerRegistry
from order_service.adapters.refunds import RefundRepository
from order_service.adapters.repository import OrderRepository
from order_service.adapters.sms import SmsFailed, SmsSender, masked
from order_service.domain import partner_events
from order_service.domain.order import Bill, IllegalTransition, Order, OrderStatus
from order_service.domain.partner_events import PartnerEvent
from order_service.domain.receipt import Payment
from order_service.metrics import SMS_SENDS
from order_service.service_layer import receipts, refunds

log = logging.getLogger(__name__)


async def _load(uow: UnitOfWork, order_id: uuid.UUID) -> Order:
    """The order, locked. An event about an order we never had is an anomaly (money may be
    involved): it parks with its reason, visible to operators, instead of vanishing."""
    order = await OrderRepository(uow.conn).get(order_id, for_update=True)
    if order is None:
        raise PermanentError(f"event for unknown order {order_id}")
    return order


def _ignore(order: Order, event: str, exc: IllegalTransition) -> None:
    """An event that no longer applies (e.g. a bill expiring after it was paid) changes nothing."""
    log.warning("%s for order %s in %s ignored: %s", event, order.id, order.status, exc)


async def _transition(uow: UnitOfWork, order_id: uuid.UUID, what: str,
                      change: Callable[[Order], None]) -> Order | None:
    """Apply one state change to the locked order and save it; an event that no longer applies
    (``IllegalTransition``) changes nothing and yields None."""
    order = await _load(uow, order_id)
    try:
        change(order)
    except IllegalTransition as exc:
        _ignore(order, what, exc)
        return None
    await OrderRepository(uow.conn).save(order)
    return order


async def on_bill_issued(uow: UnitOfWork, env: Envelope[BillIssued]) -> None:
    """The order's bill, written without loading the order: any order takes its bill
    (``Order.attach_bill`` has no rule), so one UPDATE does what load-attach-save did."""
    e = env.body
    bill = Bill(e.virtual_account_no, e.amount, e.expires_at, e.method, e.qr_content)
    if not await OrderRepository(uow.conn).attach_bill(e.order_id, bill):
        raise PermanentError(f"event for unknown order {e.order_id}")


async def on_bill_failed(uow: UnitOfWork, env: Envelope[BillFailed]) -> None:
    await _transition(uow, env.body.order_id, "bill failure", lambda order: order.fail(env.body.reason))


async def on_bill_expired(uow: UnitOfWork, env: Envelope[BillExpired], partners: PartnerRegistry) -> None:
    """EXPIRED; a partner's order tells the partner (``order.expired``), in the same transaction."""
    order = await _transition(uow, env.body.order_id, "bill expiry", Order.expire)
    if order is not None and order.partner_id is not None:
        await _tell_partner(uow, partners, order.partner_id,
                            partner_events.order_expired(order, env.body.expired_at, datetime.now(UTC)))


async def on_payment_captured(uow: UnitOfWork, env: Envelope[PaymentCaptured]) -> None:
    """PAID with its receipt, or the payment refunded. Minting issues the serials straight from a
    capture that names the buyer and the quantity; for one from an older payment service (without
    them) the order tells minting with ``order.paid``, as before."""
    e = env.body
    order = await _load(uow, e.order_id)
    if order.payment_id == e.payment_id:
        return  # already applied under another message id, or with minting's answer
    taken = await _capture(uow, order, e.facts(), late=e.late, tell_minting=e.account_id is None or e.quantity is None)
    if taken is not None:  # the order, its history and the message announcing it in one statement
        await OrderRepository(uow.conn).save(order, outbox=uow.take())


async def _capture(uow: UnitOfWork, order: Order, p: CapturedPayment, *, late: bool,
                   tell_minting: bool) -> bool | None:
    """Apply a captured payment to the locked order (saved by the caller): True, PAID with its
    receipt (and ``order.paid`` when ``tell_minting``); False, the order is REFUND_PENDING and its
    refund requested; None, the order cannot take it as it is (left untouched) and the payment's
    refund is requested."""
    now = datetime.now(UTC)
    cid = str(order.id)
    try:
        fulfil = order.capture(p.payment_id, late=late)
    except IllegalTransition as exc:
        # Captured money for an order that cannot take it: never keep it silently.
        log.error("payment %s for order %s in %s: refunding", p.payment_id, order.id, order.status)
        uow.publish(OrderRefundRequested(order_id=order.id, amount=p.amount,
                                         reason=f"payment captured while the order was {exc.current}",
                                         requested_at=now), correlation_id=cid)
        return None
    if fulfil:
        # The receipt number is taken here, with the payment: a number for every PAID order, none skipped.
        await receipts.issue_receipt(uow, order, paid_at=p.captured_at, payment=Payment(
            p.method, p.bank, p.payment_request_id, p.reference_no))
        if tell_minting:
            uow.publish(OrderPaid(order_id=order.id, account_id=order.account_id, quantity=order.quantity,
                                  amount=order.amount, partner_id=order.partner_id, paid_at=now),
                        correlation_id=cid)
    else:
        uow.publish(OrderRefundRequested(order_id=order.id, amount=p.amount,
                                         reason=order.failure_reason or "cannot fulfil",
                                         requested_at=now), correlation_id=cid)
    return fulfil


async def _paid_first(uow: UnitOfWork, order: Order, payment: CapturedPayment | None, what: str) -> None:
    """Minting's answer came before the capture it answers was applied here (separate queues): apply
    that capture first, from the answer (the capture, when it comes, finds it applied); an answer
    without it (minting served the order later, from its stock queue) waits for the capture."""
    if order.status is not OrderStatus.AWAITING_PAYMENT:
        return
    if payment is None:
        raise NotYet(f"{what} for order {order.id} before its payment was applied")
    await _capture(uow, order, payment, late=False, tell_minting=False)


async def on_payment_refunded(uow: UnitOfWork, env: Envelope[PaymentRefunded]) -> None:
    order = await _transition(uow, env.body.order_id, "refund", Order.refunded)
    await refunds.whole_order_refunded(uow, order or await _load(uow, env.body.order_id), env.body)


async def on_payment_refund_settled(uow: UnitOfWork, env: Envelope[PaymentRefundSettled]) -> None:
    """The acquirer made a whole-order QRIS refund: the order's refund gets its refundNo."""
    await refunds.refund_settled(uow, env.body)


async def on_serials_issued(uow: UnitOfWork, env: Envelope[SerialsIssued], partners: PartnerRegistry) -> None:
    """FULFILLED with the serials; serials the order cannot accept are given back, never parked.

    Stamping has its own copy of this event and has credited the serials to the buyer already,
    so refusing them must undo that: the order asks stamping to void them (``give_back``) and
    refunds only once stamping has answered (``on_serials_voided``)."""
    e = env.body
    stamps = [(s.sn, s.token) for s in e.serials]
    sns = [sn for sn, _ in stamps]
    orders = OrderRepository(uow.conn)
    found = await orders.get_for_fulfilment(e.order_id, sns)  # the order locked, with the serials others hold
    if found is None:
        raise PermanentError(f"event for unknown order {e.order_id}")
    order, taken = found
    if order.status is OrderStatus.FULFILLED and sorted(order.serials) == sorted(sns):
        return  # the same issuance again, under another message id
    await _paid_first(uow, order, e.payment, "serials")
    try:
        if taken:
            raise ValueError(f"serials already issued to another order: {', '.join(taken[:5])}")
        order.fulfil(sns)
    except (IllegalTransition, ValueError) as exc:  # not the serials ordered, or not for this order now
        await _give_back(uow, order, e.account_id, sns, f"cannot accept the serials issued: {exc}")
        return
    await orders.save(order, stamps=stamps)
    if order.partner_id is not None:
        await _tell_partner(uow, partners, order.partner_id,
                            partner_events.order_fulfilled(order, stamps, datetime.now(UTC)))


async def _give_back(uow: UnitOfWork, order: Order, account_id: uuid.UUID, serials: list[str], reason: str) -> None:
    """Ask stamping to void ``serials`` (``order.serials_void_requested.v1``). A PAID order waits
    for the answer to refund what was voided; an order whose money is settled otherwise (refunded,
    or fulfilled with other serials) only has them voided."""
    log.error("order %s (%s): %s: asking for %d serial(s) to be voided", order.id, order.status, reason, len(serials))
    if order.status is OrderStatus.PAID:
        order.give_back(serials, reason)
        await OrderRepository(uow.conn).save(order)
    uow.publish(SerialsVoidRequested(order_id=order.id, account_id=account_id, serials=tuple(serials),
                                     reason=reason, requested_at=datetime.now(UTC)), correlation_id=str(order.id))


async def on_serials_voided(uow: UnitOfWork, env: Envelope[SerialsVoided]) -> None:
    """Stamping's answer to a void request: refund what was voided, or fulfil with what was kept.
    The answer to a buyer's refund of unused stamps (``refund_id``) settles that refund."""
    e = env.body
    if e.refund_id is not None:
        await refunds.settle(uow, e, datetime.now(UTC))
        return
    order = await _load(uow, e.order_id)
    status = order.status
    refund = order.settle_given_back(list(e.voided), list(e.kept))
    await OrderRepository(uow.conn).save(order)
    if refund is None and e.kept and status is not OrderStatus.PAID:
        log.error("order %s (%s): serial(s) %s could not be voided (already used) after the order was settled "
                  "otherwise", order.id, status, ", ".join(e.kept))
    if refund:
        uow.publish(OrderRefundRequested(order_id=order.id, amount=refund, reason=order.failure_reason or e.reason,
                                         requested_at=datetime.now(UTC)), correlation_id=str(order.id))


async def on_stock_awaited(uow: UnitOfWork, env: Envelope[StockAwaited]) -> None:
    """The PAID order shows that it waits for stock (and when it will be refunded otherwise);
    arriving after the serials or the failure (another queue), it changes nothing."""
    e = env.body
    order = await _load(uow, e.order_id)
    await _paid_first(uow, order, e.payment, "stock awaited")
    try:
        order.await_stock(e.since, e.refund_at)
    except IllegalTransition as exc:
        _ignore(order, "stock awaited", exc)
    await OrderRepository(uow.conn).save(order)


async def on_minting_failed(uow: UnitOfWork, env: Envelope[MintingFailed]) -> None:
    order = await _load(uow, env.body.order_id)
    await _paid_first(uow, order, env.body.payment, "minting failure")
    try:
        refund_now = order.cannot_fulfil(env.body.reason)
    except IllegalTransition as exc:
        _ignore(order, "minting failure", exc)
        await OrderRepository(uow.conn).save(order)  # the capture applied first, if it was
        return
    await OrderRepository(uow.conn).save(order)
    if not refund_now:
        return
    uow.publish(OrderRefundRequested(order_id=order.id, amount=order.amount, reason=env.body.reason,
                                     requested_at=datetime.now(UTC)), correlation_id=str(order.id))


async def on_document_stamped(uow: UnitOfWork, env: Envelope[DocumentStamped], partners: PartnerRegistry) -> None:
    """Tell the partner whose order the stamped serial came from; buyers' serials need nothing.

    A serial we have not indexed yet is retried (the queues of ``minting.serials_issued`` and of
    this event are independent, so this one may overtake it), then parked with its reason."""
    e = env.body
    owner = await OrderRepository(uow.conn).serial_owner(e.sn)
    if owner is None:
        raise LookupError(f"serial {e.sn} is not (yet) issued to any order")
    order_id, partner_id = owner
    await RefundRepository(uow.conn).mark_stamped(e.sn, e.stamped_at)
    if partner_id is None:
        return
    await _tell_partner(uow, partners, partner_id, partner_events.stamping_completed(
        order_id=order_id, stamping_id=e.stamping_id, sn=e.sn, document_sha256=e.document_sha256,
        stamped_at=e.stamped_at, at=datetime.now(UTC)))


async def on_document_failed(uow: UnitOfWork, env: Envelope[DocumentFailed], partners: PartnerRegistry) -> None:
    """Tell the partner whose order the serial of a failed stamping came from (``stamping.failed``);
    buyers' serials need nothing. An unknown serial is retried, then parked, as for a stamped one."""
    e = env.body
    owner = await OrderRepository(uow.conn).serial_owner(e.sn)
    if owner is None:
        raise LookupError(f"serial {e.sn} is not (yet) issued to any order")
    order_id, partner_id = owner
    if partner_id is None:
        return
    await _tell_partner(uow, partners, partner_id, partner_events.stamping_failed(
        order_id=order_id, stamping_id=e.stamping_id, sn=e.sn, error=e.error, failed_at=e.failed_at,
        at=datetime.now(UTC)))


async def on_partial_refund_paid_out(uow: UnitOfWork, env: Envelope[PartialRefundPaidOut],
                                     partners: PartnerRegistry) -> None:
    await refunds.paid_out(uow, env.body, partners, datetime.now(UTC))


async def on_acquirer_state(uow: UnitOfWork, env: Envelope[AcquirerStateChanged]) -> None:
    """Keep what the payment worker reports about a QRIS acquirer (newest first): ``POST /v1/orders``
    sheds QRIS orders while the acquirer that takes new bills is unavailable."""
    e = env.body
    if await AcquirerStates(uow.conn).record(e.acquirer_id, e.available, e.retry_at, e.takes_new_bills,
                                             e.changed_at):
        log.info("QRIS acquirer %s %s", e.acquirer_id,
                 "available" if e.available else f"unavailable (retry at {e.retry_at})")


async def _tell_partner(uow: UnitOfWork, partners: PartnerRegistry, partner_id: str, event: PartnerEvent) -> None:
    """Record the event in the partner's feed, with a webhook delivery when it has a webhook_url
    (a partner no longer configured still finds its events in the feed)."""
    partner = partners.get(partner_id)
    await PartnerEventRepository(uow.conn).add_event(
        partner_id, event, deliver=partner is not None and partner.webhook_url is not None)


async def on_sms_requested(uow: UnitOfWork, env: Envelope[SmsRequested], sms: SmsSender) -> None:
    """Send a text queued as a message by an earlier version (texts now go from ``sms_outbox``
    through ``TextDispatcher``, with no message): the queue drains what an upgrade found in flight.
    A text whose code expired meanwhile is dropped; one the gateway refuses for good parks."""
    event = env.body
    if event.expires_at is not None and datetime.now(UTC) >= event.expires_at:
        SMS_SENDS.labels("expired").inc()
        log.warning("text to %s dropped: its code expired before it could be sent", masked(event.phone))
        return
    try:
        await sms.send(event.phone, event.text)
    except SmsFailed as exc:
        SMS_SENDS.labels("failed").inc()
        raise PermanentError(f"SMS not sent: {exc}") from exc
    SMS_SENDS.labels("sent").inc()
