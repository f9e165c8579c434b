"""The purchase path through the running services (real processes, real servers).

account → order → bill → bank token → inquiry → payment → order PAID, and the same path with
the payment and order workers SIGKILLed at the worst moments: the order ends PAID exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from emeterai_testkit.clients import Buyer
from emeterai_testkit.fixtures import eventually, fetchval
from emeterai_testkit.platform import Platform
from payment_service.adapters.banksim import BankSimulator

from bench.rush.figures import per_unit_by_service
from bench.rush.platform import MetricsScraper

BankFor = Callable[[Platform, aiohttp.ClientSession], BankSimulator]
CustomerNo = Callable[[Platform, str], str]

KILL_AFTER_COMMIT = {"EMETERAI_FAILPOINTS": "consumer.after_commit=kill"}


@pytest.fixture(scope="module")
async def platform(purchase_platform: Any) -> AsyncIterator[Platform]:
    # the statement counter on (as the rush has it): test_full_purchase_path reads it as the rush does
    async with purchase_platform(order_overrides={"db_count_queries": True}, db_count_queries=True) as p:
        yield p


async def test_full_purchase_path(platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo) -> None:
    """The path, and the rush's statement figure read from the processes' /metrics around it."""
    async with aiohttp.ClientSession() as session:
        scraper = MetricsScraper(platform.metrics_urls(), interval_s=0)
        start = time.monotonic()
        await scraper.scrape(session)
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id, bill = await buyer.billed_order(2)
        assert bill["amount"] == 25_000
        bank = bank_client(platform, session)
        status, body = await bank.get_token()
        assert (status, body["responseCode"]) == (200, "2007300")
        cno = va_customer_no(platform, bill["virtual_account_no"])
        status, body = await bank.inquiry(cno)
        assert (status, body["responseCode"]) == (200, "2002400"), body
        assert body["virtualAccountData"]["totalAmount"]["value"] == "25000.00"
        status, body = await bank.pay(cno, 25_000)
        assert (status, body["responseCode"]) == (200, "2002500"), body
        assert body["virtualAccountData"]["paymentFlagStatus"] == "00"
        await buyer.status_becomes(order_id, "PAID")
        await scraper.scrape(session)
        end = time.monotonic()
    order_db = platform.settings["order"]
    # minting issues straight from payment.captured, which names the buyer: no order.paid hop
    assert await fetchval(order_db, "SELECT count(*) FROM outbox WHERE message_type = 'order.paid.v1'"
                          " AND correlation_id = $1", order_id) == 0
    sent = scraper.db_queries_between(start, end)
    assert set(sent) == set(platform.metrics_urls())  # every api, worker and relay counts
    for process in ("order-api", "order-worker", "payment-api", "payment-worker"):
        assert sent[process] >= 3, (process, sent)  # at least one transaction: BEGIN, a statement, COMMIT
    figure = per_unit_by_service(sent, 1)
    assert figure is not None and set(figure["by_service"]) == {"order", "payment"}
    assert figure["total"] == round(sum(sent.values()), 1)


async def _paid_exactly_once(platform: Platform, order_id: str) -> None:
    order_db, payment_db = platform.settings["order"], platform.settings["payment"]
    assert await fetchval(order_db, "SELECT count(*) FROM outbox WHERE message_type = 'order.paid.v1'"
                          " AND correlation_id = $1", order_id) == 0  # minting takes the capture itself
    assert await fetchval(payment_db, "SELECT count(*) FROM outbox WHERE message_type ="
                          " 'payment.captured.v1' AND correlation_id = $1", order_id) == 1
    assert await fetchval(order_db, "SELECT count(*) FROM order_history WHERE order_id = $1"
                          " AND new_status = 'PAID'", uuid.UUID(order_id)) == 1


async def test_sigkill_payment_worker_after_bill_commit(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    """The payment worker dies after committing the bill, before acking order.placed."""
    worker = platform.proc("payment", "worker")
    await platform.restart("payment", "worker", extra_env=KILL_AFTER_COMMIT)
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id = await buyer.order(2)
        await eventually(lambda: not worker.alive, timeout_s=60, message="payment worker killed")
        assert worker.popen is not None and worker.popen.returncode == -9
        await platform.start(("payment", "worker"))
        bill = await buyer.bill(order_id)
        bank = bank_client(platform, session)
        cno = va_customer_no(platform, bill["virtual_account_no"])
        _, body = await bank.pay(cno, bill["amount"])
        assert body["responseCode"] == "2002500", body
        await buyer.status_becomes(order_id, "PAID")
    payment_db = platform.settings["payment"]
    assert await fetchval(payment_db, "SELECT count(*) FROM outbox WHERE message_type ="
                          " 'payment.bill_issued.v1' AND correlation_id = $1", order_id) == 1
    await _paid_exactly_once(platform, order_id)


async def test_sigkill_order_worker_after_paid_commit(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    """The order worker dies after committing PAID (and the receipt), before acking the capture."""
    async with aiohttp.ClientSession() as session:
        buyer = Buyer(session, platform.url("order"))
        await buyer.register()
        order_id, bill = await buyer.billed_order(1)
        worker = platform.proc("order", "worker")
        await platform.restart("order", "worker", extra_env=KILL_AFTER_COMMIT)
        bank = bank_client(platform, session)
        cno = va_customer_no(platform, bill["virtual_account_no"])
        _, body = await bank.pay(cno, bill["amount"])
        assert body["responseCode"] == "2002500", body
        await eventually(lambda: not worker.alive, timeout_s=60, message="order worker killed")
        assert worker.popen is not None and worker.popen.returncode == -9
        await platform.start(("order", "worker"))
        await buyer.status_becomes(order_id, "PAID")
    await _paid_exactly_once(platform, order_id)


async def test_random_sigkills_during_many_payments(
    platform: Platform, bank_client: BankFor, va_customer_no: CustomerNo
) -> None:
    """30 orders paid while both workers are SIGKILLed and restarted twice: each PAID once."""
    async with aiohttp.ClientSession() as session:
        buyers = [Buyer(session, platform.url("order")) for _ in range(6)]  # 5 orders each: within the burst
        for buyer in buyers:
            await buyer.register()
        placed = [(buyer, await buyer.order(2)) for buyer in buyers for _ in range(5)]
        orders = [order for _, order in placed]
        bills = [await buyer.bill(order) for buyer, order in placed]
        bank = bank_client(platform, session)

        async def pay(bill: dict[str, Any]) -> None:
            await asyncio.sleep(random.uniform(0, 2))
            _, body = await bank.pay(va_customer_no(platform, bill["virtual_account_no"]), bill["amount"])
            assert body["responseCode"] == "2002500", body

        payments = asyncio.gather(*(pay(b) for b in bills))
        for _ in range(2):
            await asyncio.sleep(random.uniform(0.2, 1.0))
            platform.proc("order", "worker").kill()
            platform.proc("payment", "worker").kill()
            await platform.start(("order", "worker"), ("payment", "worker"))
        await payments
        for buyer, order_id in placed:
            await buyer.status_becomes(order_id, "PAID")
    for order_id in orders:
        await _paid_exactly_once(platform, order_id)
