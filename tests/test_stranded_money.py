"""A captured payment whose only pending step is a parked message is lost, and says which message.

The four services' databases and queues are made fresh (no process runs); captured payments are
written as the payment service stores them, their next message as the services' unit of work
writes it, and then parked the way the platform parks: the relay's outbox row gets ``parked_at``,
a worker's copy goes to the ``parking`` exchange with its reason. Then the chaos invariants
(``collect`` + ``evaluate`` + ``in_flight``) and the rush's (``invariants.lost``/``unresolved``
over ``invariants.snapshot``, as ``bench.rush`` reads them) read the real databases and broker:

* A: captured, ``payment.captured`` parked in payment's outbox -> stranded, lost, named;
* B: captured, ``payment.captured`` still to publish (not parked) -> pending: not stranded;
* C: captured, order PAID, ``order.paid`` parked in ``minting.on_order_paid.parking`` -> stranded,
  lost, named; not "in transition" for quiescence;
* D: captured and refunded -> resolved, although a ``payment.refunded`` copy is parked;
* E: captured, order PAID, nothing parked -> in transition (pending), not stranded;
* the ``emeterai_paid_messages_parked`` gauge (``PaidMessageParked`` alert) names A's parked type,
  and drops to 0 once the row is re-driven.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from emeterai_shared.contracts import Message
from emeterai_shared.contracts.events import OrderPaid, PaymentCaptured, PaymentRefunded
from emeterai_shared.db import create_pool
from emeterai_shared.messaging.topology import PARKING
from emeterai_shared.outbox import refresh_outbox_metrics
from emeterai_shared.uow import unit_of_work
from emeterai_testkit import chaos, invariants
from emeterai_testkit.fixtures import VHOST
from emeterai_testkit.platform import SERVICES, Platform, platform_of, platform_settings, prepare
from prometheus_client import REGISTRY

QUANTITY, AMOUNT = 2, 25_000


@dataclass
class World:
    platform: Platform
    pools: dict[str, asyncpg.Pool]
    exchange: aio_pika.abc.AbstractExchange

    async def captured(self, status: str) -> tuple[uuid.UUID, PaymentCaptured]:
        """A paid bill and its captured payment (payment db) and the order in ``status`` (order db)."""
        order_id, bill_id, payment_id, now = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
        customer_no = str(uuid.uuid4().int)[:12]
        await self.pools["payment"].execute(
            """INSERT INTO bills (bill_id, order_id, bank, customer_no, virtual_account_no, amount, quantity,
                                  status, expires_at, paid_at)
               VALUES ($1, $2, 'bank-a', $3, '88908' || $3, $4, $5, 'PAID', $6, $6)""",
            bill_id, order_id, customer_no, AMOUNT, QUANTITY, now + timedelta(hours=1))
        await self.pools["payment"].execute(
            """INSERT INTO payments (payment_id, bill_id, order_id, client_id, payment_request_id, amount, captured_at)
               VALUES ($1, $2, $3, 'bank-a', $4, $5, $6)""", payment_id, bill_id, order_id, uuid.uuid4().hex,
            AMOUNT, now)
        await self.pools["order"].execute(
            """INSERT INTO orders (id, account_id, quantity, amount, status, payment_id, billed_at)
               VALUES ($1, $2, $3, $4, $5, $6, now())""",
            order_id, uuid.uuid4(), QUANTITY, AMOUNT, status, None if status == "AWAITING_PAYMENT" else payment_id)
        return order_id, PaymentCaptured(order_id=order_id, bill_id=bill_id, payment_id=payment_id, amount=AMOUNT,
                                         bank="bank-a", payment_request_id="x", captured_at=now)

    async def outbox(self, service: str, message: Message, order_id: uuid.UUID, *, parked: bool) -> None:
        """``message`` in ``service``'s outbox as its unit of work writes it; ``parked``: as the relay
        leaves a row that kept failing."""
        async with unit_of_work(self.pools[service]) as uow:
            message_id = uow.publish(message, correlation_id=str(order_id))
        if parked:
            await self.pools[service].execute(
                "UPDATE outbox SET attempts = 10, parked_at = now(), last_error = 'broker refused: test' "
                "WHERE message_id = $1", message_id)

    async def park(self, queue: str, message: Message, order_id: uuid.UUID, reason: str) -> None:
        """A copy of ``message`` parked for ``queue``, as a consumer parks one (``Consumer._park``)."""
        await self.exchange.publish(
            aio_pika.Message(message.to_json(), message_id=str(uuid.uuid4()), type=message.TYPE,
                             correlation_id=str(order_id), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             headers={"parked_reason": reason, "parked_from": queue,
                                      "parked_at": datetime.now(UTC).isoformat()}),
            routing_key=queue, mandatory=True)


@pytest.fixture(scope="module")
async def world(servers: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("stranded")
    services = platform_settings(SERVICES, tmp)
    await prepare(services)
    platform = platform_of(services, tmp)  # never started: the databases and queues are what counts
    pools = {defn.name: await create_pool(settings.database_url, max_size=2) for defn, settings in services}
    connection = await aio_pika.connect(servers)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(PARKING)
        yield World(platform, pools, exchange)
    finally:
        await connection.close()
        for pool in pools.values():
            with contextlib.suppress(Exception):
                await pool.close()


async def test_a_captured_payment_whose_only_pending_step_is_parked_is_lost_and_named(world: World) -> None:
    a, a_captured = await world.captured("AWAITING_PAYMENT")
    await world.outbox("payment", a_captured, a, parked=True)

    b, b_captured = await world.captured("AWAITING_PAYMENT")
    await world.outbox("payment", b_captured, b, parked=False)

    c, _ = await world.captured("PAID")
    paid = OrderPaid(order_id=c, account_id=uuid.uuid4(), quantity=QUANTITY, amount=AMOUNT, paid_at=datetime.now(UTC))
    await world.park("minting.on_order_paid", paid, c, "PermanentError: test")

    d, d_captured = await world.captured("REFUNDED")
    await world.pools["payment"].execute(
        "INSERT INTO refunds (refund_id, order_id, payment_id, amount, reason, refunded_at) "
        "VALUES ($1, $2, $3, $4, 'test', now())", uuid.uuid4(), d, d_captured.payment_id, AMOUNT)
    refunded = PaymentRefunded(order_id=d, refund_id=uuid.uuid4(), payment_id=d_captured.payment_id, amount=AMOUNT,
                               reason="test", refunded_at=datetime.now(UTC))
    await world.park("order.on_payment_refunded", refunded, d, "PermanentError: test")

    e, _ = await world.captured("PAID")

    # chaos: the invariants read the databases and the broker
    data = await chaos.collect(world.platform, VHOST)
    checks = {c.name: c for c in chaos.evaluate(data, set(), {"reached": True, "after_s": 0})}
    stuck = checks["no captured payment stranded behind a parked message (counted lost)"]
    assert not stuck.ok and stuck.kind == "invariant"
    assert sorted(v.split(":")[0] for v in stuck.violations) == sorted(f"order {o}" for o in (a, c))
    [about_a] = [v for v in stuck.violations if str(a) in v]
    assert "payment.captured.v1 parked in payment outbox" in about_a and "broker refused" in about_a
    [about_c] = [v for v in stuck.violations if str(c) in v]
    assert "order.paid.v1 parked in minting.on_order_paid.parking: PermanentError: test" in about_c
    every = checks["every captured payment credited or refunded"]
    assert not every.ok and "1 refunded, 4 lost" in every.detail
    assert {v.split(":")[0] for v in every.violations} == {f"order {o}" for o in (a, b, c, e)}

    # quiescence: C (PAID, only a parked order.paid) is not "in transition"; E is
    busy = await chaos.in_flight(world.platform, VHOST)
    assert busy["orders_in_transition"] == 1
    assert "payment" in busy["outbox"]  # B's row is still to publish

    # the rush: the same payments lost, A and C stranded (named), and the drain waits only for B and E
    snapshot = await invariants.snapshot(world.pools, amqp_url=world.platform.settings["order"].amqp_url,
                                         queues=invariants.consumer_queues())
    lost = invariants.lost(snapshot)
    assert (lost["captured"], lost["refunded"], lost["stranded"]) == (5, 1, 2)
    by_order = {entry["order_id"]: entry for entry in lost["lost_orders"]}
    assert set(by_order) == {str(o) for o in (a, b, c, e)}
    assert by_order[str(a)]["parked"] == ["payment.captured.v1 parked in payment outbox: broker refused: test"]
    assert by_order[str(c)]["parked"] == [
        "order.paid.v1 parked in minting.on_order_paid.parking: PermanentError: test"]
    assert "parked" not in by_order[str(b)] and "parked" not in by_order[str(e)]
    assert invariants.unresolved(snapshot) == 2

    # the PaidMessageParked alert's gauge names the type: payment.captured in payment's outbox
    await refresh_outbox_metrics(world.pools["payment"], "payment")
    labels = {"service": "payment", "message_type": "payment.captured.v1", "where": "outbox"}
    assert REGISTRY.get_sample_value("emeterai_paid_messages_parked", labels) == 1
    await world.pools["payment"].execute("UPDATE outbox SET parked_at = NULL, attempts = 0")  # re-driven
    await refresh_outbox_metrics(world.pools["payment"], "payment")
    assert REGISTRY.get_sample_value("emeterai_paid_messages_parked", labels) == 0

    # and nothing read was consumed: the parked messages are all still parked
    again = await chaos.collect(world.platform, VHOST)
    assert sorted((m["queue"], m["correlation_id"]) for m in again["parked"]) == [
        ("minting.on_order_paid", str(c)), ("order.on_payment_refunded", str(d))]
