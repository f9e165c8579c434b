"""Refunds: recorded once per order and announced with ``payment.refunded.v1``."""

from __future__ import annotations

from datetime import datetime
from uuid import uuid4

from emeterai_shared.contracts.events import OrderRefundRequested, PaymentRefunded
from emeterai_shared.uow import UnitOfWork

from payment_service.adapters.repository import PaymentRepository


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
    uow.publish(PaymentRefunded(order_id=requested.order_id, refund_id=refund_id, payment_id=payment_id,
                                amount=amount, reason=requested.reason, refunded_at=now),
                correlation_id=str(requested.order_id))
    return True
