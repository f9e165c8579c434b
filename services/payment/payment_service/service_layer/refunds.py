"""Refunds: a whole order's, recorded once per order and announced with ``payment.refunded.v1``;
and a buyer's refunds of unused stamps (partial, several per order), recorded once per refund id
and paid out through the bank adapter (``payment.partial_refund_paid_out.v1``).

A refund of a QRIS payment, whole or partial, goes back through the acquirer instead
(``qr-mpm-refund``, ``service_layer.qris.refund_qrs``): partial ones are then paid out when the
acquirer answers ``2007800`` (the same ``payment.partial_refund_paid_out.v1``, its ``refundNo`` as
the payout reference), whole ones settled (``payment.refund_settled.v1``)."""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import uuid4

import asyncpg
from emeterai_shared.contracts.events import (
    OrderRefundRequested,
    PartialRefundPaidOut,
    PartialRefundRequested,
    PaymentRefunded,
)
from emeterai_shared.messaging import PermanentError
from emeterai_shared.uow import UnitOfWork, unit_of_work

from payment_service.adapters.partial_refunds import PartialRefundRepository
from payment_service.adapters.payouts import Payouts
from payment_service.adapters.repository import PaymentRepository
from payment_service.service_layer.qris import record_qris_refund

log = logging.getLogger(__name__)


async def record_refund(uow: UnitOfWork, requested: OrderRefundRequested, now: datetime) -> bool:
    """Record the refund of the requested amount, at most the captured payment (without one, the
    requested amount); False when the order already has one. A request for less than the payment
    is an order giving back only the stamps that were not used. The bill is locked so a capture in
    flight is seen, or waits."""
    repo = PaymentRepository(uow.conn)
    bill = await repo.bill_for_order(requested.order_id, lock=True)
    payment = await repo.captured_for_bill(bill.bill_id) if bill is not None else None
    refund_id = uuid4()
    payment_id = payment.payment_id if payment is not None else None
    amount = min(payment.amount, requested.amount) if payment is not None else requested.amount
    if not await repo.add_refund(refund_id, requested.order_id, payment_id, amount, requested.reason, now):
        return False
    if bill is not None and bill.method == "qris" and payment is not None:
        await record_qris_refund(uow, bill, refund_id, amount, now)
    uow.publish(PaymentRefunded(order_id=requested.order_id, refund_id=refund_id, payment_id=payment_id,
                                amount=amount, reason=requested.reason, refunded_at=now),
                correlation_id=str(requested.order_id))
    return True


PAYOUT_BATCH = 50


async def record_partial_refund(uow: UnitOfWork, requested: PartialRefundRequested, now: datetime) -> bool:
    """Record a buyer's refund of unused stamps to pay out (PAYING), through the payout adapter, or
    for a QRIS payment through qr-mpm-refund with its own partnerRefundNo; False when already recorded
    (a redelivery, or the same refund published again). It needs the order's captured payment, and
    all refunds of an order together never exceed it: anything else is an anomaly that parks,
    visible to operators, instead of paying money nobody captured."""
    repo = PaymentRepository(uow.conn)
    bill = await repo.bill_for_order(requested.order_id, lock=True)
    payment = await repo.captured_for_bill(bill.bill_id) if bill is not None else None
    if bill is None or payment is None:
        raise PermanentError(f"refund {requested.refund_id}: order {requested.order_id} has no captured payment")
    partial = PartialRefundRepository(uow.conn)
    if requested.amount <= 0:
        raise PermanentError(f"refund {requested.refund_id}: amount {requested.amount}")
    already = await partial.refunded_of_order(requested.order_id)
    qris = bill.method == "qris"
    if not await partial.add(requested.refund_id, requested.order_id, payment.payment_id, bill.bank,
                             requested.serials, requested.amount, now, via="qris" if qris else "payout"):
        return False
    if already + requested.amount > payment.amount:
        raise PermanentError(f"refund {requested.refund_id} of {requested.amount}: the order's refunds would "
                             f"exceed its payment of {payment.amount} ({already} refunded already)")
    if qris and not await record_qris_refund(uow, bill, requested.refund_id, requested.amount, now):
        raise PermanentError(f"refund {requested.refund_id}: the QRIS payment of order {requested.order_id} "
                             "cannot be refunded through its acquirer (no QR reference)")
    return True


async def pay_out_due(pool: asyncpg.Pool, payouts: Payouts, now: datetime, retry_s: float) -> int:
    """Pay out the recorded partial refunds that are due, batch by batch; returns how many were paid.

    Each batch is locked (``SKIP LOCKED``: several workers share the work) while the bank is
    called, and its outcome committed with ``payment.partial_refund_paid_out.v1``. A crash between
    the bank's answer and the commit repeats the call for the same refund id, which the bank
    answers with the same transfer: paid out once."""
    total = 0
    while True:
        async with unit_of_work(pool) as uow:
            repo = PartialRefundRepository(uow.conn)
            due = await repo.claim_due(now, PAYOUT_BATCH)
            for payout in due:
                try:
                    reference = await payouts.pay_out(payout)
                except Exception as exc:  # the bank's failure must not stop the others; retried later
                    log.error("payout of refund %s (order %s) failed: %s", payout.refund_id, payout.order_id, exc)
                    await repo.failed(payout.refund_id, f"{type(exc).__name__}: {exc}", retry_s, now)
                    continue
                await repo.paid_out(payout.refund_id, reference, now)
                uow.publish(PartialRefundPaidOut(order_id=payout.order_id, refund_id=payout.refund_id,
                                                 amount=payout.amount, payout_reference=reference, paid_out_at=now),
                            correlation_id=str(payout.order_id))
                total += 1
        if len(due) < PAYOUT_BATCH:
            return total
