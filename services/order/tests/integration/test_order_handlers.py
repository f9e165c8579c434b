"""The order worker in-process against the real PostgreSQL and RabbitMQ.

Orders are placed through ``commands.place_order``; payment events are published to the
``events`` exchange exactly as the payment relay would (persistent, ``message_id``, ``type`` =
routing key, the model's JSON body), and the worker (``running(..., relay=False)``, so outgoing
rows stay in the outbox to be counted) applies them:

* BillIssued → payment instructions on GET; BillFailed → FAILED with its reason;
* PaymentCaptured → PAID and one ``order.paid.v1``, however often it is delivered (same message
  id: inbox; new message id, same payment: the payment id);
* BillExpired then a late PaymentCaptured → REFUND_PENDING with ``order.refund_requested.v1``,
  PaymentRefunded → REFUNDED; ``late=True`` on an unpaid order does the same;
* events that no longer apply (BillExpired after PAID) change nothing;
* ``order_history`` records every transition with its reason.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from emeterai_shared.contracts import Message
from emeterai_shared.contracts.events import (
    BillExpired,
    BillFailed,
    BillIssued,
    PaymentCaptured,
    PaymentRefunded,
)
from emeterai_shared.db import create_pool
from emeterai_shared.messaging.parking import ParkedMessage, list_parked
from emeterai_shared.messaging.topology import EVENTS
from emeterai_shared.runtime import Context, build_api
from emeterai_shared.testing.fixtures import eventually, reset_service, running, settings_for
from emeterai_shared.uow import unit_of_work
from order_service.bootstrap import SERVICE
from order_service.config import OrderSettings
from order_service.service_layer import commands
from prometheus_client import REGISTRY

Client = TestClient[web.Request, web.Application]
QUANTITY = 2
AMOUNT = QUANTITY * 12_500
PLACED = (None, "AWAITING_PAYMENT", "order placed")
PAID = ("AWAITING_PAYMENT", "PAID", "payment captured")
EXPIRED = ("AWAITING_PAYMENT", "EXPIRED", "bill expired unpaid")
LATE = ("EXPIRED", "REFUND_PENDING", "paid after the order expired")
REFUNDED = ("REFUND_PENDING", "REFUNDED", "refund recorded")


@dataclass
class World:
    settings: OrderSettings
    ctx: Context
    client: Client
    exchange: aio_pika.abc.AbstractExchange

    async def place(self, quantity: int = QUANTITY) -> tuple[uuid.UUID, str]:
        """An order placed the way the API places it; returns its id and its owner's token."""
        async with unit_of_work(self.ctx.pool) as uow:
            account_id = await commands.create_account(uow, "Rina Wijaya", "+6281311112222")
            order = await commands.place_order(uow, account_id=account_id, quantity=quantity, bank=None,
                                               partner_id=None, service_fee=self.settings.service_fee)
        return order.id, self.ctx.extras["issuer"].issue(account_id)

    async def publish(self, event: Message, message_id: str | None = None) -> str:
        """Publish ``event`` as a relay does; returns its message id."""
        mid = message_id or str(uuid.uuid4())
        await self.exchange.publish(
            aio_pika.Message(event.to_json(), message_id=mid, type=event.TYPE,
                             correlation_id=str(getattr(event, "order_id", "")),
                             content_type="application/json", app_id="payment",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT, timestamp=datetime.now(UTC)),
            routing_key=event.TYPE, mandatory=True,
        )
        return mid

    async def val(self, query: str, *args: Any) -> Any:
        async with self.ctx.pool.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def applied(self, queue: str, message_id: str) -> None:
        """Wait until the worker committed ``message_id`` from ``queue`` (inbox row + effects)."""
        async def done() -> bool:
            n = await self.val("SELECT count(*) FROM inbox WHERE consumer = $1 AND message_id = $2",
                               queue, message_id)
            return bool(n == 1)

        await eventually(done, message=f"{queue} to apply {message_id}")

    async def send(self, queue: str, event: Message, message_id: str | None = None) -> str:
        mid = await self.publish(event, message_id)
        await self.applied(queue, mid)
        return mid

    async def status(self, order_id: uuid.UUID) -> str:
        return str(await self.val("SELECT status FROM orders WHERE id = $1", order_id))

    async def history(self, order_id: uuid.UUID) -> list[tuple[str | None, str, str | None]]:
        async with self.ctx.pool.acquire() as conn:
            rows = await conn.fetch("SELECT old_status, new_status, reason FROM order_history"
                                    " WHERE order_id = $1 ORDER BY id", order_id)
        return [(r["old_status"], r["new_status"], r["reason"]) for r in rows]

    async def outbox(self, order_id: uuid.UUID, message_type: str) -> list[dict[str, Any]]:
        async with self.ctx.pool.acquire() as conn:
            rows = await conn.fetch("SELECT routing_key, correlation_id, convert_from(body, 'UTF8')::jsonb AS body"
                                    "  FROM outbox WHERE message_type = $1 AND correlation_id = $2 ORDER BY id",
                                    message_type, str(order_id))
        for r in rows:
            assert (r["routing_key"], r["correlation_id"]) == (message_type, str(order_id))
        return [dict(r["body"]) for r in rows]

    async def view(self, order_id: uuid.UUID, token: str) -> dict[str, Any]:
        resp = await self.client.get(f"/v1/orders/{order_id}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


@pytest.fixture(scope="module")
async def world(servers: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("order-handlers")
    settings = settings_for(OrderSettings, secrets_dir=str(tmp))
    assert isinstance(settings, OrderSettings)
    await reset_service(SERVICE, settings)
    pool = await create_pool(settings.database_url, max_size=4)
    ctx = Context(settings=settings, pool=pool)
    assert SERVICE.on_start is not None
    await SERVICE.on_start(ctx)
    client: Client = TestClient(TestServer(build_api(SERVICE, ctx)))
    await client.start_server()
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EVENTS)
        async with running(SERVICE, settings, relay=False):
            yield World(settings, ctx, client, exchange)
    finally:
        await connection.close()
        await client.close()
        await pool.close()


def captured(order_id: uuid.UUID, payment_id: uuid.UUID | None = None, *, late: bool = False,
             amount: int = AMOUNT) -> PaymentCaptured:
    return PaymentCaptured(order_id=order_id, bill_id=uuid.uuid4(), payment_id=payment_id or uuid.uuid4(),
                           amount=amount, bank="bank-bri", payment_request_id=f"req-{uuid.uuid4().hex[:12]}",
                           captured_at=datetime.now(UTC), late=late)


def expired(order_id: uuid.UUID) -> BillExpired:
    return BillExpired(order_id=order_id, bill_id=uuid.uuid4(), expired_at=datetime.now(UTC))


def refunded(order_id: uuid.UUID, payment_id: uuid.UUID | None, amount: int = AMOUNT) -> PaymentRefunded:
    return PaymentRefunded(order_id=order_id, refund_id=uuid.uuid4(), payment_id=payment_id, amount=amount,
                           reason="paid after the order expired", refunded_at=datetime.now(UTC))


def duplicates(queue: str) -> float:
    return REGISTRY.get_sample_value("emeterai_messages_consumed_total",
                                     {"queue": queue, "outcome": "duplicate"}) or 0.0


async def test_bill_issued_shows_payment_instructions(world: World) -> None:
    order_id, token = await world.place()
    assert (await world.view(order_id, token))["payment"] is None
    expires_at = datetime.now(UTC).replace(microsecond=123000) + timedelta(hours=24)
    await world.send("order.on_bill_issued", BillIssued(
        order_id=order_id, bill_id=uuid.uuid4(), bank="bank-bri", virtual_account_no="88081234000001",
        amount=AMOUNT, expires_at=expires_at))
    view = await world.view(order_id, token)
    payment = view.pop("payment")
    assert datetime.fromisoformat(payment.pop("expires_at")) == expires_at
    assert payment == {"virtual_account_no": "88081234000001", "amount": AMOUNT}
    assert view == {"order_id": str(order_id), "status": "AWAITING_PAYMENT", "quantity": QUANTITY,
                    "amount": AMOUNT, "serials": [], "failure_reason": None}
    assert await world.history(order_id) == [PLACED]


async def test_payment_captured_pays_once_however_often_it_arrives(world: World) -> None:
    order_id, token = await world.place()
    payment_id = uuid.uuid4()
    event = captured(order_id, payment_id)
    first = await world.send("order.on_payment_captured", event)
    assert await world.status(order_id) == "PAID"
    assert await world.val("SELECT payment_id FROM orders WHERE id = $1", order_id) == payment_id
    [paid] = await world.outbox(order_id, "order.paid.v1")
    account_id = await world.val("SELECT account_id FROM orders WHERE id = $1", order_id)
    assert datetime.fromisoformat(paid.pop("paid_at")).tzinfo is not None
    assert paid == {"order_id": str(order_id), "account_id": str(account_id), "quantity": QUANTITY,
                    "amount": AMOUNT, "partner_id": None}

    # The same payment under a new message id (the payment service announced it twice).
    await world.send("order.on_payment_captured", captured(order_id, payment_id))
    # The very same message again (a redelivery): the inbox absorbs it.
    seen = duplicates("order.on_payment_captured")
    await world.publish(event, first)
    await eventually(lambda: duplicates("order.on_payment_captured") == seen + 1, message="the duplicate")

    assert len(await world.outbox(order_id, "order.paid.v1")) == 1
    assert await world.outbox(order_id, "order.refund_requested.v1") == []
    assert await world.history(order_id) == [PLACED, PAID]
    assert (await world.view(order_id, token))["status"] == "PAID"


async def test_late_payment_after_expiry_is_refunded(world: World) -> None:
    order_id, token = await world.place()
    await world.send("order.on_bill_expired", expired(order_id))
    assert await world.status(order_id) == "EXPIRED"
    assert await world.history(order_id) == [PLACED, EXPIRED]

    payment_id = uuid.uuid4()
    await world.send("order.on_payment_captured", captured(order_id, payment_id))
    assert await world.status(order_id) == "REFUND_PENDING"
    [refund] = await world.outbox(order_id, "order.refund_requested.v1")
    assert datetime.fromisoformat(refund.pop("requested_at")).tzinfo is not None
    assert refund == {"order_id": str(order_id), "amount": AMOUNT, "reason": "paid after the order expired"}
    assert await world.outbox(order_id, "order.paid.v1") == []

    await world.send("order.on_payment_refunded", refunded(order_id, payment_id))
    view = await world.view(order_id, token)
    assert (view["status"], view["failure_reason"]) == ("REFUNDED", "paid after the order expired")
    assert await world.history(order_id) == [PLACED, EXPIRED, LATE, REFUNDED]
    assert len(await world.outbox(order_id, "order.refund_requested.v1")) == 1


async def test_late_flag_on_an_unpaid_order_is_refunded(world: World) -> None:
    order_id, _ = await world.place()
    payment_id = uuid.uuid4()
    await world.send("order.on_payment_captured", captured(order_id, payment_id, late=True, amount=AMOUNT))
    assert await world.status(order_id) == "REFUND_PENDING"
    assert await world.val("SELECT payment_id FROM orders WHERE id = $1", order_id) == payment_id
    [refund] = await world.outbox(order_id, "order.refund_requested.v1")
    assert (refund["amount"], refund["reason"]) == (AMOUNT, "paid after the order expired")
    assert await world.outbox(order_id, "order.paid.v1") == []
    assert await world.history(order_id) == [PLACED, EXPIRED, LATE]

    # The same payment again changes nothing and asks for no second refund.
    await world.send("order.on_payment_captured", captured(order_id, payment_id, late=True))
    assert len(await world.outbox(order_id, "order.refund_requested.v1")) == 1
    assert await world.history(order_id) == [PLACED, EXPIRED, LATE]


async def test_bill_failed_fails_the_order_with_its_reason(world: World) -> None:
    order_id, token = await world.place()
    await world.send("order.on_bill_failed", BillFailed(order_id=order_id, reason="unknown bank 'bank-xyz'"))
    view = await world.view(order_id, token)
    assert (view["status"], view["failure_reason"], view["payment"]) == ("FAILED", "unknown bank 'bank-xyz'", None)
    assert await world.history(order_id) == [PLACED, ("AWAITING_PAYMENT", "FAILED", "unknown bank 'bank-xyz'")]

    # Money captured for a failed order is never kept: it is refunded, the order stays FAILED.
    await world.send("order.on_payment_captured", captured(order_id))
    assert await world.status(order_id) == "FAILED"
    assert await world.val("SELECT payment_id FROM orders WHERE id = $1", order_id) is None
    [refund] = await world.outbox(order_id, "order.refund_requested.v1")
    assert (refund["amount"], refund["reason"]) == (AMOUNT, "payment captured while the order was FAILED")
    assert await world.outbox(order_id, "order.paid.v1") == []
    assert len(await world.history(order_id)) == 2


async def test_bill_expired_after_paid_changes_nothing(world: World) -> None:
    order_id, token = await world.place()
    await world.send("order.on_payment_captured", captured(order_id))
    assert await world.status(order_id) == "PAID"
    before = await world.view(order_id, token)

    await world.send("order.on_bill_expired", expired(order_id))
    await world.send("order.on_bill_failed", BillFailed(order_id=order_id, reason="too late to fail"))
    assert await world.view(order_id, token) == before
    assert before["status"] == "PAID"
    assert await world.history(order_id) == [PLACED, PAID]
    assert len(await world.outbox(order_id, "order.paid.v1")) == 1
    assert await world.outbox(order_id, "order.refund_requested.v1") == []


async def test_events_for_unknown_orders_park_with_a_reason_and_change_nothing(world: World) -> None:
    """An event about an order we never had may involve money: it must not vanish silently."""
    ghost = uuid.uuid4()
    orders = await world.val("SELECT count(*) FROM orders")
    outbox = await world.val("SELECT count(*) FROM outbox")
    sent = {
        "order.on_bill_expired": await world.publish(expired(ghost)),
        "order.on_bill_failed": await world.publish(BillFailed(order_id=ghost, reason="no such order")),
    }
    connection = await aio_pika.connect_robust(world.settings.amqp_url)
    try:
        for queue, mid in sent.items():
            async def parked(queue: str = queue, mid: str = mid) -> list[ParkedMessage]:
                return [m for m in await list_parked(connection, queue) if m.message_id == mid]

            found = await eventually(parked, message=f"{mid} parked from {queue}")
            assert f"unknown order {ghost}" in found[0].reason
    finally:
        await connection.close()
    assert await world.val("SELECT count(*) FROM orders") == orders
    assert await world.val("SELECT count(*) FROM outbox") == outbox
