"""Receipts of paid orders: numbered when the payment is recorded, read by their owner."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from emeterai_shared.uow import UnitOfWork

from order_service.adapters.receipts import ReceiptRepository
from order_service.adapters.refunds import RefundRepository
from order_service.domain.order import Order
from order_service.domain.receipt import Payment, Receipt, ReceiptRefund
from order_service.domain.refund import RefundStatus
from order_service.service_layer.orders import order_of


class NotPaid(Exception):
    """The order has no captured payment for stamps (yet): it has no receipt."""

    def __init__(self, order: Order):
        super().__init__(f"order {order.id} is {order.status}: no payment for stamps recorded")
        self.order = order


async def issue_receipt(uow: UnitOfWork, order: Order, *, paid_at: datetime, payment: Payment) -> None:
    """Number the receipt of ``order``, which became PAID in this unit of work (the order is locked),
    as the transaction's last work (``UnitOfWork.last``): the year's counter row, which every
    capture locks until it commits, is then the last lock its transaction takes. Taken in the
    middle of a consumer batch, it deadlocked with a batch of the other queue (captures and
    serials that apply their capture) holding an order this one wanted next."""
    async def number(conn: asyncpg.Connection) -> None:
        await ReceiptRepository(conn).issue(order.id, paid_at=paid_at, payment=payment)
    await uow.last(number)


async def refunds_of(uow: UnitOfWork, order: Order) -> list[ReceiptRefund]:
    """The buyer refunds of the order that returned money, or may (``POST /v1/orders/{id}/refund``),
    and the whole order's refund of a QRIS payment,
    oldest first, as the order view shows them: a refund still REQUESTED shows the most it can be;
    one that found every serial in use (NOTHING) returned nothing and is not listed."""
    listed = []
    for r in await RefundRepository(uow.conn).of_order(order.id):
        if r.status is RefundStatus.NOTHING:
            continue
        amount = r.amount if r.decided_at is not None else order.per_stamp() * len(r.requested)
        listed.append(ReceiptRefund(refund_id=r.refund_id, serials=list(r.serials), amount=amount,
                                    status=r.status.value, kind=r.kind.value, reference=r.payout_reference))
    return listed


async def receipt(uow: UnitOfWork, account_id: uuid.UUID, order_id: uuid.UUID) -> Receipt | None:
    """The receipt of the caller's order; None when the order is not the caller's (not found),
    ``NotPaid`` before its payment is recorded."""
    order = await order_of(uow, account_id, order_id)
    if order is None:
        return None
    repo = ReceiptRepository(uow.conn)
    record = await repo.record(order.id)
    if record is None:
        raise NotPaid(order)
    if order.partner_id is not None:
        buyer = f"{order.partner_id} (partner)"
    else:
        buyer = await repo.buyer_name(order.account_id) or str(order.account_id)
    va = (order.bill.virtual_account_no or None) if order.bill is not None else None  # '' for QRIS
    payment = Payment(record.payment.method, record.payment.bank, record.payment.payment_request_id,
                      record.payment.reference_no, va)
    return Receipt(receipt_no=record.receipt_no, order_id=order.id, account_id=order.account_id, buyer=buyer,
                   paid_at=record.paid_at, quantity=order.quantity, total=order.amount, payment=payment,
                   serials=list(order.serials), refunds=await refunds_of(uow, order))
