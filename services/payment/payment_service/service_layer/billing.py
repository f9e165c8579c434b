"""Bills: one issued per placed order, expired when still unpaid after ``bill_expiry_s``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from uuid import uuid4

import asyncpg
from emeterai_shared.contracts.events import BillExpired, BillFailed, BillIssued, OrderPlaced
from emeterai_shared.messaging import PermanentError
from emeterai_shared.uow import UnitOfWork, unit_of_work

from payment_service.adapters.acquirers import AcquirerRegistry
from payment_service.adapters.banks import BankRegistry
from payment_service.adapters.repository import PaymentRepository
from payment_service.adapters.snap.models import va_digits
from payment_service.domain.model import Bill, BillStatus, new_customer_no

CUSTOMER_NO_ATTEMPTS = 10
EXPIRY_BATCH = 500


async def issue_bill(uow: UnitOfWork, banks: BankRegistry, order: OrderPlaced, expiry: timedelta,
                     now: datetime, trace_context: Mapping[str, str] | None = None, *,
                     acquirers: AcquirerRegistry | None = None, qris_validity: timedelta | None = None) -> None:
    """Open the order's bill at its bank and announce it; a redelivered order changes nothing.

    The bill's INSERT finds an order's existing bill by itself (``ON CONFLICT``): the common case,
    a new order, costs one statement, a redelivery two.

    ``trace_context`` (the order's W3C trace context) is kept with the bill, so that the bank's
    callback and the expiry sweep, which run outside the order's trace, continue it."""
    repo = PaymentRepository(uow.conn)
    correlation_id = str(order.order_id)
    if order.payment_method == "qris":
        await _issue_qris_bill(uow, acquirers, order, qris_validity or expiry, now, trace_context)
        return
    bank = banks.for_order(order.bank)
    if bank is None:
        if await repo.bill_for_order(order.order_id) is not None:
            return  # issued before the bank left the configuration
        reason = f"unknown bank {order.bank!r}" if order.bank else "no partner bank is configured"
        uow.publish(BillFailed(order_id=order.order_id, reason=reason), correlation_id=correlation_id)
        return
    if order.amount <= 0:
        raise PermanentError(f"order {order.order_id} has a non-positive amount {order.amount}")
    for _ in range(CUSTOMER_NO_ATTEMPTS):
        customer_no = new_customer_no()
        bill = Bill(uuid4(), order.order_id, bank.client_id, customer_no,
                    va_digits(bank.partner_service_id, customer_no), order.amount, order.quantity,
                    BillStatus.OPEN, now + expiry, trace_context or None, account_id=order.account_id,
                    partner_id=order.partner_id)
        announce = UnitOfWork(uow.conn)  # bill.issued.v1 goes out with the bill, in its INSERT, or not at all
        announce.publish(BillIssued(order_id=bill.order_id, bill_id=bill.bill_id, bank=bill.bank,
                                    virtual_account_no=bill.virtual_account_no, amount=bill.amount,
                                    expires_at=bill.expires_at), correlation_id=correlation_id)
        if await repo.add_bill(bill, announce):
            return
        if await repo.bill_for_order(order.order_id) is not None:
            return  # a concurrent delivery of the same order issued it
    raise RuntimeError(f"no free customer number after {CUSTOMER_NO_ATTEMPTS} attempts")


async def _issue_qris_bill(uow: UnitOfWork, acquirers: AcquirerRegistry | None, order: OrderPlaced,
                           validity: timedelta, now: datetime, trace_context: Mapping[str, str] | None) -> None:
    """Store the QRIS bill with its ``partnerReferenceNo``; the worker's job asks the acquirer for the
    QR afterwards (``qris.generate_qrs``) and announces the bill then."""
    repo = PaymentRepository(uow.conn)
    acquirer = acquirers.first() if acquirers is not None else None
    if acquirer is None:
        if await repo.bill_for_order(order.order_id) is not None:
            return  # issued before the acquirer left the configuration
        uow.publish(BillFailed(order_id=order.order_id, reason="no QRIS acquirer is configured"),
                    correlation_id=str(order.order_id))
        return
    if order.amount <= 0:
        raise PermanentError(f"order {order.order_id} has a non-positive amount {order.amount}")
    for _ in range(CUSTOMER_NO_ATTEMPTS):
        bill_id = uuid4()
        bill = Bill(bill_id, order.order_id, acquirer.acquirer_id, new_customer_no(), "", order.amount,
                    order.quantity, BillStatus.OPEN, now + validity, trace_context or None, method="qris",
                    partner_reference_no=f"EM{bill_id.hex}", account_id=order.account_id, partner_id=order.partner_id)
        if await repo.add_bill(bill) or await repo.bill_for_order(order.order_id) is not None:
            return
    raise RuntimeError(f"no free customer number after {CUSTOMER_NO_ATTEMPTS} attempts")


async def expire_due_bills(pool: asyncpg.Pool, now: datetime) -> int:
    """Expire open bills past their expiry, batch by batch; returns how many expired."""
    total = 0
    while True:
        async with unit_of_work(pool) as uow:
            repo = PaymentRepository(uow.conn)
            bills = await repo.claim_due_bills(now, EXPIRY_BATCH)
            for bill in bills:
                bill.expire()
                uow.publish(BillExpired(order_id=bill.order_id, bill_id=bill.bill_id, expired_at=bill.expires_at),
                            correlation_id=str(bill.order_id), trace_headers=bill.trace_context or None)
            await repo.save_expired(bills, now)
        total += len(bills)
        if len(bills) < EXPIRY_BATCH:
            return total
