"""Paid orders that find too little stock wait for it as a state of the order, never as a parked
message; and serials an order cannot accept are voided before anything is refunded.

Real processes (order, payment, minting, stamping), starting with no stock at all. Minting serves
its waiting orders every 0.2 s here; the refund deadline (``MINTING_STOCK_WAIT_S``, two hours by
default) is never waited for: the deadline test moves one order's ``refund_at`` into the past.

* paid with no stock: status PAID, ``fulfilment.awaiting_stock`` with ``since`` and ``refund_at``,
  minting's ``emeterai_orders_awaiting_stock`` gauge counts it, nothing parked; ``stock add`` →
  FULFILLED, the serials in the buyer's quota, the gauge back to 0;
* past its deadline a waiting order is refunded (once), and stock added later never fulfils it;
* serials the order cannot accept (here: a wrong issuance injected on the broker while the order
  waits) were credited by stamping: they are voided there and the whole amount refunded; when
  minting later issues the real serials to the refunded order, they are voided too (quota and
  registry): the buyer ends with the money and no stamps, never both, never neither.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiohttp
import pytest
from emeterai_shared.contracts.events import IssuedSerial, SerialsIssued
from emeterai_shared.messaging.parking import list_parked
from emeterai_shared.messaging.topology import EVENTS
from emeterai_testkit.clients import Buyer
from emeterai_testkit.fixtures import eventually, fetchval
from emeterai_testkit.platform import Platform
from minting_service.config import MintingSettings
from payment_service.adapters.banksim import BankSimulator

BankFor = Callable[[Platform, aiohttp.ClientSession], BankSimulator]
CustomerNo = Callable[[Platform, str], str]


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any) -> AsyncIterator[Platform]:
    async with purchase_platform(stock=0, stamping=True, stamping_overrides={"pdf_workers": 1},
                                 minting_overrides={"stock_wait_retry_interval_s": 0.2,
                                                    "stock_refresh_interval_s": 0.2}) as p:
        yield p


async def awaiting_stock(buyer: Buyer, order_id: str) -> dict[str, Any]:
    async def shown() -> dict[str, Any] | None:
        order = await buyer.get(order_id)
        return order if (order["fulfilment"] or {}).get("awaiting_stock") else None

    order: dict[str, Any] = await eventually(shown, timeout_s=60, message=f"order {order_id} awaiting stock")
    return order


async def gauge(session: aiohttp.ClientSession, platform: Platform, name: str) -> float | None:
    async with session.get(f"http://127.0.0.1:{platform.settings['minting'].worker_metrics_port}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def quota(platform: Platform, session: aiohttp.ClientSession, buyer: Buyer) -> dict[str, Any]:
    async with session.get(f"{platform.url('stamping')}/v1/quota", headers=buyer.auth) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def parked(platform: Platform, queue: str) -> list[Any]:
    connection = await aio_pika.connect_robust(platform.settings["minting"].amqp_url)
    try:
        return await list_parked(connection, queue)
    finally:
        await connection.close()


async def test_an_order_paid_without_stock_waits_visibly_and_is_credited_when_stock_arrives(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo, command: Callable[..., Any]
) -> None:
    minting = platform.settings["minting"]
    assert isinstance(minting, MintingSettings)
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id = await buyer.paid_order(3, bank_client(platform, session), platform.customer_no)
        order = await awaiting_stock(buyer, order_id)
        since, refund_at = (datetime.fromisoformat(order["fulfilment"][k]) for k in ("since", "refund_at"))
        assert (order["status"], order["serials"]) == ("PAID", [])
        assert refund_at - since == timedelta(seconds=minting.stock_wait_s)
        await eventually(lambda: _equals(gauge(session, platform, "emeterai_orders_awaiting_stock"), 1.0),
                         message="the awaiting-stock gauge")
        assert await parked(platform, "minting.on_order_paid") == []

        await command(platform, "minting", "stock", "add", "--count", "5")
        order = await buyer.status_becomes(order_id, "FULFILLED", timeout_s=60)
        assert len(order["serials"]) == 3 and order["fulfilment"]["awaiting_stock"] is False
        await eventually(lambda: _credited(platform, session, buyer, order["serials"]), message="the quota")
        await eventually(lambda: _equals(gauge(session, platform, "emeterai_orders_awaiting_stock"), 0.0),
                         message="the awaiting-stock gauge back to 0")
    assert await parked(platform, "minting.on_order_paid") == []


async def _equals(value: Any, expected: float) -> bool:
    return bool(await value == expected)


async def _credited(platform: Platform, session: aiohttp.ClientSession, buyer: Buyer, serials: list[str]) -> bool:
    return sorted((await quota(platform, session, buyer))["serials_available"]) == sorted(serials)


async def test_an_order_waiting_past_its_deadline_is_refunded_and_later_stock_does_not_fulfil_it(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo, command: Callable[..., Any]
) -> None:
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id = await buyer.paid_order(50, bank_client(platform, session), platform.customer_no)
        await awaiting_stock(buyer, order_id)
        minting, payment = platform.settings["minting"], platform.settings["payment"]
        assert await fetchval(minting, "UPDATE issuances SET refund_at = now() - interval '1 second'"
                              " WHERE order_id = $1::uuid AND status = 'WAITING' RETURNING true", order_id)
        order = await buyer.status_becomes(order_id, "REFUNDED", timeout_s=60)
        assert (order["serials"], order["fulfilment"]["awaiting_stock"]) == ([], False)
        assert await fetchval(payment, "SELECT count(*) FROM refunds WHERE order_id = $1::uuid", order_id) == 1

        await command(platform, "minting", "stock", "add", "--count", "60")
        assert await fetchval(minting, "SELECT status FROM issuances WHERE order_id = $1::uuid", order_id) == "FAILED"
        assert await fetchval(minting, "SELECT count(*) FROM serials WHERE order_id = $1::uuid", order_id) == 0
        assert (await buyer.get(order_id))["status"] == "REFUNDED"


async def test_serials_the_order_cannot_accept_are_voided_and_the_buyer_never_keeps_both(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo, command: Callable[..., Any]
) -> None:
    minting = platform.settings["minting"]
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        left = int(await fetchval(minting, "SELECT count(*) FROM serials WHERE status = 'STOCK'"))
        order_id = await buyer.paid_order(left + 2, bank_client(platform, session), platform.customer_no)
        await awaiting_stock(buyer, order_id)
        account_id = await fetchval(platform.settings["order"], "SELECT account_id FROM orders WHERE id = $1::uuid",
                                    order_id)

        # A wrong issuance (one serial for an order of left + 2): stamping credits its copy at once.
        wrong = IssuedSerial(sn=f"WRONG{uuid.uuid4().hex[:17].upper()}", token="eyJ.wrong.sig")
        connection = await aio_pika.connect_robust(minting.amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(EVENTS)
            event = SerialsIssued(order_id=uuid.UUID(order_id), account_id=account_id, serials=(wrong,),
                                  issued_at=datetime.now(UTC))
            await exchange.publish(aio_pika.Message(event.to_json(), message_id=str(uuid.uuid4()), type=event.TYPE,
                                                    correlation_id=order_id, content_type="application/json",
                                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                   routing_key=event.TYPE, mandatory=True)
        finally:
            await connection.close()

        order = await buyer.status_becomes(order_id, "REFUNDED", timeout_s=60)
        assert order["serials"] == []
        payment = platform.settings["payment"]
        assert await fetchval(payment, "SELECT amount FROM refunds WHERE order_id = $1::uuid", order_id) == \
            order["amount"]
        stamping = platform.settings["stamping"]
        assert await fetchval(stamping, "SELECT status FROM stamps WHERE sn = $1", wrong.sn) == "VOID"
        assert (await quota(platform, session, buyer))["available"] == 0

        # Minting still waits for this order: stock arrives, it issues the real serials to the
        # refunded order; stamping credits them, the order gives them back, they end VOID.
        await command(platform, "minting", "stock", "add", "--count", str(left + 10))

        async def all_void() -> bool:
            rows = await fetchval(minting, "SELECT array_agg(DISTINCT status) FROM serials WHERE order_id = $1::uuid",
                                  order_id)
            return rows == ["VOID"]

        await eventually(all_void, timeout_s=60, message="the late serials VOID in the registry")
        sns = await fetchval(minting, "SELECT array_agg(sn) FROM serials WHERE order_id = $1::uuid", order_id)
        assert len(sns) == left + 2
        assert await fetchval(stamping, "SELECT array_agg(DISTINCT status) FROM stamps WHERE sn = ANY($1)",
                              sns) == ["VOID"]
        assert (await quota(platform, session, buyer))["available"] == 0
        async with session.get(f"{platform.url('minting')}/v1/stamps/{sns[0]}") as r:
            assert (r.status, (await r.json())["status"]) == (200, "VOID")
        assert (await buyer.get(order_id))["status"] == "REFUNDED"
        assert await fetchval(payment, "SELECT count(*) FROM refunds WHERE order_id = $1::uuid", order_id) == 1
