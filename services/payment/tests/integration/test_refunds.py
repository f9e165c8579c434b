"""Refunds are recorded exactly once per order, whatever the redeliveries; a buyer's partial
refunds once per refund id, paid out once through the bank adapter, never more than was captured."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import aio_pika
from emeterai_shared.contracts.events import (
    OrderRefundRequested,
    PartialRefundPaidOut,
    PartialRefundRequested,
    PaymentRefunded,
)
from emeterai_shared.messaging.parking import ParkedMessage, list_parked
from emeterai_testkit.fixtures import eventually
from payment_service.adapters.payouts import Payout, PayoutError
from payment_service.service_layer.refunds import pay_out_due
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


# --- a buyer's refund of unused stamps: partial, recorded once per refund, paid out once -----------------


class FlakyBank:
    """A payout bank that fails its first ``failures`` calls, then pays; counts the calls per refund."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[UUID, int] = {}

    async def pay_out(self, payout: Payout) -> str:
        self.calls[payout.refund_id] = self.calls.get(payout.refund_id, 0) + 1
        if self.failures > 0:
            self.failures -= 1
            raise PayoutError("bank unavailable")
        return f"FLAKY-{payout.refund_id.hex[:8]}"


async def paid_order(payment: Payment, amount: int) -> dict[str, Any]:
    bill = await payment.place_order(amount, quantity=amount // 12_500)
    async with payment.bank() as bank:
        cno = str(bill["virtual_account_no"])[len(bank.partner_service_id):]
        assert (await bank.pay(cno, amount))[1]["responseCode"] == "2002500"
    return bill


def partial(order_id: UUID, amount: int, serials: tuple[str, ...]) -> PartialRefundRequested:
    return PartialRefundRequested(order_id=order_id, account_id=uuid4(), refund_id=uuid4(), serials=serials,
                                  amount=amount, requested_at=datetime.now(UTC))


async def consumed(payment: Payment, queue: str, ids: list[str]) -> None:
    await eventually(lambda: payment.pool.fetchval(
        "SELECT count(*) = $3 FROM inbox WHERE consumer = $1 AND message_id = ANY($2::text[])", queue, ids, len(ids)),
        message=f"{ids} consumed from {queue}")


async def parked_reason(payment: Payment, queue: str, message_id: str) -> str:
    connection = await aio_pika.connect_robust(payment.settings.amqp_url)
    try:
        async def found() -> list[ParkedMessage]:
            return [m for m in await list_parked(connection, queue) if m.message_id == message_id]

        parked: list[ParkedMessage] = await eventually(found, timeout_s=60, message=f"{message_id} parked")
        return str(parked[0].reason)
    finally:
        await connection.close()


PARTIAL = "payment.on_partial_refund_requested"


async def test_a_partial_refund_is_recorded_once_and_paid_out_once(payment: Payment) -> None:
    bill = await paid_order(payment, 37_500)
    request = partial(bill["order_id"], 25_000, ("SN-B", "SN-C"))
    first = await payment.publish(request, correlation_id=str(bill["order_id"]))
    await consumed(payment, PARTIAL, [first])
    again = [await payment.publish(request, message_id=first), await payment.publish(request)]  # redelivered, re-sent
    await consumed(payment, PARTIAL, again[1:])
    rows = await payment.pool.fetch("SELECT * FROM partial_refunds WHERE order_id = $1", bill["order_id"])
    assert [(r["refund_id"], r["amount"], r["status"], r["serials"]) for r in rows] == [
        (request.refund_id, 25_000, "PAYING", ["SN-B", "SN-C"])]

    bank = FlakyBank(failures=1)
    now = datetime.now(UTC)
    await pay_out_due(payment.pool, bank, now, retry_s=0.0)  # the bank fails: retried later
    failed = await payment.pool.fetchrow("SELECT * FROM partial_refunds WHERE refund_id = $1", request.refund_id)
    assert (failed["status"], failed["attempts"]) == ("PAYING", 1) and "bank unavailable" in failed["last_error"]
    later = now + timedelta(seconds=5)
    await pay_out_due(payment.pool, bank, later, retry_s=0.0)
    await pay_out_due(payment.pool, bank, later + timedelta(seconds=5), retry_s=0.0)  # nothing left to pay
    assert bank.calls[request.refund_id] == 2
    done = await payment.pool.fetchrow("SELECT * FROM partial_refunds WHERE refund_id = $1", request.refund_id)
    assert (done["status"], done["payout_reference"]) == ("PAID_OUT", f"FLAKY-{request.refund_id.hex[:8]}")
    [event] = await payment.events(PartialRefundPaidOut.TYPE, bill["order_id"])
    assert isinstance(event, PartialRefundPaidOut)
    assert (event.refund_id, event.amount, event.payout_reference) == (request.refund_id, 25_000,
                                                                        done["payout_reference"])


async def test_refunds_of_an_order_never_exceed_its_payment(payment: Payment) -> None:
    """More than was captured is an anomaly: parked with its reason, nothing recorded or paid."""
    bill = await paid_order(payment, 25_000)
    ok, too_much = partial(bill["order_id"], 12_500, ("SN-A",)), partial(bill["order_id"], 25_000, ("SN-B", "SN-C"))
    await consumed(payment, PARTIAL, [await payment.publish(ok)])
    reason = await parked_reason(payment, PARTIAL, await payment.publish(too_much))
    assert "exceed" in reason
    assert [r["refund_id"] for r in await payment.pool.fetch(
        "SELECT refund_id FROM partial_refunds WHERE order_id = $1", bill["order_id"])] == [ok.refund_id]
