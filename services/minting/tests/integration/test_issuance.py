"""Issuance against the real servers: exactly ``quantity`` serials per paid order, once.

* 200 orders paid at once, applied by a worker with 8 concurrent lanes: each order gets exactly
  its quantity of serials, all distinct and well formed, with tokens that verify, announced by
  exactly one ``minting.serials_issued.v1`` per order; redelivering every ``order.paid`` (same
  message ids: the inbox; new ones: the issuance row) changes nothing;
* too little stock is a state, not an error: the issuance WAITS with its ``refund_at``
  (``MINTING_STOCK_WAIT_S`` later), one ``minting.stock_awaited.v1`` tells the order, nothing is
  claimed, retried or parked; an order paid later queues behind it; ``serve_waiting`` (the
  worker's job, driven here with an explicit ``now``) issues the waiting orders oldest first once
  stock is added, and fails them with one ``minting.failed.v1`` at their deadline, after which
  stock added later never fulfils them;
* with ``MINTING_STOCK_WAIT_S=0`` an order finding too little stock fails at once;
* stock held by a concurrent transaction waits the same way and is issued once released;
* serials the order gave back (``stamping.serials_voided.v1``) become VOID, only those of that
  order that are still UNUSED;
* a worker SIGKILLed between commit and ack, then restarted: no order has missing or extra
  serials, and no order is announced twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import uuid4

import asyncpg
import pytest
from emeterai_shared.contracts.events import (
    MintingFailed,
    OrderPaid,
    PaymentCaptured,
    SerialsIssued,
    SerialsVoided,
    StockAwaited,
)
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import eventually
from minting_service.adapters.keys import load_stamp_keys
from minting_service.domain.issuance import WAIT_OVER
from minting_service.domain.token import StampSigner
from minting_service.service_layer.issuance import Served, serve_waiting
from minting_service.service_layer.stock import add_stock
from prometheus_client import REGISTRY

if TYPE_CHECKING:
    from conftest import Minting

PAID_QUEUE = "minting.on_order_paid"


def consumed(outcome: str) -> float:
    return metric("emeterai_messages_consumed_total", queue=PAID_QUEUE, outcome=outcome)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def snapshot(minting: Minting, orders: list[OrderPaid]) -> dict[str, object]:
    """Serials, issuances and outbox rows of ``orders``, to compare before and after."""
    ids = [o.order_id for o in orders]
    return {
        "serials": [tuple(r) for r in await minting.pool.fetch(
            "SELECT order_id, sn, status, issued_at FROM serials WHERE order_id = ANY($1) ORDER BY sn", ids)],
        "issuances": [tuple(r) for r in await minting.pool.fetch(
            "SELECT * FROM issuances WHERE order_id = ANY($1) ORDER BY order_id", ids)],
        "outbox": [tuple(r) for r in await minting.pool.fetch(
            "SELECT message_id, message_type, correlation_id FROM outbox WHERE correlation_id = ANY($1) "
            "ORDER BY id", [str(i) for i in ids])],
    }


@pytest.fixture(autouse=True)
async def nobody_left_waiting(minting: Minting) -> AsyncIterator[None]:
    """A test that fails half-way leaves no order waiting (later orders would queue behind it)."""
    yield
    await serve(minting, datetime(9999, 1, 1, tzinfo=UTC))


async def test_200_orders_paid_at_once_get_exactly_their_serials(minting: Minting) -> None:
    orders = [minting.order(random.randint(1, 5)) for _ in range(200)]
    minted_before, stock_before = metric("emeterai_stamps_minted_total"), await minting.stock()
    async with minting.worker(consumer_concurrency=8, consumer_batch_max=4):
        message_ids = await asyncio.gather(*(minting.publish(o) for o in orders))
        for order in orders:
            await minting.issuance(order.order_id)
        await minting.assert_issued_exactly_once(orders)
        total = sum(o.quantity for o in orders)
        assert await minting.stock() == stock_before - total
        assert metric("emeterai_stamps_minted_total") == minted_before + total
        before = await snapshot(minting, orders)

        duplicates = consumed("duplicate")
        await asyncio.gather(*(minting.publish(o, message_id=m) for o, m in zip(orders, message_ids, strict=True)))
        fresh_ids = await asyncio.gather(*(minting.publish(o) for o in orders))
        await eventually(lambda: consumed("duplicate") >= duplicates + len(orders),
                         message="the redeliveries under the same message ids")
        for message_id in fresh_ids:
            await eventually(lambda m=message_id: minting.handled(PAID_QUEUE, m),
                             message="the redeliveries under new message ids")
        assert await snapshot(minting, orders) == before
        assert await minting.stock() == stock_before - total


def capture_of(order: OrderPaid, *, late: bool = False, buyer: bool = True) -> PaymentCaptured:
    """The capture of ``order`` as the payment service announces it (naming the buyer, or as an older one)."""
    named = ({"account_id": order.account_id, "quantity": order.quantity, "partner_id": order.partner_id}
             if buyer else {})
    return PaymentCaptured(order_id=order.order_id, bill_id=uuid4(), payment_id=uuid4(), amount=order.amount,
                           bank="bank-bri", payment_request_id=f"req-{uuid4().hex[:12]}", captured_at=datetime.now(UTC),
                           late=late, reference_no="ref-1", **named)


async def test_a_capture_that_names_the_buyer_is_issued_straight_from_it_once(minting: Minting) -> None:
    """``payment.captured`` with the buyer and quantity: issued (exactly once with the same order's
    ``order.paid`` too), the capture carried with the serials; a late capture or one without the
    buyer (an older payment service: the order sends ``order.paid``) issues nothing."""
    order, late, older = minting.order(2), minting.order(1), minting.order(1)
    capture = capture_of(order)
    async with minting.worker():
        first = await minting.publish(capture)
        await minting.publish(capture)  # redelivered under another message id
        paid = await minting.publish(order)  # and the order's order.paid (an older order service's)
        skipped = [await minting.publish(capture_of(late, late=True)),
                   await minting.publish(capture_of(older, buyer=False))]
        await minting.issuance(order.order_id)
        for queue, message_id in [("minting.on_payment_captured", m) for m in (first, *skipped)] + [(PAID_QUEUE, paid)]:
            await eventually(lambda q=queue, m=message_id: minting.handled(q, m), message="the messages handled")
        await minting.assert_issued_exactly_once([order])
        [issued] = await minting.events(SerialsIssued.TYPE, order.order_id)
        assert isinstance(issued, SerialsIssued) and issued.payment == capture.facts()
        for other in (late, older):
            assert not await minting.pool.fetchval("SELECT count(*) FROM issuances WHERE order_id = $1",
                                                   other.order_id)


async def test_out_of_stock_fails_the_order_for_good_when_no_wait_is_allowed(minting: Minting) -> None:
    failed_before = metric("emeterai_minting_failed_total")
    async with minting.worker(stock_wait_s=0):
        available = await minting.stock()
        order = minting.order(available + 1)
        await minting.publish(order)
        issuance = await minting.issuance(order.order_id)
        assert (issuance["status"], issuance["reason"]) == ("FAILED", "out of stock")
        [failed] = await minting.events(MintingFailed.TYPE, order.order_id)
        assert isinstance(failed, MintingFailed) and failed.reason == "out of stock"
        assert await minting.serials_of(order.order_id) == []
        assert await minting.stock() == available  # nothing claimed, nothing lost
        assert metric("emeterai_minting_failed_total") == failed_before + 1

        async with unit_of_work(minting.pool) as uow:
            await add_stock(uow, 10)
        assert await minting.stock() >= order.quantity
        await redelivered_stays_failed(minting, order)
        assert await minting.stock() == available + 10


async def redelivered_stays_failed(minting: Minting, order: OrderPaid) -> None:
    """The order paid again (a redelivery under a new message id) after its issuance FAILED: nothing changes."""
    again = await minting.publish(order)
    await eventually(lambda: minting.handled(PAID_QUEUE, again), message="the redelivered order")
    assert (await minting.issuance(order.order_id))["status"] == "FAILED"
    assert await minting.serials_of(order.order_id) == []
    assert len(await minting.events(MintingFailed.TYPE, order.order_id)) == 1
    assert await minting.events(SerialsIssued.TYPE, order.order_id) == []


async def waiting(minting: Minting, order: OrderPaid) -> StockAwaited:
    """The order's issuance WAITS (its one announcement) and holds no serial."""
    issuance = await minting.issuance(order.order_id)
    assert issuance["status"] == "WAITING", dict(issuance)
    assert issuance["refund_at"] - issuance["waiting_since"] == timedelta(seconds=minting.settings.stock_wait_s)
    [awaited] = await minting.events(StockAwaited.TYPE, order.order_id)
    assert isinstance(awaited, StockAwaited)
    assert (awaited.order_id, awaited.quantity, awaited.since, awaited.refund_at) == \
        (order.order_id, order.quantity, issuance["waiting_since"], issuance["refund_at"])
    assert await minting.serials_of(order.order_id) == []
    assert await minting.events(MintingFailed.TYPE, order.order_id) == []
    assert await minting.events(SerialsIssued.TYPE, order.order_id) == []
    return awaited


async def serve(minting: Minting, now: datetime) -> Served:
    async with unit_of_work(minting.pool) as uow:
        return await serve_waiting(uow, signer(minting), now)


def signer(minting: Minting) -> StampSigner:
    return load_stamp_keys(Path(minting.settings.signing_key_file), None).signer


async def test_out_of_stock_waits_and_is_issued_oldest_first_when_stock_arrives(minting: Minting) -> None:
    assert minting.settings.stock_wait_s > 0
    retried, parked = consumed("retried"), consumed("parked")
    async with minting.worker():
        available = await minting.stock()
        big, small = minting.order(available + 1), minting.order(2)
        await minting.publish(big)
        await waiting(minting, big)
        # There is stock for the small order, but it was paid later: it queues behind the big one.
        await minting.publish(small)
        await waiting(minting, small)
        assert await minting.stock() == available  # nothing claimed
        assert (consumed("retried"), consumed("parked")) == (retried, parked)  # a state, not a retry

        now = datetime.now(UTC)
        nothing = await serve(minting, now)
        assert (nothing.issued, nothing.failed, nothing.still_waiting) == ([], [], True)
        assert [r["status"] for r in await issuances(minting, big, small)] == ["WAITING", "WAITING"]

        async with unit_of_work(minting.pool) as uow:
            await add_stock(uow, 10)
        served = await serve(minting, now)
        assert [i.order_id for i in served.issued] == [big.order_id, small.order_id]
        assert (served.failed, served.still_waiting) == ([], False)
        await minting.assert_issued_exactly_once([big, small])
        assert [r["status"] for r in await issuances(minting, big, small)] == ["ISSUED", "ISSUED"]
        assert await minting.stock() == available + 10 - big.quantity - small.quantity
        assert (await serve(minting, now)).issued == []  # issued once


async def test_a_waiting_order_is_failed_at_its_refund_deadline_and_stock_added_later_changes_nothing(
    minting: Minting,
) -> None:
    async with minting.worker():
        available = await minting.stock()
        order = minting.order(available + 1)
        await minting.publish(order)
        awaited = await waiting(minting, order)

        before = await serve(minting, awaited.refund_at - timedelta(microseconds=1))
        assert (before.failed, before.still_waiting) == ([], True)
        at = await serve(minting, awaited.refund_at)
        assert [f.order_id for f in at.failed] == [order.order_id]
        issuance = await minting.issuance(order.order_id)
        assert (issuance["status"], issuance["reason"]) == ("FAILED", WAIT_OVER)
        [failed] = await minting.events(MintingFailed.TYPE, order.order_id)
        assert isinstance(failed, MintingFailed) and failed.reason == WAIT_OVER

        async with unit_of_work(minting.pool) as uow:
            await add_stock(uow, available + 10)
        assert (await serve(minting, awaited.refund_at)).issued == []
        await redelivered_stays_failed(minting, order)


async def issuances(minting: Minting, *orders: OrderPaid) -> list[asyncpg.Record]:
    return [await minting.issuance(o.order_id) for o in orders]


async def test_stock_held_by_a_concurrent_transaction_is_waited_for(minting: Minting) -> None:
    order = minting.order(2)
    retried = consumed("retried")
    async with minting.worker(), minting.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute("SELECT sn FROM serials WHERE status = 'STOCK' FOR UPDATE")
            await minting.publish(order)
            await waiting(minting, order)
            assert consumed("retried") == retried
        finally:
            await transaction.rollback()
        served = await serve(minting, datetime.now(UTC))
        assert [i.order_id for i in served.issued] == [order.order_id]
        await minting.assert_issued_exactly_once([order])


async def test_serials_given_back_become_void_only_for_their_order(minting: Minting) -> None:
    async with minting.worker():
        first, second = minting.order(3), minting.order(1)
        for order in (first, second):
            await minting.publish(order)
        await minting.assert_issued_exactly_once([first, second])
        mine, [other] = await minting.serials_of(first.order_id), await minting.serials_of(second.order_id)
        stamped = await minting.publish(minting.stamped(mine[2]))
        await eventually(lambda: minting.handled("minting.on_document_stamped", stamped), message="the use")
        # mine[2] is STAMPED (stamping would keep it, but even named as voided it cannot be voided);
        # ``other`` is another order's: never voided by this order.
        answer = SerialsVoided(order_id=first.order_id, account_id=first.account_id,
                               voided=(mine[0], mine[2], other), kept=(mine[1],), reason="cannot accept",
                               voided_at=datetime.now(UTC))
        voided_before = metric("emeterai_serials_voided_total")
        for message_id in (await minting.publish(answer), await minting.publish(answer)):
            await eventually(lambda m=message_id: minting.handled("minting.on_serials_voided", m),
                             message="the void answer")
        statuses = dict(await minting.pool.fetch("SELECT sn, status FROM serials WHERE sn = ANY($1)",
                                                 [*mine, other]))
        assert statuses == {mine[0]: "VOID", mine[1]: "UNUSED", mine[2]: "STAMPED", other: "UNUSED"}
        assert metric("emeterai_serials_voided_total") == voided_before + 1
        status, body, _ = await minting.get(f"/v1/stamps/{mine[0]}")
        assert (status, body["status"]) == (200, "VOID")
