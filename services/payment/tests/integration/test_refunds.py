"""Refunds are recorded exactly once per order, whatever the redeliveries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

from emeterai_shared.contracts.events import OrderRefundRequested, PaymentRefunded
from emeterai_testkit.fixtures import eventually
from prometheus_client import REGISTRY

if TYPE_CHECKING:
    from conftest import Payment

QUEUE = "payment.on_order_refund_requested"


async def request_refund_three_times(payment: Payment, order_id: UUID, amount: int) -> None:
    """The same request redelivered (same id), and published again (new id) twice at once."""
    request = OrderRefundRequested(order_id=order_id, amount=amount, reason="paid after expiry",
                                   requested_at=datetime.now(UTC))
    first = await payment.publish(request)
    await eventually(lambda: payment.pool.fetchval("SELECT 1 FROM refunds WHERE order_id = $1", order_id))
    ids = [await payment.publish(request, message_id=first), await payment.publish(request),
           await payment.publish(request)]
    await eventually(lambda: payment.pool.fetchval(
        "SELECT count(*) = 2 FROM inbox WHERE consumer = $1 AND message_id = ANY($2::text[])", QUEUE, ids[1:]),
        message="the republished requests")


async def test_refund_of_a_captured_payment_once(payment: Payment) -> None:
    bill = await payment.place_order(12_500)
    async with payment.bank() as bank:
        cno = str(bill["virtual_account_no"])[len(bank.partner_service_id):]
        assert (await bank.pay(cno, 12_500))[1]["responseCode"] == "2002500"
    refunded = REGISTRY.get_sample_value("emeterai_payments_refunded_total") or 0
    await request_refund_three_times(payment, bill["order_id"], 99_999)

    row = await payment.pool.fetchrow("SELECT * FROM refunds WHERE order_id = $1", bill["order_id"])
    payment_id = await payment.pool.fetchval("SELECT payment_id FROM payments WHERE bill_id = $1", bill["bill_id"])
    assert (row["payment_id"], row["amount"], row["reason"]) == (payment_id, 12_500, "paid after expiry")
    [event] = await payment.events(PaymentRefunded.TYPE, bill["order_id"])
    assert isinstance(event, PaymentRefunded)
    assert (event.refund_id, event.payment_id, event.amount) == (row["refund_id"], payment_id, 12_500)
    assert REGISTRY.get_sample_value("emeterai_payments_refunded_total") == refunded + 1


async def test_refund_without_a_capture_uses_the_requested_amount(payment: Payment) -> None:
    bill = await payment.place_order(25_000)
    await request_refund_three_times(payment, bill["order_id"], 25_000)
    [event] = await payment.events(PaymentRefunded.TYPE, bill["order_id"])
    assert isinstance(event, PaymentRefunded)
    assert (event.payment_id, event.amount) == (None, 25_000)


async def test_a_refund_of_part_of_the_payment_refunds_that_part(payment: Payment) -> None:
    """An order that gives back only its unused stamps asks for less than it paid."""
    bill = await payment.place_order(25_000)
    async with payment.bank() as bank:
        cno = str(bill["virtual_account_no"])[len(bank.partner_service_id):]
        assert (await bank.pay(cno, 25_000))[1]["responseCode"] == "2002500"
    await request_refund_three_times(payment, bill["order_id"], 12_500)
    [event] = await payment.events(PaymentRefunded.TYPE, bill["order_id"])
    assert isinstance(event, PaymentRefunded) and event.amount == 12_500
    assert await payment.pool.fetchval("SELECT amount FROM refunds WHERE order_id = $1", bill["order_id"]) == 12_500
