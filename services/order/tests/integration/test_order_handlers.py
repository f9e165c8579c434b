"""The order worker in-process against the real PostgreSQL and RabbitMQ.

Orders are placed through ``orders.place_order``; payment events are published to the
``events`` exchange exactly as the payment relay would (persistent, ``message_id``, ``type`` =
routing key, the model's JSON body), and the worker (``running(..., relay=False)``, so outgoing
rows stay in the outbox to be counted) applies them:

* BillIssued → payment instructions on GET; BillFailed → FAILED with its reason;
* PaymentCaptured → PAID and one ``order.paid.v1``, however often it is delivered (same message
  id: inbox; new message id, same payment: the payment id); none when the capture names the buyer
  and the quantity (minting issues straight from it); minting's answer that overtakes such a
  capture carries it, and the order applies it first; an answer without it waits (``NotYet``);
* the capture that makes an order PAID numbers its receipt, once; a PaymentCaptured of an older
  producer (without ``method`` and ``reference_no``) still parses; a late capture numbers none;
* BillExpired then a late PaymentCaptured → REFUND_PENDING with ``order.refund_requested.v1``,
  PaymentRefunded → REFUNDED; ``late=True`` on an unpaid order does the same;
* events that no longer apply (BillExpired after PAID) change nothing;
* ``order_history`` records every transition with its reason;
* SerialsIssued → FULFILLED with the serials on GET and their tokens indexed, once however often
  it arrives; serials the order cannot accept (for an expired order, other serials for a
  FULFILLED one, serials already issued to another order, not as many as ordered) park nothing:
  they are given back with one ``order.serials_void_requested.v1``; a PAID order then stays PAID
  (``fulfilment.giving_back``) until stamping's SerialsVoided, which refunds what was voided
  (REFUND_PENDING, ``order.refund_requested.v1`` without the serials kept because already used)
  or, when every serial was used, fulfils the order with them;
* StockAwaited → the PAID order shows ``fulfilment.awaiting_stock`` with ``since`` and
  ``refund_at`` (status PAID), then FULFILLED or refunded as usual; after either, it changes nothing;
* MintingFailed → REFUND_PENDING with its reason and one ``order.refund_requested.v1``, then
  PaymentRefunded → REFUNDED; for an expired order it changes nothing;
* DocumentStamped for a buyer's serial tells no partner; for a serial never issued it is retried,
  then parked with its reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from emeterai_shared.contracts import Message
from emeterai_shared.contracts.events import (
    AcquirerStateChanged,
    BillExpired,
    BillFailed,
    BillIssued,
    DocumentStamped,
    IssuedSerial,
    MintingFailed,
    PartialRefundPaidOut,
    PaymentCaptured,
    PaymentRefunded,
    PaymentRefundSettled,
    SerialsIssued,
    SerialsVoided,
    StockAwaited,
)
from emeterai_shared.db import create_pool
from emeterai_shared.messaging.parking import ParkedMessage, list_parked
from emeterai_shared.messaging.topology import EVENTS
from emeterai_shared.uow import unit_of_work
from emeterai_testkit.fixtures import eventually, reset_service, running, settings_for
from order_service.bootstrap import SERVICE
from order_service.config import OrderSettings
from order_service.dependencies import OrderDeps
from order_service.service_layer import orders
from prometheus_client import REGISTRY

Client = TestClient[web.Request, web.Application]
ServeApi = Callable[[OrderSettings, asyncpg.Pool], AbstractAsyncContextManager[tuple[Client, OrderDeps]]]
QUANTITY = 2
AMOUNT = QUANTITY * 12_500
PLACED = (None, "AWAITING_PAYMENT", "order placed")
PAID = ("AWAITING_PAYMENT", "PAID", "payment captured")
EXPIRED = ("AWAITING_PAYMENT", "EXPIRED", "bill expired unpaid")
LATE = ("EXPIRED", "REFUND_PENDING", "paid after the order expired")
REFUNDED = ("REFUND_PENDING", "REFUNDED", "refund recorded")
FULFILLED = ("PAID", "FULFILLED", "serials issued")
OUT_OF_STOCK = "out of stock: 0 of 2 serials left"


@dataclass
class World:
    settings: OrderSettings
    deps: OrderDeps
    client: Client
    exchange: aio_pika.abc.AbstractExchange

    async def place(self, quantity: int = QUANTITY, payment_method: str = "va") -> tuple[uuid.UUID, str]:
        """An order placed the way the API places it; returns its id and its owner's token."""
        async with unit_of_work(self.deps.pool) as uow:
            account_id = await orders.create_account(uow, "Rina Wijaya", "+6281311112222")
            order = await orders.place_order(uow, account_id=account_id, quantity=quantity, bank=None,
                                             partner_id=None, service_fee=self.settings.service_fee,
                                             payment_method=payment_method)
        return order.id, self.deps.issuer.issue(account_id)

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
        async with self.deps.pool.acquire() as conn:
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
        async with self.deps.pool.acquire() as conn:
            rows = await conn.fetch("SELECT old_status, new_status, reason FROM order_history"
                                    " WHERE order_id = $1 ORDER BY id", order_id)
        return [(r["old_status"], r["new_status"], r["reason"]) for r in rows]

    async def outbox(self, order_id: uuid.UUID, message_type: str) -> list[dict[str, Any]]:
        async with self.deps.pool.acquire() as conn:
            rows = await conn.fetch("SELECT routing_key, correlation_id, convert_from(body, 'UTF8')::jsonb AS body"
                                    "  FROM outbox WHERE message_type = $1 AND correlation_id = $2 ORDER BY id",
                                    message_type, str(order_id))
        for r in rows:
            assert (r["routing_key"], r["correlation_id"]) == (message_type, str(order_id))
        return [dict(r["body"]) for r in rows]

    async def parked(self, queue: str, message_id: str) -> str:
        """Wait until ``message_id`` is in ``queue``'s parking queue; returns the reason."""
        connection = await aio_pika.connect_robust(self.settings.amqp_url)
        try:
            async def found() -> list[ParkedMessage]:
                return [m for m in await list_parked(connection, queue) if m.message_id == message_id]

            parked: list[ParkedMessage] = await eventually(found, message=f"{message_id} parked from {queue}")
            return str(parked[0].reason)
        finally:
            await connection.close()

    async def paid(self, quantity: int = QUANTITY) -> tuple[uuid.UUID, uuid.UUID, str]:
        """A PAID order: its id, its account id and its owner's token."""
        order_id, token = await self.place(quantity)
        await self.send("order.on_payment_captured", captured(order_id, amount=quantity * 12_500))
        assert await self.status(order_id) == "PAID"
        return order_id, await self.val("SELECT account_id FROM orders WHERE id = $1", order_id), token

    async def stamps(self, order_id: uuid.UUID) -> dict[str, str]:
        async with self.deps.pool.acquire() as conn:
            rows = await conn.fetch("SELECT sn, token FROM order_serials WHERE order_id = $1", order_id)
        return {r["sn"]: r["token"] for r in rows}

    async def view(self, order_id: uuid.UUID, token: str) -> dict[str, Any]:
        resp = await self.client.get(f"/v1/orders/{order_id}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


@pytest.fixture(scope="module")
async def world(servers: str, tmp_path_factory: pytest.TempPathFactory, serve_order_api: ServeApi,
                ) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("order-handlers")
    settings = settings_for(OrderSettings, secrets_dir=str(tmp))
    assert isinstance(settings, OrderSettings)
    await reset_service(SERVICE, settings)
    pool = await create_pool(settings.database_url, max_size=4)
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EVENTS)
        async with serve_order_api(settings, pool) as (client, deps), running(SERVICE, settings, relay=False):
            yield World(settings, deps, client, exchange)
    finally:
        await connection.close()
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


def issued(order_id: uuid.UUID, account_id: uuid.UUID, count: int = QUANTITY,
           serials: tuple[IssuedSerial, ...] = ()) -> SerialsIssued:
    fresh = tuple(IssuedSerial(sn=f"SN-{uuid.uuid4().hex[:16].upper()}", token=f"eyJ.{uuid.uuid4().hex}.sig")
                  for _ in range(count))
    return SerialsIssued(order_id=order_id, account_id=account_id, serials=serials or fresh,
                         issued_at=datetime.now(UTC))


def minting_failed(order_id: uuid.UUID) -> MintingFailed:
    return MintingFailed(order_id=order_id, reason=OUT_OF_STOCK, failed_at=datetime.now(UTC))


def stamped(sn: str, account_id: uuid.UUID) -> DocumentStamped:
    return DocumentStamped(stamping_id=uuid.uuid4(), account_id=account_id, sn=sn, document_sha256="0f" * 32,
                           stamped_at=datetime.now(UTC))


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
    assert payment == {"method": "va", "virtual_account_no": "88081234000001", "amount": AMOUNT}
    assert view == {"order_id": str(order_id), "status": "AWAITING_PAYMENT", "quantity": QUANTITY,
                    "amount": AMOUNT, "serials": [], "failure_reason": None, "fulfilment": None, "refunds": []}
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
        "order.on_serials_issued": await world.publish(issued(ghost, uuid.uuid4())),
        "order.on_minting_failed": await world.publish(minting_failed(ghost)),
    }
    for queue, mid in sent.items():
        assert f"unknown order {ghost}" in await world.parked(queue, mid)
    assert await world.val("SELECT count(*) FROM orders") == orders
    assert await world.val("SELECT count(*) FROM outbox") == outbox


async def test_serials_issued_fulfils_the_paid_order_once(world: World) -> None:
    order_id, account_id, token = await world.paid()
    event = issued(order_id, account_id)
    first = await world.send("order.on_serials_issued", event)
    view = await world.view(order_id, token)
    assert (view["status"], view["serials"]) == ("FULFILLED", [s.sn for s in event.serials])
    assert await world.stamps(order_id) == {s.sn: s.token for s in event.serials}
    assert await world.history(order_id) == [PLACED, PAID, FULFILLED]

    seen = duplicates("order.on_serials_issued")
    await world.publish(event, first)  # a redelivery: the inbox absorbs it
    await eventually(lambda: duplicates("order.on_serials_issued") == seen + 1, message="the duplicate")
    await world.send("order.on_serials_issued", event)  # the same serials under a new message id
    other = issued(order_id, account_id)
    await world.send("order.on_serials_issued", other)  # other serials: refused, given back
    assert await world.view(order_id, token) == view
    [void] = await world.outbox(order_id, "order.serials_void_requested.v1")
    assert void["serials"] == [s.sn for s in other.serials]
    assert await world.stamps(order_id) == {s.sn: s.token for s in event.serials}
    assert await world.history(order_id) == [PLACED, PAID, FULFILLED]
    assert await world.val("SELECT count(*) FROM partner_events") == 0  # a buyer's order tells no partner

    # A minting failure reported after the order was fulfilled changes nothing.
    await world.send("order.on_minting_failed", minting_failed(order_id))
    assert await world.view(order_id, token) == view
    assert await world.outbox(order_id, "order.refund_requested.v1") == []


async def test_serials_for_an_order_that_is_not_paid_are_given_back(world: World) -> None:
    order_id, token = await world.place()
    await world.send("order.on_bill_expired", expired(order_id))
    account_id = await world.val("SELECT account_id FROM orders WHERE id = $1", order_id)
    event = issued(order_id, account_id)
    await world.send("order.on_serials_issued", event)
    view = await world.view(order_id, token)
    assert (view["status"], view["serials"], view["fulfilment"]) == ("EXPIRED", [], None)
    assert await world.stamps(order_id) == {}
    assert await world.history(order_id) == [PLACED, EXPIRED]
    [void] = await world.outbox(order_id, "order.serials_void_requested.v1")
    assert (void["account_id"], void["serials"]) == (str(account_id), [s.sn for s in event.serials])


async def test_serials_that_overtake_their_capture_apply_it_first_and_the_capture_then_changes_nothing(
        world: World) -> None:
    """Minting answers a capture that names the buyer straight from it: its serials may reach the
    order before the capture does (another queue). They carry the capture, which the order applies
    first (PAID with its receipt, then FULFILLED); the capture, when it comes, finds it applied. No
    ``order.paid`` goes out for such a capture (minting has it already)."""
    order_id, token = await world.place()
    account_id = await world.val("SELECT account_id FROM orders WHERE id = $1", order_id)
    capture = captured(order_id).model_copy(update={"account_id": account_id, "quantity": QUANTITY})
    event = issued(order_id, account_id).model_copy(update={"payment": capture.facts()})
    await world.send("order.on_serials_issued", event)
    view = await world.view(order_id, token)
    assert (view["status"], sorted(view["serials"])) == ("FULFILLED", sorted(s.sn for s in event.serials))
    assert await world.history(order_id) == [PLACED, PAID, FULFILLED]
    receipt = await world.val("SELECT payment_request_id FROM receipts WHERE order_id = $1", order_id)
    assert receipt == capture.payment_request_id
    await world.send("order.on_payment_captured", capture)
    assert await world.view(order_id, token) == view
    assert await world.history(order_id) == [PLACED, PAID, FULFILLED]
    assert await world.outbox(order_id, "order.paid.v1") == []
    assert await world.outbox(order_id, "order.refund_requested.v1") == []


async def test_a_capture_that_names_the_buyer_sends_no_order_paid(world: World) -> None:
    order_id, token = await world.place()
    account_id = await world.val("SELECT account_id FROM orders WHERE id = $1", order_id)
    await world.send("order.on_payment_captured",
                     captured(order_id).model_copy(update={"account_id": account_id, "quantity": QUANTITY}))
    assert (await world.view(order_id, token))["status"] == "PAID"
    assert await world.outbox(order_id, "order.paid.v1") == []  # minting took it from the capture


async def test_an_answer_without_its_capture_waits_for_the_capture(world: World) -> None:
    """Minting's answer without the capture (served later from its stock queue) for an order whose
    capture is not applied yet comes back (``NotYet``, attempt unchanged) until the capture is."""
    order_id, token = await world.place()
    account_id = await world.val("SELECT account_id FROM orders WHERE id = $1", order_id)
    event = issued(order_id, account_id)
    mid = await world.publish(event)
    await world.send("order.on_payment_captured", captured(order_id))
    await world.applied("order.on_serials_issued", mid)
    view = await world.view(order_id, token)
    assert (view["status"], sorted(view["serials"])) == ("FULFILLED", sorted(s.sn for s in event.serials))
    assert await world.outbox(order_id, "order.serials_void_requested.v1") == []


async def test_minting_failure_refunds_the_paid_order(world: World) -> None:
    order_id, account_id, token = await world.paid()
    await world.send("order.on_minting_failed", minting_failed(order_id))
    view = await world.view(order_id, token)
    assert (view["status"], view["failure_reason"], view["serials"]) == ("REFUND_PENDING", OUT_OF_STOCK, [])
    [refund] = await world.outbox(order_id, "order.refund_requested.v1")
    assert datetime.fromisoformat(refund.pop("requested_at")).tzinfo is not None
    assert refund == {"order_id": str(order_id), "amount": AMOUNT, "reason": OUT_OF_STOCK}

    # Reported again, or followed by serials after all: no second refund, no fulfilment.
    await world.send("order.on_minting_failed", minting_failed(order_id))
    late = issued(order_id, account_id)
    await world.send("order.on_serials_issued", late)
    assert await world.view(order_id, token) == view
    assert len(await world.outbox(order_id, "order.refund_requested.v1")) == 1
    assert await world.stamps(order_id) == {}
    [void] = await world.outbox(order_id, "order.serials_void_requested.v1")  # credited by stamping: voided
    assert void["serials"] == [s.sn for s in late.serials]

    payment_id = await world.val("SELECT payment_id FROM orders WHERE id = $1", order_id)
    await world.send("order.on_payment_refunded", refunded(order_id, payment_id))
    view = await world.view(order_id, token)
    assert (view["status"], view["failure_reason"]) == ("REFUNDED", OUT_OF_STOCK)
    assert await world.history(order_id) == [PLACED, PAID, ("PAID", "REFUND_PENDING", OUT_OF_STOCK), REFUNDED]


async def test_minting_failure_of_an_order_that_is_not_paid_changes_nothing(world: World) -> None:
    order_id, _ = await world.place()
    await world.send("order.on_bill_expired", expired(order_id))
    await world.send("order.on_minting_failed", minting_failed(order_id))
    assert await world.status(order_id) == "EXPIRED"
    assert await world.outbox(order_id, "order.refund_requested.v1") == []


async def test_a_minting_failure_that_overtakes_its_capture_applies_it_and_refunds(world: World) -> None:
    order_id, token = await world.place()
    account_id = await world.val("SELECT account_id FROM orders WHERE id = $1", order_id)
    capture = captured(order_id).model_copy(update={"account_id": account_id, "quantity": QUANTITY})
    failed = minting_failed(order_id).model_copy(update={"payment": capture.facts()})
    await world.send("order.on_minting_failed", failed)
    view = await world.view(order_id, token)
    assert (view["status"], view["failure_reason"]) == ("REFUND_PENDING", OUT_OF_STOCK)
    assert len(await world.outbox(order_id, "order.refund_requested.v1")) == 1
    await world.send("order.on_payment_captured", capture)
    assert len(await world.outbox(order_id, "order.refund_requested.v1")) == 1  # the capture finds it applied
    assert await world.status(order_id) == "REFUND_PENDING"


def voided(order_id: uuid.UUID, account_id: uuid.UUID, voided: list[str], kept: list[str]) -> SerialsVoided:
    return SerialsVoided(order_id=order_id, account_id=account_id, voided=tuple(voided), kept=tuple(kept),
                         reason="cannot accept", voided_at=datetime.now(UTC))


async def test_serials_of_another_order_or_the_wrong_count_are_given_back_and_nothing_parks(world: World) -> None:
    first, account_id, _ = await world.paid()
    event = issued(first, account_id)
    await world.send("order.on_serials_issued", event)

    reused, reused_account, reused_token = await world.paid()
    fresh = IssuedSerial(sn=f"SN-{uuid.uuid4().hex[:16].upper()}", token="eyJ.fresh.sig")
    sent = [await world.send("order.on_serials_issued",
                             issued(reused, reused_account, serials=(event.serials[0], fresh)))]
    short, short_account, short_token = await world.paid()
    [one] = issued(short, short_account, count=1).serials
    sent.append(await world.send("order.on_serials_issued", issued(short, short_account, serials=(one,))))

    taken = f"already issued to another order: {event.serials[0].sn}"
    for order_id, token, serials, why in (
        (reused, reused_token, [event.serials[0].sn, fresh.sn], taken),
        (short, short_token, [one.sn], f"needs {QUANTITY} serials, got 1"),
    ):
        view = await world.view(order_id, token)
        assert (view["status"], view["serials"]) == ("PAID", [])
        assert view["fulfilment"] == {"awaiting_stock": False, "since": None, "refund_at": None, "giving_back": serials}
        assert why in view["failure_reason"]
        [void] = await world.outbox(order_id, "order.serials_void_requested.v1")
        assert (void["order_id"], void["serials"]) == (str(order_id), serials)
        assert why in void["reason"]
        assert await world.stamps(order_id) == {}
        assert await world.outbox(order_id, "order.refund_requested.v1") == []  # not before stamping answers
        [_, _, note] = await world.history(order_id)
        assert note[:2] == ("PAID", "PAID") and why in str(note[2])
    assert await world.stamps(first) == {s.sn: s.token for s in event.serials}
    assert await world.status(first) == "FULFILLED"

    # Stamping's answers: the short order's one serial was voided: the whole amount goes back.
    await world.send("order.on_serials_voided", voided(short, short_account, [one.sn], []))
    view = await world.view(short, short_token)
    assert (view["status"], view["serials"], view["fulfilment"]) == ("REFUND_PENDING", [], None)
    assert "0 kept (used): refund 25000" in view["failure_reason"]
    [refund] = await world.outbox(short, "order.refund_requested.v1")
    assert refund["amount"] == AMOUNT
    # The other order's buyer had already used one of the two: it is kept, and not refunded.
    await world.send("order.on_serials_voided", voided(reused, reused_account, [event.serials[0].sn], [fresh.sn]))
    view = await world.view(reused, reused_token)
    assert (view["status"], view["serials"]) == ("REFUND_PENDING", [fresh.sn])
    [refund] = await world.outbox(reused, "order.refund_requested.v1")
    assert refund["amount"] == AMOUNT - AMOUNT // QUANTITY
    # An answer again (another message id) refunds nothing more.
    await world.send("order.on_serials_voided", voided(short, short_account, [one.sn], []))
    assert len(await world.outbox(short, "order.refund_requested.v1")) == 1
    await world.send("order.on_payment_refunded", refunded(short, None))
    assert await world.status(short) == "REFUNDED"
    connection = await aio_pika.connect_robust(world.settings.amqp_url)
    try:
        parked = await list_parked(connection, "order.on_serials_issued")
        assert [m for m in parked if m.message_id in sent] == []
    finally:
        await connection.close()


async def test_serials_given_back_and_all_used_fulfil_the_order(world: World) -> None:
    order_id, account_id, token = await world.paid()
    serials = issued(order_id, account_id, count=QUANTITY + 1).serials
    await world.send("order.on_serials_issued", issued(order_id, account_id, serials=serials))
    assert (await world.view(order_id, token))["status"] == "PAID"
    # Every serial was used before the void request reached stamping: the buyer keeps them all.
    kept = [s.sn for s in serials]
    await world.send("order.on_serials_voided", voided(order_id, account_id, [], kept))
    view = await world.view(order_id, token)
    assert (view["status"], view["serials"]) == ("FULFILLED", kept)
    assert await world.outbox(order_id, "order.refund_requested.v1") == []


async def test_stock_awaited_shows_on_the_paid_order_until_it_is_fulfilled(world: World) -> None:
    order_id, account_id, token = await world.paid()
    since = datetime.now(UTC).replace(microsecond=250000)
    refund_at = since + timedelta(hours=2)
    awaited = StockAwaited(order_id=order_id, quantity=QUANTITY, since=since, refund_at=refund_at)
    await world.send("order.on_stock_awaited", awaited)
    view = await world.view(order_id, token)
    fulfilment = view["fulfilment"]
    assert view["status"] == "PAID"
    assert (fulfilment["awaiting_stock"], fulfilment["giving_back"]) == (True, [])
    assert (datetime.fromisoformat(fulfilment["since"]), datetime.fromisoformat(fulfilment["refund_at"])) == \
        (since, refund_at)
    assert await world.history(order_id) == [
        PLACED, PAID, ("PAID", "PAID", f"awaiting stock; refunded at {refund_at.isoformat()} unless stock arrives")]
    await world.send("order.on_stock_awaited", awaited)  # again under another id: recorded once
    assert len(await world.history(order_id)) == 3

    event = issued(order_id, account_id)
    await world.send("order.on_serials_issued", event)
    view = await world.view(order_id, token)
    assert (view["status"], view["fulfilment"]["awaiting_stock"]) == ("FULFILLED", False)

    # Overtaken by the failure (another queue): the awaited event changes nothing.
    late, _, late_token = await world.paid()
    await world.send("order.on_minting_failed", minting_failed(late))
    await world.send("order.on_stock_awaited", StockAwaited(order_id=late, quantity=QUANTITY, since=since,
                                                            refund_at=refund_at))
    view = await world.view(late, late_token)
    assert (view["status"], view["fulfilment"]) == ("REFUND_PENDING", None)


async def test_stamped_serials_of_buyers_tell_no_one_and_unknown_serials_park(world: World) -> None:
    order_id, account_id, _ = await world.paid()
    event = issued(order_id, account_id)
    await world.send("order.on_serials_issued", event)
    await world.send("order.on_document_stamped", stamped(event.serials[0].sn, account_id))
    assert await world.val("SELECT count(*) FROM partner_events") == 0

    mid = await world.publish(stamped("SN-NEVER-ISSUED", account_id))
    reason = await world.parked("order.on_document_stamped", mid)
    assert "gave up after" in reason and "serial SN-NEVER-ISSUED is not (yet) issued" in reason


async def receipt_of(world: World, order_id: uuid.UUID, token: str) -> tuple[int, dict[str, Any]]:
    resp = await world.client.get(f"/v1/orders/{order_id}/receipt",
                                  headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def test_the_capture_numbers_the_receipt_once_even_from_an_older_producer(world: World) -> None:
    """A payment.captured.v1 without the newer fields (method, reference_no) still parses: the receipt
    says va, and the reference falls back to the bank's paymentRequestId. The capture again, under
    another message id, takes no second number."""
    order_id, token = await world.place()
    assert (await receipt_of(world, order_id, token))[0] == 409
    payment_id = uuid.uuid4()
    event = captured(order_id, payment_id)
    old_body = event.model_dump(mode="json")
    del old_body["method"], old_body["reference_no"]
    mid = str(uuid.uuid4())
    await world.exchange.publish(
        aio_pika.Message(json.dumps(old_body).encode(), message_id=mid, type=event.TYPE, correlation_id=str(order_id),
                         content_type="application/json", app_id="payment",
                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT, timestamp=datetime.now(UTC)),
        routing_key=event.TYPE, mandatory=True)
    await world.applied("order.on_payment_captured", mid)
    status, receipt = await receipt_of(world, order_id, token)
    assert status == 200, receipt
    assert receipt["payment"] == {"method": "va", "reference": event.payment_request_id, "bank": "bank-bri",
                                  "payment_request_id": event.payment_request_id, "virtual_account_no": None}
    assert datetime.fromisoformat(receipt["paid_at"]) == event.captured_at
    await world.send("order.on_payment_captured", captured(order_id, payment_id))
    assert (await receipt_of(world, order_id, token)) == (200, receipt)
    assert await world.val("SELECT count(*) FROM receipts WHERE order_id = $1", order_id) == 1

    # A newer producer's reference number is the reference shown.
    other, other_token = await world.place()
    await world.send("order.on_payment_captured", captured(other).model_copy(update={"reference_no": "REF-991"}))
    status, second = await receipt_of(world, other, other_token)
    assert (status, second["payment"]["reference"]) == (200, "REF-991")
    assert second["receipt_no"] != receipt["receipt_no"]


async def test_a_payment_after_expiry_is_refunded_and_numbers_no_receipt(world: World) -> None:
    order_id, token = await world.place()
    await world.send("order.on_bill_expired", expired(order_id))
    await world.send("order.on_payment_captured", captured(order_id))
    assert await world.status(order_id) == "REFUND_PENDING"
    status, body = await receipt_of(world, order_id, token)
    assert (status, body["error"]["code"]) == (409, "not_paid")
    assert await world.val("SELECT count(*) FROM receipts WHERE order_id = $1", order_id) == 0


# --- a buyer's refund of unused stamps -------------------------------------------------------------------


async def refund(world: World, order_id: uuid.UUID, token: str, key: str, status: int = 202) -> dict[str, Any]:
    resp = await world.client.post(f"/v1/orders/{order_id}/refund",
                                   headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})
    assert resp.status == status, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_a_refund_asks_stamping_settles_its_answer_once_and_is_paid_out_once(world: World) -> None:
    order_id, account_id, token = await world.paid()
    event = issued(order_id, account_id)
    await world.send("order.on_serials_issued", event)
    sns = [s.sn for s in event.serials]
    await world.send("order.on_document_stamped", DocumentStamped(
        stamping_id=uuid.uuid4(), account_id=account_id, sn=sns[0], document_sha256="ab" * 32,
        stamped_at=datetime.now(UTC)))

    asked = await refund(world, order_id, token, "refund-1")
    assert (asked["status"], asked["requested"], asked["amount"]) == ("REQUESTED", sns[1:], 12_500)
    assert (await refund(world, order_id, token, "refund-1"))["refund_id"] == asked["refund_id"]
    assert (await refund(world, order_id, token, "refund-2", 409))["error"]["code"] == "nothing_to_refund"
    [request] = await world.outbox(order_id, "order.serials_void_requested.v1")
    assert (request["serials"], request["refund_id"]) == (sns[1:], asked["refund_id"])

    refund_id = uuid.UUID(asked["refund_id"])
    answer = SerialsVoided(order_id=order_id, account_id=account_id, voided=tuple(sns[1:]), kept=(),
                           reason="refund", voided_at=datetime.now(UTC), refund_id=refund_id)
    first = await world.send("order.on_serials_voided", answer)
    await world.send("order.on_serials_voided", answer, first)  # redelivered
    await world.send("order.on_serials_voided", answer)  # the same answer again, another id
    [pay] = await world.outbox(order_id, "order.partial_refund_requested.v1")
    assert (pay["refund_id"], pay["amount"], pay["serials"]) == (
        asked["refund_id"], 12_500, sns[1:])
    view = await world.view(order_id, token)
    assert view["status"] == "FULFILLED"
    assert [(r["status"], r["serials"], r["amount"]) for r in view["refunds"]] == [("PAYING", sns[1:], 12_500)]

    paid_out = PartialRefundPaidOut(order_id=order_id, refund_id=refund_id, amount=12_500,
                                    payout_reference="SIM-1", paid_out_at=datetime.now(UTC))
    await world.send("order.on_partial_refund_paid_out", paid_out)
    await world.send("order.on_partial_refund_paid_out", paid_out)
    assert [r["status"] for r in (await world.view(order_id, token))["refunds"]] == ["PAID_OUT"]
    assert await world.history(order_id) == [PLACED, PAID, FULFILLED]  # the order's status is untouched


async def test_a_refund_of_a_paid_order_not_fulfilled_is_nothing_to_refund(world: World) -> None:
    order_id, _, token = await world.paid()
    assert (await refund(world, order_id, token, "early", 409))["error"]["code"] == "nothing_to_refund"
    other = await world.place()
    assert (await refund(world, order_id, other[1], "theirs", 404))["error"]["code"] == "order_not_found"


# --- whole-order refunds of QRIS payments: the acquirer's refundNo ---------------------------------------


def settled(order_id: uuid.UUID, refund_id: uuid.UUID, reference: str, amount: int = AMOUNT) -> PaymentRefundSettled:
    return PaymentRefundSettled(order_id=order_id, refund_id=refund_id, amount=amount, reference=reference,
                                settled_at=datetime.now(UTC))


async def test_a_qris_orders_whole_refund_shows_the_acquirers_refund_no_whichever_comes_first(world: World) -> None:
    # the refund first, its settlement later: PAYING, then PAID_OUT with the refundNo, on the view and receipt
    order_id, token = await world.place(payment_method="qris")
    await world.send("order.on_payment_captured", captured(order_id))
    await world.send("order.on_minting_failed", minting_failed(order_id))
    refund = refunded(order_id, uuid.uuid4())
    await world.send("order.on_payment_refunded", refund)
    await world.send("order.on_payment_refunded", refund)  # the same again, another id
    view = await world.view(order_id, token)
    assert view["status"] == "REFUNDED"
    assert [(r["refund_id"], r["kind"], r["status"], r["amount"], r["serials"], r["reference"])
            for r in view["refunds"]] == [(str(refund.refund_id), "order", "PAYING", AMOUNT, [], None)]
    done = settled(order_id, refund.refund_id, "202612060001")
    await world.send("order.on_payment_refund_settled", done)
    await world.send("order.on_payment_refund_settled", done)
    view = await world.view(order_id, token)
    assert [(r["kind"], r["status"], r["reference"]) for r in view["refunds"]] == [
        ("order", "PAID_OUT", "202612060001")]
    status, body = await receipt_of(world, order_id, token)
    assert status == 200
    assert [(r["kind"], r["status"], r["amount"], r["reference"]) for r in body["refunds"]] == [
        ("order", "PAID_OUT", AMOUNT, "202612060001")]

    # the settlement first (another queue): recorded PAID_OUT at once; the refund after it changes nothing
    order_id, token = await world.place(payment_method="qris")
    await world.send("order.on_bill_expired", expired(order_id))
    await world.send("order.on_payment_captured", captured(order_id, late=True))
    refund = refunded(order_id, uuid.uuid4())
    await world.send("order.on_payment_refund_settled", settled(order_id, refund.refund_id, "202612060002"))
    await world.send("order.on_payment_refunded", refund)
    view = await world.view(order_id, token)
    assert view["status"] == "REFUNDED"
    assert [(r["refund_id"], r["status"], r["reference"]) for r in view["refunds"]] == [
        (str(refund.refund_id), "PAID_OUT", "202612060002")]

    # a virtual account's whole refund has no acquirer's reference to wait for: not listed
    order_id, token = await world.place()
    await world.send("order.on_payment_captured", captured(order_id))
    await world.send("order.on_minting_failed", minting_failed(order_id))
    await world.send("order.on_payment_refunded", refunded(order_id, uuid.uuid4()))
    view = await world.view(order_id, token)
    assert (view["status"], view["refunds"]) == ("REFUNDED", [])


async def test_acquirer_reports_keep_the_newest_and_shed_qris_orders_only(world: World) -> None:
    """``payment.acquirer_state.v1``: the newest report wins whatever order they arrive in; while the
    acquirer that takes new bills is unavailable a QRIS order is answered 503 qris_unavailable
    (nothing kept: the same key is taken later), a VA order is placed as ever."""
    _, token = await world.place()
    now = datetime.now(UTC)

    def report(available: bool, at: datetime, takes_new_bills: bool = True) -> AcquirerStateChanged:
        return AcquirerStateChanged(acquirer_id="acq-test", available=available, changed_at=at,
                                    retry_at=None if available else at + timedelta(seconds=30),
                                    takes_new_bills=takes_new_bills)

    async def order(method: str, key: str) -> ClientResponse:
        return await world.client.post("/v1/orders", json={"quantity": 1, "payment_method": method},
                                       headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})

    try:
        await world.send("order.on_acquirer_state", report(False, now))
        await world.send("order.on_acquirer_state", report(True, now - timedelta(seconds=5)))  # older: ignored

        async def qris_refused() -> bool:
            resp = await world.client.get("/v1/pricing")
            return not {m["method"]: m["available"] for m in (await resp.json())["payment_methods"]}["qris"]

        # the api process learns it within ORDER_ACQUIRER_STATE_TTL_S (what it read last is kept so long)
        await eventually(qris_refused, message="the api sees the acquirer unavailable")
        key = str(uuid.uuid4())
        resp = await order("qris", key)
        body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "qris_unavailable", body
        assert int(resp.headers["Retry-After"]) == body["error"]["retry_after_s"] >= 1
        assert (await order("va", str(uuid.uuid4()))).status == 202
        resp = await world.client.get("/v1/pricing")
        assert [(m["method"], m["available"]) for m in (await resp.json())["payment_methods"]] == [
            ("va", True), ("qris", False)]
        # a report that the acquirer no longer takes new bills (another is first now) lifts the shedding
        await world.send("order.on_acquirer_state", report(False, now + timedelta(seconds=1), takes_new_bills=False))

        async def taken() -> bool:  # 503 until the api reads the new state: nothing kept, the key is taken later
            resp = await order("qris", key)
            assert resp.status in (202, 503), await resp.text()
            return resp.status == 202

        await eventually(taken, message="the QRIS order taken once the shedding is lifted")
    finally:
        await world.send("order.on_acquirer_state", report(True, now + timedelta(seconds=2)))

