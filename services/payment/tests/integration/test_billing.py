"""Bills: issued once per placed order at the right bank, refused for unknown banks, expired by the job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from uuid import uuid4

from emeterai_shared.contracts.events import BillExpired, BillFailed, BillIssued, OrderPlaced
from emeterai_testkit.fixtures import eventually
from payment_service.bootstrap import SERVICE
from prometheus_client import REGISTRY

if TYPE_CHECKING:
    from conftest import Payment

QUEUE = "payment.on_order_placed"


def consumed(outcome: str) -> float:
    return REGISTRY.get_sample_value("emeterai_messages_consumed_total", {"queue": QUEUE, "outcome": outcome}) or 0


async def test_one_bill_per_order_whatever_the_redeliveries(payment: Payment) -> None:
    order = OrderPlaced(order_id=uuid4(), account_id=uuid4(), quantity=3, amount=37_500,
                        placed_at=datetime.now(UTC))
    message_id = await payment.publish(order, correlation_id=str(order.order_id))
    bill = await eventually(lambda: payment.pool.fetchrow("SELECT * FROM bills WHERE order_id = $1", order.order_id))
    duplicates = consumed("duplicate")
    await payment.publish(order, message_id=message_id)  # redelivered: the inbox absorbs it
    second = await payment.publish(order)  # published again under a new id: the bill absorbs it
    await eventually(lambda: consumed("duplicate") > duplicates, message="the duplicate delivery")
    await eventually(lambda: payment.pool.fetchval("SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2",
                                                   QUEUE, second), message="the second delivery")

    assert await payment.pool.fetchval("SELECT count(*) FROM bills WHERE order_id = $1", order.order_id) == 1
    [issued] = await payment.events(BillIssued.TYPE, order.order_id)
    assert isinstance(issued, BillIssued)
    assert (issued.bill_id, issued.bank, issued.amount) == (bill["bill_id"], "bank-a", 37_500)
    assert issued.virtual_account_no == bill["virtual_account_no"] == "77001" + bill["customer_no"]
    assert len(bill["customer_no"]) == 12 and bill["customer_no"].isdigit()
    assert (bill["status"], bill["quantity"]) == ("OPEN", 3)
    assert timedelta(minutes=59) < issued.expires_at - order.placed_at < timedelta(minutes=61)


async def test_the_order_may_name_its_bank(payment: Payment) -> None:
    bill = await payment.place_order(bank="bank-b")
    assert bill["bank"] == "bank-b"
    assert bill["virtual_account_no"] == "88002" + bill["customer_no"]


async def test_an_unknown_bank_fails_the_bill(payment: Payment) -> None:
    order = OrderPlaced(order_id=uuid4(), account_id=uuid4(), quantity=1, amount=12_500, bank="no-such-bank",
                        placed_at=datetime.now(UTC))
    await payment.publish(order)
    [failed] = await eventually(lambda: payment.events(BillFailed.TYPE, order.order_id), message="bill_failed")
    assert isinstance(failed, BillFailed) and "no-such-bank" in failed.reason
    assert await payment.pool.fetchval("SELECT count(*) FROM bills WHERE order_id = $1", order.order_id) == 0


async def test_expiry_job_expires_unpaid_bills_once(payment: Payment) -> None:
    due, fresh = await payment.place_order(), await payment.place_order()
    await payment.pool.execute("UPDATE bills SET expires_at = now() - interval '1 second' WHERE bill_id = $1",
                               due["bill_id"])
    job = next(j for j in SERVICE.periodic if j.name == "expire-bills")
    assert job.interval(payment.settings) == 5.0
    await job.run(payment.deps)
    await job.run(payment.deps)

    assert (await payment.bill(due["bill_id"]))["status"] == "EXPIRED"
    assert (await payment.bill(fresh["bill_id"]))["status"] == "OPEN"
    [expired] = await payment.events(BillExpired.TYPE, due["order_id"])
    assert isinstance(expired, BillExpired) and expired.bill_id == due["bill_id"]
    assert await payment.events(BillExpired.TYPE, fresh["order_id"]) == []
